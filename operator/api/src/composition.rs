use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CleanupPolicy;

/// A workflow: steps that run Tasks, call or fork other compositions, wait for a human or
/// for another composition. Steps run in the order they are listed unless they declare
/// `dependsOn`, which turns the composition into a graph (fan out, then join). Start a run
/// with `kubectl maestro run NAME -p key=value` or by creating a CompositionRun.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "maestro.dev",
    version = "v1alpha1",
    kind = "Composition",
    namespaced,
    status = "CompositionStatus",
    shortname = "comp",
    category = "maestro",
    printcolumn(name = "Steps", type_ = "integer", json_path = ".status.stepCount"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Last Schedule",
        type_ = "date",
        json_path = ".status.lastScheduleTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.steps.all(s, self.steps.exists_one(t, t.name == s.name))").message("step names must be unique within spec.steps").field_path(".steps"),
    validation = Rule::new("self.steps.all(s, !has(s.dependsOn) || s.dependsOn.all(d, self.steps.exists(t, t.name == d)))").message("every name in a step's dependsOn must be a step of this composition").reason(kube::core::Reason::FieldValueInvalid).field_path(".steps"),
    validation = Rule::new("!has(self.params) || self.params.all(p, self.params.exists_one(q, q.name == p.name))").message("param names must be unique within spec.params").field_path(".params"),
)]
#[serde(rename_all = "camelCase")]
pub struct CompositionSpec {
    /// What the composition is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,

    /// Parameters a run may set (`kubectl maestro run NAME -p key=value`); steps read
    /// them as `params.<name>`. A parameter without a default is required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub params: Vec<ParamSpec>,

    /// The highest `priority` a run of this composition may ask for (default 0). A run
    /// asking for more is Invalid. Runners set a run's priority, but only the
    /// composition's authors can let them raise it above the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_priority: Option<i32>,

    /// The steps. Each runs exactly one of: a `task`, an `approval` gate, a
    /// `composition` (call one and wait for it), `compositions` (fork several, then join)
    /// or `waitFor` (wait for a run of another composition).
    #[schemars(length(min = 1, max = 64))]
    pub steps: Vec<Step>,

    /// A composition started when a run of this one fails, with the failed run's context
    /// as parameters (`failedRun`, `failedStep`, `message`) plus those given here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<CompositionCall>,

    /// When the external resources a run created (its ledger: EC2 instances...) are
    /// removed automatically at the end of the run. Default Always.
    #[serde(default)]
    pub cleanup: CleanupPolicy,

    /// How long a failed run holds its ledger's cleanup, like `30m`, so that a rerun
    /// (`kubectl maestro rerun`) can take over what it made (an EC2 instance, the
    /// workspace) instead of making it again. The first rerun started in that time takes
    /// it over; without one the cleanup policy applies when the time is up. Default: no
    /// hold, so a rerun makes again what the run's cleanup removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub rerun_window: Option<String>,

    /// The longest a run may take, like `2h`; then its running steps are stopped and it
    /// fails with reason Timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub timeout: Option<String>,

    /// The ServiceAccount step pods run as (default: the namespace's `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Node labels the step pods must land on (added to their Agent's; this wins where
    /// both set a label), as a Workflow's `nodeSelector` in Argo.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the step pods (added to their Agent's), to land on tainted nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,

    /// Initial entries of the run's shared context, read by every step as
    /// `context.<key>` and by Task defaults (the EC2 tasks read `awsRegion` and
    /// `awsEndpoint` from it). Values may hold `{{ params.x }}` templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, String>,

    /// No longer accepted: it handed every step every Secret. Name Secrets where they are
    /// needed instead: a step's `secretEnv`, or the `secretEnv` of the Task that needs
    /// them. Kept in the schema only so that a composition using it is refused with that
    /// message instead of having the field silently dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("size(self) == 0").message("spec.secretEnv would hand every step every Secret: name Secrets per step (spec.steps[].secretEnv) or in the Task that needs them (the Task's spec.secretEnv)"))]
    pub secret_env: Vec<String>,

    /// What starts runs of this composition by itself: git pushes delivered to the
    /// operator's webhook endpoint, and a cron schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<Triggers>,
}

/// What starts runs of a composition without a user.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Triggers {
    /// Git push webhooks (GitHub, GitLab, Gitea). A push that matches any of these
    /// starts one run with the params `repository`, `ref`, `commitSha`, `author` and
    /// `message` (each passed only when the composition declares it in `spec.params`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub git: Vec<GitTrigger>,

    /// A schedule, like a CronJob's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<CronTrigger>,
}

/// Runs started by pushes to a git repository, delivered to the operator's webhook
/// endpoint (`/hooks/github`, `/hooks/gitlab` or `/hooks/gitea`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitTrigger {
    /// The repository, as any of its URLs: `https://github.com/acme/app`, its clone URL
    /// (`.git`) or its ssh form (`git@github.com:acme/app.git`). Compared without the
    /// scheme, user, `.git` suffix and case.
    #[schemars(length(min = 1, max = 2048))]
    pub repository: String,

    /// Branch name patterns a push must match, like `main` or `release/*` (`*` matches
    /// within one `/` segment, `**` across segments). Without branches and tags, every
    /// branch matches and no tag does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub branches: Vec<String>,

    /// Tag name patterns a push must match, like `v*`. Without it, tag pushes start
    /// nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tags: Vec<String>,

    /// Path patterns, like `src/**` or `*.md`: a push matches when any file that any of
    /// its commits added, modified or removed matches one. Without it, every push does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub paths: Vec<String>,

    /// The key of a Secret in the composition's namespace holding the webhook secret:
    /// GitHub's and Gitea's HMAC-SHA256 signature key, GitLab's secret token. A delivery
    /// that does not verify with it is refused (401).
    pub secret_ref: SecretKeyRef,

    /// More parameters of the started runs (they must be declared in `spec.params`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

/// A key of a Secret in the composition's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret (default `secret`).
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_secret_key() -> String {
    "secret".into()
}

/// Runs started on a schedule, like a CronJob's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CronTrigger {
    /// When to start a run: five fields (minute hour day-of-month month day-of-week),
    /// like `*/15 * * * *` or `0 3 * * MON-FRI`, or `@hourly`, `@daily`...
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,

    /// The IANA time zone the schedule is read in, like `Europe/Paris` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,

    /// What to do when a scheduled run is due while a run this schedule started is still
    /// going: Allow (start it anyway, the default), Forbid (skip this time) or Replace
    /// (cancel the running one and start the new one).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,

    /// How late a missed schedule time (the operator was down, or the leader changed) may
    /// still start a run, in seconds. Without it any missed time does, once; in any case
    /// only the most recent missed time starts a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,

    /// Parameters of the started runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

/// What a schedule does while a run it started is still going.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Start the new run anyway.
    #[default]
    Allow,
    /// Skip this schedule time.
    Forbid,
    /// Cancel the running run(s), then start the new one.
    Replace,
}

/// A parameter of a composition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParamSpec {
    /// The parameter's name, read by steps as `params.<name>`.
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z][a-zA-Z0-9_]*$')").message("param names start with a letter and hold letters, digits and _"))]
    #[schemars(length(max = 63))]
    pub name: String,
    /// The value used when a run does not set it; without one the parameter is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// What the parameter means, shown to users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The only values the parameter may take. A run with another value is Invalid, and
    /// the message names the parameter and the allowed values.
    #[serde(default, rename = "enum", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub allowed: Vec<String>,
    /// A regular expression the whole value must match (Rust `regex` syntax, linear
    /// time; anchored at both ends), like `[a-z0-9-]{1,40}`. A run whose value does not
    /// match is Invalid, naming the parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub pattern: Option<String>,
}

/// One step of a composition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.task), has(self.approval), has(self.composition), has(self.compositions), has(self.waitFor)].filter(x, x).size() == 1").message("a step runs exactly one of task, approval, composition, compositions, waitFor"))]
pub struct Step {
    /// The step's name: a DNS label of at most 40 characters, unique in the composition.
    /// It names the step's pods (`<run>-<step>-<attempt>`) and its outputs.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("step names are DNS labels: lower-case letters, digits and '-'"))]
    #[schemars(length(min = 1, max = 40))]
    pub name: String,

    /// The Task to run, by name: one in the run's namespace, or one of the standard
    /// library (shell, git, http, ec2-provision, ec2-deprovision, notify, container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub task: Option<String>,

    /// The task's inputs. String values may embed CEL expressions in `{{ }}`, evaluated
    /// over `params`, `steps.<name>.outputs`, `context` and `run` just before the step's
    /// pod is created: `"http://{{ steps.provision.outputs.publicIp }}:8080"`. A value that
    /// is a single `{{ }}` expression keeps the expression's type (a list, a number).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::json_map")]
    pub with: BTreeMap<String, serde_json::Value>,

    /// Steps that must end before this one starts. Without it, a step follows the step
    /// listed before it; `dependsOn: []` starts it at once (fan out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub depends_on: Option<Vec<String>>,

    /// A CEL condition over `params`, `steps.<name>.outputs`, `context` and `run`; when
    /// false the step is Skipped and its dependents still run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub when: Option<String>,

    /// How often a failed step is tried again, and how long to wait in between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,

    /// The longest one attempt may take, like `10m`; then its pod is stopped and the
    /// attempt fails with reason Timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub timeout: Option<String>,

    /// A manual approval gate: the run waits in phase WaitingApproval until a user with
    /// the approver role runs `kubectl maestro approve RUN STEP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalGate>,

    /// Call another composition: start a child run (owned by this run) and wait for it.
    /// The step's `with` values become the child's parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub composition: Option<String>,

    /// Fork several compositions as child runs, then join: the step ends when all have
    /// ended, and fails when any failed unless `continueOnFailure` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub compositions: Option<Vec<String>>,

    /// Wait for a run of another composition in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<WaitFor>,

    /// Secrets, by name, whose keys become environment variables of this step (added to
    /// those its Task declares). Values never reach the run's status or logs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub secret_env: Vec<String>,

    /// Let the run go on when this step fails (its dependents still run).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_failure: bool,
}

/// What a step runs: the one of `task`, `approval`, `composition`, `compositions` and
/// `waitFor` that is set, borrowed from the step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepKind<'a> {
    /// Run a Task, by name.
    Task(&'a str),
    /// Wait for a manual approval.
    Approval(&'a ApprovalGate),
    /// Call one composition as a child run.
    Call(&'a str),
    /// Fork several compositions as child runs and join them.
    Fork(&'a [String]),
    /// Wait for a run of another composition.
    WaitFor(&'a WaitFor),
}

impl Step {
    /// The kind of the step, or `None` when not exactly one of its five kind fields is
    /// set. The CRD rejects such a step; graph validation reports it for steps that
    /// reach the engine some other way, so callers need not repeat the message.
    pub fn kind(&self) -> Option<StepKind<'_>> {
        let kinds = [
            self.task.as_deref().map(StepKind::Task),
            self.approval.as_ref().map(StepKind::Approval),
            self.composition.as_deref().map(StepKind::Call),
            self.compositions.as_deref().map(StepKind::Fork),
            self.wait_for.as_ref().map(StepKind::WaitFor),
        ];
        let mut set = kinds.into_iter().flatten();
        match (set.next(), set.next()) {
            (Some(kind), None) => Some(kind),
            _ => None,
        }
    }
}

/// Retries of a failed step, with exponential backoff.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// How many times to try again after the first failure (0 to 10).
    #[schemars(range(min = 0, max = 10))]
    pub limit: u32,
    /// The wait before the first retry, like `10s`; it doubles after each failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub backoff: Option<String>,
    /// The longest wait between two tries, like `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub max_backoff: Option<String>,
}

/// A manual approval gate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalGate {
    /// How long to wait for an approval, like `24h`; then the step fails with reason
    /// ApprovalTimeout. Without it the run waits until approved, rejected or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
    /// What the approver is asked, shown by `kubectl maestro describe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How many different users must approve (1 to 10, default 1). One rejection fails
    /// the gate whatever the count; a user who approves twice counts once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub approvers: Option<u32>,
    /// Whether the user who started the run (its `spec.startedBy`) may decide this gate.
    /// Unset: allowed when one approver is needed, refused when several are (a
    /// two-person rule where one of the two is the starter would be a one-person rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_self_approval: Option<bool>,
    /// Only members of at least one of these groups may decide the gate, as the API
    /// server authenticated them (recorded in the Approval's `approverGroups` and checked
    /// at admission). Empty: anyone whom RBAC lets create Approvals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(inner(length(min = 1, max = 253)))]
    pub groups: Vec<String>,
}

impl ApprovalGate {
    /// How many different users must approve.
    pub fn required_approvals(&self) -> u32 {
        self.approvers.unwrap_or(1).max(1)
    }

    /// Whether the run's starter may decide the gate (see `allowSelfApproval`).
    pub fn self_approval_allowed(&self) -> bool {
        self.allow_self_approval
            .unwrap_or(self.required_approvals() == 1)
    }

    /// Why a decision by `user`, a member of `groups` (as recorded at admission), does
    /// not count on this gate of a run started by `started_by`; `None` when it counts.
    /// The operator and `kubectl maestro approve` ask the same question, so the CLI can
    /// refuse early what the operator would ignore.
    pub fn ineligible(
        &self,
        user: &str,
        groups: &[String],
        started_by: Option<&str>,
    ) -> Option<String> {
        if !self.self_approval_allowed() && started_by == Some(user) {
            return Some(format!("{user} started the run and may not approve it"));
        }
        if !self.groups.is_empty() && !groups.iter().any(|g| self.groups.contains(g)) {
            return Some(format!(
                "{user} is in none of the groups {}",
                self.groups.join(", ")
            ));
        }
        None
    }
}

/// A call of another composition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompositionCall {
    /// The composition to start, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub composition: String,
    /// Parameters of the started run; values may hold `{{ }}` CEL templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

/// Waiting for a run of another composition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitFor {
    /// The composition whose run to wait for, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub composition: String,
    /// Running (default): wait for the run that is in progress, or go on at once when
    /// none is. Next: wait for the next run of it to finish, even if none has started.
    #[serde(default)]
    pub mode: WaitMode,
}

/// Which run of another composition a `waitFor` step waits for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WaitMode {
    /// The run in progress now, if any.
    #[default]
    Running,
    /// The next run to finish after the step started.
    Next,
}

/// What the operator observed of a composition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompositionStatus {
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many steps the composition has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_count: Option<i64>,
    /// Ready: the composition is valid and runs can start; False with reason Invalid and a
    /// message naming the problem otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last schedule time of `triggers.cron` that started a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The last schedule time of `triggers.cron` that was skipped because a run was still
    /// going (concurrencyPolicy Forbid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skipped_time: Option<Time>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(json: serde_json::Value) -> Step {
        serde_json::from_value(json).expect("a valid step")
    }

    #[test]
    fn kind_is_the_one_field_set() {
        let task = step(serde_json::json!({"name": "a", "task": "shell"}));
        assert_eq!(task.kind(), Some(StepKind::Task("shell")));
        let fork = step(serde_json::json!({"name": "b", "compositions": ["x", "y"]}));
        let targets = ["x".to_string(), "y".to_string()];
        assert_eq!(fork.kind(), Some(StepKind::Fork(&targets)));
        let call = step(serde_json::json!({"name": "c", "composition": "x"}));
        assert_eq!(call.kind(), Some(StepKind::Call("x")));
    }

    #[test]
    fn kind_is_none_for_no_or_two_fields() {
        assert_eq!(step(serde_json::json!({"name": "a"})).kind(), None);
        let two = step(serde_json::json!({"name": "b", "task": "shell", "composition": "x"}));
        assert_eq!(two.kind(), None);
    }
}
