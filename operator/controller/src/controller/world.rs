//! The World: typed lookups over the reflector stores, the one place the controllers read
//! the caches. `run` and `agents` both read through it, so neither imports the other for
//! a lookup. A lookup by name uses `Store::get`; only "every X in a namespace" scans.

use std::{collections::BTreeMap, sync::Arc};

use kube::{Resource, ResourceExt, core::DeserializeGuard, runtime::reflector::ObjectRef};

use super::context::Context;
use k8s_openapi::api::core::v1::Pod;

use maestro_api::labels;
use maestro_api::{
    Agent, Approval, CompositionRun, CompositionRunStatus, CompositionSpec, RerunOf, Task, TaskSpec,
};
use maestro_engine::ObservedRerun;

/// A run from the cache, if it is there and well-formed.
pub fn run(ctx: &Context, ns: &str, name: &str) -> Option<CompositionRun> {
    let guard = ctx.runs.get(&ObjectRef::new(name).within(ns))?;
    guard.0.as_ref().ok().cloned()
}

/// The well-formed runs of a namespace, as the cache holds them: shared, never copied.
/// Every reconcile looks through its namespace's runs, so a copy of each (snapshots
/// included) made that O(runs) deep clones per reconcile: with 500 runs in flight, most of
/// the operator's CPU.
pub struct NamespaceRuns(Vec<Arc<DeserializeGuard<CompositionRun>>>);

impl NamespaceRuns {
    pub fn iter(&self) -> impl Iterator<Item = &CompositionRun> {
        self.0.iter().filter_map(|r| r.0.as_ref().ok())
    }
}

pub fn runs_in(ctx: &Context, ns: &str) -> NamespaceRuns {
    NamespaceRuns(
        ctx.runs
            .state()
            .into_iter()
            .filter(|r| r.namespace().as_deref() == Some(ns))
            .collect(),
    )
}

/// The status of the run a rerun names, if that very run (by UID) is in the cache.
pub fn rerun_source(ctx: &Context, ns: &str, of: &RerunOf) -> Option<CompositionRunStatus> {
    run(ctx, ns, &of.run)
        .filter(|r| r.uid().as_deref() == Some(of.uid.as_str()))
        .map(|r| r.status.unwrap_or_default())
}

/// The runs that rerun the run of UID `uid` and have not started, oldest first (by
/// creation, then name): the first takes over its ledger and workspace.
pub fn reruns_of(ctx: &Context, ns: &str, uid: &str) -> Vec<ObservedRerun> {
    let runs = runs_in(ctx, ns);
    let mut reruns: Vec<&CompositionRun> = runs
        .iter()
        .filter(|r| {
            r.spec.rerun_of.as_ref().is_some_and(|of| of.uid == uid)
                && r.status
                    .as_ref()
                    .is_none_or(|s| s.composition_spec.is_none() && !s.phase.is_finished())
        })
        .collect();
    reruns.sort_by(|a, b| {
        (a.creation_timestamp(), a.name_any()).cmp(&(b.creation_timestamp(), b.name_any()))
    });
    reruns
        .into_iter()
        .filter_map(|r| {
            Some(ObservedRerun {
                uid: r.uid()?,
                name: r.name_any(),
            })
        })
        .collect()
}

/// The live spec of a composition, if it is cached and well-formed.
pub fn composition(ctx: &Context, ns: &str, name: &str) -> Option<CompositionSpec> {
    let guard = ctx.compositions.get(&ObjectRef::new(name).within(ns))?;
    guard.0.as_ref().ok().map(|c| c.spec.clone())
}

/// The composition a run follows: the snapshot its status took at start, or (before it
/// started) the live composition it names.
pub fn composition_of_run(
    ctx: &Context,
    run: &CompositionRun,
    ns: &str,
) -> Option<CompositionSpec> {
    run.status
        .as_ref()
        .and_then(|s| s.composition_spec.clone())
        .and_then(|v| serde_json::from_value::<CompositionSpec>(v).ok())
        .or_else(|| composition(ctx, ns, &run.spec.composition))
}

/// A Task by name: the namespace's own first, then the library's.
pub fn task(ctx: &Context, ns: &str, name: &str) -> Option<Arc<Task>> {
    ctx.tasks.get(&ObjectRef::new(name).within(ns)).or_else(|| {
        ctx.tasks
            .get(&ObjectRef::new(name).within(&ctx.settings.library_namespace))
    })
}

/// The Tasks a composition's steps name, by name (a missing one is left out).
pub fn tasks_of(ctx: &Context, ns: &str, spec: &CompositionSpec) -> BTreeMap<String, TaskSpec> {
    tasks_named(ctx, ns, spec.steps.iter().filter_map(|s| s.task.as_deref()))
}

/// The Tasks a run needs: its composition's, plus the deprovision task, which the cleanup
/// of leftovers runs.
pub fn tasks_of_run(
    ctx: &Context,
    ns: &str,
    spec: Option<&CompositionSpec>,
) -> BTreeMap<String, TaskSpec> {
    let Some(spec) = spec else {
        return BTreeMap::new();
    };
    let cleanup = std::iter::once(maestro_api::BuiltinTask::Ec2Deprovision.as_str());
    tasks_named(
        ctx,
        ns,
        spec.steps
            .iter()
            .filter_map(|s| s.task.as_deref())
            .chain(cleanup),
    )
}

fn tasks_named<'a>(
    ctx: &Context,
    ns: &str,
    names: impl Iterator<Item = &'a str>,
) -> BTreeMap<String, TaskSpec> {
    names
        .filter_map(|name| Some((name.to_string(), task(ctx, ns, name)?.spec.clone())))
        .collect()
}

/// The Agents of a namespace that are not being deleted, by name.
pub fn agents_in(ctx: &Context, ns: &str) -> Vec<Agent> {
    let mut agents: Vec<Agent> = ctx
        .agents
        .state()
        .iter()
        .filter(|a| a.namespace().as_deref() == Some(ns) && a.meta().deletion_timestamp.is_none())
        .map(|a| (**a).clone())
        .collect();
    agents.sort_by_key(|a| a.name_any());
    agents
}

/// The cached pods of a namespace carrying `label=value` (a run's step pods, an Agent's).
pub fn pods_labelled(ctx: &Context, ns: &str, label: &str, value: &str) -> Vec<Arc<Pod>> {
    ctx.pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns)
                && p.labels().get(label).map(String::as_str) == Some(value)
        })
        .collect()
}

/// The step pods of a run.
pub fn pods_of_run(ctx: &Context, ns: &str, run: &str) -> Vec<Arc<Pod>> {
    pods_labelled(ctx, ns, labels::RUN, run)
}

/// The Approvals given for a run.
pub fn approvals_of_run(ctx: &Context, ns: &str, run: &str) -> Vec<Arc<Approval>> {
    ctx.approvals
        .state()
        .into_iter()
        .filter(|a| a.namespace().as_deref() == Some(ns) && a.spec.run == run)
        .collect()
}
