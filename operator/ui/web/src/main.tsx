// Maestro's web UI: hash routes (#/, #/runs/NS/NAME, #/compositions, #/agents) over the
// server's API.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import './app.css';
import { Agents } from './agents';
import { getJson } from './api';
import { Compositions } from './compositions';
import { Run } from './run';
import { Runs } from './runs';

function useHash(): string {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const changed = () => setHash(location.hash);
    addEventListener('hashchange', changed);
    return () => removeEventListener('hashchange', changed);
  }, []);
  return hash;
}

// One clock for every duration on the page.
function useNow(): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, []);
  return now;
}

function App() {
  const hash = useHash();
  const now = useNow();
  const [namespace, setNamespace] = useState<string | null>(null);
  const [user, setUser] = useState('');
  useEffect(() => {
    getJson<{ defaultNamespace: string }>('/api/config').then((c) => setNamespace(c.defaultNamespace), () => setNamespace(''));
    getJson<{ username: string }>('/api/whoami').then((w) => setUser(w.username), () => setUser('?'));
  }, []);
  if (namespace === null) return <p>loading…</p>;
  const parts = hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  let page;
  if (parts[0] === 'runs' && parts.length === 3) page = <Run namespace={parts[1]} name={parts[2]} now={now} />;
  else if (parts[0] === 'compositions') page = <Compositions namespace={namespace} now={now} />;
  else if (parts[0] === 'agents') page = <Agents namespace={namespace} now={now} />;
  else page = <Runs namespace={namespace} setNamespace={setNamespace} now={now} />;
  return (
    <>
      <header>
        <a class="brand" href="#/">Maestro</a>
        <nav><a href="#/">Runs</a><a href="#/compositions">Compositions</a><a href="#/agents">Agents</a></nav>
        <span class="user" id="user">{user}</span>
      </header>
      <main>{page}</main>
    </>
  );
}

const root = document.getElementById('app');
if (root) render(<App />, root);
