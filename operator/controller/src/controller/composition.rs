//! The Composition controller: validates each composition against the Tasks it uses and
//! reports Ready, or Ready=False with reason Invalid and a message naming the problem;
//! runs the composition's cron trigger (see `cron`). The whole status is computed here and
//! applied once, so one field manager owns all of it.

use std::sync::Arc;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::controller::Action as Requeue,
};
use serde_json::json;

use super::{Context, Error, FIELD_MANAGER, backoff_action, cron, key, world};
use maestro_api::{Composition, CompositionStatus};
use maestro_engine::graph;
use maestro_engine::triggers;

pub async fn reconcile(
    guard: Arc<DeserializeGuard<Composition>>,
    ctx: Arc<Context>,
) -> Result<Requeue, Error> {
    ctx.metrics
        .reconciles
        .with_label_values(&["composition"])
        .inc();
    let _timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values(&["composition"])
        .start_timer();
    let composition = match &guard.0 {
        Ok(c) => c,
        Err(invalid) => {
            tracing::warn!(object = %key(guard.as_ref()), error = %invalid.error, "malformed Composition");
            return Ok(Requeue::await_change());
        }
    };
    let ns = composition.namespace().ok_or(Error::NoNamespace)?;
    let tasks = world::tasks_of(&ctx, &ns, &composition.spec);
    let mut problems = graph::validate(&composition.spec, Some(&tasks), None)
        .err()
        .unwrap_or_default();
    problems.extend(triggers::validate(&composition.spec));
    let (status, reason, message) = if problems.is_empty() {
        (
            "True",
            "Valid",
            "the composition is valid; runs can start".to_string(),
        )
    } else {
        ("False", "Invalid", problems.join("; "))
    };
    let old = composition.status.clone().unwrap_or_default();
    // The schedule runs only for a valid composition; its times are kept either way.
    let cron_trigger = composition
        .spec
        .triggers
        .as_ref()
        .and_then(|t| t.cron.as_ref())
        .filter(|_| problems.is_empty());
    let tick = match cron_trigger {
        Some(cron_trigger) => {
            cron::tick(composition, cron_trigger, &old, &ctx, chrono::Utc::now()).await?
        }
        None => cron::Tick {
            last_schedule_time: old.last_schedule_time.clone(),
            last_skipped_time: old.last_skipped_time.clone(),
            requeue_after: None,
        },
    };
    let transition = old
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(Timestamp::now()));
    let new = CompositionStatus {
        observed_generation: composition.metadata.generation,
        step_count: i64::try_from(composition.spec.steps.len()).ok(),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: transition,
            observed_generation: composition.metadata.generation,
        }],
        last_schedule_time: tick.last_schedule_time,
        last_skipped_time: tick.last_skipped_time,
    };
    if new != old {
        let api: Api<Composition> = Api::namespaced(ctx.client.clone(), &ns);
        let patch =
            json!({"apiVersion": "maestro.dev/v1alpha1", "kind": "Composition", "status": new});
        api.patch_status(
            &composition.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    ctx.succeeded(&key(guard.as_ref()));
    Ok(match tick.requeue_after {
        Some(wait) => Requeue::requeue(wait),
        None => Requeue::await_change(),
    })
}

pub fn error_policy(
    guard: Arc<DeserializeGuard<Composition>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Requeue {
    backoff_action(guard.as_ref(), error, &ctx, "composition")
}
