//! Reruns (`spec.rerunOf`): a new run that follows an earlier run's snapshots, keeps the
//! outcome of the steps it does not rerun, and takes over that run's ledger and workspace.
//!
//! The hand-over has one writer per side, so nothing is released twice: the source's own
//! reconcile moves its ledger into `status.handedOver` for the first rerun waiting (and only
//! while no cleanup of its own is removing it); the rerun waits, reads it from there, and
//! from then on its cleanup and deprovision steps release those resources. A failed source
//! whose composition sets `rerunWindow` holds its cleanup for that long, for a rerun to come.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use maestro_api::{
    CleanupStatus, CompositionRunStatus, Handover, RerunOf, StepKind, StepPhase, parse_duration,
};

use crate::{Action, ObservedRerun, graph::Graph};

use super::{
    Planner,
    conditions::{normal, set_condition},
    durations::add,
};

/// Whether a run that has ended still has work: a cleanup held for a rerun or under way
/// after the hold, or a rerun waiting for its ledger and workspace.
pub fn after_end_work(status: &CompositionRunStatus, reruns: &[ObservedRerun]) -> bool {
    if status.composition_spec.is_none() {
        return false; // never started (Invalid): nothing to hold or hand over
    }
    let cleanup = status.cleanup.as_ref().map(|c| c.phase);
    matches!(cleanup, Some(StepPhase::Pending | StepPhase::Running))
        || (status.handed_over.is_none() && !reruns.is_empty())
}

/// The steps a rerun runs again, by index: the `from` step, every step that did not
/// succeed in the source, and every approval gate (an approval is never reused), with
/// everything after them in the graph (a step after one that reruns may read its new
/// outputs, and must not start before a gate that asks again).
pub(super) fn rerun_steps(
    steps: &[maestro_api::Step],
    graph: &Graph,
    source: &CompositionRunStatus,
    from: Option<&str>,
) -> Result<BTreeSet<usize>, String> {
    let mut seeds = BTreeSet::new();
    if let Some(from) = from {
        let i = steps.iter().position(|s| s.name == from).ok_or_else(|| {
            let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
            format!(
                "spec.rerunOf.from: no step {from:?} in the composition (its steps: {})",
                names.join(", ")
            )
        })?;
        seeds.insert(i);
    }
    for (i, step) in steps.iter().enumerate() {
        let succeeded = source
            .steps
            .iter()
            .find(|s| s.name == step.name)
            .is_some_and(|s| s.phase == StepPhase::Succeeded);
        if !succeeded || matches!(step.kind(), Some(StepKind::Approval(_))) {
            seeds.insert(i);
        }
    }
    // Everything after a seed: walk the dependents until nothing changes.
    let mut rerun = seeds;
    loop {
        let before = rerun.len();
        for (i, deps) in graph.deps.iter().enumerate() {
            if deps.iter().any(|d| rerun.contains(d)) {
                rerun.insert(i);
            }
        }
        if rerun.len() == before {
            return Ok(rerun);
        }
    }
}

/// A fork step of a rerun that starts again only the children that failed in the source:
/// the source's step, when so. Not when the step reruns for another reason than its
/// children (it is the `from` step, or a step before it reruns, so its params may change)
/// or the source does not say which children failed.
fn keeps_children<'s>(
    i: usize,
    steps: &[maestro_api::Step],
    graph: &Graph,
    source: &'s CompositionRunStatus,
    rerun: &BTreeSet<usize>,
    of: &RerunOf,
) -> Option<&'s maestro_api::StepStatus> {
    let step = &steps[i];
    if !matches!(step.kind(), Some(StepKind::Fork(_)))
        || of.from.as_deref() == Some(step.name.as_str())
        || graph.deps[i].iter().any(|d| rerun.contains(d))
    {
        return None;
    }
    source
        .steps
        .iter()
        .find(|s| s.name == step.name)
        .filter(|s| s.phase == StepPhase::Failed && !s.failed_runs.is_empty())
}

impl Planner<'_> {
    /// Before a rerun starts: the source must have ended and handed its ledger and
    /// workspace to this very run. `Ok(false)`: not yet (the run stays Pending, saying
    /// why); `Err`: the rerun cannot be (it becomes Invalid).
    pub(super) fn rerun_may_start(&mut self, of: &RerunOf) -> Result<bool, String> {
        let source = self
            .input
            .observed
            .source
            .as_ref()
            .ok_or_else(|| gone(of))?;
        let waiting = if !source.phase.is_finished() {
            Some(format!("waiting for run {} to end", of.run))
        } else {
            match &source.handed_over {
                None => Some(format!(
                    "waiting for run {} to hand over its ledger and workspace",
                    of.run
                )),
                Some(h) if h.uid == self.input.uid => None,
                Some(h) => {
                    return Err(format!(
                        "spec.rerunOf: run {} was rerun already by {}, which took over its \
                         ledger and workspace; rerun {} instead",
                        of.run, h.run, h.run
                    ));
                }
            }
        };
        if let Some(why) = waiting {
            let now = self.input.now;
            // The source's changes do not wake its reruns: look again soon.
            self.requeue_at(add(now, std::time::Duration::from_secs(1)));
            set_condition(
                &mut self.plan.status.conditions,
                "Succeeded",
                "Unknown",
                "WaitingForSource",
                &why,
                now,
            );
            return Ok(false);
        }
        // A cleanup that ran has removed what the reused steps made (an instance their
        // outputs name): reusing them would point the rerun at nothing.
        let removed = source.cleanup.as_ref().filter(|c| c.attempts > 0);
        if let (Some(cleanup), None) = (removed, &of.from) {
            return Err(format!(
                "spec.rerunOf: the cleanup of run {} has removed its resources ({}); rerun \
                 it --from the step that makes them again (a composition's rerunWindow holds \
                 a failed run's resources for a rerun)",
                of.run,
                cleanup
                    .message
                    .as_deref()
                    .unwrap_or("see its status.cleanup")
            ));
        }
        Ok(true)
    }

    /// The first pass of a rerun, once its steps are listed: the steps it does not rerun
    /// take the source's outcome and outputs, the context and ledger come over, and the
    /// rerun works in the source's workspace.
    pub(super) fn seed_rerun(&mut self, of: &RerunOf) -> Result<(), String> {
        let Some(source) = self.input.observed.source.as_ref() else {
            return Err(gone(of));
        };
        let rerun = rerun_steps(
            &self.composition.steps,
            self.graph,
            source,
            of.from.as_deref(),
        )?;
        let mut reused = Vec::new();
        let mut again = Vec::new();
        for (i, st) in self.plan.status.steps.iter_mut().enumerate() {
            if rerun.contains(&i) {
                again.push(st.name.clone());
                if let Some(old) =
                    keeps_children(i, &self.composition.steps, self.graph, source, &rerun, of)
                {
                    st.child_runs = old.child_runs.clone();
                    st.reused_runs = old
                        .child_runs
                        .iter()
                        .filter(|c| !old.failed_runs.contains(c))
                        .cloned()
                        .collect();
                }
                continue;
            }
            if let Some(old) = source.steps.iter().find(|s| s.name == st.name) {
                *st = old.clone();
                st.message = Some(format!("reused from {}", of.run));
                reused.push(st.name.clone());
            }
        }
        if again.is_empty() {
            return Err(format!(
                "spec.rerunOf: every step of run {} succeeded: nothing to rerun; name a step \
                 to rerun from (spec.rerunOf.from)",
                of.run
            ));
        }
        let status = &mut self.plan.status;
        // What the source's steps put in the context comes over; the composition's own
        // entries are rendered from this run's params (which a rerun may change).
        for (key, value) in &source.context {
            if !self.composition.context.contains_key(key) {
                status.context.insert(key.clone(), value.clone());
            }
        }
        if let Some(handover) = &source.handed_over {
            status.resources = handover.resources.clone();
        }
        status.workspace_of = Some(
            source
                .workspace_of
                .clone()
                .unwrap_or_else(|| of.run.clone()),
        );
        let message = match reused.is_empty() {
            true => format!("reruns every step of {}", of.run),
            false => format!(
                "reruns {} of {}; reuses {}",
                again.join(", "),
                of.run,
                reused.join(", ")
            ),
        };
        set_condition(
            &mut status.conditions,
            "Rerun",
            "True",
            "Rerun",
            &message,
            self.input.now,
        );
        self.plan.events.push(normal("RerunStarted", message));
        Ok(())
    }

    /// Runs other than this one whose resources this run may release: those whose ledger
    /// it took over.
    pub(super) fn ledger_runs(&self) -> Vec<String> {
        let mut runs: Vec<String> = Vec::new();
        for entry in &self.plan.status.resources {
            if let Some(run) = &entry.run
                && run != self.input.run_name
                && !runs.contains(run)
            {
                runs.push(run.clone());
            }
        }
        runs
    }

    /// A failed run with leftovers whose composition sets a `rerunWindow`: its cleanup
    /// waits that long for a rerun. True when it now holds.
    pub(super) fn hold_for_rerun(&mut self, leftovers: usize) -> bool {
        let Some(window) = self
            .composition
            .rerun_window
            .as_deref()
            .and_then(|w| parse_duration(w).ok())
        else {
            return false;
        };
        let until = add(self.input.now, window);
        let message = format!(
            "held for a rerun until {until}: `kubectl maestro rerun {}` takes over {leftovers} \
             resource(s) ({}); then the cleanup policy applies",
            self.input.run_name,
            self.ledger_ids()
        );
        self.plan.status.cleanup = Some(CleanupStatus {
            phase: StepPhase::Pending,
            message: Some(message.clone()),
            held_until: Some(Time(until)),
            ..CleanupStatus::default()
        });
        self.plan.events.push(normal("CleanupHeld", message));
        self.requeue_at(until);
        true
    }

    /// A run that has ended: hands its ledger and workspace to the first rerun waiting,
    /// unless its own cleanup is removing them; else goes on with a held cleanup.
    pub(super) fn after_end(&mut self) {
        let removing = self
            .plan
            .status
            .cleanup
            .as_ref()
            .is_some_and(|c| c.phase == StepPhase::Running);
        if self.plan.status.handed_over.is_none()
            && !removing
            && let Some(rerun) = self.input.observed.reruns.first().cloned()
        {
            return self.hand_over(&rerun);
        }
        let phase = self.plan.status.phase;
        self.cleanup(&super::Outcome::new(phase, "", String::new()));
    }

    fn hand_over(&mut self, rerun: &ObservedRerun) {
        let run_name = self.input.run_name.to_string();
        let status = &mut self.plan.status;
        let mut resources = std::mem::take(&mut status.resources);
        for entry in &mut resources {
            entry.run.get_or_insert_with(|| run_name.clone());
        }
        let ids: Vec<String> = resources
            .iter()
            .map(|r| format!("{} {}", r.kind, r.id))
            .collect();
        let workspace = status
            .workspace_of
            .clone()
            .unwrap_or_else(|| run_name.clone());
        if !resources.is_empty() {
            status.cleanup = Some(CleanupStatus {
                phase: StepPhase::Skipped,
                message: Some(format!(
                    "handed over to rerun {}: {}",
                    rerun.name,
                    ids.join(", ")
                )),
                ..CleanupStatus::default()
            });
        }
        status.handed_over = Some(Handover {
            run: rerun.name.clone(),
            uid: rerun.uid.clone(),
            resources,
        });
        self.plan.actions.push(Action::ShareWorkspace {
            claim_of: workspace,
            run: rerun.name.clone(),
            uid: rerun.uid.clone(),
        });
        let message = match ids.is_empty() {
            true => format!("workspace handed over to rerun {}", rerun.name),
            false => format!(
                "ledger ({}) and workspace handed over to rerun {}",
                ids.join(", "),
                rerun.name
            ),
        };
        self.plan.events.push(normal("HandedOver", message));
    }
}

/// The source is gone (deleted, or another run under its name).
fn gone(of: &RerunOf) -> String {
    format!(
        "spec.rerunOf: run {} (uid {}) is gone; a rerun needs the run it reruns",
        of.run, of.uid
    )
}
