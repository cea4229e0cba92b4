// One run: its graph, steps, approvals, outputs, context, ledger, cleanup and log, live.
import { useEffect, useState } from 'preact/hooks';
import type { Run as RunObject, StepStatus } from './api';
import { cancel, decide, follow, rerun, runAgain, runPath, since } from './api';
import { Graph } from './graph';
import { Log } from './log';
import { useCanAct } from './session';

const ENDED = ['Succeeded', 'Failed', 'Cancelled', 'Invalid'];

export function Run(props: { namespace: string; name: string; now: number }) {
  const [run, setRun] = useState<RunObject | null | undefined>(undefined);
  const [problem, setProblem] = useState('');
  useEffect(() => {
    setRun(undefined);
    return follow<RunObject>(`${runPath(props.namespace, props.name)}/watch`, {
      list: (items) => setRun(items[0] ?? null),
      upsert: setRun,
      remove: () => setRun(null),
      problem: setProblem,
    });
  }, [props.namespace, props.name]);

  if (run === undefined) return <p>{problem || 'loading…'}</p>;
  if (run === null) return <p class="error">compositionrun {props.name} not found in namespace {props.namespace}</p>;
  const status = run.status ?? {};
  const phase = status.phase ?? 'Pending';
  const steps = status.steps ?? [];
  const specSteps = status.compositionSpec?.steps ?? steps.map((s) => ({ name: s.name }));
  const parent = run.metadata.labels?.['maestro.dev/parent-run'];
  const failedRun = run.metadata.labels?.['maestro.dev/failed-run'];
  const invalid = status.conditions?.find((c) => c.type === 'Invalid' && c.status === 'True');
  const canAct = useCanAct();
  return (
    <section class="run" data-run={props.name} data-phase={phase}>
      <h1>{props.name} <span class={`phase phase-${phase}`} id="run-phase">{phase}</span></h1>
      {problem && <p class="error">{problem}</p>}
      <dl class="facts">
        <dt>Composition</dt><dd>{run.spec.composition}</dd>
        <dt>Namespace</dt><dd>{props.namespace}</dd>
        {run.spec.startedBy && <><dt>Started by</dt><dd>{run.spec.startedBy}</dd></>}
        <dt>Progress</dt><dd>{status.progress ?? ''}</dd>
        <dt>Took</dt><dd>{since(status.startTime, status.completionTime, props.now)}</dd>
        {status.agent && <><dt>Agent</dt><dd>{status.agent.name} slot {status.agent.slot} · cache {status.agent.cacheHit ? 'warm' : 'cold'}</dd></>}
        {parent && <><dt>Parent run</dt><dd><a href={`#/runs/${props.namespace}/${parent}`}>{parent}</a></dd></>}
        {run.spec.rerunOf && <><dt>Rerun of</dt><dd><a href={`#/runs/${props.namespace}/${run.spec.rerunOf.run}`}>{run.spec.rerunOf.run}</a>{run.spec.rerunOf.from ? ` from step ${run.spec.rerunOf.from}` : ''}</dd></>}
        {failedRun && <><dt>Handles failure of</dt><dd><a href={`#/runs/${props.namespace}/${failedRun}`}>{failedRun}</a></dd></>}
        {status.onFailureRun && <><dt>onFailure run</dt><dd><a href={`#/runs/${props.namespace}/${status.onFailureRun}`}>{status.onFailureRun}</a></dd></>}
        {Object.keys(run.spec.params ?? {}).length > 0 && <><dt>Params</dt><dd>{Object.entries(run.spec.params ?? {}).map(([k, v]) => <code>{k}={v} </code>)}</dd></>}
      </dl>
      {invalid && <p class="error">{invalid.message}</p>}
      {canAct && <Actions key={props.name} run={run} phase={phase} steps={specSteps.map((s) => s.name)} />}
      {steps.filter((s) => s.phase === 'WaitingApproval').map((s) => canAct
        ? <Gate key={`${props.name}/${s.name}`} namespace={props.namespace} run={props.name} step={s} />
        : <p class="gate" data-step={s.name}><strong>{s.name}</strong>: {s.message ?? 'waiting for approval'} (read-only: sign in to decide)</p>)}
      <div class="graph-box"><Graph steps={specSteps} status={steps} namespace={props.namespace} now={props.now} /></div>
      <Steps steps={steps} namespace={props.namespace} now={props.now} />
      <Context run={run} />
      <Log namespace={props.namespace} run={props.name} steps={specSteps.map((s) => s.name)} />
    </section>
  );
}

function Actions(props: { run: RunObject; phase: string; steps: string[] }) {
  const [said, setSaid] = useState<{ ok: boolean; text: string } | null>(null);
  // '' reruns the steps that did not succeed; a step's name reruns from it.
  const [from, setFrom] = useState('');
  const { namespace, name } = props.run.metadata;
  const requested = props.run.spec.cancel;
  const fail = (e: Error) => setSaid({ ok: false, text: e.message });
  return (
    <div class="actions">
      {!ENDED.includes(props.phase) && (
        <button type="button" id="cancel" disabled={requested} onClick={() =>
          cancel(namespace, name).then((a) => setSaid({ ok: true, text: a.message }), fail)
        }>{requested ? 'cancel requested' : 'Cancel run'}</button>
      )}
      <button type="button" id="run-again" title="a new run of this composition with these params" onClick={() =>
        runAgain(namespace, name).then((a) => {
          location.hash = `#/runs/${namespace}/${a.run}`;
        }, fail)
      }>Run again with these params</button>
      {ENDED.includes(props.phase) && props.phase !== 'Invalid' && (
        <span class="rerun">
          <button type="button" id="rerun" title="a new run that reuses what succeeded here, in the same workspace" onClick={() =>
            rerun(namespace, name, from || null).then((a) => {
              location.hash = `#/runs/${namespace}/${a.run}`;
            }, fail)
          }>{from ? `Rerun from ${from}` : 'Rerun failed steps'}</button>
          <select id="rerun-from" value={from} onChange={(e) => setFrom((e.target as HTMLSelectElement).value)}>
            <option value="">the steps that did not succeed</option>
            {props.steps.map((s) => <option value={s}>from {s}</option>)}
          </select>
        </span>
      )}
      {said && <span class={said.ok ? 'said' : 'error'}>{said.text}</span>}
    </div>
  );
}

// A gate waiting for a decision: approve or reject, with a comment.
function Gate(props: { namespace: string; run: string; step: StepStatus }) {
  const [comment, setComment] = useState('');
  const [said, setSaid] = useState<{ ok: boolean; text: string } | null>(null);
  const [busy, setBusy] = useState(false);
  const act = (decision: 'Approve' | 'Reject') => {
    setBusy(true);
    decide(props.namespace, props.run, props.step.name, decision, comment).then(
      (a) => setSaid({ ok: true, text: a.message }),
      (e: Error) => setSaid({ ok: false, text: e.message }),
    ).finally(() => setBusy(false));
  };
  return (
    <div class="gate" data-step={props.step.name}>
      <strong>{props.step.name}</strong>: {props.step.message ?? 'waiting for approval'}
      <textarea name="comment" placeholder="comment (kept with the decision)" value={comment} onInput={(e) => setComment(e.currentTarget.value)} />
      <button type="button" class="approve" disabled={busy} onClick={() => act('Approve')}>Approve</button>
      <button type="button" class="reject" disabled={busy} onClick={() => act('Reject')}>Reject</button>
      {said && <p class={said.ok ? 'said' : 'error'} role="status">{said.text}</p>}
    </div>
  );
}

function Steps(props: { steps: StepStatus[]; namespace: string; now: number }) {
  return (
    <table class="steps">
      <thead><tr><th>Step</th><th>Phase</th><th>Attempts</th><th>Took</th><th>Pod</th><th>Node</th><th>Outputs</th><th>Notes</th></tr></thead>
      <tbody>
        {props.steps.map((s) => (
          <tr key={s.name} data-step={s.name}>
            <td>{s.name}</td>
            <td><span class={`phase phase-${s.phase}`}>{s.phase}</span></td>
            <td>{s.attempts ?? ''}</td>
            <td>{since(s.startTime, s.finishTime, props.now)}</td>
            <td>{s.podName ?? ''}</td>
            <td>{s.nodeName ?? ''}</td>
            <td>{Object.entries(s.outputs ?? {}).map(([k, v]) => <div><code>{k}</code> = {v}</div>)}</td>
            <td>
              {s.message && <div>{s.message}{s.exitCode !== undefined ? ` (exit ${s.exitCode})` : ''}</div>}
              {(s.childRuns ?? []).map((c) => <div><a href={`#/runs/${props.namespace}/${c}`}>{c}</a>{s.reusedRuns?.includes(c) ? ' (reused)' : ''}</div>)}
              {(s.approvals ?? []).map((a) => (
                <div class="decision">{a.decision === 'Reject' ? 'rejected' : 'approved'} by <strong>{a.by}</strong>{a.comment ? `: “${a.comment}”` : ''}{a.ignored ? ` (does not count: ${a.ignored})` : ''}</div>
              ))}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function Context(props: { run: RunObject }) {
  const status = props.run.status ?? {};
  const context = Object.entries(status.context ?? {});
  const ledger = status.resources ?? [];
  return (
    <div class="extras">
      {context.length > 0 && (
        <div><h2>Context</h2><dl class="facts">{context.map(([k, v]) => <><dt>{k}</dt><dd>{v}</dd></>)}</dl></div>
      )}
      <div><h2>Ledger</h2>{ledger.length ? (
        <table><thead><tr><th>Kind</th><th>Id</th><th>Region</th><th>Step</th></tr></thead>
          <tbody>{ledger.map((r) => <tr><td>{r.kind}</td><td>{r.id}</td><td>{r.region ?? ''}</td><td>{r.step}</td></tr>)}</tbody></table>
      ) : <p>no external resources held</p>}</div>
      {status.cleanup && <div><h2>Cleanup</h2><p><span class={`phase phase-${status.cleanup.phase}`}>{status.cleanup.phase}</span> {status.cleanup.message ?? ''}</p></div>}
    </div>
  );
}
