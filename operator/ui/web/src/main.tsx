// Maestro's web UI: hash routes (#/, #/runs/NS/NAME, #/compositions, #/agents, #/login)
// over the server's API.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import './app.css';
import { Agents } from './agents';
import type { Config } from './api';
import { getJson, logout } from './api';
import { Compositions } from './compositions';
import { Login } from './login';
import { Run } from './run';
import { Runs } from './runs';
import { CanAct } from './session';

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
  const [config, setConfig] = useState<Config | null>(null);
  const [user, setUser] = useState('');
  useEffect(() => {
    getJson<Config>('/api/config').then(
      (c) => {
        setConfig(c);
        setNamespace(c.defaultNamespace);
        if (c.session !== 'none') getJson<{ username: string }>('/api/whoami').then((w) => setUser(w.username), () => setUser('?'));
      },
      () => setNamespace(''),
    );
  }, []);
  if (namespace === null) return <p>loading…</p>;
  const session = config?.session ?? 'kubeconfig';
  const readOnly = session === 'viewer';
  const parts = hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  let page;
  // Nobody to act as: the token login page (the API itself answers 401).
  if (session === 'none' || parts[0] === 'login') page = <Login readOnly={readOnly} />;
  else if (parts[0] === 'runs' && parts.length === 3) page = <Run namespace={parts[1]} name={parts[2]} now={now} />;
  else if (parts[0] === 'compositions') page = <Compositions namespace={namespace} now={now} />;
  else if (parts[0] === 'agents') page = <Agents namespace={namespace} now={now} />;
  else page = <Runs namespace={namespace} setNamespace={setNamespace} now={now} />;
  const signOut = () => logout().then(() => {
    location.hash = '#/';
    location.reload();
  }, (e: Error) => alert(e.message));
  return (
    <CanAct.Provider value={!readOnly}>
      <header>
        <a class="brand" href="#/">Maestro</a>
        <nav>
          <a href="#/">Runs</a><a href="#/compositions">Compositions</a><a href="#/agents">Agents</a>
          {config?.dashboardUrl && <a id="grafana" href={config.dashboardUrl} target="_blank" rel="noopener noreferrer">Grafana</a>}
        </nav>
        {readOnly && <span class="read-only" id="read-only">read-only</span>}
        <span class="user" id="user">{user}</span>
        {session === 'cookie' && <button type="button" id="logout" onClick={signOut}>Sign out</button>}
        {readOnly && config?.login && <a id="sign-in" href="#/login">Sign in</a>}
      </header>
      <main>{page}</main>
    </CanAct.Provider>
  );
}

const root = document.getElementById('app');
if (root) render(<App />, root);
