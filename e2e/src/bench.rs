//! The benchmark (`make bench`, and its smoke mode in `make test`): workloads run on a
//! node faked by kwok, so that orchestration is measured rather than containerd, by
//! Maestro, by Argo Workflows' controller (at its defaults and tuned) and by a bare client
//! that creates the same pods itself (what the API server and kwok allow at all). Each
//! system runs alone in a fresh namespace; the figures are wall time, runs and steps per
//! second, the step handoff (one pod seen finished to the next one seen created), the
//! controller's peak memory and CPU time, and the API server's write requests per step.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Namespace, Node, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams,
        PostParams,
    },
    runtime::{WatchStreamExt, watcher},
};
use maestro_api::{CompositionRun, CompositionRunSpec, labels};
use serde_json::json;

use crate::{maestro::Env, wait_for};

/// The fake node's name, and the label and taint that keep real pods off it.
pub const FAKE_NODE: &str = "kwok-bench-0";
const FAKE_LABEL: (&str, &str) = ("maestro.dev/bench", "kwok");
const FAKE_TAINT: &str = "kwok.x-k8s.io/node";

/// kwok, running out of cluster against the test cluster; killed when dropped.
pub struct Kwok {
    _child: tokio::process::Child,
}

impl Kwok {
    /// Starts kwok (built by e2e/bench/build.sh) managing the nodes annotated as fake.
    pub async fn start() -> Result<Self> {
        Self::start_with(&crate::maestro::repo_root().join("e2e/bench/stages.yaml")).await
    }

    /// Starts kwok playing the pod lifecycle of the `stages` file (the chaos suite's
    /// pods take seconds, so faults find steps in flight).
    pub async fn start_with(stages: &std::path::Path) -> Result<Self> {
        let bin = bench_path("KWOK_BIN")?;
        let kubeconfig = std::env::var("KUBECONFIG").context("KUBECONFIG is not set")?;
        let log = std::env::temp_dir().join("maestro-bench-kwok.log");
        let file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(&bin)
            .args(["--kubeconfig", &kubeconfig])
            .arg("--config")
            .arg(stages)
            .args(["--manage-all-nodes=false"])
            .args([&format!(
                "--manage-nodes-with-annotation-selector={FAKE_TAINT}=fake"
            )])
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { _child: child })
    }
}

/// Creates the fake node (if it is not there) and waits until kwok reports it Ready.
pub async fn fake_node(client: &Client) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(FAKE_NODE).await?.is_none() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": FAKE_NODE,
                "annotations": {FAKE_TAINT: "fake"},
                "labels": {FAKE_LABEL.0: FAKE_LABEL.1, "kubernetes.io/hostname": FAKE_NODE},
            },
            "spec": {"taints": [{"key": FAKE_TAINT, "value": "fake", "effect": "NoSchedule"}]},
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
    }
    wait_for(
        "the fake node to be Ready",
        Duration::from_secs(60),
        || async {
            let node = nodes.get(FAKE_NODE).await.map_err(|e| e.to_string())?;
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                Ok(())
            } else {
                Err("not Ready yet".to_string())
            }
        },
    )
    .await?;
    // kwok plays the node's pods once it holds the node's lease.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    wait_for(
        "kwok to hold the fake node's lease",
        Duration::from_secs(60),
        || async {
            match leases.get_opt(FAKE_NODE).await {
                Ok(Some(l))
                    if l.spec
                        .as_ref()
                        .and_then(|s| s.holder_identity.as_ref())
                        .is_some() =>
                {
                    Ok(())
                }
                Ok(_) => Err("no lease yet".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
}

/// What a pod on the fake node needs: the node selector and the toleration.
pub(crate) fn placement_json() -> (serde_json::Value, serde_json::Value) {
    (
        json!({FAKE_LABEL.0: FAKE_LABEL.1}),
        json!([{"key": FAKE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]),
    )
}

/// The systems measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// A client that creates the pods itself: what the API server and kwok allow at all.
    Bare,
    Maestro,
    /// Argo Workflows' controller at its defaults (qps 20, burst 30, 32 workers, 10 s
    /// requeue).
    ArgoDefault,
    /// Argo tuned (qps 50, burst 60, 128 workers, DEFAULT_REQUEUE_TIME=1s).
    ArgoTuned,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Maestro => "maestro",
            Self::ArgoDefault => "argo-default",
            Self::ArgoTuned => "argo-tuned",
        }
    }

    /// The pod label that names the run a pod belongs to, for the handoffs.
    fn run_label(self) -> &'static str {
        match self {
            Self::Bare => BARE_RUN_LABEL,
            Self::Maestro => labels::RUN,
            Self::ArgoDefault | Self::ArgoTuned => "workflows.argoproj.io/workflow",
        }
    }
}

const BARE_RUN_LABEL: &str = "maestro-bench/run";

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// W1: one-step runs, all created at once.
    OneStep { runs: usize },
    /// W2: runs of sequential steps, all created at once.
    Sequential { runs: usize, steps: usize },
    /// W3: one run: a first step, `width` steps after it at once, then one joining them.
    FanOut { width: usize },
    /// W4: runs that wait at an approval gate (Argo: a suspend step) before their one
    /// step; measured until all of them wait, for the memory of many active runs.
    Gated { runs: usize },
    /// W5: `kept` finished runs in the namespace before the controller starts (copies of
    /// one real finished run, status included), then `runs` one-step runs: memory and
    /// latency with history.
    History { kept: usize, runs: usize },
}

impl Workload {
    pub fn label(self) -> &'static str {
        match self {
            Self::OneStep { .. } => "w1",
            Self::Sequential { .. } => "w2",
            Self::FanOut { .. } => "w3",
            Self::Gated { .. } => "w4",
            Self::History { .. } => "w5",
        }
    }

    pub fn runs(self) -> usize {
        match self {
            Self::OneStep { runs }
            | Self::Sequential { runs, .. }
            | Self::Gated { runs }
            | Self::History { runs, .. } => runs,
            Self::FanOut { .. } => 1,
        }
    }

    /// The pods the workload runs to its end.
    pub fn steps(self) -> usize {
        match self {
            Self::OneStep { runs } | Self::History { runs, .. } => runs,
            Self::Sequential { runs, steps } => runs * steps,
            Self::FanOut { width } => width + 2,
            Self::Gated { .. } => 0,
        }
    }

    /// The step names, and what each depends on (None: the step before it).
    fn step_graph(self) -> Vec<(String, Option<Vec<String>>)> {
        match self {
            Self::OneStep { .. } | Self::Gated { .. } | Self::History { .. } => {
                vec![("s0".into(), None)]
            }
            Self::Sequential { steps, .. } => (0..steps).map(|i| (format!("s{i}"), None)).collect(),
            Self::FanOut { width } => {
                let fan: Vec<String> = (0..width).map(|i| format!("f{i}")).collect();
                let mut graph = vec![("start".to_string(), Some(vec![]))];
                graph.extend(
                    fan.iter()
                        .map(|f| (f.clone(), Some(vec!["start".to_string()]))),
                );
                graph.push(("join".into(), Some(fan)));
                graph
            }
        }
    }
}

/// Where the workloads' pods run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// The kwok fake node: orchestration alone.
    Fake,
    /// The cluster's real node: containerd starts real containers (the agent image).
    Real,
}

/// When each pod of a namespace was first seen, first seen finished, its step container
/// started, and its run.
#[derive(Default)]
struct PodTimes {
    created: HashMap<String, Instant>,
    finished: HashMap<String, Instant>,
    started: HashMap<String, Instant>,
    run: HashMap<String, String>,
}

/// When a pod's step container started, as the watch sees it at `now`: now if it runs; if
/// it has already ended, now less its run time (whole seconds: the API's timestamps),
/// since a short container may go from waiting to terminated between two pod updates.
fn step_started(pod: &Pod, now: Instant) -> Option<Instant> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == labels::STEP_CONTAINER)?;
    let state = status.state.as_ref()?;
    if state.running.is_some() {
        return Some(now);
    }
    let ended = state.terminated.as_ref()?;
    let ran = match (&ended.started_at, &ended.finished_at) {
        (Some(start), Some(end)) => {
            Duration::try_from(end.0.duration_since(start.0)).unwrap_or_default()
        }
        _ => Duration::ZERO,
    };
    Some(now.checked_sub(ran).unwrap_or(now))
}

/// Watches the namespace's pods and notes when each appears and finishes.
fn clock_pods(
    client: &Client,
    ns: &str,
    run_label: &'static str,
) -> (Arc<Mutex<PodTimes>>, tokio::task::JoinHandle<()>) {
    let times = Arc::new(Mutex::new(PodTimes::default()));
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let seen = times.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Ok(Some(pod)) = events.try_next().await {
            let now = Instant::now();
            let name = pod.name_any();
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            let run = pod.labels().get(run_label).cloned();
            let started = step_started(&pod, now);
            if let Ok(mut t) = seen.lock() {
                t.created.entry(name.clone()).or_insert(now);
                if let Some(at) = started {
                    t.started.entry(name.clone()).or_insert(at);
                }
                if let Some(run) = run {
                    t.run.entry(name.clone()).or_insert(run);
                }
                if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                    t.finished.entry(name).or_insert(now);
                }
            }
        }
    });
    (times, task)
}

/// Step handoffs, in milliseconds and sorted: for each pod after a run's first, the time
/// from the last pod of its run seen finished before it to the pod seen created. For
/// sequential steps that is the step before; in a fan-out, the step fanned out from.
fn handoffs(times: &PodTimes) -> Vec<f64> {
    let mut by_run: HashMap<&str, Vec<&str>> = HashMap::new();
    for (pod, run) in &times.run {
        by_run.entry(run.as_str()).or_default().push(pod.as_str());
    }
    let mut out = Vec::new();
    for pods in by_run.values() {
        for pod in pods {
            let Some(created) = times.created.get(*pod) else {
                continue;
            };
            // Another pod's finish: a pod first seen already finished (one made before
            // the watch began) hands off to nothing.
            let before = pods
                .iter()
                .filter(|p| *p != pod)
                .filter_map(|p| times.finished.get(*p))
                .filter(|f| **f <= *created)
                .max();
            if let Some(done) = before {
                out.push(created.saturating_duration_since(*done).as_secs_f64() * 1000.0);
            }
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

/// Each pod's own start, in milliseconds and sorted: from the pod seen created to its step
/// container seen started.
fn pod_starts(times: &PodTimes) -> Vec<f64> {
    let mut out: Vec<f64> = times
        .started
        .iter()
        .filter_map(|(pod, started)| {
            let created = times.created.get(pod)?;
            Some(started.saturating_duration_since(*created).as_secs_f64() * 1000.0)
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// What a run object's status says, as far as the bench cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Succeeded,
    Failed,
    /// Waiting at an approval gate (a suspend step).
    Waiting,
}

/// Maestro's CompositionRun, read by its phase.
fn maestro_mark(run: &DynamicObject) -> Option<Mark> {
    match run.data.pointer("/status/phase")?.as_str()? {
        "Succeeded" => Some(Mark::Succeeded),
        "Failed" | "Cancelled" => Some(Mark::Failed),
        "WaitingApproval" => Some(Mark::Waiting),
        _ => None,
    }
}

/// Argo's Workflow: finished by its phase, waiting while a suspend node runs.
fn argo_mark(workflow: &DynamicObject) -> Option<Mark> {
    let status = workflow.data.get("status")?;
    match status.get("phase")?.as_str()? {
        "Succeeded" => Some(Mark::Succeeded),
        "Failed" | "Error" => Some(Mark::Failed),
        "Running" => {
            let suspended = status
                .get("nodes")
                .and_then(|n| n.as_object())
                .is_some_and(|nodes| {
                    nodes.values().any(|n| {
                        n.get("type").and_then(|t| t.as_str()) == Some("Suspend")
                            && n.get("phase").and_then(|p| p.as_str()) == Some("Running")
                    })
                });
            suspended.then_some(Mark::Waiting)
        }
        _ => None,
    }
}

/// When each run object was first seen with each mark.
type RunMarks = Arc<Mutex<HashMap<String, (Mark, Instant)>>>;

/// The label on the runs a workload measures, when others (W5's history) share their
/// namespace.
const MEASURED_LABEL: (&str, &str) = ("maestro-bench/measured", "true");

/// Watches the namespace's measured run objects and notes when each is first seen at an
/// end (or waiting, for the gated workload).
fn clock_runs(
    client: &Client,
    ns: &str,
    resource: &ApiResource,
    mark: fn(&DynamicObject) -> Option<Mark>,
) -> (RunMarks, tokio::task::JoinHandle<()>) {
    let marks: RunMarks = Arc::default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    let seen = marks.clone();
    let config =
        watcher::Config::default().labels(&format!("{}={}", MEASURED_LABEL.0, MEASURED_LABEL.1));
    let task = tokio::spawn(async move {
        let mut events = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Ok(Some(run)) = events.try_next().await {
            let now = Instant::now();
            if let Some(m) = mark(&run)
                && let Ok(mut t) = seen.lock()
            {
                let name = run.name_any();
                // A failure outranks an earlier mark; otherwise the first time counts.
                match t.get(&name) {
                    Some((old, _)) if *old == m || m != Mark::Failed => {}
                    _ => {
                        t.insert(name, (m, now));
                    }
                }
            }
        }
    });
    (marks, task)
}

/// Waits until `runs` run objects carry `goal` (any failure ends the wait with an error);
/// returns when the last of them was seen so.
async fn wait_marks(
    marks: &RunMarks,
    runs: usize,
    goal: Mark,
    timeout: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen: Vec<(String, Mark, Instant)> = marks
            .lock()
            .map(|t| t.iter().map(|(n, (m, at))| (n.clone(), *m, *at)).collect())
            .unwrap_or_default();
        if let Some((name, _, _)) = seen.iter().find(|(_, m, _)| *m == Mark::Failed) {
            bail!("run {name} failed");
        }
        let reached: Vec<Instant> = seen
            .iter()
            .filter(|(_, m, _)| *m == goal)
            .map(|(_, _, at)| *at)
            .collect();
        if reached.len() >= runs {
            return Ok(reached.into_iter().max().unwrap_or_else(Instant::now));
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {runs} runs reached {goal:?} within {timeout:?}",
                reached.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A process's CPU seconds and resident memory, from /proc.
fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // The kernel's USER_HZ is 100 on Linux.
    Some((ticks / 100.0, rss_kib * 1024))
}

/// Samples a process's peak memory until stopped; returns (peak bytes, CPU seconds used).
struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(u64, f64)>,
}

impl Sampler {
    fn start(pid: Option<u32>) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let Some(pid) = pid else {
                return (0, 0.0);
            };
            let (cpu0, _) = process_usage(pid).unwrap_or_default();
            let mut peak = 0;
            let mut cpu = cpu0;
            loop {
                if let Some((c, rss)) = process_usage(pid) {
                    peak = peak.max(rss);
                    cpu = c;
                }
                tokio::select! {
                    _ = &mut stopped => break,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            (peak, cpu - cpu0)
        });
        Self { stop, task }
    }

    async fn finish(self) -> (u64, f64) {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The API server's count of write requests so far, from its `apiserver_request_total`.
/// Left out: pod status and binding (kwok and the scheduler write them for every pod,
/// whoever created it) and leases (heartbeats and leader election).
async fn api_writes(client: &Client) -> Result<f64> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    Ok(count_writes(&text))
}

fn count_writes(metrics: &str) -> f64 {
    let label = |labels: &str, key: &str| -> String {
        let pattern = format!("{key}=\"");
        labels
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix(&pattern))
            .map(|v| v.trim_end_matches('"').to_string())
            .unwrap_or_default()
    };
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("apiserver_request_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once('}')?;
            let verb = label(labels, "verb");
            let resource = label(labels, "resource");
            let subresource = label(labels, "subresource");
            let write = matches!(
                verb.as_str(),
                "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
            );
            let counted = write
                && resource != "leases"
                && !(resource == "pods" && matches!(subresource.as_str(), "status" | "binding"));
            counted.then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// One system's figures for one workload.
#[derive(Debug, Clone)]
pub struct Figures {
    pub system: System,
    pub workload: Workload,
    pub node: NodeKind,
    pub wall: Duration,
    /// Step handoffs in milliseconds, sorted (empty for one-step runs).
    pub handoffs_ms: Vec<f64>,
    /// Each pod's own start (seen created to its step container seen started), in
    /// milliseconds, sorted. Reported for the real node, where containerd starts it.
    pub pod_starts_ms: Vec<f64>,
    pub peak_rss: u64,
    pub cpu_seconds: f64,
    /// Write requests the API server served during the workload (see [`api_writes`]).
    pub api_writes: f64,
    /// W5: what the history cost the controller.
    pub history: Option<HistoryFigures>,
}

/// What W5's history cost: the controller's memory once it had listed the kept runs, and
/// how long it took to settle on them.
#[derive(Debug, Clone)]
pub struct HistoryFigures {
    /// Finished runs in the namespace when the controller started.
    pub kept: usize,
    /// From the controller's start to its being ready (its caches filled) and then its CPU
    /// idle (it has looked at the history), before the new runs.
    pub settle: Duration,
    /// Its resident memory then.
    pub settled_rss: u64,
    /// Finished runs the controller changed (or deleted) while it settled: none if it
    /// leaves them alone, as it should until their TTL.
    pub written: usize,
}

/// The resource version of each object the API lists, by name.
async fn resource_versions(api: &Api<DynamicObject>) -> Result<HashMap<String, String>> {
    Ok(api
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|o| (o.name_any(), o.resource_version().unwrap_or_default()))
        .collect())
}

/// How many of the objects `before` names have another resource version now, or are gone.
async fn changed_since(
    api: &Api<DynamicObject>,
    before: &HashMap<String, String>,
) -> Result<usize> {
    let now = resource_versions(api).await?;
    Ok(before
        .iter()
        .filter(|(name, version)| now.get(*name) != Some(*version))
        .count())
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted.get(rank).copied()
}

impl Figures {
    pub fn percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.handoffs_ms, p)
    }

    pub fn pod_start_percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.pod_starts_ms, p)
    }

    pub fn steps_per_second(&self) -> f64 {
        self.workload.steps() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / 1048576.0)
}

/// The figures as Markdown tables: the fake node's, the real node's (with the pods' own
/// start) and W5's history against the same runs without it, each when there are any.
pub fn table(all: &[Figures]) -> String {
    let fake: Vec<&Figures> = all.iter().filter(|f| f.node == NodeKind::Fake).collect();
    let real: Vec<&Figures> = all.iter().filter(|f| f.node == NodeKind::Real).collect();
    let mut out = String::new();
    if !fake.is_empty() {
        out.push_str(&rows(&fake, false));
    }
    if !real.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("Real node (containerd starts the agent image; Argo not measured: its executor image cannot be pulled here, there is no registry):\n\n");
        out.push_str(&rows(&real, true));
    }
    let history = history_table(all);
    if !history.is_empty() {
        out.push('\n');
        out.push_str(&history);
    }
    out
}

fn rows(figures: &[&Figures], pod_starts: bool) -> String {
    let mut out = String::from(
        "| workload | system | runs | steps | wall s | runs/s | steps/s | handoff p50 ms | handoff p99 ms |",
    );
    if pod_starts {
        out.push_str(" pod start p50 ms | pod start p99 ms |");
    }
    out.push_str(" peak RSS MiB | CPU s / 1k steps | API writes / step |\n|---|---|---|---|---|---|---|---|---|");
    if pod_starts {
        out.push_str("---|---|");
    }
    out.push_str("---|---|---|\n");
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for f in figures {
        let secs = f.wall.as_secs_f64().max(1e-9);
        let controller = f.system != System::Bare;
        let steps = f.workload.steps();
        let per_step = |v: f64| {
            if steps == 0 {
                "-".to_string()
            } else {
                format!("{:.1}", v / steps as f64)
            }
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            f.workload.label(),
            f.system.name(),
            f.workload.runs(),
            steps,
            secs,
            f.workload.runs() as f64 / secs,
            f.steps_per_second(),
            ms(f.percentile(50.0)),
            ms(f.percentile(99.0)),
        ));
        if pod_starts {
            out.push_str(&format!(
                " {} | {} |",
                ms(f.pod_start_percentile(50.0)),
                ms(f.pod_start_percentile(99.0))
            ));
        }
        out.push_str(&format!(
            " {} | {} | {} |\n",
            if controller {
                mib(f.peak_rss)
            } else {
                "-".into()
            },
            if controller {
                per_step(f.cpu_seconds * 1000.0)
            } else {
                "-".into()
            },
            per_step(f.api_writes),
        ));
    }
    out
}

/// W5 against the same number of one-step runs without history (W1 at that size, measured
/// in the same bench run): the controller's memory with and without the kept runs.
fn history_table(all: &[Figures]) -> String {
    let mut out = String::new();
    for f in all {
        let Some(history) = &f.history else {
            continue;
        };
        if out.is_empty() {
            out.push_str("| system | finished runs kept | new runs | settle s | kept runs it wrote | settled RSS MiB | peak RSS MiB | peak RSS without history MiB | RSS vs no history % | wall s vs no history |\n|---|---|---|---|---|---|---|---|---|---|\n");
        }
        let baseline = all.iter().find(|b| {
            b.system == f.system
                && b.node == f.node
                && b.workload
                    == (Workload::OneStep {
                        runs: f.workload.runs(),
                    })
        });
        let (base_rss, change, base_wall) = match baseline {
            Some(b) if b.peak_rss > 0 => (
                mib(b.peak_rss),
                format!(
                    "{:+.0}",
                    (f.peak_rss as f64 / b.peak_rss as f64 - 1.0) * 100.0
                ),
                format!("{:.1} vs {:.1}", f.wall.as_secs_f64(), b.wall.as_secs_f64()),
            ),
            _ => ("-".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {} | {} | {} | {base_rss} | {change} | {base_wall} |\n",
            f.system.name(),
            history.kept,
            f.workload.runs(),
            history.settle.as_secs_f64(),
            history.written,
            mib(history.settled_rss),
            mib(f.peak_rss),
        ));
    }
    out
}

/// Maestro against the others, per workload: steps/s and handoff p50 as ratios.
pub fn ratios(all: &[Figures]) -> String {
    let mut out = String::from(
        "| workload | against | steps/s ratio (maestro / other) | handoff p50 ratio (maestro / other) |\n|---|---|---|---|\n",
    );
    for maestro in all.iter().filter(|f| f.system == System::Maestro) {
        for other in all.iter().filter(|f| {
            f.system != System::Maestro && f.workload == maestro.workload && f.node == maestro.node
        }) {
            let steps = if maestro.workload.steps() == 0 {
                "-".to_string()
            } else {
                format!(
                    "{:.2}",
                    maestro.steps_per_second() / other.steps_per_second().max(1e-9)
                )
            };
            let handoff = match (maestro.percentile(50.0), other.percentile(50.0)) {
                (Some(m), Some(o)) if o > 0.0 => format!("{:.2}", m / o),
                _ => "-".into(),
            };
            let mut node = match maestro.node {
                NodeKind::Fake => String::new(),
                NodeKind::Real => " (real node)".to_string(),
            };
            // W5's baseline is a second W1 of another size: say which.
            if all.iter().any(|f| {
                f.workload.label() == maestro.workload.label() && f.workload != maestro.workload
            }) {
                node.push_str(&format!(" ({} runs)", maestro.workload.runs()));
            }
            out.push_str(&format!(
                "| {}{node} | {} | {steps} | {handoff} |\n",
                maestro.workload.label(),
                other.system.name()
            ));
        }
    }
    out
}

/// A composition of the workload's steps, on the fake node or the real one.
fn composition_yaml(name: &str, workload: Workload, node: NodeKind) -> String {
    let mut steps: Vec<serde_json::Value> = Vec::new();
    if let Workload::Gated { .. } = workload {
        steps.push(json!({"name": "gate", "approval": {"message": "bench"}}));
    }
    for (name, depends_on) in workload.step_graph() {
        let mut step = json!({"name": name, "task": "shell", "with": {"script": "true"}});
        if let Some(deps) = depends_on {
            step["dependsOn"] = json!(deps);
        }
        steps.push(step);
    }
    let mut spec = json!({"steps": steps});
    if node == NodeKind::Fake {
        let (selector, tolerations) = placement_json();
        spec["nodeSelector"] = selector;
        spec["tolerations"] = tolerations;
    }
    serde_json::to_string(&json!({
        "apiVersion": "maestro.dev/v1alpha1",
        "kind": "Composition",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap_or_default()
}

/// Creates objects 32 at a time.
pub(crate) async fn create_all<K>(api: &Api<K>, objects: Vec<K>) -> Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let creates = objects.into_iter().map(|object| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &object)
                .await
                .map(|_| ())
        }
    });
    for created in futures::stream::iter(creates)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
    {
        created?;
    }
    Ok(())
}

/// The goal of a workload's runs, and how long they may take to reach it.
fn goal(workload: Workload) -> (Mark, Duration) {
    let goal = match workload {
        Workload::Gated { .. } => Mark::Waiting,
        _ => Mark::Succeeded,
    };
    // Generous: Argo at its defaults waits 10 s between steps.
    let timeout = Duration::from_secs(120 + 12 * (workload.steps() + workload.runs()) as u64);
    (goal, timeout)
}

/// Maestro's resource, as a dynamic one for the shared run clock.
fn maestro_resource() -> ApiResource {
    ApiResource::erase::<CompositionRun>(&())
}

/// The name of W5's one real run, whose stored object the history copies.
const MODEL_RUN: &str = "w5-model";

/// `kept - 1` copies of a finished run object (`model`, as stored): its spec, labels,
/// annotations and finalizers, named `w5-kept-<i>`, with its status when `with_status`
/// (for a kind without a status subresource, which takes the status at creation).
fn history_copies(
    model: &DynamicObject,
    resource: &ApiResource,
    kept: usize,
    with_status: bool,
) -> Vec<DynamicObject> {
    let mut annotations = model.annotations().clone();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    (1..kept.max(1))
        .map(|i| {
            let mut copy = DynamicObject::new(&format!("w5-kept-{i}"), resource);
            copy.metadata.labels = Some(model.labels().clone());
            copy.metadata.annotations = Some(annotations.clone());
            copy.metadata.finalizers = model.metadata.finalizers.clone();
            copy.data = json!({"spec": model.data.get("spec").cloned().unwrap_or_default()});
            if with_status {
                copy.data["status"] = model.data.get("status").cloned().unwrap_or_default();
            }
            copy
        })
        .collect()
}

/// Creates the objects 32 at a time, each followed by its status (through the status
/// subresource) when `status` is given.
async fn create_with_status(
    api: &Api<DynamicObject>,
    objects: Vec<DynamicObject>,
    status: Option<&serde_json::Value>,
) -> Result<()> {
    let creates = objects.into_iter().map(|object| {
        let api = api.clone();
        async move {
            let name = object.name_any();
            api.create(&PostParams::default(), &object)
                .await
                .with_context(|| format!("creating {name}"))?;
            if let Some(status) = status {
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
                .with_context(|| format!("writing the status of {name}"))?;
            }
            Ok::<(), anyhow::Error>(())
        }
    });
    for created in futures::stream::iter(creates)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
    {
        created?;
    }
    Ok(())
}

/// Waits until the process has used under 2% of a core in each of two seconds in a row
/// (it has listed what it watches and looked at it), for at most `limit`; returns how long
/// that took.
async fn settle(pid: Option<u32>, limit: Duration) -> Duration {
    let start = Instant::now();
    let Some(pid) = pid else {
        return Duration::ZERO;
    };
    let cpu = || process_usage(pid).map(|(c, _)| c).unwrap_or_default();
    let mut last = cpu();
    let mut idle_seconds = 0;
    while idle_seconds < 2 && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu();
        idle_seconds = if now - last < 0.02 {
            idle_seconds + 1
        } else {
            0
        };
        last = now;
    }
    start.elapsed()
}

/// How long a controller may take to settle on W5's history.
const SETTLE_LIMIT: Duration = Duration::from_secs(600);

/// W5's history in Maestro's namespace: one real run of the composition to its end, the
/// operator stopped, `kept - 1` copies of the stored run (status through the status
/// subresource, finalizer and labels as the operator left them: a finished run is only
/// looked at, never written, until its TTL), and a fresh operator started on them.
/// Returns the sampler of the new operator's whole life and the history's figures once
/// it has settled.
async fn maestro_history(
    env: &mut Env,
    composition: &str,
    kept: usize,
) -> Result<(Sampler, HistoryFigures)> {
    let ns = env.ns.name.clone();
    let resource = maestro_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &ns, &resource);
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &ns);
    runs.create(
        &PostParams::default(),
        &new_run(MODEL_RUN, composition, false),
    )
    .await?;
    env.wait_finished(MODEL_RUN, Duration::from_secs(120))
        .await?;
    let model = api.get(MODEL_RUN).await?;
    if maestro_mark(&model) != Some(Mark::Succeeded) {
        bail!("the model run of the history did not succeed");
    }
    env.operator.kill().await?;
    let status = model.data.get("status").cloned();
    create_with_status(
        &api,
        history_copies(&model, &resource, kept, false),
        status.as_ref(),
    )
    .await?;
    let versions = resource_versions(&api).await?;
    env.operator.restart().await?;
    let pid = env.operator.pid();
    let sampler = Sampler::start(pid);
    let started = Instant::now();
    // Ready once its caches hold the history; then idle once it has looked at it.
    let log = env.operator.log.clone();
    wait_for("the operator to be ready", SETTLE_LIMIT, || async {
        let address = crate::maestro::metrics_addr_from_log(&log)?;
        http_ok(&address, "/readyz").await
    })
    .await?;
    settle(pid, SETTLE_LIMIT).await;
    let settled = started.elapsed();
    let written = changed_since(&api, &versions).await?;
    let settled_rss = pid
        .and_then(process_usage)
        .map(|(_, rss)| rss)
        .unwrap_or_default();
    Ok((
        sampler,
        HistoryFigures {
            kept,
            settle: settled,
            settled_rss,
            written,
        },
    ))
}

/// Removes W5's history quickly: the operator stopped (its cleanup of a finished run only
/// removes its finalizer), the finalizers dropped 64 at a time, then every run deleted by
/// `deletecollection` (again if one call runs out of time on 10,000), so that the
/// namespace can go.
async fn remove_maestro_history(env: &mut Env) -> Result<()> {
    env.operator.kill().await?;
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    let names: Vec<String> = runs
        .list_metadata(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|r| r.name_any())
        .collect();
    let unblock = json!({"metadata": {"finalizers": null}});
    let patches = names.iter().map(|name| {
        let (runs, unblock) = (runs.clone(), &unblock);
        async move {
            match runs
                .patch(name, &PatchParams::default(), &Patch::Merge(unblock))
                .await
            {
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                other => other.map(|_| ()),
            }
        }
    });
    for patched in futures::stream::iter(patches)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
    {
        patched?;
    }
    wait_for("W5's runs to be gone", Duration::from_secs(300), || async {
        // The API server may end one call before it has deleted them all.
        let _ = runs
            .delete_collection(&DeleteParams::background(), &ListParams::default())
            .await;
        match runs.list_metadata(&ListParams::default().limit(1)).await {
            Ok(list) if list.items.is_empty() => Ok(()),
            Ok(_) => Err("some are left".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// A run of `composition`; `measured` runs carry the label the run clock watches.
fn new_run(name: &str, composition: &str, measured: bool) -> CompositionRun {
    CompositionRun {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: measured.then(|| {
                BTreeMap::from([(MEASURED_LABEL.0.to_string(), MEASURED_LABEL.1.to_string())])
            }),
            ..ObjectMeta::default()
        },
        spec: CompositionRunSpec {
            composition: composition.to_string(),
            params: BTreeMap::new(),
            cancel: false,
            priority: 0,
            started_by: None,
            rerun_of: None,
        },
        status: None,
    }
}

/// Maestro: the workload's runs of one composition, all created at once (for W5, against
/// an operator started on the history).
pub async fn maestro(env: &mut Env, workload: Workload, node: NodeKind) -> Result<Figures> {
    let ns = env.ns.name.clone();
    let composition = format!("bench-{}", workload.label());
    env.apply_yaml(&composition_yaml(&composition, workload, node))
        .await?;
    env.wait_compositions_ready(std::slice::from_ref(&composition))
        .await?;
    let history = match workload {
        Workload::History { kept, .. } => Some(maestro_history(env, &composition, kept).await?),
        _ => None,
    };
    let (times, clock) = clock_pods(&env.client, &ns, System::Maestro.run_label());
    let (marks, run_clock) = clock_runs(&env.client, &ns, &maestro_resource(), maestro_mark);
    let writes_before = api_writes(&env.client).await?;
    let sampler = Sampler::start(env.operator.pid());
    let api: Api<CompositionRun> = Api::namespaced(env.client.clone(), &ns);
    let started = Instant::now();
    let runs: Vec<CompositionRun> = (0..workload.runs())
        .map(|i| new_run(&format!("{}-{i}", workload.label()), &composition, true))
        .collect();
    create_all(&api, runs).await?;
    let (goal, timeout) = goal(workload);
    let last = wait_marks(&marks, workload.runs(), goal, timeout).await?;
    let mut figures = finish(
        System::Maestro,
        workload,
        &env.client,
        started,
        last,
        (times, clock, run_clock),
        sampler,
        writes_before,
    )
    .await?;
    figures.node = node;
    if let Some((life, history)) = history {
        // The peak over the operator's whole life on the history, its listing included.
        let (peak, _) = life.finish().await;
        figures.peak_rss = figures.peak_rss.max(peak);
        figures.history = Some(history);
    }
    Ok(figures)
}

/// Stops the clocks and the sampler and gathers the figures.
#[allow(clippy::too_many_arguments)]
async fn finish(
    system: System,
    workload: Workload,
    client: &Client,
    started: Instant,
    last: Instant,
    (times, clock, run_clock): (
        Arc<Mutex<PodTimes>>,
        tokio::task::JoinHandle<()>,
        tokio::task::JoinHandle<()>,
    ),
    sampler: Sampler,
    writes_before: f64,
) -> Result<Figures> {
    run_clock.abort();
    let wall = last.saturating_duration_since(started);
    let (peak_rss, cpu_seconds) = sampler.finish().await;
    let writes = api_writes(client).await? - writes_before;
    // Let the watch catch the last events before reading the clock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    clock.abort();
    let (handoffs_ms, pod_starts_ms) = times
        .lock()
        .map(|t| (handoffs(&t), pod_starts(&t)))
        .unwrap_or_default();
    Ok(Figures {
        system,
        workload,
        node: NodeKind::Fake,
        wall,
        handoffs_ms,
        pod_starts_ms,
        peak_rss,
        cpu_seconds,
        api_writes: writes,
        history: None,
    })
}

/// The bare client's pod for one step: on the fake node, or on the real one the agent
/// image running a no-op (`true`) as a restricted step pod runs.
fn bare_pod(name: &str, run: &str, node: NodeKind) -> Result<Pod> {
    let mut pod = json!({
        "metadata": {"name": name, "labels": {BARE_RUN_LABEL: run}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": labels::STEP_CONTAINER, "image": "localhost/maestro/agent:dev"}],
        },
    });
    match node {
        NodeKind::Fake => {
            let (selector, tolerations) = placement_json();
            pod["spec"]["nodeSelector"] = selector;
            pod["spec"]["tolerations"] = tolerations;
        }
        NodeKind::Real => {
            pod["spec"]["automountServiceAccountToken"] = json!(false);
            pod["spec"]["securityContext"] = json!({
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            });
            pod["spec"]["containers"][0]["command"] = json!(["true"]);
            pod["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
            pod["spec"]["containers"][0]["securityContext"] = json!({
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
            });
        }
    }
    Ok(serde_json::from_value(pod)?)
}

/// The bare client: each run's pods in the workload's order, each created once the pods
/// it depends on are seen finished, all runs at once.
pub async fn bare(
    client: &Client,
    ns: &str,
    workload: Workload,
    node: NodeKind,
) -> Result<Figures> {
    let (times, clock) = clock_pods(client, ns, BARE_RUN_LABEL);
    let writes_before = api_writes(client).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let graph = workload.step_graph();
    let run_one = |run: String| {
        let (pods, times, graph) = (pods.clone(), times.clone(), graph.clone());
        async move {
            let pod_name = |step: &str| format!("{run}-{step}");
            // Waves: each step starts once everything it depends on has finished.
            let mut done: Vec<String> = Vec::new();
            // A step without dependencies listed follows the step listed before it.
            let mut left: Vec<(String, Vec<String>)> = graph
                .iter()
                .enumerate()
                .map(|(i, (step, deps))| {
                    let deps = deps.clone().unwrap_or_else(|| {
                        i.checked_sub(1)
                            .and_then(|before| graph.get(before))
                            .map(|(s, _)| vec![s.clone()])
                            .unwrap_or_default()
                    });
                    (step.clone(), deps)
                })
                .collect();
            while !left.is_empty() {
                let (wave, rest): (Vec<_>, Vec<_>) = left
                    .into_iter()
                    .partition(|(_, deps)| deps.iter().all(|d| done.contains(d)));
                left = rest;
                if wave.is_empty() {
                    bail!("the workload's graph has a cycle");
                }
                for (step, _) in &wave {
                    let pod = bare_pod(&pod_name(step), &run, node)?;
                    pods.create(&PostParams::default(), &pod).await?;
                }
                // As fast as a client can react: the pod watch's clock, read every 2 ms.
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let all_finished = times
                        .lock()
                        .map(|t| {
                            wave.iter()
                                .all(|(s, _)| t.finished.contains_key(&pod_name(s)))
                        })
                        .unwrap_or(false);
                    if all_finished {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("pods of {run} did not finish within 120s");
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                done.extend(wave.into_iter().map(|(s, _)| s));
            }
            Ok::<(), anyhow::Error>(())
        }
    };
    let runs = (0..workload.runs()).map(|r| format!("{}-{r}", workload.label()));
    for done in futures::future::join_all(runs.map(run_one)).await {
        done?;
    }
    let last = Instant::now();
    let writes = api_writes(client).await? - writes_before;
    tokio::time::sleep(Duration::from_millis(500)).await;
    clock.abort();
    let (handoffs_ms, pod_starts_ms) = times
        .lock()
        .map(|t| (handoffs(&t), pod_starts(&t)))
        .unwrap_or_default();
    Ok(Figures {
        system: System::Bare,
        workload,
        node,
        wall: last.saturating_duration_since(started),
        handoffs_ms,
        pod_starts_ms,
        peak_rss: 0,
        cpu_seconds: 0.0,
        api_writes: writes,
        history: None,
    })
}

/// Argo's Workflow resource.
fn workflow_resource() -> ApiResource {
    ApiResource {
        group: "argoproj.io".into(),
        version: "v1alpha1".into(),
        api_version: "argoproj.io/v1alpha1".into(),
        kind: "Workflow".into(),
        plural: "workflows".into(),
    }
}

/// The workload as an Argo Workflow: container templates with no outputs (so that pods
/// kwok completes finish the step), placed on the fake node.
fn workflow(name: &str, workload: Workload) -> Result<DynamicObject> {
    let (selector, tolerations) = placement_json();
    let step = json!({"name": "step", "container": {"image": "localhost/maestro/agent:dev", "command": ["true"]}});
    let main = match workload {
        Workload::OneStep { .. } | Workload::History { .. } => {
            json!({"name": "main", "steps": [[{"name": "s0", "template": "step"}]]})
        }
        Workload::Sequential { .. } => {
            let steps: Vec<serde_json::Value> = workload
                .step_graph()
                .into_iter()
                .map(|(s, _)| json!([{"name": s, "template": "step"}]))
                .collect();
            json!({"name": "main", "steps": steps})
        }
        Workload::FanOut { .. } => {
            let tasks: Vec<serde_json::Value> = workload
                .step_graph()
                .into_iter()
                .map(|(s, deps)| {
                    json!({"name": s, "template": "step", "dependencies": deps.unwrap_or_default()})
                })
                .collect();
            json!({"name": "main", "dag": {"tasks": tasks}})
        }
        Workload::Gated { .. } => json!({"name": "main", "steps": [
            [{"name": "gate", "template": "gate"}],
            [{"name": "s0", "template": "step"}],
        ]}),
    };
    let templates = json!([main, step, {"name": "gate", "suspend": {}}]);
    let mut object = DynamicObject::new(name, &workflow_resource());
    object.metadata.labels = Some(BTreeMap::from([(
        MEASURED_LABEL.0.to_string(),
        MEASURED_LABEL.1.to_string(),
    )]));
    object.data = json!({"spec": {
        "entrypoint": "main",
        "nodeSelector": selector,
        "tolerations": tolerations,
        "templates": templates,
    }});
    Ok(object)
}

/// Installs Argo's CRDs (built beside its controller by e2e/bench/build.sh).
async fn install_argo_crds(client: &Client) -> Result<()> {
    let dir = bench_path("ARGO_CRDS")?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        // The folder holds a kustomization.yaml beside the CRDs.
        let is_crd = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("argoproj.io_") && n.ends_with(".yaml"));
        if is_crd {
            files.push(path);
        }
    }
    crate::maestro::apply_crds(client, &files, "maestro-bench", Duration::from_secs(60)).await
}

/// Argo's workflow-controller, out of cluster, managing one namespace; killed when dropped.
struct ArgoController {
    child: tokio::process::Child,
    log: PathBuf,
}

impl ArgoController {
    /// Starts the controller; [`Self::ready`] waits until it serves.
    async fn start(client: &Client, ns: &str, tuned: bool) -> Result<Self> {
        let bin = bench_path("ARGO_BIN")?;
        let kubeconfig = std::env::var("KUBECONFIG").context("KUBECONFIG is not set")?;
        // The controller exits at start without its ConfigMap. Its metrics and telemetry
        // ports are turned off (9090 may be taken by the cluster's Prometheus).
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let config: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "workflow-controller-configmap"},
            "data": {"metricsConfig": "enabled: false\n", "telemetryConfig": "enabled: false\n"},
        }))?;
        // Applied: W5 starts a second controller in the namespace.
        configmaps
            .patch(
                "workflow-controller-configmap",
                &PatchParams::apply("maestro-bench").force(),
                &Patch::Apply(&config),
            )
            .await?;
        let log = std::env::temp_dir().join(format!("maestro-bench-argo-{ns}.log"));
        let file = std::fs::File::create(&log)?;
        let mut command = tokio::process::Command::new(&bin);
        command
            .env("LEADER_ELECTION_DISABLE", "true")
            .args([
                "--kubeconfig",
                &kubeconfig,
                "--namespaced",
                "--managed-namespace",
                ns,
            ])
            .args([
                "--namespace",
                ns,
                "--configmap",
                "workflow-controller-configmap",
            ])
            .args(["--executor-image", "localhost/maestro/agent:dev"]);
        if tuned {
            command.env("DEFAULT_REQUEUE_TIME", "1s").args([
                "--qps",
                "50",
                "--burst",
                "60",
                "--workflow-workers",
                "128",
            ]);
        }
        let child = command
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { child, log })
    }

    /// Waits until its health endpoint answers (its informers have synced by then).
    async fn ready(&self) -> Result<()> {
        wait_for(
            "Argo's controller to be healthy",
            Duration::from_secs(120),
            || async { http_ok("127.0.0.1:6060", "/healthz").await },
        )
        .await
        .with_context(|| format!("see {}", self.log.display()))
    }

    /// Stops it and waits until it has exited (and freed its port).
    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// A plain HTTP/1.0 GET that must answer 200.
async fn http_ok(address: &str, path: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(answer.lines().next().unwrap_or_default().to_string())
    }
}

/// Argo: the workload's Workflows, all created at once, against a fresh controller.
async fn argo(client: &Client, ns: &str, workload: Workload, tuned: bool) -> Result<Figures> {
    let system = if tuned {
        System::ArgoTuned
    } else {
        System::ArgoDefault
    };
    let resource = workflow_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let history = match workload {
        Workload::History { kept, .. } => {
            Some(argo_history(client, ns, workload, tuned, kept).await?)
        }
        _ => None,
    };
    let versions = match history {
        Some(_) => resource_versions(&api).await?,
        None => HashMap::new(),
    };
    let launched = Instant::now();
    let controller = ArgoController::start(client, ns, tuned).await?;
    let life = Sampler::start(controller.pid());
    controller.ready().await?;
    let history = match history {
        Some(kept) => {
            settle(controller.pid(), SETTLE_LIMIT).await;
            let settled = launched.elapsed();
            let written = changed_since(&api, &versions).await?;
            let settled_rss = controller
                .pid()
                .and_then(process_usage)
                .map(|(_, rss)| rss)
                .unwrap_or_default();
            Some(HistoryFigures {
                kept,
                settle: settled,
                settled_rss,
                written,
            })
        }
        None => None,
    };
    let (times, clock) = clock_pods(client, ns, system.run_label());
    let (marks, run_clock) = clock_runs(client, ns, &resource, argo_mark);
    let writes_before = api_writes(client).await?;
    let sampler = Sampler::start(controller.pid());
    let started = Instant::now();
    let workflows = (0..workload.runs())
        .map(|i| workflow(&format!("{}-{i}", workload.label()), workload))
        .collect::<Result<Vec<_>>>()?;
    create_all(&api, workflows).await?;
    let (goal, timeout) = goal(workload);
    let last = wait_marks(&marks, workload.runs(), goal, timeout).await?;
    let figures = finish(
        system,
        workload,
        client,
        started,
        last,
        (times, clock, run_clock),
        sampler,
        writes_before,
    )
    .await;
    let (life_peak, _) = life.finish().await;
    controller.stop().await;
    let mut figures = figures?;
    if history.is_some() {
        // The peak over the controller's whole life on the history, its listing included.
        figures.peak_rss = figures.peak_rss.max(life_peak);
        figures.history = history;
    }
    Ok(figures)
}

/// W5's history in Argo's namespace: one real Workflow run to its end by a controller
/// that is then stopped, and `kept - 1` copies of the stored Workflow, status and labels
/// included (`workflows.argoproj.io/completed: "true"` keeps a completed Workflow out of
/// the controller's queue; its informer still lists it). Returns the number kept.
async fn argo_history(
    client: &Client,
    ns: &str,
    workload: Workload,
    tuned: bool,
    kept: usize,
) -> Result<usize> {
    let resource = workflow_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let controller = ArgoController::start(client, ns, tuned).await?;
    controller.ready().await?;
    let mut model = workflow(MODEL_RUN, workload)?;
    model.metadata.labels = None;
    api.create(&PostParams::default(), &model).await?;
    let model = wait_for(
        "the model Workflow of the history to complete",
        Duration::from_secs(120),
        || async {
            let found = api.get(MODEL_RUN).await.map_err(|e| e.to_string())?;
            let completed = found
                .labels()
                .get("workflows.argoproj.io/completed")
                .is_some_and(|v| v == "true");
            match argo_mark(&found) {
                Some(Mark::Succeeded) if completed => Ok(found),
                mark => Err(format!("{mark:?}, completed label {completed}")),
            }
        },
    )
    .await?;
    controller.stop().await;
    create_all(&api, history_copies(&model, &resource, kept, true)).await?;
    Ok(kept)
}

/// A path e2e/bench/versions.sh names (built by e2e/bench/build.sh).
fn bench_path(variable: &str) -> Result<PathBuf> {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(". e2e/bench/versions.sh && echo \"${variable}\""))
        .current_dir(crate::maestro::repo_root())
        .output()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.exists() {
        bail!(
            "{} not found: run `bash e2e/bench/build.sh` first (`build.sh argo` for Argo)",
            path.display()
        );
    }
    Ok(path)
}

/// The workloads and how often each is repeated.
#[derive(Debug, Clone)]
pub struct Plan {
    /// On the kwok fake node.
    pub workloads: Vec<Workload>,
    /// On the real node, for Maestro and the bare client (Argo's executor image cannot be
    /// pulled here: there is no registry).
    pub real_workloads: Vec<Workload>,
    pub systems: Vec<System>,
    /// Each (system, workload) runs this often; the run with the median wall time counts.
    pub repeat: usize,
}

/// The real node's workloads: small, since containerd starts every pod.
fn real_workloads() -> Vec<Workload> {
    vec![
        Workload::OneStep { runs: 20 },
        Workload::Sequential { runs: 5, steps: 5 },
    ]
}

impl Plan {
    pub fn full(repeat: usize) -> Self {
        Self {
            workloads: vec![
                Workload::OneStep { runs: 500 },
                Workload::Sequential {
                    runs: 50,
                    steps: 10,
                },
                // A composition holds at most 64 steps: a first one, 62 fanned out, a join.
                Workload::FanOut { width: 62 },
                Workload::Gated { runs: 1000 },
                Workload::History {
                    kept: 10_000,
                    runs: 100,
                },
            ],
            real_workloads: real_workloads(),
            systems: vec![
                System::Bare,
                System::Maestro,
                System::ArgoDefault,
                System::ArgoTuned,
            ],
            repeat,
        }
    }

    /// A fifth of the full sizes (the fan-out kept whole), for a quicker comparison.
    pub fn medium(repeat: usize) -> Self {
        Self {
            workloads: vec![
                Workload::OneStep { runs: 100 },
                Workload::Sequential {
                    runs: 10,
                    steps: 10,
                },
                Workload::FanOut { width: 62 },
                Workload::Gated { runs: 200 },
                Workload::History {
                    kept: 2_000,
                    runs: 100,
                },
            ],
            ..Self::full(repeat)
        }
    }

    /// A few runs, no Argo: shows the bench still works (in `make test`).
    pub fn smoke() -> Self {
        Self {
            workloads: vec![
                Workload::OneStep { runs: 5 },
                Workload::Sequential { runs: 2, steps: 3 },
                Workload::FanOut { width: 4 },
                Workload::Gated { runs: 3 },
                Workload::History { kept: 50, runs: 5 },
            ],
            real_workloads: SMOKE_REAL.to_vec(),
            systems: vec![System::Bare, System::Maestro],
            repeat: 1,
        }
    }

    /// Whether `system` runs `workload`: a bare client has no gates to wait at, and no
    /// controller to hold a history.
    pub fn runs(system: System, workload: Workload) -> bool {
        system != System::Bare
            || !matches!(workload, Workload::Gated { .. } | Workload::History { .. })
    }
}

/// The smoke mode's real-node case.
const SMOKE_REAL: [Workload; 1] = [Workload::OneStep { runs: 1 }];

/// Runs the plan, each system alone in a fresh namespace: the fake node's workloads with
/// kwok up, then the real node's; returns the figures (one per system, workload and node,
/// and for W5 the same runs without history if the plan has no such W1).
pub async fn run_all(plan: &Plan) -> Result<Vec<Figures>> {
    let client = crate::client().await?;
    let mut all = Vec::new();
    if !plan.workloads.is_empty() {
        // A node lease left by an earlier kwok keeps a new one from managing the node (and
        // pods scheduled before it holds the lease are never played): start clean.
        remove_fake_node(&client).await;
        let kwok = Kwok::start().await?;
        let measured = measure(&client, plan, &mut all).await;
        // The fake node goes with kwok: without its kubelet it would turn NotReady and
        // linger.
        remove_fake_node(&client).await;
        drop(kwok);
        measured?;
    }
    for &workload in &plan.real_workloads {
        for &system in &plan.systems {
            if matches!(system, System::Bare | System::Maestro) && Plan::runs(system, workload) {
                all.push(median(&client, system, workload, NodeKind::Real, plan.repeat).await?);
            }
        }
    }
    Ok(all)
}

/// Deletes the fake node and its lease, if there.
pub(crate) async fn remove_fake_node(client: &Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete(FAKE_NODE, &DeleteParams::default()).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let _ = leases.delete(FAKE_NODE, &DeleteParams::default()).await;
}

async fn measure(client: &Client, plan: &Plan, all: &mut Vec<Figures>) -> Result<()> {
    fake_node(client).await?;
    if plan
        .systems
        .iter()
        .any(|s| matches!(s, System::ArgoDefault | System::ArgoTuned))
    {
        install_argo_crds(client).await?;
    }
    for &workload in &plan.workloads {
        for &system in &plan.systems {
            if !Plan::runs(system, workload) {
                continue;
            }
            if let Workload::History { runs, .. } = workload {
                // The same runs without history, for the memory with it against without.
                let baseline = Workload::OneStep { runs };
                let measured = all.iter().any(|f| {
                    f.system == system && f.workload == baseline && f.node == NodeKind::Fake
                });
                if !measured {
                    all.push(median(client, system, baseline, NodeKind::Fake, plan.repeat).await?);
                }
            }
            all.push(median(client, system, workload, NodeKind::Fake, plan.repeat).await?);
        }
    }
    Ok(())
}

/// One system and workload `repeat` times; the figures of the run with the median wall
/// time.
async fn median(
    client: &Client,
    system: System,
    workload: Workload,
    node: NodeKind,
    repeat: usize,
) -> Result<Figures> {
    let mut repeats = Vec::new();
    for _ in 0..repeat.max(1) {
        let figures = once(client, system, workload, node).await?;
        eprintln!(
            "[bench] {} {}{}: {:.1} s",
            workload.label(),
            system.name(),
            if node == NodeKind::Real {
                " (real node)"
            } else {
                ""
            },
            figures.wall.as_secs_f64()
        );
        repeats.push(figures);
    }
    repeats.sort_by_key(|f| f.wall);
    let median = repeats.swap_remove(repeats.len() / 2);
    // Each row as it is measured, so that a long bench cut short still tells.
    eprint!("{}", table(std::slice::from_ref(&median)));
    Ok(median)
}

/// One system, one workload, in a namespace of its own, which is gone before this returns
/// (so that its deletion does not load the next measurement).
async fn once(
    client: &Client,
    system: System,
    workload: Workload,
    node: NodeKind,
) -> Result<Figures> {
    let prefix = format!("bench-{}-{}", system.name(), workload.label());
    let (figures, ns) = match system {
        System::Maestro => {
            // One process and no election, as Argo runs here (LEADER_ELECTION_DISABLE):
            // on a saturated 2-core machine a Lease renewal can take over 5 s, and a lost
            // Lease stops the operator (in a cluster its container restarts; here the
            // measurement would stall).
            let mut env = Env::with_options(
                &prefix,
                "restricted",
                &[
                    "--workspace".to_string(),
                    "emptyDir".to_string(),
                    "--leader-elect=false".to_string(),
                ],
            )
            .await?;
            let figures = maestro(&mut env, workload, node).await;
            if let Workload::History { .. } = workload
                && let Err(e) = remove_maestro_history(&mut env).await
            {
                eprintln!("[bench] removing W5's history: {e:#}");
            }
            (figures, env.ns.name.clone())
        }
        System::Bare | System::ArgoDefault | System::ArgoTuned => {
            // The plainest pods there are, and Argo's, which set no security context.
            let ns =
                crate::TestNamespace::create_with_security(client, &prefix, "baseline").await?;
            let figures = match system {
                System::Bare => bare(client, &ns.name, workload, node).await,
                _ => argo(client, &ns.name, workload, system == System::ArgoTuned).await,
            };
            (figures, ns.name.clone())
        }
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = wait_for(
        &format!("namespace {ns} to be gone"),
        Duration::from_secs(300),
        || async {
            match namespaces.get_opt(&ns).await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err("still there".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_leave_out_pod_status_bindings_leases_and_reads() {
        let metrics = r#"
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 10
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="binding",verb="POST",version="v1"} 10
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="status",verb="PATCH",version="v1"} 20
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 7
apiserver_request_total{code="200",component="apiserver",dry_run="",group="maestro.dev",resource="compositionruns",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 99
"#;
        assert_eq!(count_writes(metrics), 13.0);
    }

    #[test]
    fn a_fan_out_hands_off_from_the_step_it_fans_out_from() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut times = PodTimes::default();
        for (pod, created, finished) in [
            ("a", 0, 100),
            ("b", 110, 200),
            ("c", 130, 300),
            ("j", 320, 400),
        ] {
            times.created.insert(pod.into(), at(created));
            times.finished.insert(pod.into(), at(finished));
            times.run.insert(pod.into(), "r".into());
        }
        // b and c follow a (10 and 30 ms); the join follows c, the last to finish (20 ms).
        assert_eq!(handoffs(&times), vec![10.0, 20.0, 30.0]);
    }

    #[test]
    fn ratios_tell_w5_s_baseline_from_the_other_w1() {
        let figures = |system, runs| Figures {
            system,
            workload: Workload::OneStep { runs },
            node: NodeKind::Fake,
            wall: Duration::from_secs(10),
            handoffs_ms: vec![],
            pod_starts_ms: vec![],
            peak_rss: 1,
            cpu_seconds: 1.0,
            api_writes: 1.0,
            history: None,
        };
        let all = [
            figures(System::Maestro, 500),
            figures(System::ArgoTuned, 500),
            figures(System::Maestro, 100),
            figures(System::ArgoTuned, 100),
        ];
        let table = ratios(&all);
        assert!(
            table.contains("| w1 (500 runs) | argo-tuned | 1.00 |"),
            "{table}"
        );
        assert!(
            table.contains("| w1 (100 runs) | argo-tuned | 1.00 |"),
            "{table}"
        );
        assert_eq!(table.matches("argo-tuned").count(), 2, "{table}");
    }

    #[test]
    fn a_pod_first_seen_finished_hands_off_to_nothing() {
        let t0 = Instant::now();
        let mut times = PodTimes::default();
        // W5's model run: its one pod was made before the watch began.
        times.created.insert("model".into(), t0);
        times.finished.insert("model".into(), t0);
        times.run.insert("model".into(), "w5-model".into());
        assert!(handoffs(&times).is_empty());
    }

    #[test]
    fn a_step_seen_already_ended_started_its_run_time_earlier() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [{
                "name": labels::STEP_CONTAINER, "image": "i", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {
                    "exitCode": 0,
                    "startedAt": "2026-12-04T10:00:00Z",
                    "finishedAt": "2026-12-04T10:00:02Z",
                }},
            }]},
        }))
        .expect("a pod");
        let now = Instant::now() + Duration::from_secs(10);
        assert_eq!(step_started(&pod, now), Some(now - Duration::from_secs(2)));
        let mut times = PodTimes::default();
        times
            .created
            .insert("p".into(), now - Duration::from_secs(3));
        times
            .started
            .insert("p".into(), now - Duration::from_secs(2));
        assert_eq!(pod_starts(&times), vec![1000.0]);
    }

    #[test]
    fn history_copies_carry_what_the_controller_left_on_the_finished_run() {
        let resource = maestro_resource();
        let model: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "maestro.dev/v1alpha1",
            "kind": "CompositionRun",
            "metadata": {
                "name": MODEL_RUN,
                "uid": "u1",
                "resourceVersion": "7",
                "labels": {"maestro.dev/phase": "Succeeded"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "a": "b"},
                "finalizers": ["maestro.dev/cleanup"],
            },
            "spec": {"composition": "bench-w5"},
            "status": {"phase": "Succeeded"},
        }))
        .expect("a run");
        let copies = history_copies(&model, &resource, 3, true);
        assert_eq!(copies.len(), 2, "the model itself is the third");
        let copy = &copies[0];
        assert_eq!(copy.name_any(), "w5-kept-1");
        assert_eq!(copy.labels(), model.labels());
        assert_eq!(copy.annotations().get("a").map(String::as_str), Some("b"));
        assert!(
            !copy
                .annotations()
                .contains_key("kubectl.kubernetes.io/last-applied-configuration")
        );
        assert_eq!(copy.metadata.finalizers, model.metadata.finalizers);
        assert_eq!(copy.metadata.uid, None);
        assert_eq!(copy.metadata.resource_version, None);
        assert_eq!(copy.data["spec"], model.data["spec"]);
        assert_eq!(copy.data["status"], model.data["status"]);
        let without = history_copies(&model, &resource, 3, false);
        assert!(
            without[0].data.get("status").is_none(),
            "written after create"
        );
    }
}
