//! Running a step's command: spawn it, forward termination signals to it, wait, and turn its
//! exit and outputs into the step result.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::outputs::{collect_outputs, collect_report};
use crate::result::{EXIT_AGENT_FAILURE, EXIT_CANNOT_START, StepResult};
use crate::step_env::{OUTPUTS_DIR_VAR, REPORT_FILE, REPORT_VAR};

/// A command to run as a step, with what the agent adds to its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepCommand {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Variables added to the inherited environment.
    pub extra_env: Vec<(String, String)>,
    /// Where the command runs; `None` keeps the agent's current directory.
    pub working_dir: Option<PathBuf>,
}

impl StepCommand {
    pub fn new(program: impl Into<OsString>, args: impl IntoIterator<Item = OsString>) -> Self {
        Self {
            program: program.into(),
            args: args.into_iter().collect(),
            extra_env: Vec::new(),
            working_dir: None,
        }
    }
}

/// Runs `command` to completion and returns the step's result: its exit code (128 + the
/// signal number if a signal killed it) and the outputs it wrote to `outputs_dir`.
pub async fn run_step_command(command: &StepCommand, outputs_dir: &Path) -> StepResult {
    if let Err(error) = tokio::fs::create_dir_all(outputs_dir).await {
        return StepResult::failure(
            EXIT_AGENT_FAILURE,
            format!(
                "cannot create the outputs directory {}: {error}",
                outputs_dir.display()
            ),
        );
    }
    let (status, last_error_line) = match spawn_and_wait(command, outputs_dir).await {
        Ok(done) => done,
        Err(failure) => return failure,
    };
    let exit_code = exit_code_of(status);
    let error = match status.signal() {
        Some(number) => Some(format!("command was killed by {}", signal_name(number))),
        // A failing command's last word on stderr usually says why: keep it in the step's
        // status, so `kubectl get`/`describe` shows it without reading the pod log.
        None if exit_code != 0 && !last_error_line.is_empty() => {
            Some(format!("exited with code {exit_code}: {last_error_line}"))
        }
        None => None,
    };
    let mut result = StepResult {
        exit_code,
        error,
        ..StepResult::default()
    };
    match collect_outputs(outputs_dir) {
        Ok(outputs) => result.outputs = outputs,
        Err(error) => {
            if result.exit_code == 0 {
                result.exit_code = EXIT_AGENT_FAILURE;
            }
            result.error = Some(format!(
                "cannot read outputs from {}: {error}",
                outputs_dir.display()
            ));
        }
    }
    match collect_report(outputs_dir) {
        Ok(report) => result.report = report,
        Err(error) => {
            if result.exit_code == 0 {
                result.exit_code = EXIT_AGENT_FAILURE;
            }
            result.error = Some(error);
        }
    }
    result
}

/// Spawns the command and waits for it, forwarding SIGTERM and SIGINT. The agent is PID 1 of
/// the container, so it alone receives the kubelet's SIGTERM on a cancel or timeout; without
/// forwarding, the command would get no chance to clean up before the final SIGKILL.
async fn spawn_and_wait(
    command: &StepCommand,
    outputs_dir: &Path,
) -> Result<(ExitStatus, String), StepResult> {
    // Listen before spawning, so a signal that arrives meanwhile is forwarded, not lost.
    let cannot_listen = |error: std::io::Error| {
        StepResult::failure(
            EXIT_AGENT_FAILURE,
            format!("cannot listen for signals to forward: {error}"),
        )
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(cannot_listen)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(cannot_listen)?;

    let mut child = build_command(command, outputs_dir)
        .spawn()
        .map_err(|error| {
            StepResult::failure(
                EXIT_CANNOT_START,
                start_error_message(&command.program, &error),
            )
        })?;
    tracing::debug!(program = ?command.program, pid = ?child.id(), "command started");
    let last_line = Arc::new(Mutex::new(String::new()));
    let tee = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(tee_stderr(stderr, last_line.clone())));

    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|error| {
                    StepResult::failure(
                        EXIT_AGENT_FAILURE,
                        format!("cannot wait for the command: {error}"),
                    )
                })?;
                // A background process the command left may hold stderr open: wait for
                // the rest of the output only briefly.
                if let Some(tee) = tee {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tee).await;
                }
                let line = last_line.lock().map(|l| l.clone()).unwrap_or_default();
                return Ok((status, line));
            }
            Some(()) = terminate.recv() => forward_signal(&child, Signal::SIGTERM),
            Some(()) = interrupt.recv() => forward_signal(&child, Signal::SIGINT),
        }
    }
}

/// Copies the command's stderr to the agent's (the pod log) as it comes, remembering the
/// last non-empty line (at most 300 characters).
async fn tee_stderr(mut stderr: ChildStderr, last_line: Arc<Mutex<String>>) {
    let mut out = tokio::io::stderr();
    let mut buf = vec![0u8; 8192];
    let mut pending = Vec::new();
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let _ = out.write_all(&buf[..n]).await;
        let _ = out.flush().await;
        pending.extend_from_slice(&buf[..n]);
        if pending.len() > 64 * 1024 {
            pending.drain(..pending.len() - 64 * 1024);
        }
        let text = String::from_utf8_lossy(&pending);
        if let Some(line) = text.lines().rev().map(str::trim).find(|l| !l.is_empty())
            && let Ok(mut last) = last_line.lock()
        {
            *last = line.chars().take(300).collect();
        }
    }
}

fn build_command(command: &StepCommand, outputs_dir: &Path) -> Command {
    let mut process = Command::new(&command.program);
    process
        .stderr(Stdio::piped())
        .args(&command.args)
        .envs(command.extra_env.iter().map(|(name, value)| (name, value)))
        // The directory may come from the default rather than the variable; tell the command.
        .env(OUTPUTS_DIR_VAR, outputs_dir)
        .env(REPORT_VAR, outputs_dir.join(REPORT_FILE));
    if let Some(dir) = &command.working_dir {
        process.current_dir(dir);
    }
    process
}

fn forward_signal(child: &Child, signal: Signal) {
    // No id means the child has been reaped already; nothing left to signal.
    let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        return;
    };
    tracing::debug!(?signal, pid, "forwarding signal to the command");
    if let Err(error) = kill(Pid::from_raw(pid), signal) {
        // ESRCH: the child exited between the signal and now; its exit is handled by wait().
        tracing::debug!(?signal, pid, %error, "cannot forward signal");
    }
}

/// The exit code a shell would report: the command's own, or 128 + the signal that killed it.
fn exit_code_of(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(number)) => 128 + number,
        // Neither exited nor signalled cannot happen for a waited-for child on Unix.
        (None, None) => EXIT_AGENT_FAILURE,
    }
}

fn signal_name(number: i32) -> String {
    Signal::try_from(number)
        .map_or_else(|_| format!("signal {number}"), |signal| signal.to_string())
}

/// A message that names the program and says why it could not start in the user's terms.
fn start_error_message(program: &OsStr, error: &io::Error) -> String {
    let shown = Path::new(program).display();
    let has_path = program.as_encoded_bytes().contains(&b'/');
    match error.kind() {
        io::ErrorKind::NotFound if has_path && Path::new(program).exists() => format!(
            "cannot start {shown:?}: the file exists but its interpreter or dynamic loader does \
             not ({error})"
        ),
        io::ErrorKind::NotFound if has_path => format!("cannot start {shown:?}: no such file"),
        io::ErrorKind::NotFound => format!("cannot start {shown:?}: not found in PATH"),
        io::ErrorKind::PermissionDenied => {
            format!("cannot start {shown:?}: permission denied (is it executable?)")
        }
        _ => format!("cannot start {shown:?}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::write_result;

    fn shell(script: &str) -> StepCommand {
        StepCommand::new("sh", [OsString::from("-c"), OsString::from(script)])
    }

    #[tokio::test]
    async fn a_failing_commands_last_stderr_line_explains_the_failure() -> anyhow::Result<()> {
        let outputs = tempfile::tempdir()?;
        let script =
            "echo working; echo 'first problem' >&2; echo 'input version is bad' >&2; exit 2";
        let result = run_step_command(&shell(script), outputs.path()).await;
        assert_eq!(result.exit_code, 2);
        assert_eq!(
            result.error.as_deref(),
            Some("exited with code 2: input version is bad")
        );
        let ok = run_step_command(&shell("echo 'just a warning' >&2"), outputs.path()).await;
        assert_eq!((ok.exit_code, ok.error), (0, None));
        Ok(())
    }

    #[tokio::test]
    async fn exit_code_of_the_command_is_the_step_exit_code() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let result = run_step_command(&shell("exit 3"), &dir.path().join("outputs")).await;
        assert_eq!(result.exit_code, 3);
        assert_eq!(result.error, None);

        let result_path = dir.path().join("result.json");
        assert_eq!(write_result(&result, &result_path), 3);
        assert_eq!(std::fs::read_to_string(&result_path)?, r#"{"exitCode":3}"#);
        Ok(())
    }

    #[tokio::test]
    async fn outputs_written_by_the_command_are_collected() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let outputs_dir = dir.path().join("outputs");
        let result = run_step_command(
            &shell(r#"echo hello > "$MAESTRO_OUTPUTS/greeting""#),
            &outputs_dir,
        )
        .await;
        assert_eq!(result.exit_code, 0);
        assert_eq!(
            result.outputs.get("greeting").map(String::as_str),
            Some("hello")
        );
        Ok(())
    }

    #[tokio::test]
    async fn report_values_written_by_the_command_are_collected() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let script = r#"echo '{"testsRun": 7}' > "$MAESTRO_REPORT""#;
        let result = run_step_command(&shell(script), &dir.path().join("outputs")).await;
        assert_eq!((result.exit_code, result.error.clone()), (0, None));
        assert_eq!(
            result.report.get("testsRun").and_then(|v| v.as_f64()),
            Some(7.0)
        );
        assert!(result.outputs.is_empty(), "the report is not an output");
        Ok(())
    }

    #[tokio::test]
    async fn extra_env_and_working_dir_reach_the_command() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut command = shell(r#"printf '%s %s' "$GREETING" "$(pwd)" > "$MAESTRO_OUTPUTS/seen""#);
        command.extra_env = vec![("GREETING".to_owned(), "hi".to_owned())];
        command.working_dir = Some(dir.path().to_path_buf());
        let result = run_step_command(&command, &dir.path().join("outputs")).await;
        let expected = format!("hi {}", dir.path().display());
        assert_eq!(result.outputs.get("seen"), Some(&expected));
        Ok(())
    }

    #[tokio::test]
    async fn command_killed_by_a_signal_exits_128_plus_the_signal() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let result = run_step_command(&shell("kill -KILL $$"), &dir.path().join("outputs")).await;
        assert_eq!(result.exit_code, 128 + 9);
        assert_eq!(
            result.error.as_deref(),
            Some("command was killed by SIGKILL")
        );
        Ok(())
    }

    #[tokio::test]
    async fn missing_program_exits_127_naming_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let command = StepCommand::new("maestro-no-such-program", []);
        let result = run_step_command(&command, &dir.path().join("outputs")).await;
        assert_eq!(result.exit_code, 127);
        assert_eq!(
            result.error.as_deref(),
            Some(r#"cannot start "maestro-no-such-program": not found in PATH"#)
        );
        Ok(())
    }

    #[tokio::test]
    async fn non_executable_program_exits_127() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let script = dir.path().join("script.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n")?;
        let result = run_step_command(
            &StepCommand::new(script.as_os_str(), []),
            &dir.path().join("outputs"),
        )
        .await;
        assert_eq!(result.exit_code, 127);
        let error = result.error.unwrap_or_default();
        assert!(error.contains("permission denied"), "{error}");
        assert!(error.contains("script.sh"), "{error}");
        Ok(())
    }
}
