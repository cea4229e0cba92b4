use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One execution of a Composition with its parameters. Its status holds each step's
/// phase, times, pod and small outputs, the run's shared context, the external resources
/// it created, and conditions. The spec cannot change once created, except `cancel`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "maestro.dev",
    version = "v1alpha1",
    kind = "CompositionRun",
    namespaced,
    status = "CompositionRunStatus",
    shortname = "crun",
    category = "maestro",
    printcolumn(name = "Composition", type_ = "string", json_path = ".spec.composition"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    selectable = ".spec.composition",
    validation = Rule::new("size(self.metadata.name) <= 63").message("a run's name is at most 63 characters: it labels the run's pods"),
)]
#[x_kube(
    validation = Rule::new("self.composition == oldSelf.composition && self.params == oldSelf.params && self.priority == oldSelf.priority").message("a run's composition, params and priority cannot change once created; start a new run instead"),
    validation = Rule::new("!oldSelf.cancel || self.cancel").message("a cancelled run cannot be resumed"),
    validation = Rule::new("has(self.startedBy) == has(oldSelf.startedBy) && (!has(self.startedBy) || self.startedBy == oldSelf.startedBy)").message("a run's startedBy cannot change once created"),
    validation = Rule::new("has(self.rerunOf) == has(oldSelf.rerunOf) && (!has(self.rerunOf) || self.rerunOf == oldSelf.rerunOf)").message("a run's rerunOf cannot change once created"),
)]
#[serde(rename_all = "camelCase")]
pub struct CompositionRunSpec {
    /// The Composition to run, in the run's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub composition: String,
    /// Values of the composition's parameters.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Set to true to cancel the run: running step pods are stopped, cleanup runs, and
    /// the run ends in phase Cancelled.
    #[serde(default)]
    pub cancel: bool,
    /// Where the run stands in the queue for Agent slots: higher first, then older first
    /// (default 0).
    #[serde(default)]
    pub priority: i32,
    /// Who started the run, exactly as the API server authenticated them (`kubectl auth
    /// whoami`); `kubectl maestro run` sets it. Checked at admission: a user must name
    /// themself. Runs the operator makes carry their trigger's: a child or onFailure run
    /// its parent's, a scheduled or pushed run none (its `maestro.dev/trigger` label says
    /// which trigger). An approval gate that forbids self-approval ignores this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub started_by: Option<String>,
    /// The run this one reruns (`kubectl maestro rerun`): it follows that run's
    /// composition and Task snapshots, not today's; the steps it does not rerun keep that
    /// run's outcome and outputs ("reused"), and it takes over that run's ledger and
    /// workspace when that run holds them for it (the composition's `rerunWindow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<RerunOf>,
}

/// Which run a rerun reruns, and from where.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RerunOf {
    /// The run, in this namespace.
    #[schemars(length(min = 1, max = 63))]
    pub run: String,
    /// Its UID: only that very run is taken over, never a later run of the same name.
    #[schemars(length(min = 1, max = 64))]
    pub uid: String,
    /// The step to rerun from: it, every step after it in the graph, and every step
    /// that did not succeed rerun. Absent: the steps that did not succeed, and those
    /// after them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub from: Option<String>,
}

/// The phase of a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RunPhase {
    /// Accepted, not started yet.
    #[default]
    Pending,
    /// Waiting for a slot of an Agent; the Succeeded condition's message says why.
    Queued,
    /// The steps have ended; leftover external resources are being removed.
    CleaningUp,
    /// Steps are running.
    Running,
    /// A step waits for a human approval.
    WaitingApproval,
    /// Every step succeeded or was skipped.
    Succeeded,
    /// A step failed, the run timed out, or an approval was rejected or timed out.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// The composition is invalid; no step ran. The Invalid condition says why.
    Invalid,
}

impl RunPhase {
    /// Whether the run has ended.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Invalid
        )
    }
}

/// The phase of one step.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StepPhase {
    /// Not started: waiting for the steps it depends on.
    #[default]
    Pending,
    /// Its pod or child runs are running.
    Running,
    /// Failed, waiting for its backoff before the next attempt.
    Retrying,
    /// Waiting for a human approval.
    WaitingApproval,
    /// Ended well.
    Succeeded,
    /// Ended badly after its last attempt.
    Failed,
    /// Not run: its `when` was false, or a step before it failed.
    Skipped,
    /// Stopped by a cancel.
    Cancelled,
}

impl StepPhase {
    /// Whether the step has ended.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }
}

/// What the operator observed of a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompositionRunStatus {
    /// The run's phase.
    #[serde(default)]
    pub phase: RunPhase,
    /// Ended steps out of all steps, like `3/7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// When the first step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Each step's state, in the composition's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepStatus>,
    /// The run's shared context: values every step can read as `context.<key>` (the
    /// workspace path, the failed run that started this one...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, String>,
    /// The external resources the run created and has not yet removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<LedgerEntry>,
    /// The removal of what the ledger still held when the run ended (per the
    /// composition's `cleanup` policy), and its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<CleanupStatus>,
    /// Where this run's ledger went when a rerun took it over (see the composition's
    /// `rerunWindow`): the rerun, which removes those resources from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over: Option<Handover>,
    /// The run started by `onFailure`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure_run: Option<String>,
    /// The run whose workspace this run works in, when not its own: a rerun works in the
    /// workspace of the run it reruns (and a rerun of a rerun in the first run's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_of: Option<String>,
    /// The Agent slot the run holds; its steps share that slot's cache volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<RunAgent>,
    /// The composition's spec as it was when the run started; the run follows this
    /// snapshot, so editing the composition does not change a run in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::any_json")]
    pub composition_spec: Option<serde_json::Value>,
    /// The specs of the Tasks the run uses, by name, as they were when it started: a Task
    /// edited, deleted or shadowed by a namespace Task of the same name mid-run does not
    /// change what the run's later steps execute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::any_json")]
    pub task_specs: Option<serde_json::Value>,
    /// Succeeded (Unknown while the run goes on, then True or False with the reason) and,
    /// for an invalid composition, Invalid with a message naming the problem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The Agent slot a run was assigned to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunAgent {
    /// The Agent.
    pub name: String,
    /// The slot's index in the Agent.
    pub slot: u32,
    /// Whether the slot last ran this run's composition, so its cache is warm.
    #[serde(default)]
    pub cache_hit: bool,
    /// When the run was assigned to the slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_time: Option<Time>,
}

/// The state of one step of a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// The step's name.
    pub name: String,
    /// The step's phase.
    #[serde(default)]
    pub phase: StepPhase,
    /// How many attempts have started (1 for the first).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// When the step (its first attempt) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the step ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<Time>,
    /// The pod of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The node the latest attempt ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// When the next attempt may start (a failed step waiting for its backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,
    /// The step's outputs (small values; at most 4 KiB in all).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// The child runs this step started (call and fork steps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub child_runs: Vec<String>,
    /// The child runs that did not succeed, when they failed the step: a rerun of this
    /// run starts only these again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_runs: Vec<String>,
    /// In a rerun: the child runs of its source this step keeps, because they succeeded
    /// there (they are among `childRuns`, and are not started again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reused_runs: Vec<String>,
    /// Who approved or rejected the gate, as the API server authenticated them. For a
    /// gate that needs several approvers, their names joined by ", ".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// Each decision on this approval gate, oldest first: who, when, the comment, and
    /// why it did not count, if it did not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalRecord>,
    /// Why the step is in its phase: an exit code, an error, a skip reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The exit code of the latest attempt's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

impl StepStatus {
    /// The child runs, those a rerun kept from its source marked `(reused)` and those
    /// that failed the step `(failed)`: `a (reused), b, c (failed)`.
    pub fn child_runs_marked(&self) -> String {
        let marked: Vec<String> = self
            .child_runs
            .iter()
            .map(|child| {
                if self.reused_runs.contains(child) {
                    format!("{child} (reused)")
                } else if self.failed_runs.contains(child) {
                    format!("{child} (failed)")
                } else {
                    child.clone()
                }
            })
            .collect();
        marked.join(", ")
    }
}

/// One decision on an approval gate, as the run's status shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRecord {
    /// The Approval object.
    pub name: String,
    /// Who decided, as the API server authenticated them.
    pub by: String,
    /// Approve or Reject.
    #[serde(default)]
    pub decision: crate::Decision,
    /// When the Approval was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// The approver's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Why the decision does not count (the run's starter, a user outside the gate's
    /// groups, a second decision of the same user); absent when it counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The cleanup of a run's leftover external resources.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanupStatus {
    /// Running, Succeeded, Failed or Skipped (the policy kept the resources).
    pub phase: StepPhase,
    /// The pod that deprovisions the leftovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// How many cleanup attempts have started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// What happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// While the cleanup is held for a rerun (phase Pending): until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until: Option<Time>,
    /// After a failed attempt: when the next one starts (the cloud API may be down for a
    /// while; each wait is twice the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,
}

/// A run's ledger as it was handed to a rerun.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Handover {
    /// The rerun that took it over.
    pub run: String,
    /// Its UID.
    pub uid: String,
    /// The resources it took over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<LedgerEntry>,
}

/// An external resource a run created: an entry of its ledger.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// The kind of resource, like `ec2-instance`.
    pub kind: String,
    /// Its id, like `i-0d1e2f3a4b5c6d7e8`.
    pub id: String,
    /// Its region, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The step that created it.
    pub step: String,
    /// The run that created it, when that is not the run whose ledger holds it (a rerun
    /// took it over): its `maestro.dev/run` tag names that run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}
