// The compositions: their steps as a graph before any run, params, triggers, readiness.
import { useEffect, useState } from 'preact/hooks';
import type { Composition } from './api';
import { ago, getJson } from './api';
import { Graph } from './graph';

export function Compositions(props: { namespace: string; now: number }) {
  const [items, setItems] = useState<Composition[] | null>(null);
  const [problem, setProblem] = useState('');
  useEffect(() => {
    const query = props.namespace ? `?namespace=${encodeURIComponent(props.namespace)}` : '';
    getJson<Composition[]>(`/api/compositions${query}`).then(setItems, (e: Error) => setProblem(e.message));
  }, [props.namespace]);
  if (problem) return <p class="error">{problem}</p>;
  if (!items) return <p>loading…</p>;
  return (
    <section>
      <h1>Compositions</h1>
      {items.length === 0 && <p>no compositions in {props.namespace || 'any namespace'}</p>}
      {items.map((c) => {
        const ready = c.status?.conditions?.find((x) => x.type === 'Ready');
        const state = ready?.status === 'True' ? 'Ready' : ready ? 'Invalid' : 'Unknown';
        return (
          <article class="composition" data-composition={c.metadata.name} key={`${c.metadata.namespace}/${c.metadata.name}`}>
            <h2>{c.metadata.name} <span class={`phase state-${state}`}>{state}</span></h2>
            {c.spec.description && <p>{c.spec.description}</p>}
            {ready?.status !== 'True' && ready?.message && <p class="error">{ready.message}</p>}
            {(c.spec.params ?? []).length > 0 && (
              <table><thead><tr><th>Param</th><th>Default</th><th>Description</th></tr></thead>
                <tbody>{(c.spec.params ?? []).map((p) => <tr><td><code>{p.name}</code></td><td>{p.default ?? <em>required</em>}</td><td>{p.description ?? ''}</td></tr>)}</tbody></table>
            )}
            {c.spec.triggers?.cron && <p>cron <code>{c.spec.triggers.cron.schedule}</code> {c.spec.triggers.cron.timeZone ?? ''}{c.status?.lastScheduleTime ? ` · last ${ago(c.status.lastScheduleTime, props.now)}` : ''}</p>}
            {(c.spec.triggers?.git ?? []).map((g) => <p>git push to <code>{g.repository}</code> {(g.branches ?? []).join(', ')}</p>)}
            <div class="graph-box"><Graph steps={c.spec.steps} namespace={c.metadata.namespace} now={props.now} /></div>
          </article>
        );
      })}
    </section>
  );
}
