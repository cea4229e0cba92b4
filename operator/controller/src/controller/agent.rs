//! The Agent controller: each Agent's status (slots, busy and idle, queue, cache hits and
//! misses), the busy-slots gauge, and its slots' cache claims. An Agent is reconciled
//! when it changes, when one of its claims changes, and when a top-level run of its
//! namespace changes (a run routed to it, or one queued for any Agent there). Events say
//! when a slot is taken or freed, a claim is made, or the Agent's readiness changes.

use std::{collections::HashSet, sync::Arc, sync::Mutex, time::Duration};

use k8s_openapi::{api::core::v1::PersistentVolumeClaim, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};

use super::agents::{self, ClaimMade};
use super::context::{Context, Error, backoff_action, key, publish};
use super::{pods, world};
use crate::k8s;
use maestro_api::{Agent, AgentStatus, CompositionRun, RunPhase, SlotStatus};
use maestro_engine::{EventNote, conditions};

/// How often an Agent is reconciled with no change seen, as a safety net (a composition
/// edited while its run is queued changes which Agents count that run).
const RESYNC: Duration = Duration::from_secs(60);

/// The runs whose slot assignment the Agents' hit and miss counters already include
/// (keys `namespace/run`). `None` until this replica starts writing: assignments made
/// before that were counted by an earlier leader.
#[derive(Default)]
pub struct AssignmentCounts(Mutex<Option<HashSet<String>>>);

impl AssignmentCounts {
    /// Takes every assignment the run cache shows now as counted.
    pub fn start(&self, ctx: &Context) {
        let seen = assigned_runs(ctx, None)
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        if let Ok(mut counted) = self.0.lock() {
            *counted = Some(seen);
        }
    }

    /// Of `assigned`, the runs not counted yet.
    fn uncounted<'a>(
        &self,
        assigned: &'a [(String, maestro_api::RunAgent)],
    ) -> Vec<&'a (String, maestro_api::RunAgent)> {
        let Ok(counted) = self.0.lock() else {
            return Vec::new();
        };
        let Some(counted) = counted.as_ref() else {
            return Vec::new();
        };
        assigned
            .iter()
            .filter(|(key, _)| !counted.contains(key))
            .collect()
    }

    /// Marks runs counted, once the status that counts them is written.
    fn counted(&self, keys: impl IntoIterator<Item = String>) {
        if let Ok(mut counted) = self.0.lock()
            && let Some(counted) = counted.as_mut()
        {
            counted.extend(keys);
        }
    }
}

/// The top-level runs with a slot assignment (in `agent`'s namespace and on it, if given),
/// keyed `namespace/run`.
fn assigned_runs(ctx: &Context, agent: Option<&Agent>) -> Vec<(String, maestro_api::RunAgent)> {
    let on = agent.map(|a| (a.namespace().unwrap_or_default(), a.name_any()));
    ctx.runs
        .state()
        .iter()
        .filter_map(|r| r.0.as_ref().ok())
        .filter(|r| agents::top_level(r))
        .filter_map(|r| {
            let assigned = r.status.as_ref()?.agent.clone()?;
            let ns = r.namespace()?;
            if let Some((agent_ns, agent_name)) = &on
                && (&ns != agent_ns || &assigned.name != agent_name)
            {
                return None;
            }
            Some((format!("{ns}/{}", r.name_any()), assigned))
        })
        .collect()
}

/// The Agents a run's change may alter: every Agent of its namespace, for a top-level run
/// (routed to one of them, or queued and counted by those that could take it; a run
/// moving from the queue to a slot changes both).
pub fn agents_to_update(
    agents: &Store<Agent>,
    run: &DeserializeGuard<CompositionRun>,
) -> Vec<ObjectRef<Agent>> {
    let Ok(run) = &run.0 else {
        return Vec::new();
    };
    let Some(ns) = run.namespace() else {
        return Vec::new();
    };
    if !agents::top_level(run) {
        return Vec::new();
    }
    agents
        .state()
        .iter()
        .filter(|a| a.namespace().as_deref() == Some(ns.as_str()))
        .map(|a| ObjectRef::from_obj(a.as_ref()))
        .collect()
}

#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(agent = %agent.name_any(), namespace = %agent.namespace().unwrap_or_default())
)]
pub async fn reconcile(agent: Arc<Agent>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.writes() {
        // A follower does not act; it reconciles every Agent once it writes.
        return Ok(Action::await_change());
    }
    ctx.metrics.reconciles.with_label_values(&["agent"]).inc();
    let _timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values(&["agent"])
        .start_timer();
    // This replica's own last status write, when the cache does not show it yet: the
    // counters and slots grow from it.
    let agent = ctx.agent_newer_than_cache(&agent).unwrap_or(agent);
    let name = agent.name_any();
    let ns = agent.namespace().ok_or(Error::NoNamespace)?;
    let (made, ready) = ensure_claims(&ctx, &agent).await;

    let assigned = assigned_runs(&ctx, Some(&agent));
    let new = ctx.agent_counts.uncounted(&assigned);
    let hits = new.iter().filter(|(_, a)| a.cache_hit).count() as u64;
    let added = (hits, new.len() as u64 - hits);
    let new: Vec<String> = new.into_iter().map(|(key, _)| key.clone()).collect();

    let old = agent.status.clone().unwrap_or_default();
    let status = agent_status(&ctx, &agent, &ns, added, ready);
    ctx.metrics
        .agent_slots_busy
        .with_label_values(&[name.as_str()])
        .set(i64::from(status.busy_slots));
    // The counters exist at 0 from the Agent's first sight: Prometheus sees no increase in
    // a series that is born at 1.
    let _ = ctx
        .metrics
        .agent_cache_hits
        .with_label_values(&[name.as_str()]);
    let _ = ctx
        .metrics
        .agent_cache_misses
        .with_label_values(&[name.as_str()]);
    if agent.status.as_ref() != Some(&status) {
        let api: Api<Agent> = Api::namespaced(ctx.client.clone(), &ns);
        let mut written = k8s::apply_status(&api, &name, &status)
            .await
            .map_err(|source| Error::PatchStatus {
                kind: "Agent",
                name: name.clone(),
                source,
            })?;
        written.metadata.managed_fields = None;
        ctx.agent_status_written(written);
    }
    ctx.agent_counts.counted(new);
    let reference = agent.object_ref(&());
    publish(&ctx, &reference, "Reconcile", changes(&old, &status, &made));
    ctx.succeeded(&key(agent.as_ref()));
    Ok(Action::requeue(RESYNC))
}

pub fn error_policy(agent: Arc<Agent>, error: &Error, ctx: Arc<Context>) -> Action {
    backoff_action(agent.as_ref(), error, &ctx, "agent")
}

/// Why an Agent is not Ready: its condition's reason and message. Routing gives such an
/// Agent no run.
#[derive(Debug, Clone)]
pub(super) struct NotReady {
    pub(super) reason: &'static str,
    pub(super) message: String,
}

impl NotReady {
    fn claim(message: String) -> Self {
        Self {
            reason: "CacheClaimFailed",
            message,
        }
    }

    fn host_path_off() -> Self {
        Self {
            reason: "HostPathNotAllowed",
            message: "spec.cache.hostPath: hostPath caches are off in this operator; an \
                      administrator turns them on with --allow-host-path-caches (the \
                      chart's agents.allowHostPathCaches)"
                .into(),
        }
    }
}

/// Makes each slot's cache claim that the claim cache does not show yet. Returns the
/// claims made, and `Err` with what is wrong: a failed create, or a claim of that name
/// that belongs to someone else (it would hand a stranger's volume to this Agent's pods).
pub(super) async fn ensure_claims(
    ctx: &Context,
    agent: &Agent,
) -> (Vec<String>, Result<(), NotReady>) {
    let mut made = Vec::new();
    if agent
        .spec
        .cache
        .as_ref()
        .is_some_and(|c| c.host_path.is_some())
    {
        // A hostPath volume reaches the node's disk, beyond what an author may otherwise
        // ask for: only an administrator's setting lets Agents use one.
        if !ctx.settings.allow_host_path_caches {
            return (made, Err(NotReady::host_path_off()));
        }
        return (made, Ok(()));
    }
    let ns = agent.namespace().unwrap_or_default();
    let uid = agent.uid();
    for slot in 0..agent.spec.slots {
        let claim = pods::slot_claim_name(&agent.name_any(), slot);
        let not_ours = || {
            Err(NotReady::claim(format!(
                "slot {slot}: claim {claim} exists but is not owned by this Agent"
            )))
        };
        match ctx.claims.get(&ObjectRef::new(&claim).within(&ns)) {
            Some(existing) => {
                let ours = existing
                    .owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref());
                if !ours {
                    return (made, not_ours());
                }
            }
            None => match agents::ensure_slot_claim(ctx, agent, slot).await {
                Ok(ClaimMade::Created) => made.push(claim),
                Ok(ClaimMade::NotNeeded) => {}
                Ok(ClaimMade::Existed) => {
                    // There, but not in the claim cache: it lacks Maestro's label, so it
                    // is not one Maestro made. Read it and check its owner.
                    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
                    let owner = uid.clone().unwrap_or_default();
                    match k8s::holder_unless_owned(&api, &claim, &owner).await {
                        Ok(None) => {}
                        Ok(Some(_holder)) => return (made, not_ours()),
                        Err(e) => {
                            return (
                                made,
                                Err(NotReady::claim(format!(
                                    "slot {slot}: reading claim {claim}: {e}"
                                ))),
                            );
                        }
                    }
                }
                Err(e) => return (made, Err(NotReady::claim(format!("slot {slot}: {e}")))),
            },
        }
    }
    (made, Ok(()))
}

/// An Agent's status, computed from the runs and its previous status.
fn agent_status(
    ctx: &Context,
    agent: &Agent,
    ns: &str,
    added: (u64, u64),
    ready: Result<(), NotReady>,
) -> AgentStatus {
    let old = agent.status.clone().unwrap_or_default();
    let name = agent.name_any();
    let mut slots: Vec<SlotStatus> = (0..agent.spec.slots)
        .map(|index| {
            old.slots
                .iter()
                .find(|s| s.index == index)
                .cloned()
                .map(|s| SlotStatus { run: None, ..s })
                .unwrap_or(SlotStatus {
                    index,
                    ..SlotStatus::default()
                })
        })
        .collect();
    let runs = world::runs_in(ctx, ns);
    let pool = agents::pool(agent);
    let mut queued = 0;
    for run in runs.iter().filter(|r| agents::top_level(r)) {
        let phase = run.status.as_ref().map(|s| s.phase).unwrap_or_default();
        let Some(assigned) = run.status.as_ref().and_then(|s| s.agent.as_ref()) else {
            if phase == RunPhase::Queued {
                let requires = agents::run_requirements(run, ns, ctx);
                if requires
                    .iter()
                    .all(|r| pool.capabilities.contains(&r.capability))
                {
                    queued += 1;
                }
            }
            continue;
        };
        if assigned.name != name {
            continue;
        }
        let Some(slot) = slots.iter_mut().find(|s| s.index == assigned.slot) else {
            continue;
        };
        if !phase.is_finished() {
            slot.run = Some(run.name_any());
        }
        let newer = match (&slot.last_used, &assigned.assigned_time) {
            (Some(old), Some(new)) => new.0 > old.0,
            (None, Some(_)) => true,
            _ => false,
        };
        if newer {
            slot.last_used = assigned.assigned_time.clone();
            slot.last_composition = Some(run.spec.composition.clone());
        }
    }
    let busy = u32::try_from(slots.iter().filter(|s| s.run.is_some()).count()).unwrap_or(0);
    let (status, reason, message) = match &ready {
        Ok(()) => (
            "True",
            "SlotsReady",
            format!("{} slots ready", agent.spec.slots),
        ),
        Err(e) => ("False", e.reason, e.message.clone()),
    };
    let conditions = conditions::ready_only(
        &old.conditions,
        status,
        reason,
        message,
        agent.metadata.generation,
        Timestamp::now(),
    );
    AgentStatus {
        busy_slots: busy,
        idle_slots: agent.spec.slots.saturating_sub(busy),
        queued_runs: queued,
        cache_hits: old.cache_hits + added.0,
        cache_misses: old.cache_misses + added.1,
        slots,
        conditions,
    }
}

/// The events that a status change and the claims just made call for: a slot taken or
/// freed, a claim created, the Ready condition turning.
fn changes(old: &AgentStatus, new: &AgentStatus, claims_made: &[String]) -> Vec<EventNote> {
    let mut notes: Vec<EventNote> = claims_made
        .iter()
        .map(|claim| EventNote {
            warning: false,
            routine: false,
            reason: "ClaimCreated",
            message: format!("created slot cache claim {claim}"),
        })
        .collect();
    for slot in &new.slots {
        let before = old
            .slots
            .iter()
            .find(|s| s.index == slot.index)
            .and_then(|s| s.run.as_ref());
        match (before, &slot.run) {
            (before, Some(run)) if before != Some(run) => notes.push(EventNote {
                warning: false,
                routine: false,
                reason: "SlotTaken",
                message: format!("slot {} runs {run}", slot.index),
            }),
            (Some(run), None) => notes.push(EventNote {
                warning: false,
                routine: false,
                reason: "SlotFreed",
                message: format!("slot {} is free ({run} ended)", slot.index),
            }),
            _ => {}
        }
    }
    let ready = |s: &AgentStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    if let Some((status, reason, message)) = ready(new)
        && ready(old).map(|(s, _, _)| s) != Some(status.clone())
    {
        notes.push(EventNote {
            warning: status != "True",
            routine: false,
            reason: if status == "True" {
                "Ready"
            } else {
                "NotReady"
            },
            message: format!("{reason}: {message}"),
        });
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(yaml: &str) -> AgentStatus {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn events_say_which_slot_was_taken_or_freed_and_when_readiness_turns() {
        let old = status(
            r#"
slots: [{index: 0, run: build-1}, {index: 1}]
conditions: [{type: Ready, status: "True", reason: SlotsReady, message: "2 slots ready", lastTransitionTime: "2026-12-01T00:00:00Z"}]
"#,
        );
        let new = status(
            r#"
slots: [{index: 0}, {index: 1, run: build-2}]
conditions: [{type: Ready, status: "False", reason: CacheClaimFailed, message: "slot 1: quota", lastTransitionTime: "2026-12-01T00:01:00Z"}]
"#,
        );
        let notes = changes(&old, &new, &["pool-cache-1".to_string()]);
        let said: Vec<(&str, &str)> = notes
            .iter()
            .map(|n| (n.reason, n.message.as_str()))
            .collect();
        assert_eq!(
            said,
            vec![
                ("ClaimCreated", "created slot cache claim pool-cache-1"),
                ("SlotFreed", "slot 0 is free (build-1 ended)"),
                ("SlotTaken", "slot 1 runs build-2"),
                ("NotReady", "CacheClaimFailed: slot 1: quota"),
            ]
        );
        assert!(notes[3].warning && !notes[0].warning);
        assert!(changes(&new, &new, &[]).is_empty(), "no change, no event");
    }
}
