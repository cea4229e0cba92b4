//! A run's lifecycle: its start, the start and end of each step, deadlines, cancelling,
//! and the run's outcome and end.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value as Json;

use crate::{Action, NewRun, expr};
use maestro_api::{
    BuiltinTask, CompositionSpec, RunPhase, StepKind, StepPhase, StepStatus, TaskSpec, WaitMode,
    labels, parse_duration,
};

use super::{
    Outcome, Planner,
    conditions::{normal, routine, set_condition, warning},
    durations::{add, human},
    inputs::{json_text, render_params},
};

impl Planner<'_> {
    /// First pass of a valid run: snapshot the composition, list its steps, start the clock.
    pub(super) fn start(&mut self) -> Result<(), String> {
        let now = self.input.now;
        let status = &mut self.plan.status;
        if status.composition_spec.is_none() {
            status.composition_spec = serde_json::to_value(self.composition).ok();
        }
        if status.task_specs.is_none() {
            status.task_specs = serde_json::to_value(used_tasks(self.composition, self.tasks)).ok();
        }
        if status.steps.len() != self.composition.steps.len()
            || status
                .steps
                .iter()
                .zip(&self.composition.steps)
                .any(|(s, c)| s.name != c.name)
        {
            status.steps = self
                .composition
                .steps
                .iter()
                .map(|s| StepStatus {
                    name: s.name.clone(),
                    ..StepStatus::default()
                })
                .collect();
        }
        if status.phase == RunPhase::Pending || status.phase == RunPhase::Queued {
            status.phase = RunPhase::Running;
            status.start_time.get_or_insert(Time(now));
            set_condition(
                &mut status.conditions,
                "Succeeded",
                "Unknown",
                "Running",
                "the run has started",
                now,
            );
            self.plan.events.push(normal(
                "RunStarted",
                format!("run of {} started", self.input.spec.composition),
            ));
        }
        self.plan
            .status
            .context
            .entry("workspace".into())
            .or_insert_with(|| "/workspace".into());
        // The composition's context entries, rendered once, when the run starts.
        let missing: Vec<(&String, &String)> = self
            .composition
            .context
            .iter()
            .filter(|(k, _)| !self.plan.status.context.contains_key(*k))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let scope = self.scope();
        let mut problems = Vec::new();
        let mut rendered = Vec::new();
        for (key, value) in missing {
            match expr::render(&Json::String(value.clone()), &scope) {
                Ok(v) => rendered.push((key.clone(), json_text(v))),
                Err(e) => problems.push(format!("spec.context.{key}: {e}")),
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        self.plan.status.context.extend(rendered);
        Ok(())
    }

    pub(super) fn advance_step(&mut self, i: usize) {
        let step = &self.composition.steps[i];
        match self.plan.status.steps[i].phase {
            StepPhase::Pending => self.maybe_start_step(i),
            StepPhase::Running => self.watch_running(i),
            StepPhase::Retrying => self.maybe_retry(i),
            StepPhase::WaitingApproval => self.watch_approval(step, i),
            StepPhase::Succeeded
            | StepPhase::Failed
            | StepPhase::Skipped
            | StepPhase::Cancelled => {}
        }
    }

    /// A step fails the run when it failed without `continueOnFailure`.
    pub(super) fn halted_by(&self) -> Option<String> {
        self.plan
            .status
            .steps
            .iter()
            .zip(&self.composition.steps)
            .find(|(s, c)| s.phase == StepPhase::Failed && !c.continue_on_failure)
            .map(|(s, _)| s.name.clone())
    }

    pub(super) fn maybe_start_step(&mut self, i: usize) {
        if let Some(failed) = self.halted_by() {
            return self.finish_step(
                i,
                StepPhase::Skipped,
                format!("not started: step {failed:?} failed"),
            );
        }
        let ready = self.graph.deps[i]
            .iter()
            .all(|&d| self.plan.status.steps[d].phase.is_finished());
        if !ready {
            return;
        }
        let step = &self.composition.steps[i];
        let scope = self.scope();
        if let Some(when) = &step.when {
            match expr::eval_condition(when, &scope) {
                Ok(true) => {}
                Ok(false) => {
                    return self.finish_step(
                        i,
                        StepPhase::Skipped,
                        format!("when is false: {when}"),
                    );
                }
                Err(e) => return self.finish_step(i, StepPhase::Failed, format!("when: {e}")),
            }
        }
        // Graph validation has failed the run already for a step of no or two kinds.
        let Some(kind) = step.kind() else { return };
        if matches!(kind, StepKind::Task(_)) && !self.take_pod_budget() {
            return self.wait_for_capacity(i);
        }
        let now = self.input.now;
        self.plan.status.steps[i].start_time = Some(Time(now));
        let targets: Vec<String> = match kind {
            StepKind::Task(task) => return self.start_attempt(i, task, 1),
            StepKind::Approval(gate) => {
                let st = &mut self.plan.status.steps[i];
                st.phase = StepPhase::WaitingApproval;
                st.message = Some(
                    gate.message
                        .clone()
                        .unwrap_or_else(|| "waiting for approval".into()),
                );
                self.plan.events.push(normal(
                    "StepWaitingApproval",
                    format!("step {} waits for approval", step.name),
                ));
                return self.watch_approval(step, i);
            }
            StepKind::WaitFor(wait) => {
                self.plan.status.steps[i].phase = StepPhase::Running;
                if wait.mode == WaitMode::Running {
                    let running = self
                        .other_runs(&wait.composition)
                        .filter(|r| !r.phase.is_finished())
                        .min_by_key(|r| r.created)
                        .map(|r| r.name.clone());
                    match running {
                        Some(name) => {
                            self.plan.status.steps[i].child_runs = vec![name.clone()];
                            self.plan.status.steps[i].message =
                                Some(format!("waiting for run {name}"));
                        }
                        None => {
                            return self.finish_step(
                                i,
                                StepPhase::Succeeded,
                                format!("no run of {} in progress", wait.composition),
                            );
                        }
                    }
                }
                self.plan.events.push(routine(
                    "StepStarted",
                    format!("step {} waits for {}", step.name, wait.composition),
                ));
                return self.watch_running(i);
            }
            StepKind::Call(one) => vec![one.to_string()],
            StepKind::Fork(many) => many.to_vec(),
        };
        if self.input.depth >= labels::MAX_RUN_DEPTH {
            let message = too_deep(self.input.depth, self.input.chain);
            self.plan.events.push(warning(
                "StepFailed",
                format!("step {}: {message}", step.name),
            ));
            return self.finish_step(i, StepPhase::Failed, message);
        }
        {
            let params = match render_params(step, &scope) {
                Ok(p) => p,
                Err(e) => return self.finish_step(i, StepPhase::Failed, e),
            };
            // A rerun's fork keeps the children that succeeded in its source (seed_rerun
            // lists them, at their places among the source's children).
            let st = &self.plan.status.steps[i];
            let kept = |n: usize| {
                st.child_runs
                    .get(n)
                    .filter(|name| st.reused_runs.contains(name))
                    .cloned()
            };
            let names: Vec<String> = (0..targets.len())
                .map(|n| {
                    kept(n).unwrap_or_else(|| {
                        labels::child_run_name(self.input.run_name, &step.name, n)
                    })
                })
                .collect();
            let reused = st.reused_runs.clone();
            let started: Vec<&str> = names
                .iter()
                .filter(|n| !reused.contains(n))
                .map(String::as_str)
                .collect();
            let started = started.join(", ");
            let st = &mut self.plan.status.steps[i];
            st.phase = StepPhase::Running;
            st.child_runs = names.clone();
            st.message = Some(match reused.is_empty() {
                true => format!("started {started}"),
                false => format!("started {started}; reuses {}", reused.join(", ")),
            });
            for (name, target) in names.iter().zip(targets) {
                if reused.contains(name) {
                    continue;
                }
                self.plan.actions.push(Action::CreateRun(NewRun {
                    name: name.clone(),
                    composition: target,
                    params: params.clone(),
                    step: Some(step.name.clone()),
                    owned: true,
                    started_by: self.input.spec.started_by.clone(),
                }));
            }
            self.plan.events.push(routine(
                "StepStarted",
                format!("step {} started {started}", step.name),
            ));
        }
    }

    pub(super) fn finish_step(&mut self, i: usize, phase: StepPhase, message: String) {
        let now = self.input.now;
        let st = &mut self.plan.status.steps[i];
        st.phase = phase;
        st.finish_time = Some(Time(now));
        st.next_attempt_time = None;
        st.message = (!message.is_empty()).then_some(message);
    }

    /// Stops every step that has not ended: its pod is deleted, its child runs cancelled.
    pub(super) fn cancel_steps(&mut self) {
        for i in 0..self.composition.steps.len() {
            let st = &self.plan.status.steps[i];
            if st.phase.is_finished() {
                continue;
            }
            if st.phase == StepPhase::Running {
                if let Some(pod) = st
                    .pod_name
                    .clone()
                    .filter(|_| matches!(self.composition.steps[i].kind(), Some(StepKind::Task(_))))
                {
                    self.plan.actions.push(Action::DeletePod { name: pod });
                }
                if !matches!(self.composition.steps[i].kind(), Some(StepKind::WaitFor(_))) {
                    // The source's children a rerun reused are not this run's to cancel.
                    let own = st.child_runs.iter().filter(|c| !st.reused_runs.contains(c));
                    for child in own.cloned().collect::<Vec<_>>() {
                        self.plan.actions.push(Action::CancelRun { name: child });
                    }
                }
            }
            self.finish_step(i, StepPhase::Cancelled, "cancelled".into());
        }
    }

    /// The run's outcome when its deadline has passed: running steps are stopped.
    pub(super) fn run_deadline(&mut self) -> Option<Outcome> {
        let limit = self
            .composition
            .timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())?;
        let deadline = add(self.plan.status.start_time.as_ref()?.0, limit);
        if self.input.now < deadline {
            self.requeue_at(deadline);
            return None;
        }
        let message = format!("the run timed out after {}", human(limit));
        for i in 0..self.composition.steps.len() {
            let st = &self.plan.status.steps[i];
            match st.phase {
                StepPhase::Running | StepPhase::Retrying | StepPhase::WaitingApproval => {
                    if let Some(pod) = st.pod_name.clone().filter(|_| {
                        st.phase == StepPhase::Running
                            && matches!(self.composition.steps[i].kind(), Some(StepKind::Task(_)))
                    }) {
                        self.plan.actions.push(Action::DeletePod { name: pod });
                    }
                    self.finish_step(i, StepPhase::Failed, message.clone());
                }
                StepPhase::Pending => self.finish_step(i, StepPhase::Skipped, message.clone()),
                _ => {}
            }
        }
        Some(Outcome::new(RunPhase::Failed, "Timeout", message))
    }

    /// The run's outcome once every step has ended.
    pub(super) fn steps_outcome(&self) -> Option<Outcome> {
        let steps = &self.plan.status.steps;
        if !steps.iter().all(|s| s.phase.is_finished()) {
            return None;
        }
        Some(match self.halted_by() {
            Some(step) => {
                let message = steps
                    .iter()
                    .find(|s| s.name == step)
                    .and_then(|s| s.message.clone());
                let message = format!("step {step} failed: {}", message.unwrap_or_default());
                Outcome::new(RunPhase::Failed, "StepFailed", message)
            }
            None => Outcome::new(
                RunPhase::Succeeded,
                "Succeeded",
                "every step succeeded or was skipped".into(),
            ),
        })
    }

    /// Running or WaitingApproval, with the matching condition.
    pub(super) fn show_progress(&mut self) {
        let waiting = self
            .plan
            .status
            .steps
            .iter()
            .any(|s| s.phase == StepPhase::WaitingApproval);
        let (phase, reason, message) = if waiting {
            (
                RunPhase::WaitingApproval,
                "WaitingApproval",
                "a step waits for approval",
            )
        } else {
            (RunPhase::Running, "Running", "the run has started")
        };
        if self.plan.status.phase != phase {
            self.plan.status.phase = phase;
            set_condition(
                &mut self.plan.status.conditions,
                "Succeeded",
                "Unknown",
                reason,
                message,
                self.input.now,
            );
        }
    }

    /// The run failed and its onFailure handler could not start: said as a Warning Event
    /// and, because Events expire, as the run's `OnFailureStarted=False` condition, so
    /// `kubectl describe` shows why nobody was notified for as long as the run exists.
    fn on_failure_not_started(&mut self, reason: &str, why: String) {
        set_condition(
            &mut self.plan.status.conditions,
            "OnFailureStarted",
            "False",
            reason,
            &why,
            self.input.now,
        );
        self.plan.events.push(warning("OnFailureNotStarted", why));
    }

    pub(super) fn end_run(&mut self, outcome: Outcome) {
        let Outcome {
            phase,
            reason,
            message,
        } = outcome;
        let now = self.input.now;
        let status = &mut self.plan.status;
        status.phase = phase;
        status.completion_time.get_or_insert(Time(now));
        let ok = if phase == RunPhase::Succeeded {
            "True"
        } else {
            "False"
        };
        set_condition(
            &mut status.conditions,
            "Succeeded",
            ok,
            reason,
            &message,
            now,
        );
        match phase {
            RunPhase::Succeeded => return self.plan.events.push(normal("RunSucceeded", message)),
            RunPhase::Cancelled => return self.plan.events.push(normal("RunCancelled", message)),
            _ => {}
        }
        self.plan.events.push(warning("RunFailed", message.clone()));
        if let Some(call) = &self.composition.on_failure {
            if self.input.depth >= labels::MAX_RUN_DEPTH {
                let why = format!(
                    "{} not started: {}",
                    call.composition,
                    too_deep(self.input.depth, self.input.chain)
                );
                return self.on_failure_not_started("ChainTooDeep", why);
            }
            let failed_step = self
                .plan
                .status
                .steps
                .iter()
                .find(|s| s.phase == StepPhase::Failed)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            let mut scope = self.scope();
            scope
                .context
                .insert("failedRun".into(), self.input.run_name.into());
            scope
                .context
                .insert("failedStep".into(), failed_step.clone());
            scope.context.insert("message".into(), message.clone());
            let mut params = BTreeMap::new();
            for (k, v) in &call.params {
                let rendered = expr::render(&Json::String(v.clone()), &scope).map(json_text);
                params.insert(
                    k.clone(),
                    rendered.unwrap_or_else(|e| format!("(template error: {e})")),
                );
            }
            params.insert("failedRun".into(), self.input.run_name.into());
            params.insert("failedStep".into(), failed_step);
            params.insert("message".into(), message);
            let name = labels::on_failure_run_name(self.input.run_name);
            if let Some(taken) = self.input.observed.taken(&name) {
                // A run of that name that is not this run's onFailure run (a runner made
                // it first): it is not the handler, and must not be reported as started.
                let why = format!(
                    "{} not started: run {name} already exists and is not this run's \
                     onFailure run ({})",
                    call.composition, taken.holder
                );
                return self.on_failure_not_started("NameTaken", why);
            }
            self.plan.status.on_failure_run = Some(name.clone());
            self.plan.actions.push(Action::CreateRun(NewRun {
                name: name.clone(),
                composition: call.composition.clone(),
                params,
                step: None,
                owned: false,
                started_by: self.input.spec.started_by.clone(),
            }));
            self.plan.events.push(normal(
                "OnFailureStarted",
                format!("started {name} of {}", call.composition),
            ));
        }
    }
}

/// Why a run at `depth`, reached through the compositions of `chain`, starts no other run.
fn too_deep(depth: u32, chain: &str) -> String {
    format!(
        "this run is {depth} runs deep (runs started by runs: {chain}); at most {} may \
         nest, so it starts no more (does a composition call itself?)",
        labels::MAX_RUN_DEPTH
    )
}

/// The Tasks a run of `composition` uses: those its steps name and, when one of them
/// provisions EC2 instances, the one its cleanup runs.
fn used_tasks<'t>(
    composition: &CompositionSpec,
    tasks: &'t BTreeMap<String, TaskSpec>,
) -> BTreeMap<&'t str, &'t TaskSpec> {
    let mut used: BTreeMap<&str, &TaskSpec> = tasks
        .iter()
        .filter(|(name, _)| {
            composition
                .steps
                .iter()
                .any(|s| s.task.as_deref() == Some(name.as_str()))
        })
        .map(|(name, task)| (name.as_str(), task))
        .collect();
    let provisions = used
        .values()
        .any(|t| t.builtin == Some(BuiltinTask::Ec2Provision));
    let cleanup = BuiltinTask::Ec2Deprovision.as_str();
    if provisions && let Some((name, task)) = tasks.get_key_value(cleanup) {
        used.insert(name.as_str(), task);
    }
    used
}
