//! The `shell` built-in: runs a script with `<shell> -c <script>`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::Inputs;
use super::inputs::{optional_string, optional_string_map};
use crate::exec::{StepCommand, run_step_command};
use crate::result::{EXIT_BAD_INPUT, StepResult};
use crate::step_env::StepPaths;

const DEFAULT_SHELL: &str = "sh";

/// The `shell` task's inputs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellInputs {
    pub script: String,
    pub shell: String,
    pub env: Vec<(String, String)>,
    /// As given; resolved against the workspace by [`resolve_working_dir`].
    pub working_dir: Option<String>,
}

/// Runs the shell task: validates its inputs, then runs the script like `maestro-agent exec`.
pub async fn run_shell(inputs: &Inputs, paths: &StepPaths) -> StepResult {
    let command = match parse_shell_inputs(inputs)
        .and_then(|shell_inputs| shell_command(shell_inputs, &paths.workspace_dir))
    {
        Ok(command) => command,
        Err(message) => return StepResult::failure(EXIT_BAD_INPUT, message),
    };
    run_step_command(&command, &paths.outputs_dir).await
}

fn shell_command(inputs: ShellInputs, workspace_dir: &Path) -> Result<StepCommand, String> {
    let working_dir = resolve_working_dir(inputs.working_dir.as_deref(), workspace_dir)?;
    Ok(StepCommand {
        program: OsString::from(inputs.shell),
        args: vec![OsString::from("-c"), OsString::from(inputs.script)],
        extra_env: inputs.env,
        working_dir,
    })
}

/// Validates the inputs, with messages that name the input at fault. Inputs the task does not
/// know are ignored: the operator checks inputs against the task's declaration.
pub fn parse_shell_inputs(inputs: &Inputs) -> Result<ShellInputs, String> {
    let script = optional_string(inputs, "script")?
        .ok_or_else(|| r#"input "script" is required"#.to_owned())?;
    if script.trim().is_empty() {
        return Err(r#"input "script" must not be empty"#.to_owned());
    }
    let shell = optional_string(inputs, "shell")?.unwrap_or_else(|| DEFAULT_SHELL.to_owned());
    if shell.is_empty() {
        return Err(r#"input "shell" must not be empty"#.to_owned());
    }
    Ok(ShellInputs {
        script,
        shell,
        env: env_input(inputs)?,
        working_dir: optional_string(inputs, "workingDir")?,
    })
}

fn env_input(inputs: &Inputs) -> Result<Vec<(String, String)>, String> {
    optional_string_map(inputs, "env")?
        .into_iter()
        .map(|(name, value)| {
            // The OS cannot represent these; spawning would fail with a less helpful error.
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(format!(
                    r#"input "env" has an invalid variable name {name:?}"#
                ));
            }
            if value.contains('\0') {
                return Err(format!(
                    r#"input "env": the value of {name:?} contains a NUL character"#
                ));
            }
            Ok((name, value))
        })
        .collect()
}

/// Where the script runs: `workingDir` (relative to the workspace if it is relative), else the
/// workspace, else the agent's current directory when there is no workspace (e.g. a pod
/// without the workspace volume).
pub fn resolve_working_dir(
    given: Option<&str>,
    workspace_dir: &Path,
) -> Result<Option<PathBuf>, String> {
    let workspace = workspace_dir.is_dir().then_some(workspace_dir);
    let Some(given) = given else {
        return Ok(workspace.map(Path::to_path_buf));
    };
    let path = match workspace {
        Some(workspace) => workspace.join(given),
        None => PathBuf::from(given),
    };
    // Checked here because a missing directory would otherwise surface as the shell itself
    // "not found" when spawning.
    if path.is_dir() {
        Ok(Some(path))
    } else {
        Err(format!(
            r#"input "workingDir": {} is not a directory"#,
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_support::inputs;
    use serde_json::{Value, json};

    fn error_for(value: Value) -> String {
        parse_shell_inputs(&inputs(value)).err().unwrap_or_default()
    }

    #[test]
    fn script_alone_uses_defaults() {
        assert_eq!(
            parse_shell_inputs(&inputs(json!({"script": "echo hi"}))),
            Ok(ShellInputs {
                script: "echo hi".to_owned(),
                shell: "sh".to_owned(),
                env: Vec::new(),
                working_dir: None,
            })
        );
    }

    #[test]
    fn all_inputs_are_read() {
        let parsed = parse_shell_inputs(&inputs(json!({
            "script": "make",
            "shell": "bash",
            "env": {"A": "1", "B": "two"},
            "workingDir": "src",
            "unrelated": 5,
        })));
        assert_eq!(
            parsed,
            Ok(ShellInputs {
                script: "make".to_owned(),
                shell: "bash".to_owned(),
                env: vec![
                    ("A".to_owned(), "1".to_owned()),
                    ("B".to_owned(), "two".to_owned())
                ],
                working_dir: Some("src".to_owned()),
            })
        );
    }

    #[test]
    fn messages_name_the_bad_input() {
        assert_eq!(error_for(json!({})), r#"input "script" is required"#);
        assert_eq!(
            error_for(json!({"script": null})),
            r#"input "script" is required"#
        );
        assert_eq!(
            error_for(json!({"script": 3})),
            r#"input "script" must be a string"#
        );
        assert_eq!(
            error_for(json!({"script": "  "})),
            r#"input "script" must not be empty"#
        );
        assert_eq!(
            error_for(json!({"script": "x", "shell": ["bash"]})),
            r#"input "shell" must be a string"#
        );
        assert_eq!(
            error_for(json!({"script": "x", "shell": ""})),
            r#"input "shell" must not be empty"#
        );
        assert_eq!(
            error_for(json!({"script": "x", "env": "A=1"})),
            r#"input "env" must be an object of strings"#
        );
        assert_eq!(
            error_for(json!({"script": "x", "env": {"PORT": 80}})),
            r#"input "env" must be an object of strings; "PORT" is not a string"#
        );
        assert_eq!(
            error_for(json!({"script": "x", "env": {"A=B": "1"}})),
            r#"input "env" has an invalid variable name "A=B""#
        );
        assert_eq!(
            error_for(json!({"script": "x", "workingDir": false})),
            r#"input "workingDir" must be a string"#
        );
    }

    #[test]
    fn working_dir_defaults_to_the_workspace_when_it_exists() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        assert_eq!(
            resolve_working_dir(None, workspace.path()),
            Ok(Some(workspace.path().to_path_buf()))
        );
        assert_eq!(
            resolve_working_dir(None, &workspace.path().join("missing")),
            Ok(None)
        );
        Ok(())
    }

    #[test]
    fn relative_working_dir_is_inside_the_workspace() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        std::fs::create_dir(workspace.path().join("src"))?;
        assert_eq!(
            resolve_working_dir(Some("src"), workspace.path()),
            Ok(Some(workspace.path().join("src")))
        );
        let absolute = workspace.path().join("src");
        assert_eq!(
            resolve_working_dir(absolute.to_str(), Path::new("/nonexistent")),
            Ok(Some(absolute.clone()))
        );
        Ok(())
    }

    #[test]
    fn missing_working_dir_is_an_input_error() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        let expected = format!(
            r#"input "workingDir": {} is not a directory"#,
            workspace.path().join("nope").display()
        );
        assert_eq!(
            resolve_working_dir(Some("nope"), workspace.path()),
            Err(expected)
        );
        Ok(())
    }

    #[tokio::test]
    async fn bad_input_fails_with_exit_code_2_before_running() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let paths = StepPaths {
            outputs_dir: dir.path().join("outputs"),
            result_path: dir.path().join("result.json"),
            workspace_dir: dir.path().to_path_buf(),
        };
        let result = run_shell(&inputs(json!({"shell": "sh"})), &paths).await;
        assert_eq!(
            result,
            StepResult::failure(2, r#"input "script" is required"#)
        );
        Ok(())
    }

    #[tokio::test]
    async fn script_runs_in_the_workspace_with_env() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let paths = StepPaths {
            outputs_dir: dir.path().join("outputs"),
            result_path: dir.path().join("result.json"),
            workspace_dir: dir.path().to_path_buf(),
        };
        let script = r#"echo "$WHO@$(pwd)" > "$MAESTRO_OUTPUTS/where"; exit 4"#;
        let result = run_shell(
            &inputs(json!({"script": script, "env": {"WHO": "me"}})),
            &paths,
        )
        .await;
        assert_eq!(result.exit_code, 4);
        let expected = format!("me@{}", dir.path().display());
        assert_eq!(result.outputs.get("where"), Some(&expected));
        Ok(())
    }
}
