//! The library `tomcat-deploy` Task: deploys a war from the workspace through Tomcat's
//! manager text API (`PUT /manager/text/deploy?path=...&update=true`, the war as the body).
//! The manager answers 200 to a failed deploy too, with a `FAIL - ...` line: that line fails
//! the step. It is the http built-in's request (same client, address guard and retries),
//! run as the Task's command under `maestro-agent exec`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::Value;

use super::Inputs;
use super::address_guard::AddressGuard;
use super::http::{ExpectedStatus, HttpInputs, RequestBody, perform_with_retries};
use super::http_client::{guarded_url_input, shown_url};
use super::inputs::{
    contained_path_in_workspace, optional_seconds, optional_whole_number, required_string,
};
use crate::result::{EXIT_AGENT_FAILURE, EXIT_BAD_INPUT, StepResult};
use crate::step_env::StepPaths;

/// The deploy user's name and password: environment variables from the Secret the step
/// lists in `secretEnv`, so neither is an input, a status field or a log line.
pub const USER_VAR: &str = "TOMCAT_MANAGER_USER";
pub const PASSWORD_VAR: &str = "TOMCAT_MANAGER_PASSWORD";
/// A war of a few hundred MB over a slow link takes a while; the manager unpacks it too.
const DEFAULT_TIMEOUT_SECONDS: f64 = 300.0;
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Validates the inputs and the credentials into the manager request, and the app's URL.
pub fn deploy_request(
    inputs: &Inputs,
    workspace_dir: &Path,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(HttpInputs, String), String> {
    let address_guard = AddressGuard::for_step(inputs, &lookup)?;
    let mut base = guarded_url_input(inputs, "url", &address_guard)?;
    let context = required_string(inputs, "path")?.trim().to_owned();
    if !context.starts_with('/') || context.contains(['?', '#', ' ']) {
        return Err(format!(
            r#"input "path" must be a context path like /app, not {context:?}"#
        ));
    }
    let war = required_string(inputs, "war")?;
    let war = contained_path_in_workspace("war", war.trim(), workspace_dir)?;
    if !war.is_file() {
        return Err(format!(r#"input "war": {} is not a file"#, war.display()));
    }
    let update = match inputs.get("update") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(flag)) => *flag,
        Some(Value::String(text)) if text == "true" || text == "false" => text == "true",
        Some(_) => return Err(r#"input "update" must be true or false"#.to_owned()),
    };
    let user = lookup(USER_VAR).filter(|u| !u.is_empty());
    let password = lookup(PASSWORD_VAR).filter(|p| !p.is_empty());
    let (Some(user), Some(password)) = (user, password) else {
        return Err(format!(
            "{USER_VAR} and {PASSWORD_VAR} are not both set: list the Secret holding the \
             manager's deploy user in the step's secretEnv"
        ));
    };
    let token = aws_smithy_types::base64::encode(format!("{user}:{password}").as_bytes());
    let mut authorization = HeaderValue::from_str(&format!("Basic {token}"))
        .map_err(|_| format!("{USER_VAR} or {PASSWORD_VAR} holds a character a header cannot"))?;
    authorization.set_sensitive(true);
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, authorization);

    let trimmed = base.path().trim_end_matches('/').to_owned();
    let mut app = base.clone();
    app.set_query(None);
    app.set_fragment(None);
    app.set_path(&format!("{trimmed}{context}"));
    let app_url = app.to_string();
    base.set_fragment(None);
    base.set_path(&format!("{trimmed}/manager/text/deploy"));
    base.query_pairs_mut()
        .clear()
        .append_pair("path", &context)
        .append_pair("update", if update { "true" } else { "false" });
    let retries = optional_whole_number(inputs, "retries", 0)?.unwrap_or(2);
    let request = HttpInputs {
        url: base,
        method: Method::PUT,
        headers,
        body: RequestBody::File(war),
        expected_status: ExpectedStatus::OneOf(vec![200]),
        retries: u32::try_from(retries)
            .map_err(|_| r#"input "retries" is too large"#.to_owned())?,
        timeout: Duration::from_secs_f64(
            optional_seconds(inputs, "timeout")?.unwrap_or(DEFAULT_TIMEOUT_SECONDS),
        ),
        save_as: None,
        address_guard,
    };
    Ok((request, app_url))
}

/// Runs the tomcat-deploy task.
pub async fn run_tomcat_deploy(inputs: &Inputs, paths: &StepPaths) -> StepResult {
    let (request, app_url) = match deploy_request(inputs, &paths.workspace_dir, |name| {
        std::env::var(name).ok()
    }) {
        Ok(request) => request,
        Err(message) => return StepResult::failure(EXIT_BAD_INPUT, message),
    };
    let answer = match perform_with_retries(&request, FIRST_RETRY_DELAY).await {
        Ok(outputs) => outputs.get("body").cloned().unwrap_or_default(),
        Err(message) => return StepResult::failure(EXIT_AGENT_FAILURE, message),
    };
    result_of(&answer, &app_url, &shown_url(&request.url))
}

/// The step's result from the manager's answer: its first line is `OK - ...` or
/// `FAIL - ...`.
pub fn result_of(answer: &str, app_url: &str, shown: &str) -> StepResult {
    let first = answer
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    println!("tomcat-deploy: {shown}: {first}");
    let outputs = BTreeMap::from([
        ("url".to_owned(), app_url.to_owned()),
        ("answer".to_owned(), first.to_owned()),
    ]);
    if first.starts_with("OK") {
        StepResult {
            outputs,
            ..StepResult::default()
        }
    } else {
        let message = if first.is_empty() {
            "the manager gave an empty answer; is this Tomcat's manager?".to_owned()
        } else {
            format!("the manager refused the deploy: {first}")
        };
        StepResult {
            outputs,
            ..StepResult::failure(EXIT_AGENT_FAILURE, message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_http_server::{CannedResponse, TestHttpServer};
    use crate::builtin::test_support::inputs;

    fn credentials(name: &str) -> Option<String> {
        match name {
            USER_VAR => Some("deployer".into()),
            PASSWORD_VAR => Some("s3cret".into()),
            _ => None,
        }
    }

    #[test]
    fn the_request_targets_the_text_api_with_basic_auth() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        std::fs::write(workspace.path().join("app.war"), b"PK")?;
        let given = inputs(serde_json::json!({
            "url": "http://tomcat.test:8080/",
            "path": "/app",
            "war": "app.war",
        }));
        let (request, app_url) =
            deploy_request(&given, workspace.path(), credentials).map_err(anyhow::Error::msg)?;
        assert_eq!(
            request.url.as_str(),
            "http://tomcat.test:8080/manager/text/deploy?path=%2Fapp&update=true"
        );
        assert_eq!(app_url, "http://tomcat.test:8080/app");
        assert_eq!(request.method, Method::PUT);
        // deployer:s3cret
        assert_eq!(
            request
                .headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            Some("Basic ZGVwbG95ZXI6czNjcmV0")
        );
        Ok(())
    }

    #[test]
    fn missing_credentials_and_bad_paths_are_refused() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        std::fs::write(workspace.path().join("app.war"), b"PK")?;
        let given = |path: &str| {
            inputs(
                serde_json::json!({"url": "http://tomcat.test:8080", "path": path, "war": "app.war"}),
            )
        };
        let error = deploy_request(&given("/app"), workspace.path(), |_| None)
            .err()
            .unwrap_or_default();
        assert!(error.contains("secretEnv"), "{error}");
        let error = deploy_request(&given("app"), workspace.path(), credentials)
            .err()
            .unwrap_or_default();
        assert!(error.contains("context path like /app"), "{error}");
        Ok(())
    }

    #[tokio::test]
    async fn a_fail_answer_fails_the_step_with_the_managers_message() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        std::fs::write(workspace.path().join("app.war"), b"PK")?;
        let server = TestHttpServer::start(|_| {
            CannedResponse::new(200, "FAIL - Application already exists at path [/app]\n")
        })?;
        let given = inputs(serde_json::json!({
            "url": server.url("/"),
            "path": "/app",
            "war": "app.war",
            "update": false,
            "allowRestrictedAddresses": true,
        }));
        let (request, app_url) =
            deploy_request(&given, workspace.path(), credentials).map_err(anyhow::Error::msg)?;
        let outputs = perform_with_retries(&request, Duration::from_millis(10))
            .await
            .map_err(anyhow::Error::msg)?;
        let answer = outputs.get("body").cloned().unwrap_or_default();
        let result = result_of(&answer, &app_url, "PUT x");
        assert_eq!(result.exit_code, 1);
        assert_eq!(
            result.error.as_deref(),
            Some(
                "the manager refused the deploy: FAIL - Application already exists at path [/app]"
            )
        );
        let ok = result_of(
            "OK - Deployed application at context path [/app]\n",
            &app_url,
            "PUT x",
        );
        assert_eq!((ok.exit_code, ok.error.clone()), (0, None));
        assert_eq!(
            ok.outputs.get("answer").map(String::as_str),
            Some("OK - Deployed application at context path [/app]")
        );
        let received = server.requests();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].method, "PUT");
        assert_eq!(
            received[0].target,
            "/manager/text/deploy?path=%2Fapp&update=false"
        );
        assert_eq!(received[0].body, b"PK");
        Ok(())
    }
}
