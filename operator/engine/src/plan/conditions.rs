//! The run's conditions (written through the crate's one condition writer) and event notes.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use crate::EventNote;

/// Sets a condition of the run through the one condition writer, [`crate::conditions::set`]
/// (its lastTransitionTime kept while its status does not change).
pub(super) fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    crate::conditions::set(
        conditions,
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(now),
            observed_generation: None,
        },
    );
}

pub(super) fn normal(reason: &'static str, message: String) -> EventNote {
    EventNote {
        reason,
        message,
        warning: false,
        routine: false,
    }
}

/// A step's routine progress: see [`EventNote::routine`].
pub(super) fn routine(reason: &'static str, message: String) -> EventNote {
    EventNote {
        routine: true,
        ..normal(reason, message)
    }
}

pub(super) fn warning(reason: &'static str, message: String) -> EventNote {
    EventNote {
        reason,
        message,
        warning: true,
        routine: false,
    }
}
