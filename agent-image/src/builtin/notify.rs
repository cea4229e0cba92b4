//! The `notify` built-in: posts a message to a webhook (Slack, Teams, Mattermost, or any
//! endpoint that takes JSON). The operator renders the run's context into the inputs before
//! the pod starts, so the text arrives final.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::Inputs;
use super::address_guard::AddressGuard;
use super::http_client::{
    BODY_EXCERPT_BYTES, body_excerpt, build_client, describe_error, guarded_url_input,
    headers_input, read_body_prefix,
};
use super::inputs::optional_string;
use crate::result::{EXIT_AGENT_FAILURE, EXIT_BAD_INPUT, StepResult};
use crate::step_env::StepPaths;

/// A webhook answers at once or not at all; a notification should not hold up a run.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `notify` task's inputs, validated.
#[derive(Debug)]
pub struct NotifyInputs {
    pub url: Url,
    /// The JSON document to post.
    pub payload: Value,
    pub headers: HeaderMap,
    /// The addresses the webhook and its redirects may not reach.
    pub address_guard: AddressGuard,
}

/// Runs the notify task: validates its inputs, then posts the message.
pub async fn run_notify(inputs: &Inputs, _paths: &StepPaths) -> StepResult {
    let notification = match parse_notify_inputs(inputs) {
        Ok(notification) => notification,
        Err(message) => return StepResult::failure(EXIT_BAD_INPUT, message),
    };
    match post(&notification).await {
        Ok(outputs) => StepResult {
            outputs,
            ..StepResult::default()
        },
        Err(message) => StepResult::failure(EXIT_AGENT_FAILURE, message),
    }
}

/// Validates the inputs, with messages that name the input at fault.
pub fn parse_notify_inputs(inputs: &Inputs) -> Result<NotifyInputs, String> {
    let address_guard = AddressGuard::for_step(inputs, |name| std::env::var(name).ok())?;
    let url = guarded_url_input(inputs, "url", &address_guard)?;
    let text = optional_string(inputs, "text")?;
    let payload = inputs.get("payload").filter(|value| !value.is_null());
    let payload = match (text, payload) {
        (Some(_), Some(_)) => return Err(r#"give input "text" or "payload", not both"#.to_owned()),
        (None, None) => return Err(r#"input "text" or "payload" is required"#.to_owned()),
        (Some(text), None) if text.trim().is_empty() => {
            return Err(r#"input "text" must not be empty"#.to_owned());
        }
        // The body Slack's incoming webhooks take, and many others with them.
        (Some(text), None) => json!({ "text": text }),
        (None, Some(payload @ Value::Object(_))) => payload.clone(),
        (None, Some(_)) => return Err(r#"input "payload" must be an object"#.to_owned()),
    };
    Ok(NotifyInputs {
        url,
        payload,
        headers: headers_input(inputs, "headers")?,
        address_guard,
    })
}

async fn post(notification: &NotifyInputs) -> Result<BTreeMap<String, String>, String> {
    let client = build_client(NOTIFY_TIMEOUT, &notification.address_guard)?;
    // Only the origin is shown: a webhook's path is its secret (Slack's is).
    let destination = notification.url.origin().ascii_serialization();
    let body = serde_json::to_vec(&notification.payload)
        .map_err(|error| format!("cannot encode the notification: {error}"))?;
    let mut headers = notification.headers.clone();
    if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let response = client
        .post(notification.url.clone())
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|error| {
            format!(
                "cannot send the notification to {destination}: {}",
                describe_error(error)
            )
        })?;
    let status = response.status();
    if !status.is_success() {
        let excerpt = read_body_prefix(response, BODY_EXCERPT_BYTES)
            .await
            .map(|prefix| body_excerpt(&prefix))
            .unwrap_or_default();
        let mut message = format!("the webhook at {destination} answered {status}");
        if !excerpt.trim().is_empty() {
            message.push_str(": ");
            message.push_str(excerpt.trim());
        }
        return Err(message);
    }
    println!("notified {destination} ({status})");
    Ok(BTreeMap::from([(
        "status".to_owned(),
        status.as_u16().to_string(),
    )]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_http_server::{CannedResponse, TestHttpServer};
    use crate::builtin::test_support::inputs;

    fn no_paths() -> StepPaths {
        StepPaths::from_lookup(|_| None)
    }

    fn error_for(value: Value) -> String {
        parse_notify_inputs(&inputs(value))
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn metadata_and_api_server_webhooks_are_refused_unless_allowed() {
        for url in [
            "http://169.254.169.254/latest/api/token",
            "https://kubernetes.default.svc.cluster.local/api",
        ] {
            let error = error_for(json!({"url": url, "text": "hi"}));
            assert!(
                error.starts_with(r#"input "url": "#)
                    && error.contains(r#"set input "allowRestrictedAddresses" to true"#),
                "{url}: {error}"
            );
            let allowed = parse_notify_inputs(&inputs(
                json!({"url": url, "text": "hi", "allowRestrictedAddresses": true}),
            ));
            assert!(allowed.is_ok(), "{url}");
        }
    }

    #[test]
    fn messages_name_the_bad_input() {
        let url = "https://hooks.example.com/services/T0/B0/x";
        assert_eq!(
            error_for(json!({"text": "hi"})),
            r#"input "url" is required"#
        );
        assert_eq!(
            error_for(json!({"url": url})),
            r#"input "text" or "payload" is required"#
        );
        assert_eq!(
            error_for(json!({"url": url, "text": "a", "payload": {"b": 1}})),
            r#"give input "text" or "payload", not both"#
        );
        assert_eq!(
            error_for(json!({"url": url, "text": " "})),
            r#"input "text" must not be empty"#
        );
        assert_eq!(
            error_for(json!({"url": url, "payload": "text"})),
            r#"input "payload" must be an object"#
        );
        assert_eq!(
            error_for(json!({"url": url, "text": "a", "headers": []})),
            r#"input "headers" must be an object of strings"#
        );
    }

    #[tokio::test]
    async fn text_is_posted_as_slack_json() -> anyhow::Result<()> {
        let server = TestHttpServer::start(|_| CannedResponse::new(200, "ok"))?;
        let result = run_notify(
            &inputs(json!({
                "url": server.url("/services/T0/B0/secret"),
                "text": "acceptance-tests-x7k2p failed at \"deploy\"",
            })),
            &no_paths(),
        )
        .await;
        assert_eq!(result.exit_code, 0, "{:?}", result.error);
        assert_eq!(
            result.outputs.get("status").map(String::as_str),
            Some("200")
        );
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].method, "POST");
        assert_eq!(requests[0].target, "/services/T0/B0/secret");
        assert_eq!(requests[0].header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_slice(&requests[0].body)?;
        assert_eq!(
            body,
            json!({"text": "acceptance-tests-x7k2p failed at \"deploy\""})
        );
        Ok(())
    }

    #[tokio::test]
    async fn payload_is_posted_as_is_with_headers() -> anyhow::Result<()> {
        let server = TestHttpServer::start(|_| CannedResponse::new(204, ""))?;
        let payload = json!({"@type": "MessageCard", "sections": [{"text": "done", "n": 3}]});
        let result = run_notify(
            &inputs(json!({
                "url": server.url("/hook"),
                "payload": payload,
                "headers": {"Authorization": "Bearer t0k3n"},
            })),
            &no_paths(),
        )
        .await;
        assert_eq!(result.exit_code, 0, "{:?}", result.error);
        assert_eq!(
            result.outputs.get("status").map(String::as_str),
            Some("204")
        );
        let requests = server.requests();
        assert_eq!(requests[0].header("authorization"), Some("Bearer t0k3n"));
        assert_eq!(serde_json::from_slice::<Value>(&requests[0].body)?, payload);
        Ok(())
    }

    #[tokio::test]
    async fn rejection_fails_with_the_status_without_the_secret_path() -> anyhow::Result<()> {
        let server = TestHttpServer::start(|_| CannedResponse::new(403, "invalid_token"))?;
        let result = run_notify(
            &inputs(json!({"url": server.url("/services/T0/B0/secret"), "text": "hi"})),
            &no_paths(),
        )
        .await;
        assert_eq!(result.exit_code, 1);
        let expected = format!(
            "the webhook at {} answered 403 Forbidden: invalid_token",
            server.url("")
        );
        assert_eq!(result.error.as_deref(), Some(expected.as_str()));
        Ok(())
    }
}
