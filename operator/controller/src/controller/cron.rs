//! The cron trigger, run by the Composition controller (so only by the leader): applies
//! the pure decision of `triggers::cron` — creates the due run, cancels runs it replaces —
//! and says what the status should remember and when to look again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, Resource, ResourceExt, api::PatchParams};
use serde_json::json;

use super::context::{Context, Error, FIELD_MANAGER, publish};
use super::world;
use crate::k8s::{self, Created, Found, RunBuilder};
use maestro_api::labels;
use maestro_api::{Composition, CompositionRun, CompositionStatus, CronTrigger};
use maestro_engine::triggers::cron::{self, CronState, Decision, Schedule};

/// The cron fields of the status after a tick, and when to tick again.
pub struct Tick {
    pub last_schedule_time: Option<Time>,
    pub last_skipped_time: Option<Time>,
    pub requeue_after: Option<Duration>,
}

/// The trigger value marking runs a schedule started.
const CRON: &str = "cron";

/// Handles the composition's schedule at `now`.
pub async fn tick(
    composition: &Composition,
    cron_trigger: &CronTrigger,
    old: &CompositionStatus,
    ctx: &Context,
    now: DateTime<Utc>,
) -> Result<Tick, Error> {
    let mut tick = Tick {
        last_schedule_time: old.last_schedule_time.clone(),
        last_skipped_time: old.last_skipped_time.clone(),
        requeue_after: None,
    };
    // An invalid schedule is reported by validation, in the Ready condition.
    let Ok(schedule) = Schedule::parse(&cron_trigger.schedule, cron_trigger.time_zone.as_deref())
    else {
        return Ok(tick);
    };
    let ns = composition.namespace().ok_or(Error::NoNamespace)?;
    let name = composition.name_any();
    let active: Vec<String> = world::runs_in(ctx, &ns)
        .iter()
        .filter(|r| {
            r.spec.composition == name
                && r.labels().get(labels::TRIGGER).map(String::as_str) == Some(CRON)
                && !r.status.as_ref().is_some_and(|s| s.phase.is_finished())
        })
        .map(|r| r.name_any())
        .collect();
    let handled = [&old.last_schedule_time, &old.last_skipped_time]
        .into_iter()
        .flatten()
        .filter_map(|t| to_chrono(&t.0))
        .max();
    let created = composition
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| to_chrono(&t.0))
        .unwrap_or(now);
    let state = CronState {
        composition: &name,
        created,
        last_handled: handled,
        starting_deadline: cron_trigger
            .starting_deadline_seconds
            .map(chrono::Duration::seconds),
        policy: cron_trigger.concurrency_policy,
        active_runs: &active,
        now,
    };
    let plan = cron::decide(&schedule, &state);
    let runs: Api<CompositionRun> = Api::namespaced(ctx.client.clone(), &ns);
    match plan.decision {
        Decision::Wait => {}
        Decision::Skip { at } => {
            tracing::info!(composition = %name, %at, running = ?active, "schedule time skipped: a run is still going (concurrencyPolicy Forbid)");
            ctx.metrics
                .cron_schedules
                .with_label_values(&[name.as_str(), "skipped"])
                .inc();
            tick.last_skipped_time = to_time(at);
            let note = format!(
                "skipped the run of {at}: {} still running (concurrencyPolicy Forbid)",
                active.join(", ")
            );
            record(ctx, composition, "ScheduleSkipped", note).await;
        }
        Decision::Start {
            at,
            name: run,
            cancel,
        } => {
            for old_run in &cancel {
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                let patch = json!({"spec": {"cancel": true}});
                let found = k8s::merge_or_gone(&runs, old_run, &params, &patch)
                    .await
                    .map_err(|source| Error::CancelRun {
                        name: old_run.clone(),
                        source,
                    })?;
                // Gone: deleted meanwhile, nothing left to replace.
                if found == Found::Found {
                    tracing::info!(composition = %name, run = %old_run, "cancelled: replaced by the next scheduled run")
                }
            }
            let outcome = create_run(&runs, composition, cron_trigger, &run, &ns).await?;
            match outcome {
                Scheduled::Taken(holder) => {
                    // Someone else's run holds the name: it is not the scheduled run and
                    // must not stand in for it. The time counts as handled (skipped), so
                    // the warning is said once, not on every look.
                    tracing::warn!(composition = %name, %run, %holder, "schedule time skipped: its run name is taken");
                    ctx.metrics
                        .cron_schedules
                        .with_label_values(&[name.as_str(), "skipped"])
                        .inc();
                    tick.last_skipped_time = to_time(at);
                    let note = format!(
                        "skipped the run of {at}: run {run} already exists and is not this \
                         schedule's ({holder}); nothing was started under that name"
                    );
                    warn(ctx, composition, "ScheduleNameTaken", note).await;
                }
                // A run found already there (created before a restart) was counted then.
                Scheduled::Existed => tick.last_schedule_time = to_time(at),
                Scheduled::Created => {
                    tick.last_schedule_time = to_time(at);
                    let result = if cancel.is_empty() {
                        "started"
                    } else {
                        "replaced"
                    };
                    ctx.metrics
                        .cron_schedules
                        .with_label_values(&[name.as_str(), result])
                        .inc();
                    let mut note = format!("started run {run} for {at}");
                    if !cancel.is_empty() {
                        note.push_str(&format!(", replacing {}", cancel.join(", ")));
                    }
                    record(ctx, composition, "ScheduleStarted", note).await;
                }
            }
        }
    }
    tick.requeue_after = plan.next.map(|next| {
        // A little after the minute starts, so the time is surely due when looked at.
        (next - now)
            .to_std()
            .unwrap_or_default()
            .saturating_add(Duration::from_millis(500))
    });
    Ok(tick)
}

/// What creating a scheduled run found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scheduled {
    Created,
    /// This schedule's run was there already (created before a restart, or by the previous
    /// leader): the same time, once.
    Existed,
    /// A run of that name is there that this schedule did not make (a runner created it
    /// first, or it is left from a deleted Composition of the same name); who owns it.
    Taken(String),
}

/// Creates the schedule's run, owned by the Composition (as a CronJob owns its Jobs), so
/// that a run of that name found there already proves by the owner's UID, and the reserved
/// trigger label only the operator may set, that it is this schedule's.
pub(super) async fn create_run(
    runs: &Api<CompositionRun>,
    composition: &Composition,
    cron_trigger: &CronTrigger,
    run: &str,
    ns: &str,
) -> Result<Scheduled, Error> {
    let composition_name = composition.name_any();
    let Some(mut owner) = composition.controller_owner_ref(&()) else {
        // No UID (never so for an object read from the API): nothing could prove the
        // run is this schedule's.
        return Ok(Scheduled::Taken("the Composition has no UID".into()));
    };
    // The run need not hold up the Composition's deletion (that would need the right to
    // update compositions/finalizers); it only has to go with it.
    owner.block_owner_deletion = None;
    let composition_uid = owner.uid.clone();
    // The builder's priority 0: a scheduled run queues like a manual one.
    let new = RunBuilder::new(run, ns, &composition_name)
        .label(labels::COMPOSITION, &composition_name)
        .label(labels::TRIGGER, CRON)
        .params(cron_trigger.params.clone())
        .owner(owner)
        .build();
    let created = k8s::create_or_existing(runs, &new)
        .await
        .map_err(|source| Error::CreateRun {
            name: run.to_string(),
            source,
        })?;
    if created == Created::Created {
        tracing::info!(composition = %composition_name, %run, "schedule started a run");
        return Ok(Scheduled::Created);
    }
    let is_scheduled = |existing: &CompositionRun| {
        let marks = existing.labels();
        existing
            .owner_references()
            .iter()
            .any(|o| o.uid == composition_uid)
            && marks.get(labels::TRIGGER).map(String::as_str) == Some(CRON)
            && marks.get(labels::COMPOSITION) == Some(&composition_name)
    };
    let holder = k8s::holder_unless(runs, run, is_scheduled)
        .await
        .map_err(|source| Error::ReadExisting {
            name: run.to_string(),
            source,
        })?;
    Ok(match holder {
        Some(holder) => Scheduled::Taken(holder),
        None => Scheduled::Existed,
    })
}

/// An Event on the composition, so `kubectl describe comp` tells what the schedule did.
async fn record(ctx: &Context, composition: &Composition, reason: &'static str, note: String) {
    let note = maestro_engine::EventNote {
        reason,
        message: note,
        warning: false,
        routine: false,
    };
    publish(ctx, &composition.object_ref(&()), "Schedule", vec![note]);
}

/// A Warning Event on the composition: the schedule could not do what it should.
async fn warn(ctx: &Context, composition: &Composition, reason: &'static str, note: String) {
    let note = maestro_engine::EventNote {
        reason,
        message: note,
        warning: true,
        routine: false,
    };
    publish(ctx, &composition.object_ref(&()), "Schedule", vec![note]);
}

fn to_chrono(t: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), u32::try_from(t.subsec_nanosecond()).ok()?)
}

fn to_time(t: DateTime<Utc>) -> Option<Time> {
    Timestamp::from_second(t.timestamp()).ok().map(Time)
}
