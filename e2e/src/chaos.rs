//! The chaos suite (`make chaos`, and its smoke mode in `make test`): a mix of runs (one
//! step, ten sequential steps, a fan-out and join, a fork of child runs, an approval gate
//! approved during the chaos), every step with retries, on a node faked by kwok whose pods
//! take 2 to 4 s, while a fault is injected; and a few runs that provision an EC2 instance
//! in moto and deprovision it, on the real node with real containers (a fake pod runs
//! nothing, so it would make no instance). Afterwards it checks what users rely on:
//! every run reaches a final phase, and the one its composition implies; no pod name (one
//! run, step and attempt) was ever created twice, nor any child run; every approval made
//! during the chaos counted exactly once; no instance is left running in moto, and every
//! EC2 run's ledger is empty or its cleanup failure is in its status. Creations are counted
//! from watches started before the first run, so a pod or run created and gone again still
//! counts.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Pod, Secret},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, EvictParams, ListParams, ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use maestro_api::{
    CompositionRun, CompositionRunSpec, CompositionRunStatus, RunPhase, StepPhase, labels,
};
use serde_json::json;

use crate::{
    bench::{self, Kwok},
    maestro::{Env, Launch, Operator},
    world::Moto,
};

/// The operator's leader Lease (in the namespace it watches, as the harness starts it).
const LEASE: &str = "maestro-operator";

/// What goes wrong while the runs are in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The operator is SIGKILLed every `every` and started again at once, for `during`.
    OperatorKilled { every: Duration, during: Duration },
    /// Two replicas elect a leader; the leader is SIGKILLed every `every` (and started
    /// again, as a follower), so leadership moves mid-run, for `during`.
    LeaderKilled { every: Duration, during: Duration },
    /// Someone deletes running step pods, `per_second` a second (one attempt of a step at
    /// most), for `during`.
    StepPodsDeleted { per_second: usize, during: Duration },
    /// Running step pods are evicted through the Eviction API (as a node drain does),
    /// `per_second` a second (one attempt of a step at most), for `during`.
    StepPodsEvicted { per_second: usize, during: Duration },
    /// A process of the control plane is SIGKILLed every `every`, kept down for `down`,
    /// then started again, for `during`.
    ControlPlaneRestarted {
        part: ControlPlane,
        every: Duration,
        down: Duration,
        during: Duration,
    },
    /// The operator's packets dropped (an iptables rule on its user id) for `cut`, every
    /// `every`, for `during`: it is cut off from the API server.
    ApiCut {
        every: Duration,
        cut: Duration,
        during: Duration,
    },
    /// The EC2 API (the scenario's moto) refuses connections for `down`, every `every`,
    /// for `during`: steps and cleanups that call it meanwhile fail and retry.
    MotoDown {
        every: Duration,
        down: Duration,
        during: Duration,
    },
    /// Each of the kinds above once, in turn, spread over `during` (the short version
    /// `make test` runs).
    EachOnce { during: Duration },
}

/// The control-plane processes the suite restarts (names as e2e/cluster/up.sh has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlPlane {
    ApiServer,
    Etcd,
    /// The real node's kubelet (the EC2 runs' pods are there; kwok plays the fake node).
    Kubelet,
}

impl ControlPlane {
    fn process(self) -> &'static str {
        match self {
            Self::ApiServer => "kube-apiserver",
            Self::Etcd => "etcd",
            Self::Kubelet => "kubelet",
        }
    }
}

/// One injection of a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Injection {
    KillOperator,
    KillLeader,
    RemovePods { evict: bool, count: usize },
    CutOff { cut: Duration },
    Restart { part: ControlPlane, down: Duration },
    MotoOutage { down: Duration },
}

impl Injection {
    /// What the findings count it as.
    fn kind(self) -> &'static str {
        match self {
            Self::KillOperator => "operator killed",
            Self::KillLeader => "leader killed",
            Self::RemovePods { evict: false, .. } => "pods deleted",
            Self::RemovePods { evict: true, .. } => "pods evicted",
            Self::CutOff { .. } => "operator cut off",
            Self::Restart {
                part: ControlPlane::ApiServer,
                ..
            } => "kube-apiserver restarted",
            Self::Restart {
                part: ControlPlane::Etcd,
                ..
            } => "etcd restarted",
            Self::Restart {
                part: ControlPlane::Kubelet,
                ..
            } => "kubelet restarted",
            Self::MotoOutage { .. } => "moto unreachable",
        }
    }
}

/// How long a control-plane process stays down when `EachOnce` restarts it.
const EACH_ONCE_DOWN: Duration = Duration::from_secs(3);
/// How long `EachOnce` cuts the operator off.
const EACH_ONCE_CUT: Duration = Duration::from_secs(10);
/// The user id the operator runs as where its traffic is cut (nobody else has it).
const OPERATOR_UID: u32 = 64_321;

impl Fault {
    pub fn label(self) -> String {
        match self {
            Self::OperatorKilled { every, during } => format!(
                "operator SIGKILLed every {} s for {} s",
                every.as_secs(),
                during.as_secs()
            ),
            Self::LeaderKilled { every, during } => format!(
                "leader of 2 replicas SIGKILLed every {} s for {} s",
                every.as_secs(),
                during.as_secs()
            ),
            Self::StepPodsDeleted { per_second, during } => format!(
                "{per_second} running step pod(s) deleted a second for {} s",
                during.as_secs()
            ),
            Self::StepPodsEvicted { per_second, during } => format!(
                "{per_second} running step pod(s) evicted a second for {} s",
                during.as_secs()
            ),
            Self::ControlPlaneRestarted {
                part,
                every,
                down,
                during,
            } => format!(
                "{} SIGKILLed every {} s, down {} s, for {} s",
                part.process(),
                every.as_secs(),
                down.as_secs(),
                during.as_secs()
            ),
            Self::ApiCut { every, cut, during } => format!(
                "operator cut off from the API server for {} s every {} s, for {} s",
                cut.as_secs(),
                every.as_secs(),
                during.as_secs()
            ),
            Self::MotoDown {
                every,
                down,
                during,
            } => format!(
                "moto (EC2) refusing connections for {} s every {} s, for {} s",
                down.as_secs(),
                every.as_secs(),
                during.as_secs()
            ),
            Self::EachOnce { during } => format!(
                "each once in {} s: the leader of 2 replicas killed, 2 pods deleted, 2 \
                 evicted, kube-apiserver and etcd killed (down {} s each), the operators \
                 cut off {} s",
                during.as_secs(),
                EACH_ONCE_DOWN.as_secs(),
                EACH_ONCE_CUT.as_secs()
            ),
        }
    }

    /// The scenario's name on the command line (`maestro-chaos --only pods-deleted`).
    pub fn name(self) -> &'static str {
        match self {
            Self::OperatorKilled { .. } => "operator-killed",
            Self::LeaderKilled { .. } => "leader-killed",
            Self::StepPodsDeleted { .. } => "pods-deleted",
            Self::StepPodsEvicted { .. } => "pods-evicted",
            Self::ControlPlaneRestarted {
                part: ControlPlane::ApiServer,
                ..
            } => "apiserver-restarted",
            Self::ControlPlaneRestarted {
                part: ControlPlane::Etcd,
                ..
            } => "etcd-restarted",
            Self::ControlPlaneRestarted {
                part: ControlPlane::Kubelet,
                ..
            } => "kubelet-restarted",
            Self::ApiCut { .. } => "api-cut",
            Self::MotoDown { .. } => "moto-down",
            Self::EachOnce { .. } => "each-once",
        }
    }

    fn during(self) -> Duration {
        match self {
            Self::OperatorKilled { during, .. }
            | Self::LeaderKilled { during, .. }
            | Self::StepPodsDeleted { during, .. }
            | Self::StepPodsEvicted { during, .. }
            | Self::ControlPlaneRestarted { during, .. }
            | Self::ApiCut { during, .. }
            | Self::MotoDown { during, .. }
            | Self::EachOnce { during } => during,
        }
    }

    /// What to inject now, `elapsed` into the fault, when the last periodic injection
    /// was `since_last` ago and `done` injections have been made.
    fn due(self, elapsed: Duration, since_last: Duration, done: usize) -> Option<Injection> {
        match self {
            Self::OperatorKilled { every, .. } => {
                (since_last >= every).then_some(Injection::KillOperator)
            }
            Self::LeaderKilled { every, .. } => {
                (since_last >= every).then_some(Injection::KillLeader)
            }
            Self::StepPodsDeleted { per_second, .. } => Some(Injection::RemovePods {
                evict: false,
                count: per_second,
            }),
            Self::StepPodsEvicted { per_second, .. } => Some(Injection::RemovePods {
                evict: true,
                count: per_second,
            }),
            Self::ControlPlaneRestarted {
                part, every, down, ..
            } => (since_last >= every).then_some(Injection::Restart { part, down }),
            Self::ApiCut { every, cut, .. } => {
                (since_last >= every).then_some(Injection::CutOff { cut })
            }
            Self::MotoDown { every, down, .. } => {
                (since_last >= every).then_some(Injection::MotoOutage { down })
            }
            Self::EachOnce { during } => {
                // The leader first: the pods deleted next are often ones the old leader
                // made and the new one has not seen yet, the case a status written after
                // the create got wrong (docs/reliability.md, defect 4).
                let schedule = [
                    Injection::KillLeader,
                    Injection::RemovePods {
                        evict: false,
                        count: 2,
                    },
                    Injection::RemovePods {
                        evict: true,
                        count: 2,
                    },
                    Injection::Restart {
                        part: ControlPlane::ApiServer,
                        down: EACH_ONCE_DOWN,
                    },
                    Injection::Restart {
                        part: ControlPlane::Etcd,
                        down: EACH_ONCE_DOWN,
                    },
                    Injection::CutOff { cut: EACH_ONCE_CUT },
                ];
                // The k-th at k/n of the way: runs are in flight for each.
                let at = during.mul_f64(done as f64 / schedule.len() as f64);
                schedule.get(done).copied().filter(|_| elapsed >= at)
            }
        }
    }
}

/// How many runs of each composition a scenario starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub one_step: usize,
    pub sequential: usize,
    pub fan_out: usize,
    pub forks: usize,
    pub gated: usize,
    /// Runs that provision an EC2 instance in moto, on the real node.
    pub ec2: usize,
}

impl Mix {
    /// The issue's 200 runs in flight.
    pub fn full() -> Self {
        Self {
            one_step: 70,
            sequential: 30,
            fan_out: 30,
            forks: 30,
            gated: 30,
            ec2: 10,
        }
    }

    /// 50 runs, for `make test`.
    pub fn smoke() -> Self {
        Self {
            one_step: 18,
            sequential: 8,
            fan_out: 8,
            forks: 7,
            gated: 7,
            ec2: 2,
        }
    }

    /// Only the EC2 runs (on the real node): no kwok needed, so it can run beside a
    /// benchmark that holds the fake node.
    pub fn ec2_only(self) -> Self {
        Self {
            one_step: 0,
            sequential: 0,
            fan_out: 0,
            forks: 0,
            gated: 0,
            ec2: self.ec2,
        }
    }

    /// The runs whose pods land on the fake node.
    pub fn on_fake_node(self) -> usize {
        self.runs() - self.ec2
    }

    pub fn runs(self) -> usize {
        self.by_composition().iter().map(|(_, n)| n).sum()
    }

    /// (composition, how many runs) in creation order.
    fn by_composition(self) -> [(&'static str, usize); 6] {
        [
            (ONE_STEP, self.one_step),
            (SEQUENTIAL, self.sequential),
            (FAN_OUT, self.fan_out),
            (FORK, self.forks),
            (GATED, self.gated),
            (EC2, self.ec2),
        ]
    }
}

const ONE_STEP: &str = "chaos-one";
const SEQUENTIAL: &str = "chaos-sequential";
const FAN_OUT: &str = "chaos-fan-out";
const FORK: &str = "chaos-fork";
const GATED: &str = "chaos-gated";
/// Provisions an instance, runs a step, deprovisions it: on the real node, against moto.
const EC2: &str = "chaos-ec2";
/// Its step that makes the instance.
const PROVISION_STEP: &str = "provision";
/// The Secret the EC2 steps take their (moto's dummy) credentials from.
const AWS_SECRET: &str = "aws-credentials";
/// The fork's children, each a run of ONE_STEP.
const FORK_WIDTH: usize = 2;

/// A scenario: one fault over one mix of runs.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub fault: Fault,
    pub mix: Mix,
}

/// The suite (`make chaos`): one scenario per fault kind.
pub fn suite(mix: Mix, during: Duration) -> Vec<Scenario> {
    let restarted = |part| Fault::ControlPlaneRestarted {
        part,
        every: Duration::from_secs(30),
        down: Duration::from_secs(5),
        during,
    };
    [
        Fault::OperatorKilled {
            every: Duration::from_secs(10),
            during,
        },
        Fault::LeaderKilled {
            every: Duration::from_secs(30),
            during,
        },
        Fault::StepPodsDeleted {
            per_second: 2,
            during,
        },
        Fault::StepPodsEvicted {
            per_second: 2,
            during,
        },
        restarted(ControlPlane::ApiServer),
        restarted(ControlPlane::Etcd),
        // The real node's kubelet away 30 s at a time: its running step pods go on under
        // containerd and are reported when it is back; new ones wait for it.
        Fault::ControlPlaneRestarted {
            part: ControlPlane::Kubelet,
            every: Duration::from_secs(60),
            down: Duration::from_secs(30),
            during,
        },
        Fault::ApiCut {
            every: Duration::from_secs(45),
            cut: Duration::from_secs(30),
            during,
        },
        // The EC2 API away 20 s at a time, from 10 s in (the EC2 runs are done within
        // the first half-minute or so): a provision or deprovision step caught by it fails
        // after its retries (its run fails, as a run whose cloud is down does), and the
        // run's cleanup retries until moto is back and removes what the ledger holds.
        Fault::MotoDown {
            every: Duration::from_secs(10),
            down: Duration::from_secs(20),
            during,
        },
    ]
    .into_iter()
    .map(|fault| Scenario { fault, mix })
    .collect()
}

/// The short version (`make test`): one scenario with each fault kind once.
pub fn smoke_suite(mix: Mix, during: Duration) -> Vec<Scenario> {
    vec![Scenario {
        fault: Fault::EachOnce { during },
        mix,
    }]
}

/// The scenarios named in `names` (comma-separated, as `Fault::name` spells them), in the
/// order given; a name that is none of them is an error that lists the names there are.
pub fn only(scenarios: &[Scenario], names: &str) -> Result<Vec<Scenario>> {
    let mut chosen = Vec::new();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match scenarios.iter().find(|s| s.fault.name() == name) {
            Some(scenario) => chosen.push(*scenario),
            None => {
                let known: Vec<&str> = scenarios.iter().map(|s| s.fault.name()).collect();
                bail!(
                    "no scenario is called {name:?}; there are: {}",
                    known.join(", ")
                );
            }
        }
    }
    anyhow::ensure!(!chosen.is_empty(), "no scenario named in {names:?}");
    Ok(chosen)
}

/// What a scenario found.
#[derive(Debug, Clone)]
pub struct Findings {
    pub fault: Fault,
    /// Runs started by the suite (children not counted).
    pub runs: usize,
    /// Final phases of those runs, and of the children, by phase.
    pub phases: BTreeMap<String, usize>,
    /// Runs, children included, not in a final phase when the suite gave up waiting.
    pub stuck: Vec<String>,
    /// Runs, children included, that ended other than Succeeded, with what they say.
    pub unexpected: Vec<String>,
    /// Pod names created more than once (each is one run, step and attempt).
    pub duplicate_pods: Vec<String>,
    /// Child run names created more than once.
    pub duplicate_children: Vec<String>,
    /// Pods created in all, and child runs created in all.
    pub pods_created: usize,
    pub children_created: usize,
    /// Faults injected: operator kills, pods deleted or evicted, control-plane restarts.
    pub injected: usize,
    /// The same, by kind (`operator killed`, `pods evicted`, `etcd restarted`...).
    pub injected_by_kind: BTreeMap<&'static str, usize>,
    /// Approval gates whose status does not show exactly one counted approval.
    pub approvals_not_once: Vec<String>,
    /// Instances moto knows of, in any state: those the EC2 runs made (the evidence that
    /// they really provisioned).
    pub instances_made: usize,
    /// Instances moto still has running (not terminated) once every run has ended.
    pub leaked_instances: Vec<String>,
    /// EC2 runs whose ledger still holds something while their status records no cleanup
    /// failure (what would be lost without a trace).
    pub ledgers_left: Vec<String>,
    /// From the end of the faults until every run had ended.
    pub settle: Duration,
    /// The operator's peak resident memory during the faults, in MiB (the larger replica).
    pub peak_rss_mib: f64,
    /// Reconciles a second in the first window after every run had ended, replicas
    /// together: a hot loop shows there, and so does the burst of a relist.
    pub reconciles_after_end: f64,
    /// Reconciles a second in the last window measured: the first below
    /// [`IDLE_RECONCILES_PER_SECOND`], or the last before [`IDLE_WAIT_LIMIT`].
    pub idle_reconciles_per_second: f64,
    /// From every run's end until a window of [`RATE_WINDOW`] was idle; `None`: not
    /// within [`IDLE_WAIT_LIMIT`] (a hot loop).
    pub idle_after: Option<Duration>,
}

/// Below this many reconciles a second (replicas together) the operator is idle: with
/// every run ended it reconciles only at the finished runs' expiry, and at a resync.
pub const IDLE_RECONCILES_PER_SECOND: f64 = 1.0;
/// The window over which the reconcile rate is measured.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// How long after every run ended the operator may take to become idle. A watch that lost
/// the API server lists everything again when it is back, and kube's watcher waits up to
/// 30 s between tries (with jitter), so a relist can come half a minute after a restart
/// and wake every run once; a hot loop never ends.
pub const IDLE_WAIT_LIMIT: Duration = Duration::from_secs(120);

impl Findings {
    /// Whether everything held.
    pub fn held(&self) -> bool {
        self.stuck.is_empty()
            && self.unexpected.is_empty()
            && self.duplicate_pods.is_empty()
            && self.duplicate_children.is_empty()
            && self.approvals_not_once.is_empty()
            && self.leaked_instances.is_empty()
            && self.ledgers_left.is_empty()
            && self.idle_after.is_some()
    }
}

/// The suite's table, one row per scenario.
pub fn table(all: &[Findings]) -> String {
    let mut out = String::from(
        "| fault | runs | injected | final phases (children included) | stuck | not as expected | pods created | duplicate pods | children created | duplicate children | approvals not once | leaked instances | ledgers left | settle | peak RSS | reconciles/s after the end | idle after |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in all {
        let phases: Vec<String> = f.phases.iter().map(|(p, n)| format!("{p} {n}")).collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} of {} | {} | {:.1} s | {:.0} MiB | {:.2} | {} |\n",
            f.fault.label(),
            f.runs,
            f.injected,
            phases.join(", "),
            f.stuck.len(),
            f.unexpected.len(),
            f.pods_created,
            f.duplicate_pods.len(),
            f.children_created,
            f.duplicate_children.len(),
            f.approvals_not_once.len(),
            f.leaked_instances.len(),
            f.instances_made,
            f.ledgers_left.len(),
            f.settle.as_secs_f64(),
            f.peak_rss_mib,
            f.reconciles_after_end,
            match f.idle_after {
                Some(after) => format!("{} s ({:.2}/s)", after.as_secs(), f.idle_reconciles_per_second),
                None => format!(
                    "**not in {} s** ({:.2}/s)",
                    IDLE_WAIT_LIMIT.as_secs(),
                    f.idle_reconciles_per_second
                ),
            },
        ));
    }
    out
}

/// The compositions, every task step retried twice 1 s apart (a deleted pod fails its
/// attempt; the retry must carry the run to success); all on the fake node but the EC2
/// one, which runs on the real node against the EC2 API at `ec2_endpoint` (none: left out).
fn compositions_yaml(ec2_endpoint: Option<&str>) -> String {
    let (selector, tolerations) = bench::placement_json();
    let retried = |name: &str, depends_on: Option<Vec<String>>| {
        let mut step = json!({
            "name": name,
            "task": "shell",
            "with": {"script": "true"},
            "retries": {"limit": 2, "backoff": "1s"},
        });
        if let Some(deps) = depends_on {
            step["dependsOn"] = json!(deps);
        }
        step
    };
    let composition = |name: &str, steps: Vec<serde_json::Value>| {
        json!({
            "apiVersion": "maestro.dev/v1alpha1",
            "kind": "Composition",
            "metadata": {"name": name},
            "spec": {"nodeSelector": selector, "tolerations": tolerations, "steps": steps},
        })
    };
    let fanned: Vec<String> = (0..6).map(|i| format!("part-{i}")).collect();
    let mut fan_out = vec![retried("first", None)];
    fan_out.extend(
        fanned
            .iter()
            .map(|name| retried(name, Some(vec!["first".into()]))),
    );
    fan_out.push(retried("join", Some(fanned.clone())));
    let retries = json!({"limit": 2, "backoff": "1s"});
    // The normal use (examples/acceptance-tests): an explicit deprovision step, and the
    // cleanup for whatever a failure leaves in the ledger.
    let ec2 = ec2_endpoint.map(|endpoint| {
        json!({
            "apiVersion": "maestro.dev/v1alpha1",
            "kind": "Composition",
            "metadata": {"name": EC2},
            "spec": {
                "context": {"awsRegion": "us-east-1", "awsEndpoint": endpoint},
                "cleanup": "Always",
                "steps": [
                    {
                        "name": PROVISION_STEP,
                        "task": "ec2-provision",
                        "secretEnv": [AWS_SECRET],
                        "with": {"imageId": "ami-12c6146b", "instanceType": "t3.small"},
                        "retries": retries,
                    },
                    retried("work", None),
                    {
                        "name": "deprovision",
                        "task": "ec2-deprovision",
                        "secretEnv": [AWS_SECRET],
                        "retries": retries,
                    },
                ],
            },
        })
    });
    let all = [
        composition(ONE_STEP, vec![retried("only", None)]),
        composition(
            SEQUENTIAL,
            (0..10).map(|i| retried(&format!("s{i}"), None)).collect(),
        ),
        composition(FAN_OUT, fan_out),
        composition(
            FORK,
            vec![
                json!({"name": "tests", "compositions": vec![ONE_STEP; FORK_WIDTH]}),
                retried("after", None),
            ],
        ),
        composition(
            GATED,
            vec![
                json!({"name": "gate", "approval": {"message": "chaos"}}),
                retried("after", None),
            ],
        ),
    ];
    all.iter()
        .chain(ec2.as_ref())
        .map(|c| serde_json::to_string(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Every distinct UID seen under each name, from a watch started before the first create.
type Creations = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

fn record_creations<K>(api: Api<K>, selector: &str) -> (Creations, tokio::task::JoinHandle<()>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let seen: Creations = Arc::default();
    let into = seen.clone();
    let config = watcher::Config::default().labels(selector);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
        while let Some(item) = stream.next().await {
            let Ok(object) = item else { continue };
            let (Some(name), Some(uid)) = (object.meta().name.clone(), object.meta().uid.clone())
            else {
                continue;
            };
            if let Ok(mut seen) = into.lock() {
                seen.entry(name).or_default().insert(uid);
            }
        }
    });
    (seen, task)
}

fn duplicates(seen: &Creations) -> (usize, Vec<String>) {
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let twice = seen
        .iter()
        .filter(|(_, uids)| uids.len() > 1)
        .map(|(name, uids)| format!("{name} ({} UIDs)", uids.len()))
        .collect();
    (seen.len(), twice)
}

/// Runs every scenario, each in a namespace of its own with its own operator, kwok playing
/// the fake node; returns what each found.
pub async fn run_all(scenarios: &[Scenario], settle_limit: Duration) -> Result<Vec<Findings>> {
    let client = crate::client().await?;
    // Without runs for it, the fake node (one for the whole cluster) is left to others.
    let faked = scenarios.iter().any(|s| s.mix.on_fake_node() > 0);
    if !faked {
        return scenarios_in_turn(scenarios, settle_limit).await;
    }
    bench::remove_fake_node(&client).await;
    let kwok = Kwok::start_with(&crate::maestro::repo_root().join("e2e/chaos/stages.yaml")).await?;
    let result = async {
        bench::fake_node(&client).await?;
        scenarios_in_turn(scenarios, settle_limit).await
    }
    .await;
    bench::remove_fake_node(&client).await;
    drop(kwok);
    result
}

async fn scenarios_in_turn(
    scenarios: &[Scenario],
    settle_limit: Duration,
) -> Result<Vec<Findings>> {
    let mut all = Vec::new();
    for (i, scenario) in scenarios.iter().enumerate() {
        let findings = scenario_once(i, *scenario, settle_limit).await?;
        eprint!("{}", table(std::slice::from_ref(&findings)));
        all.push(findings);
    }
    Ok(all)
}

async fn scenario_once(i: usize, scenario: Scenario, settle_limit: Duration) -> Result<Findings> {
    // One operator without election (a SIGKILLed leader keeps its Lease until it expires),
    // unless the fault is the leader's: then two replicas elect one.
    let elected = matches!(
        scenario.fault,
        Fault::LeaderKilled { .. } | Fault::EachOnce { .. }
    );
    let mut flags = vec!["--workspace".to_string(), "emptyDir".to_string()];
    if !elected {
        flags.push("--leader-elect=false".to_string());
    }
    let mut env = Env::with_options(&format!("chaos-{i}"), "restricted", &flags).await?;
    // Where the operator is cut off, it runs as a user of its own, whose packets a rule
    // can drop; the harness started it as root: start it again.
    let cut = matches!(
        scenario.fault,
        Fault::ApiCut { .. } | Fault::EachOnce { .. }
    );
    let user = cut.then_some(OPERATOR_UID);
    if cut {
        let launch = Launch {
            replica: None,
            user,
        };
        env.operator = Operator::start_launched(&env.ns.name, &flags, launch).await?;
    }
    let mut follower = match elected {
        true => {
            let launch = Launch {
                replica: Some("b".into()),
                user,
            };
            Some(Operator::start_launched(&env.ns.name, &flags, launch).await?)
        }
        false => None,
    };
    let ns = env.ns.name.clone();
    // One moto for the scenario, so that what it holds afterwards is this scenario's.
    let moto = match scenario.mix.ec2 > 0 {
        true => {
            let moto = Moto::start().await?;
            let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": AWS_SECRET},
                "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
            }))?;
            secrets.create(&PostParams::default(), &secret).await?;
            Some(moto)
        }
        false => None,
    };
    let ec2_endpoint = moto.as_ref().map(|m| m.url.as_str());
    let names = env.apply_yaml(&compositions_yaml(ec2_endpoint)).await?;
    env.wait_compositions_ready(&names).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns);
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &ns);
    let (pod_uids, pod_watch) = record_creations(pods.clone(), labels::RUN);
    let (child_uids, child_watch) = record_creations(runs.clone(), labels::PARENT_RUN);
    // The watches list first: let them start before the first create.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut started: Vec<(String, &'static str)> = Vec::new();
    let mut objects = Vec::new();
    for (composition, count) in scenario.mix.by_composition() {
        for n in 0..count {
            let name = format!("{}-{n}", composition.trim_start_matches("chaos-"));
            objects.push(CompositionRun {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
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
            });
            started.push((name, composition));
        }
    }
    bench::create_all(&runs, objects).await?;
    let gated: Vec<String> = started
        .iter()
        .filter(|(_, c)| *c == GATED)
        .map(|(n, _)| n.clone())
        .collect();

    // The fault, with the gates approved as they come up, during it.
    let mut approved: BTreeSet<String> = BTreeSet::new();
    let mut removed: BTreeSet<(String, String)> = BTreeSet::new();
    let mut injected = 0;
    let mut injected_by_kind = BTreeMap::new();
    let mut fired = 0;
    let mut peak_rss = 0;
    let fault_started = Instant::now();
    let mut last = Instant::now();
    while fault_started.elapsed() < scenario.fault.during() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for op in std::iter::once(&env.operator).chain(follower.as_ref()) {
            peak_rss = peak_rss.max(op.resident_bytes().unwrap_or(0));
        }
        approve_waiting(&env, &runs, &gated, &mut approved).await;
        let due = scenario
            .fault
            .due(fault_started.elapsed(), last.elapsed(), fired);
        let done = match due {
            None => 0,
            Some(Injection::KillOperator) => {
                env.operator.restart().await?;
                1
            }
            Some(Injection::KillLeader) => kill_leader(&mut env, &mut follower).await?,
            Some(Injection::CutOff { cut }) => {
                cut_off(OPERATOR_UID, cut).await?;
                1
            }
            Some(Injection::RemovePods { evict, count }) => {
                remove_running_pods(&pods, evict, count, &mut removed).await?
            }
            Some(Injection::MotoOutage { down }) => match &moto {
                Some(moto) => {
                    let outage = moto.refuse_connections()?;
                    tokio::time::sleep(down).await;
                    drop(outage);
                    1
                }
                None => 0,
            },
            Some(Injection::Restart { part, down }) => {
                let mut process = crate::cluster::Component::running(part.process())?;
                process.kill_and_restart(down).await?;
                crate::cluster::wait_api_ready(&env.client, Duration::from_secs(90)).await?;
                1
            }
        };
        // A replica that lost its Lease exits; a Deployment would start it again.
        env.operator.restart_if_exited().await?;
        if let Some(b) = follower.as_mut() {
            b.restart_if_exited().await?;
        }
        if let (Some(injection), true) = (due, done > 0) {
            injected += done;
            *injected_by_kind.entry(injection.kind()).or_default() += done;
            fired += 1;
            last = Instant::now();
        }
    }
    let faults_ended = Instant::now();

    // Settle: every run and child ends; late gates are approved too (the fault may end
    // before a gate is reached).
    let mut stuck;
    loop {
        approve_waiting(&env, &runs, &gated, &mut approved).await;
        let list = runs.list(&ListParams::default()).await?;
        stuck = list
            .items
            .iter()
            .filter(|r| !r.status.as_ref().is_some_and(ended))
            .map(|r| {
                let phase = r.status.as_ref().map(|s| s.phase).unwrap_or_default();
                // A run that has ended may still wait for its cleanup.
                let cleanup = r.status.as_ref().and_then(|s| s.cleanup.as_ref());
                match cleanup {
                    Some(c) => format!("{} ({phase:?}, cleanup {:?})", r.name_any(), c.phase),
                    None => format!("{} ({phase:?})", r.name_any()),
                }
            })
            .collect::<Vec<_>>();
        let all_there = list.items.len() >= started.len();
        if (stuck.is_empty() && all_there) || faults_ended.elapsed() > settle_limit {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let settle = faults_ended.elapsed();
    // The reconcile rate, window after window, until the operator is idle.
    let replicas: Vec<&Operator> = std::iter::once(&env.operator)
        .chain(follower.as_ref())
        .collect();
    let mut rates = Vec::new();
    let mut idle_after = None;
    let ended = Instant::now();
    while ended.elapsed() < IDLE_WAIT_LIMIT {
        let rate = reconcile_rate(&replicas, RATE_WINDOW).await?;
        rates.push(rate);
        if rate < IDLE_RECONCILES_PER_SECOND {
            // The window before this one was the last that was not idle.
            idle_after = Some(RATE_WINDOW * (rates.len() as u32 - 1));
            break;
        }
    }
    eprintln!(
        "{}: reconciles a second, {} s windows from every run's end: {rates:.2?}",
        scenario.fault.name(),
        RATE_WINDOW.as_secs()
    );
    let reconciles_after_end = rates.first().copied().unwrap_or_default();
    let idle_reconciles_per_second = rates.last().copied().unwrap_or_default();
    pod_watch.abort();
    child_watch.abort();

    let list = runs.list(&ListParams::default()).await?.items;
    if matches!(scenario.fault, Fault::MotoDown { .. }) {
        // What the outage did to the EC2 runs: which failed, and which cleanups retried.
        let ec2: Vec<&CompositionRun> = list.iter().filter(|r| r.spec.composition == EC2).collect();
        let failed = ec2
            .iter()
            .filter(|r| {
                r.status
                    .as_ref()
                    .is_some_and(|s| s.phase == RunPhase::Failed)
            })
            .count();
        let retried: Vec<String> = ec2
            .iter()
            .filter_map(|r| {
                let cleanup = r.status.as_ref()?.cleanup.as_ref()?;
                (cleanup.attempts > 1).then(|| {
                    format!(
                        "{} ({:?} after {} attempts)",
                        r.name_any(),
                        cleanup.phase,
                        cleanup.attempts
                    )
                })
            })
            .collect();
        eprintln!(
            "moto-down: {} EC2 runs, {failed} Failed; cleanups that retried: {retried:?}",
            ec2.len()
        );
    }
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    let mut unexpected = Vec::new();
    let mut approvals_not_once = Vec::new();
    let mut ledgers_left = Vec::new();
    for run in &list {
        let status = run.status.clone().unwrap_or_default();
        if let Some(left) = ledger_left(&run.name_any(), &status) {
            ledgers_left.push(left);
        }
        *phases.entry(format!("{:?}", status.phase)).or_default() += 1;
        if status.phase.is_finished()
            && !as_implied(scenario.fault, &run.spec.composition, status.phase)
        {
            let said: Vec<String> = status
                .steps
                .iter()
                .filter_map(|s| Some(format!("{}: {}", s.name, s.message.clone()?)))
                .collect();
            unexpected.push(format!(
                "{} {:?}: {}",
                run.name_any(),
                status.phase,
                said.join("; ")
            ));
        }
        if run.spec.composition == GATED {
            let counted = status.steps.iter().find(|s| s.name == "gate").map(|s| {
                (
                    s.phase,
                    s.approvals.iter().filter(|a| a.ignored.is_none()).count(),
                )
            });
            if counted != Some((StepPhase::Succeeded, 1)) {
                approvals_not_once.push(format!("{}: {counted:?}", run.name_any()));
            }
        }
    }
    let (instances_made, leaked_instances) = match &moto {
        Some(moto) => (
            moto.instance_states().await?.len(),
            moto.live_instances().await?,
        ),
        None => (0, Vec::new()),
    };
    let (pods_created, duplicate_pods) = duplicates(&pod_uids);
    let (children_created, duplicate_children) = duplicates(&child_uids);
    if pods_created == 0 {
        bail!("the pod watch saw no pod: {}", env.operator.log_tail());
    }
    let findings = Findings {
        fault: scenario.fault,
        runs: started.len(),
        phases,
        stuck,
        unexpected,
        duplicate_pods,
        duplicate_children,
        pods_created,
        children_created,
        injected,
        injected_by_kind,
        approvals_not_once,
        instances_made,
        leaked_instances,
        ledgers_left,
        settle,
        peak_rss_mib: peak_rss as f64 / (1024.0 * 1024.0),
        reconciles_after_end,
        idle_reconciles_per_second,
        idle_after,
    };
    if !findings.held() {
        eprintln!(
            "[chaos] {}: {findings:#?}\noperator log:\n{}\nsecond replica's log:\n{}",
            scenario.fault.label(),
            env.operator.log_tail(),
            follower
                .as_ref()
                .map(Operator::log_tail)
                .unwrap_or_default()
        );
    }
    drop(follower);
    drop(env);
    drop(moto);
    Ok(findings)
}

/// Whether a run has ended, its cleanup included (the ledger is checked after it).
fn ended(status: &CompositionRunStatus) -> bool {
    status.phase.is_finished()
        && status
            .cleanup
            .as_ref()
            .is_none_or(|cleanup| cleanup.phase.is_finished())
}

/// What a run's ledger still holds, when its status records no cleanup failure: what
/// nobody would know to remove.
fn ledger_left(run: &str, status: &CompositionRunStatus) -> Option<String> {
    if status.resources.is_empty() {
        return None;
    }
    let cleanup = status.cleanup.as_ref();
    let failure_recorded = cleanup.is_some_and(|c| {
        c.phase == StepPhase::Failed && c.message.as_ref().is_some_and(|m| !m.is_empty())
    });
    if failure_recorded {
        return None;
    }
    let ids: Vec<&str> = status.resources.iter().map(|r| r.id.as_str()).collect();
    Some(format!(
        "{run}: {} (cleanup: {:?})",
        ids.join(", "),
        cleanup.map(|c| (c.phase, c.message.clone()))
    ))
}

/// Whether a run of `composition` that ended in `phase` under `fault` ended as its
/// composition implies: Succeeded, as every task step retries; with the EC2 API away, an
/// EC2 run may also fail (a step that met the outage after its retries fails, as a run
/// whose cloud is down does). Its ledger and instances are checked all the same.
fn as_implied(fault: Fault, composition: &str, phase: RunPhase) -> bool {
    match phase {
        RunPhase::Succeeded => true,
        RunPhase::Failed => matches!(fault, Fault::MotoDown { .. }) && composition == EC2,
        _ => false,
    }
}

/// Drops every TCP packet `uid` sends (the operator's user, so the API server hears
/// nothing from it) for `cut`. The rule goes when the guard does, also on an error.
async fn cut_off(uid: u32, cut: Duration) -> Result<()> {
    let uid = uid.to_string();
    let rule = crate::cluster::IptablesRule::insert(&[
        "OUTPUT",
        "-p",
        "tcp",
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "DROP",
    ])?;
    tokio::time::sleep(cut).await;
    drop(rule);
    Ok(())
}

/// SIGKILLs whichever replica holds the Lease and starts it again (it comes back as a
/// follower); 0 while nobody holds it (a takeover under way), so the caller tries again.
async fn kill_leader(env: &mut Env, follower: &mut Option<Operator>) -> Result<usize> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns.name);
    let Ok(Some(holder)) = crate::lease_holder(&leases, LEASE).await else {
        return Ok(0);
    };
    // A local replica's identity is `HOST_PID`.
    let holds = |op: &Operator| {
        op.pid()
            .is_some_and(|pid| holder.ends_with(&format!("_{pid}")))
    };
    let leader = std::iter::once(&mut env.operator)
        .chain(follower.as_mut())
        .find(|op| holds(op));
    match leader {
        Some(op) => {
            op.restart().await?;
            Ok(1)
        }
        // The holder is a replica killed a moment ago whose Lease has not expired.
        None => Ok(0),
    }
}

/// The operator's reconciles a second over `window` (all replicas together), from their
/// `maestro_reconcile_total`.
async fn reconcile_rate(replicas: &[&Operator], window: Duration) -> Result<f64> {
    // The addresses are read anew each time: a replica restarted a moment ago (the last
    // kill may come as the faults end) serves on a new port once it has logged it.
    let reconciles = || async {
        let mut total = 0.0;
        for op in replicas {
            let addr = crate::maestro::metrics_addr_from_log(&op.log)?;
            let url = format!("http://{addr}/metrics");
            let out = tokio::process::Command::new("curl")
                .args(["-fsS", "--max-time", "5", &url])
                .output()
                .await
                .map_err(|e| format!("curl {url}: {e}"))?;
            if !out.status.success() {
                return Err(format!("curl {url} failed"));
            }
            total += reconcile_total(&String::from_utf8_lossy(&out.stdout));
        }
        // The runs were reconciled: pages without the counter would read as idle.
        match total > 0.0 {
            true => Ok(total),
            false => Err("no replica shows maestro_reconcile_total".to_string()),
        }
    };
    let metrics = "every replica's /metrics";
    let before = crate::wait_for(metrics, Duration::from_secs(30), reconciles).await?;
    tokio::time::sleep(window).await;
    let after = crate::wait_for(metrics, Duration::from_secs(30), reconciles).await?;
    Ok((after - before) / window.as_secs_f64())
}

/// The sum of `maestro_reconcile_total` over its controllers, in a Prometheus text page.
fn reconcile_total(page: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with("maestro_reconcile_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Deletes or evicts up to `count` running step pods, one attempt of a step at most;
/// returns how many went.
async fn remove_running_pods(
    pods: &Api<Pod>,
    evict: bool,
    count: usize,
    removed: &mut BTreeSet<(String, String)>,
) -> Result<usize> {
    let list = pods
        .list(&ListParams::default().labels(labels::RUN))
        .await?;
    // Pods running for a second at least, as someone who deletes a pod finds it: the
    // operator has seen it on its node by then. (A pod deleted before the operator ever
    // saw it cannot be told from one its cache has not shown yet, and is created again
    // under its name.)
    let now = k8s_openapi::jiff::Timestamp::now();
    let running = list.items.into_iter().filter(|p| {
        let status = p.status.as_ref();
        let ran_a_second = status
            .and_then(|s| s.start_time.as_ref())
            .is_some_and(|t| now.duration_since(t.0).as_secs_f64() >= 1.0);
        status.and_then(|s| s.phase.as_deref()) == Some("Running")
            && ran_a_second
            && p.metadata.deletion_timestamp.is_none()
            && !removed.contains(&step_of(p))
    });
    let chosen: Vec<Pod> = running.take(count).collect();
    let mut done = 0;
    for pod in chosen {
        let name = pod.name_any();
        let went = match evict {
            true => pods.evict(&name, &EvictParams::default()).await.is_ok(),
            false => pods.delete(&name, &DeleteParams::default()).await.is_ok(),
        };
        if went {
            done += 1;
        }
        removed.insert(step_of(&pod));
    }
    Ok(done)
}

/// A step pod's run and step: one attempt of each step is deleted at most, so that its
/// retries carry every run to success (a step whose every attempt is deleted fails,
/// saying so, as the engine's fixture pod-deleted-mid-step shows).
fn step_of(pod: &Pod) -> (String, String) {
    let label = |key: &str| pod.labels().get(key).cloned().unwrap_or_default();
    (label(labels::RUN), label(labels::STEP))
}

/// Approves (with `kubectl maestro approve`, once each) the gated runs waiting at their gate.
async fn approve_waiting(
    env: &Env,
    runs: &Api<CompositionRun>,
    gated: &[String],
    approved: &mut BTreeSet<String>,
) {
    let Ok(list) = runs.list(&ListParams::default()).await else {
        return;
    };
    for run in list.items {
        let name = run.name_any();
        let waiting = run
            .status
            .as_ref()
            .is_some_and(|s| s.phase == RunPhase::WaitingApproval);
        if waiting && gated.contains(&name) && !approved.contains(&name) {
            let said = env
                .cli(&["approve", &name, "gate", "--comment", "chaos"])
                .await
                .context("kubectl maestro approve");
            match said {
                Ok(_) => {
                    approved.insert(name);
                }
                Err(e) => eprintln!("[chaos] approving {name}: {e:#} (tried again)"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use maestro_api::{CleanupStatus, LedgerEntry};

    use super::*;

    #[test]
    fn each_once_injects_every_kind_in_turn_then_nothing() {
        let fault = Fault::EachOnce {
            during: Duration::from_secs(50),
        };
        let at = |secs, done| fault.due(Duration::from_secs(secs), Duration::ZERO, done);
        assert_eq!(at(1, 0), Some(Injection::KillLeader));
        // The second waits for its sixth of the way.
        assert_eq!(at(5, 1), None);
        assert_eq!(
            at(10, 1),
            Some(Injection::RemovePods {
                evict: false,
                count: 2
            })
        );
        assert_eq!(
            at(20, 2),
            Some(Injection::RemovePods {
                evict: true,
                count: 2
            })
        );
        assert!(matches!(
            at(30, 3),
            Some(Injection::Restart {
                part: ControlPlane::ApiServer,
                ..
            })
        ));
        assert!(matches!(
            at(40, 4),
            Some(Injection::Restart {
                part: ControlPlane::Etcd,
                ..
            })
        ));
        assert_eq!(at(49, 5), Some(Injection::CutOff { cut: EACH_ONCE_CUT }));
        assert_eq!(at(49, 6), None);
    }

    #[test]
    fn periodic_faults_wait_for_their_period() {
        let fault = Fault::ControlPlaneRestarted {
            part: ControlPlane::Etcd,
            every: Duration::from_secs(30),
            down: Duration::from_secs(5),
            during: Duration::from_secs(120),
        };
        let since = |secs| fault.due(Duration::from_secs(60), Duration::from_secs(secs), 1);
        assert_eq!(since(29), None);
        assert_eq!(
            since(30),
            Some(Injection::Restart {
                part: ControlPlane::Etcd,
                down: Duration::from_secs(5)
            })
        );
    }

    #[test]
    fn the_mixes_hold_the_issues_run_counts_with_ec2_runs_among_them() {
        assert_eq!(Mix::full().runs(), 200);
        assert_eq!(Mix::full().ec2, 10);
        assert_eq!(Mix::smoke().runs(), 50);
        assert_eq!(Mix::smoke().ec2, 2);
        let names: Vec<&str> = Mix::smoke()
            .by_composition()
            .iter()
            .map(|(c, _)| *c)
            .collect();
        assert!(names.contains(&EC2), "{names:?}");
        assert_eq!(Mix::smoke().on_fake_node(), 48);
        let ec2_only = Mix::full().ec2_only();
        assert_eq!((ec2_only.runs(), ec2_only.on_fake_node()), (10, 0));
    }

    #[test]
    fn the_ec2_composition_runs_on_the_real_node_against_the_endpoint_given() {
        let yaml = compositions_yaml(Some("http://10.0.0.5:5000"));
        let docs: Vec<serde_json::Value> = yaml
            .split("\n---\n")
            .map(|d| serde_json::from_str(d).expect("each document is JSON"))
            .collect();
        let ec2 = docs
            .iter()
            .find(|d| d["metadata"]["name"] == EC2)
            .expect("the EC2 composition is there");
        assert_eq!(
            ec2["spec"]["context"]["awsEndpoint"],
            "http://10.0.0.5:5000"
        );
        assert!(ec2["spec"]["nodeSelector"].is_null(), "{ec2}");
        assert!(ec2["spec"]["tolerations"].is_null(), "{ec2}");
        let tasks: Vec<&str> = ec2["spec"]["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .filter_map(|s| s["task"].as_str())
            .collect();
        assert_eq!(tasks, ["ec2-provision", "shell", "ec2-deprovision"]);
        // The others stay on the fake node.
        let one = docs
            .iter()
            .find(|d| d["metadata"]["name"] == ONE_STEP)
            .expect("chaos-one");
        assert!(!one["spec"]["nodeSelector"].is_null(), "{one}");
        // Without moto, no EC2 composition.
        assert!(!compositions_yaml(None).contains(EC2));
    }

    #[test]
    fn only_picks_the_scenarios_named_and_refuses_an_unknown_name() {
        let mut every = suite(Mix::smoke(), Duration::from_secs(40));
        every.extend(smoke_suite(Mix::smoke(), Duration::from_secs(40)));
        let chosen = only(&every, "pods-deleted, operator-killed").expect("both exist");
        let names: Vec<&str> = chosen.iter().map(|s| s.fault.name()).collect();
        assert_eq!(names, ["pods-deleted", "operator-killed"]);
        assert_eq!(chosen[0].mix, Mix::smoke());
        let all_names: BTreeSet<&str> = every.iter().map(|s| s.fault.name()).collect();
        assert_eq!(all_names.len(), every.len(), "names are unique");
        let refused = only(&every, "operator-killed,kubelet-killed")
            .expect_err("no such scenario")
            .to_string();
        assert!(
            refused.contains("\"kubelet-killed\"") && refused.contains("etcd-restarted"),
            "{refused}"
        );
        assert!(only(&every, " , ").is_err());
    }

    fn findings() -> Findings {
        Findings {
            fault: Fault::OperatorKilled {
                every: Duration::from_secs(10),
                during: Duration::from_secs(40),
            },
            runs: 50,
            phases: BTreeMap::from([("Succeeded".to_string(), 64)]),
            stuck: Vec::new(),
            unexpected: Vec::new(),
            duplicate_pods: Vec::new(),
            duplicate_children: Vec::new(),
            pods_created: 200,
            children_created: 14,
            injected: 4,
            injected_by_kind: BTreeMap::new(),
            approvals_not_once: Vec::new(),
            instances_made: 2,
            leaked_instances: Vec::new(),
            ledgers_left: Vec::new(),
            settle: Duration::from_secs(2),
            peak_rss_mib: 150.0,
            reconciles_after_end: 0.0,
            idle_reconciles_per_second: 0.0,
            idle_after: Some(Duration::ZERO),
        }
    }

    #[test]
    fn a_leaked_instance_or_a_silent_ledger_fails_the_scenario_and_shows_in_the_table() {
        let clean = findings();
        assert!(clean.held());
        let leaked = Findings {
            leaked_instances: vec!["i-0abc running".into()],
            ..findings()
        };
        assert!(!leaked.held());
        let silent = Findings {
            ledgers_left: vec!["ec2-0: i-0abc (cleanup: None)".into()],
            ..findings()
        };
        assert!(!silent.held());

        let table = table(&[clean, leaked]);
        let lines: Vec<&str> = table.lines().collect();
        let header: Vec<&str> = lines[0].split('|').map(str::trim).collect();
        let column = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .unwrap_or_else(|| panic!("no column {name}: {header:?}"))
        };
        let leaked_column = column("leaked instances");
        let ledgers_column = column("ledgers left");
        assert_eq!(lines[1].split('|').count(), header.len(), "{table}");
        let cell = |row: usize, col: usize| lines[row].split('|').nth(col).map(str::trim);
        assert_eq!(cell(2, leaked_column), Some("0 of 2"), "{table}");
        assert_eq!(cell(3, leaked_column), Some("1 of 2"), "{table}");
        assert_eq!(cell(3, ledgers_column), Some("0"), "{table}");
    }

    #[test]
    fn only_an_ec2_run_under_an_ec2_outage_may_fail() {
        let outage = Fault::MotoDown {
            every: Duration::from_secs(30),
            down: Duration::from_secs(20),
            during: Duration::from_secs(120),
        };
        let killed = Fault::OperatorKilled {
            every: Duration::from_secs(10),
            during: Duration::from_secs(120),
        };
        assert!(as_implied(outage, EC2, RunPhase::Succeeded));
        assert!(as_implied(outage, EC2, RunPhase::Failed));
        assert!(!as_implied(outage, ONE_STEP, RunPhase::Failed));
        assert!(!as_implied(killed, EC2, RunPhase::Failed));
        assert!(!as_implied(outage, EC2, RunPhase::Cancelled));
    }

    #[test]
    fn an_operator_never_idle_fails_the_scenario_and_a_burst_that_ends_does_not() {
        let burst = Findings {
            reconciles_after_end: 66.4,
            idle_reconciles_per_second: 0.2,
            idle_after: Some(Duration::from_secs(20)),
            ..findings()
        };
        assert!(burst.held());
        let looping = Findings {
            reconciles_after_end: 66.4,
            idle_reconciles_per_second: 60.0,
            idle_after: None,
            ..findings()
        };
        assert!(!looping.held());
        let table = table(&[burst, looping]);
        let lines: Vec<&str> = table.lines().collect();
        let last = |row: usize| {
            lines[row]
                .trim_end_matches('|')
                .rsplit('|')
                .next()
                .map(str::trim)
        };
        assert_eq!(last(2), Some("20 s (0.20/s)"), "{table}");
        assert_eq!(last(3), Some("**not in 120 s** (60.00/s)"), "{table}");
    }

    #[test]
    fn a_ledger_left_is_one_whose_cleanup_failure_the_status_does_not_record() {
        let entry = LedgerEntry {
            kind: "ec2-instance".into(),
            id: "i-0abc".into(),
            region: Some("us-east-1".into()),
            step: "provision".into(),
            ..LedgerEntry::default()
        };
        let empty = CompositionRunStatus::default();
        assert_eq!(ledger_left("ec2-0", &empty), None);
        let held = CompositionRunStatus {
            resources: vec![entry],
            ..CompositionRunStatus::default()
        };
        let left = ledger_left("ec2-0", &held).expect("nothing says why it is there");
        assert!(left.contains("ec2-0: i-0abc"), "{left}");
        let failed = CompositionRunStatus {
            cleanup: Some(CleanupStatus {
                phase: StepPhase::Failed,
                message: Some("cleanup attempt 5 failed: connection refused".into()),
                ..CleanupStatus::default()
            }),
            ..held.clone()
        };
        assert_eq!(ledger_left("ec2-0", &failed), None);
        let succeeded_yet_held = CompositionRunStatus {
            cleanup: Some(CleanupStatus {
                phase: StepPhase::Succeeded,
                ..CleanupStatus::default()
            }),
            ..held
        };
        assert!(ledger_left("ec2-0", &succeeded_yet_held).is_some());
    }

    #[test]
    fn a_run_whose_cleanup_still_runs_has_not_ended() {
        let mut status = CompositionRunStatus {
            phase: RunPhase::Failed,
            ..CompositionRunStatus::default()
        };
        assert!(ended(&status));
        status.cleanup = Some(CleanupStatus {
            phase: StepPhase::Running,
            ..CleanupStatus::default()
        });
        assert!(!ended(&status));
        status.phase = RunPhase::Running;
        status.cleanup = None;
        assert!(!ended(&status));
    }

    #[test]
    fn reconciles_are_summed_over_controllers() {
        let page = "# HELP maestro_reconcile_total Reconciles, by controller.\n\
                    # TYPE maestro_reconcile_total counter\n\
                    maestro_reconcile_total{controller=\"run\"} 1520\n\
                    maestro_reconcile_total{controller=\"composition\"} 12\n\
                    maestro_reconcile_errors_total{controller=\"run\",kind=\"kube\"} 3\n";
        assert_eq!(reconcile_total(page), 1532.0);
    }
}
