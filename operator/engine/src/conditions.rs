//! Status conditions, written one way for every kind: a condition's lastTransitionTime
//! changes only when its status does (True, False, Unknown); its reason, message and
//! observedGeneration are always the newest.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

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
