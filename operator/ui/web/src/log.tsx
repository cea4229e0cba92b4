// A run's aggregated log: every step's lines in the order the steps ran, streamed while
// they run, filterable by step. Lines arriving together are drawn once per frame.
import { useEffect, useRef, useState } from 'preact/hooks';
import type { LogLine, LogNote } from './api';
import { runPath } from './api';

type Item = LogLine | LogNote;

export function Log(props: { namespace: string; run: string; steps: string[] }) {
  const [items, setItems] = useState<Item[]>([]);
  const [state, setState] = useState<'connecting' | 'following' | 'complete' | 'failed'>('connecting');
  const [step, setStep] = useState('');
  const pending = useRef<Item[]>([]);

  useEffect(() => {
    setItems([]);
    pending.current = [];
    let frame = 0;
    const flush = () => {
      frame = 0;
      const batch = pending.current;
      pending.current = [];
      setItems((old) => old.concat(batch));
    };
    const add = (item: Item) => {
      pending.current.push(item);
      if (!frame) frame = requestAnimationFrame(flush);
    };
    const source = new EventSource(`${runPath(props.namespace, props.run)}/log`);
    // The server sends the whole log on each connection: after EventSource reconnected
    // (a dropped connection), start over rather than show lines twice.
    source.onopen = () => {
      pending.current = [];
      setItems([]);
      setState('following');
    };
    source.addEventListener('line', (e) => add(JSON.parse((e as MessageEvent).data)));
    source.addEventListener('note', (e) => add(JSON.parse((e as MessageEvent).data)));
    source.addEventListener('end', () => {
      source.close();
      if (frame) cancelAnimationFrame(frame);
      flush();
      setState('complete');
    });
    source.onerror = () => {
      // The server ends the stream after `end`; anything else is a failure to say.
      if (source.readyState === EventSource.CLOSED) setState((s) => (s === 'complete' ? s : 'failed'));
    };
    return () => {
      source.close();
      if (frame) cancelAnimationFrame(frame);
    };
  }, [props.namespace, props.run]);

  const shown = step ? items.filter((i) => i.step === step) : items;
  return (
    <section class="log">
      <h2>Log</h2>
      <div class="log-bar">
        <label>Step <select name="log-step" value={step} onChange={(e) => setStep(e.currentTarget.value)}>
          <option value="">all steps</option>
          {props.steps.map((s) => <option value={s}>{s}</option>)}
        </select></label>
        <span class="log-state" data-state={state}>{state === 'following' ? 'following…' : state}</span>
        <a href={`${runPath(props.namespace, props.run)}/log.txt`} download={`${props.run}.log`}>download</a>
      </div>
      <pre class="lines">
        {shown.map((item, i) =>
          item.kind === 'line' ? (
            <div key={i} class="line" data-step={item.step}><span class="tag">{item.attempt > 1 ? `${item.step}#${item.attempt}` : item.step}</span><span class="text">{item.text}</span></div>
          ) : (
            <div key={i} class="note">{item.text}</div>
          ),
        )}
      </pre>
    </section>
  );
}
