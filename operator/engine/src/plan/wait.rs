//! waitFor steps: waiting for a run of another composition.

use crate::ObservedRun;
use maestro_api::{RunPhase, StepPhase, WaitMode};

use super::Planner;

impl Planner<'_> {
    pub(super) fn watch_wait(&mut self, i: usize, composition: &str, mode: WaitMode) {
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

    pub(super) fn other_runs<'b>(
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
}
