//! Approval steps: waiting for a decision.

use maestro_api::{Decision, Step, StepPhase, parse_duration};

use super::{
    Planner,
    conditions::{normal, warning},
    durations::{add, human},
};

impl Planner<'_> {
    pub(super) fn watch_approval(&mut self, step: &Step, i: usize) {
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
}
