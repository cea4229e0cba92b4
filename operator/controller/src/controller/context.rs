//! What every reconcile shares: the settings, the client and caches (the Context), the
//! errors, and the backoff after a failure. Every controller module reads this; it reads
//! none of them.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::{
    Client, Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        controller::Action,
        events::Recorder,
        reflector::{ObjectRef, Store},
    },
};

use super::{admission, agent::AssignmentCounts, pods::PodSettings};
use crate::metrics::Metrics;
use maestro_api::{Agent, Approval, Composition, CompositionRun, Task};

pub use crate::k8s::FIELD_MANAGER;
/// The finalizer that makes cleanup run before a run goes away.
pub const RUN_FINALIZER: &str = "maestro.dev/cleanup";

/// How many times in a row the API server may refuse a pod (other than AlreadyExists,
/// throttling or a server error) before its step fails with the API's message.
pub(super) const REFUSALS_BEFORE_FAILING: u32 = 3;

/// How long a pod this replica created counts as there while the pod cache does not show
/// it. A watch event takes milliseconds; this bounds the wait when the pod was deleted
/// before the cache ever saw it.
pub(super) const UNSEEN_POD_GRACE: Duration = Duration::from_secs(30);

/// Operator settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pods: PodSettings,
    /// The namespace of the standard Task library, searched after the run's namespace.
    pub library_namespace: String,
    /// Finished top-level runs older than this are deleted (their pods go with them).
    pub finished_run_ttl: Duration,
    /// Watch only this namespace (Tasks are still read from every namespace, for the
    /// library); `None` watches the whole cluster.
    pub watch_namespace: Option<String>,
    /// Install the standard Task library (done by the leader, once it leads).
    pub library: Option<crate::library::LibraryInstall>,
    /// Whether Agents may keep their caches in hostPath volumes (off by default: a
    /// hostPath reaches the node's disk).
    pub allow_host_path_caches: bool,
    /// Publish the engine's routine step Events too (see `EventNote::routine`).
    pub step_events: bool,
}

/// Errors of a reconcile, one variant per operation, each naming the object it was
/// about; `metric_label` names each variant in logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating pod {name}: {source}")]
    CreatePod { name: String, source: kube::Error },
    #[error("creating claim {name}: {source}")]
    CreateClaim { name: String, source: kube::Error },
    #[error("creating run {name}: {source}")]
    CreateRun { name: String, source: kube::Error },
    #[error("reading {name}, which a create found there already: {source}")]
    ReadExisting { name: String, source: kube::Error },
    #[error("deleting pod {name}: {source}")]
    DeletePod { name: String, source: kube::Error },
    #[error("deleting run {name}: {source}")]
    DeleteRun { name: String, source: kube::Error },
    #[error("cancelling run {name}: {source}")]
    CancelRun { name: String, source: kube::Error },
    #[error("handing workspace claim {name} over to a rerun: {source}")]
    ShareClaim { name: String, source: kube::Error },
    #[error("writing the status of {kind} {name}: {source}")]
    PatchStatus {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("serialization: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("object has no namespace")]
    NoNamespace,
    #[error("the run is being deleted; its cleanup is still in progress")]
    CleanupInProgress,
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::CreatePod { .. } => "create_pod",
            Error::CreateClaim { .. } => "create_claim",
            Error::CreateRun { .. } => "create_run",
            Error::ReadExisting { .. } => "read_existing",
            Error::DeletePod { .. } => "delete_pod",
            Error::DeleteRun { .. } => "delete_run",
            Error::CancelRun { .. } => "cancel_run",
            Error::ShareClaim { .. } => "share_claim",
            Error::PatchStatus { .. } => "patch_status",
            Error::Finalizer(_) => "finalizer",
            Error::Serialize(_) => "serialize",
            Error::NoNamespace => "no_namespace",
            Error::CleanupInProgress => "cleanup_in_progress",
        }
    }
}

/// How long the last state of a deleted step pod is kept for its run's next pass.
const DELETED_POD_MEMORY: Duration = Duration::from_secs(300);

/// Step pods seen deleted after their step's container had ended, as their last state
/// showed them, for a few minutes: see `observe::ended_before_deletion`.
#[derive(Default)]
pub struct DeletedPods(Mutex<HashMap<String, (Instant, Arc<Pod>)>>);

impl DeletedPods {
    /// Keeps `pod`'s last state if its step container had ended.
    pub fn note(&self, pod: &Pod) {
        let ended = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .any(|c| {
                c.name == maestro_api::labels::STEP_CONTAINER
                    && c.state.as_ref().is_some_and(|s| s.terminated.is_some())
            });
        if !ended {
            return;
        }
        if let Ok(mut deleted) = self.0.lock() {
            deleted.insert(key(pod), (Instant::now(), Arc::new(pod.clone())));
        }
    }

    /// The kept pods of the run `run` in `ns`.
    pub fn of_run(&self, ns: &str, run: &str) -> Vec<Arc<Pod>> {
        let Ok(deleted) = self.0.lock() else {
            return Vec::new();
        };
        deleted
            .values()
            .filter(|(_, p)| {
                p.namespace().as_deref() == Some(ns)
                    && p.labels().get(maestro_api::labels::RUN).map(String::as_str) == Some(run)
            })
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Forgets pods kept longer than [`DELETED_POD_MEMORY`].
    pub fn forget_old(&self) {
        if let Ok(mut deleted) = self.0.lock() {
            deleted.retain(|_, (at, _)| at.elapsed() < DELETED_POD_MEMORY);
        }
    }
}

/// What every reconcile shares: the client, the caches, the event recorder.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub runs: Store<DeserializeGuard<CompositionRun>>,
    pub compositions: Store<DeserializeGuard<Composition>>,
    pub tasks: Store<Task>,
    pub pods: Store<Pod>,
    pub approvals: Store<Approval>,
    pub agents: Store<Agent>,
    /// The Agents' slot cache claims (Maestro's own, by label).
    pub claims: Store<PersistentVolumeClaim>,
    pub metrics: Metrics,
    /// A namespace's lock is held while a run there takes an Agent slot or starts step
    /// pods on an Agent, so that concurrent reconciles never share a slot or exceed a
    /// capacity.
    pub admissions: admission::AdmissionLocks,
    /// Consecutive failures per object, for exponential backoff in the error policy.
    pub(super) failures: Mutex<HashMap<String, u32>>,
    /// Whether this replica writes: it leads (or runs alone) and its caches are complete.
    /// Every controller runs on every replica, so that the shared watches keep flowing;
    /// a reconcile that finds this false returns without acting.
    pub(super) writing: AtomicBool,
    /// Per run UID: the names its pods or child runs need that objects it does not own
    /// hold (found when a create answered AlreadyExists); the engine fails those steps.
    pub(super) taken: Mutex<HashMap<String, Vec<maestro_engine::TakenName>>>,
    /// Per run UID: its pods whose creates the API server refused, and how often.
    pub(super) refused: Mutex<HashMap<String, Vec<maestro_engine::RefusedCreate>>>,
    /// Per run UID: step pods this replica created that the pod cache did not show yet,
    /// with when. The run's own status write wakes its next reconcile before the pod's
    /// watch event arrives; without this, that reconcile asks for the pod again (a 409
    /// per step, measured in the bench).
    pub(super) created: Mutex<HashMap<String, Vec<(Instant, maestro_engine::ObservedPod)>>>,
    /// Per run UID: step pods its status names (written before their creates) whose
    /// create has not gone through here yet. Only this process knows that such a pod was
    /// never made; any other replica takes a named pod it cannot see for one that is gone.
    pub(super) uncreated: Mutex<HashMap<String, Vec<String>>>,
    /// Per run (namespace/name): the object as this replica's last status write returned
    /// it, until the run cache shows that write. The write wakes the run's next reconcile
    /// before the cache has it, and a pass planned from the older status would start its
    /// steps again; reading the written object instead lets the reconcile end as soon as
    /// the write is answered, rather than wait for the watch (which held every step
    /// handoff behind the previous write's round trip through the watch).
    pub(super) written: Mutex<HashMap<String, Arc<CompositionRun>>>,
    /// Per Agent (namespace/name): the object as this replica's last status write returned
    /// it, until the Agent cache shows that write. Its cache counters and slots grow from
    /// the status before; a reconcile woken (by the next run's assignment) before the cache
    /// had the write counted from the older status and lost a count (the agents e2e test's
    /// third run: 1 miss where there were 2).
    pub(super) agents_written: Mutex<HashMap<String, Arc<Agent>>>,
    /// Per run (namespace/name): since when its status has differed from the cache only in
    /// the nodes of its step pods (see `maestro_engine::only_nodes_changed`).
    pub(super) nodes_unwritten: Mutex<HashMap<String, Instant>>,
    /// Step pods deleted after their step's container ended (filled by the pod watch).
    pub(super) deleted_pods: Arc<DeletedPods>,
    /// Which runs' slot assignments the Agents' cache hit and miss counters include.
    pub(super) agent_counts: AssignmentCounts,
}

impl Context {
    /// Whether this replica may write now (see `writing`).
    pub(super) fn writes(&self) -> bool {
        self.writing.load(Ordering::SeqCst)
    }

    pub(super) fn backoff(&self, key: String) -> Duration {
        let Ok(mut failures) = self.failures.lock() else {
            return Duration::from_secs(30);
        };
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_millis(500)
            .saturating_mul(2u32.saturating_pow((*n).min(10)))
            .min(Duration::from_secs(300))
    }

    /// Notes that `taken.name`, needed by the run with `run_uid`, is held by someone else
    /// (or that an object that name needs is).
    pub(super) fn name_taken(&self, run_uid: &str, taken: maestro_engine::TakenName) {
        if let Ok(mut names) = self.taken.lock() {
            let names = names.entry(run_uid.to_string()).or_default();
            if !names.iter().any(|t| t.name == taken.name) {
                names.push(taken);
            }
        }
    }

    /// The names held by others that the run with `run_uid` needs.
    pub(super) fn taken_names(&self, run_uid: &str) -> Vec<maestro_engine::TakenName> {
        self.taken
            .lock()
            .ok()
            .and_then(|taken| taken.get(run_uid).cloned())
            .unwrap_or_default()
    }

    /// Notes that this replica created `pod` for the run with `run_uid`.
    pub(super) fn pod_created(&self, run_uid: &str, pod: maestro_engine::ObservedPod) {
        if let Ok(mut created) = self.created.lock() {
            let pods = created.entry(run_uid.to_string()).or_default();
            pods.retain(|(_, p)| p.name != pod.name);
            pods.push((Instant::now(), pod));
        }
    }

    /// The pods created for the run with `run_uid` that `seen` (the cache) lacks, as
    /// Pending. A pod the cache has shown, or one created over [`UNSEEN_POD_GRACE`] ago, is
    /// forgotten: if the cache still lacks it then, it was deleted (the engine fails its
    /// attempt, as for any pod gone before it ended).
    pub(super) fn created_unseen(
        &self,
        run_uid: &str,
        seen: &[maestro_engine::ObservedPod],
    ) -> Vec<maestro_engine::ObservedPod> {
        let Ok(mut created) = self.created.lock() else {
            return Vec::new();
        };
        let Some(pods) = created.get_mut(run_uid) else {
            return Vec::new();
        };
        pods.retain(|(at, p)| {
            at.elapsed() < UNSEEN_POD_GRACE && !seen.iter().any(|s| s.name == p.name)
        });
        let unseen = pods.iter().map(|(_, p)| p.clone()).collect();
        if pods.is_empty() {
            created.remove(run_uid);
        }
        unseen
    }

    /// Notes that the run with `run_uid` names pod `name` in the status about to be
    /// written, ahead of the pod's create (`pod_created` or `create_done` ends it).
    pub(super) fn create_pending(&self, run_uid: &str, name: &str) {
        if let Ok(mut uncreated) = self.uncreated.lock() {
            let names = uncreated.entry(run_uid.to_string()).or_default();
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }

    /// Notes that the create of pod `name` went through (it was created, or it existed).
    pub(super) fn create_done(&self, run_uid: &str, name: &str) {
        if let Ok(mut uncreated) = self.uncreated.lock()
            && let Some(names) = uncreated.get_mut(run_uid)
        {
            names.retain(|n| n != name);
            if names.is_empty() {
                uncreated.remove(run_uid);
            }
        }
    }

    /// The pods the run with `run_uid` names whose creates are still to be done here.
    pub(super) fn uncreated_pods(&self, run_uid: &str) -> Vec<String> {
        self.uncreated
            .lock()
            .ok()
            .and_then(|uncreated| uncreated.get(run_uid).cloned())
            .unwrap_or_default()
    }

    /// Forgets a run's taken names and refused creates (it is going away).
    pub(super) fn forget_taken(&self, run_uid: &str) {
        if let Ok(mut created) = self.created.lock() {
            created.remove(run_uid);
        }
        if let Ok(mut uncreated) = self.uncreated.lock() {
            uncreated.remove(run_uid);
        }
        if let Ok(mut taken) = self.taken.lock() {
            taken.remove(run_uid);
        }
        if let Ok(mut refused) = self.refused.lock() {
            refused.remove(run_uid);
        }
    }

    /// Counts one more refused create of pod `name` for the run with `run_uid`, or, with
    /// `None`, forgets its refusals (the create went through).
    pub(super) fn create_refused(&self, run_uid: &str, name: &str, message: Option<String>) {
        let Ok(mut refused) = self.refused.lock() else {
            return;
        };
        let pods = refused.entry(run_uid.to_string()).or_default();
        match message {
            None => pods.retain(|r| r.name != name),
            Some(message) => match pods.iter_mut().find(|r| r.name == name) {
                Some(known) => {
                    known.tries = known.tries.saturating_add(1);
                    known.message = message;
                }
                None => pods.push(maestro_engine::RefusedCreate {
                    name: name.to_string(),
                    message,
                    tries: 1,
                }),
            },
        }
        if pods.is_empty() {
            refused.remove(run_uid);
        }
    }

    /// The pods of the run with `run_uid` refused at least [`REFUSALS_BEFORE_FAILING`]
    /// times in a row: a refusal that repeats is not a hiccup.
    pub(super) fn refused_creates(&self, run_uid: &str) -> Vec<maestro_engine::RefusedCreate> {
        self.refused
            .lock()
            .ok()
            .and_then(|refused| refused.get(run_uid).cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.tries >= REFUSALS_BEFORE_FAILING)
            .collect()
    }

    /// Notes the run as this replica's status write returned it.
    pub(super) fn status_written(&self, run: CompositionRun) {
        if let Ok(mut written) = self.written.lock() {
            written.insert(key(&run), Arc::new(run));
        }
    }

    /// The run as this replica last wrote it, when the cache (`cached`) does not show that
    /// write yet; `None` when the cache is as new (the note is then forgotten).
    pub(super) fn newer_than_cache(&self, cached: &CompositionRun) -> Option<Arc<CompositionRun>> {
        let mut written = self.written.lock().ok()?;
        let run_key = key(cached);
        let ours = written.get(&run_key)?;
        if cache_shows(cached.resource_version(), ours.as_ref()) {
            written.remove(&run_key);
            return None;
        }
        Some(ours.clone())
    }

    /// Notes the Agent as this replica's status write returned it.
    pub(super) fn agent_status_written(&self, agent: Agent) {
        if let Ok(mut written) = self.agents_written.lock() {
            written.insert(key(&agent), Arc::new(agent));
        }
    }

    /// The Agent as this replica last wrote it, when the cache (`cached`) does not show
    /// that write yet (and it is the same Agent, by UID); `None` when the cache is as new.
    pub(super) fn agent_newer_than_cache(&self, cached: &Agent) -> Option<Arc<Agent>> {
        let mut written = self.agents_written.lock().ok()?;
        let agent_key = key(cached);
        let ours = written.get(&agent_key)?;
        if ours.uid() != cached.uid() || cache_shows(cached.resource_version(), ours.as_ref()) {
            written.remove(&agent_key);
            return None;
        }
        Some(ours.clone())
    }

    /// How long the run `run_key` may still wait before writing a status that differs
    /// only in its pods' nodes (`node_only`); `None`: write now (the change is more than
    /// that, or it has waited long enough).
    pub(super) fn node_only_wait(&self, run_key: &str, node_only: bool) -> Option<Duration> {
        let mut unwritten = self.nodes_unwritten.lock().ok()?;
        if !node_only {
            unwritten.remove(run_key);
            return None;
        }
        let since = *unwritten
            .entry(run_key.to_string())
            .or_insert_with(Instant::now);
        let waited = since.elapsed();
        if waited >= maestro_engine::NODE_ONLY_WRITE_DELAY {
            unwritten.remove(run_key);
            return None;
        }
        Some(maestro_engine::NODE_ONLY_WRITE_DELAY - waited)
    }

    /// Forgets written runs that the cache shows by now or no longer holds (deleted), and
    /// node-only changes of runs that went away while they waited.
    pub(super) fn forget_stale_notes(&self) {
        if let Ok(mut unwritten) = self.nodes_unwritten.lock() {
            unwritten
                .retain(|_, since| since.elapsed() < maestro_engine::NODE_ONLY_WRITE_DELAY * 10);
        }
        let Ok(mut written) = self.written.lock() else {
            return;
        };
        written.retain(|_, ours| {
            let reference = ObjectRef::<DeserializeGuard<CompositionRun>>::new(&ours.name_any())
                .within(&ours.namespace().unwrap_or_default());
            let cached = self.runs.get(&reference);
            !cache_shows(cached.and_then(|c| c.resource_version()), ours.as_ref())
        });
    }

    pub(super) fn succeeded(&self, key: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(key);
        }
    }
}

/// Records `notes` as Events on the object `reference` names, from `action` (what the
/// controller was doing), in order, without making the reconcile wait: an Event tells, it
/// never decides, so a failure is only logged, and the next step's pod need not wait for
/// a run's Events to be written (the bench measured up to five per one-step run).
pub(super) fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    action: &str,
    notes: Vec<maestro_engine::EventNote>,
) {
    let notes: Vec<_> = notes
        .into_iter()
        .filter(|n| !n.routine || ctx.settings.step_events)
        .collect();
    if notes.is_empty() {
        return;
    }
    let recorder = ctx.recorder.clone();
    let reference = reference.clone();
    let action = action.to_string();
    tokio::spawn(async move {
        for note in notes {
            let event = kube::runtime::events::Event {
                type_: if note.warning {
                    kube::runtime::events::EventType::Warning
                } else {
                    kube::runtime::events::EventType::Normal
                },
                reason: note.reason.into(),
                note: Some(note.message),
                action: action.clone(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "event not recorded");
            }
        }
    });
}

/// Whether a cached resourceVersion `cached` includes the write that returned `written`.
/// resourceVersions are opaque to clients, but the API server's are etcd revisions, which
/// only grow; when either does not parse, only the very version counts.
pub(super) fn shows_write(cached: &str, written: &str) -> bool {
    match (cached.parse::<u64>(), written.parse::<u64>()) {
        (Ok(c), Ok(w)) => c >= w,
        _ => cached == written,
    }
}

/// Whether the cache's version of an object (`cached`; `None`: it has none, or no such
/// object) includes this replica's write that returned `ours`. Unknown counts as shown,
/// so the note of the write is forgotten rather than kept against a cache that cannot
/// show it.
fn cache_shows<K: Resource>(cached: Option<String>, ours: &K) -> bool {
    match (cached, ours.resource_version()) {
        (Some(c), Some(w)) => shows_write(&c, &w),
        _ => true,
    }
}

/// A key for per-object bookkeeping.
pub(super) fn key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// The requeue after a failed reconcile: exponential per object, capped at 5 minutes.
pub(super) fn backoff_action<K: Resource>(
    obj: &K,
    error: &Error,
    ctx: &Context,
    controller: &str,
) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[controller, error.metric_label()])
        .inc();
    if matches!(error, Error::CleanupInProgress) {
        // Not a failure: the finalizer waits for the cleanup pod.
        return Action::requeue(Duration::from_secs(2));
    }
    let wait = ctx.backoff(key(obj));
    tracing::warn!(object = %key(obj), error = %error, kind = error.metric_label(), retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

#[cfg(test)]
mod cache_tests {
    use super::shows_write;

    #[test]
    fn a_cache_shows_a_write_at_its_version_or_later_never_earlier() {
        assert!(shows_write("120", "120"));
        assert!(shows_write("121", "120"), "a later write includes ours");
        assert!(
            !shows_write("119", "120"),
            "an update before ours is not ours"
        );
        // Versions that are not numbers: only the very one.
        assert!(shows_write("a7", "a7"));
        assert!(!shows_write("a8", "a7"));
    }
}
