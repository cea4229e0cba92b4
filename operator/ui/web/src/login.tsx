// The token login page, for a server with no auth proxy in front: the token is posted
// once and kept by the server in an HttpOnly cookie; the page never stores it.
import { useState } from 'preact/hooks';
import { login } from './api';

export function Login(props: { readOnly: boolean }) {
  const [token, setToken] = useState('');
  const [problem, setProblem] = useState('');
  const [busy, setBusy] = useState(false);
  const submit = (e: Event) => {
    e.preventDefault();
    setBusy(true);
    login(token).then(
      () => {
        setToken('');
        location.hash = '#/';
        location.reload();
      },
      (error: Error) => {
        setProblem(error.message);
        setBusy(false);
      },
    );
  };
  return (
    <section class="login">
      <h1>Sign in</h1>
      <p>Paste a Kubernetes bearer token (<code>kubectl create token NAME</code> for a ServiceAccount). The server checks it with the API server and keeps it only in an HttpOnly cookie of this browser; what you see and may do is what RBAC grants that token.</p>
      {props.readOnly && <p><a href="#/">Back to the read-only view</a></p>}
      <form id="login" onSubmit={submit}>
        <input type="password" name="token" autocomplete="off" placeholder="token" value={token} onInput={(e) => setToken(e.currentTarget.value)} />
        <button type="submit" disabled={busy || !token.trim()}>Sign in</button>
      </form>
      {problem && <p class="error" role="alert">{problem}</p>}
    </section>
  );
}
