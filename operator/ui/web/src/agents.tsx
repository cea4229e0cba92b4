// The Agents, live: each slot with the run it holds and the composition it last ran (its
// cache is warm for that one), warm-cache hits and misses, and the runs queued for a slot.
import { useEffect, useState } from 'preact/hooks';
import type { Agent } from './api';
import { ago, follow } from './api';

export function Agents(props: { namespace: string; now: number }) {
  const [items, setItems] = useState<Map<string, Agent> | null>(null);
  const [problem, setProblem] = useState('');
  useEffect(() => {
    const query = props.namespace ? `?namespace=${encodeURIComponent(props.namespace)}` : '';
    const key = (a: Agent) => `${a.metadata.namespace}/${a.metadata.name}`;
    return follow<Agent>(`/api/agents/watch${query}`, {
      list: (all) => setItems(new Map(all.map((a) => [key(a), a]))),
      upsert: (a) => setItems((old) => new Map(old ?? []).set(key(a), a)),
      remove: (namespace, name) =>
        setItems((old) => {
          const next = new Map(old ?? []);
          next.delete(`${namespace}/${name}`);
          return next;
        }),
      problem: setProblem,
    });
  }, [props.namespace]);
  if (problem) return <p class="error">{problem}</p>;
  if (!items) return <p>loading…</p>;
  const agents = [...items.values()].sort((a, b) => (a.metadata.name ?? '').localeCompare(b.metadata.name ?? ''));
  return (
    <section>
      <h1>Agents</h1>
      {agents.length === 0 && <p>no Agents in {props.namespace || 'any namespace'}: runs there use no slots</p>}
      {agents.map((a) => {
        const status = a.status ?? {};
        const ready = status.conditions?.find((c) => c.type === 'Ready');
        return (
          <article class="agent" data-agent={a.metadata.name} key={`${a.metadata.namespace}/${a.metadata.name}`}>
            <h2>{a.metadata.name} <span class={`phase state-${ready?.status === 'True' ? 'Ready' : 'Unknown'}`}>{ready?.status === 'True' ? 'Ready' : ready?.reason ?? 'Unknown'}</span></h2>
            <p class="agent-figures">
              capabilities {(a.spec.capabilities ?? []).join(', ') || 'none'} · capacity {a.spec.capacity ?? ''} pods ·{' '}
              <span data-figure="busy">{status.busySlots ?? 0}</span> busy, {status.idleSlots ?? 0} idle ·{' '}
              <span data-figure="queued">{status.queuedRuns ?? 0}</span> queued · cache{' '}
              <span data-figure="hits">{status.cacheHits ?? 0}</span> hits,{' '}
              <span data-figure="misses">{status.cacheMisses ?? 0}</span> misses
            </p>
            {ready && ready.status !== 'True' && ready.message && <p class="error">{ready.message}</p>}
            <table>
              <thead><tr><th>Slot</th><th>Holds</th><th>Last composition (warm cache)</th><th>Last used</th></tr></thead>
              <tbody>
                {(status.slots ?? []).map((s) => (
                  <tr data-slot={s.index}>
                    <td>{s.index}</td>
                    <td class="slot-run">{s.run ? <a href={`#/runs/${a.metadata.namespace}/${s.run}`}>{s.run}</a> : <em>free</em>}</td>
                    <td class="slot-composition">{s.lastComposition ?? ''}</td>
                    <td>{ago(s.lastUsed, props.now)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </article>
        );
      })}
    </section>
  );
}
