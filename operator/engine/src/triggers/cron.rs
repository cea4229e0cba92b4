//! The cron trigger's decisions, as pure functions of the schedule, what the status
//! remembers and the clock, so every case is unit-tested with an injected `now`. The
//! rules follow CronJob's: a schedule time before the composition existed never fires;
//! after downtime only the most recent missed time starts a run, and only while it is
//! within `startingDeadlineSeconds`; Forbid skips a time while a run it started is still
//! going; Replace cancels that run and starts the new one.

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};

use maestro_api::{ConcurrencyPolicy, labels};

/// A parsed five-field schedule in its time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    time_zone: Tz,
}

impl Schedule {
    /// Parses `schedule` (five fields, or `@hourly`-style nicknames) read in the IANA
    /// `time_zone` (UTC when absent); the error names what is wrong.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, String> {
        let time_zone = match time_zone {
            None | Some("") => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| format!("unknown time zone {name:?}"))?,
        };
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(schedule)
            .map_err(|e| format!("invalid schedule {schedule:?}: {e}"))?;
        Ok(Self { cron, time_zone })
    }

    /// The most recent schedule time at or before `now`.
    pub fn latest_at_or_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&now.with_timezone(&self.time_zone), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The first schedule time after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&now.with_timezone(&self.time_zone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// What the schedule decision looks at.
#[derive(Clone, Debug)]
pub struct CronState<'a> {
    /// The composition's name (it names the runs).
    pub composition: &'a str,
    /// When the composition was created: earlier schedule times never fire.
    pub created: DateTime<Utc>,
    /// The latest schedule time already handled (started or skipped), from the status.
    pub last_handled: Option<DateTime<Utc>>,
    /// `startingDeadlineSeconds`.
    pub starting_deadline: Option<Duration>,
    pub policy: ConcurrencyPolicy,
    /// Runs this schedule started that have not ended, by name.
    pub active_runs: &'a [String],
    pub now: DateTime<Utc>,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No schedule time is due.
    Wait,
    /// Start the run `name` for schedule time `at`, after cancelling `cancel` (Replace).
    Start {
        at: DateTime<Utc>,
        name: String,
        cancel: Vec<String>,
    },
    /// Skip schedule time `at`: a run is still going and the policy is Forbid.
    Skip { at: DateTime<Utc> },
}

/// The decision and when to look again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub decision: Decision,
    /// The next schedule time after now (None if the schedule never fires again).
    pub next: Option<DateTime<Utc>>,
}

/// The run a schedule starts for time `at`: `<composition>-<minutes since the epoch>`,
/// so an operator that restarts (or a new leader) never starts the same time twice.
pub fn run_name(composition: &str, at: DateTime<Utc>) -> String {
    labels::bounded_name(&format!("{composition}-{}", at.timestamp().div_euclid(60)))
}

/// Decides what the schedule does at `state.now`.
pub fn decide(schedule: &Schedule, state: &CronState) -> Plan {
    let next = schedule.next_after(state.now);
    let mut earliest = state
        .last_handled
        .map_or(state.created, |t| t.max(state.created));
    if let Some(deadline) = state.starting_deadline {
        // A time older than the deadline is missed for good.
        earliest = earliest.max(state.now - deadline - Duration::nanoseconds(1));
    }
    let decision = match schedule.latest_at_or_before(state.now) {
        Some(at) if at > earliest => {
            let name = run_name(state.composition, at);
            // The run for this very time may exist already (created just before a
            // restart): it is this decision's own run, not a concurrent one.
            let others: Vec<String> = state
                .active_runs
                .iter()
                .filter(|r| **r != name)
                .cloned()
                .collect();
            match state.policy {
                ConcurrencyPolicy::Forbid if !others.is_empty() => Decision::Skip { at },
                ConcurrencyPolicy::Replace => Decision::Start {
                    at,
                    name,
                    cancel: others,
                },
                _ => Decision::Start {
                    at,
                    name,
                    cancel: Vec::new(),
                },
            }
        }
        _ => Decision::Wait,
    };
    Plan { decision, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn state<'a>(now: &str, last: Option<&str>, active: &'a [String]) -> CronState<'a> {
        CronState {
            composition: "nightly",
            created: t("2026-01-01T00:00:30Z"),
            last_handled: last.map(t),
            starting_deadline: None,
            policy: ConcurrencyPolicy::Allow,
            active_runs: active,
            now: t(now),
        }
    }

    fn every_minute() -> Schedule {
        Schedule::parse("* * * * *", None).unwrap()
    }

    #[test]
    fn parses_five_fields_nicknames_and_time_zones_and_names_errors() {
        assert!(Schedule::parse("*/15 * * * *", None).is_ok());
        assert!(Schedule::parse("0 3 * * MON-FRI", Some("Europe/Paris")).is_ok());
        assert!(Schedule::parse("@hourly", Some("UTC")).is_ok());
        let six = Schedule::parse("0 * * * * *", None).unwrap_err();
        assert!(six.contains("invalid schedule"), "{six}");
        assert!(Schedule::parse("61 * * * *", None).is_err());
        let zone = Schedule::parse("* * * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(zone.contains("unknown time zone"), "{zone}");
    }

    #[test]
    fn nothing_before_the_first_schedule_time_after_creation() {
        let plan = decide(&every_minute(), &state("2026-01-01T00:00:59Z", None, &[]));
        assert_eq!(plan.decision, Decision::Wait);
        assert_eq!(plan.next, Some(t("2026-01-01T00:01:00Z")));
    }

    #[test]
    fn a_due_time_starts_a_run_named_after_it_once() {
        let s = every_minute();
        let plan = decide(&s, &state("2026-01-01T00:01:02Z", None, &[]));
        let at = t("2026-01-01T00:01:00Z");
        assert_eq!(
            plan.decision,
            Decision::Start {
                at,
                name: format!("nightly-{}", at.timestamp() / 60),
                cancel: vec![]
            }
        );
        assert_eq!(plan.next, Some(t("2026-01-01T00:02:00Z")));
        // Once recorded in the status, the same time is not started again.
        let again = decide(
            &s,
            &state("2026-01-01T00:01:40Z", Some("2026-01-01T00:01:00Z"), &[]),
        );
        assert_eq!(again.decision, Decision::Wait);
    }

    #[test]
    fn after_downtime_only_the_latest_missed_time_starts() {
        let plan = decide(
            &every_minute(),
            &state("2026-01-01T05:07:30Z", Some("2026-01-01T00:01:00Z"), &[]),
        );
        assert!(
            matches!(plan.decision, Decision::Start { at, .. } if at == t("2026-01-01T05:07:00Z")),
            "{plan:?}"
        );
    }

    #[test]
    fn a_missed_time_older_than_the_starting_deadline_is_skipped() {
        let s = Schedule::parse("0 * * * *", None).unwrap();
        let mut st = state("2026-01-01T05:02:00Z", Some("2026-01-01T04:00:00Z"), &[]);
        st.starting_deadline = Some(Duration::seconds(60));
        assert_eq!(
            decide(&s, &st).decision,
            Decision::Wait,
            "05:00 is 120 s late"
        );
        st.starting_deadline = Some(Duration::seconds(300));
        assert!(
            matches!(decide(&s, &st).decision, Decision::Start { at, .. } if at == t("2026-01-01T05:00:00Z"))
        );
    }

    #[test]
    fn forbid_skips_while_a_run_is_going_allow_starts_replace_cancels() {
        let s = every_minute();
        let active = vec!["nightly-29455201".to_string()];
        let mut st = state(
            "2026-01-01T00:02:01Z",
            Some("2026-01-01T00:01:00Z"),
            &active,
        );
        st.policy = ConcurrencyPolicy::Forbid;
        assert_eq!(
            decide(&s, &st).decision,
            Decision::Skip {
                at: t("2026-01-01T00:02:00Z")
            }
        );
        st.policy = ConcurrencyPolicy::Allow;
        assert!(
            matches!(decide(&s, &st).decision, Decision::Start { ref cancel, .. } if cancel.is_empty())
        );
        st.policy = ConcurrencyPolicy::Replace;
        assert!(
            matches!(decide(&s, &st).decision, Decision::Start { ref cancel, .. } if *cancel == active)
        );
        // With nothing going, Forbid starts.
        st.policy = ConcurrencyPolicy::Forbid;
        st.active_runs = &[];
        assert!(matches!(decide(&s, &st).decision, Decision::Start { .. }));
    }

    #[test]
    fn the_run_of_the_due_time_itself_is_not_a_concurrent_run() {
        let s = every_minute();
        let at = t("2026-01-01T00:02:00Z");
        let own = vec![run_name("nightly", at)];
        let mut st = state("2026-01-01T00:02:05Z", Some("2026-01-01T00:01:00Z"), &own);
        st.policy = ConcurrencyPolicy::Forbid;
        assert!(matches!(decide(&s, &st).decision, Decision::Start { .. }));
    }

    #[test]
    fn time_zones_shift_the_schedule() {
        let paris = Schedule::parse("0 3 * * *", Some("Europe/Paris")).unwrap();
        // 03:00 in Paris is 02:00 UTC in winter.
        assert_eq!(
            paris.next_after(t("2026-01-10T00:00:00Z")),
            Some(t("2026-01-10T02:00:00Z"))
        );
        let utc = Schedule::parse("0 3 * * *", None).unwrap();
        assert_eq!(
            utc.next_after(t("2026-01-10T00:00:00Z")),
            Some(t("2026-01-10T03:00:00Z"))
        );
    }

    #[test]
    fn run_names_fit_in_63_characters() {
        let long = "c".repeat(60);
        let name = run_name(&long, t("2026-01-01T00:02:00Z"));
        assert!(name.len() <= 63, "{name}");
        assert_ne!(name, run_name(&long, t("2026-01-01T00:03:00Z")));
    }
}
