//! The benchmark (`make bench`, and its smoke mode in `make test`): workloads run on a
//! node faked by kwok, so that orchestration is measured rather than containerd, by
//! Maestro and by a bare client that creates the same pods itself (what the API server
//! and kwok allow at all). Each system runs alone in a fresh namespace; the figures are
//! wall time, runs and steps per second, the step handoff (one pod seen finished to the
//! next one seen created) and the controller's peak memory and CPU time.

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
    core::v1::{Node, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use maestro_api::{CompositionRun, CompositionRunSpec, RunPhase, labels};
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
        let bin = kwok_bin()?;
        let kubeconfig = std::env::var("KUBECONFIG").context("KUBECONFIG is not set")?;
        let stages = crate::maestro::repo_root().join("e2e/bench/stages.yaml");
        let log = std::env::temp_dir().join("maestro-bench-kwok.log");
        let file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(&bin)
            .args(["--kubeconfig", &kubeconfig])
            .arg("--config")
            .arg(&stages)
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

/// Where e2e/bench/build.sh puts kwok.
fn kwok_bin() -> Result<PathBuf> {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(". e2e/bench/versions.sh && echo \"$KWOK_BIN\"")
        .current_dir(crate::maestro::repo_root())
        .output()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.exists() {
        bail!(
            "{} not found: run `bash e2e/bench/build.sh` first",
            path.display()
        );
    }
    Ok(path)
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
fn placement_json() -> (serde_json::Value, serde_json::Value) {
    (
        json!({FAKE_LABEL.0: FAKE_LABEL.1}),
        json!([{"key": FAKE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]),
    )
}

/// When each pod of a namespace was first seen, and first seen finished.
#[derive(Default)]
struct PodTimes {
    created: HashMap<String, Instant>,
    finished: HashMap<String, Instant>,
}

/// Watches the namespace's pods and notes when each appears and finishes.
fn clock_pods(client: &Client, ns: &str) -> (Arc<Mutex<PodTimes>>, tokio::task::JoinHandle<()>) {
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
            if let Ok(mut t) = seen.lock() {
                t.created.entry(name.clone()).or_insert(now);
                if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                    t.finished.entry(name).or_insert(now);
                }
            }
        }
    });
    (times, task)
}

/// Watches the namespace's runs and notes when each is first seen finished, and how.
type RunTimes = Arc<Mutex<HashMap<String, (String, RunPhase, Instant)>>>;

fn clock_runs(client: &Client, ns: &str) -> (RunTimes, tokio::task::JoinHandle<()>) {
    let times: RunTimes = Arc::default();
    let api: Api<CompositionRun> = Api::namespaced(client.clone(), ns);
    let seen = times.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Ok(Some(run)) = events.try_next().await {
            let now = Instant::now();
            let Some(phase) = run.status.as_ref().map(|s| s.phase) else {
                continue;
            };
            if phase.is_finished()
                && let Ok(mut t) = seen.lock()
            {
                let name = run.name_any();
                t.entry(name.clone()).or_insert((name, phase, now));
            }
        }
    });
    (times, task)
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

/// One system's figures for one workload.
#[derive(Debug, Clone)]
pub struct Figures {
    pub system: String,
    pub workload: String,
    pub runs: usize,
    pub steps: usize,
    pub wall: Duration,
    /// Step handoffs in milliseconds, sorted (empty for one-step runs).
    pub handoffs_ms: Vec<f64>,
    pub peak_rss: u64,
    pub cpu_seconds: f64,
}

impl Figures {
    fn percentile(&self, p: f64) -> Option<f64> {
        if self.handoffs_ms.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * (self.handoffs_ms.len() - 1) as f64).round() as usize;
        self.handoffs_ms.get(rank).copied()
    }
}

/// The figures as a Markdown table.
pub fn table(all: &[Figures]) -> String {
    let mut out = String::from(
        "| workload | system | runs | steps | wall s | runs/s | steps/s | handoff p50 ms | handoff p99 ms | peak RSS MiB | CPU s / 1k steps |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for f in all {
        let secs = f.wall.as_secs_f64().max(1e-9);
        let controller = f.system != "bare";
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |\n",
            f.workload,
            f.system,
            f.runs,
            f.steps,
            secs,
            f.runs as f64 / secs,
            f.steps as f64 / secs,
            ms(f.percentile(50.0)),
            ms(f.percentile(99.0)),
            if controller {
                format!("{:.0}", f.peak_rss as f64 / 1048576.0)
            } else {
                "-".into()
            },
            if controller {
                format!("{:.1}", f.cpu_seconds * 1000.0 / f.steps.max(1) as f64)
            } else {
                "-".into()
            },
        ));
    }
    out
}

/// Handoffs: for each chain of pods (in step order), the time from one pod seen finished
/// to the next seen created.
fn handoffs(times: &PodTimes, chains: &[Vec<String>]) -> Vec<f64> {
    let mut out: Vec<f64> = chains
        .iter()
        .flat_map(|chain| chain.windows(2))
        .filter_map(|pair| {
            let done = times.finished.get(&pair[0])?;
            let next = times.created.get(&pair[1])?;
            Some(next.saturating_duration_since(*done).as_secs_f64() * 1000.0)
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// A composition of `steps` sequential shell steps that run on the fake node.
fn composition_yaml(name: &str, steps: usize) -> String {
    let (selector, tolerations) = placement_json();
    let steps: Vec<serde_json::Value> = (0..steps)
        .map(|i| json!({"name": format!("s{i}"), "task": "shell", "with": {"script": "true"}}))
        .collect();
    serde_json::to_string(&json!({
        "apiVersion": "maestro.dev/v1alpha1",
        "kind": "Composition",
        "metadata": {"name": name},
        "spec": {"nodeSelector": selector, "tolerations": tolerations, "steps": steps},
    }))
    .unwrap_or_default()
}

/// Maestro: `runs` runs of a composition of `steps` sequential steps, all created at once.
pub async fn maestro(env: &Env, workload: &str, runs: usize, steps: usize) -> Result<Figures> {
    let ns = env.ns.name.clone();
    let composition = format!("bench-{steps}");
    env.apply_yaml(&composition_yaml(&composition, steps))
        .await?;
    env.wait_compositions_ready(std::slice::from_ref(&composition))
        .await?;
    let (times, clock) = clock_pods(&env.client, &ns);
    let (run_times, run_clock) = clock_runs(&env.client, &ns);
    let sampler = Sampler::start(env.operator.pid());
    let api: Api<CompositionRun> = Api::namespaced(env.client.clone(), &ns);
    let started = Instant::now();
    let names: Vec<String> = (0..runs).map(|i| format!("{workload}-{i}")).collect();
    let creates = names.iter().map(|name| {
        let run = CompositionRun {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            spec: CompositionRunSpec {
                composition: composition.clone(),
                params: BTreeMap::new(),
                cancel: false,
                priority: 0,
            },
            status: None,
        };
        let api = api.clone();
        async move { api.create(&PostParams::default(), &run).await.map(|_| ()) }
    });
    for created in futures::stream::iter(creates)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
    {
        created?;
    }
    // Watched, not polled: the moment each run is seen finished.
    let timeout = Duration::from_secs(60 + (runs * steps) as u64);
    let deadline = Instant::now() + timeout;
    let last_finish = loop {
        let ended: Vec<(String, RunPhase, Instant)> = run_times
            .lock()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default();
        if let Some((name, phase, _)) = ended.iter().find(|(_, p, _)| *p != RunPhase::Succeeded) {
            bail!("run {name} ended {phase:?}, not Succeeded");
        }
        if ended.len() >= runs {
            break ended
                .iter()
                .map(|(_, _, at)| *at)
                .max()
                .unwrap_or_else(Instant::now);
        }
        if Instant::now() > deadline {
            bail!("{} of {runs} runs ended within {timeout:?}", ended.len());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    run_clock.abort();
    let wall = last_finish.saturating_duration_since(started);
    let (peak_rss, cpu_seconds) = sampler.finish().await;
    // Let the watch catch the last events before reading the clock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    clock.abort();
    let chains: Vec<Vec<String>> = names
        .iter()
        .map(|run| {
            (0..steps)
                .map(|i| labels::step_pod_name(run, &format!("s{i}"), 1))
                .collect()
        })
        .collect();
    let handoffs_ms = times
        .lock()
        .map(|t| handoffs(&t, &chains))
        .unwrap_or_default();
    Ok(Figures {
        system: "maestro".into(),
        workload: workload.into(),
        runs,
        steps: runs * steps,
        wall,
        handoffs_ms,
        peak_rss,
        cpu_seconds,
    })
}

/// The bare client: `runs` chains of `steps` pods, each pod created once the one before it
/// is seen finished, all chains at once.
pub async fn bare(
    client: &Client,
    ns: &str,
    workload: &str,
    runs: usize,
    steps: usize,
) -> Result<Figures> {
    let (selector, tolerations) = placement_json();
    let (times, clock) = clock_pods(client, ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let chains: Vec<Vec<String>> = (0..runs)
        .map(|r| (0..steps).map(|s| format!("{workload}-{r}-s{s}")).collect())
        .collect();
    let run_chain = |chain: Vec<String>| {
        let pods = pods.clone();
        let times = times.clone();
        let (selector, tolerations) = (selector.clone(), tolerations.clone());
        async move {
            for name in chain {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"maestro-bench": "bare"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "nodeSelector": selector,
                        "tolerations": tolerations,
                        "containers": [{"name": "step", "image": "localhost/maestro/agent:dev"}],
                    },
                }))?;
                pods.create(&PostParams::default(), &pod).await?;
                // As fast as a client can react: the pod watch's clock, read every 2 ms.
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let finished = times
                        .lock()
                        .map(|t| t.finished.contains_key(&name))
                        .unwrap_or(false);
                    if finished {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("pod {name} did not finish within 120s");
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Ok::<(), anyhow::Error>(())
        }
    };
    for done in futures::future::join_all(chains.iter().cloned().map(run_chain)).await {
        done?;
    }
    let wall = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    clock.abort();
    let handoffs_ms = times
        .lock()
        .map(|t| handoffs(&t, &chains))
        .unwrap_or_default();
    let _ = pods
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
    Ok(Figures {
        system: "bare".into(),
        workload: workload.into(),
        runs,
        steps: runs * steps,
        wall,
        handoffs_ms,
        peak_rss: 0,
        cpu_seconds: 0.0,
    })
}

/// The sizes of each workload.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// W1: one-step runs created at once.
    pub w1_runs: usize,
    /// W2: runs of `w2_steps` sequential steps.
    pub w2_runs: usize,
    pub w2_steps: usize,
}

impl Sizes {
    pub const FULL: Self = Self {
        w1_runs: 500,
        w2_runs: 50,
        w2_steps: 10,
    };
    pub const SMOKE: Self = Self {
        w1_runs: 5,
        w2_runs: 2,
        w2_steps: 3,
    };
}

/// Runs W1 and W2 for Maestro and the bare client, each in a fresh namespace with the
/// fake node up; returns the figures.
pub async fn run_all(sizes: Sizes) -> Result<Vec<Figures>> {
    let client = crate::client().await?;
    // A node lease left by an earlier kwok keeps a new one from managing the node (and
    // pods scheduled before it holds the lease are never played): start clean.
    remove_fake_node(&client).await;
    let kwok = Kwok::start().await?;
    let measured = measure(&client, sizes).await;
    // The fake node goes with kwok: without its kubelet it would turn NotReady and linger.
    remove_fake_node(&client).await;
    drop(kwok);
    measured
}

/// Deletes the fake node and its lease, if there.
async fn remove_fake_node(client: &Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete(FAKE_NODE, &DeleteParams::default()).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let _ = leases.delete(FAKE_NODE, &DeleteParams::default()).await;
}

async fn measure(client: &Client, sizes: Sizes) -> Result<Vec<Figures>> {
    let client = client.clone();
    fake_node(&client).await?;
    let mut all = Vec::new();
    for (workload, runs, steps) in [
        ("w1", sizes.w1_runs, 1),
        ("w2", sizes.w2_runs, sizes.w2_steps),
    ] {
        {
            // Baseline: the bare pods are the plainest pods there are.
            let ns = crate::TestNamespace::create_with_security(&client, "bench-bare", "baseline")
                .await?;
            all.push(bare(&client, &ns.name, workload, runs, steps).await?);
        }
        {
            let env = Env::with_options(
                &format!("bench-maestro-{workload}"),
                "restricted",
                &["--workspace".to_string(), "emptyDir".to_string()],
            )
            .await?;
            all.push(maestro(&env, workload, runs, steps).await?);
        }
    }
    Ok(all)
}
