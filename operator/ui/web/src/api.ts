// The server's JSON and server-sent-events API, and the shapes of what it returns.

export interface WaitingStep {
  step: string;
  message?: string | null;
}

export interface RunSummary {
  namespace: string;
  name: string;
  uid: string;
  composition: string;
  phase: string;
  progress?: string | null;
  created?: string | null;
  startTime?: string | null;
  completionTime?: string | null;
  startedBy?: string | null;
  waiting: WaitingStep[];
}

export interface ApprovalRecord {
  name: string;
  by: string;
  decision: string;
  time?: string;
  comment?: string;
  ignored?: string;
}

export interface StepStatus {
  name: string;
  phase: string;
  attempts?: number;
  startTime?: string;
  finishTime?: string;
  podName?: string;
  nodeName?: string;
  nextAttemptTime?: string;
  outputs?: Record<string, string>;
  childRuns?: string[];
  reusedRuns?: string[];
  approvedBy?: string;
  approvals?: ApprovalRecord[];
  message?: string;
  exitCode?: number;
}

export interface StepSpec {
  name: string;
  task?: string;
  approval?: { message?: string; approvers?: number; groups?: string[] };
  composition?: string;
  compositions?: string[];
  waitFor?: unknown;
  dependsOn?: string[];
  when?: string;
}

export interface ParamSpec {
  name: string;
  default?: string;
  description?: string;
  enum?: string[];
  pattern?: string;
}

// Who the page is served as: 'none' shows the token login page; 'viewer' is the
// read-only mode (no action buttons); 'cookie' came from the login page (it can sign out).
export type Session = 'kubeconfig' | 'header' | 'cookie' | 'viewer' | 'none';

export interface Config {
  defaultNamespace: string;
  session: Session;
  login: boolean;
  dashboardUrl?: string | null;
}

export interface CompositionSpec {
  description?: string;
  params?: ParamSpec[];
  steps: StepSpec[];
  triggers?: { git?: { repository: string; branches?: string[] }[]; cron?: { schedule: string; timeZone?: string } };
}

export interface Condition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
}

export interface Metadata {
  name: string;
  namespace: string;
  uid?: string;
  creationTimestamp?: string;
  labels?: Record<string, string>;
}

export interface LedgerEntry {
  kind: string;
  id: string;
  region?: string;
  step: string;
  run?: string;
}

export interface Run {
  metadata: Metadata;
  spec: {
    composition: string;
    params?: Record<string, string>;
    cancel?: boolean;
    startedBy?: string;
    rerunOf?: { run: string; uid: string; from?: string };
  };
  status?: {
    phase?: string;
    progress?: string;
    startTime?: string;
    completionTime?: string;
    steps?: StepStatus[];
    context?: Record<string, string>;
    resources?: LedgerEntry[];
    cleanup?: { phase: string; podName?: string; attempts?: number; message?: string; heldUntil?: string };
    onFailureRun?: string;
    agent?: { name: string; slot: number; cacheHit?: boolean };
    compositionSpec?: CompositionSpec;
    conditions?: Condition[];
  };
}

export interface Agent {
  metadata: Metadata;
  spec: { capabilities?: string[]; capacity?: number; slots?: number };
  status?: {
    slots?: { index: number; run?: string; lastComposition?: string; lastUsed?: string }[];
    busySlots?: number;
    idleSlots?: number;
    queuedRuns?: number;
    cacheHits?: number;
    cacheMisses?: number;
    conditions?: Condition[];
  };
}

export interface Composition {
  metadata: Metadata;
  spec: CompositionSpec;
  status?: { conditions?: Condition[]; lastScheduleTime?: string };
}

export interface LogLine {
  kind: 'line';
  step: string;
  attempt: number;
  text: string;
}

export interface LogNote {
  kind: 'note';
  step?: string | null;
  text: string;
}

async function answer<T>(response: Response): Promise<T> {
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) {
    throw new Error(body.error ?? `${response.status} ${response.statusText}`);
  }
  return body as T;
}

export async function getJson<T>(path: string): Promise<T> {
  return answer<T>(await fetch(path, { headers: { accept: 'application/json' } }));
}

// An action: the custom header (which a cross-site form cannot send) lets the server tell
// the UI's own requests from cross-site ones.
export async function post<T>(path: string, body: unknown): Promise<T> {
  return answer<T>(
    await fetch(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-maestro-ui': '1' },
      body: JSON.stringify(body),
    }),
  );
}

export function runPath(namespace: string, name: string): string {
  return `/api/runs/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`;
}

export function decide(namespace: string, run: string, step: string, decision: 'Approve' | 'Reject', comment?: string) {
  return post<{ message: string; by: string }>(`${runPath(namespace, run)}/decide`, { step, decision, comment });
}

export function runAgain(namespace: string, run: string) {
  return post<{ run: string; message: string }>(`${runPath(namespace, run)}/again`, {});
}

// Reruns an ended run: its failed steps, or `from` and what follows it.
export function rerun(namespace: string, run: string, from: string | null) {
  return post<{ run: string; message: string }>(`${runPath(namespace, run)}/rerun`, from ? { from } : {});
}

// Runs a composition with the Run form's params, as the page's user.
export function runComposition(namespace: string, composition: string, params: Record<string, string>) {
  return post<{ run: string; message: string }>(
    `/api/compositions/${encodeURIComponent(namespace)}/${encodeURIComponent(composition)}/run`,
    { params },
  );
}

// The token goes to the server once; it keeps it in an HttpOnly cookie the page never sees.
export function login(token: string) {
  return post<{ username: string; message: string }>('/api/login', { token });
}

export function logout() {
  return post<{ message: string }>('/api/logout', {});
}

export function cancel(namespace: string, run: string) {
  return post<{ message: string }>(`${runPath(namespace, run)}/cancel`, {});
}

// Follows a watch-driven list: `list` replaces everything, `upsert` and `delete` change one
// object. Returns the function that stops following.
export function follow<T>(
  path: string,
  handlers: { list: (items: T[]) => void; upsert: (item: T) => void; remove: (namespace: string, name: string) => void; problem: (message: string) => void },
): () => void {
  const source = new EventSource(path);
  source.addEventListener('list', (e) => handlers.list(JSON.parse((e as MessageEvent).data)));
  source.addEventListener('upsert', (e) => handlers.upsert(JSON.parse((e as MessageEvent).data)));
  source.addEventListener('delete', (e) => {
    const gone = JSON.parse((e as MessageEvent).data);
    handlers.remove(gone.namespace, gone.name);
  });
  source.addEventListener('problem', (e) => handlers.problem(JSON.parse((e as MessageEvent).data).error));
  return () => source.close();
}

export function since(start?: string | null, end?: string | null, now: number = Date.now()): string {
  if (!start) return '';
  const from = Date.parse(start);
  const to = end ? Date.parse(end) : now;
  let seconds = Math.max(0, Math.round((to - from) / 1000));
  const hours = Math.floor(seconds / 3600);
  seconds -= hours * 3600;
  const minutes = Math.floor(seconds / 60);
  seconds -= minutes * 60;
  if (hours) return `${hours}h${minutes}m`;
  if (minutes) return `${minutes}m${seconds}s`;
  return `${seconds}s`;
}

export function ago(time?: string | null, now: number = Date.now()): string {
  return time ? `${since(time, null, now)} ago` : '';
}
