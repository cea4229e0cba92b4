// A composition's steps as a DAG, laid out by dagre: each node shows the step's phase (its
// colour), attempts and duration, and links the child runs it started.
import dagre from '@dagrejs/dagre';
import type { StepSpec, StepStatus } from './api';
import { since } from './api';

const NODE_WIDTH = 190;
const NODE_HEIGHT = 58;
const CHILD_LINE = 15;

// Without dependsOn a step follows the one listed before it.
export function edges(steps: StepSpec[]): [string, string][] {
  const names = new Set(steps.map((s) => s.name));
  const out: [string, string][] = [];
  steps.forEach((step, i) => {
    const deps = step.dependsOn ?? (i > 0 ? [steps[i - 1].name] : []);
    for (const dep of deps) if (names.has(dep)) out.push([dep, step.name]);
  });
  return out;
}

function kind(step: StepSpec): string {
  if (step.approval) return 'approval';
  if (step.composition) return `call ${step.composition}`;
  if (step.compositions) return `fork ${step.compositions.length}`;
  if (step.waitFor) return 'wait for';
  return step.task ?? '';
}

export function Graph(props: { steps: StepSpec[]; status?: StepStatus[]; namespace: string; now: number }) {
  const byName = new Map((props.status ?? []).map((s) => [s.name, s]));
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: 'LR', nodesep: 18, ranksep: 42, marginx: 8, marginy: 8 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const step of props.steps) {
    const children = byName.get(step.name)?.childRuns?.length ?? 0;
    g.setNode(step.name, { width: NODE_WIDTH, height: NODE_HEIGHT + children * CHILD_LINE });
  }
  for (const [from, to] of edges(props.steps)) g.setEdge(from, to);
  dagre.layout(g);
  const graph = g.graph();
  const width = Math.ceil(graph.width ?? 0);
  const height = Math.ceil(graph.height ?? 0);
  return (
    <svg class="graph" width={width} height={height} viewBox={`0 0 ${width} ${height}`} role="img" aria-label="steps">
      {g.edges().map((e) => {
        const points: { x: number; y: number }[] = g.edge(e).points ?? [];
        const d = points.map((p, i) => `${i ? 'L' : 'M'}${p.x},${p.y}`).join(' ');
        return <path key={`${e.v}->${e.w}`} class="edge" d={d} />;
      })}
      {props.steps.map((step) => {
        const node = g.node(step.name);
        const status = byName.get(step.name);
        const phase = status?.phase ?? 'Pending';
        const x = node.x - node.width / 2;
        const y = node.y - node.height / 2;
        const facts = [phase];
        if ((status?.attempts ?? 0) > 1) facts.push(`attempt ${status?.attempts}`);
        const took = since(status?.startTime, status?.finishTime, props.now);
        if (took) facts.push(took);
        return (
          <g key={step.name} class={`node phase-${phase}`} data-step={step.name} data-phase={phase} transform={`translate(${x},${y})`}>
            <title>{status?.message ?? step.name}</title>
            <rect width={node.width} height={node.height} rx="6" />
            <text x="10" y="20" class="name">{step.name}</text>
            <text x={node.width - 10} y="20" class="kind" text-anchor="end">{kind(step)}</text>
            <text x="10" y="42" class="facts">{facts.join(' · ')}</text>
            {(status?.childRuns ?? []).map((child, i) => (
              <a key={child} href={`#/runs/${props.namespace}/${child}`} class="child">
                <text x="10" y={NODE_HEIGHT + i * CHILD_LINE - 2}>↳ {child}</text>
              </a>
            ))}
          </g>
        );
      })}
    </svg>
  );
}
