//! What one namespace's admissions decided that the caches may not show yet, and the
//! per-namespace locks that serialise them (see `agents` for why).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use maestro_api::RunAgent;

/// What this process decided that the caches may not show yet.
#[derive(Debug, Default)]
pub struct Admissions {
    /// Assignments written to runs' status, by `namespace/run`, until the run cache has them.
    pub(super) assigned: HashMap<String, RunAgent>,
    /// Step pods created, by `namespace/agent`, until the pod cache has them.
    pub(super) created: HashMap<String, Vec<(String, Instant)>>,
}

/// One [`Admissions`] per namespace, each behind its own async lock, so reconciles in
/// different namespaces never wait on each other.
#[derive(Debug, Default)]
pub struct AdmissionLocks {
    by_namespace: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Admissions>>>>,
}

impl AdmissionLocks {
    /// The lock of a namespace's admissions (made on first use). The map's own lock is
    /// held only to find the entry, never across an await.
    pub fn of(&self, ns: &str) -> Arc<tokio::sync::Mutex<Admissions>> {
        // A panic while the map was held cannot leave it half-updated: an entry is
        // either inserted whole or not at all.
        let mut map = self
            .by_namespace
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.entry(ns.to_string()).or_default().clone()
    }
}

impl Admissions {
    /// Remembers an assignment until the run cache shows it.
    pub fn assigned(&mut self, ns: &str, run: &str, agent: RunAgent) {
        self.assigned.insert(format!("{ns}/{run}"), agent);
    }

    /// The assignment this process wrote for a run, while the run cache may not show it.
    pub fn assignment_of(&self, ns: &str, run: &str) -> Option<RunAgent> {
        self.assigned.get(&format!("{ns}/{run}")).cloned()
    }

    /// Remembers a step pod created for `agent` until the pod cache shows it.
    pub fn created(&mut self, ns: &str, agent: &str, pod: &str) {
        self.created
            .entry(format!("{ns}/{agent}"))
            .or_default()
            .push((pod.to_string(), Instant::now()));
    }
}
