//! The planning pass: from a run's state and observations to its next status and actions.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};
use serde_json::{Map, Value as Json};

use super::{
    Action, EventNote, NewRun, ObservedPod, ObservedRun, PlanInput, PodPhase, StepPod, TaskRuns,
    expr::{self, LedgerScope, RunScope, Scope, StepScope},
    graph::{self, Graph},
};
use maestro_api::{
    BuiltinTask, CleanupPolicy, CleanupStatus, CompositionSpec, Decision, LedgerEntry, RunPhase,
    Step, StepKind, StepPhase, StepStatus, TaskSpec, WaitMode, labels, parse_duration,
};

use super::Plan;

/// How often the cleanup of leftovers is tried before it is reported failed.
const CLEANUP_ATTEMPTS: u32 = 3;

/// How a run ends: its phase and the Succeeded condition's reason and message.
struct Outcome {
    phase: RunPhase,
    reason: &'static str,
    message: String,
}

impl Outcome {
    fn new(phase: RunPhase, reason: &'static str, message: String) -> Self {
        Self {
            phase,
            reason,
            message,
        }
    }
}

/// Default wait before the first retry, and the cap of the doubling.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Plans the next status and actions of a run.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut planner = Planner {
        input,
        pod_budget: input.pod_budget,
        plan: Plan {
            status: input.status.clone(),
            ..Plan::default()
        },
    };
    planner.run();
    planner.plan.status.observed_generation = input.generation;
    planner.plan
}

struct Planner<'a> {
    input: &'a PlanInput<'a>,
    /// New step pods this pass may still start (`None`: no limit).
    pod_budget: Option<u32>,
    plan: Plan,
}

/// How soon a step waiting for its Agent's capacity looks again.
const CAPACITY_RECHECK: Duration = Duration::from_secs(2);

impl Planner<'_> {
    fn run(&mut self) {
        if self.plan.status.phase.is_finished() {
            return;
        }
        let composition = match self.composition() {
            Ok(c) => c,
            Err(message) => return self.invalid(message),
        };
        // Tasks and params are checked when the run starts. A run in flight is not made
        // Invalid later by a Task that is edited, deleted, or missing from a cache.
        let started = self.plan.status.composition_spec.is_some();
        let (tasks, params) = if started {
            (None, None)
        } else {
            (Some(self.input.tasks), Some(&self.input.spec.params))
        };
        let graph = match graph::validate(&composition, tasks, params) {
            Ok(g) => g,
            Err(problems) => return self.invalid(problems.join("; ")),
        };
        let stopping = self.input.spec.cancel || self.input.deleting;
        if let (super::Admission::Queued(reason), false) = (&self.input.admission, stopping)
            && self.plan.status.start_time.is_none()
        {
            return self.queue(reason);
        }
        if let Err(problem) = self.start(&composition) {
            return self.invalid(problem);
        }

        let outcome = if self.input.spec.cancel || self.input.deleting {
            self.cancel_steps(&composition);
            Some(Outcome::new(
                RunPhase::Cancelled,
                "Cancelled",
                "the run was cancelled".into(),
            ))
        } else {
            self.run_deadline(&composition).or_else(|| {
                // Steps ending in this pass can let later steps start in the same pass;
                // repeat until nothing changes (at most once per step, plus one).
                for _ in 0..=composition.steps.len() {
                    let before = self.plan.status.steps.clone();
                    for i in 0..composition.steps.len() {
                        self.advance_step(&composition, &graph, i);
                    }
                    if before == self.plan.status.steps {
                        break;
                    }
                }
                self.steps_outcome(&composition)
            })
        };
        self.update_progress();
        match outcome {
            None => self.show_progress(),
            Some(outcome) => {
                if self.cleanup(&composition, &outcome) {
                    self.end_run(&composition, outcome);
                }
            }
        }
    }

    /// The composition this run follows: its snapshot once started, else the live one.
    fn composition(&self) -> Result<CompositionSpec, String> {
        if let Some(snapshot) = &self.plan.status.composition_spec {
            return serde_json::from_value(snapshot.clone())
                .map_err(|e| format!("status.compositionSpec: unreadable snapshot: {e}"));
        }
        self.input.composition.cloned().ok_or_else(|| {
            format!(
                "spec.composition: composition {:?} not found in namespace {:?}",
                self.input.spec.composition, self.input.namespace
            )
        })
    }

    /// The run waits for an Agent slot: phase Queued, and the reason in its condition.
    fn queue(&mut self, reason: &str) {
        let now = self.input.now;
        let status = &mut self.plan.status;
        if status.phase != RunPhase::Queued {
            self.plan
                .events
                .push(normal("RunQueued", format!("run queued: {reason}")));
        }
        status.phase = RunPhase::Queued;
        set_condition(
            &mut status.conditions,
            "Succeeded",
            "Unknown",
            "Queued",
            reason,
            now,
        );
    }

    /// Takes one new step pod from the Agent's free capacity; false when none is left.
    fn take_pod_budget(&mut self) -> bool {
        match &mut self.pod_budget {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }

    /// The step cannot start its pod for lack of Agent capacity: say so and look again soon.
    fn wait_for_capacity(&mut self, i: usize) {
        self.plan.status.steps[i].message = Some("waiting for agent capacity".into());
        let at = add(self.input.now, CAPACITY_RECHECK);
        self.requeue_at(at);
    }

    fn invalid(&mut self, message: String) {
        let now = self.input.now;
        let status = &mut self.plan.status;
        status.phase = RunPhase::Invalid;
        status.completion_time.get_or_insert(Time(now));
        set_condition(
            &mut status.conditions,
            "Invalid",
            "True",
            "Invalid",
            &message,
            now,
        );
        set_condition(
            &mut status.conditions,
            "Succeeded",
            "False",
            "Invalid",
            &message,
            now,
        );
        self.plan.events.push(warning("Invalid", message));
    }

    /// First pass of a valid run: snapshot the composition, list its steps, start the clock.
    fn start(&mut self, composition: &CompositionSpec) -> Result<(), String> {
        let now = self.input.now;
        let status = &mut self.plan.status;
        if status.composition_spec.is_none() {
            status.composition_spec = serde_json::to_value(composition).ok();
        }
        if status.steps.len() != composition.steps.len()
            || status
                .steps
                .iter()
                .zip(&composition.steps)
                .any(|(s, c)| s.name != c.name)
        {
            status.steps = composition
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
        let missing: Vec<(&String, &String)> = composition
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

    fn advance_step(&mut self, composition: &CompositionSpec, graph: &Graph, i: usize) {
        let step = &composition.steps[i];
        match self.plan.status.steps[i].phase {
            StepPhase::Pending => self.maybe_start_step(composition, graph, i),
            StepPhase::Running => self.watch_running(composition, i),
            StepPhase::Retrying => self.maybe_retry(composition, i),
            StepPhase::WaitingApproval => self.watch_approval(step, i),
            StepPhase::Succeeded
            | StepPhase::Failed
            | StepPhase::Skipped
            | StepPhase::Cancelled => {}
        }
    }

    /// A step fails the run when it failed without `continueOnFailure`.
    fn halted_by(&self, composition: &CompositionSpec) -> Option<String> {
        self.plan
            .status
            .steps
            .iter()
            .zip(&composition.steps)
            .find(|(s, c)| s.phase == StepPhase::Failed && !c.continue_on_failure)
            .map(|(s, _)| s.name.clone())
    }

    fn maybe_start_step(&mut self, composition: &CompositionSpec, graph: &Graph, i: usize) {
        if let Some(failed) = self.halted_by(composition) {
            return self.finish_step(
                i,
                StepPhase::Skipped,
                format!("not started: step {failed:?} failed"),
            );
        }
        let ready = graph.deps[i]
            .iter()
            .all(|&d| self.plan.status.steps[d].phase.is_finished());
        if !ready {
            return;
        }
        let step = &composition.steps[i];
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
            StepKind::Task(task) => return self.start_attempt(composition, i, task, 1),
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
                self.plan.events.push(normal(
                    "StepStarted",
                    format!("step {} waits for {}", step.name, wait.composition),
                ));
                return self.watch_running(composition, i);
            }
            StepKind::Call(one) => vec![one.to_string()],
            StepKind::Fork(many) => many.to_vec(),
        };
        {
            let params = match render_params(step, &scope) {
                Ok(p) => p,
                Err(e) => return self.finish_step(i, StepPhase::Failed, e),
            };
            let names: Vec<String> = (0..targets.len())
                .map(|n| labels::child_run_name(self.input.run_name, &step.name, n))
                .collect();
            let st = &mut self.plan.status.steps[i];
            st.phase = StepPhase::Running;
            st.child_runs = names.clone();
            st.message = Some(format!("started {}", names.join(", ")));
            for (name, target) in names.iter().zip(targets) {
                self.plan.actions.push(Action::CreateRun(NewRun {
                    name: name.clone(),
                    composition: target,
                    params: params.clone(),
                    step: Some(step.name.clone()),
                    owned: true,
                }));
            }
            self.plan.events.push(normal(
                "StepStarted",
                format!("step {} started {}", step.name, names.join(", ")),
            ));
        }
    }

    fn start_attempt(
        &mut self,
        composition: &CompositionSpec,
        i: usize,
        task_name: &str,
        attempt: u32,
    ) {
        let step = &composition.steps[i];
        let Some(task) = self.input.tasks.get(task_name) else {
            return self.finish_step(
                i,
                StepPhase::Failed,
                format!("task {task_name:?} not found"),
            );
        };
        let inputs = match resolve_inputs(step, task, &self.scope()) {
            Ok(inputs) => inputs,
            Err(e) => return self.finish_step(i, StepPhase::Failed, e),
        };
        let runs = match (&task.builtin, &task.container) {
            // The container task runs the image and command its inputs name, under
            // `maestro-agent exec` like any plugin.
            (Some(BuiltinTask::Container), _) => match container_inputs(&inputs) {
                Ok(runs) => runs,
                Err(e) => return self.finish_step(i, StepPhase::Failed, e),
            },
            (Some(b), _) => TaskRuns::Builtin(*b),
            (None, Some(c)) => TaskRuns::Container {
                image: c.image.clone(),
                command: c.command.clone(),
                pull_policy: c.image_pull_policy.clone(),
            },
            (None, None) => {
                return self.finish_step(
                    i,
                    StepPhase::Failed,
                    format!("task {task_name:?} runs neither a builtin nor a container"),
                );
            }
        };
        let name = labels::step_pod_name(self.input.run_name, &step.name, attempt);
        let pod = StepPod {
            name: name.clone(),
            step: step.name.clone(),
            attempt,
            task: task_name.to_string(),
            runs,
            inputs,
            context: self.plan.status.context.clone(),
            service_account: composition.service_account_name.clone(),
            secret_env: composition
                .secret_env
                .iter()
                .chain(&step.secret_env)
                .cloned()
                .collect(),
            timeout: step.timeout.as_deref().and_then(|t| parse_duration(t).ok()),
        };
        let st = &mut self.plan.status.steps[i];
        st.phase = StepPhase::Running;
        st.attempts = attempt;
        st.pod_name = Some(name.clone());
        st.next_attempt_time = None;
        st.message = None;
        self.plan.actions.push(Action::CreatePod(pod));
        self.plan.events.push(normal(
            "StepStarted",
            format!("step {} attempt {attempt} started as pod {name}", step.name),
        ));
    }

    fn watch_running(&mut self, composition: &CompositionSpec, i: usize) {
        match composition.steps[i].kind() {
            Some(StepKind::Task(task)) => self.watch_pod(composition, i, task),
            Some(StepKind::WaitFor(wait)) => self.watch_wait(i, &wait.composition, wait.mode),
            Some(StepKind::Call(_) | StepKind::Fork(_)) => self.watch_children(composition, i),
            // An approval is watched by watch_approval; a step of no kind never starts.
            Some(StepKind::Approval(_)) | None => {}
        }
    }

    fn watch_pod(&mut self, composition: &CompositionSpec, i: usize, task: &str) {
        let step = &composition.steps[i];
        let attempt = self.plan.status.steps[i].attempts.max(1);
        let name = labels::step_pod_name(self.input.run_name, &step.name, attempt);
        let Some(pod) = self
            .input
            .observed
            .pods
            .iter()
            .find(|p| p.name == name)
            .cloned()
        else {
            // Not seen yet (just created, or the cache lags): creating again is harmless.
            return self.recreate_attempt(composition, i, task, attempt);
        };
        if pod.node.is_some() {
            self.plan.status.steps[i].node_name = pod.node.clone();
        }
        match pod.phase {
            PodPhase::Pending | PodPhase::Running => {
                let limit = step.timeout.as_deref().and_then(|t| parse_duration(t).ok());
                let began = pod
                    .created
                    .or(self.plan.status.steps[i].start_time.as_ref().map(|t| t.0));
                if let (Some(limit), Some(began)) = (limit, began) {
                    let deadline = add(began, limit);
                    if self.input.now >= deadline {
                        self.plan.actions.push(Action::DeletePod {
                            name: pod.name.clone(),
                        });
                        let message = format!("attempt {attempt} timed out after {}", human(limit));
                        return self.attempt_failed(composition, i, message, None);
                    }
                    self.requeue_at(deadline);
                }
            }
            PodPhase::Succeeded => self.attempt_succeeded(composition, i, &pod),
            PodPhase::Failed => {
                let result = pod.result.clone().unwrap_or_default();
                // No result at all (the pod never ran its step): no exit code to show.
                let code = pod.result.as_ref().map(|r| r.exit_code);
                let message = match (&result.error, code, &pod.message) {
                    (Some(e), _, _) => e.clone(),
                    (None, Some(c), _) => format!("exited with code {c}"),
                    (None, None, Some(m)) => m.clone(),
                    (None, None, None) => "the pod failed".into(),
                };
                let step = self.plan.status.steps[i].name.clone();
                self.record_resources(&step, &pod);
                self.plan.status.steps[i].outputs = result.outputs.clone();
                self.attempt_failed(composition, i, message, code);
            }
        }
    }

    /// The pod of the current attempt is not observed: ask for it again.
    fn recreate_attempt(
        &mut self,
        composition: &CompositionSpec,
        i: usize,
        task: &str,
        attempt: u32,
    ) {
        let events = self.plan.events.len();
        self.start_attempt(composition, i, task, attempt);
        // Not a new start: no second StepStarted event.
        self.plan.events.truncate(events);
    }

    fn attempt_succeeded(&mut self, composition: &CompositionSpec, i: usize, pod: &ObservedPod) {
        let result = pod.result.clone().unwrap_or_default();
        let step = self.plan.status.steps[i].name.clone();
        self.record_resources(&step, pod);
        let st = &mut self.plan.status.steps[i];
        st.outputs = result.outputs;
        st.exit_code = Some(result.exit_code);
        let name = composition.steps[i].name.clone();
        self.finish_step(i, StepPhase::Succeeded, String::new());
        self.plan
            .events
            .push(normal("StepSucceeded", format!("step {name} succeeded")));
    }

    /// Keeps the ledger in step with what a pod reports: resources it created are added
    /// (with the step that made them), resources it released are removed.
    fn record_resources(&mut self, step: &str, pod: &ObservedPod) {
        let Some(result) = &pod.result else { return };
        for r in &result.resources {
            let entry = LedgerEntry {
                kind: r.kind.clone(),
                id: r.id.clone(),
                region: Some(r.region.clone()).filter(|region| !region.is_empty()),
                step: step.to_string(),
            };
            if !self
                .plan
                .status
                .resources
                .iter()
                .any(|e| e.kind == entry.kind && e.id == entry.id)
            {
                self.plan.status.resources.push(entry);
            }
        }
        self.plan.status.resources.retain(|e| {
            !result
                .released
                .iter()
                .any(|r| r.kind == e.kind && r.id == e.id)
        });
    }

    fn attempt_failed(
        &mut self,
        composition: &CompositionSpec,
        i: usize,
        message: String,
        code: Option<i32>,
    ) {
        let step = &composition.steps[i];
        let attempts = self.plan.status.steps[i].attempts.max(1);
        self.plan.status.steps[i].exit_code = code;
        let limit = step.retries.as_ref().map_or(0, |r| r.limit);
        if attempts <= limit {
            let delay = backoff(step, attempts);
            let at = add(self.input.now, delay);
            let st = &mut self.plan.status.steps[i];
            st.phase = StepPhase::Retrying;
            st.next_attempt_time = Some(Time(at));
            st.message = Some(format!(
                "attempt {attempts} failed: {message}; retrying in {}",
                human(delay)
            ));
            self.plan.events.push(warning(
                "StepRetried",
                format!(
                    "step {} attempt {attempts} failed ({message}); attempt {} in {}",
                    step.name,
                    attempts + 1,
                    human(delay)
                ),
            ));
            self.requeue_at(at);
        } else {
            let name = step.name.clone();
            self.finish_step(i, StepPhase::Failed, message.clone());
            self.plan.events.push(warning(
                "StepFailed",
                format!("step {name} failed: {message}"),
            ));
        }
    }

    fn maybe_retry(&mut self, composition: &CompositionSpec, i: usize) {
        let st = &self.plan.status.steps[i];
        let due = st.next_attempt_time.as_ref().map(|t| t.0);
        match due {
            Some(at) if self.input.now < at => self.requeue_at(at),
            _ => {
                let next = st.attempts + 1;
                if !self.take_pod_budget() {
                    return self.wait_for_capacity(i);
                }
                if let Some(StepKind::Task(task)) = composition.steps[i].kind() {
                    self.start_attempt(composition, i, task, next);
                }
            }
        }
    }

    fn watch_approval(&mut self, step: &Step, i: usize) {
        let decision = self
            .input
            .observed
            .approvals
            .iter()
            .filter(|a| a.step == step.name)
            .min_by_key(|a| (a.created, a.name.clone()))
            .cloned();
        if let Some(a) = decision {
            self.plan.status.steps[i].approved_by = Some(a.by.clone());
            return match a.decision {
                Decision::Approve => {
                    self.finish_step(i, StepPhase::Succeeded, format!("approved by {}", a.by));
                    self.plan.events.push(normal(
                        "StepApproved",
                        format!("step {} approved by {}", step.name, a.by),
                    ));
                }
                Decision::Reject => {
                    self.finish_step(i, StepPhase::Failed, format!("rejected by {}", a.by));
                    self.plan.events.push(warning(
                        "StepRejected",
                        format!("step {} rejected by {}", step.name, a.by),
                    ));
                }
            };
        }
        let limit = step
            .approval
            .as_ref()
            .and_then(|g| g.timeout.as_deref())
            .and_then(|t| parse_duration(t).ok());
        let began = self.plan.status.steps[i].start_time.as_ref().map(|t| t.0);
        if let (Some(limit), Some(began)) = (limit, began) {
            let deadline = add(began, limit);
            if self.input.now >= deadline {
                let message = format!("no approval within {}", human(limit));
                self.finish_step(i, StepPhase::Failed, message.clone());
                self.plan.events.push(warning(
                    "ApprovalTimeout",
                    format!("step {}: {message}", step.name),
                ));
            } else {
                self.requeue_at(deadline);
            }
        }
    }

    fn watch_children(&mut self, composition: &CompositionSpec, i: usize) {
        let step = &composition.steps[i];
        let names = self.plan.status.steps[i].child_runs.clone();
        let mut failed = Vec::new();
        let mut pending = false;
        for (n, name) in names.iter().enumerate() {
            match self.input.observed.runs.iter().find(|r| &r.name == name) {
                Some(run) if run.phase.is_finished() => {
                    if run.phase != RunPhase::Succeeded {
                        failed.push(format!("{name} {:?}", run.phase));
                    }
                }
                Some(_) => pending = true,
                None => {
                    pending = true;
                    // Not seen yet: ask for it again (AlreadyExists if it is there).
                    let target = match step.kind() {
                        Some(StepKind::Fork(many)) => many.get(n).map(String::as_str),
                        Some(StepKind::Call(one)) => Some(one),
                        _ => None,
                    };
                    if let (Some(target), Ok(params)) = (target, render_params(step, &self.scope()))
                    {
                        self.plan.actions.push(Action::CreateRun(NewRun {
                            name: name.clone(),
                            composition: target.to_string(),
                            params,
                            step: Some(step.name.clone()),
                            owned: true,
                        }));
                    }
                }
            }
        }
        if pending {
            return;
        }
        if failed.is_empty() {
            self.plan.status.steps[i]
                .outputs
                .insert("runs".into(), names.join(","));
            self.finish_step(
                i,
                StepPhase::Succeeded,
                format!("{} succeeded", names.join(", ")),
            );
            self.plan.events.push(normal(
                "StepSucceeded",
                format!("step {} succeeded", step.name),
            ));
        } else {
            let message = format!("child runs failed: {}", failed.join(", "));
            self.finish_step(i, StepPhase::Failed, message.clone());
            self.plan.events.push(warning(
                "StepFailed",
                format!("step {}: {message}", step.name),
            ));
        }
    }

    fn watch_wait(&mut self, i: usize, composition: &str, mode: WaitMode) {
        let awaited: Option<ObservedRun> = match mode {
            WaitMode::Running => {
                let name = self.plan.status.steps[i].child_runs.first().cloned();
                name.and_then(|n| {
                    self.input
                        .observed
                        .runs
                        .iter()
                        .find(|r| r.name == n)
                        .cloned()
                })
            }
            WaitMode::Next => {
                let since = self.plan.status.steps[i].start_time.as_ref().map(|t| t.0);
                self.other_runs(composition)
                    .filter(|r| {
                        r.phase.is_finished()
                            && since.is_none_or(|s| r.completed.is_some_and(|c| c >= s))
                    })
                    .min_by_key(|r| r.completed)
                    .cloned()
            }
        };
        let Some(run) = awaited else {
            if mode == WaitMode::Running {
                // The awaited run is gone (deleted): nothing left to wait for.
                let name = self.plan.status.steps[i]
                    .child_runs
                    .first()
                    .cloned()
                    .unwrap_or_default();
                self.finish_step(
                    i,
                    StepPhase::Succeeded,
                    format!("run {name} no longer exists"),
                );
            }
            return;
        };
        if !run.phase.is_finished() {
            return;
        }
        self.plan.status.steps[i].child_runs = vec![run.name.clone()];
        if run.phase == RunPhase::Succeeded {
            self.finish_step(
                i,
                StepPhase::Succeeded,
                format!("run {} succeeded", run.name),
            );
        } else {
            self.finish_step(
                i,
                StepPhase::Failed,
                format!("run {} ended {:?}", run.name, run.phase),
            );
        }
    }

    fn other_runs<'b>(
        &'b self,
        composition: &'b str,
    ) -> impl Iterator<Item = &'b ObservedRun> + 'b {
        let me = self.input.run_name;
        self.input
            .observed
            .runs
            .iter()
            .filter(move |r| r.composition == composition && r.name != me)
    }

    fn finish_step(&mut self, i: usize, phase: StepPhase, message: String) {
        let now = self.input.now;
        let st = &mut self.plan.status.steps[i];
        st.phase = phase;
        st.finish_time = Some(Time(now));
        st.next_attempt_time = None;
        st.message = (!message.is_empty()).then_some(message);
    }

    /// Stops every step that has not ended: its pod is deleted, its child runs cancelled.
    fn cancel_steps(&mut self, composition: &CompositionSpec) {
        for i in 0..composition.steps.len() {
            let st = &self.plan.status.steps[i];
            if st.phase.is_finished() {
                continue;
            }
            if st.phase == StepPhase::Running {
                if let Some(pod) = st
                    .pod_name
                    .clone()
                    .filter(|_| matches!(composition.steps[i].kind(), Some(StepKind::Task(_))))
                {
                    self.plan.actions.push(Action::DeletePod { name: pod });
                }
                if !matches!(composition.steps[i].kind(), Some(StepKind::WaitFor(_))) {
                    for child in st.child_runs.clone() {
                        self.plan.actions.push(Action::CancelRun { name: child });
                    }
                }
            }
            self.finish_step(i, StepPhase::Cancelled, "cancelled".into());
        }
    }

    /// The run's outcome when its deadline has passed: running steps are stopped.
    fn run_deadline(&mut self, composition: &CompositionSpec) -> Option<Outcome> {
        let limit = composition
            .timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())?;
        let deadline = add(self.plan.status.start_time.as_ref()?.0, limit);
        if self.input.now < deadline {
            self.requeue_at(deadline);
            return None;
        }
        let message = format!("the run timed out after {}", human(limit));
        for i in 0..composition.steps.len() {
            let st = &self.plan.status.steps[i];
            match st.phase {
                StepPhase::Running | StepPhase::Retrying | StepPhase::WaitingApproval => {
                    if let Some(pod) = st.pod_name.clone().filter(|_| {
                        st.phase == StepPhase::Running
                            && matches!(composition.steps[i].kind(), Some(StepKind::Task(_)))
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
    fn steps_outcome(&self, composition: &CompositionSpec) -> Option<Outcome> {
        let steps = &self.plan.status.steps;
        if !steps.iter().all(|s| s.phase.is_finished()) {
            return None;
        }
        Some(match self.halted_by(composition) {
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
    fn show_progress(&mut self) {
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

    fn end_run(&mut self, composition: &CompositionSpec, outcome: Outcome) {
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
        if let Some(call) = &composition.on_failure {
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
            self.plan.status.on_failure_run = Some(name.clone());
            self.plan.actions.push(Action::CreateRun(NewRun {
                name: name.clone(),
                composition: call.composition.clone(),
                params,
                step: None,
                owned: false,
            }));
            self.plan.events.push(normal(
                "OnFailureStarted",
                format!("started {name} of {}", call.composition),
            ));
        }
    }

    /// Removes what the ledger still holds, per the composition's cleanup policy, through
    /// a deprovision pod. Returns true once nothing is left to do.
    fn cleanup(&mut self, composition: &CompositionSpec, outcome: &Outcome) -> bool {
        let leftovers = self.plan.status.resources.len();
        let state = self.plan.status.cleanup.clone();
        if leftovers == 0 {
            if let Some(mut c) = state.filter(|c| c.phase == StepPhase::Running) {
                c.phase = StepPhase::Succeeded;
                c.message = Some("every resource in the ledger was removed".into());
                self.plan.status.cleanup = Some(c);
            }
            return true;
        }
        if state.as_ref().is_some_and(|c| c.phase.is_finished()) {
            return true;
        }
        let keep = match composition.cleanup {
            CleanupPolicy::Always => false,
            CleanupPolicy::OnSuccess => outcome.phase != RunPhase::Succeeded,
            CleanupPolicy::Never => true,
        };
        if keep {
            self.plan.status.cleanup = Some(CleanupStatus {
                phase: StepPhase::Skipped,
                message: Some(format!(
                    "cleanup policy {:?} keeps {leftovers} resource(s): {}",
                    composition.cleanup,
                    self.ledger_ids()
                )),
                ..CleanupStatus::default()
            });
            return true;
        }
        if self.plan.status.phase != RunPhase::CleaningUp {
            self.plan.status.phase = RunPhase::CleaningUp;
            let message = format!(
                "removing {leftovers} leftover resource(s): {}",
                self.ledger_ids()
            );
            set_condition(
                &mut self.plan.status.conditions,
                "Succeeded",
                "Unknown",
                "CleaningUp",
                &message,
                self.input.now,
            );
            self.plan.events.push(normal("CleanupStarted", message));
        }
        let attempt = state.as_ref().map_or(1, |c| c.attempts.max(1));
        let name = labels::cleanup_pod_name(self.input.run_name, attempt);
        match self
            .input
            .observed
            .pods
            .iter()
            .find(|p| p.name == name)
            .cloned()
        {
            None => self.create_cleanup_pod(composition, attempt),
            Some(pod) if matches!(pod.phase, PodPhase::Pending | PodPhase::Running) => {}
            Some(pod) => {
                self.record_resources("", &pod);
                let left = self.plan.status.resources.len();
                if left == 0 {
                    self.plan.status.cleanup = Some(CleanupStatus {
                        phase: StepPhase::Succeeded,
                        pod_name: Some(name),
                        attempts: attempt,
                        message: Some(format!("removed {leftovers} resource(s)")),
                    });
                    self.plan.events.push(normal(
                        "CleanupSucceeded",
                        format!("removed {leftovers} leftover resource(s)"),
                    ));
                    return true;
                }
                let why = pod
                    .result
                    .as_ref()
                    .and_then(|r| r.error.clone())
                    .or(pod.message.clone())
                    .unwrap_or_else(|| format!("{left} resource(s) remain"));
                if attempt < CLEANUP_ATTEMPTS {
                    self.create_cleanup_pod(composition, attempt + 1);
                } else {
                    let message = format!(
                        "cleanup failed after {attempt} attempts: {why}; left: {}",
                        self.ledger_ids()
                    );
                    self.plan.status.cleanup = Some(CleanupStatus {
                        phase: StepPhase::Failed,
                        pod_name: Some(name),
                        attempts: attempt,
                        message: Some(message.clone()),
                    });
                    self.plan.events.push(warning("CleanupFailed", message));
                    return true;
                }
            }
        }
        false
    }

    /// The deprovision pod: the library's ec2-deprovision Task, its defaults taken from
    /// the ledger, with the credentials of the composition and of the steps that
    /// provisioned.
    fn create_cleanup_pod(&mut self, composition: &CompositionSpec, attempt: u32) {
        let name = labels::cleanup_pod_name(self.input.run_name, attempt);
        let task_name = BuiltinTask::Ec2Deprovision.as_str();
        let inputs = match self.input.tasks.get(task_name) {
            Some(task) => {
                let bare = Step {
                    name: "cleanup".into(),
                    task: Some(task_name.into()),
                    ..Step::default()
                };
                resolve_inputs(&bare, task, &self.scope())
            }
            None => Err(format!("task {task_name:?} not found in the library")),
        };
        let inputs = match inputs {
            Ok(inputs) => inputs,
            Err(e) => {
                // Nothing can remove the leftovers: say so and let the run end.
                let message = format!("cleanup cannot start: {e}; left: {}", self.ledger_ids());
                self.plan.status.cleanup = Some(CleanupStatus {
                    phase: StepPhase::Failed,
                    attempts: attempt,
                    message: Some(message.clone()),
                    ..CleanupStatus::default()
                });
                self.plan.events.push(warning("CleanupFailed", message));
                return;
            }
        };
        let makers: Vec<&str> = self
            .plan
            .status
            .resources
            .iter()
            .map(|r| r.step.as_str())
            .collect();
        let mut secret_env = composition.secret_env.clone();
        for step in composition
            .steps
            .iter()
            .filter(|s| makers.contains(&s.name.as_str()))
        {
            for secret in &step.secret_env {
                if !secret_env.contains(secret) {
                    secret_env.push(secret.clone());
                }
            }
        }
        self.plan.actions.push(Action::CreatePod(StepPod {
            name: name.clone(),
            step: "cleanup".into(),
            attempt,
            task: task_name.into(),
            runs: TaskRuns::Builtin(BuiltinTask::Ec2Deprovision),
            inputs,
            context: self.plan.status.context.clone(),
            service_account: composition.service_account_name.clone(),
            secret_env,
            timeout: Some(Duration::from_secs(600)),
        }));
        self.plan.status.cleanup = Some(CleanupStatus {
            phase: StepPhase::Running,
            pod_name: Some(name),
            attempts: attempt,
            message: Some(format!("deprovisioning {}", self.ledger_ids())),
        });
    }

    fn ledger_ids(&self) -> String {
        self.plan
            .status
            .resources
            .iter()
            .map(|r| format!("{} {}", r.kind, r.id))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn update_progress(&mut self) {
        let steps = &self.plan.status.steps;
        let done = steps.iter().filter(|s| s.phase.is_finished()).count();
        self.plan.status.progress = Some(format!("{done}/{}", steps.len()));
    }

    /// What expressions see now.
    fn scope(&self) -> Scope {
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        if let Ok(c) = self.composition() {
            for p in c.params {
                if let Some(d) = p.default {
                    params.insert(p.name, d);
                }
            }
        }
        params.extend(self.input.spec.params.clone());
        Scope {
            params,
            steps: self
                .plan
                .status
                .steps
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        StepScope {
                            phase: format!("{:?}", s.phase),
                            outputs: s.outputs.clone(),
                        },
                    )
                })
                .collect(),
            context: self.plan.status.context.clone(),
            ledger: self
                .plan
                .status
                .resources
                .iter()
                .map(|r| LedgerScope {
                    kind: r.kind.clone(),
                    id: r.id.clone(),
                    region: r.region.clone().unwrap_or_default(),
                    step: r.step.clone(),
                })
                .collect(),
            run: RunScope {
                name: self.input.run_name.into(),
                namespace: self.input.namespace.into(),
                composition: self.input.spec.composition.clone(),
            },
        }
    }

    fn requeue_at(&mut self, at: Timestamp) {
        let wait = at.duration_since(self.input.now);
        let wait = Duration::try_from(wait)
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(200));
        self.plan.requeue_after = Some(self.plan.requeue_after.map_or(wait, |w| w.min(wait)));
    }
}

/// The step's inputs: `with` rendered, task defaults (rendered too) for the rest.
fn resolve_inputs(
    step: &Step,
    task: &TaskSpec,
    scope: &Scope,
) -> Result<Map<String, Json>, String> {
    let mut inputs = Map::new();
    for (key, value) in &step.with {
        let v = expr::render(value, scope).map_err(|e| format!("input {key:?}: {e}"))?;
        inputs.insert(key.clone(), v);
    }
    for input in &task.inputs {
        if inputs.contains_key(&input.name) {
            continue;
        }
        match &input.default {
            Some(d) => {
                let v = expr::render(d, scope)
                    .map_err(|e| format!("default of input {:?}: {e}", input.name))?;
                inputs.insert(input.name.clone(), v);
            }
            None if input.required => return Err(format!("input {:?} is required", input.name)),
            None => {}
        }
    }
    Ok(inputs)
}

/// The image and command of a `container` step, from its inputs.
fn container_inputs(inputs: &Map<String, Json>) -> Result<TaskRuns, String> {
    let image = match inputs.get("image") {
        Some(Json::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("input \"image\" must name an image".into()),
    };
    let command = match inputs.get("command") {
        Some(Json::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| match v {
                Json::String(s) => Ok(s.clone()),
                other => Ok(other.to_string()),
            })
            .collect::<Result<Vec<_>, String>>()?,
        Some(Json::String(s)) if !s.is_empty() => vec!["sh".into(), "-c".into(), s.clone()],
        _ => {
            return Err("input \"command\" must be a list of words or a shell command line".into());
        }
    };
    let pull_policy = inputs
        .get("imagePullPolicy")
        .and_then(Json::as_str)
        .map(str::to_string);
    Ok(TaskRuns::Container {
        image,
        command,
        pull_policy,
    })
}

/// A call step's `with` values rendered as the child run's parameters.
fn render_params(step: &Step, scope: &Scope) -> Result<BTreeMap<String, String>, String> {
    step.with
        .iter()
        .map(|(k, v)| {
            expr::render(v, scope)
                .map(|v| (k.clone(), json_text(v)))
                .map_err(|e| format!("param {k:?}: {e}"))
        })
        .collect()
}

fn json_text(v: Json) -> String {
    match v {
        Json::String(s) => s,
        other => other.to_string(),
    }
}

/// The wait before attempt `failed + 1`: the step's backoff, doubled per failure, capped.
fn backoff(step: &Step, failed: u32) -> Duration {
    let retries = step.retries.as_ref();
    let first = retries
        .and_then(|r| r.backoff.as_deref())
        .and_then(|t| parse_duration(t).ok())
        .unwrap_or(DEFAULT_BACKOFF);
    let cap = retries
        .and_then(|r| r.max_backoff.as_deref())
        .and_then(|t| parse_duration(t).ok())
        .unwrap_or(DEFAULT_MAX_BACKOFF);
    let factor = 2u32.saturating_pow(failed.saturating_sub(1).min(20));
    first.saturating_mul(factor).min(cap)
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// A duration as people write it: `1m30s`, `250ms`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Sets a condition, keeping its lastTransitionTime when its status does not change.
fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let transition = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: transition,
        observed_generation: None,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

fn normal(reason: &'static str, message: String) -> EventNote {
    EventNote {
        reason,
        message,
        warning: false,
    }
}

fn warning(reason: &'static str, message: String) -> EventNote {
    EventNote {
        reason,
        message,
        warning: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let step: Step = serde_json::from_value(serde_json::json!({
            "name": "s", "task": "shell", "retries": {"limit": 5, "backoff": "1s", "maxBackoff": "5s"}
        }))
        .unwrap();
        let waits: Vec<u64> = (1..=5).map(|n| backoff(&step, n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(90)), "1m30s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(86400)), "24h");
    }
}
