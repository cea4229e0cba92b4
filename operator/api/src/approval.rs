use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A decision on a run's approval gate. Create one with `kubectl maestro approve RUN
/// STEP` (or `reject`). `approvedBy` must be the name the API server authenticated for the
/// request that creates it: a ValidatingAdmissionPolicy installed with Maestro refuses any
/// other, so the recorded approver is never a name somebody typed. Who may approve is
/// decided by RBAC: the right to create Approvals (the maestro-approver role).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "maestro.dev",
    version = "v1alpha1",
    kind = "Approval",
    namespaced,
    shortname = "mapproval",
    category = "maestro",
    printcolumn(name = "Run", type_ = "string", json_path = ".spec.run"),
    printcolumn(name = "Step", type_ = "string", json_path = ".spec.step"),
    printcolumn(name = "Decision", type_ = "string", json_path = ".spec.decision"),
    printcolumn(name = "By", type_ = "string", json_path = ".spec.approvedBy"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("an approval cannot be changed; create a new one"))]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSpec {
    /// The CompositionRun whose gate this decides, in the same namespace.
    #[schemars(length(min = 1, max = 63))]
    pub run: String,
    /// The approval step of that run.
    #[schemars(length(min = 1, max = 40))]
    pub step: String,
    /// Approve lets the run go on; Reject fails the step.
    #[serde(default)]
    pub decision: Decision,
    /// The user who decides, exactly as the API server authenticated them
    /// (`kubectl auth whoami`); checked at admission.
    #[schemars(length(min = 1, max = 253))]
    pub approved_by: String,
    /// The approver's groups that the gate names (`approval.groups`), exactly as the API
    /// server authenticated them; checked at admission: each must be one of the
    /// request's groups. `kubectl maestro approve` fills it in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(inner(length(min = 1, max = 253)))]
    pub approver_groups: Vec<String>,
    /// A note from the approver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub comment: Option<String>,
}

/// An approver's decision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Decision {
    /// Let the run go on.
    #[default]
    Approve,
    /// Fail the approval step.
    Reject,
}
