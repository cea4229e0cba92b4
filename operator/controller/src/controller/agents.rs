//! Agents in the controller: routing a run to a slot (from the caches, through the pure
//! [`maestro_engine::routing`]), the capacity left for new step pods, and a slot's cache
//! claim. The Agent controller (`agent`) builds each Agent's status from these.
//!
//! Every decision that takes a slot or starts a step pod of an Agent is made while holding
//! the namespace's lock in `Context::admissions`: kube-runtime reconciles runs
//! concurrently, and two reconciles must never both see the same slot free, or both see
//! room for the last pod. Agents, slots and capacity never span namespaces, so one lock
//! per namespace keeps that guarantee without making other namespaces wait.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use k8s_openapi::{api::core::v1::PersistentVolumeClaim, jiff::Timestamp};
use kube::{Api, Resource, ResourceExt};

use super::admission::Admissions;
use super::context::{Context, Error};
use super::{pods, world};
use crate::k8s::{self, Created};
use maestro_api::labels;
use maestro_api::{Agent, CompositionRun, CompositionSpec, RunAgent, TaskSpec, parse_duration};
use maestro_engine::routing::{Pool, QueuedRun, Requirement, Routing, SlotHistory, SlotRef};

/// Default of an Agent's `affinityWait`.
const DEFAULT_AFFINITY_WAIT: Duration = Duration::from_secs(30);
/// How long a pod this process created is counted before the pod cache shows it.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(60);

/// The capabilities a composition's steps require, each with the task and step needing it.
pub fn requirements(
    spec: &CompositionSpec,
    tasks: &BTreeMap<String, TaskSpec>,
) -> Vec<Requirement> {
    let mut out = Vec::new();
    for step in &spec.steps {
        let Some(name) = &step.task else { continue };
        for capability in tasks.get(name).iter().flat_map(|t| &t.requires) {
            out.push(Requirement {
                capability: capability.clone(),
                task: name.clone(),
                step: step.name.clone(),
            });
        }
    }
    out
}

pub(super) fn pool(agent: &Agent) -> Pool {
    Pool {
        name: agent.name_any(),
        capabilities: agent.spec.capabilities.iter().cloned().collect(),
        slots: agent.spec.slots,
        affinity_wait: agent
            .spec
            .affinity_wait
            .as_deref()
            .and_then(|w| parse_duration(w).ok())
            .unwrap_or(DEFAULT_AFFINITY_WAIT),
        // Only an explicit Ready=False counts: a new Agent, before its first status, is
        // usable (its claims are made when a run is routed to it).
        not_ready: agent
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .filter(|c| c.status == "False")
            .map(|c| format!("{}: {}", c.reason, c.message)),
    }
}

/// A top-level run (children share their parent's slot and never hold one of their own).
pub(super) fn top_level(run: &CompositionRun) -> bool {
    !run.labels().contains_key(labels::PARENT_RUN)
}

fn slot_of(agent: &RunAgent) -> SlotRef {
    SlotRef {
        agent: agent.name.clone(),
        index: agent.slot,
    }
}

/// The run's assignment as the cache shows it, or as this process just made it.
fn assignment(run: &CompositionRun, ns: &str, admissions: &Admissions) -> Option<RunAgent> {
    run.status
        .as_ref()
        .and_then(|s| s.agent.clone())
        .or_else(|| {
            admissions
                .assigned
                .get(&format!("{ns}/{}", run.name_any()))
                .cloned()
        })
}

/// Whether a run still waits for a slot: top-level, not ended, not stopping, unassigned.
fn waiting(run: &CompositionRun, ns: &str, admissions: &Admissions) -> bool {
    let status = run.status.as_ref();
    top_level(run)
        && !status.is_some_and(|s| s.phase.is_finished())
        && status.is_none_or(|s| s.start_time.is_none())
        && !run.spec.cancel
        && run.meta().deletion_timestamp.is_none()
        && assignment(run, ns, admissions).is_none()
}

/// The composition a not-yet-started run would follow, and its requirements.
pub(super) fn run_requirements(run: &CompositionRun, ns: &str, ctx: &Context) -> Vec<Requirement> {
    let spec = world::composition_of_run(ctx, run, ns);
    let Some(spec) = spec else {
        return Vec::new();
    };
    let tasks = world::tasks_of_run(ctx, ns, Some(&spec));
    requirements(&spec, &tasks)
}

/// What routing decides from, for a namespace: its pools, held slots, slot history and
/// queue, from the caches and this process's fresh decisions.
pub fn routing_input(
    ctx: &Context,
    ns: &str,
    agents: &[Agent],
    admissions: &Admissions,
    now: Timestamp,
) -> Routing {
    let runs = world::runs_in(ctx, ns);
    let mut busy = BTreeMap::new();
    let mut history: BTreeMap<SlotRef, SlotHistory> = BTreeMap::new();
    let mut remember = |slot: SlotRef, composition: &str, used: Option<Timestamp>| {
        let Some(used) = used else { return };
        let newer = history.get(&slot).is_none_or(|h| h.used < used);
        if newer {
            history.insert(
                slot,
                SlotHistory {
                    composition: composition.to_string(),
                    used,
                },
            );
        }
    };
    // The Agents' status keeps what a slot last ran after its runs are deleted.
    for agent in agents {
        for slot in agent.status.iter().flat_map(|s| &s.slots) {
            if let Some(composition) = &slot.last_composition {
                remember(
                    SlotRef {
                        agent: agent.name_any(),
                        index: slot.index,
                    },
                    composition,
                    slot.last_used.as_ref().map(|t| t.0),
                );
            }
        }
    }
    let mut queue = Vec::new();
    for run in runs.iter().filter(|r| top_level(r)) {
        let finished = run.status.as_ref().is_some_and(|s| s.phase.is_finished());
        if let Some(agent) = assignment(run, ns, admissions) {
            let slot = slot_of(&agent);
            remember(
                slot.clone(),
                &run.spec.composition,
                agent.assigned_time.as_ref().map(|t| t.0),
            );
            if !finished {
                busy.insert(slot, run.name_any());
            }
        } else if waiting(run, ns, admissions) {
            queue.push(QueuedRun {
                name: run.name_any(),
                composition: run.spec.composition.clone(),
                requires: run_requirements(run, ns, ctx),
                priority: run.spec.priority,
                created: run.meta().creation_timestamp.as_ref().map_or(now, |t| t.0),
            });
        }
    }
    Routing {
        pools: agents.iter().map(pool).collect(),
        busy,
        history,
        queue,
        now: Some(now),
    }
}

/// The settings of the pods of a run on `agent`'s slot.
pub fn placement(agent: &Agent, slot: u32) -> pods::Placement {
    let name = agent.name_any();
    let cache = match agent.spec.cache.as_ref().and_then(|c| c.host_path.as_ref()) {
        Some(host) => pods::SlotCache::HostPath(pods::slot_host_path(&host.path, slot)),
        None => pods::SlotCache::Claim(pods::slot_claim_name(&name, slot)),
    };
    pods::Placement {
        agent: name,
        slot,
        template: agent.spec.template.clone().unwrap_or_default(),
        cache,
    }
}

/// How many more step pods `agent` may start now: its capacity less its live step pods
/// (from the pod cache, plus those this process created that the cache does not show yet).
pub fn free_capacity(ctx: &Context, ns: &str, agent: &Agent, admissions: &mut Admissions) -> u32 {
    let name = agent.name_any();
    let cached: Vec<(String, bool)> = world::pods_labelled(ctx, ns, labels::AGENT, &name)
        .iter()
        .map(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            (
                p.name_any(),
                !matches!(phase, Some("Succeeded") | Some("Failed")),
            )
        })
        .collect();
    let live = cached.iter().filter(|(_, live)| *live).count();
    let in_flight = admissions
        .created
        .entry(format!("{ns}/{name}"))
        .or_default();
    in_flight.retain(|(pod, at)| {
        at.elapsed() < IN_FLIGHT_GRACE && !cached.iter().any(|(name, _)| name == pod)
    });
    let used = u32::try_from(live + in_flight.len()).unwrap_or(u32::MAX);
    agent.spec.capacity.saturating_sub(used)
}

/// What [`ensure_slot_claim`] found to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimMade {
    Created,
    /// A claim of that name was there already (whose it is, the Agent controller checks).
    Existed,
    /// The Agent caches on hostPath, or is not stored yet (no UID to own a claim).
    NotNeeded,
}

/// Makes sure a slot's cache claim exists (AlreadyExists is fine), in PVC mode.
pub async fn ensure_slot_claim(
    ctx: &Context,
    agent: &Agent,
    slot: u32,
) -> Result<ClaimMade, Error> {
    let cache = agent.spec.cache.clone().unwrap_or_default();
    if cache.host_path.is_some() {
        return Ok(ClaimMade::NotNeeded);
    }
    let claim = cache
        .persistent_volume_claim
        .unwrap_or_else(|| maestro_api::CacheClaim {
            storage_class_name: None,
            size: "1Gi".into(),
        });
    let ns = agent.namespace().ok_or(Error::NoNamespace)?;
    let Some(owner) = agent.controller_owner_ref(&()) else {
        return Ok(ClaimMade::NotNeeded);
    };
    let pvc = pods::slot_claim(&agent.name_any(), slot, &ns, owner, &claim);
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let name = pvc.name_any();
    let created = k8s::create_or_existing(&api, &pvc)
        .await
        .map_err(|source| Error::CreateClaim {
            name: name.clone(),
            source,
        })?;
    Ok(match created {
        Created::Created => {
            tracing::info!(claim = %name, "created slot cache claim");
            ClaimMade::Created
        }
        Created::Existed => ClaimMade::Existed,
    })
}

/// Drops remembered assignments that the run cache now shows, or whose run is gone.
pub fn forget_seen(ctx: &Context, admissions: &mut Admissions) {
    // For each cached run: whether the cache shows its assignment already.
    let shown: HashMap<String, bool> = ctx
        .runs
        .state()
        .iter()
        .filter_map(|r| r.0.as_ref().ok())
        .filter_map(|r| {
            let has_agent = r.status.as_ref().is_some_and(|s| s.agent.is_some());
            Some((format!("{}/{}", r.namespace()?, r.name_any()), has_agent))
        })
        .collect();
    admissions
        .assigned
        .retain(|key, _| shown.get(key) == Some(&false));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_name_the_task_and_step() {
        let spec: CompositionSpec = serde_yaml::from_str(
            r#"
steps:
  - {name: build, task: mvn}
  - {name: up, task: ec2-provision}
  - {name: gate, approval: {}}
"#,
        )
        .unwrap();
        let tasks: BTreeMap<String, TaskSpec> = serde_yaml::from_str(
            r#"
mvn: {builtin: shell, requires: [maven, java]}
ec2-provision: {builtin: ec2-provision, requires: [aws]}
"#,
        )
        .unwrap();
        let got: Vec<(String, String, String)> = requirements(&spec, &tasks)
            .into_iter()
            .map(|r| (r.capability, r.task, r.step))
            .collect();
        assert_eq!(
            got,
            vec![
                ("maven".into(), "mvn".into(), "build".into()),
                ("java".into(), "mvn".into(), "build".into()),
                ("aws".into(), "ec2-provision".into(), "up".into()),
            ]
        );
    }

    fn agent(spec: serde_json::Value) -> Agent {
        Agent::new("pool", serde_json::from_value(spec).unwrap())
    }

    #[test]
    fn placement_mounts_the_slot_claim_or_host_directory() {
        let claim = placement(&agent(serde_json::json!({"capacity": 1, "slots": 3})), 2);
        assert_eq!(
            claim.cache,
            pods::SlotCache::Claim("pool-cache-2".into()),
            "a claim per slot by default"
        );
        let host = placement(
            &agent(serde_json::json!({
                "capacity": 1,
                "cache": {"hostPath": {"path": "/var/cache/maestro"}},
                "template": {"image": "agent:7"}
            })),
            0,
        );
        assert_eq!(
            host.cache,
            pods::SlotCache::HostPath("/var/cache/maestro/0".into())
        );
        assert_eq!(host.template.image.as_deref(), Some("agent:7"));
    }

    #[test]
    fn affinity_wait_defaults_to_30s() {
        let p = pool(&agent(serde_json::json!({"capacity": 1})));
        assert_eq!(p.affinity_wait, DEFAULT_AFFINITY_WAIT);
        assert_eq!(p.slots, 1);
        let p = pool(&agent(
            serde_json::json!({"capacity": 1, "affinityWait": "1m30s", "capabilities": ["maven"]}),
        ));
        assert_eq!(p.affinity_wait, Duration::from_secs(90));
        assert!(p.capabilities.contains("maven"));
    }
}
