//! Call and fork steps: the child runs they start, and joining them.

use crate::{Action, NewRun};
use maestro_api::{RunPhase, StepKind, StepPhase};

use super::{
    Planner,
    conditions::{routine, warning},
    inputs::render_params,
};

impl Planner<'_> {
    pub(super) fn watch_children(&mut self, i: usize) {
        let step = &self.composition.steps[i];
        let names = self.plan.status.steps[i].child_runs.clone();
        let reused = self.plan.status.steps[i].reused_runs.clone();
        // Why each child that did not succeed failed the step, by name.
        let mut failed: Vec<(String, String)> = Vec::new();
        let mut pending = false;
        for (n, name) in names.iter().enumerate() {
            if reused.contains(name) {
                continue; // the source's child, which succeeded: not this run's to watch
            }
            match self.input.observed.runs.iter().find(|r| &r.name == name) {
                Some(run) if run.phase.is_finished() => {
                    if run.phase != RunPhase::Succeeded {
                        failed.push((name.clone(), format!("{name} {:?}", run.phase)));
                    }
                }
                Some(_) => pending = true,
                None if let Some(taken) = self.input.observed.taken(name) => {
                    // Another object holds the child's name: it is not this run's child.
                    failed.push((
                        name.clone(),
                        format!("{name} exists and is not this run's ({})", taken.holder),
                    ));
                }
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
                            started_by: self.input.spec.started_by.clone(),
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
            let message = match reused.is_empty() {
                true => format!("{} succeeded", names.join(", ")),
                false => format!(
                    "{} succeeded; {} reused",
                    names.join(", "),
                    reused.join(", ")
                ),
            };
            self.finish_step(i, StepPhase::Succeeded, message);
            self.plan.events.push(routine(
                "StepSucceeded",
                format!("step {} succeeded", step.name),
            ));
        } else {
            let why: Vec<&str> = failed.iter().map(|(_, why)| why.as_str()).collect();
            let message = format!("child runs failed: {}", why.join(", "));
            self.plan.status.steps[i].failed_runs =
                failed.into_iter().map(|(name, _)| name).collect();
            self.finish_step(i, StepPhase::Failed, message.clone());
            self.plan.events.push(warning(
                "StepFailed",
                format!("step {}: {message}", step.name),
            ));
        }
    }
}
