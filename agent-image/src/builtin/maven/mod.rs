//! The library `maven` Task: runs `mvn` from the step's image (localhost/maestro/maven:dev)
//! in the build directory, then reads the Surefire and Failsafe reports for its outputs and
//! report values. It runs as the Task's command under `maestro-agent exec` (it is not a
//! built-in: Maven is not in the agent image).

mod reports;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use maestro_protocol::ReportValue;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

use super::Inputs;
use super::inputs::{contained_path_in_workspace, optional_string};
use crate::result::{EXIT_AGENT_FAILURE, EXIT_BAD_INPUT, EXIT_CANNOT_START, StepResult};
use crate::step_env::StepPaths;

pub use reports::{TestSummary, read_reports};

/// How many failed tests the step's message names.
const NAMED_FAILURES: usize = 3;
/// The program run; the image puts Debian's Maven on the PATH.
const MVN: &str = "mvn";

/// The `maven` Task's inputs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MavenInputs {
    /// Where mvn runs (the project's directory).
    pub dir: PathBuf,
    /// A POM other than `dir/pom.xml` (mvn -f).
    pub pom: Option<PathBuf>,
    pub goals: Vec<String>,
    pub properties: Vec<(String, String)>,
    pub profiles: Vec<String>,
    /// The environment variable holding a settings.xml (from a Secret in the step's
    /// secretEnv): its value is written to a private file for mvn -s.
    pub settings_var: Option<String>,
    pub offline: bool,
    pub local_repository: PathBuf,
}

/// Validates the inputs, with messages that name the input at fault.
pub fn parse_maven_inputs(inputs: &Inputs, workspace_dir: &Path) -> Result<MavenInputs, String> {
    let dir = match optional_string(inputs, "path")?.filter(|p| !p.trim().is_empty()) {
        Some(given) => contained_path_in_workspace("path", given.trim(), workspace_dir)?,
        None => workspace_dir.to_path_buf(),
    };
    if !dir.is_dir() {
        return Err(format!(
            r#"input "path": {} is not a directory (no checkout there yet?)"#,
            dir.display()
        ));
    }
    let pom = match optional_string(inputs, "pom")?.filter(|p| !p.trim().is_empty()) {
        Some(given) => {
            let path = contained_path_in_workspace("pom", given.trim(), &dir)?;
            if !path.is_file() {
                return Err(format!(r#"input "pom": {} is not a file"#, path.display()));
            }
            Some(path)
        }
        None => {
            if !dir.join("pom.xml").is_file() {
                return Err(format!(
                    r#"{} has no pom.xml; give input "path" (the project's directory) or "pom""#,
                    dir.display()
                ));
            }
            None
        }
    };
    let goals = words_input(inputs, "goals")?;
    let goals = if goals.is_empty() {
        vec!["verify".to_owned()]
    } else {
        goals
    };
    let profiles: Vec<String> = words_input(inputs, "profiles")?
        .iter()
        .flat_map(|p| p.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let local_repository =
        match optional_string(inputs, "localRepository")?.filter(|p| !p.trim().is_empty()) {
            Some(given) => workspace_dir.join(given.trim()),
            None => workspace_dir.join(".m2/repository"),
        };
    let settings_var = optional_string(inputs, "settings")?
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty());
    if let Some(name) = &settings_var
        && !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!(
            r#"input "settings" must name an environment variable (like MAVEN_SETTINGS_XML), not {name:?}"#
        ));
    }
    Ok(MavenInputs {
        dir,
        pom,
        goals,
        properties: properties_input(inputs)?,
        profiles,
        settings_var,
        offline: bool_input(inputs, "offline")?,
        local_repository,
    })
}

/// A list of words: an array of strings, or one string split at whitespace.
fn words_input(inputs: &Inputs, name: &str) -> Result<Vec<String>, String> {
    match inputs.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(text.split_whitespace().map(str::to_owned).collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
                _ => Err(format!("input {name:?} must hold non-empty strings")),
            })
            .collect(),
        Some(_) => Err(format!(
            "input {name:?} must be a string or an array of strings"
        )),
    }
}

/// `properties`: an object whose values are strings, numbers or booleans (-Dkey=value).
fn properties_input(inputs: &Inputs) -> Result<Vec<(String, String)>, String> {
    let entries = match inputs.get("properties") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(entries)) => entries,
        Some(_) => return Err(r#"input "properties" must be an object"#.to_owned()),
    };
    entries
        .iter()
        .map(|(key, value)| {
            if key.is_empty() || key.contains(['=', ' ']) {
                return Err(format!(
                    r#"input "properties": {key:?} is not a property name"#
                ));
            }
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                _ => {
                    return Err(format!(
                        r#"input "properties": the value of {key:?} must be a string, number or boolean"#
                    ));
                }
            };
            Ok((key.clone(), text))
        })
        .collect()
}

fn bool_input(inputs: &Inputs, name: &str) -> Result<bool, String> {
    match inputs.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(Value::String(text)) if text == "true" || text == "false" => Ok(text == "true"),
        Some(_) => Err(format!("input {name:?} must be true or false")),
    }
}

/// The mvn command line (after `mvn`): batch mode, the local repository, then the inputs.
pub fn mvn_args(inputs: &MavenInputs, settings_file: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        "--batch-mode".to_owned(),
        "--no-transfer-progress".to_owned(),
        format!("-Dmaven.repo.local={}", inputs.local_repository.display()),
    ];
    if let Some(pom) = &inputs.pom {
        args.push("--file".to_owned());
        args.push(pom.display().to_string());
    }
    if let Some(settings) = settings_file {
        args.push("--settings".to_owned());
        args.push(settings.display().to_string());
    }
    if inputs.offline {
        args.push("--offline".to_owned());
    }
    if !inputs.profiles.is_empty() {
        args.push(format!("--activate-profiles={}", inputs.profiles.join(",")));
    }
    for (key, value) in &inputs.properties {
        args.push(format!("-D{key}={value}"));
    }
    args.extend(inputs.goals.iter().cloned());
    args
}

/// Runs the maven task with the step's inputs.
pub async fn run_maven(inputs: &Inputs, paths: &StepPaths) -> StepResult {
    let maven = match parse_maven_inputs(inputs, &paths.workspace_dir) {
        Ok(maven) => maven,
        Err(message) => return StepResult::failure(EXIT_BAD_INPUT, message),
    };
    let settings = match &maven.settings_var {
        Some(var) => match SettingsFile::write(var) {
            Ok(file) => Some(file),
            Err(message) => return StepResult::failure(EXIT_BAD_INPUT, message),
        },
        None => None,
    };
    let args = mvn_args(&maven, settings.as_ref().map(|s| s.path.as_path()));
    // Reports written from now on are this build's; file times have a coarse grain on
    // some file systems, so a second of slack.
    let started = SystemTime::now()
        .checked_sub(Duration::from_secs(1))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    println!("maven: mvn {} (in {})", args.join(" "), maven.dir.display());
    let clock = std::time::Instant::now();
    let run = run_mvn(&args, &maven.dir).await;
    drop(settings);
    let (exit_code, first_error) = match run {
        Ok(done) => done,
        Err(failure) => return failure,
    };
    println!(
        "maven: mvn exited with code {exit_code} after {:.1}s",
        clock.elapsed().as_secs_f64()
    );
    let summary = match read_reports(&maven.dir, started) {
        Ok(summary) => summary,
        Err(message) => return StepResult::failure(EXIT_AGENT_FAILURE, message),
    };
    result_of(&maven.goals, exit_code, first_error.as_deref(), &summary)
}

/// The step's result from mvn's exit and the reports: counts as outputs and report values;
/// failed tests fail the step even when mvn ignored them (testFailureIgnore).
pub fn result_of(
    goals: &[String],
    exit_code: i32,
    first_error: Option<&str>,
    summary: &TestSummary,
) -> StepResult {
    let counts = [
        ("testsRun", summary.tests_run),
        ("failures", summary.failures),
        ("errors", summary.errors),
        ("skipped", summary.skipped),
    ];
    let mut result = StepResult {
        outputs: counts
            .iter()
            .map(|(name, n)| ((*name).to_owned(), n.to_string()))
            .collect(),
        report: counts
            .iter()
            .map(|(name, n)| ((*name).to_owned(), ReportValue::Number((*n).into())))
            .collect(),
        ..StepResult::default()
    };
    if let Some(message) = summary.failure_message(NAMED_FAILURES) {
        result.exit_code = if exit_code == 0 { 1 } else { exit_code };
        result.error = Some(message);
    } else if exit_code != 0 {
        result.exit_code = exit_code;
        let goals = goals.join(" ");
        result.error = Some(match first_error {
            Some(line) => format!("mvn {goals} exited with code {exit_code}: {line}"),
            None => format!("mvn {goals} exited with code {exit_code}"),
        });
    }
    result
}

/// A settings.xml from the environment, in a file only the step's user can read; removed
/// when dropped.
struct SettingsFile {
    path: PathBuf,
}

impl SettingsFile {
    fn write(var: &str) -> Result<Self, String> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let content = std::env::var(var).map_err(|_| {
            format!(
                r#"input "settings" names {var}, which is not set: list the Secret holding it in the step's secretEnv"#
            )
        })?;
        let path =
            std::env::temp_dir().join(format!("maestro-settings-{}.xml", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|error| {
                format!("cannot write the settings file {}: {error}", path.display())
            })?;
        file.write_all(content.as_bytes()).map_err(|error| {
            format!("cannot write the settings file {}: {error}", path.display())
        })?;
        Ok(Self { path })
    }
}

impl Drop for SettingsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs mvn, copying its output to ours and forwarding SIGTERM and SIGINT (a cancelled
/// step's exec forwards them to this process). Returns its exit code and the first
/// `[ERROR]` line it printed.
async fn run_mvn(args: &[String], dir: &Path) -> Result<(i32, Option<String>), StepResult> {
    let cannot_listen = |error: std::io::Error| {
        StepResult::failure(
            EXIT_AGENT_FAILURE,
            format!("cannot listen for signals to forward: {error}"),
        )
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(cannot_listen)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(cannot_listen)?;
    let mut child = Command::new(MVN)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| {
            StepResult::failure(
                EXIT_CANNOT_START,
                format!("cannot start {MVN}: {error} (is this the Maven image?)"),
            )
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let copy_stderr = tokio::spawn(async move {
        let Some(stderr) = stderr else {
            return;
        };
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(line) = without_escapes(&line) {
                eprintln!("{line}");
            }
        }
    });
    let copy = tokio::spawn(async move {
        let mut first_error = None;
        let Some(stdout) = stdout else {
            return first_error;
        };
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Some(line) = without_escapes(&line) else {
                continue;
            };
            println!("{line}");
            if first_error.is_none() && line.starts_with("[ERROR]") {
                let text = line.trim_start_matches("[ERROR]").trim();
                if !text.is_empty() {
                    first_error = Some(text.chars().take(300).collect::<String>());
                }
            }
        }
        first_error
    });
    let forward = |signal: Signal, pid: Option<u32>| {
        if let Some(pid) = pid.and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    };
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(()) = terminate.recv() => forward(Signal::SIGTERM, child.id()),
            Some(()) = interrupt.recv() => forward(Signal::SIGINT, child.id()),
        }
    };
    let status = status.map_err(|error| {
        StepResult::failure(
            EXIT_AGENT_FAILURE,
            format!("cannot wait for {MVN}: {error}"),
        )
    })?;
    let first_error = tokio::time::timeout(Duration::from_secs(2), copy)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let _ = tokio::time::timeout(Duration::from_secs(2), copy_stderr).await;
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(EXIT_AGENT_FAILURE);
    Ok((code, first_error))
}

/// A line of mvn's output without terminal control sequences (ESC `[` ... final byte),
/// or `None` when they were all it held. Debian's Maven 3.8 prints colour resets even in
/// batch mode with its output on a pipe (neither `-Dstyle.color=never` nor jansi's
/// properties stop it), and the step's log would show them as garbage.
fn without_escapes(line: &str) -> Option<String> {
    if !line.contains('\u{1b}') {
        return Some(line.to_owned());
    }
    let mut text = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            text.push(c);
            continue;
        }
        // CSI: parameters and intermediates up to a final byte in @..~; any other
        // escape drops only its next character.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    (!text.trim().is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_support::inputs;

    #[test]
    fn terminal_escapes_are_stripped_from_mavens_output() {
        assert_eq!(
            without_escapes("\u{1b}[0m[INFO] Scanning for projects...").as_deref(),
            Some("[INFO] Scanning for projects...")
        );
        assert_eq!(
            without_escapes("[\u{1b}[1;31mERROR\u{1b}[m] Failed").as_deref(),
            Some("[ERROR] Failed")
        );
        assert_eq!(without_escapes("\u{1b}[0m\u{1b}[0m"), None);
        assert_eq!(
            without_escapes("[INFO] Tests run: 2").as_deref(),
            Some("[INFO] Tests run: 2")
        );
        assert_eq!(without_escapes("").as_deref(), Some(""));
    }

    fn project() -> anyhow::Result<tempfile::TempDir> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("tests"))?;
        std::fs::write(dir.path().join("tests/pom.xml"), "<project/>")?;
        Ok(dir)
    }

    #[test]
    fn inputs_become_an_mvn_command_line() -> anyhow::Result<()> {
        let workspace = project()?;
        let given = inputs(serde_json::json!({
            "path": "tests",
            "goals": "clean verify",
            "properties": {"app.url": "http://tomcat:8080/app", "threads": 2},
            "profiles": ["it", "fast"],
            "offline": "true",
        }));
        let maven = parse_maven_inputs(&given, workspace.path()).map_err(anyhow::Error::msg)?;
        let repo = workspace.path().join(".m2/repository");
        assert_eq!(
            mvn_args(&maven, None),
            vec![
                "--batch-mode".to_owned(),
                "--no-transfer-progress".to_owned(),
                format!("-Dmaven.repo.local={}", repo.display()),
                "--offline".to_owned(),
                "--activate-profiles=it,fast".to_owned(),
                "-Dapp.url=http://tomcat:8080/app".to_owned(),
                "-Dthreads=2".to_owned(),
                "clean".to_owned(),
                "verify".to_owned(),
            ]
        );
        assert_eq!(maven.dir, workspace.path().join("tests"));
        Ok(())
    }

    #[test]
    fn the_default_goal_is_verify_in_the_workspace() -> anyhow::Result<()> {
        let workspace = project()?;
        std::fs::write(workspace.path().join("pom.xml"), "<project/>")?;
        let maven = parse_maven_inputs(&inputs(serde_json::json!({})), workspace.path())
            .map_err(anyhow::Error::msg)?;
        assert_eq!(maven.goals, vec!["verify".to_owned()]);
        assert_eq!(maven.dir, workspace.path());
        Ok(())
    }

    #[test]
    fn bad_inputs_are_named() -> anyhow::Result<()> {
        let workspace = project()?;
        let error = |value: serde_json::Value| {
            parse_maven_inputs(&inputs(value), workspace.path())
                .err()
                .unwrap_or_default()
        };
        assert!(error(serde_json::json!({})).contains("has no pom.xml"));
        assert!(error(serde_json::json!({"path": "missing"})).contains("is not a directory"));
        assert!(error(serde_json::json!({"path": "/etc"})).contains("outside the workspace"));
        assert!(
            error(serde_json::json!({"path": "tests", "settings": "$(id)"}))
                .contains("must name an environment variable")
        );
        assert!(
            error(serde_json::json!({"path": "tests", "properties": {"a": [1]}}))
                .contains("must be a string, number or boolean")
        );
        Ok(())
    }

    #[test]
    fn failed_tests_fail_the_step_and_are_named() {
        let summary = TestSummary {
            tests_run: 3,
            failures: 1,
            failed: vec![reports::FailedTest {
                class: "AppIT".into(),
                name: "greets".into(),
                message: Some("expected: <200> but was: <404>".into()),
            }],
            reports: 1,
            ..TestSummary::default()
        };
        let goals = vec!["verify".to_owned()];
        let result = result_of(&goals, 1, Some("Failed to execute goal ..."), &summary);
        assert_eq!(result.exit_code, 1);
        assert_eq!(
            result.error.as_deref(),
            Some("1 of 3 tests failed: AppIT.greets (expected: <200> but was: <404>)")
        );
        assert_eq!(
            result.outputs.get("testsRun").map(String::as_str),
            Some("3")
        );
        assert_eq!(
            result.report.get("failures").and_then(ReportValue::as_f64),
            Some(1.0)
        );
        // testFailureIgnore lets mvn succeed; the step does not.
        assert_eq!(result_of(&goals, 0, None, &summary).exit_code, 1);
    }

    #[test]
    fn a_build_failure_without_test_failures_shows_mavens_error() {
        let goals = vec!["verify".to_owned()];
        let result = result_of(
            &goals,
            1,
            Some("COMPILATION ERROR :"),
            &TestSummary::default(),
        );
        assert_eq!(
            result.error.as_deref(),
            Some("mvn verify exited with code 1: COMPILATION ERROR :")
        );
        let green = result_of(
            &goals,
            0,
            None,
            &TestSummary {
                tests_run: 2,
                ..TestSummary::default()
            },
        );
        assert_eq!((green.exit_code, green.error), (0, None));
        assert_eq!(green.outputs.get("testsRun").map(String::as_str), Some("2"));
    }
}
