//! Reading the Surefire and Failsafe XML reports (`target/{surefire,failsafe}-reports/
//! TEST-*.xml`) a Maven build leaves: how many tests ran, failed, erred and were skipped, and
//! which ones failed.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use xmlparser::{ElementEnd, Token, Tokenizer};

/// The report directories the two plugins write, under each module's `target`.
const REPORT_DIRS: [&str; 2] = ["surefire-reports", "failsafe-reports"];
/// How deep below the build directory modules are looked for (a multi-module build nests
/// modules a few levels; a walk without a bound could wander into a huge tree).
const MAX_DEPTH: usize = 8;
/// A report bigger than this is not read: a test's captured output can make one huge, and
/// the counts are in its first element anyway.
const MAX_REPORT_BYTES: u64 = 64 * 1024 * 1024;

/// What the reports of one build say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestSummary {
    pub tests_run: u64,
    pub failures: u64,
    pub errors: u64,
    pub skipped: u64,
    /// The tests that failed or erred, in the order of their reports.
    pub failed: Vec<FailedTest>,
    /// How many report files were read.
    pub reports: usize,
}

/// One failed or erred test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedTest {
    /// The test class's simple name (`AppIT` of `com.acme.AppIT`).
    pub class: String,
    pub name: String,
    /// The first line of the assertion's or exception's message, when there is one.
    pub message: Option<String>,
}

impl FailedTest {
    /// `AppIT.greets (expected: <200> but was: <404>)`.
    pub fn describe(&self) -> String {
        let test = if self.class.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{}", self.class, self.name)
        };
        match &self.message {
            Some(message) => format!("{test} ({message})"),
            None => test,
        }
    }
}

impl TestSummary {
    fn add(&mut self, other: TestSummary) {
        self.tests_run += other.tests_run;
        self.failures += other.failures;
        self.errors += other.errors;
        self.skipped += other.skipped;
        self.failed.extend(other.failed);
        self.reports += other.reports;
    }

    /// `1 of 3 tests failed: AppIT.greets (expected ...), ...`, naming at most `named`
    /// tests; `None` when nothing failed or erred.
    pub fn failure_message(&self, named: usize) -> Option<String> {
        let bad = self.failures + self.errors;
        if bad == 0 {
            return None;
        }
        let mut message = format!(
            "{bad} of {} {} failed",
            self.tests_run,
            if self.tests_run == 1 { "test" } else { "tests" }
        );
        if self.errors > 0 {
            message.push_str(&format!(" ({} with an error)", self.errors));
        }
        let names: Vec<String> = self
            .failed
            .iter()
            .take(named)
            .map(FailedTest::describe)
            .collect();
        if !names.is_empty() {
            message.push_str(": ");
            message.push_str(&names.join(", "));
            let more = self.failed.len().saturating_sub(named);
            if more > 0 {
                message.push_str(&format!(" and {more} more"));
            }
        }
        Some(message)
    }
}

/// Reads every `TEST-*.xml` report under `build_dir` written at or after `since` (a
/// warm workspace keeps the reports of earlier builds; they are not this build's).
pub fn read_reports(build_dir: &Path, since: SystemTime) -> Result<TestSummary, String> {
    let mut files = Vec::new();
    find_reports(build_dir, 0, since, &mut files);
    files.sort();
    let mut summary = TestSummary::default();
    for file in files {
        let text = std::fs::read(&file)
            .map_err(|error| format!("cannot read the test report {}: {error}", file.display()))?;
        let text = String::from_utf8_lossy(&text);
        let one = parse_report(&text)
            .map_err(|error| format!("cannot parse the test report {}: {error}", file.display()))?;
        summary.add(one);
    }
    Ok(summary)
}

fn find_reports(dir: &Path, depth: usize, since: SystemTime, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // file_type() does not follow symlinks: a link out of the build is not walked.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if !kind.is_dir() || name.starts_with('.') || name == "node_modules" {
            continue;
        }
        let path = entry.path();
        if REPORT_DIRS.contains(&name.as_str()) && dir.file_name().is_some_and(|d| d == "target") {
            collect_report_files(&path, since, found);
        } else if depth < MAX_DEPTH {
            find_reports(&path, depth + 1, since, found);
        }
    }
}

fn collect_report_files(dir: &Path, since: SystemTime, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("TEST-") && name.ends_with(".xml")) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let fresh = meta.modified().is_ok_and(|modified| modified >= since);
        if meta.is_file() && fresh && meta.len() <= MAX_REPORT_BYTES {
            found.push(entry.path());
        }
    }
}

/// The element being read and its attributes so far.
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
}

impl Element {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn count(&self, name: &str) -> u64 {
        self.attribute(name)
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Parses one report: the counts of its `testsuite` elements and the `testcase`s holding a
/// `failure` or an `error`.
pub fn parse_report(text: &str) -> Result<TestSummary, String> {
    let mut summary = TestSummary {
        reports: 1,
        ..TestSummary::default()
    };
    let mut open: Option<Element> = None;
    // The test case being read: (class, name), and whether it was already counted failed.
    let mut case: Option<(String, String, bool)> = None;
    // A report cut short (a killed build) must not read as a smaller green one.
    let mut depth: usize = 0;
    let mut suites = 0;
    for token in Tokenizer::from(text) {
        match token.map_err(|error| error.to_string())? {
            Token::ElementStart { local, .. } => {
                open = Some(Element {
                    name: local.as_str().to_owned(),
                    attributes: Vec::new(),
                });
            }
            Token::Attribute { local, value, .. } => {
                if let Some(element) = &mut open {
                    element
                        .attributes
                        .push((local.as_str().to_owned(), unescape(value.as_str())));
                }
            }
            Token::ElementEnd { end, .. } => match end {
                ElementEnd::Open | ElementEnd::Empty => {
                    let Some(element) = open.take() else { continue };
                    let empty = matches!(end, ElementEnd::Empty);
                    if !empty {
                        depth += 1;
                    }
                    match element.name.as_str() {
                        "testsuite" => {
                            suites += 1;
                            summary.tests_run += element.count("tests");
                            summary.failures += element.count("failures");
                            summary.errors += element.count("errors");
                            summary.skipped += element.count("skipped");
                        }
                        "testcase" if !empty => {
                            let class = element.attribute("classname").unwrap_or_default();
                            let simple = class.rsplit('.').next().unwrap_or_default().to_owned();
                            let name = element.attribute("name").unwrap_or_default().to_owned();
                            case = Some((simple, name, false));
                        }
                        "failure" | "error" => {
                            if let Some((class, name, counted)) = &mut case
                                && !*counted
                            {
                                *counted = true;
                                summary.failed.push(FailedTest {
                                    class: class.clone(),
                                    name: name.clone(),
                                    message: element.attribute("message").and_then(first_line),
                                });
                            }
                        }
                        _ => {}
                    }
                }
                ElementEnd::Close(_, local) => {
                    depth = depth.saturating_sub(1);
                    if local.as_str() == "testcase" {
                        case = None;
                    }
                }
            },
            _ => {}
        }
    }
    if open.is_some() || depth > 0 {
        return Err("it ends before its last element is closed".to_owned());
    }
    if suites == 0 {
        return Err("it holds no testsuite element".to_owned());
    }
    Ok(summary)
}

/// The first non-empty line of a message, at most 160 characters.
fn first_line(message: &str) -> Option<String> {
    let line = message.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut short: String = line.chars().take(160).collect();
    if short.len() < line.len() {
        short.push_str("...");
    }
    Some(short)
}

/// Replaces XML's five named entities and numeric character references.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let Some(end) = after.find(';').filter(|end| *end <= 12) else {
            out.push('&');
            rest = &after[1..];
            continue;
        };
        let entity = &after[1..end];
        let decoded = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|hex| u32::from_str_radix(hex, 16))
                .or_else(|| entity.strip_prefix('#').map(str::parse::<u32>))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &after[end + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // As maven-surefire-plugin 3.x writes it (trimmed): a failure, an error, a skip.
    const REPORT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="3.0" name="com.acme.AppIT" time="0.41" tests="4" errors="1" skipped="1" failures="1">
  <properties>
    <property name="java.version" value="17.0.15"/>
  </properties>
  <testcase name="answersHello" classname="com.acme.AppIT" time="0.2"/>
  <testcase name="greetsInFrench" classname="com.acme.AppIT" time="0.1">
    <failure message="expected: &lt;Bonjour&gt; but was: &lt;Hello&gt;&#10;second line" type="org.opentest4j.AssertionFailedError"><![CDATA[org.opentest4j.AssertionFailedError: expected: <Bonjour> but was: <Hello>
	at com.acme.AppIT.greetsInFrench(AppIT.java:30)]]></failure>
    <system-out><![CDATA[GET /app/hello -> 200]]></system-out>
  </testcase>
  <testcase name="servesHealth" classname="com.acme.AppIT" time="0.1">
    <error message="Connection refused" type="java.net.ConnectException">java.net.ConnectException: Connection refused</error>
  </testcase>
  <testcase name="later" classname="com.acme.AppIT" time="0">
    <skipped message="disabled"/>
  </testcase>
</testsuite>
"#;

    #[test]
    fn a_report_gives_its_counts_and_failed_tests() -> Result<(), String> {
        let summary = parse_report(REPORT)?;
        assert_eq!(
            (
                summary.tests_run,
                summary.failures,
                summary.errors,
                summary.skipped
            ),
            (4, 1, 1, 1)
        );
        assert_eq!(
            summary.failed,
            vec![
                FailedTest {
                    class: "AppIT".into(),
                    name: "greetsInFrench".into(),
                    message: Some("expected: <Bonjour> but was: <Hello>".into()),
                },
                FailedTest {
                    class: "AppIT".into(),
                    name: "servesHealth".into(),
                    message: Some("Connection refused".into()),
                },
            ]
        );
        Ok(())
    }

    #[test]
    fn the_failure_message_names_at_most_a_few_tests() -> Result<(), String> {
        let summary = parse_report(REPORT)?;
        assert_eq!(
            summary.failure_message(1).as_deref(),
            Some(
                "2 of 4 tests failed (1 with an error): AppIT.greetsInFrench (expected: \
                 <Bonjour> but was: <Hello>) and 1 more"
            )
        );
        let green = parse_report(
            r#"<testsuite name="a.B" tests="1" errors="0" skipped="0" failures="0"><testcase name="t" classname="a.B"/></testsuite>"#,
        )?;
        assert_eq!(green.failure_message(3), None);
        assert_eq!(green.tests_run, 1);
        Ok(())
    }

    #[test]
    fn broken_xml_is_an_error_not_a_green_build() {
        assert!(parse_report("<testsuite tests=\"3\" failures=\"1\"").is_err());
        assert!(parse_report("<testsuite tests=\"3\"><testcase name=\"a\">").is_err());
        assert!(parse_report("").is_err());
    }

    #[test]
    fn entities_are_decoded_and_stray_ampersands_kept() {
        assert_eq!(
            unescape("a &lt;b&gt; &amp; &#65;&#x42; & c"),
            "a <b> & AB & c"
        );
        assert_eq!(unescape("&bogus; &"), "&bogus; &");
    }

    #[test]
    fn reports_of_every_module_are_found_and_stale_ones_skipped() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let write = |rel: &str, text: &str| -> anyhow::Result<()> {
            let path = dir.path().join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, text)?;
            Ok(())
        };
        let suite = |tests: u32, failures: u32| {
            format!(
                r#"<testsuite name="x" tests="{tests}" failures="{failures}" errors="0" skipped="0"/>"#
            )
        };
        write("target/surefire-reports/TEST-a.Unit.xml", &suite(3, 0))?;
        write("web/target/failsafe-reports/TEST-a.AppIT.xml", &suite(2, 1))?;
        // Not reports: another file name, and a reports folder outside a target folder.
        write("target/surefire-reports/a.Unit.txt", "Tests run: 3")?;
        write("docs/surefire-reports/TEST-x.xml", &suite(9, 9))?;
        let summary =
            read_reports(dir.path(), SystemTime::UNIX_EPOCH).map_err(anyhow::Error::msg)?;
        assert_eq!(
            (summary.tests_run, summary.failures, summary.reports),
            (5, 1, 2)
        );

        let later = SystemTime::now() + std::time::Duration::from_secs(3600);
        let stale = read_reports(dir.path(), later).map_err(anyhow::Error::msg)?;
        assert_eq!(
            stale,
            TestSummary::default(),
            "reports older than the build are not its own"
        );
        Ok(())
    }
}
