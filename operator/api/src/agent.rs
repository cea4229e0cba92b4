use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{ResourceRequirements, Toleration},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A pool of agents that run step pods: their pod settings, the capabilities they offer
/// to Tasks (like `maven`, `aws`), how many step pods may run at once, and slots that each
/// keep a warm cache volume. Once a namespace holds an Agent, every run in it waits for a
/// slot of an Agent whose capabilities cover its Tasks' `requires`; in a namespace without
/// Agents, runs start at once with a workspace of their own.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "maestro.dev",
    version = "v1alpha1",
    kind = "Agent",
    namespaced,
    status = "AgentStatus",
    shortname = "magent",
    category = "maestro",
    validation = Rule::new("size(self.metadata.name) <= 63").message("an Agent's name is at most 63 characters: it labels the pods of its slots"),
    printcolumn(name = "Capacity", type_ = "integer", json_path = ".spec.capacity"),
    printcolumn(name = "Slots", type_ = "integer", json_path = ".spec.slots"),
    printcolumn(name = "Busy", type_ = "integer", json_path = ".status.busySlots"),
    printcolumn(name = "Queued", type_ = "integer", json_path = ".status.queuedRuns"),
    printcolumn(name = "Hits", type_ = "integer", json_path = ".status.cacheHits"),
    printcolumn(name = "Misses", type_ = "integer", json_path = ".status.cacheMisses"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Capabilities this pool offers; a run is routed here only when they cover the
    /// `requires` of every Task the run uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// How many step pods of this pool may run at once, across all its slots.
    #[schemars(range(min = 1, max = 1000))]
    pub capacity: u32,
    /// How many runs this pool holds at once: each slot holds one run and keeps its own
    /// cache volume, mounted as the run's /workspace (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub slots: u32,
    /// The slots' cache volumes (default: a 1Gi PersistentVolumeClaim per slot from the
    /// cluster's default StorageClass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<AgentCache>,
    /// How long a run waits for the busy slot that last ran its composition (and so holds
    /// a warm cache) before it takes another free slot, like `30s` (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("affinityWait is a duration like 30s, 2m or 1m30s"))]
    pub affinity_wait: Option<String>,
    /// Overrides of the step pods' settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<AgentTemplate>,
}

fn one() -> u32 {
    1
}

/// Where each slot keeps its cache: exactly one of `persistentVolumeClaim` and `hostPath`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.persistentVolumeClaim) != has(self.hostPath)").message("a cache is exactly one of persistentVolumeClaim and hostPath"))]
pub struct AgentCache {
    /// A PersistentVolumeClaim per slot, `<agent>-cache-<slot>`, made by the operator and
    /// deleted with the Agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<CacheClaim>,
    /// A directory `<path>/<slot>` on the node, for development clusters. hostPath volumes
    /// break the restricted Pod Security Standard: use it only in namespaces labelled
    /// `pod-security.kubernetes.io/enforce: privileged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<CacheHostPath>,
}

/// The PersistentVolumeClaim of each slot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheClaim {
    /// The StorageClass (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// The claim's size, like `5Gi`.
    pub size: String,
}

/// A directory on the node for each slot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheHostPath {
    /// An absolute directory on the node; slot N uses `<path>/N`.
    #[schemars(length(min = 2))]
    pub path: String,
}

/// Pod settings of an agent pool's step pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentTemplate {
    /// The image of built-in tasks (default: the operator's agent image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The ServiceAccount the pods run as (a composition's own serviceAccountName wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Node labels the pods must land on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods, to land on tainted agent nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// CPU and memory of each step container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment variables for every step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// What the operator observed of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Each slot: the run it holds, and the composition it last ran (its cache is warm
    /// for that composition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<SlotStatus>,
    /// Slots holding a run.
    #[serde(default)]
    pub busy_slots: u32,
    /// Slots free for a run.
    #[serde(default)]
    pub idle_slots: u32,
    /// Runs waiting for a slot that this pool could give them.
    #[serde(default)]
    pub queued_runs: u32,
    /// Runs assigned to the slot that last ran their composition.
    #[serde(default)]
    pub cache_hits: u64,
    /// Runs assigned to a slot that last ran another composition, or nothing.
    #[serde(default)]
    pub cache_misses: u64,
    /// Ready: True once every slot's cache volume exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The state of one slot of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotStatus {
    /// The slot's number, from 0.
    pub index: u32,
    /// The run the slot holds, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The composition of the latest run the slot held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_composition: Option<String>,
    /// When the slot's latest run was assigned to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<Time>,
}
