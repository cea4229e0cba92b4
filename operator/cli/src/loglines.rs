//! Log lines: tagging them with their step, and resuming a broken log stream without
//! printing a line twice or losing one.

use k8s_openapi::jiff::Timestamp;

/// `[step]` padded to `width` and a space before `line`, so the lines of all steps start
/// in the same column.
pub fn tag_line(tag: &str, width: usize, line: &str) -> String {
    format!("{tag:<width$} {line}")
}

/// The width that aligns all these tags.
pub fn tag_width<'a>(tags: impl IntoIterator<Item = &'a str>) -> usize {
    tags.into_iter()
        .map(|tag| tag.chars().count())
        .max()
        .unwrap_or(0)
}

/// Splits the RFC 3339 timestamp the API puts before each line with `timestamps=true`
/// from the line itself. A line without one is returned whole.
pub fn split_timestamp(line: &str) -> (Option<Timestamp>, &str) {
    match line.split_once(' ') {
        Some((stamp, rest)) => match stamp.parse::<Timestamp>() {
            Ok(time) => (Some(time), rest),
            Err(_) => (None, line),
        },
        None => match line.parse::<Timestamp>() {
            // An empty line carries only its timestamp.
            Ok(time) => (Some(time), ""),
            Err(_) => (None, line),
        },
    }
}

/// Remembers how far a pod's log has been printed, so that a stream reopened after a
/// break (a restart of the API server, a dropped connection) prints only what is new.
///
/// The API resumes from a whole second (`sinceTime`), so the new stream repeats the
/// lines of that second already printed; lines are told apart by their nanosecond
/// timestamps, and by counting, for lines that share one.
#[derive(Debug, Default)]
pub struct ResumePoint {
    last: Option<Timestamp>,
    /// How many printed lines carry exactly `last`.
    printed_at_last: usize,
    /// While replaying a reopened stream: how many lines at `last` it has repeated.
    replayed_at_last: usize,
}

impl ResumePoint {
    /// Where to reopen the stream: the start of the second of the last printed line.
    pub fn since(&self) -> Option<Timestamp> {
        self.last
            .and_then(|last| Timestamp::from_second(last.as_second()).ok())
    }

    /// Call before reading a reopened stream.
    pub fn reopen(&mut self) {
        self.replayed_at_last = 0;
    }

    /// Whether a line with this timestamp is new (and then records it as printed).
    pub fn is_new(&mut self, time: Option<Timestamp>) -> bool {
        let Some(time) = time else {
            // Without a timestamp there is nothing to compare: print it.
            return true;
        };
        match self.last {
            Some(last) if time < last => false,
            Some(last) if time == last => {
                self.replayed_at_last += 1;
                if self.replayed_at_last <= self.printed_at_last {
                    false
                } else {
                    self.printed_at_last += 1;
                    true
                }
            }
            _ => {
                self.last = Some(time);
                self.printed_at_last = 1;
                self.replayed_at_last = 1;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_lines_of_all_steps() {
        let width = tag_width(["[fetch-war]", "[checkout-tests]", "[build#2]"]);
        assert_eq!(
            tag_line("[fetch-war]", width, "saved"),
            "[fetch-war]      saved"
        );
        assert_eq!(
            tag_line("[checkout-tests]", width, "ok"),
            "[checkout-tests] ok"
        );
        assert_eq!(tag_width([]), 0);
    }

    #[test]
    fn splits_the_api_timestamp() {
        let (time, line) = split_timestamp("2025-05-01T10:00:00.123456789Z hello world");
        assert_eq!(line, "hello world");
        assert_eq!(time.map(|t| t.subsec_nanosecond()), Some(123_456_789));
        assert_eq!(
            split_timestamp("no timestamp here"),
            (None, "no timestamp here")
        );
        let (time, line) = split_timestamp("2025-05-01T10:00:00Z");
        assert!(time.is_some());
        assert_eq!(line, "");
    }

    fn ts(text: &str) -> Option<Timestamp> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn a_reopened_stream_prints_only_new_lines() {
        let mut point = ResumePoint::default();
        assert_eq!(point.since(), None);
        let first = ["10:00:00.1", "10:00:01.5", "10:00:01.5", "10:00:01.7"];
        for time in first {
            assert!(point.is_new(ts(&format!("2025-05-01T{time}Z"))));
        }
        assert_eq!(point.since(), ts("2025-05-01T10:00:01Z"));

        point.reopen();
        let replay = [
            ("10:00:01.5", false),
            ("10:00:01.5", false),
            ("10:00:01.7", false),
            ("10:00:01.7", true), // a second line in the same nanosecond: new
            ("10:00:02.0", true),
        ];
        for (time, new) in replay {
            assert_eq!(
                point.is_new(ts(&format!("2025-05-01T{time}Z"))),
                new,
                "{time}"
            );
        }
        assert!(point.is_new(None));
    }
}
