//! The built-in tasks: steps that run `maestro-agent builtin <name>` instead of a command of
//! their own image.

mod address_guard;
mod ec2;
mod git;
mod http;
mod http_client;
mod inputs;
mod maven;
mod notify;
mod shell;
#[cfg(test)]
mod test_http_server;
#[cfg(test)]
mod test_support;
mod tomcat_deploy;

use std::ffi::OsString;

use maestro_protocol::BuiltinTask;
use serde_json::{Map, Value};

use crate::result::{EXIT_BAD_INPUT, StepResult};
use crate::step_env::{INPUTS_VAR, StepPaths};

/// A step's resolved inputs, by name.
pub type Inputs = Map<String, Value>;

const CONTAINER_TASK_MESSAGE: &str =
    "the container task runs its command with `maestro-agent exec`; this pod was built wrong";

/// Runs the built-in task `name` with the inputs in `MAESTRO_INPUTS`.
pub async fn run_builtin(name: &str, paths: &StepPaths) -> StepResult {
    let Some(builtin) = BuiltinTask::from_name(name) else {
        let known: Vec<&str> = BuiltinTask::ALL.iter().map(|b| b.as_str()).collect();
        return StepResult::failure(
            EXIT_BAD_INPUT,
            format!(
                "unknown built-in task {name:?}; the built-in tasks are {}",
                known.join(", ")
            ),
        );
    };
    if builtin == BuiltinTask::Container {
        // The operator runs a container task's own image and command under `maestro-agent
        // exec`; reaching this means the step pod was built from the wrong spec.
        return StepResult::failure(EXIT_BAD_INPUT, CONTAINER_TASK_MESSAGE);
    }
    let inputs = match inputs_from(std::env::var_os(INPUTS_VAR)) {
        Ok(inputs) => inputs,
        Err(message) => return StepResult::failure(EXIT_BAD_INPUT, message),
    };
    match builtin {
        BuiltinTask::Shell => shell::run_shell(&inputs, paths).await,
        BuiltinTask::Git => git::run_git(&inputs, paths).await,
        BuiltinTask::Http => http::run_http(&inputs, paths).await,
        BuiltinTask::Ec2Provision => ec2::run_ec2_provision(&inputs, paths).await,
        BuiltinTask::Ec2Deprovision => ec2::run_ec2_deprovision(&inputs, paths).await,
        BuiltinTask::Notify => notify::run_notify(&inputs, paths).await,
        BuiltinTask::Container => StepResult::failure(EXIT_BAD_INPUT, CONTAINER_TASK_MESSAGE),
    }
}

/// The library Tasks whose code is in the agent but which run in an image of their own, as
/// the Task's command under `maestro-agent exec` (`maestro-agent task maven` in the Maven
/// image): not built-ins, whose pods run the agent image.
pub const LIBRARY_TASKS: [&str; 2] = ["maven", "tomcat-deploy"];

/// Runs the library Task `name` with the inputs in `MAESTRO_INPUTS`.
pub async fn run_library_task(name: &str, paths: &StepPaths) -> StepResult {
    let inputs = match inputs_from(std::env::var_os(INPUTS_VAR)) {
        Ok(inputs) => inputs,
        Err(message) => return StepResult::failure(EXIT_BAD_INPUT, message),
    };
    match name {
        "maven" => maven::run_maven(&inputs, paths).await,
        "tomcat-deploy" => tomcat_deploy::run_tomcat_deploy(&inputs, paths).await,
        _ => StepResult::failure(
            EXIT_BAD_INPUT,
            format!(
                "unknown library task {name:?}; the agent runs {}",
                LIBRARY_TASKS.join(", ")
            ),
        ),
    }
}

/// Parses the value of `MAESTRO_INPUTS`; no variable means no inputs.
fn inputs_from(raw: Option<OsString>) -> Result<Inputs, String> {
    let Some(raw) = raw else {
        return Ok(Inputs::new());
    };
    let text = raw
        .into_string()
        .map_err(|_| format!("{INPUTS_VAR} is not UTF-8"))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(inputs)) => Ok(inputs),
        Ok(_) => Err(format!("{INPUTS_VAR} must be a JSON object")),
        Err(error) => Err(format!("{INPUTS_VAR} is not valid JSON: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_inputs_are_empty() {
        assert_eq!(inputs_from(None), Ok(Inputs::new()));
    }

    #[test]
    fn inputs_must_be_a_json_object() {
        assert_eq!(
            inputs_from(Some(OsString::from("[1]"))),
            Err("MAESTRO_INPUTS must be a JSON object".to_owned())
        );
        let error = inputs_from(Some(OsString::from("{")))
            .err()
            .unwrap_or_default();
        assert!(
            error.starts_with("MAESTRO_INPUTS is not valid JSON: "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn container_builtin_fails_because_the_pod_was_built_wrong() {
        let paths = StepPaths::from_lookup(|_| None);
        let result = run_builtin("container", &paths).await;
        assert_eq!(
            result,
            StepResult::failure(
                2,
                "the container task runs its command with `maestro-agent exec`; this pod was \
                 built wrong"
            )
        );
    }

    #[tokio::test]
    async fn unknown_library_tasks_fail_naming_the_ones_there_are() {
        let paths = StepPaths::from_lookup(|_| None);
        let result = run_library_task("gradle", &paths).await;
        assert_eq!(result.exit_code, 2);
        assert_eq!(
            result.error.as_deref(),
            Some("unknown library task \"gradle\"; the agent runs maven, tomcat-deploy")
        );
    }

    #[tokio::test]
    async fn unknown_builtins_fail_with_exit_code_2() {
        let paths = StepPaths::from_lookup(|_| None);
        let result = run_builtin("teleport", &paths).await;
        assert_eq!(result.exit_code, 2);
        assert_eq!(
            result.error.as_deref(),
            Some(
                "unknown built-in task \"teleport\"; the built-in tasks are shell, git, http, \
                 ec2-provision, ec2-deprovision, notify, container"
            )
        );
    }
}
