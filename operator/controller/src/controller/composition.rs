//! The Composition controller: validates each composition against the Tasks it uses and
//! reports Ready, or Ready=False with reason Invalid and a message naming the problem;
//! runs the composition's cron trigger (see `cron`). The whole status is computed here and
//! applied once, so one field manager owns all of it.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt, core::DeserializeGuard, runtime::controller::Action as Requeue};

use super::context::{Context, Error, backoff_action, key};
use super::{cron, world};
use crate::k8s;
use maestro_api::{Composition, CompositionStatus};
use maestro_engine::conditions;
use maestro_engine::graph;
use maestro_engine::triggers::{self, signature};

#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(composition = %guard.name_any(), namespace = %guard.namespace().unwrap_or_default())
)]
pub async fn reconcile(
    guard: Arc<DeserializeGuard<Composition>>,
    ctx: Arc<Context>,
) -> Result<Requeue, Error> {
    if !ctx.writes() {
        // A follower (or a leader whose caches are not complete yet) does not act; it
        // reconciles everything once it writes.
        return Ok(Requeue::await_change());
    }
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
    let secret_problems = webhook_secret_problems(&ctx, &ns, composition).await;
    // Secrets are not watched: look again a little later, until they are right.
    let secrets_requeue = (!secret_problems.is_empty()).then_some(SECRET_RECHECK);
    problems.extend(secret_problems);
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
    let conditions = conditions::ready_only(
        &old.conditions,
        status,
        reason,
        message,
        composition.metadata.generation,
        Timestamp::now(),
    );
    let new = CompositionStatus {
        observed_generation: composition.metadata.generation,
        step_count: i64::try_from(composition.spec.steps.len()).ok(),
        conditions,
        last_schedule_time: tick.last_schedule_time,
        last_skipped_time: tick.last_skipped_time,
    };
    if new != old {
        let api: Api<Composition> = Api::namespaced(ctx.client.clone(), &ns);
        let name = composition.name_any();
        k8s::apply_status(&api, &name, &new)
            .await
            .map_err(|source| Error::PatchStatus {
                kind: "Composition",
                name,
                source,
            })?;
    }
    ctx.succeeded(&key(guard.as_ref()));
    let requeue = match (tick.requeue_after, secrets_requeue) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(match requeue {
        Some(wait) => Requeue::requeue(wait),
        None => Requeue::await_change(),
    })
}

/// How soon a composition whose webhook secret is missing or too short is checked again
/// (the operator may not watch Secrets, so it asks; one GET per broken trigger is cheap).
const SECRET_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Problems with the Secrets of the git triggers: missing, without the key, or shorter
/// than a signature secret may be (deliveries for such a trigger would all be refused).
pub(super) async fn webhook_secret_problems(
    ctx: &Context,
    ns: &str,
    composition: &Composition,
) -> Vec<String> {
    let mut problems = Vec::new();
    let git = composition.spec.triggers.iter().flat_map(|t| &t.git);
    for (i, trigger) in git.enumerate() {
        let reference = &trigger.secret_ref;
        let at = format!("spec.triggers.git[{i}].secretRef");
        // One message for a missing Secret, a missing key and a short value, without the
        // length: the operator reads with its own right, and the author (whom the
        // author-secrets policy lets name only Secrets they may read) must learn no more
        // from the condition than from reading it. The detail goes to the operator's log.
        let usable = match k8s::secret_key(&ctx.client, ns, &reference.name, &reference.key).await {
            Ok(secret) if secret.len() >= signature::MIN_SECRET_BYTES => Ok(()),
            Ok(secret) => Err(format!("{} bytes", secret.len())),
            Err(why) => Err(why),
        };
        if let Err(why) = usable {
            tracing::info!(composition = %composition.name_any(), secret = %reference.name, key = %reference.key, %why, "webhook secret unusable");
            problems.push(unusable_webhook_secret(
                &at,
                &reference.name,
                &reference.key,
            ));
        }
    }
    problems
}

/// The Ready condition's words for a git trigger's Secret that cannot verify deliveries,
/// the same whatever is wrong with it.
fn unusable_webhook_secret(at: &str, secret: &str, key: &str) -> String {
    format!(
        "{at}: key {key:?} of Secret {secret} is missing, or shorter than {} bytes (every \
         delivery is refused until then)",
        signature::MIN_SECRET_BYTES
    )
}

pub fn error_policy(
    guard: Arc<DeserializeGuard<Composition>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Requeue {
    backoff_action(guard.as_ref(), error, &ctx, "composition")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;

    fn ready(status: &str, message: &str, at: i64) -> Condition {
        Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: "Valid".into(),
            message: message.into(),
            last_transition_time: Time(Timestamp::from_second(at).unwrap_or(Timestamp::UNIX_EPOCH)),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_does() {
        let mut conditions = vec![ready("True", "old", 100)];
        conditions::set(&mut conditions, ready("True", "new message", 200));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].message, "new message");
        assert_eq!(
            conditions[0].last_transition_time,
            ready("True", "", 100).last_transition_time
        );
        conditions::set(&mut conditions, ready("False", "broken", 300));
        assert_eq!(conditions.len(), 1);
        assert_eq!(
            conditions[0].last_transition_time,
            ready("False", "", 300).last_transition_time
        );
    }
}
