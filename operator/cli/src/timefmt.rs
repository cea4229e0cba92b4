//! Ages and durations as people read them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::table::NONE;

/// Whole seconds from `from` to `to`.
pub fn seconds_between(from: Timestamp, to: Timestamp) -> i64 {
    to.duration_since(from).as_secs()
}

/// An object's age as `kubectl get` prints it (`45s`, `6m5s`, `6m`, `2h5m`, `3d4h`,
/// `12d`): precise while young, coarser as it ages. Mirrors apimachinery's HumanDuration
/// so our AGE column agrees with kubectl's.
pub fn format_age(seconds: i64) -> String {
    const MINUTE: i64 = 60;
    const HOUR: i64 = 60 * MINUTE;
    const DAY: i64 = 24 * HOUR;
    const YEAR: i64 = 365 * DAY;
    let s = seconds.max(0);
    if s < 2 * MINUTE {
        format!("{s}s")
    } else if s < 10 * MINUTE {
        match s % MINUTE {
            0 => format!("{}m", s / MINUTE),
            rest => format!("{}m{rest}s", s / MINUTE),
        }
    } else if s < 3 * HOUR {
        format!("{}m", s / MINUTE)
    } else if s < 8 * HOUR {
        match (s % HOUR) / MINUTE {
            0 => format!("{}h", s / HOUR),
            minutes => format!("{}h{minutes}m", s / HOUR),
        }
    } else if s < 2 * DAY {
        format!("{}h", s / HOUR)
    } else if s < 8 * DAY {
        match (s % DAY) / HOUR {
            0 => format!("{}d", s / DAY),
            hours => format!("{}d{hours}h", s / DAY),
        }
    } else if s < 2 * YEAR {
        format!("{}d", s / DAY)
    } else if s < 8 * YEAR {
        match (s % YEAR) / DAY {
            0 => format!("{}y", s / YEAR),
            days => format!("{}y{days}d", s / YEAR),
        }
    } else {
        format!("{}y", s / YEAR)
    }
}

/// How long something took, with fixed-width minor units so a column of them lines up:
/// `7s`, `1m05s`, `2h03m`, `3d04h`.
pub fn format_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// A step's or run's duration: from its start to its end, or to `now` while it runs.
pub fn span(start: Option<&Time>, end: Option<&Time>, now: Timestamp) -> String {
    match start {
        Some(start) => format_duration(seconds_between(start.0, end.map_or(now, |end| end.0))),
        None => "-".to_string(),
    }
}

/// A point in time with how long ago it was: `2025-05-01T10:00:00Z (6m ago)`.
pub fn moment(time: Option<&Time>, now: Timestamp) -> String {
    match time {
        Some(time) => format!(
            "{} ({} ago)",
            time.0,
            format_age(seconds_between(time.0, now))
        ),
        None => NONE.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_follow_kubectl() {
        assert_eq!(format_age(-3), "0s");
        assert_eq!(format_age(45), "45s");
        assert_eq!(format_age(119), "119s");
        assert_eq!(format_age(365), "6m5s");
        assert_eq!(format_age(360), "6m");
        assert_eq!(format_age(45 * 60), "45m");
        assert_eq!(format_age(5 * 3600 + 7 * 60), "5h7m");
        assert_eq!(format_age(30 * 3600), "30h");
        assert_eq!(format_age(3 * 86400 + 4 * 3600), "3d4h");
        assert_eq!(format_age(40 * 86400), "40d");
        assert_eq!(format_age(3 * 365 * 86400 + 86400), "3y1d");
    }

    #[test]
    fn durations_keep_fixed_minor_units() {
        assert_eq!(format_duration(7), "7s");
        assert_eq!(format_duration(65), "1m05s");
        assert_eq!(format_duration(3600 + 180 + 9), "1h03m");
        assert_eq!(format_duration(2 * 86400 + 3600), "2d01h");
        assert_eq!(format_duration(-1), "0s");
    }

    #[test]
    fn spans_run_to_now_while_unfinished() {
        let start: Timestamp = "2025-05-01T10:00:00Z".parse().unwrap();
        let end: Timestamp = "2025-05-01T10:01:05Z".parse().unwrap();
        let now: Timestamp = "2025-05-01T10:02:00Z".parse().unwrap();
        assert_eq!(span(Some(&Time(start)), Some(&Time(end)), now), "1m05s");
        assert_eq!(span(Some(&Time(start)), None, now), "2m00s");
        assert_eq!(span(None, None, now), "-");
        assert_eq!(
            moment(Some(&Time(start)), now),
            "2025-05-01T10:00:00Z (2m ago)"
        );
    }
}
