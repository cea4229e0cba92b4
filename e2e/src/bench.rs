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
use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{ConfigMap, Namespace, Node, Pod},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams},
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
}

impl Workload {
    pub fn label(self) -> &'static str {
        match self {
            Self::OneStep { .. } => "w1",
            Self::Sequential { .. } => "w2",
            Self::FanOut { .. } => "w3",
            Self::Gated { .. } => "w4",
        }
    }

    pub fn runs(self) -> usize {
        match self {
            Self::OneStep { runs } | Self::Sequential { runs, .. } | Self::Gated { runs } => runs,
            Self::FanOut { .. } => 1,
        }
    }

    /// The pods the workload runs to its end.
    pub fn steps(self) -> usize {
        match self {
            Self::OneStep { runs } => runs,
            Self::Sequential { runs, steps } => runs * steps,
            Self::FanOut { width } => width + 2,
            Self::Gated { .. } => 0,
        }
    }

    /// The step names, and what each depends on (None: the step before it).
    fn step_graph(self) -> Vec<(String, Option<Vec<String>>)> {
        match self {
            Self::OneStep { .. } | Self::Gated { .. } => vec![("s0".into(), None)],
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

/// When each pod of a namespace was first seen, first seen finished, and its run.
#[derive(Default)]
struct PodTimes {
    created: HashMap<String, Instant>,
    finished: HashMap<String, Instant>,
    run: HashMap<String, String>,
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
            if let Ok(mut t) = seen.lock() {
                t.created.entry(name.clone()).or_insert(now);
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
        let finishes: Vec<Instant> = pods
            .iter()
            .filter_map(|p| times.finished.get(*p).copied())
            .collect();
        for pod in pods {
            let Some(created) = times.created.get(*pod) else {
                continue;
            };
            let before = finishes.iter().filter(|f| **f <= *created).max();
            if let Some(done) = before {
                out.push(created.saturating_duration_since(*done).as_secs_f64() * 1000.0);
            }
        }
    }
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

/// Watches the namespace's run objects and notes when each is first seen at an end (or
/// waiting, for the gated workload).
fn clock_runs(
    client: &Client,
    ns: &str,
    resource: &ApiResource,
    mark: fn(&DynamicObject) -> Option<Mark>,
) -> (RunMarks, tokio::task::JoinHandle<()>) {
    let marks: RunMarks = Arc::default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    let seen = marks.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
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
    pub wall: Duration,
    /// Step handoffs in milliseconds, sorted (empty for one-step runs).
    pub handoffs_ms: Vec<f64>,
    pub peak_rss: u64,
    pub cpu_seconds: f64,
    /// Write requests the API server served during the workload (see [`api_writes`]).
    pub api_writes: f64,
}

impl Figures {
    pub fn percentile(&self, p: f64) -> Option<f64> {
        if self.handoffs_ms.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * (self.handoffs_ms.len() - 1) as f64).round() as usize;
        self.handoffs_ms.get(rank).copied()
    }

    pub fn steps_per_second(&self) -> f64 {
        self.workload.steps() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// The figures as a Markdown table.
pub fn table(all: &[Figures]) -> String {
    let mut out = String::from(
        "| workload | system | runs | steps | wall s | runs/s | steps/s | handoff p50 ms | handoff p99 ms | peak RSS MiB | CPU s / 1k steps | API writes / step |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for f in all {
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
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |\n",
            f.workload.label(),
            f.system.name(),
            f.workload.runs(),
            steps,
            secs,
            f.workload.runs() as f64 / secs,
            f.steps_per_second(),
            ms(f.percentile(50.0)),
            ms(f.percentile(99.0)),
            if controller {
                format!("{:.0}", f.peak_rss as f64 / 1048576.0)
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

/// Maestro against the others, per workload: steps/s and handoff p50 as ratios.
pub fn ratios(all: &[Figures]) -> String {
    let mut out = String::from(
        "| workload | against | steps/s ratio (maestro / other) | handoff p50 ratio (maestro / other) |\n|---|---|---|---|\n",
    );
    for maestro in all.iter().filter(|f| f.system == System::Maestro) {
        for other in all.iter().filter(|f| {
            f.system != System::Maestro && f.workload.label() == maestro.workload.label()
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
            out.push_str(&format!(
                "| {} | {} | {steps} | {handoff} |\n",
                maestro.workload.label(),
                other.system.name()
            ));
        }
    }
    out
}

/// A composition of the workload's steps that run on the fake node.
fn composition_yaml(name: &str, workload: Workload) -> String {
    let (selector, tolerations) = placement_json();
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
    serde_json::to_string(&json!({
        "apiVersion": "maestro.dev/v1alpha1",
        "kind": "Composition",
        "metadata": {"name": name},
        "spec": {"nodeSelector": selector, "tolerations": tolerations, "steps": steps},
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

/// Maestro: the workload's runs of one composition, all created at once.
pub async fn maestro(env: &Env, workload: Workload) -> Result<Figures> {
    let ns = env.ns.name.clone();
    let composition = format!("bench-{}", workload.label());
    env.apply_yaml(&composition_yaml(&composition, workload))
        .await?;
    env.wait_compositions_ready(std::slice::from_ref(&composition))
        .await?;
    let (times, clock) = clock_pods(&env.client, &ns, System::Maestro.run_label());
    let (marks, run_clock) = clock_runs(&env.client, &ns, &maestro_resource(), maestro_mark);
    let writes_before = api_writes(&env.client).await?;
    let sampler = Sampler::start(env.operator.pid());
    let api: Api<CompositionRun> = Api::namespaced(env.client.clone(), &ns);
    let started = Instant::now();
    let runs: Vec<CompositionRun> = (0..workload.runs())
        .map(|i| CompositionRun {
            metadata: ObjectMeta {
                name: Some(format!("{}-{i}", workload.label())),
                ..ObjectMeta::default()
            },
            spec: CompositionRunSpec {
                composition: composition.clone(),
                params: BTreeMap::new(),
                cancel: false,
                priority: 0,
                started_by: None,
                rerun_of: None,
            },
            status: None,
        })
        .collect();
    create_all(&api, runs).await?;
    let (goal, timeout) = goal(workload);
    let last = wait_marks(&marks, workload.runs(), goal, timeout).await?;
    finish(
        System::Maestro,
        workload,
        &env.client,
        started,
        last,
        (times, clock, run_clock),
        sampler,
        writes_before,
    )
    .await
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
    let handoffs_ms = times.lock().map(|t| handoffs(&t)).unwrap_or_default();
    Ok(Figures {
        system,
        workload,
        wall,
        handoffs_ms,
        peak_rss,
        cpu_seconds,
        api_writes: writes,
    })
}

/// The bare client: each run's pods in the workload's order, each created once the pods
/// it depends on are seen finished, all runs at once.
pub async fn bare(client: &Client, ns: &str, workload: Workload) -> Result<Figures> {
    let (selector, tolerations) = placement_json();
    let (times, clock) = clock_pods(client, ns, BARE_RUN_LABEL);
    let writes_before = api_writes(client).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let graph = workload.step_graph();
    let run_one = |run: String| {
        let (pods, times, graph) = (pods.clone(), times.clone(), graph.clone());
        let (selector, tolerations) = (selector.clone(), tolerations.clone());
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
                    let pod: Pod = serde_json::from_value(json!({
                        "metadata": {"name": pod_name(step), "labels": {BARE_RUN_LABEL: run}},
                        "spec": {
                            "restartPolicy": "Never",
                            "nodeSelector": selector,
                            "tolerations": tolerations,
                            "containers": [{"name": "step", "image": "localhost/maestro/agent:dev"}],
                        },
                    }))?;
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
    let handoffs_ms = times.lock().map(|t| handoffs(&t)).unwrap_or_default();
    Ok(Figures {
        system: System::Bare,
        workload,
        wall: last.saturating_duration_since(started),
        handoffs_ms,
        peak_rss: 0,
        cpu_seconds: 0.0,
        api_writes: writes,
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
        Workload::OneStep { .. } => {
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
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        // The folder holds a kustomization.yaml beside the CRDs.
        let is_crd = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("argoproj.io_") && n.ends_with(".yaml"));
        if !is_crd {
            continue;
        }
        let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("reading {}", path.display()))?;
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("maestro-bench").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying {name}"))?;
        names.push(name);
    }
    for name in names {
        wait_for(
            &format!("CRD {name} to be Established"),
            Duration::from_secs(60),
            || async {
                let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// Argo's workflow-controller, out of cluster, managing one namespace; killed when dropped.
struct ArgoController {
    child: tokio::process::Child,
}

impl ArgoController {
    async fn start(client: &Client, ns: &str, tuned: bool) -> Result<Self> {
        let bin = bench_path("ARGO_BIN")?;
        let kubeconfig = std::env::var("KUBECONFIG").context("KUBECONFIG is not set")?;
        // The controller exits at start without its ConfigMap. Its metrics and telemetry
        // ports are turned off (9090 may be taken by the cluster's Prometheus).
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let config: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "workflow-controller-configmap"},
            "data": {"metricsConfig": "enabled: false\n", "telemetryConfig": "enabled: false\n"},
        }))?;
        configmaps.create(&PostParams::default(), &config).await?;
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
        let controller = Self { child };
        // Ready once its health endpoint answers (its informers have synced by then).
        wait_for(
            "Argo's controller to be healthy",
            Duration::from_secs(60),
            || async { http_ok("127.0.0.1:6060", "/healthz").await },
        )
        .await
        .with_context(|| format!("see {}", log.display()))?;
        Ok(controller)
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
    let controller = ArgoController::start(client, ns, tuned).await?;
    let resource = workflow_resource();
    let (times, clock) = clock_pods(client, ns, system.run_label());
    let (marks, run_clock) = clock_runs(client, ns, &resource, argo_mark);
    let writes_before = api_writes(client).await?;
    let sampler = Sampler::start(controller.pid());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
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
    drop(controller);
    figures
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
    pub workloads: Vec<Workload>,
    pub systems: Vec<System>,
    /// Each (system, workload) runs this often; the run with the median wall time counts.
    pub repeat: usize,
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
            ],
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
            ],
            systems: vec![System::Bare, System::Maestro],
            repeat: 1,
        }
    }
}

/// Runs the plan, each system alone in a fresh namespace with the fake node up; returns
/// the figures (one per system and workload).
pub async fn run_all(plan: &Plan) -> Result<Vec<Figures>> {
    let client = crate::client().await?;
    // A node lease left by an earlier kwok keeps a new one from managing the node (and
    // pods scheduled before it holds the lease are never played): start clean.
    remove_fake_node(&client).await;
    let kwok = Kwok::start().await?;
    let measured = measure(&client, plan).await;
    // The fake node goes with kwok: without its kubelet it would turn NotReady and linger.
    remove_fake_node(&client).await;
    drop(kwok);
    measured
}

/// Deletes the fake node and its lease, if there.
pub(crate) async fn remove_fake_node(client: &Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete(FAKE_NODE, &DeleteParams::default()).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let _ = leases.delete(FAKE_NODE, &DeleteParams::default()).await;
}

async fn measure(client: &Client, plan: &Plan) -> Result<Vec<Figures>> {
    fake_node(client).await?;
    if plan
        .systems
        .iter()
        .any(|s| matches!(s, System::ArgoDefault | System::ArgoTuned))
    {
        install_argo_crds(client).await?;
    }
    let mut all = Vec::new();
    for &workload in &plan.workloads {
        for &system in &plan.systems {
            if system == System::Bare && matches!(workload, Workload::Gated { .. }) {
                continue; // a bare client has no gates to wait at
            }
            let mut repeats = Vec::new();
            for _ in 0..plan.repeat.max(1) {
                let figures = once(client, system, workload).await?;
                eprintln!(
                    "[bench] {} {}: {:.1} s",
                    workload.label(),
                    system.name(),
                    figures.wall.as_secs_f64()
                );
                repeats.push(figures);
            }
            repeats.sort_by_key(|f| f.wall);
            if let Some(median) = repeats.get(repeats.len() / 2) {
                // Each row as it is measured, so that a long bench cut short still tells.
                eprint!("{}", table(std::slice::from_ref(median)));
                all.push(median.clone());
            }
        }
    }
    Ok(all)
}

/// One system, one workload, in a namespace of its own, which is gone before this returns
/// (so that its deletion does not load the next measurement).
async fn once(client: &Client, system: System, workload: Workload) -> Result<Figures> {
    let prefix = format!("bench-{}-{}", system.name(), workload.label());
    let (figures, ns) = match system {
        System::Maestro => {
            // One process and no election, as Argo runs here (LEADER_ELECTION_DISABLE):
            // on a saturated 2-core machine a Lease renewal can take over 5 s, and a lost
            // Lease stops the operator (in a cluster its container restarts; here the
            // measurement would stall).
            let env = Env::with_options(
                &prefix,
                "restricted",
                &[
                    "--workspace".to_string(),
                    "emptyDir".to_string(),
                    "--leader-elect=false".to_string(),
                ],
            )
            .await?;
            (maestro(&env, workload).await, env.ns.name.clone())
        }
        System::Bare | System::ArgoDefault | System::ArgoTuned => {
            // The plainest pods there are, and Argo's, which set no security context.
            let ns =
                crate::TestNamespace::create_with_security(client, &prefix, "baseline").await?;
            let figures = match system {
                System::Bare => bare(client, &ns.name, workload).await,
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
}
