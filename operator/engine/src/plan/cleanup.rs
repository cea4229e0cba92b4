//! Cleanup of the run's ledger of created resources, when the run ends.

use std::time::Duration;

use crate::{Action, PodPhase, StepPod, TaskRuns};
use maestro_api::{
    BuiltinTask, CleanupPolicy, CleanupStatus, RunPhase, Step, StepPhase, TaskSpec, labels,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    Outcome, Planner,
    conditions::{normal, set_condition, warning},
    durations::add,
    inputs::resolve_inputs,
};

/// How often the cleanup of leftovers is tried before it is reported failed.
const CLEANUP_ATTEMPTS: u32 = 5;
/// The wait after the first failed cleanup attempt; each next wait is twice the last
/// (5, 10, 20, 40 s: a cloud API down for a minute does not leave the resources behind).
const CLEANUP_FIRST_BACKOFF: Duration = Duration::from_secs(5);

impl Planner<'_> {
    /// Removes what the ledger still holds, per the composition's cleanup policy, through
    /// a deprovision pod. Returns true once nothing is left to do.
    pub(super) fn cleanup(&mut self, outcome: &Outcome) -> bool {
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
        // A failed run whose composition sets a rerunWindow holds its leftovers for a
        // rerun (the run ends now; its cleanup waits). Deleting the run ends the hold.
        let deleting = self.input.deleting;
        if state.is_none()
            && outcome.phase == RunPhase::Failed
            && !deleting
            && self.hold_for_rerun(leftovers)
        {
            return true;
        }
        let held = state.as_ref().filter(|c| c.phase == StepPhase::Pending);
        if let Some(until) = held.and_then(|c| c.held_until.as_ref()).map(|t| t.0)
            && !deleting
            && self.input.now < until
        {
            self.requeue_at(until);
            return true;
        }
        let keep = match self.composition.cleanup {
            CleanupPolicy::Always => false,
            CleanupPolicy::OnSuccess => outcome.phase != RunPhase::Succeeded,
            CleanupPolicy::Never => true,
        };
        if keep {
            self.plan.status.cleanup = Some(CleanupStatus {
                phase: StepPhase::Skipped,
                message: Some(format!(
                    "cleanup policy {:?} keeps {leftovers} resource(s): {}",
                    self.composition.cleanup,
                    self.ledger_ids()
                )),
                ..CleanupStatus::default()
            });
            return true;
        }
        let message = format!(
            "removing {leftovers} leftover resource(s): {}",
            self.ledger_ids()
        );
        if state.as_ref().is_none_or(|c| c.phase == StepPhase::Pending) {
            self.plan
                .events
                .push(normal("CleanupStarted", message.clone()));
        }
        // A run that has ended (its cleanup was held for a rerun) keeps its phase.
        let status = &mut self.plan.status;
        if status.phase != RunPhase::CleaningUp && !status.phase.is_finished() {
            status.phase = RunPhase::CleaningUp;
            set_condition(
                &mut status.conditions,
                "Succeeded",
                "Unknown",
                "CleaningUp",
                &message,
                self.input.now,
            );
        }
        let attempt = state.as_ref().map_or(1, |c| c.attempts.max(1));
        let name = labels::cleanup_pod_name(self.input.run_name, attempt);
        match self.input.observed.pod(&name).cloned() {
            None => self.create_cleanup_pod(attempt),
            Some(pod) if matches!(pod.phase, PodPhase::Pending | PodPhase::Running) => {}
            Some(pod) => {
                self.record_resources("", &pod);
                let left = self.plan.status.resources.len();
                if left == 0 {
                    // The pod may have released ids it refused to touch (instances not
                    // tagged with this run): nothing of the run's is left, but say so.
                    let refused = pod.result.as_ref().and_then(|r| r.error.clone());
                    let (message, event) = match refused {
                        Some(why) => {
                            let message = format!(
                                "removed the ledger's {leftovers} resource(s); the cleanup pod reported: {why}"
                            );
                            (message.clone(), warning("CleanupRefused", message))
                        }
                        None => (
                            format!("removed {leftovers} resource(s)"),
                            normal(
                                "CleanupSucceeded",
                                format!("removed {leftovers} leftover resource(s)"),
                            ),
                        ),
                    };
                    self.plan.status.cleanup = Some(CleanupStatus {
                        phase: StepPhase::Succeeded,
                        pod_name: Some(name),
                        attempts: attempt,
                        message: Some(message),
                        held_until: None,
                        next_attempt_time: None,
                    });
                    self.plan.events.push(event);
                    return true;
                }
                let why = pod
                    .result
                    .as_ref()
                    .and_then(|r| r.error.clone())
                    .or(pod.message.clone())
                    .unwrap_or_else(|| format!("{left} resource(s) remain"));
                if attempt < CLEANUP_ATTEMPTS {
                    let now = self.input.now;
                    match state.as_ref().and_then(|c| c.next_attempt_time.as_ref()) {
                        Some(at) if now >= at.0 => self.create_cleanup_pod(attempt + 1),
                        Some(at) => self.requeue_at(at.0),
                        None => {
                            let wait = CLEANUP_FIRST_BACKOFF * 2u32.pow(attempt - 1);
                            let at = add(now, wait);
                            let message = format!(
                                "cleanup attempt {attempt} failed: {why}; attempt {} at {at}; \
                                 left: {}",
                                attempt + 1,
                                self.ledger_ids()
                            );
                            self.plan.status.cleanup = Some(CleanupStatus {
                                phase: StepPhase::Running,
                                pod_name: Some(name),
                                attempts: attempt,
                                message: Some(message.clone()),
                                held_until: None,
                                next_attempt_time: Some(Time(at)),
                            });
                            self.plan.events.push(warning("CleanupRetrying", message));
                            self.requeue_at(at);
                        }
                    }
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
                        held_until: None,
                        next_attempt_time: None,
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
    pub(super) fn create_cleanup_pod(&mut self, attempt: u32) {
        let name = labels::cleanup_pod_name(self.input.run_name, attempt);
        let task_name = BuiltinTask::Ec2Deprovision.as_str();
        let inputs = match self.tasks.get(task_name) {
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
        // The credentials of the steps that made the leftovers (their Tasks' and their
        // own), and the deprovision Task's own.
        let deprovision = self.tasks.get(task_name);
        let mut makers: Vec<(&Step, &TaskSpec)> = self
            .composition
            .steps
            .iter()
            .filter(|s| makers.contains(&s.name.as_str()))
            .filter_map(|s| Some((s, self.tasks.get(s.task.as_deref()?)?)))
            .collect();
        let bare = Step::default();
        if let Some(task) = deprovision {
            makers.push((&bare, task));
        }
        let secret_env = super::task::secrets_of(&makers);
        self.plan.actions.push(Action::CreatePod(Box::new(StepPod {
            name: name.clone(),
            step: "cleanup".into(),
            attempt,
            task: task_name.into(),
            runs: TaskRuns::Builtin(BuiltinTask::Ec2Deprovision),
            inputs,
            context: self.plan.status.context.clone(),
            service_account: self.composition.service_account_name.clone(),
            node_selector: self.composition.node_selector.clone(),
            tolerations: self.composition.tolerations.clone(),
            secret_env,
            timeout: Some(Duration::from_secs(600)),
            workspace_of: self.plan.status.workspace_of.clone(),
            ledger_runs: self.ledger_runs(),
        })));
        self.plan.status.cleanup = Some(CleanupStatus {
            phase: StepPhase::Running,
            pod_name: Some(name),
            attempts: attempt,
            message: Some(format!("deprovisioning {}", self.ledger_ids())),
            held_until: None,
            next_attempt_time: None,
        });
    }

    pub(super) fn ledger_ids(&self) -> String {
        self.plan
            .status
            .resources
            .iter()
            .map(|r| format!("{} {}", r.kind, r.id))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
