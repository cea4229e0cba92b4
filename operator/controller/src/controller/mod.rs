//! The controllers: kube-runtime wiring around the pure engine. Data flows one way:
//! watch (reflector stores) -> plan (engine) -> act (pods, runs) -> status (server-side
//! apply with one field manager) -> events.

mod admission;
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

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
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

/// Runs every controller until a shutdown signal. With `leader` set, this replica keeps
/// its caches warm but reconciles only while it holds that Lease; it returns an error
/// (and the process should exit) as soon as it loses the Lease.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    leader: Option<leader::LeaseSettings>,
) -> anyhow::Result<()> {
    // One listener for the whole life of the process: a follower must react to SIGTERM
    // too, and a signal must not fall between its listener and the controllers'.
    let shutdown = shutdown_signal();
    let elector = leader.map(|l| leader::Elector::new(client.clone(), l, metrics.leader.clone()));
    let ns = settings.watch_namespace.clone();
    let ns = ns.as_deref();
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);

    // Only Maestro's own pods are watched, never every pod in the cluster.
    let pod_config =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let (pods, pod_writer) = reflector::store();
    let pod_watch = reflector::reflector(
        pod_writer,
        watcher(scoped::<Pod>(&client, ns), pod_config.clone()),
    )
    .modify(|p| p.managed_fields_mut().clear())
    .default_backoff()
    .touched_objects();
    let (tasks, task_writer) = reflector::store();
    let task_watch = reflector::reflector(
        task_writer,
        watcher(Api::<Task>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let (approvals, approval_writer) = reflector::store();
    let approval_watch = reflector::reflector(
        approval_writer,
        watcher(scoped::<Approval>(&client, ns), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();

    let (agents, agent_writer) = reflector::store();
    let agent_watch = reflector::reflector(
        agent_writer,
        watcher(scoped::<Agent>(&client, ns), watcher::Config::default()),
    )
    .modify(|a| a.managed_fields_mut().clear())
    .default_backoff()
    .touched_objects();

    let run_api = scoped::<DeserializeGuard<CompositionRun>>(&client, ns);
    let composition_api = scoped::<DeserializeGuard<Composition>>(&client, ns);
    // The run controller reads compositions from a cache of its own, so it can wait for
    // that cache to be complete before its first reconcile.
    let (compositions, composition_writer) = reflector::store();
    let composition_watch = reflector::reflector(
        composition_writer,
        watcher(composition_api.clone(), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let run_controller = Controller::new(run_api.clone(), watcher::Config::default());
    let composition_controller = Controller::new(composition_api, watcher::Config::default());

    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        recorder,
        runs: run_controller.store(),
        compositions,
        tasks,
        pods,
        approvals,
        agents,
        metrics,
        admissions: admission::AdmissionLocks::default(),
        failures: Mutex::new(HashMap::new()),
    });

    // A run is reconciled when its pods, its child runs or its approvals change.
    let compositions_store = ctx.compositions.clone();
    let runs = run_controller
        .owns(scoped::<Pod>(&client, ns), pod_config)
        .watches(
            run_api,
            watcher::Config::default(),
            |child: DeserializeGuard<CompositionRun>| {
                let parent = child.labels().get(labels::PARENT_RUN)?.clone();
                Some(ObjectRef::new(&parent).within(&child.namespace()?))
            },
        )
        .watches(
            scoped::<Approval>(&client, ns),
            watcher::Config::default(),
            |a: Approval| {
                a.namespace()
                    .map(|ns| ObjectRef::new(&a.spec.run).within(&ns))
            },
        )
        .graceful_shutdown_on(signalled(shutdown.clone()))
        .run(run::reconcile, run::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "run reconcile");
            }
        });
    // A composition is validated again when a Task it uses changes.
    let compositions = composition_controller
        .watches(
            Api::<Task>::all(client.clone()),
            watcher::Config::default(),
            move |task: Task| {
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
            },
        )
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
    tokio::spawn(pod_watch.for_each(|_| async {}));
    tokio::spawn(task_watch.for_each(|_| async {}));
    tokio::spawn(approval_watch.for_each(|_| async {}));
    tokio::spawn(composition_watch.for_each(|_| async {}));
    tokio::spawn(agent_watch.for_each(|_| async {}));
    // A reconcile against a half-filled cache would see a Task or a pod as missing: a
    // restarted operator must not fail a run in flight for that. Wait for every cache.
    for (name, ready) in [
        ("tasks", ctx.tasks.wait_until_ready().boxed()),
        ("pods", ctx.pods.wait_until_ready().boxed()),
        ("approvals", ctx.approvals.wait_until_ready().boxed()),
        ("compositions", ctx.compositions.wait_until_ready().boxed()),
        ("agents", ctx.agents.wait_until_ready().boxed()),
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
    let mut renewed = tokio::time::Instant::now();
    if let Some(elector) = &elector {
        tracing::info!("caches ready; waiting for leadership before reconciling");
        tokio::select! {
            at = elector.acquire() => renewed = at,
            () = signalled(shutdown.clone()) => {
                tracing::info!("shutdown signal while following; nothing to release");
                return Ok(());
            }
        }
    } else {
        // Without election this process is the only writer: it leads.
        ctx.metrics.leader.set(1);
    }
    tracing::info!("reconciling");
    if let Some(install) = ctx.settings.library.clone() {
        tokio::spawn(crate::library::keep_installed(client.clone(), install));
    }
    // Only the leader reports the run gauges, so summing them over replicas still counts
    // each run once.
    tokio::spawn(gauges(ctx.clone()));
    tokio::spawn(agents::status_loop(ctx.clone()));
    let controllers = async {
        tokio::join!(runs, compositions);
    };
    let Some(elector) = elector else {
        controllers.await;
        return Ok(());
    };
    tokio::select! {
        () = controllers => {
            // Graceful shutdown: the reconciles in flight have ended, so hand the
            // Lease over now rather than make the successor wait for it to expire.
            elector.release().await;
            Ok(())
        }
        reason = elector.hold(renewed) => {
            // Dropping the controllers stops every reconcile at its next await: no new
            // write leaves this process. Exiting (the Deployment restarts the container
            // as a follower) is simpler and safer than restarting the controllers here.
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
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
