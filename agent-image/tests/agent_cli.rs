//! Runs the built `maestro-agent` binary as a step pod would, with the result and outputs in
//! temporary directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tempfile::TempDir;

/// A step's directories: the result file, the outputs directory and the workspace.
struct StepDirs {
    root: TempDir,
}

impl StepDirs {
    fn new() -> anyhow::Result<Self> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join("workspace"))?;
        Ok(Self { root })
    }

    fn result_path(&self) -> PathBuf {
        self.root.path().join("termination-log")
    }

    fn outputs_dir(&self) -> PathBuf {
        // Not created: the agent must create it.
        self.root.path().join("outputs")
    }

    fn workspace_dir(&self) -> PathBuf {
        self.root.path().join("workspace")
    }

    /// The agent with the environment the operator gives a step's main container.
    fn agent(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_maestro-agent"));
        command
            .args(args)
            .env("MAESTRO_RESULT_PATH", self.result_path())
            .env("MAESTRO_OUTPUTS", self.outputs_dir())
            .env("MAESTRO_WORKSPACE", self.workspace_dir())
            .env_remove("MAESTRO_INPUTS")
            .env_remove("MAESTRO_LOG_LEVEL")
            .stdin(Stdio::null());
        command
    }

    fn result(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            self.result_path(),
        )?)?)
    }
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn exec_exits_with_the_command_exit_code() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let output = step.agent(&["exec", "--", "sh", "-c", "exit 3"]).output()?;
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    assert_eq!(step.result()?, json!({"exitCode": 3}));
    Ok(())
}

#[test]
fn exec_reports_outputs_and_passes_hyphenated_arguments() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let script = r#"echo "$1" > "$MAESTRO_OUTPUTS/flag"; echo "to the log""#;
    let output = step
        .agent(&["exec", "--", "sh", "-c", script, "sh", "--verbose"])
        .output()?;
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "to the log\n");
    assert_eq!(
        step.result()?,
        json!({"outputs": {"flag": "--verbose"}, "exitCode": 0})
    );
    Ok(())
}

#[test]
fn exec_of_a_missing_program_exits_127_naming_it() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let output = step
        .agent(&["exec", "--", "/maestro/no-such-plugin", "arg"])
        .output()?;
    assert_eq!(output.status.code(), Some(127));
    let message = r#"cannot start "/maestro/no-such-plugin": no such file"#;
    assert!(
        stderr_of(&output).contains(message),
        "{}",
        stderr_of(&output)
    );
    assert_eq!(step.result()?, json!({"exitCode": 127, "error": message}));
    Ok(())
}

#[test]
fn exec_with_oversized_outputs_fails_the_step() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let script = r#"head -c 5000 /dev/zero | tr '\0' x > "$MAESTRO_OUTPUTS/big""#;
    let output = step.agent(&["exec", "--", "sh", "-c", script]).output()?;
    assert_eq!(output.status.code(), Some(1));
    let result = step.result()?;
    assert_eq!(result["exitCode"], 1);
    let error = result["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("outputs are 5035 bytes, over the 4096-byte limit"),
        "{error}"
    );
    assert!(std::fs::metadata(step.result_path())?.len() <= 4096);
    Ok(())
}

/// Polls until `path` exists, so the test signals only after the command is ready for it.
fn wait_for_file(path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn exec_forwards_sigterm_to_the_command() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let ready = step.root.path().join("ready");
    let log = step.root.path().join("stdout");
    // The marker is written after the trap is set: a SIGTERM before that would kill sh.
    // The sleep's output goes elsewhere so the orphaned sleep holds no pipe of the test open.
    let script = format!(
        r#"trap "echo got-term; exit 7" TERM; touch {}; sleep 30 >/dev/null 2>&1 & wait"#,
        ready.display()
    );
    let mut agent = step
        .agent(&["exec", "--", "sh", "-c", &script])
        .stdout(std::fs::File::create(&log)?)
        .spawn()?;
    wait_for_file(&ready, Duration::from_secs(10))?;

    kill(Pid::from_raw(i32::try_from(agent.id())?), Signal::SIGTERM)?;
    let status = agent.wait()?;

    assert_eq!(status.code(), Some(7));
    assert_eq!(std::fs::read_to_string(&log)?, "got-term\n");
    assert_eq!(step.result()?, json!({"exitCode": 7}));
    Ok(())
}

#[test]
fn builtin_shell_runs_the_script_in_the_workspace() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let inputs = json!({
        "script": r#"echo "$GREETING from $(pwd)" > "$MAESTRO_OUTPUTS/greeting""#,
        "env": {"GREETING": "hello"},
    });
    let output = step
        .agent(&["builtin", "shell"])
        .env("MAESTRO_INPUTS", inputs.to_string())
        .output()?;
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let greeting = format!("hello from {}", step.workspace_dir().display());
    assert_eq!(
        step.result()?,
        json!({"outputs": {"greeting": greeting}, "exitCode": 0})
    );
    Ok(())
}

#[test]
fn builtin_shell_with_bad_input_exits_2() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let output = step
        .agent(&["builtin", "shell"])
        .env("MAESTRO_INPUTS", r#"{"script": "true", "env": ["A=1"]}"#)
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    let message = r#"input "env" must be an object of strings"#;
    assert!(
        stderr_of(&output).contains(message),
        "{}",
        stderr_of(&output)
    );
    assert_eq!(step.result()?, json!({"exitCode": 2, "error": message}));
    Ok(())
}

#[test]
fn unimplemented_builtin_exits_2() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let output = step.agent(&["builtin", "git"]).output()?;
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        step.result()?,
        json!({
            "exitCode": 2,
            "error": "built-in task git is not implemented in this agent version",
        })
    );
    Ok(())
}

#[test]
fn install_copies_a_runnable_agent() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let bin_dir = step.root.path().join("maestro").join("bin");
    let bin_dir_arg = bin_dir.to_str().unwrap_or_default();
    let output = step.agent(&["install", bin_dir_arg]).output()?;
    assert!(output.status.success(), "{}", stderr_of(&output));

    let installed = Command::new(bin_dir.join("maestro-agent"))
        .arg("version")
        .output()?;
    assert!(installed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&installed.stdout),
        format!("maestro-agent {}\n", env!("CARGO_PKG_VERSION"))
    );
    Ok(())
}
