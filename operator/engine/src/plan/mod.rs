//! The planning pass: from a run's state and observations to its next status and actions.

mod approval;
mod children;
mod cleanup;
mod conditions;
mod durations;
mod inputs;
mod lifecycle;
mod rerun;
mod task;
mod wait;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::{
    Plan, PlanInput,
    expr::{LedgerScope, RunScope, Scope, StepScope},
    graph::{self, Graph},
};
use maestro_api::{CompositionRunStatus, CompositionSpec, RunPhase, TaskSpec};

use conditions::{normal, set_condition, warning};
use durations::add;
pub use rerun::after_end_work;

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
    let mut plan = Plan {
        status: input.status.clone(),
        ..Plan::default()
    };
    let finished = plan.status.phase.is_finished();
    if !finished || after_end_work(&plan.status, &input.observed.reruns) {
        match resolve(input, &plan.status) {
            Ok((composition, graph, tasks)) => Planner {
                input,
                composition: &composition,
                graph: &graph,
                tasks: &tasks,
                pod_budget: input.pod_budget,
                plan: &mut plan,
            }
            .run(),
            // A run that has ended keeps its outcome (its snapshot is what it ran).
            Err(_) if finished => {}
            Err(message) => invalid(&mut plan, input.now, message),
        }
    }
    plan.status.observed_generation = input.generation;
    plan
}

/// The composition this run follows, the steps each step waits for and the Tasks it
/// runs, or why the run is Invalid.
fn resolve(
    input: &PlanInput<'_>,
    status: &CompositionRunStatus,
) -> Result<(CompositionSpec, Graph, BTreeMap<String, TaskSpec>), String> {
    let composition = composition(input, status)?;
    let tasks = tasks(input, status)?;
    // Tasks and params are checked when the run starts. A run in flight is not made
    // Invalid later by a Task that is edited, deleted, or missing from a cache.
    let started = status.composition_spec.is_some();
    let used_tasks = tasks;
    // A rerun is checked against the Tasks its source ran, which it runs too.
    let known_tasks = match input.spec.rerun_of {
        Some(_) => &used_tasks,
        None => input.tasks,
    };
    let (tasks, params) = if started {
        (None, None)
    } else {
        (Some(known_tasks), Some(&input.spec.params))
    };
    let graph =
        graph::validate(&composition, tasks, params).map_err(|problems| problems.join("; "))?;
    // A child run inherits its parent's priority, which the parent's composition allowed.
    if !started && input.depth == 0 {
        check_priority(input.spec.priority, &composition)?;
    }
    Ok((composition, graph, used_tasks))
}

/// A run's priority above its composition's `maxPriority` (0 unless an author raised it)
/// is refused: a runner alone cannot jump the queue.
fn check_priority(priority: i32, composition: &CompositionSpec) -> Result<(), String> {
    let max = composition.max_priority.unwrap_or(0);
    if priority > max {
        return Err(format!(
            "spec.priority: {priority} is above the composition's maxPriority {max}; \
             only the composition's authors can raise that"
        ));
    }
    Ok(())
}

/// The Tasks this run runs: its snapshot once started, else the live ones. (A run started
/// before snapshots existed has none and keeps reading the live Tasks.)
fn tasks(
    input: &PlanInput<'_>,
    status: &CompositionRunStatus,
) -> Result<BTreeMap<String, TaskSpec>, String> {
    match &status.task_specs {
        Some(snapshot) => serde_json::from_value(snapshot.clone())
            .map_err(|e| format!("status.taskSpecs: unreadable snapshot: {e}")),
        // A rerun runs its source's Tasks, as they were when the source started.
        None => match (&input.spec.rerun_of, &input.observed.source) {
            (Some(_), Some(source)) => match &source.task_specs {
                Some(snapshot) => serde_json::from_value(snapshot.clone())
                    .map_err(|e| format!("the source's status.taskSpecs: unreadable: {e}")),
                None => Ok(input.tasks.clone()),
            },
            _ => Ok(input.tasks.clone()),
        },
    }
}

/// The composition this run follows: its snapshot once started, else the live one.
fn composition(
    input: &PlanInput<'_>,
    status: &CompositionRunStatus,
) -> Result<CompositionSpec, String> {
    if let Some(snapshot) = &status.composition_spec {
        return serde_json::from_value(snapshot.clone())
            .map_err(|e| format!("status.compositionSpec: unreadable snapshot: {e}"));
    }
    // A rerun follows its source's snapshot, not today's composition.
    if let Some(of) = &input.spec.rerun_of {
        let source = input.observed.source.as_ref().ok_or_else(|| {
            format!(
                "spec.rerunOf: run {} (uid {}) is gone; a rerun needs the run it reruns",
                of.run, of.uid
            )
        })?;
        let snapshot = source.composition_spec.as_ref().ok_or_else(|| {
            format!(
                "spec.rerunOf: run {} never started ({:?}): there is nothing to rerun",
                of.run, source.phase
            )
        })?;
        return serde_json::from_value(snapshot.clone())
            .map_err(|e| format!("the source's status.compositionSpec: unreadable: {e}"));
    }
    input.composition.cloned().ok_or_else(|| {
        format!(
            "spec.composition: composition {:?} not found in namespace {:?}",
            input.spec.composition, input.namespace
        )
    })
}

/// The run cannot go on: phase Invalid, with the message in its conditions.
fn invalid(plan: &mut Plan, now: Timestamp, message: String) {
    let status = &mut plan.status;
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
    plan.events.push(warning("Invalid", message));
}

/// One planning pass of a run whose composition is known and valid.
struct Planner<'a> {
    input: &'a PlanInput<'a>,
    /// The composition the run follows, as [`resolve`] found it.
    composition: &'a CompositionSpec,
    /// The steps each step waits for.
    graph: &'a Graph,
    /// The Tasks the run runs, by name: the snapshot once started.
    tasks: &'a BTreeMap<String, TaskSpec>,
    /// New step pods this pass may still start (`None`: no limit).
    pod_budget: Option<u32>,
    plan: &'a mut Plan,
}

/// How soon a step waiting for its Agent's capacity looks again.
const CAPACITY_RECHECK: Duration = Duration::from_secs(2);
impl Planner<'_> {
    fn run(&mut self) {
        if self.plan.status.phase.is_finished() {
            return self.after_end();
        }
        let stopping = self.input.spec.cancel || self.input.deleting;
        if let (super::Admission::Queued(reason), false) = (&self.input.admission, stopping)
            && self.plan.status.start_time.is_none()
        {
            return self.queue(reason);
        }
        // A rerun starts once its source has ended and handed it its ledger and workspace.
        let fresh_rerun = self
            .input
            .spec
            .rerun_of
            .as_ref()
            .filter(|_| self.plan.status.composition_spec.is_none());
        if let (Some(of), false) = (fresh_rerun, stopping) {
            match self.rerun_may_start(of) {
                Ok(true) => {}
                Ok(false) => return,
                Err(problem) => return invalid(self.plan, self.input.now, problem),
            }
        }
        if let Err(problem) = self.start() {
            return invalid(self.plan, self.input.now, problem);
        }
        if let (Some(of), false) = (fresh_rerun, stopping)
            && let Err(problem) = self.seed_rerun(of)
        {
            return invalid(self.plan, self.input.now, problem);
        }

        let outcome = if self.input.spec.cancel || self.input.deleting {
            self.cancel_steps();
            Some(Outcome::new(
                RunPhase::Cancelled,
                "Cancelled",
                "the run was cancelled".into(),
            ))
        } else {
            self.run_deadline().or_else(|| {
                let steps = self.composition.steps.len();
                // Steps ending in this pass can let later steps start in the same pass;
                // repeat until nothing changes (at most once per step, plus one).
                for _ in 0..=steps {
                    let before = self.plan.status.steps.clone();
                    for i in 0..steps {
                        self.advance_step(i);
                    }
                    if before == self.plan.status.steps {
                        break;
                    }
                }
                self.steps_outcome()
            })
        };
        self.update_progress();
        match outcome {
            None => self.show_progress(),
            Some(outcome) => {
                if self.cleanup(&outcome) {
                    self.end_run(outcome);
                }
            }
        }
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

    fn update_progress(&mut self) {
        let steps = &self.plan.status.steps;
        let done = steps.iter().filter(|s| s.phase.is_finished()).count();
        self.plan.status.progress = Some(format!("{done}/{}", steps.len()));
    }

    /// What expressions see now.
    fn scope(&self) -> Scope {
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        for p in &self.composition.params {
            if let Some(d) = &p.default {
                params.insert(p.name.clone(), d.clone());
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
