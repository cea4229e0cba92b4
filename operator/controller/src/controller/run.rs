//! The CompositionRun controller: fetch what the engine needs from the caches, plan,
//! carry out the actions, then write the status by server-side apply.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{PersistentVolumeClaim, Pod},
    apimachinery::pkg::apis::meta::v1::{OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, PatchParams},
    core::DeserializeGuard,
    runtime::{
        controller::Action as Requeue,
        finalizer::{Event as Finalizer, finalizer},
    },
};
use serde_json::json;

use super::admission::Admissions;
use super::context::{Context, Error, RUN_FINALIZER, backoff_action, key, publish};
use super::{agents, observe, pods, world};
use crate::k8s::{self, Created, Found, RunBuilder};
use crate::metrics::Metrics;
use maestro_api::labels;
use maestro_api::{
    Agent, CompositionRun, CompositionRunStatus, CompositionSpec, RunAgent, StepPhase,
};
use maestro_engine::routing::Decision;
use maestro_engine::{
    self as engine, Action, Admission, NewRun, Observed, ObservedPod, PlanInput, PodPhase,
};

/// How often a run with a waitFor step is looked at even when nothing it watches changes:
/// runs of other compositions are polled, not watched.
const WAITING_RESYNC: Duration = Duration::from_secs(5);
/// How often any other active run is looked at when nothing changes. Its pods, child runs
/// and approvals wake it, and the plan asks for its own deadlines; this is only a safety
/// net. At 5 s, 500 active runs cost 100 idle reconciles a second (the bench's W1).
const ACTIVE_RESYNC: Duration = Duration::from_secs(30);
/// How often a run queued for an Agent slot looks again (slots free when runs end).
const QUEUED_RESYNC: Duration = Duration::from_secs(2);

// The span is entered on every poll of the future (unlike a guard held across `.await`,
// which would leak it onto whatever else the worker thread polls).
#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(run = %guard.name_any(), namespace = %guard.namespace().unwrap_or_default())
)]
pub async fn reconcile(
    guard: Arc<DeserializeGuard<CompositionRun>>,
    ctx: Arc<Context>,
) -> Result<Requeue, Error> {
    if !ctx.writes() {
        // A follower (or a leader whose caches are not complete yet) does not act; it
        // reconciles everything once it writes.
        return Ok(Requeue::await_change());
    }
    ctx.metrics
        .reconciles
        .with_label_values(&["compositionrun"])
        .inc();
    let _timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values(&["compositionrun"])
        .start_timer();
    let run = match &guard.0 {
        // This replica's own last status write, when the cache does not show it yet.
        Ok(run) => ctx
            .newer_than_cache(run)
            .unwrap_or_else(|| Arc::new(run.clone())),
        Err(invalid) => {
            // A malformed object is reported and skipped, never retried in a loop.
            tracing::warn!(object = %key(guard.as_ref()), error = %invalid.error, "malformed CompositionRun");
            return Ok(Requeue::await_change());
        }
    };
    let ns = run.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<CompositionRun> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, RUN_FINALIZER, run, |event| async {
        match event {
            Finalizer::Apply(run) => apply(&run, &ctx, false).await,
            Finalizer::Cleanup(run) => cleanup(&run, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    if result.is_ok() {
        ctx.succeeded(&key(guard.as_ref()));
    }
    result
}

pub fn error_policy(
    guard: Arc<DeserializeGuard<CompositionRun>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Requeue {
    backoff_action(guard.as_ref(), error, &ctx, "compositionrun")
}

/// One planning pass. `deleting`: the run object is going away, so its steps are stopped
/// and its leftovers cleaned up first.
async fn apply(run: &CompositionRun, ctx: &Context, deleting: bool) -> Result<Requeue, Error> {
    let name = run.name_any();
    let ns = run.namespace().ok_or(Error::NoNamespace)?;
    let status = run.status.clone().unwrap_or_default();
    // The runs waiting to rerun this one, read once (a scan of the namespace's runs) for
    // the checks below and the plan.
    let reruns = run
        .uid()
        .map(|uid| world::reruns_of(ctx, &ns, &uid))
        .unwrap_or_default();
    // A run that has ended is planned again only while its cleanup is held for a rerun
    // (or under way after the hold), or a rerun waits for its ledger and workspace.
    let after_end = |status: &CompositionRunStatus| engine::after_end_work(status, &reruns);
    if status.phase.is_finished() && !after_end(&status) {
        if deleting {
            return Ok(Requeue::await_change());
        }
        return expire_if_old(run, ctx).await;
    }

    // Fetch.
    let composition = world::composition(ctx, &ns, &run.spec.composition);
    let spec_for_tasks = world::composition_of_run(ctx, run, &ns);
    let tasks = world::tasks_of_run(ctx, &ns, spec_for_tasks.as_ref());
    let observed = Observed {
        reruns: reruns.clone(),
        ..observe_world(run, &ns, spec_for_tasks.as_ref(), ctx)
    };

    // Route: in a namespace with Agents, the run needs a slot before any step starts,
    // and its new pods fit in its Agent's capacity. The namespace's lock is held until the
    // pods are created, so no other reconcile counts the same free slot or capacity.
    let pool = world::agents_in(ctx, &ns);
    let mut admissions = if pool.is_empty() {
        None
    } else {
        // Occupancy is rebuilt from every run's status: the run cache is complete, since
        // nothing is reconciled before every cache is (`Context::writes`).
        Some(ctx.admissions.of(&ns).lock_owned().await)
    };
    let mut status = status;
    let mut route = Route::default();
    if let Some(admissions) = admissions.as_deref_mut() {
        route = admit(run, &ns, &pool, &mut status, deleting, admissions, ctx).await?;
    }

    // Plan.
    let uid = run.uid().unwrap_or_default();
    let plan = engine::plan(&PlanInput {
        run_name: &name,
        uid: &uid,
        namespace: &ns,
        generation: run.metadata.generation,
        depth: labels::depth_of(run.labels()),
        chain: &labels::chain_of(run.annotations(), &run.spec.composition),
        spec: &run.spec,
        status: &status,
        composition: composition.as_ref(),
        tasks: &tasks,
        observed: &observed,
        now: Timestamp::now(),
        deleting,
        admission: route.admission.clone(),
        pod_budget: route.pod_budget,
    });

    tracing::debug!(
        read = ?run.resource_version(),
        phase = ?status.phase,
        steps = ?status.steps.iter().map(|s| (s.name.as_str(), s.phase)).collect::<Vec<_>>(),
        pods = ?observed.pods.iter().map(|p| (p.name.as_str(), p.phase)).collect::<Vec<_>>(),
        actions = plan.actions.len(),
        "planned"
    );
    // A plan that starts pods writes its status first: it names the new pods, so that no
    // pod of this run ever exists that its status does not name. Written after the
    // creates, a leader killed in between left a pod only the cluster knew; deleted before
    // the next leader looked (the chaos smoke: the leader killed, then pods deleted), it
    // was created again under the same attempt. Named first, a pod the next leader cannot
    // see is taken for gone, and its attempt fails rather than run twice (a leader killed
    // between the write and the create costs that attempt). A plan that starts the
    // onFailure run is written after acting, as before: a taken handler name must leave
    // its status unwritten (below).
    let starts_pods = plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::CreatePod(_)));
    let starts_handler = plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::CreateRun(new) if new.step.is_none()));
    let mut written_ahead = false;
    if starts_pods && !starts_handler && plan.status != status {
        for action in &plan.actions {
            if let Action::CreatePod(pod) = action {
                ctx.create_pending(&uid, &pod.name);
            }
        }
        write_status(run, &ns, &plan.status, ctx).await?;
        written_ahead = true;
    }

    // Act: every action is idempotent (a pod whose create failed is asked for again, as
    // `Context::uncreated` tells the next pass), so a crash here repeats only work that
    // AlreadyExists.
    for action in &plan.actions {
        act(run, &ns, action, route.placement.as_ref(), ctx).await?;
        if let (Action::CreatePod(pod), Some(placement), Some(admissions)) =
            (action, &route.placement, admissions.as_deref_mut())
        {
            admissions.created(&ns, &placement.agent, &pod.name);
        }
    }
    drop(admissions);

    // The onFailure run's name found held by a run that is not this run's handler: the
    // plan believed it started. Write nothing and plan again at once, so that the engine,
    // told the name is taken, records the run as failed without a handler and says why.
    if let (Some(handler), Some(uid)) = (&plan.status.on_failure_run, run.uid())
        && ctx.taken_names(&uid).iter().any(|t| &t.name == handler)
    {
        return Ok(Requeue::requeue(Duration::from_millis(100)));
    }

    // Status, only when it changed; a change of nothing but the pods' nodes waits (a
    // little) for the next write.
    let mut node_only_wait = None;
    if plan.status != status && !written_ahead {
        let node_only = engine::only_nodes_changed(&status, &plan.status);
        node_only_wait = ctx.node_only_wait(&key(run), node_only);
        if node_only_wait.is_none() {
            write_status(run, &ns, &plan.status, ctx).await?;
        }
    }
    record_transitions(&ctx.metrics, &run.spec.composition, &status, &plan.status);
    record_reports(&ctx.metrics, &run.spec.composition, &observed);
    let reference = run.object_ref(&());
    publish(ctx, &reference, "Reconcile", plan.events.clone());

    let cleaning = plan
        .status
        .cleanup
        .as_ref()
        .is_some_and(|c| matches!(c.phase, StepPhase::Pending | StepPhase::Running));
    if deleting && (!plan.status.phase.is_finished() || cleaning) {
        // The finalizer stays until the leftovers are gone; look again soon.
        return Err(Error::CleanupInProgress);
    }
    if plan.status.phase.is_finished() {
        if after_end(&plan.status) {
            // A held cleanup ends at its time; a cleanup pod is looked at as a step's.
            return Ok(Requeue::requeue(
                plan.requeue_after
                    .map_or(ACTIVE_RESYNC, |d| d.min(ACTIVE_RESYNC)),
            ));
        }
        return Ok(Requeue::requeue(
            ctx.settings.finished_run_ttl.max(Duration::from_secs(1)),
        ));
    }
    let resync = if matches!(route.admission, Admission::Queued(_)) {
        // A slot frees when another run ends: look again soon.
        QUEUED_RESYNC
    } else if spec_for_tasks
        .as_ref()
        .is_some_and(|c| c.steps.iter().any(|s| s.wait_for.is_some()))
    {
        WAITING_RESYNC
    } else {
        ACTIVE_RESYNC
    };
    let wait = [plan.requeue_after, node_only_wait]
        .into_iter()
        .flatten()
        .fold(resync, Duration::min);
    Ok(Requeue::requeue(wait))
}

/// What routing decided for one planning pass.
#[derive(Default)]
pub(super) struct Route {
    pub(super) admission: Admission,
    pub(super) pod_budget: Option<u32>,
    pub(super) placement: Option<pods::Placement>,
}

/// Finds or takes the run's Agent slot. A new assignment is written to the run's status
/// before any pod exists, so a restarted operator sees which slots are held.
pub(super) async fn admit(
    run: &CompositionRun,
    ns: &str,
    pool: &[Agent],
    status: &mut CompositionRunStatus,
    deleting: bool,
    admissions: &mut Admissions,
    ctx: &Context,
) -> Result<Route, Error> {
    agents::forget_seen(ctx, admissions);
    let name = run.name_any();
    let now = Timestamp::now();
    // A run reconciled again before the cache shows the assignment just written keeps it.
    let mut assigned = status
        .agent
        .clone()
        .or_else(|| admissions.assignment_of(ns, &name));
    let child_of = run.labels().get(labels::PARENT_RUN);
    if assigned.is_none()
        && let Some(parent) = child_of
    {
        // A child run works in its parent's slot; it never holds one of its own (and
        // runs like before Agents existed when its parent holds none).
        assigned = world::run(ctx, ns, parent)
            .and_then(|r| r.status?.agent)
            .map(|a| RunAgent {
                cache_hit: false,
                assigned_time: Some(Time(now)),
                ..a
            });
    }
    let stopping = run.spec.cancel || deleting;
    let mut routed = false;
    if assigned.is_none() && child_of.is_none() && !stopping && status.start_time.is_none() {
        let routing = agents::routing_input(ctx, ns, pool, admissions, now);
        match routing.route(&name) {
            Decision::Assign { slot, cache_hit } => {
                routed = true;
                assigned = Some(RunAgent {
                    name: slot.agent,
                    slot: slot.index,
                    cache_hit,
                    assigned_time: Some(Time(now)),
                });
            }
            Decision::Wait { reason, .. } => {
                return Ok(Route {
                    admission: Admission::Queued(reason),
                    ..Route::default()
                });
            }
        }
    }
    let Some(assigned) = assigned else {
        return Ok(Route::default());
    };
    let newly_assigned = status.agent.as_ref() != Some(&assigned);
    if newly_assigned {
        status.agent = Some(assigned.clone());
        write_status(run, ns, status, ctx).await?;
        admissions.assigned(ns, &name, assigned.clone());
        if routed {
            let counter = if assigned.cache_hit {
                &ctx.metrics.agent_cache_hits
            } else {
                &ctx.metrics.agent_cache_misses
            };
            counter.with_label_values(&[assigned.name.as_str()]).inc();
            if let Some(created) = &run.metadata.creation_timestamp {
                let waited = now.duration_since(created.0).as_secs_f64().max(0.0);
                ctx.metrics.run_queue_wait.observe(waited);
            }
            tracing::info!(agent = %assigned.name, slot = assigned.slot, cache_hit = assigned.cache_hit, "assigned run to agent slot");
        }
    }
    // The Agent may have gone since: the run then continues without a capacity limit,
    // its pods still mounting the slot's cache.
    let agent = pool.iter().find(|a| a.name_any() == assigned.name);
    let placement = match agent {
        Some(agent) => agents::placement(agent, assigned.slot),
        None => pods::Placement {
            agent: assigned.name.clone(),
            slot: assigned.slot,
            template: Default::default(),
            cache: pods::SlotCache::Claim(pods::slot_claim_name(&assigned.name, assigned.slot)),
        },
    };
    let pod_budget = agent.map(|a| agents::free_capacity(ctx, ns, a, admissions));
    if let (Some(agent), true) = (agent, routed) {
        // The status loop makes every slot's claim too; this covers a slot just added.
        agents::ensure_slot_claim(ctx, agent, assigned.slot).await?;
    }
    Ok(Route {
        admission: Admission::Admitted,
        pod_budget,
        placement: Some(placement),
    })
}

/// Writes the run's whole status by server-side apply.
async fn write_status(
    run: &CompositionRun,
    ns: &str,
    status: &CompositionRunStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let api: Api<CompositionRun> = Api::namespaced(ctx.client.clone(), ns);
    let name = run.name_any();
    let mut written = k8s::apply_status(&api, &name, status)
        .await
        .map_err(|source| Error::PatchStatus {
            kind: "CompositionRun",
            name: name.clone(),
            source,
        })?;
    // Kept as the cache keeps runs: without managed fields, half an object's size.
    written.metadata.managed_fields = None;
    // The write wakes this run's next reconcile at once, often before the cache shows
    // it: that pass reads the written object instead (`Context::newer_than_cache`), or it
    // would plan from the old status and start its steps again (the bench saw a 409 and a
    // repeated StepStarted per step; a metric counted a run started twice).
    ctx.status_written(written);
    Ok(())
}

pub(super) fn observe_world(
    run: &CompositionRun,
    ns: &str,
    spec: Option<&CompositionSpec>,
    ctx: &Context,
) -> Observed {
    let name = run.name_any();
    let mut pods: Vec<_> = world::pods_of_run(ctx, ns, &name)
        .iter()
        // Only pods this run owns: a pod left by an earlier run of the same name is not its.
        .filter(|p| observe::owned_by(&***p, run))
        .filter_map(|p| observe::pod(p))
        .collect();
    let ended = observe::ended_before_deletion(&ctx.deleted_pods.of_run(ns, &name), run, &pods);
    pods.extend(ended);
    if let Some(uid) = run.uid() {
        let unseen = ctx.created_unseen(&uid, &pods);
        pods.extend(unseen);
    }
    let awaited: Vec<String> = spec
        .into_iter()
        .flat_map(|s| &s.steps)
        .filter_map(|s| s.wait_for.as_ref().map(|w| w.composition.clone()))
        .collect();
    let runs = world::runs_in(ctx, ns)
        .iter()
        .filter(|r| {
            (r.labels().get(labels::PARENT_RUN) == Some(&name) && observe::owned_by(*r, run))
                || awaited.contains(&r.spec.composition)
        })
        .map(observe::run)
        .collect();
    let approvals = world::approvals_of_run(ctx, ns, &name)
        .iter()
        .filter_map(|a| observe::approval(a, run))
        .collect();
    Observed {
        pods,
        runs,
        approvals,
        taken: run
            .uid()
            .map(|uid| ctx.taken_names(&uid))
            .unwrap_or_default(),
        refused: run
            .uid()
            .map(|uid| ctx.refused_creates(&uid))
            .unwrap_or_default(),
        uncreated: run
            .uid()
            .map(|uid| ctx.uncreated_pods(&uid))
            .unwrap_or_default(),
        // Only until the rerun has taken its snapshots: from then on it needs no source.
        source: run
            .spec
            .rerun_of
            .as_ref()
            .filter(|_| {
                run.status
                    .as_ref()
                    .is_none_or(|s| s.composition_spec.is_none())
            })
            .and_then(|of| world::rerun_source(ctx, ns, of)),
        // Filled in by `apply`, which reads them first.
        reruns: Vec::new(),
    }
}

fn owner_of(run: &CompositionRun) -> Option<OwnerReference> {
    run.controller_owner_ref(&())
}

pub(super) async fn act(
    run: &CompositionRun,
    ns: &str,
    action: &Action,
    placement: Option<&pods::Placement>,
    ctx: &Context,
) -> Result<(), Error> {
    let run_name = run.name_any();
    match action {
        Action::CreatePod(step) => {
            let Some(owner) = owner_of(run) else {
                return Ok(());
            };
            // On an Agent slot the run works in the slot's cache, not a claim of its own.
            if let (Some(claim), None) = (&ctx.settings.pods.workspace, placement) {
                // A rerun's is the claim of the run it reruns, which made this run an owner
                // when it handed it over; if that claim is gone, the rerun gets a new one,
                // empty (and owned by it).
                let claim_of = step.workspace_of.as_deref().unwrap_or(&run_name);
                let pvc = pods::workspace_claim(claim_of, ns, owner.clone(), claim);
                let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
                let claim_name = pvc.name_any();
                let created = k8s::create_or_existing(&api, &pvc)
                    .await
                    .map_err(|source| Error::CreateClaim {
                        name: claim_name.clone(),
                        source,
                    })?;
                // Existed: made by an earlier pod of this run, or left by an earlier run of
                // the same name (after `--cascade=orphan`), or a look-alike: only the run's
                // own claim is mounted, a stranger's would hand this step their files.
                if created == Created::Existed {
                    let uid = run.uid().unwrap_or_default();
                    let holder = k8s::holder_unless_owned(&api, &claim_name, &uid)
                        .await
                        .map_err(|source| Error::ReadExisting {
                            name: claim_name.clone(),
                            source,
                        })?;
                    if let Some(holder) = holder {
                        let object = format!("claim {claim_name}");
                        note_taken(ctx, run, &step.name, Some(object), holder);
                        return Ok(());
                    }
                }
            }
            let pod = pods::step_pod(
                step,
                &run_name,
                ns,
                &run.spec.composition,
                owner,
                &ctx.settings.pods,
                placement,
            );
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
            let run_uid = run.uid().unwrap_or_default();
            let created = match k8s::create_or_existing(&api, &pod).await {
                Ok(created) => {
                    ctx.create_done(&run_uid, &step.name);
                    ctx.create_refused(&run_uid, &step.name, None);
                    created
                }
                Err(source) => {
                    if let Some(message) = lasting_refusal(&source) {
                        tracing::warn!(pod = %step.name, %message, "the API server refused the step pod");
                        ctx.create_refused(&run_uid, &step.name, Some(message));
                    }
                    return Err(Error::CreatePod {
                        name: step.name.clone(),
                        source,
                    });
                }
            };
            // Existed: the deterministic name means the attempt is already under way, if
            // the pod there is this run's; if not, the engine fails the step.
            match created {
                Created::Created => {
                    tracing::info!(pod = %step.name, step = %step.step, attempt = step.attempt, "created step pod");
                    ctx.pod_created(
                        &run_uid,
                        ObservedPod {
                            name: step.name.clone(),
                            step: step.step.clone(),
                            attempt: step.attempt,
                            phase: PodPhase::Pending,
                            created: None,
                            node: None,
                            result: None,
                            message: None,
                        },
                    );
                }
                Created::Existed => {
                    tracing::debug!(pod = %step.name, "step pod existed");
                    note_if_taken(&api, &step.name, run, ctx).await?
                }
            }
        }
        Action::DeletePod { name } => {
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
            let found = k8s::delete_or_gone(&api, name, &DeleteParams::default())
                .await
                .map_err(|source| Error::DeletePod {
                    name: name.clone(),
                    source,
                })?;
            if found == Found::Found {
                tracing::info!(pod = %name, "deleted step pod");
            }
        }
        Action::CreateRun(new) => create_run(run, ns, new, ctx).await?,
        Action::ShareWorkspace {
            claim_of,
            run: rerun,
            uid,
        } => share_workspace(run, ns, claim_of, rerun, uid, ctx).await?,
        Action::CancelRun { name } => {
            let api: Api<CompositionRun> = Api::namespaced(ctx.client.clone(), ns);
            let patch = json!({"spec": {"cancel": true}});
            let found = k8s::merge_or_gone(&api, name, &PatchParams::default(), &patch)
                .await
                .map_err(|source| Error::CancelRun {
                    name: name.clone(),
                    source,
                })?;
            if found == Found::Found {
                tracing::info!(run = %name, "cancelled child run");
            }
        }
    }
    Ok(())
}

async fn create_run(
    parent: &CompositionRun,
    ns: &str,
    new: &NewRun,
    ctx: &Context,
) -> Result<(), Error> {
    let parent_name = parent.name_any();
    let mut child = RunBuilder::new(&new.name, ns, &new.composition)
        .params(new.params.clone())
        // A child (or the onFailure run) keeps its parent's place in the queue.
        .priority(parent.spec.priority)
        .started_by(new.started_by.clone())
        .label(
            labels::DEPTH,
            &(labels::depth_of(parent.labels()) + 1).to_string(),
        )
        .annotation(
            labels::CHAIN,
            &format!(
                "{} -> {}",
                labels::chain_of(parent.annotations(), &parent.spec.composition),
                new.composition
            ),
        );
    child = match &new.step {
        Some(step) => child
            .label(labels::PARENT_RUN, &parent_name)
            .label(labels::STEP, step),
        None => child
            .label(labels::FAILED_RUN, &parent_name)
            .label(labels::FAILED_RUN_UID, &parent.uid().unwrap_or_default()),
    };
    if new.owned
        && let Some(owner) = owner_of(parent)
    {
        child = child.owner(owner);
    }
    let api: Api<CompositionRun> = Api::namespaced(ctx.client.clone(), ns);
    let created = k8s::create_or_existing(&api, &child.build())
        .await
        .map_err(|source| Error::CreateRun {
            name: new.name.clone(),
            source,
        })?;
    match created {
        Created::Created => {
            tracing::info!(run = %new.name, composition = %new.composition, "created run")
        }
        Created::Existed if new.owned => note_if_taken(&api, &new.name, parent, ctx).await?,
        // The onFailure run is not owned (it outlives the failed run): the reserved labels
        // naming the failed run and its UID prove it is this run's handler.
        Created::Existed => {
            let Some(uid) = parent.uid() else {
                return Ok(());
            };
            let is_handler = |existing: &CompositionRun| {
                let marks = existing.labels();
                marks.get(labels::FAILED_RUN_UID) == Some(&uid)
                    && marks.get(labels::FAILED_RUN) == Some(&parent_name)
            };
            let holder = k8s::holder_unless(&api, &new.name, is_handler)
                .await
                .map_err(|source| Error::ReadExisting {
                    name: new.name.clone(),
                    source,
                })?;
            if let Some(holder) = holder {
                note_taken(ctx, parent, &new.name, None, holder);
            }
        }
    }
    Ok(())
}

/// The API server's message when it refused a create for a reason that trying again will
/// not change by itself: a 4xx other than AlreadyExists (409) and throttling (429), like
/// Pod Security's or a quota's 403, or an invalid pod's 422.
pub(crate) fn lasting_refusal(error: &kube::Error) -> Option<String> {
    match error {
        kube::Error::Api(status)
            if (400..500).contains(&status.code) && ![409, 429].contains(&status.code) =>
        {
            Some(status.message.clone())
        }
        _ => None,
    }
}

/// Makes the rerun `rerun` (UID `uid`) an owner of the workspace claim of `claim_of`, so
/// that the claim outlives `run` while the rerun works in it. Only a claim `run` owns
/// itself is shared: its owner is proven by UID, as everywhere. Without workspace claims
/// (emptyDir workspaces) there is nothing to share: the rerun starts with an empty one.
async fn share_workspace(
    run: &CompositionRun,
    ns: &str,
    claim_of: &str,
    rerun: &str,
    uid: &str,
    ctx: &Context,
) -> Result<(), Error> {
    if ctx.settings.pods.workspace.is_none() {
        return Ok(());
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let name = pods::workspace_claim_name(claim_of);
    let Some(found) = api
        .get_opt(&name)
        .await
        .map_err(|source| Error::ShareClaim {
            name: name.clone(),
            source,
        })?
    else {
        tracing::info!(claim = %name, %rerun, "no workspace claim to hand over");
        return Ok(());
    };
    let mut owners = found.owner_references().to_vec();
    let own = run.uid();
    if !owners.iter().any(|o| Some(&o.uid) == own.as_ref()) {
        tracing::warn!(claim = %name, %rerun, "the workspace claim is not this run's: not handed over");
        return Ok(());
    }
    if owners.iter().any(|o| o.uid == uid) {
        return Ok(());
    }
    owners.push(OwnerReference {
        api_version: "maestro.dev/v1alpha1".into(),
        kind: "CompositionRun".into(),
        name: rerun.into(),
        uid: uid.into(),
        controller: None,
        block_owner_deletion: None,
    });
    // The resourceVersion makes this a compare-and-swap: a claim changed meanwhile is
    // read again on the next pass.
    let patch = json!({
        "metadata": {
            "resourceVersion": found.resource_version(),
            "ownerReferences": owners,
        }
    });
    api.patch(
        &name,
        &PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map_err(|source| Error::ShareClaim {
        name: name.clone(),
        source,
    })?;
    tracing::info!(claim = %name, %rerun, "workspace claim handed over to the rerun");
    Ok(())
}

/// After a create of `name` for `run` answered AlreadyExists: notes the name as taken
/// unless the object there is owned by the run (checked by UID, never by name).
async fn note_if_taken<K>(
    api: &Api<K>,
    name: &str,
    run: &CompositionRun,
    ctx: &Context,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(uid) = run.uid() else {
        return Ok(());
    };
    let holder = k8s::holder_unless_owned(api, name, &uid)
        .await
        .map_err(|source| Error::ReadExisting {
            name: name.to_string(),
            source,
        })?;
    if let Some(holder) = holder {
        note_taken(ctx, run, name, None, holder);
    }
    Ok(())
}

/// Notes that `name`, which `run` needs, is not the run's (`object`: what holds it, when it
/// is not the object of that name itself), so the engine fails what needs it.
fn note_taken(
    ctx: &Context,
    run: &CompositionRun,
    name: &str,
    object: Option<String>,
    holder: String,
) {
    let Some(uid) = run.uid() else { return };
    let what = object.as_deref().unwrap_or(name);
    tracing::warn!(run = %run.name_any(), object = %what, %holder, "name taken by an object the run does not own");
    ctx.name_taken(
        &uid,
        maestro_engine::TakenName {
            name: name.to_string(),
            holder,
            object,
        },
    );
}

/// Cleanup before a run object goes away: the engine stops what still runs and removes
/// the ledger's leftovers (per the cleanup policy); the finalizer is released once the run
/// has ended. Child runs and pods are owned by the run and removed by the garbage collector.
async fn cleanup(run: &CompositionRun, ctx: &Context) -> Result<Requeue, Error> {
    let result = apply(run, ctx, true).await;
    if result.is_ok() {
        if let Some(uid) = run.uid() {
            ctx.forget_taken(&uid);
        }
        tracing::info!(run = %run.name_any(), "cleaned up; releasing the finalizer");
    }
    result
}

/// How long a finished top-level run is kept: the TTL, but at least a day for a run a
/// push started, because that run's name is what makes a replayed delivery start nothing.
/// (The label only ever makes a run live longer, so a user who sets it gains nothing.)
pub(crate) fn kept_for(run: &CompositionRun, ttl: Duration) -> Duration {
    if run.labels().get(labels::TRIGGER).map(String::as_str) == Some("git") {
        ttl.max(maestro_engine::triggers::push::REPLAY_WINDOW)
    } else {
        ttl
    }
}

/// Deletes a finished top-level run once its TTL has passed; child runs go with their
/// parent. This keeps etcd and the operator's caches bounded as runs accumulate.
async fn expire_if_old(run: &CompositionRun, ctx: &Context) -> Result<Requeue, Error> {
    if run.labels().contains_key(labels::PARENT_RUN) {
        return Ok(Requeue::await_change());
    }
    let ttl = kept_for(run, ctx.settings.finished_run_ttl);
    let finished = run
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .map(|t| t.0);
    let Some(finished) = finished else {
        return Ok(Requeue::await_change());
    };
    let age = Timestamp::now().duration_since(finished);
    let age = Duration::try_from(age).unwrap_or(Duration::ZERO);
    if age >= ttl {
        let api: Api<CompositionRun> = Api::namespaced(
            ctx.client.clone(),
            &run.namespace().ok_or(Error::NoNamespace)?,
        );
        let name = run.name_any();
        let found = k8s::delete_or_gone(&api, &name, &DeleteParams::background())
            .await
            .map_err(|source| Error::DeleteRun {
                name: name.clone(),
                source,
            })?;
        if found == Found::Found {
            tracing::info!(run = %name, "deleted finished run after its TTL");
        }
        return Ok(Requeue::await_change());
    }
    Ok(Requeue::requeue(ttl - age))
}

/// Counts what ended (or started) between two statuses: runs started and finished, steps
/// finished, and their durations.
fn record_transitions(
    m: &Metrics,
    composition: &str,
    old: &CompositionRunStatus,
    new: &CompositionRunStatus,
) {
    let seconds = |from: &Option<Time>, to: &Option<Time>| match (from, to) {
        (Some(a), Some(b)) => b.0.duration_since(a.0).as_secs_f64().max(0.0),
        _ => 0.0,
    };
    if old.start_time.is_none() && new.start_time.is_some() {
        m.runs_started.with_label_values(&[composition]).inc();
    }
    if !old.phase.is_finished() && new.phase.is_finished() {
        let phase = format!("{:?}", new.phase);
        m.runs_finished
            .with_label_values(&[composition, phase.as_str()])
            .inc();
        m.run_duration
            .with_label_values(&[composition, phase.as_str()])
            .observe(seconds(&new.start_time, &new.completion_time));
    }
    for step in &new.steps {
        let was_finished = old
            .steps
            .iter()
            .any(|o| o.name == step.name && o.phase.is_finished());
        if step.phase.is_finished() && !was_finished {
            let phase = format!("{:?}", step.phase);
            m.steps_finished
                .with_label_values(&[composition, step.name.as_str(), phase.as_str()])
                .inc();
            if step.start_time.is_some() {
                m.step_duration
                    .with_label_values(&[composition, step.name.as_str(), phase.as_str()])
                    .observe(seconds(&step.start_time, &step.finish_time));
            }
        }
    }
}

/// Exports the numeric report values of ended step pods (at most 16 keys per step, so a
/// plugin cannot blow up the label cardinality).
fn record_reports(m: &Metrics, composition: &str, observed: &Observed) {
    for pod in &observed.pods {
        let Some(result) = &pod.result else { continue };
        for (key, value) in result.report.iter().take(16) {
            if let Some(v) = value.as_f64() {
                m.task_report
                    .with_label_values(&[composition, pod.step.as_str(), key.as_str()])
                    .set(v);
            }
        }
    }
}
