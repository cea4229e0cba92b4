//! Status conditions and event notes.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use crate::EventNote;

/// Sets a condition, keeping its lastTransitionTime when its status does not change.
pub(super) fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let transition = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: transition,
        observed_generation: None,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

pub(super) fn normal(reason: &'static str, message: String) -> EventNote {
    EventNote {
        reason,
        message,
        warning: false,
    }
}

pub(super) fn warning(reason: &'static str, message: String) -> EventNote {
    EventNote {
        reason,
        message,
        warning: true,
    }
}
