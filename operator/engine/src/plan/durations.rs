//! Durations: retry backoff, timestamp arithmetic and short human-readable forms.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use maestro_api::{Step, parse_duration};

/// Default wait before the first retry, and the cap of the doubling.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The wait before attempt `failed + 1`: the step's backoff, doubled per failure, capped.
pub(super) fn backoff(step: &Step, failed: u32) -> Duration {
    let retries = step.retries.as_ref();
    let first = retries
        .and_then(|r| r.backoff.as_deref())
        .and_then(|t| parse_duration(t).ok())
        .unwrap_or(DEFAULT_BACKOFF);
    let cap = retries
        .and_then(|r| r.max_backoff.as_deref())
        .and_then(|t| parse_duration(t).ok())
        .unwrap_or(DEFAULT_MAX_BACKOFF);
    let factor = 2u32.saturating_pow(failed.saturating_sub(1).min(20));
    first.saturating_mul(factor).min(cap)
}

pub(super) fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// A duration as people write it: `1m30s`, `250ms`.
pub(super) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let step: Step = serde_json::from_value(serde_json::json!({
            "name": "s", "task": "shell", "retries": {"limit": 5, "backoff": "1s", "maxBackoff": "5s"}
        }))
        .unwrap();
        let waits: Vec<u64> = (1..=5).map(|n| backoff(&step, n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(90)), "1m30s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(86400)), "24h");
    }
}
