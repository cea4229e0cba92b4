use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The pattern every duration field accepts: one or more number+unit pairs, `ms`, `s`,
/// `m` or `h`, like `90s`, `5m` or `1h30m`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// Parses a duration written as in [`DURATION_PATTERN`].
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?} is not a duration like 90s, 5m or 1h30m"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (std::time::Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (std::time::Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (std::time::Duration::from_secs(3600), 1)
        } else {
            return Err(format!("{text:?} is not a duration like 90s, 5m or 1h30m"));
        };
        rest = &rest[len..];
        total += unit
            .checked_mul(u32::try_from(n).map_err(|_| format!("{text:?}: number too large"))?)
            .ok_or_else(|| format!("{text:?}: too long"))?;
    }
    Ok(total)
}

/// Who may clean up what a run created in the outside world (its resource ledger).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CleanupPolicy {
    /// Deprovision everything left in the ledger when the run ends, whatever its outcome.
    #[default]
    Always,
    /// Deprovision leftovers only when the run succeeded; keep them for inspection otherwise.
    OnSuccess,
    /// Never deprovision automatically.
    Never,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_compound_durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn refuses_bad_durations() {
        for bad in ["", "5", "m", "5d", "1h 2m", "-3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
