//! The composition engine: pure planning, no Kubernetes client. Given a run (its spec
//! and status) and what was observed (its pods, child runs, approvals, other runs), it
//! returns the run's next status and the actions that get there. The controller carries
//! the actions out (creating a pod twice fails with AlreadyExists, so every action is
//! safe to repeat) and then writes the status.

pub mod conditions;
pub mod expr;
pub mod graph;
pub mod params;
mod plan;
pub mod routing;
pub mod triggers;

#[cfg(test)]
mod fixture_tests;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::jiff::Timestamp;
use maestro_api::{
    BuiltinTask, CompositionRunSpec, CompositionRunStatus, CompositionSpec, Decision, RunPhase,
    TaskSpec,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// The step result the agent writes, as the engine reads it (one definition, in the protocol).
pub use maestro_protocol::{ExternalResource, ReportValue, StepResult};

pub use plan::{after_end_work, plan};

/// How long a status change that only adds the nodes step pods landed on may wait for the
/// next write that has to happen anyway (a step ending, the next one starting).
pub const NODE_ONLY_WRITE_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether `new` differs from `old` only in the nodes of step pods (`steps[].nodeName`).
/// Such a change is worth recording, but not a write of its own at once: a step's pod is
/// bound to a node a moment after it is created, so writing it at once cost one status
/// write per step; it joins the next write instead, or is written alone after
/// [`NODE_ONLY_WRITE_DELAY`].
pub fn only_nodes_changed(
    old: &maestro_api::CompositionRunStatus,
    new: &maestro_api::CompositionRunStatus,
) -> bool {
    if old == new || old.steps.len() != new.steps.len() {
        return false;
    }
    let mut without_nodes = new.clone();
    for (step, before) in without_nodes.steps.iter_mut().zip(&old.steps) {
        step.node_name.clone_from(&before.node_name);
    }
    &without_nodes == old
}

/// Everything the engine plans from.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub run_name: &'a str,
    /// The run object's UID (a rerun proves by it that a ledger was handed to it).
    pub uid: &'a str,
    pub namespace: &'a str,
    /// The run object's metadata.generation.
    pub generation: Option<i64>,
    /// How many runs started each other to start this one (`labels::depth_of`); a run
    /// at `labels::MAX_RUN_DEPTH` starts no more runs.
    pub depth: u32,
    /// The compositions of the runs that started this one, and its own (`labels::chain_of`),
    /// named when the depth limit stops it.
    pub chain: &'a str,
    pub spec: &'a CompositionRunSpec,
    pub status: &'a CompositionRunStatus,
    /// The composition as it is now; the run keeps a snapshot of it once started, so a
    /// later edit does not change a run in flight.
    pub composition: Option<&'a CompositionSpec>,
    /// The Tasks the composition's steps name, as found (run namespace, then library).
    pub tasks: &'a BTreeMap<String, TaskSpec>,
    pub observed: &'a Observed,
    pub now: Timestamp,
    /// The run object is being deleted: stop its steps and clean up before it goes.
    pub deleting: bool,
    /// Whether the run may start (the controller's routing to an Agent slot decides).
    pub admission: Admission,
    /// How many new step pods this pass may start (its Agent's free capacity); `None`
    /// for no limit. Cleanup pods and pods asked for again are not counted.
    pub pod_budget: Option<u32>,
}

/// Whether a run may start its steps. The engine knows nothing of Agents: the controller
/// routes the run and tells the engine the outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Admission {
    /// The run holds what it needs (a slot, or no Agents are in play).
    #[default]
    Admitted,
    /// The run waits for a slot; the reason is shown in its Succeeded condition.
    Queued(String),
}

/// What the controller observed of the run's world.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Observed {
    /// The run's step pods.
    pub pods: Vec<ObservedPod>,
    /// Runs this run started (children) and runs of compositions it waits for.
    pub runs: Vec<ObservedRun>,
    /// Approvals of this run's gates.
    pub approvals: Vec<ObservedApproval>,
    /// Names this run's pods or child runs must have that an object of someone else holds
    /// (the create answered AlreadyExists, and the object is not owned by this run).
    #[serde(default)]
    pub taken: Vec<TakenName>,
    /// Pods the API server refused to create, time after time, for a reason trying again
    /// will not change (Pod Security, a quota, a webhook): the engine fails their steps.
    #[serde(default)]
    pub refused: Vec<RefusedCreate>,
    /// Pods the run's status names whose create has not gone through in this process:
    /// the controller writes the status that names a new pod before it creates the pod
    /// (so that a pod can never exist unnamed), and a create that failed after that write
    /// is asked for again. A named pod that is neither observed nor listed here was
    /// created and is gone, or was never created because the operator stopped in between.
    #[serde(default)]
    pub uncreated: Vec<String>,
    /// For a rerun: the status of the run `spec.rerunOf` names, found under that name with
    /// that UID; `None` when it is gone.
    #[serde(default)]
    pub source: Option<CompositionRunStatus>,
    /// Runs that rerun this one and have not started, oldest first: the first takes over
    /// this run's ledger and workspace.
    #[serde(default)]
    pub reruns: Vec<ObservedRerun>,
}

/// A run that reruns the run being planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedRerun {
    pub name: String,
    pub uid: String,
}

impl Observed {
    /// The run's step (or cleanup) pod of that name, if observed.
    pub fn pod(&self, name: &str) -> Option<&ObservedPod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// Who holds `name`, if an object the run does not own holds it.
    pub fn taken(&self, name: &str) -> Option<&TakenName> {
        self.taken.iter().find(|t| t.name == name)
    }

    /// Whether the status names pod `name` and its create has not gone through yet.
    pub fn uncreated(&self, name: &str) -> bool {
        self.uncreated.iter().any(|n| n == name)
    }

    /// Why the API server keeps refusing to create pod `name`, if it does.
    pub fn refused(&self, name: &str) -> Option<&RefusedCreate> {
        self.refused.iter().find(|r| r.name == name)
    }
}

/// A pod the API server refused to create, with its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedCreate {
    pub name: String,
    /// The API server's message, like `pods "r-a-1" is forbidden: violates PodSecurity ...`.
    pub message: String,
    /// How many creates it refused.
    pub tries: u32,
}

/// A pod or run name this run needs, held by an object it does not own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TakenName {
    pub name: String,
    /// Who holds it, for the message: `"owned by Deployment web"`, `"owned by nobody"`.
    pub holder: String,
    /// The object that is not this run's, when it is not the pod or run of that name
    /// itself but one the pod needs: `"claim r-workspace"` (the run's workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// A step pod as observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedPod {
    pub name: String,
    pub step: String,
    pub attempt: u32,
    pub phase: PodPhase,
    #[serde(default)]
    pub created: Option<Timestamp>,
    #[serde(default)]
    pub node: Option<String>,
    /// The step result the agent wrote to the termination message, once the pod ended.
    #[serde(default)]
    pub result: Option<StepResult>,
    /// Why the pod failed when no result explains it (OOMKilled, image not found...).
    #[serde(default)]
    pub message: Option<String>,
}

/// A pod's phase, as Kubernetes reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// Another run, as observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedRun {
    pub name: String,
    pub composition: String,
    pub phase: RunPhase,
    #[serde(default)]
    pub created: Option<Timestamp>,
    #[serde(default)]
    pub completed: Option<Timestamp>,
}

/// An approval decision, as observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedApproval {
    pub name: String,
    pub step: String,
    pub decision: Decision,
    pub by: String,
    /// The approver's groups, as recorded at admission (the Approval's `approverGroups`).
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub created: Option<Timestamp>,
}

/// The engine's answer: the next status and what to do to get there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub status: CompositionRunStatus,
    pub actions: Vec<Action>,
    pub events: Vec<EventNote>,
    /// When to look again even if nothing changes (a backoff or a timeout ends).
    pub requeue_after: Option<Duration>,
}

/// One thing the controller must do. Each is safe to repeat.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Create a step's pod (AlreadyExists means it is under way).
    /// (Boxed: a pod is several times larger than the other actions.)
    CreatePod(Box<StepPod>),
    /// Delete a step pod (a cancel or a timeout stops it).
    DeletePod { name: String },
    /// Create a run: a child (owned by this run), or the onFailure run.
    CreateRun(NewRun),
    /// Cancel another run (a child of a cancelled run).
    CancelRun { name: String },
    /// Make the rerun `run` (UID `uid`) an owner of the workspace claim of run
    /// `claim_of` (this run's, or the one it works in), so that the claim outlives this
    /// run while the rerun uses it. Nothing to do without workspace claims.
    ShareWorkspace {
        claim_of: String,
        run: String,
        uid: String,
    },
}

/// A pod to create for one attempt of a step.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepPod {
    pub name: String,
    pub step: String,
    pub attempt: u32,
    pub task: String,
    pub runs: TaskRuns,
    /// The resolved inputs, templates evaluated and defaults applied.
    pub inputs: Map<String, Json>,
    pub context: BTreeMap<String, String>,
    pub service_account: Option<String>,
    /// The composition's node selector and tolerations (the Agent's are added).
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// Secrets whose keys become the step's environment variables.
    pub secret_env: Vec<String>,
    /// The attempt's timeout, enforced by the engine and as the pod's activeDeadlineSeconds.
    pub timeout: Option<Duration>,
    /// The run whose workspace claim the pod mounts, when not its own (a rerun works in
    /// the workspace of the run it reruns).
    pub workspace_of: Option<String>,
    /// Runs other than this one whose `maestro.dev/run` tag the pod may release resources
    /// of: those whose ledger this run took over.
    pub ledger_runs: Vec<String>,
}

/// How a step's task runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TaskRuns {
    /// A built-in of maestro-agent, in the agent image.
    Builtin(BuiltinTask),
    /// A plugin image and command, under `maestro-agent exec`.
    Container {
        image: String,
        command: Vec<String>,
        pull_policy: Option<String>,
    },
}

/// A run to create.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewRun {
    pub name: String,
    pub composition: String,
    pub params: BTreeMap<String, String>,
    /// The step of this run that starts it; `None` for the onFailure run.
    pub step: Option<String>,
    /// Whether this run owns the new one (children are deleted with their parent; the
    /// onFailure run outlives the failed run).
    pub owned: bool,
    /// The new run's `startedBy`: this run's. A run another run starts is started by
    /// whoever started that one, so calling a gated composition from another does not
    /// get its starter past a gate that forbids self-approval.
    pub started_by: Option<String>,
}

/// A Kubernetes Event to record about the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventNote {
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
    /// A step's routine progress (it started, it succeeded): the run's status records the
    /// same, with times, so the operator publishes these only when asked to. At two
    /// Events per step they were the largest share of its API writes.
    pub routine: bool,
}

#[cfg(test)]
mod node_only_tests {
    use super::only_nodes_changed;
    use maestro_api::{CompositionRunStatus, StepPhase, StepStatus};

    fn status(node: Option<&str>, phase: StepPhase) -> CompositionRunStatus {
        CompositionRunStatus {
            steps: vec![StepStatus {
                name: "build".into(),
                phase,
                node_name: node.map(str::to_string),
                ..StepStatus::default()
            }],
            ..CompositionRunStatus::default()
        }
    }

    #[test]
    fn a_pod_bound_to_a_node_is_a_node_only_change() {
        let before = status(None, StepPhase::Running);
        assert!(only_nodes_changed(
            &before,
            &status(Some("node-a"), StepPhase::Running)
        ));
    }

    #[test]
    fn a_step_that_ends_is_not_a_node_only_change_and_no_change_is_none() {
        let before = status(None, StepPhase::Running);
        assert!(!only_nodes_changed(
            &before,
            &status(Some("node-a"), StepPhase::Succeeded)
        ));
        assert!(!only_nodes_changed(&before, &before.clone()));
    }
}
