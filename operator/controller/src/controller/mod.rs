//! The controllers: kube-runtime wiring around the pure engine. Data flows one way:
//! watch (reflector stores) -> plan (engine) -> act (pods, runs) -> status (server-side
//! apply with one field manager) -> events.

mod admission;
mod agent;
mod agents;
mod composition;
mod context;
mod cron;
pub mod leader;
pub mod observe;
pub mod pods;
mod run;
#[cfg(test)]
mod tests;
mod world;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tokio::sync::watch;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::Metrics;
use maestro_api::labels;
use maestro_api::{Agent, Approval, Composition, CompositionRun, RunPhase, Task};

pub use context::{Context, Error, FIELD_MANAGER, RUN_FINALIZER, Settings};
pub use pods::PodSettings;

/// An Api over the watched namespace, or over all namespaces.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// How long one watch request lasts before it is made again from the last version seen
/// (kube's default is 290 s). After etcd restarted, the chaos suite's runs took 407 s to
/// end: a watch the API server keeps open can go silent until it times out, and every
/// run waited on its pods' changes meanwhile. A shorter watch bounds that wait; making
/// one again from a known version costs a request, not a list.
const WATCH_TIMEOUT_SECONDS: u32 = 60;

/// How many changes a shared watch holds for its slowest controller before its reflector
/// waits. Every controller runs from start-up, on followers too, so each one drains its
/// subscription and none can stall the caches.
const SHARED_WATCH_BUFFER: usize = 1024;

/// One controller's subscription to a shared watch: every object the watch saw change,
/// deleted ones included, after the store has it.
///
/// Not kube's `ReflectHandle`: it looks each change up in the store, and for an object
/// deleted meanwhile returns Pending without asking to be woken again, so a single
/// deletion (a pod, a run) silently ended that controller's triggers from the kind for
/// the life of the process, and step handoffs fell back to the 30 s resync. The chaos
/// suite's deleted-pods scenario found it.
type Subscription<K> = async_broadcast::Receiver<Arc<K>>;

/// One watch of a kind, shared: the reflector store every lookup reads, and one
/// subscription per controller that reacts to the kind's changes.
struct SharedWatch<K: Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store: reflector::Store<K>,
    subscriptions: Vec<Subscription<K>>,
    reflector: futures::stream::BoxStream<'static, ()>,
}

/// The object a watch event is about, if it is about one.
fn changed<K>(event: watcher::Event<K>) -> Option<K> {
    match event {
        watcher::Event::Apply(object)
        | watcher::Event::Delete(object)
        | watcher::Event::InitApply(object) => Some(object),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

/// Starts (lazily: nothing is listed until the reflector is polled) one watch of `api`
/// with `subscriptions` subscribers. Managed fields are dropped before the store, as no
/// reconcile reads them and they are often half of an object's size.
fn shared_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    subscriptions: usize,
) -> anyhow::Result<SharedWatch<K>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + std::hash::Hash + Eq + Clone + Send + Sync,
{
    shared_watch_noting_deletes(api, config, subscriptions, |_: &K| {})
}

/// [`shared_watch`], calling `deleted` with the last state of each object the watch sees
/// deleted (the store forgets it).
fn shared_watch_noting_deletes<K>(
    api: Api<K>,
    config: watcher::Config,
    subscriptions: usize,
    deleted: impl Fn(&K) + Send + Sync + 'static,
) -> anyhow::Result<SharedWatch<K>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + std::hash::Hash + Eq + Clone + Send + Sync,
{
    let deleted = Arc::new(deleted);
    let (store, writer) = reflector::store();
    let (mut sender, receiver) = async_broadcast::broadcast(SHARED_WATCH_BUFFER);
    // Full: the watch waits for its slowest controller rather than drop a change.
    sender.set_overflow(false);
    sender.set_await_active(false);
    let subscriptions = (0..subscriptions)
        .map(|_| receiver.clone())
        .collect::<Vec<_>>();
    drop(receiver);
    let reflector = reflector::reflector(
        writer,
        watcher(api, config)
            .default_backoff()
            .modify(|o| o.managed_fields_mut().clear()),
    )
    .filter_map(move |event| {
        let deleted = deleted.clone();
        async move {
            let event = event.ok()?;
            if let watcher::Event::Delete(object) = &event {
                deleted(object);
            }
            changed(event)
        }
    })
    .then(move |object| {
        let sender = sender.clone();
        // Closed: every controller has stopped (the process is shutting down).
        async move {
            let _ = sender.broadcast_direct(Arc::new(object)).await;
        }
    })
    .boxed();
    Ok(SharedWatch {
        store,
        subscriptions,
        reflector,
    })
}

impl<K: Resource + Clone + 'static> SharedWatch<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    /// The next subscription; `shared_watch` was asked for as many as are taken.
    fn take(&mut self) -> anyhow::Result<Subscription<K>> {
        self.subscriptions
            .pop()
            .ok_or_else(|| anyhow::anyhow!("a shared watch was given too few subscriptions"))
    }
}

/// Resolves once `store` has had its first complete list. The store's readiness wakes only
/// the last of several waiters (it is a oneshot channel polled by whoever polled last), and
/// the controllers wait on the same stores: so this waits in short rounds, each of which
/// registers afresh.
pub(crate) async fn filled<K>(store: &reflector::Store<K>) -> anyhow::Result<()>
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await {
            Ok(filled) => return filled.map_err(|e| anyhow::anyhow!("{e}")),
            Err(_still_waiting) => continue,
        }
    }
}

/// Runs every controller until a shutdown signal. With `leader` set, this replica keeps
/// its caches warm and its controllers running, but writes only while it holds that
/// Lease (a follower's reconcile returns at once); it returns an error (and the process
/// should exit) as soon as it loses the Lease. The compositions cache is handed to
/// `webhook`, if given, so the webhook endpoint reads compositions without API calls.
pub async fn run(
    config: kube::Config,
    client: Client,
    settings: Settings,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    leader: Option<leader::LeaseSettings>,
    webhook: Option<tokio::sync::oneshot::Sender<crate::webhook::CompositionCache>>,
) -> anyhow::Result<()> {
    // One listener for the whole life of the process: a follower must react to SIGTERM
    // too, and a signal must not fall between its listener and the controllers'.
    let shutdown = shutdown_signal();
    let ns = settings.watch_namespace.clone();
    let ns = ns.as_deref();
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);

    // One watch per kind, each shared by the controllers that react to it. Only Maestro's
    // own pods and claims are watched, never every pod or claim in the cluster.
    let all = || watcher::Config::default().timeout(WATCH_TIMEOUT_SECONDS);
    let managed = || all().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    // Runs: the run controller's own, its parents' (child -> parent) and the Agents'.
    let mut runs = shared_watch(
        scoped::<DeserializeGuard<CompositionRun>>(&client, ns),
        all(),
        3,
    )?;
    let mut compositions = shared_watch(
        scoped::<DeserializeGuard<Composition>>(&client, ns),
        all(),
        1,
    )?;
    if let Some(webhook) = webhook {
        // The endpoint is gone only if it failed, which ends the process anyway.
        let _ = webhook.send(compositions.store.clone());
    }
    // Tasks come from every namespace: the library's are found in its own.
    let mut tasks = shared_watch(Api::<Task>::all(client.clone()), all(), 1)?;
    let deleted_pods = Arc::new(context::DeletedPods::default());
    let mut pods = shared_watch_noting_deletes(scoped::<Pod>(&client, ns), managed(), 1, {
        let deleted_pods = deleted_pods.clone();
        move |pod: &Pod| deleted_pods.note(pod)
    })?;
    let mut approvals = shared_watch(scoped::<Approval>(&client, ns), all(), 1)?;
    let mut agents = shared_watch(scoped::<Agent>(&client, ns), all(), 1)?;
    let mut claims = shared_watch(scoped::<PersistentVolumeClaim>(&client, ns), managed(), 1)?;

    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        recorder,
        runs: runs.store.clone(),
        compositions: compositions.store.clone(),
        tasks: tasks.store.clone(),
        pods: pods.store.clone(),
        approvals: approvals.store.clone(),
        agents: agents.store.clone(),
        claims: claims.store.clone(),
        metrics,
        admissions: admission::AdmissionLocks::default(),
        failures: Mutex::new(HashMap::new()),
        taken: Mutex::new(HashMap::new()),
        refused: Mutex::new(HashMap::new()),
        created: Mutex::new(HashMap::new()),
        uncreated: Mutex::new(HashMap::new()),
        written: Mutex::new(HashMap::new()),
        agents_written: Mutex::new(HashMap::new()),
        nodes_unwritten: Mutex::new(HashMap::new()),
        deleted_pods: deleted_pods.clone(),
        writing: AtomicBool::new(false),
        agent_counts: agent::AssignmentCounts::default(),
    });

    // Each controller reconciles everything it knows once this replica starts writing:
    // what it skipped as a follower, or before its caches were complete.
    let mut start_writing = Vec::new();
    let mut on_writing = || {
        let (tx, rx) = futures::channel::mpsc::unbounded::<()>();
        start_writing.push(tx);
        rx
    };

    // A run is reconciled when its pods, its child runs, its reruns or its approvals change.
    let agents_store = ctx.agents.clone();
    let run_controller = Controller::for_shared_stream(runs.take()?, ctx.runs.clone())
        .owns_shared_stream(pods.take()?)
        .watches_shared_stream(
            runs.take()?,
            |changed: Arc<DeserializeGuard<CompositionRun>>| {
                let ns = changed.namespace().unwrap_or_default();
                // A child wakes its parent; a rerun wakes the run it reruns, which hands it
                // its ledger and workspace (the rerun looks at it again by itself).
                let parent = changed.labels().get(labels::PARENT_RUN).cloned();
                let source = changed
                    .0
                    .as_ref()
                    .ok()
                    .and_then(|r| r.spec.rerun_of.as_ref())
                    .map(|of| of.run.clone());
                parent
                    .into_iter()
                    .chain(source)
                    .map(|name| ObjectRef::new(&name).within(&ns))
                    .collect::<Vec<_>>()
            },
        )
        .watches_shared_stream(approvals.take()?, |a: Arc<Approval>| {
            a.namespace()
                .map(|ns| ObjectRef::new(&a.spec.run).within(&ns))
        })
        .reconcile_all_on(on_writing())
        .graceful_shutdown_on(signalled(shutdown.clone()))
        .run(run::reconcile, run::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "run reconcile");
            }
        });
    // A composition is validated again when a Task it uses changes.
    let compositions_store = ctx.compositions.clone();
    let composition_controller =
        Controller::for_shared_stream(compositions.take()?, ctx.compositions.clone())
            .watches_shared_stream(tasks.take()?, move |task: Arc<Task>| {
                let name = task.name_any();
                compositions_store
                    .state()
                    .into_iter()
                    .filter(|c| {
                        c.0.as_ref().is_ok_and(|c| {
                            c.spec
                                .steps
                                .iter()
                                .any(|s| s.task.as_deref() == Some(name.as_str()))
                        })
                    })
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect::<Vec<_>>()
            })
            .reconcile_all_on(on_writing())
            .graceful_shutdown_on(signalled(shutdown.clone()))
            .run(
                composition::reconcile,
                composition::error_policy,
                ctx.clone(),
            )
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "composition reconcile");
                }
            });
    // An Agent's status follows the top-level runs of its namespace (those routed to it,
    // and those queued for any Agent) and its slots' claims.
    let agent_controller = Controller::for_shared_stream(agents.take()?, ctx.agents.clone())
        .owns_shared_stream(claims.take()?)
        .watches_shared_stream(
            runs.take()?,
            move |run: Arc<DeserializeGuard<CompositionRun>>| {
                agent::agents_to_update(&agents_store, &run)
            },
        )
        .reconcile_all_on(on_writing())
        .graceful_shutdown_on(signalled(shutdown.clone()))
        .run(agent::reconcile, agent::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "agent reconcile");
            }
        });
    for watch in [
        runs.reflector,
        compositions.reflector,
        tasks.reflector,
        pods.reflector,
        approvals.reflector,
        agents.reflector,
        claims.reflector,
    ] {
        tokio::spawn(watch.for_each(|()| async {}));
    }
    // The controllers run from now on, so their subscriptions never fill up; until this
    // replica writes, their reconciles return without acting.
    let mut controllers = tokio::spawn(async {
        tokio::join!(run_controller, composition_controller, agent_controller);
    });

    // A reconcile against a half-filled cache would see a Task or a pod as missing: a
    // restarted operator must not fail a run in flight for that. Wait for every cache.
    for (name, ready) in [
        ("runs", filled(&ctx.runs).boxed()),
        ("tasks", filled(&ctx.tasks).boxed()),
        ("pods", filled(&ctx.pods).boxed()),
        ("approvals", filled(&ctx.approvals).boxed()),
        ("compositions", filled(&ctx.compositions).boxed()),
        ("agents", filled(&ctx.agents).boxed()),
        ("claims", filled(&ctx.claims).boxed()),
    ] {
        ready
            .await
            .map_err(|e| anyhow::anyhow!("the {name} cache never filled: {e}"))?;
    }
    // Ready means the caches are filled, on the leader and on followers alike: a follower
    // is a healthy standby that can take over at once, no traffic is routed by the
    // operator's readiness, and a rolling update would stall if a new (follower) pod
    // could never become ready.
    ready.store(true, Ordering::Relaxed);
    let mut elector = None;
    if let Some(lease) = leader {
        tracing::info!("caches ready; waiting for leadership before writing");
        let mut thread = leader::LeaseThread::spawn(config, lease, ctx.metrics.leader.clone())
            .context("starting the lease thread")?;
        tokio::select! {
            acquired = thread.acquired() => {
                acquired.map_err(|reason| {
                    anyhow::anyhow!("could not take part in leader election: {reason}")
                })?;
            }
            () = signalled(shutdown.clone()) => {
                tracing::info!("shutdown signal while following; nothing to release");
                thread.release().await;
                let _ = controllers.await;
                return Ok(());
            }
        }
        elector = Some(thread);
    } else {
        // Without election this process is the only writer: it leads.
        ctx.metrics.leader.set(1);
    }
    tracing::info!("reconciling");
    // Assignments made before this replica writes were counted by an earlier leader.
    ctx.agent_counts.start(&ctx);
    ctx.writing.store(true, Ordering::SeqCst);
    for controller in start_writing {
        let _ = controller.unbounded_send(());
    }
    if let Some(install) = ctx.settings.library.clone() {
        tokio::spawn(crate::library::keep_installed(client.clone(), install));
    }
    // Only the leader reports the run gauges, so summing them over replicas still counts
    // each run once.
    tokio::spawn(gauges(ctx.clone()));
    let Some(mut elector) = elector else {
        let _ = controllers.await;
        return Ok(());
    };
    tokio::select! {
        _ = &mut controllers => {
            // Graceful shutdown: the reconciles in flight have ended, so hand the
            // Lease over now rather than make the successor wait for it to expire.
            elector.release().await;
            Ok(())
        }
        reason = elector.lost() => {
            // Stopping writes at once: the flag stops every reconcile that has not yet
            // begun, and exiting (the Deployment restarts the container as a follower)
            // stops those in flight at their next await. Simpler and safer than
            // restarting the controllers here.
            ctx.writing.store(false, Ordering::SeqCst);
            controllers.abort();
            tracing::error!(%reason, "lost leadership; stopping at once");
            Err(anyhow::anyhow!(
                "lost the leader lease ({reason}); exiting so that only one replica writes"
            ))
        }
    }
}

/// Becomes `true` on the first SIGTERM or Ctrl-C. The controllers then finish their
/// reconciles in flight and stop.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    // Registered here, not in the task, so a SIGTERM from now on is never missed.
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    tokio::spawn(async move {
        let term = async {
            match term {
                Ok(mut term) => {
                    term.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        let interrupt = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = term => {}
            () = interrupt => {}
        }
        tracing::info!("shutdown signal: finishing the reconciles in flight");
        let _ = tx.send(true);
    });
    rx
}

/// Resolves once [`shutdown_signal`] has fired.
async fn signalled(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone without a signal: never resolve then.
    if rx.wait_for(|fired| *fired).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Keeps the gauges (active runs by phase, queued runs, running step pods per agent) in
/// step with the caches.
async fn gauges(ctx: Arc<Context>) {
    loop {
        let mut by_phase: HashMap<String, i64> = HashMap::new();
        let mut queued = 0;
        for run in ctx.runs.state() {
            let Ok(run) = &run.0 else { continue };
            let phase = run.status.as_ref().map(|s| s.phase).unwrap_or_default();
            if phase.is_finished() {
                continue;
            }
            *by_phase.entry(format!("{phase:?}")).or_default() += 1;
            if matches!(phase, RunPhase::Pending | RunPhase::Queued) {
                queued += 1;
            }
        }
        ctx.metrics.runs_active.reset();
        for (phase, n) in by_phase {
            ctx.metrics
                .runs_active
                .with_label_values(&[phase.as_str()])
                .set(n);
        }
        ctx.metrics.runs_queued.set(queued);
        let mut by_node: HashMap<String, i64> = HashMap::new();
        for pod in ctx.pods.state() {
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running {
                let node = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                *by_node.entry(node).or_default() += 1;
            }
        }
        ctx.metrics.step_pods_running.reset();
        for (node, n) in by_node {
            ctx.metrics
                .step_pods_running
                .with_label_values(&[node.as_str()])
                .set(n);
        }
        ctx.forget_stale_notes();
        ctx.deleted_pods.forget_old();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
