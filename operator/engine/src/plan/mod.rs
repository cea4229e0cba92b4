//! The planning pass: from a run's state and observations to its next status and actions.

mod approval;
mod children;
mod cleanup;
mod conditions;
mod durations;
mod inputs;
mod lifecycle;
mod task;
mod wait;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::{
    Plan, PlanInput,
    expr::{LedgerScope, RunScope, Scope, StepScope},
    graph,
};
use maestro_api::{CompositionSpec, RunPhase};

use conditions::{normal, set_condition, warning};
use durations::add;

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
