// The compositions: their steps as a graph before any run, params, triggers, readiness,
// and a Run form built from the declared params.
import { useEffect, useState } from 'preact/hooks';
import type { Composition } from './api';
import { ago, getJson, runComposition } from './api';
import { Graph } from './graph';
import { useCanAct } from './session';

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
            <RunForm composition={c} />
            <div class="graph-box"><Graph steps={c.spec.steps} namespace={c.metadata.namespace} now={props.now} /></div>
          </article>
        );
      })}
    </section>
  );
}

// One field a param: a choice when it declares its values, required when it has no
// default; the new run's page opens once it is created.
function RunForm(props: { composition: Composition }) {
  const canAct = useCanAct();
  const { namespace, name } = props.composition.metadata;
  const params = props.composition.spec.params ?? [];
  const [values, setValues] = useState<Record<string, string>>(() => Object.fromEntries(params.map((p) => [p.name, p.default ?? ''])));
  const [problem, setProblem] = useState('');
  const [busy, setBusy] = useState(false);
  if (!canAct) return null;
  const submit = (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setProblem('');
    runComposition(namespace, name, values).then(
      (a) => {
        location.hash = `#/runs/${namespace}/${a.run}`;
      },
      (error: Error) => {
        setProblem(error.message);
        setBusy(false);
      },
    );
  };
  const set = (param: string, value: string) => setValues({ ...values, [param]: value });
  return (
    <form class="run-form" data-composition={name} onSubmit={submit}>
      {params.map((p) => (
        <label title={p.description ?? ''}>
          <span>{p.name}{p.default === undefined ? ' *' : ''}</span>
          {p.enum && p.enum.length > 0 ? (
            <select name={p.name} value={values[p.name]} required={p.default === undefined} onChange={(e) => set(p.name, e.currentTarget.value)}>
              {p.default === undefined && <option value="">choose…</option>}
              {p.enum.map((v) => <option value={v}>{v}</option>)}
            </select>
          ) : (
            <input name={p.name} value={values[p.name]} required={p.default === undefined} placeholder={p.default ?? ''} onInput={(e) => set(p.name, e.currentTarget.value)} />
          )}
          {p.description && <small>{p.description}</small>}
        </label>
      ))}
      <button type="submit" class="run" disabled={busy}>Run</button>
      {problem && <span class="error" role="alert">{problem}</span>}
    </form>
  );
}
