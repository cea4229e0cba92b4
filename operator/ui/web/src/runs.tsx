// The runs list: live (one watch-driven event stream), filtered by namespace, composition
// and phase; runs waiting for an approval stand out and can be approved from here. Only
// a page of rows is rendered, so thousands of runs stay fast.
import { useEffect, useMemo, useState } from 'preact/hooks';
import type { RunSummary } from './api';
import { ago, decide, follow, since } from './api';
import { useCanAct } from './session';

const PAGE = 200;
const PHASES = ['', 'Pending', 'Queued', 'Running', 'WaitingApproval', 'CleaningUp', 'Succeeded', 'Failed', 'Cancelled', 'Invalid'];

const key = (namespace: string, name: string) => `${namespace}/${name}`;

export function Runs(props: { namespace: string; setNamespace: (ns: string) => void; now: number }) {
  const [runs, setRuns] = useState<Map<string, RunSummary>>(new Map());
  const [problem, setProblem] = useState('');
  const [live, setLive] = useState(false);
  const [composition, setComposition] = useState('');
  const [phase, setPhase] = useState('');
  const [shown, setShown] = useState(PAGE);

  useEffect(() => {
    setRuns(new Map());
    setLive(false);
    const query = props.namespace ? `?namespace=${encodeURIComponent(props.namespace)}` : '';
    return follow<RunSummary>(`/api/runs/watch${query}`, {
      list: (items) => {
        setRuns(new Map(items.map((r) => [key(r.namespace, r.name), r])));
        setLive(true);
        setProblem('');
      },
      upsert: (r) => setRuns((old) => new Map(old).set(key(r.namespace, r.name), r)),
      remove: (namespace, name) =>
        setRuns((old) => {
          const next = new Map(old);
          next.delete(key(namespace, name));
          return next;
        }),
      problem: setProblem,
    });
  }, [props.namespace]);

  const rows = useMemo(() => {
    const all = [...runs.values()].filter(
      (r) => (!composition || r.composition.includes(composition)) && (!phase || r.phase === phase),
    );
    // Waiting runs first: they need someone; then the newest.
    all.sort((a, b) => (b.waiting.length ? 1 : 0) - (a.waiting.length ? 1 : 0) || (b.created ?? '').localeCompare(a.created ?? '') || a.name.localeCompare(b.name));
    return all;
  }, [runs, composition, phase]);

  return (
    <section>
      <h1>Runs</h1>
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        <label>Namespace <input name="namespace" value={props.namespace} placeholder="all" onChange={(e) => props.setNamespace(e.currentTarget.value.trim())} /></label>
        <label>Composition <input name="composition" value={composition} onInput={(e) => setComposition(e.currentTarget.value.trim())} /></label>
        <label>Phase <select name="phase" value={phase} onChange={(e) => setPhase(e.currentTarget.value)}>
          {PHASES.map((p) => <option value={p}>{p || 'any'}</option>)}
        </select></label>
        <span class="count" data-live={live ? 'yes' : 'no'}>{live ? `${rows.length} of ${runs.size} runs · live` : 'connecting…'}</span>
      </form>
      {problem && <p class="error">{problem}</p>}
      <table class="runs">
        <thead><tr><th>Run</th><th>Composition</th><th>Phase</th><th>Progress</th><th>Started</th><th>Took</th><th>By</th><th></th></tr></thead>
        <tbody>
          {rows.slice(0, shown).map((r) => <Row key={key(r.namespace, r.name)} run={r} now={props.now} showNamespace={!props.namespace} />)}
        </tbody>
      </table>
      {rows.length > shown && <button type="button" onClick={() => setShown(shown + PAGE)}>Show {Math.min(PAGE, rows.length - shown)} more</button>}
    </section>
  );
}

function Row(props: { run: RunSummary; now: number; showNamespace: boolean }) {
  const r = props.run;
  const canAct = useCanAct();
  const [said, setSaid] = useState<{ ok: boolean; text: string } | null>(null);
  const approve = (step: string) =>
    decide(r.namespace, r.name, step, 'Approve').then(
      (answer) => setSaid({ ok: true, text: answer.message }),
      (error: Error) => setSaid({ ok: false, text: error.message }),
    );
  return (
    <tr class={r.waiting.length ? 'waiting' : ''} data-run={r.name} data-phase={r.phase}>
      <td><a href={`#/runs/${r.namespace}/${r.name}`}>{props.showNamespace ? `${r.namespace}/` : ''}{r.name}</a></td>
      <td>{r.composition}</td>
      <td><span class={`phase phase-${r.phase}`}>{r.phase}</span></td>
      <td>{r.progress ?? ''}</td>
      <td title={r.startTime ?? ''}>{ago(r.startTime ?? r.created, props.now)}</td>
      <td>{since(r.startTime, r.completionTime, props.now)}</td>
      <td>{r.startedBy ?? ''}</td>
      <td>
        {!canAct && r.waiting.length > 0 && <span class="muted">waiting for approval</span>}
        {canAct && r.waiting.map((w) => (
          <button type="button" class="approve" title={w.message ?? ''} onClick={() => approve(w.step)}>Approve {w.step}</button>
        ))}
        {said && <span class={said.ok ? 'said' : 'error'}>{said.text}</span>}
      </td>
    </tr>
  );
}
