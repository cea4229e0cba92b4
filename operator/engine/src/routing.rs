//! Routing runs to Agent slots. Pure: the controller gathers the pools, which run holds
//! which slot, what each slot last ran and the queue, and asks where one run goes.
//!
//! The rules, in order:
//! - a run is eligible for the pools whose capabilities cover every capability its Tasks
//!   require; with none, it waits, and the reason names a capability no pool offers;
//! - a pool whose Agent is not Ready (a slot's cache claim is missing, or is someone
//!   else's) gets no run until it is Ready again: a run there would mount that claim;
//! - a slot holds one run at a time;
//! - the queue is served in priority order (higher first), then creation order: every run
//!   ahead is placed first, and a run only gets what is left;
//! - a free slot that last ran the run's composition (warm cache) is taken first;
//! - when every such slot is busy, the run waits for one until it has waited the pool's
//!   `affinityWait`; then it takes a free slot of the least-loaded eligible pool (fewest
//!   busy slots; ties by pool name, then slot index).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;

/// An Agent pool as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub capabilities: BTreeSet<String>,
    pub slots: u32,
    /// How long a run waits for its warm slot before it takes another.
    pub affinity_wait: Duration,
    /// Why the Agent is not Ready (its condition's reason and message), if it is not.
    pub not_ready: Option<String>,
}

/// One slot of one pool.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotRef {
    pub agent: String,
    pub index: u32,
}

/// What a slot last ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotHistory {
    pub composition: String,
    pub used: Timestamp,
}

/// A capability a run needs, and where the need comes from (for the waiting reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub capability: String,
    pub task: String,
    pub step: String,
}

/// A run waiting for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRun {
    pub name: String,
    pub composition: String,
    pub requires: Vec<Requirement>,
    pub priority: i32,
    /// When the run was created: its place in the queue, and the start of its wait.
    pub created: Timestamp,
}

/// Everything routing decides from.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    pub pools: Vec<Pool>,
    /// The slots held by active runs, and by which run.
    pub busy: BTreeMap<SlotRef, String>,
    /// What each slot last ran.
    pub history: BTreeMap<SlotRef, SlotHistory>,
    /// Every run waiting for a slot (in any order).
    pub queue: Vec<QueuedRun>,
    pub now: Option<Timestamp>,
}

/// Where a run goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Take this slot now.
    Assign { slot: SlotRef, cache_hit: bool },
    /// Wait; `retry_after` is when waiting may end by itself (an affinity wait runs out).
    Wait {
        reason: String,
        retry_after: Option<Duration>,
    },
}

impl Routing {
    /// Where `run` (one of the queue) goes now. Runs ahead of it in the queue are placed
    /// first, so two runs never count on the same free slot.
    pub fn route(&self, run: &str) -> Decision {
        let mut queue: Vec<&QueuedRun> = self.queue.iter().collect();
        queue.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.created.cmp(&b.created))
                .then(a.name.cmp(&b.name))
        });
        let mut busy = self.busy.clone();
        let mut ahead = Vec::new();
        for queued in queue {
            let decision = self.decide(queued, &busy, &ahead);
            if queued.name == run {
                return decision;
            }
            if let Decision::Assign { slot, .. } = decision {
                busy.insert(slot, queued.name.clone());
            }
            ahead.push(queued);
        }
        Decision::Wait {
            reason: format!("run {run} is not in the queue"),
            retry_after: None,
        }
    }

    /// The pools whose capabilities cover the run's requirements, Ready or not.
    fn covering(&self, run: &QueuedRun) -> impl Iterator<Item = &Pool> {
        self.pools.iter().filter(|p| {
            run.requires
                .iter()
                .all(|r| p.capabilities.contains(&r.capability))
        })
    }

    /// The Ready pools whose capabilities cover the run's requirements.
    fn eligible(&self, run: &QueuedRun) -> Vec<&Pool> {
        self.covering(run)
            .filter(|p| p.not_ready.is_none())
            .collect()
    }

    fn decide(
        &self,
        run: &QueuedRun,
        busy: &BTreeMap<SlotRef, String>,
        ahead: &[&QueuedRun],
    ) -> Decision {
        let pools = self.eligible(run);
        if pools.is_empty() {
            return Decision::Wait {
                reason: self.why_ineligible(run),
                retry_after: None,
            };
        }
        let slots = || {
            pools.iter().flat_map(|p| {
                (0..p.slots).map(move |index| {
                    (
                        *p,
                        SlotRef {
                            agent: p.name.clone(),
                            index,
                        },
                    )
                })
            })
        };
        let is_free = |slot: &SlotRef| !busy.contains_key(slot);
        // Warm slots: those that last ran this composition, most recent first.
        let mut warm: Vec<(&Pool, SlotRef, Timestamp)> = slots()
            .filter_map(|(pool, slot)| {
                let last = self.history.get(&slot)?;
                (last.composition == run.composition).then_some((pool, slot, last.used))
            })
            .collect();
        warm.sort_by(|a, b| b.2.cmp(&a.2).then(a.1.cmp(&b.1)));
        if let Some((_, slot, _)) = warm.iter().find(|(_, slot, _)| is_free(slot)) {
            return Decision::Assign {
                slot: slot.clone(),
                cache_hit: true,
            };
        }
        let waited = self
            .now
            .map(|now| Duration::try_from(now.duration_since(run.created)).unwrap_or_default())
            .unwrap_or_default();
        let affinity = warm
            .iter()
            .map(|(pool, slot, _)| (pool.affinity_wait, slot))
            .filter(|(wait, _)| waited < *wait)
            .max_by_key(|(wait, _)| *wait);
        if let Some((wait, slot)) = affinity {
            return Decision::Wait {
                reason: format!(
                    "waiting up to {}s for slot {} of agent {}, which last ran composition {} (warm cache)",
                    wait.as_secs(),
                    slot.index,
                    slot.agent,
                    run.composition
                ),
                retry_after: Some(wait.saturating_sub(waited)),
            };
        }
        let load = |pool: &Pool| {
            busy.keys()
                .filter(|s| s.agent == pool.name && s.index < pool.slots)
                .count()
        };
        let cold = slots()
            .filter(|(_, slot)| is_free(slot))
            .min_by(|(pa, sa), (pb, sb)| load(pa).cmp(&load(pb)).then(sa.cmp(sb)));
        if let Some((_, slot)) = cold {
            return Decision::Assign {
                slot,
                cache_hit: false,
            };
        }
        let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        let waiting_ahead = ahead
            .iter()
            .filter(|other| {
                self.eligible(other)
                    .iter()
                    .any(|p| names.contains(&p.name.as_str()))
            })
            .count();
        Decision::Wait {
            reason: format!(
                "waiting for a free slot of agents {} ({waiting_ahead} runs ahead)",
                names.join(", ")
            ),
            retry_after: None,
        }
    }

    /// Why no pool fits: a capability no pool offers, or no pool offering all together.
    fn why_ineligible(&self, run: &QueuedRun) -> String {
        if self.pools.is_empty() {
            return "no Agent in the namespace".into();
        }
        let unready: Vec<String> = self
            .covering(run)
            .filter_map(|p| Some(format!("{} ({})", p.name, p.not_ready.as_ref()?)))
            .collect();
        if !unready.is_empty() {
            return format!(
                "every Agent that could take it is not Ready: {}",
                unready.join("; ")
            );
        }
        let missing = run.requires.iter().find(|r| {
            !self
                .pools
                .iter()
                .any(|p| p.capabilities.contains(&r.capability))
        });
        if let Some(r) = missing {
            return format!(
                "no Agent offers capability {:?} (required by task {} of step {})",
                r.capability, r.task, r.step
            );
        }
        let all: BTreeSet<&str> = run.requires.iter().map(|r| r.capability.as_str()).collect();
        let all: Vec<String> = all.iter().map(|c| format!("{c:?}")).collect();
        format!(
            "no Agent offers all of capabilities {} together",
            all.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn pool(name: &str, caps: &[&str], slots: u32, wait_secs: u64) -> Pool {
        Pool {
            name: name.into(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            slots,
            affinity_wait: Duration::from_secs(wait_secs),
            not_ready: None,
        }
    }

    fn run(name: &str, composition: &str, caps: &[&str], priority: i32, created: i64) -> QueuedRun {
        QueuedRun {
            name: name.into(),
            composition: composition.into(),
            requires: caps
                .iter()
                .map(|c| Requirement {
                    capability: c.to_string(),
                    task: format!("{c}-task"),
                    step: "build".into(),
                })
                .collect(),
            priority,
            created: t(created),
        }
    }

    fn slot(agent: &str, index: u32) -> SlotRef {
        SlotRef {
            agent: agent.into(),
            index,
        }
    }

    fn assigned(d: &Decision) -> (String, u32, bool) {
        match d {
            Decision::Assign { slot, cache_hit } => (slot.agent.clone(), slot.index, *cache_hit),
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    fn reason(d: &Decision) -> String {
        match d {
            Decision::Wait { reason, .. } => reason.clone(),
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn missing_capability_is_named() {
        let r = Routing {
            pools: vec![pool("a", &["aws"], 2, 30)],
            queue: vec![run("r1", "c", &["aws", "maven"], 0, 0)],
            now: Some(t(1)),
            ..Routing::default()
        };
        let why = reason(&r.route("r1"));
        assert_eq!(
            why,
            r#"no Agent offers capability "maven" (required by task maven-task of step build)"#
        );
    }

    #[test]
    fn capabilities_split_over_pools_are_not_enough() {
        let r = Routing {
            pools: vec![pool("a", &["aws"], 1, 30), pool("b", &["maven"], 1, 30)],
            queue: vec![run("r1", "c", &["aws", "maven"], 0, 0)],
            now: Some(t(1)),
            ..Routing::default()
        };
        assert!(reason(&r.route("r1")).contains(r#""aws", "maven" together"#));
    }

    #[test]
    fn only_pools_covering_the_requirements_are_used() {
        let r = Routing {
            pools: vec![pool("a", &[], 1, 30), pool("b", &["maven", "aws"], 1, 30)],
            queue: vec![run("r1", "c", &["maven"], 0, 0)],
            now: Some(t(1)),
            ..Routing::default()
        };
        assert_eq!(assigned(&r.route("r1")), ("b".into(), 0, false));
    }

    #[test]
    fn warm_slot_is_preferred() {
        let r = Routing {
            pools: vec![pool("a", &[], 3, 30)],
            history: BTreeMap::from([
                (
                    slot("a", 0),
                    SlotHistory {
                        composition: "other".into(),
                        used: t(0),
                    },
                ),
                (
                    slot("a", 2),
                    SlotHistory {
                        composition: "c".into(),
                        used: t(0),
                    },
                ),
            ]),
            queue: vec![run("r1", "c", &[], 0, 10)],
            now: Some(t(11)),
            ..Routing::default()
        };
        assert_eq!(assigned(&r.route("r1")), ("a".into(), 2, true));
    }

    #[test]
    fn the_most_recently_used_warm_slot_wins() {
        let history = |used| SlotHistory {
            composition: "c".into(),
            used: t(used),
        };
        let r = Routing {
            pools: vec![pool("a", &[], 2, 30)],
            history: BTreeMap::from([(slot("a", 0), history(1)), (slot("a", 1), history(5))]),
            queue: vec![run("r1", "c", &[], 0, 10)],
            now: Some(t(11)),
            ..Routing::default()
        };
        assert_eq!(assigned(&r.route("r1")), ("a".into(), 1, true));
    }

    #[test]
    fn busy_warm_slot_is_waited_for_then_another_is_taken() {
        let mut r = Routing {
            pools: vec![pool("a", &[], 2, 5)],
            busy: BTreeMap::from([(slot("a", 0), "r0".to_string())]),
            history: BTreeMap::from([(
                slot("a", 0),
                SlotHistory {
                    composition: "c".into(),
                    used: t(0),
                },
            )]),
            queue: vec![run("r1", "c", &[], 0, 10)],
            now: Some(t(12)),
        };
        match r.route("r1") {
            Decision::Wait {
                reason,
                retry_after,
            } => {
                assert!(reason.contains("slot 0 of agent a"), "{reason}");
                assert_eq!(retry_after, Some(Duration::from_secs(3)));
            }
            other => panic!("expected a wait, got {other:?}"),
        }
        r.now = Some(t(15));
        assert_eq!(assigned(&r.route("r1")), ("a".into(), 1, false));
    }

    #[test]
    fn least_loaded_pool_is_taken_for_a_cold_run() {
        let r = Routing {
            pools: vec![pool("a", &[], 3, 30), pool("b", &[], 3, 30)],
            busy: BTreeMap::from([
                (slot("a", 0), "x".to_string()),
                (slot("a", 1), "y".to_string()),
                (slot("b", 2), "z".to_string()),
            ]),
            queue: vec![run("r1", "c", &[], 0, 0)],
            now: Some(t(1)),
            ..Routing::default()
        };
        assert_eq!(assigned(&r.route("r1")), ("b".into(), 0, false));
    }

    #[test]
    fn nothing_free_waits_with_the_runs_ahead() {
        let r = Routing {
            pools: vec![pool("a", &[], 1, 30), pool("b", &["maven"], 1, 30)],
            busy: BTreeMap::from([
                (slot("a", 0), "x".to_string()),
                (slot("b", 0), "y".to_string()),
            ]),
            queue: vec![
                run("r1", "c", &[], 0, 0),
                run("r2", "c", &[], 0, 1),
                run("r3", "c", &[], 0, 2),
            ],
            now: Some(t(3)),
            ..Routing::default()
        };
        assert_eq!(
            reason(&r.route("r3")),
            "waiting for a free slot of agents a, b (2 runs ahead)"
        );
    }

    #[test]
    fn queue_is_served_by_priority_then_age() {
        let r = Routing {
            pools: vec![pool("a", &[], 1, 30)],
            queue: vec![
                run("old", "c", &[], 0, 0),
                run("urgent", "c", &[], 5, 9),
                run("young", "c", &[], 0, 5),
            ],
            now: Some(t(10)),
            ..Routing::default()
        };
        assert_eq!(assigned(&r.route("urgent")), ("a".into(), 0, false));
        assert!(reason(&r.route("old")).contains("1 runs ahead"));
        assert!(reason(&r.route("young")).contains("2 runs ahead"));
    }

    #[test]
    fn a_run_ahead_that_cannot_use_the_slot_does_not_block_it() {
        let r = Routing {
            pools: vec![pool("a", &[], 1, 30)],
            queue: vec![
                run("needs-maven", "c", &["maven"], 0, 0),
                run("plain", "c", &[], 0, 1),
            ],
            now: Some(t(2)),
            ..Routing::default()
        };
        assert_eq!(assigned(&r.route("plain")), ("a".into(), 0, false));
    }

    #[test]
    fn two_runs_never_get_the_same_slot() {
        let r = Routing {
            pools: vec![pool("a", &[], 2, 30)],
            queue: vec![
                run("r1", "c", &[], 0, 0),
                run("r2", "c", &[], 0, 1),
                run("r3", "c", &[], 0, 2),
            ],
            now: Some(t(3)),
            ..Routing::default()
        };
        assert_eq!(assigned(&r.route("r1")), ("a".into(), 0, false));
        assert_eq!(assigned(&r.route("r2")), ("a".into(), 1, false));
        assert!(reason(&r.route("r3")).contains("2 runs ahead"));
    }

    #[test]
    fn slots_beyond_a_shrunk_pool_are_not_used() {
        let r = Routing {
            pools: vec![pool("a", &[], 1, 30)],
            busy: BTreeMap::from([(slot("a", 3), "old".to_string())]),
            queue: vec![run("r1", "c", &[], 0, 0)],
            now: Some(t(1)),
            ..Routing::default()
        };
        assert_eq!(assigned(&r.route("r1")), ("a".into(), 0, false));
    }

    #[test]
    fn a_pool_that_is_not_ready_gets_no_run_and_the_reason_names_it() {
        let mut broken = pool("broken", &["linux"], 2, 0);
        broken.not_ready = Some("CacheClaimFailed: slot 1: claim x is not ours".into());
        let routing = Routing {
            pools: vec![broken.clone()],
            queue: vec![run("r", "c", &["linux"], 0, 0)],
            now: Some(t(0)),
            ..Routing::default()
        };
        let why = reason(&routing.route("r"));
        assert!(why.contains("not Ready"), "{why}");
        assert!(why.contains("broken (CacheClaimFailed: slot 1"), "{why}");
        // A Ready pool beside it takes the run.
        let routing = Routing {
            pools: vec![broken, pool("fine", &["linux"], 1, 0)],
            ..routing
        };
        assert_eq!(assigned(&routing.route("r")).0, "fine");
    }
}
