//! Status conditions, written one way for every kind: a condition's lastTransitionTime
//! changes only when its status does (True, False, Unknown); its reason, message and
//! observedGeneration are always the newest.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// Sets `new` in `conditions`, replacing the condition of the same type. `new` carries
/// the time of this pass as its lastTransitionTime; the old time is kept when the status
/// is unchanged. The list stays sorted by type, so equal content compares equal.
pub fn set(conditions: &mut Vec<Condition>, mut new: Condition) {
    if let Some(old) = conditions
        .iter()
        .find(|c| c.type_ == new.type_ && c.status == new.status)
    {
        new.last_transition_time = old.last_transition_time.clone();
    }
    conditions.retain(|c| c.type_ != new.type_);
    conditions.push(new);
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}
/// The conditions of an object whose only condition is `Ready` (a Composition, an Agent):
/// `Ready` from `old`, set to this pass's status, reason and message at `now`.
pub fn ready_only(
    old: &[Condition],
    status: &str,
    reason: &str,
    message: String,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut conditions: Vec<Condition> =
        old.iter().filter(|c| c.type_ == "Ready").cloned().collect();
    set(
        &mut conditions,
        Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: Time(now),
            observed_generation,
        },
    );
    conditions
}
