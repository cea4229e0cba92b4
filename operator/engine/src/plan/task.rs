//! Task steps: their pods, attempts, retries and recorded results.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::{Action, ObservedPod, PodPhase, StepPod, TaskRuns};
use maestro_api::{BuiltinTask, LedgerEntry, StepKind, StepPhase, labels, parse_duration};

use super::{
    Planner,
    conditions::{routine, warning},
    durations::{add, backoff, human},
    inputs::{container_inputs, resolve_inputs},
};

/// The context key naming where the run's last git step checked out.
pub const CHECKOUT_PATH_KEY: &str = "checkoutPath";

impl Planner<'_> {
    pub(super) fn start_attempt(&mut self, i: usize, task_name: &str, attempt: u32) {
        let step = &self.composition.steps[i];
        let Some(task) = self.tasks.get(task_name) else {
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
        if let Some(refused) = self.input.observed.refused(&name).cloned() {
            // A plan that starts the onFailure run writes its status after acting (see the
            // controller), so a step can still be Pending while its pod's creates are
            // refused; every other refusal is met in watch_pod, on a step named Running.
            let st = &mut self.plan.status.steps[i];
            st.attempts = attempt;
            st.pod_name = Some(name.clone());
            return self.fail_refused(i, &name, &refused);
        }
        let pod = StepPod {
            name: name.clone(),
            step: step.name.clone(),
            attempt,
            task: task_name.to_string(),
            runs,
            inputs,
            context: self.plan.status.context.clone(),
            service_account: self.composition.service_account_name.clone(),
            node_selector: self.composition.node_selector.clone(),
            tolerations: self.composition.tolerations.clone(),
            // Only what the Task declares and the step names: no step gets a Secret
            // because another step needs it.
            secret_env: secrets_of(&[(step, task)]),
            timeout: step.timeout.as_deref().and_then(|t| parse_duration(t).ok()),
            workspace_of: self.plan.status.workspace_of.clone(),
            ledger_runs: self.ledger_runs(),
        };
        let st = &mut self.plan.status.steps[i];
        st.phase = StepPhase::Running;
        st.attempts = attempt;
        st.pod_name = Some(name.clone());
        // The node is the new pod's, once it is seen on one (a missing pod that was on a
        // node was deleted, see watch_pod).
        st.node_name = None;
        st.next_attempt_time = None;
        st.message = None;
        self.plan.actions.push(Action::CreatePod(Box::new(pod)));
        self.plan.events.push(routine(
            "StepStarted",
            format!("step {} attempt {attempt} started as pod {name}", step.name),
        ));
    }

    pub(super) fn watch_running(&mut self, i: usize) {
        match self.composition.steps[i].kind() {
            Some(StepKind::Task(task)) => self.watch_pod(i, task),
            Some(StepKind::WaitFor(wait)) => self.watch_wait(i, &wait.composition, wait.mode),
            Some(StepKind::Call(_) | StepKind::Fork(_)) => self.watch_children(i),
            // An approval is watched by watch_approval; a step of no kind never starts.
            Some(StepKind::Approval(_)) | None => {}
        }
    }

    /// The API server keeps refusing the step's pod `name`: creating it again would be
    /// refused again, so the step fails, saying why, once.
    fn fail_refused(&mut self, i: usize, name: &str, refused: &crate::RefusedCreate) {
        let message = format!(
            "the API server refused to create pod {name} ({} tries): {}",
            refused.tries, refused.message
        );
        let step = &self.composition.steps[i].name;
        self.plan
            .events
            .push(warning("StepFailed", format!("step {step}: {message}")));
        self.finish_step(i, StepPhase::Failed, message);
    }

    pub(super) fn watch_pod(&mut self, i: usize, task: &str) {
        let step = &self.composition.steps[i];
        let attempt = self.plan.status.steps[i].attempts.max(1);
        let name = labels::step_pod_name(self.input.run_name, &step.name, attempt);
        let Some(pod) = self.input.observed.pod(&name).cloned() else {
            if let Some(refused) = self.input.observed.refused(&name).cloned() {
                return self.fail_refused(i, &name, &refused);
            }
            if let Some(taken) = self.input.observed.taken(&name) {
                // Another object holds the pod's name: waiting would never end, and
                // using that pod would run a stranger's work as this step.
                let message = match &taken.object {
                    // Mounting a stranger's workspace would hand this step their files
                    // (and them this step's).
                    Some(object) => format!(
                        "{object}, which pod {name} needs, already exists and is not this \
                         run's ({}); delete it or rename the run",
                        taken.holder
                    ),
                    None => format!(
                        "pod {name} already exists and is not this run's ({}); delete it or \
                         rename the run",
                        taken.holder
                    ),
                };
                self.plan.events.push(warning(
                    "StepFailed",
                    format!("step {}: {message}", step.name),
                ));
                return self.finish_step(i, StepPhase::Failed, message);
            }
            // Started in this very pass: its create is already planned. Asking twice
            // cost a 409 per step (the bench's W1).
            let planned = self
                .plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::CreatePod(p) if p.name == name));
            if planned {
                return;
            }
            let named_before = self.input.status.steps.get(i).is_some_and(|s| {
                s.phase == StepPhase::Running && s.pod_name.as_deref() == Some(name.as_str())
            });
            if named_before && !self.input.observed.uncreated(&name) {
                // The status named this attempt's pod before its create (the controller
                // writes it first), and this process has no create of it still to do: a
                // pod it created and its cache has not shown yet is observed (as Pending)
                // all the same, and after a restart the caches are complete before any
                // plan. So the pod was created and is gone (deleted by a user, evicted
                // through the API, lost with its node), or the operator stopped between
                // naming it and creating it. Creating it now under this attempt's name
                // could run the step twice as one attempt; the attempt fails instead, and
                // the step's retries decide.
                let message = format!(
                    "pod {name} was deleted before the step ended (by a user, an eviction \
                     or the loss of its node), or the operator stopped before creating it"
                );
                return self.attempt_failed(i, message, None);
            }
            // Its create here failed after the status named it (or a status written
            // before the pod's name was, by an older operator, does not name it): ask again.
            return self.recreate_attempt(i, task, attempt);
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
                        return self.attempt_failed(i, message, None);
                    }
                    self.requeue_at(deadline);
                }
            }
            PodPhase::Succeeded => self.attempt_succeeded(i, &pod),
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
                self.attempt_failed(i, message, code);
            }
        }
    }

    /// The pod of the current attempt is not observed: ask for it again.
    pub(super) fn recreate_attempt(&mut self, i: usize, task: &str, attempt: u32) {
        let events = self.plan.events.len();
        self.start_attempt(i, task, attempt);
        // Not a new start: no second StepStarted event.
        self.plan.events.truncate(events);
    }

    pub(super) fn attempt_succeeded(&mut self, i: usize, pod: &ObservedPod) {
        let result = pod.result.clone().unwrap_or_default();
        let step = self.plan.status.steps[i].name.clone();
        self.record_resources(&step, pod);
        self.note_checkout(i, &result.outputs);
        let st = &mut self.plan.status.steps[i];
        st.outputs = result.outputs;
        st.exit_code = Some(result.exit_code);
        let name = self.composition.steps[i].name.clone();
        self.finish_step(i, StepPhase::Succeeded, String::new());
        self.plan
            .events
            .push(routine("StepSucceeded", format!("step {name} succeeded")));
    }

    /// The shared context's default project directory: a git step that succeeds puts the
    /// path it checked out into in `context.checkoutPath`, so later steps (the maven task)
    /// build there unless told otherwise; the last checkout wins. A composition that sets
    /// `checkoutPath` in its own context keeps its value.
    fn note_checkout(&mut self, i: usize, outputs: &std::collections::BTreeMap<String, String>) {
        let Some(StepKind::Task(task)) = self.composition.steps[i].kind() else {
            return;
        };
        let is_git = self
            .tasks
            .get(task)
            .is_some_and(|t| t.builtin == Some(BuiltinTask::Git));
        if !is_git || self.composition.context.contains_key(CHECKOUT_PATH_KEY) {
            return;
        }
        if let Some(path) = outputs.get("path").filter(|p| !p.is_empty()) {
            self.plan
                .status
                .context
                .insert(CHECKOUT_PATH_KEY.into(), path.clone());
        }
    }

    /// Keeps the ledger in step with what a pod reports: resources it created are added
    /// (with the step that made them), resources it released are removed.
    pub(super) fn record_resources(&mut self, step: &str, pod: &ObservedPod) {
        let Some(result) = &pod.result else { return };
        for r in &result.resources {
            let entry = LedgerEntry {
                kind: r.kind.clone(),
                id: r.id.clone(),
                region: Some(r.region.clone()).filter(|region| !region.is_empty()),
                step: step.to_string(),
                run: None,
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

    pub(super) fn attempt_failed(&mut self, i: usize, message: String, code: Option<i32>) {
        let step = &self.composition.steps[i];
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

    pub(super) fn maybe_retry(&mut self, i: usize) {
        let st = &self.plan.status.steps[i];
        let due = st.next_attempt_time.as_ref().map(|t| t.0);
        match due {
            Some(at) if self.input.now < at => self.requeue_at(at),
            _ => {
                let next = st.attempts + 1;
                if !self.take_pod_budget() {
                    return self.wait_for_capacity(i);
                }
                if let Some(StepKind::Task(task)) = self.composition.steps[i].kind() {
                    self.start_attempt(i, task, next);
                }
            }
        }
    }
}

/// The Secrets the pod of each (step, task) gets, in order and without repeats: those the
/// Task declares, then those the step names.
pub(super) fn secrets_of(steps: &[(&maestro_api::Step, &maestro_api::TaskSpec)]) -> Vec<String> {
    let mut secrets: Vec<String> = Vec::new();
    for (step, task) in steps {
        for secret in task.secret_env.iter().chain(&step.secret_env) {
            if !secrets.contains(secret) {
                secrets.push(secret.clone());
            }
        }
    }
    secrets
}

#[cfg(test)]
mod tests {
    use super::secrets_of;

    fn step(yaml: &str) -> maestro_api::Step {
        serde_yaml::from_str(yaml).expect("a valid step")
    }

    fn task(yaml: &str) -> maestro_api::TaskSpec {
        serde_yaml::from_str(yaml).expect("a valid task")
    }

    // A pod (a step's, or the cleanup's that acts for several steps) gets exactly the
    // Secrets its Task declares and its steps name: none of another step's.
    #[test]
    fn a_pod_gets_its_tasks_and_steps_secrets_once_each_in_order() {
        let deploy = step("{name: deploy, task: ec2, secretEnv: [aws, deploy-key]}");
        let notify = step("{name: notify, task: http, secretEnv: [slack, aws]}");
        let ec2 = task("{builtin: ec2-provision, secretEnv: [aws-region, aws]}");
        let http = task("{builtin: http}");
        assert_eq!(
            secrets_of(&[(&deploy, &ec2)]),
            ["aws-region", "aws", "deploy-key"]
        );
        assert_eq!(
            secrets_of(&[(&deploy, &ec2), (&notify, &http)]),
            ["aws-region", "aws", "deploy-key", "slack"]
        );
        assert_eq!(secrets_of(&[(&notify, &http)]), ["slack", "aws"]);
        assert!(secrets_of(&[]).is_empty());
        let plain = step("{name: plain, task: http}");
        assert!(secrets_of(&[(&plain, &http)]).is_empty());
    }
}
