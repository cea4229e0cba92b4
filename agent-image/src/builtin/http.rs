//! The `http` built-in: one HTTP request, optionally with a file from the workspace as its
//! body (e.g. deploying a WAR) or saving the response into the workspace (e.g. fetching one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{CONTENT_LENGTH, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::Inputs;
use super::address_guard::AddressGuard;
use super::http_client::{
    BODY_EXCERPT_BYTES, body_excerpt, build_client, describe_error, guarded_url_input,
    headers_input, human_size, read_body_prefix, shown_url,
};
use super::inputs::{
    contained_path_in_workspace, optional_seconds, optional_string, optional_whole_number,
    whole_number,
};
use crate::result::{EXIT_AGENT_FAILURE, EXIT_BAD_INPUT, StepResult};
use crate::step_env::StepPaths;

const DEFAULT_TIMEOUT_SECONDS: f64 = 60.0;
/// The wait before the first retry; it doubles for each further one.
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Doubling stops here, so a long retry chain keeps trying at a steady pace.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// The `http` task's inputs, validated.
#[derive(Debug)]
pub struct HttpInputs {
    pub url: Url,
    pub method: Method,
    pub headers: HeaderMap,
    pub body: RequestBody,
    pub expected_status: ExpectedStatus,
    pub retries: u32,
    pub timeout: Duration,
    pub save_as: Option<SaveAs>,
    /// The addresses the request and its redirects may not reach.
    pub address_guard: AddressGuard,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    Empty,
    Text(String),
    /// Streamed from this file, reopened for each attempt.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedStatus {
    AnySuccess,
    OneOf(Vec<u16>),
}

impl ExpectedStatus {
    fn accepts(&self, status: StatusCode) -> bool {
        match self {
            Self::AnySuccess => status.is_success(),
            Self::OneOf(codes) => codes.contains(&status.as_u16()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::AnySuccess => "200-299".to_owned(),
            Self::OneOf(codes) => codes
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Download mode: where the response body goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveAs {
    /// As the user wrote it, for the log.
    pub given: String,
    pub path: PathBuf,
}

/// Runs the http task: validates its inputs, then makes the request.
pub async fn run_http(inputs: &Inputs, paths: &StepPaths) -> StepResult {
    match parse_http_inputs(inputs, &paths.workspace_dir) {
        Ok(request) => perform(&request, FIRST_RETRY_DELAY).await,
        Err(message) => StepResult::failure(EXIT_BAD_INPUT, message),
    }
}

/// Validates the inputs, with messages that name the input at fault.
pub fn parse_http_inputs(inputs: &Inputs, workspace_dir: &Path) -> Result<HttpInputs, String> {
    let address_guard = AddressGuard::for_step(inputs, |name| std::env::var(name).ok())?;
    let url = guarded_url_input(inputs, "url", &address_guard)?;
    let method = match optional_string(inputs, "method")? {
        None => Method::GET,
        Some(method) => Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| r#"input "method" must be an HTTP method such as GET or PUT"#)?,
    };
    let headers = headers_input(inputs, "headers")?;
    let body = match (
        optional_string(inputs, "body")?,
        optional_string(inputs, "bodyFile")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(r#"give input "body" or "bodyFile", not both"#.to_owned());
        }
        (Some(text), None) => RequestBody::Text(text),
        (None, Some(file)) => {
            let path = contained_path_in_workspace("bodyFile", &file, workspace_dir)?;
            // Checked now, so a typo fails as bad input rather than after connecting.
            if !path.is_file() {
                return Err(format!(
                    r#"input "bodyFile": {} is not a file"#,
                    path.display()
                ));
            }
            RequestBody::File(path)
        }
        (None, None) => RequestBody::Empty,
    };
    let save_as = match optional_string(inputs, "saveAs")? {
        None => None,
        Some(given) if given.trim().is_empty() => {
            return Err(r#"input "saveAs" must not be empty"#.to_owned());
        }
        Some(given) => {
            let path = contained_path_in_workspace("saveAs", &given, workspace_dir)?;
            if path.is_dir() {
                return Err(format!(
                    r#"input "saveAs": {} is a directory; give a file path"#,
                    path.display()
                ));
            }
            Some(SaveAs { given, path })
        }
    };
    let retries = optional_whole_number(inputs, "retries", 0)?.unwrap_or(0);
    Ok(HttpInputs {
        url,
        method,
        headers,
        body,
        expected_status: expected_status_input(inputs)?,
        retries: u32::try_from(retries)
            .map_err(|_| r#"input "retries" is too large"#.to_owned())?,
        timeout: Duration::from_secs_f64(
            optional_seconds(inputs, "timeout")?.unwrap_or(DEFAULT_TIMEOUT_SECONDS),
        ),
        save_as,
        address_guard,
    })
}

/// `expectedStatus`: an array of status codes; a single code is accepted too.
fn expected_status_input(inputs: &Inputs) -> Result<ExpectedStatus, String> {
    const MESSAGE: &str =
        r#"input "expectedStatus" must be an array of HTTP status codes (100-599)"#;
    let status_code = |value: &Value| {
        whole_number(value)
            .and_then(|code| u16::try_from(code).ok())
            .filter(|code| (100..=599).contains(code))
            .ok_or_else(|| MESSAGE.to_owned())
    };
    match inputs.get("expectedStatus") {
        None | Some(Value::Null) => Ok(ExpectedStatus::AnySuccess),
        Some(Value::Array(codes)) if !codes.is_empty() => codes
            .iter()
            .map(status_code)
            .collect::<Result<_, _>>()
            .map(ExpectedStatus::OneOf),
        Some(Value::Array(_)) => Err(MESSAGE.to_owned()),
        Some(single) => status_code(single).map(|code| ExpectedStatus::OneOf(vec![code])),
    }
}

/// Makes the request, retrying connection failures and unexpected 5xx responses, and turns
/// the final response into the step's result.
async fn perform(request: &HttpInputs, first_retry_delay: Duration) -> StepResult {
    match perform_with_retries(request, first_retry_delay).await {
        Ok(outputs) => StepResult {
            outputs,
            ..StepResult::default()
        },
        Err(message) => StepResult::failure(EXIT_AGENT_FAILURE, message),
    }
}

pub(super) async fn perform_with_retries(
    request: &HttpInputs,
    first_retry_delay: Duration,
) -> Result<BTreeMap<String, String>, String> {
    let client = build_client(request.timeout, &request.address_guard)?;
    // Shown in the log and in errors; never with credentials or the query string.
    let target = format!("{} {}", request.method, shown_url(&request.url));
    let mut delay = first_retry_delay;
    let mut attempt: u32 = 0;
    loop {
        let may_retry = attempt < request.retries;
        let retry_reason = match send_once(&client, request).await {
            Ok(response) if request.expected_status.accepts(response.status()) => {
                println!("{target} -> {}", response.status());
                return finish(request, response).await;
            }
            Ok(response) if response.status().is_server_error() && may_retry => {
                response.status().to_string()
            }
            Ok(response) => {
                return Err(
                    unexpected_status_message(&target, &request.expected_status, response).await,
                );
            }
            Err(AttemptError::Request(error)) if error.is_connect() && may_retry => {
                describe_error(error)
            }
            Err(AttemptError::Request(error)) => {
                return Err(request_error_message(&target, request.timeout, error));
            }
            Err(AttemptError::BodyFile(path, error)) => {
                return Err(format!(
                    r#"cannot read input "bodyFile" {}: {error}"#,
                    path.display()
                ));
            }
        };
        attempt += 1;
        println!(
            "{target} -> {retry_reason}; retry {attempt} of {} in {}s",
            request.retries,
            delay.as_secs_f64()
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// The outputs of a response with an expected status: its excerpt, or in download mode the
/// saved file.
async fn finish(
    request: &HttpInputs,
    response: reqwest::Response,
) -> Result<BTreeMap<String, String>, String> {
    let status = response.status().as_u16().to_string();
    let mut outputs = BTreeMap::from([("status".to_owned(), status)]);
    match &request.save_as {
        Some(save_as) => {
            let bytes = save_body(response, &save_as.path).await?;
            println!("saved {} ({})", save_as.given, human_size(bytes));
            outputs.insert("path".to_owned(), save_as.path.display().to_string());
            outputs.insert("bytes".to_owned(), bytes.to_string());
        }
        None => {
            let prefix = read_body_prefix(response, BODY_EXCERPT_BYTES)
                .await
                .map_err(|error| format!("cannot read the response: {}", describe_error(error)))?;
            outputs.insert("body".to_owned(), body_excerpt(&prefix));
        }
    }
    Ok(outputs)
}

/// Streams the body to a temporary file beside `path`, then renames it into place, so a
/// failed download never leaves a partial file for a later step to use.
async fn save_body(mut response: reqwest::Response, path: &Path) -> Result<u64, String> {
    let shown = path.display();
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|error| format!("cannot create the directory of {shown}: {error}"))?;
    }
    let partial = partial_path(path);
    let written = async {
        // Removed, then created only if absent: a symlink left at the partial path (by an
        // earlier step) is never followed out of the workspace. The final rename replaces a
        // symlink at `path` itself rather than writing through it.
        match tokio::fs::remove_file(&partial).await {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot remove {}: {error}", partial.display()));
            }
            _ => {}
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .await
            .map_err(|error| format!("cannot create {}: {error}", partial.display()))?;
        let mut bytes: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(|error| {
            if error.is_timeout() {
                // The timeout covers the whole transfer; a big file on a slow link needs more.
                format!(r#"download to {shown} timed out after {bytes} bytes (input "timeout")"#)
            } else {
                format!(
                    "download to {shown} failed after {bytes} bytes: {}",
                    describe_error(error)
                )
            }
        })? {
            file.write_all(&chunk)
                .await
                .map_err(|error| format!("cannot write {shown}: {error}"))?;
            bytes += chunk.len() as u64;
        }
        file.sync_all()
            .await
            .map_err(|error| format!("cannot write {shown}: {error}"))?;
        Ok::<u64, String>(bytes)
    }
    .await;
    let renamed = match written {
        Ok(bytes) => tokio::fs::rename(&partial, path)
            .await
            .map(|()| bytes)
            .map_err(|error| format!("cannot move the download into {shown}: {error}")),
        Err(message) => Err(message),
    };
    if renamed.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    renamed
}

/// `dir/.name.part`: hidden, and in the same directory so the rename cannot cross devices.
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.part"))
}

async fn unexpected_status_message(
    target: &str,
    expected: &ExpectedStatus,
    response: reqwest::Response,
) -> String {
    let status = response.status();
    let excerpt = match read_body_prefix(response, BODY_EXCERPT_BYTES).await {
        Ok(prefix) => body_excerpt(&prefix),
        Err(error) => format!("(cannot read the body: {})", describe_error(error)),
    };
    let mut message = format!(
        "{target} returned {status}, expected {}",
        expected.describe()
    );
    if !excerpt.trim().is_empty() {
        message.push_str(": ");
        message.push_str(excerpt.trim());
    }
    message
}

fn request_error_message(target: &str, timeout: Duration, error: reqwest::Error) -> String {
    if error.is_timeout() {
        format!(
            r#"{target} timed out after {}s (input "timeout")"#,
            timeout.as_secs_f64()
        )
    } else {
        format!("{target} failed: {}", describe_error(error))
    }
}

/// Why an attempt got no response.
enum AttemptError {
    Request(reqwest::Error),
    BodyFile(PathBuf, std::io::Error),
}

async fn send_once(
    client: &reqwest::Client,
    request: &HttpInputs,
) -> Result<reqwest::Response, AttemptError> {
    let mut builder = client
        .request(request.method.clone(), request.url.clone())
        .headers(request.headers.clone());
    builder = match &request.body {
        RequestBody::Empty => builder,
        RequestBody::Text(text) => builder.body(text.clone()),
        RequestBody::File(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|error| AttemptError::BodyFile(path.clone(), error))?;
            let length = file
                .metadata()
                .await
                .map_err(|error| AttemptError::BodyFile(path.clone(), error))?
                .len();
            // A known length avoids chunked encoding, which some servers refuse for uploads.
            if !request.headers.contains_key(CONTENT_LENGTH) {
                builder = builder.header(CONTENT_LENGTH, HeaderValue::from(length));
            }
            builder.body(reqwest::Body::from(file))
        }
    };
    builder.send().await.map_err(AttemptError::Request)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::builtin::test_http_server::{CannedResponse, TestHttpServer};
    use crate::builtin::test_support::{inputs, step_paths};
    use serde_json::json;

    fn error_for(value: Value, workspace: &Path) -> String {
        parse_http_inputs(&inputs(value), workspace)
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn url_alone_uses_defaults() -> anyhow::Result<()> {
        let parsed = parse_http_inputs(
            &inputs(json!({"url": "http://example.com/x"})),
            Path::new("/ws"),
        )
        .map_err(anyhow::Error::msg)?;
        assert_eq!(parsed.method, Method::GET);
        assert_eq!(parsed.body, RequestBody::Empty);
        assert_eq!(parsed.expected_status, ExpectedStatus::AnySuccess);
        assert_eq!(parsed.retries, 0);
        assert_eq!(parsed.timeout, Duration::from_secs(60));
        assert_eq!(parsed.save_as, None);
        Ok(())
    }

    #[test]
    fn inputs_are_read_and_typed() -> anyhow::Result<()> {
        let parsed = parse_http_inputs(
            &inputs(json!({
                "url": "http://example.com/x",
                "method": "put",
                "body": "data",
                "expectedStatus": [201, "204"],
                "retries": "3",
                "timeout": 2.5,
                "saveAs": "out/reply.json",
            })),
            Path::new("/ws"),
        )
        .map_err(anyhow::Error::msg)?;
        assert_eq!(parsed.method, Method::PUT);
        assert_eq!(parsed.body, RequestBody::Text("data".to_owned()));
        assert_eq!(
            parsed.expected_status,
            ExpectedStatus::OneOf(vec![201, 204])
        );
        assert_eq!(parsed.retries, 3);
        assert_eq!(parsed.timeout, Duration::from_millis(2500));
        assert_eq!(
            parsed.save_as,
            Some(SaveAs {
                given: "out/reply.json".to_owned(),
                path: PathBuf::from("/ws/out/reply.json"),
            })
        );
        Ok(())
    }

    #[test]
    fn messages_name_the_bad_input() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        let ws = workspace.path();
        let url = "http://example.com/";
        assert_eq!(error_for(json!({}), ws), r#"input "url" is required"#);
        assert_eq!(
            error_for(json!({"url": "file:///etc/passwd"}), ws),
            r#"input "url" must be an http or https URL"#
        );
        assert_eq!(
            error_for(json!({"url": url, "method": "GE T"}), ws),
            r#"input "method" must be an HTTP method such as GET or PUT"#
        );
        assert_eq!(
            error_for(json!({"url": url, "body": "a", "bodyFile": "b"}), ws),
            r#"give input "body" or "bodyFile", not both"#
        );
        assert_eq!(
            error_for(json!({"url": url, "bodyFile": "app.war"}), ws),
            format!(
                r#"input "bodyFile": {} is not a file"#,
                ws.join("app.war").display()
            )
        );
        assert_eq!(
            error_for(json!({"url": url, "saveAs": "."}), ws),
            format!(
                r#"input "saveAs": {} is a directory; give a file path"#,
                ws.join(".").display()
            )
        );
        for bad in [json!([]), json!([99]), json!(["x"]), json!({"a": 1})] {
            assert_eq!(
                error_for(json!({"url": url, "expectedStatus": bad}), ws),
                r#"input "expectedStatus" must be an array of HTTP status codes (100-599)"#
            );
        }
        assert_eq!(
            error_for(json!({"url": url, "retries": -1}), ws),
            r#"input "retries" must be a whole number of at least 0"#
        );
        assert_eq!(
            error_for(json!({"url": url, "timeout": 0}), ws),
            r#"input "timeout" must be a number of seconds above 0"#
        );
        assert_eq!(
            error_for(json!({"url": url, "headers": {"X": 1}}), ws),
            r#"input "headers" must be an object of strings; "X" is not a string"#
        );
        Ok(())
    }

    #[tokio::test]
    async fn bad_input_fails_with_exit_code_2() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        let result = run_http(&inputs(json!({"url": 5})), &step_paths(workspace.path())).await;
        assert_eq!(
            result,
            StepResult::failure(2, r#"input "url" must be a string"#)
        );
        Ok(())
    }

    #[tokio::test]
    async fn metadata_addresses_are_refused_unless_allowed() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        for url in [
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "http://[::ffff:169.254.169.254]/",
            "http://[fd00:ec2::254]/",
            "https://kubernetes.default.svc/api/v1/secrets",
        ] {
            let result =
                run_http(&inputs(json!({"url": url})), &step_paths(workspace.path())).await;
            assert_eq!(result.exit_code, 2, "{url}");
            let error = result.error.unwrap_or_default();
            assert!(
                error.starts_with(r#"input "url": "#)
                    && error.ends_with(
                        r#"set input "allowRestrictedAddresses" to true if the step must reach it"#
                    ),
                "{url}: {error}"
            );
        }
        // Allowed, the request is made (and here fails to connect, quickly: 1s timeout).
        let allowed = run_http(
            &inputs(json!({
                "url": "http://169.254.169.254/",
                "allowRestrictedAddresses": true,
                "timeout": 1,
            })),
            &step_paths(workspace.path()),
        )
        .await;
        assert_eq!(allowed.exit_code, 1, "{:?}", allowed.error);
        Ok(())
    }

    #[tokio::test]
    async fn redirects_to_metadata_addresses_are_refused() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        let server = TestHttpServer::start(|_| {
            CannedResponse::new(302, "").with_header(
                "Location",
                "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            )
        })?;
        let result = run_http(
            &inputs(json!({"url": server.url("/innocent")})),
            &step_paths(workspace.path()),
        )
        .await;
        assert_eq!(result.exit_code, 1);
        let error = result.error.unwrap_or_default();
        assert!(
            error.contains(
                "redirect refused: 169.254.169.254 is a link-local or cloud metadata address"
            ),
            "{error}"
        );
        assert_eq!(server.requests().len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn file_inputs_outside_the_workspace_are_refused() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let workspace = root.path().join("workspace");
        std::fs::create_dir_all(&workspace)?;
        std::fs::write(root.path().join("token"), "secret")?;
        std::os::unix::fs::symlink(root.path().join("token"), workspace.join("token-link"))?;
        let server = TestHttpServer::start(|_| CannedResponse::new(200, "ok"))?;
        for (input, given) in [
            ("bodyFile", "../token"),
            ("bodyFile", "token-link"),
            ("bodyFile", "/etc/hostname"),
            ("saveAs", "../written"),
            ("saveAs", "/tmp/maestro-agent-written"),
        ] {
            let result = run_http(
                &inputs(json!({"url": server.url("/"), "method": "PUT", input: given})),
                &step_paths(&workspace),
            )
            .await;
            assert_eq!(result.exit_code, 2, "{input} {given}");
            assert_eq!(
                result.error.unwrap_or_default(),
                format!(
                    "input {input:?}: {given:?} is outside the workspace {}; give a path inside it",
                    workspace.display()
                )
            );
        }
        assert!(server.requests().is_empty());
        assert!(!root.path().join("written").exists());
        Ok(())
    }

    #[tokio::test]
    async fn get_outputs_the_status_and_a_body_excerpt() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        let body = format!("hello {}", "x".repeat(3000));
        let served = body.clone();
        let server = TestHttpServer::start(move |_| CannedResponse::new(200, served.clone()))?;
        let result = run_http(
            &inputs(json!({
                "url": server.url("/status?verbose=1"),
                "headers": {"X-Api-Key": "k1"},
            })),
            &step_paths(workspace.path()),
        )
        .await;
        assert_eq!(result.exit_code, 0, "{:?}", result.error);
        assert_eq!(
            result.outputs.get("status").map(String::as_str),
            Some("200")
        );
        assert_eq!(
            result.outputs.get("body").map(String::as_str),
            Some(&body[..BODY_EXCERPT_BYTES])
        );
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].method, "GET");
        assert_eq!(requests[0].target, "/status?verbose=1");
        assert_eq!(requests[0].header("x-api-key"), Some("k1"));
        Ok(())
    }

    #[tokio::test]
    async fn put_streams_the_body_file_intact() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        // Every byte value, and bigger than any single read or chunk.
        let war: Vec<u8> = (0..700_000_u32).map(|i| (i * 7 % 256) as u8).collect();
        std::fs::write(workspace.path().join("app.war"), &war)?;
        let server = TestHttpServer::start(|_| CannedResponse::new(200, "OK - Deployed"))?;
        let result = run_http(
            &inputs(json!({
                "url": server.url("/manager/text/deploy?path=/app"),
                "method": "PUT",
                "bodyFile": "app.war",
            })),
            &step_paths(workspace.path()),
        )
        .await;
        assert_eq!(result.exit_code, 0, "{:?}", result.error);
        assert_eq!(
            result.outputs.get("body").map(String::as_str),
            Some("OK - Deployed")
        );
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].method, "PUT");
        assert_eq!(requests[0].header("content-length"), Some("700000"));
        assert!(
            requests[0].body == war,
            "the server received different bytes"
        );
        Ok(())
    }

    #[tokio::test]
    async fn unexpected_status_fails_with_the_status_and_body() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        let server = TestHttpServer::start(|_| CannedResponse::new(404, "no app at /missing\n"))?;
        let url = server.url("/missing?token=s3cret");
        let result = run_http(&inputs(json!({"url": url})), &step_paths(workspace.path())).await;
        assert_eq!(result.exit_code, 1);
        let expected = format!(
            "GET {}?… returned 404 Not Found, expected 200-299: no app at /missing",
            server.url("/missing")
        );
        assert_eq!(result.error.as_deref(), Some(expected.as_str()));
        assert!(result.outputs.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn expected_status_accepts_listed_codes() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        let server = TestHttpServer::start(|_| CannedResponse::new(404, ""))?;
        let result = run_http(
            &inputs(json!({"url": server.url("/gone"), "expectedStatus": [404, 410]})),
            &step_paths(workspace.path()),
        )
        .await;
        assert_eq!(result.exit_code, 0, "{:?}", result.error);
        assert_eq!(
            result.outputs.get("status").map(String::as_str),
            Some("404")
        );
        Ok(())
    }

    #[tokio::test]
    async fn server_errors_are_retried_after_a_backoff() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let server = TestHttpServer::start(move |_| {
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                CannedResponse::new(503, "warming up")
            } else {
                CannedResponse::new(200, "ready")
            }
        })?;
        let started = std::time::Instant::now();
        // The task's own entry point, with the real first delay of one second.
        let result = run_http(
            &inputs(json!({"url": server.url("/health"), "retries": 2})),
            &step_paths(workspace.path()),
        )
        .await;
        assert_eq!(result.exit_code, 0, "{:?}", result.error);
        assert_eq!(
            result.outputs.get("body").map(String::as_str),
            Some("ready")
        );
        assert_eq!(server.requests().len(), 2);
        assert!(started.elapsed() >= FIRST_RETRY_DELAY);
        Ok(())
    }

    #[tokio::test]
    async fn server_errors_fail_once_retries_run_out() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        let server = TestHttpServer::start(|_| CannedResponse::new(503, "down"))?;
        let request = parse_http_inputs(
            &inputs(json!({"url": server.url("/"), "retries": 2})),
            workspace.path(),
        )
        .map_err(anyhow::Error::msg)?;
        let result = perform(&request, Duration::from_millis(10)).await;
        assert_eq!(result.exit_code, 1);
        let error = result.error.unwrap_or_default();
        assert!(
            error.ends_with("returned 503 Service Unavailable, expected 200-299: down"),
            "{error}"
        );
        assert_eq!(server.requests().len(), 3);
        Ok(())
    }

    #[tokio::test]
    async fn connection_failures_are_retried_then_reported() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        // Binding then dropping a listener leaves a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let request = parse_http_inputs(
            &inputs(json!({"url": format!("http://127.0.0.1:{port}/x"), "retries": 1})),
            workspace.path(),
        )
        .map_err(anyhow::Error::msg)?;
        let result = perform(&request, Duration::from_millis(10)).await;
        assert_eq!(result.exit_code, 1);
        let error = result.error.unwrap_or_default();
        let prefix = format!("GET http://127.0.0.1:{port}/x failed: ");
        assert!(error.starts_with(&prefix), "{error}");
        assert!(error.contains("onnection refused"), "{error}");
        Ok(())
    }

    #[tokio::test]
    async fn slow_responses_time_out_naming_the_input() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        let server = TestHttpServer::start(|_| {
            std::thread::sleep(Duration::from_millis(1500));
            CannedResponse::new(200, "late")
        })?;
        let result = run_http(
            &inputs(json!({"url": server.url("/slow"), "timeout": 0.2})),
            &step_paths(workspace.path()),
        )
        .await;
        assert_eq!(result.exit_code, 1);
        let expected = format!(
            r#"GET {} timed out after 0.2s (input "timeout")"#,
            server.url("/slow")
        );
        assert_eq!(result.error.as_deref(), Some(expected.as_str()));
        Ok(())
    }

    #[tokio::test]
    async fn download_saves_the_exact_bytes() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        let war: Vec<u8> = (0..1_500_000_u32).map(|i| (i * 13 % 251) as u8).collect();
        let served = war.clone();
        let server = TestHttpServer::start(move |_| {
            CannedResponse::new(200, served.clone())
                .with_header("Content-Type", "application/octet-stream")
        })?;
        let result = run_http(
            &inputs(json!({"url": server.url("/releases/app.war"), "saveAs": "dist/app.war"})),
            &step_paths(workspace.path()),
        )
        .await;
        assert_eq!(result.exit_code, 0, "{:?}", result.error);
        let saved_path = workspace.path().join("dist/app.war");
        assert!(std::fs::read(&saved_path)? == war, "saved bytes differ");
        let saved = saved_path.display().to_string();
        assert_eq!(
            result.outputs,
            BTreeMap::from([
                ("bytes".to_owned(), "1500000".to_owned()),
                ("path".to_owned(), saved),
                ("status".to_owned(), "200".to_owned()),
            ])
        );
        // No partial file is left beside it.
        let names: Vec<_> = std::fs::read_dir(workspace.path().join("dist"))?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names, vec![std::ffi::OsString::from("app.war")]);
        Ok(())
    }

    #[tokio::test]
    async fn download_never_writes_through_planted_symlinks() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let workspace = root.path().join("workspace");
        std::fs::create_dir_all(&workspace)?;
        let victim = root.path().join("victim");
        std::fs::write(&victim, "original")?;
        // An earlier step leaves symlinks where the download is written and where it lands.
        std::os::unix::fs::symlink(&victim, workspace.join(".app.war.part"))?;
        std::os::unix::fs::symlink(root.path().join("missing"), workspace.join("app.war"))?;
        let server = TestHttpServer::start(|_| CannedResponse::new(200, "downloaded"))?;
        let result = run_http(
            &inputs(json!({"url": server.url("/app.war"), "saveAs": "app.war"})),
            &step_paths(&workspace),
        )
        .await;
        assert_eq!(result.exit_code, 0, "{:?}", result.error);
        assert_eq!(std::fs::read_to_string(&victim)?, "original");
        assert!(!root.path().join("missing").exists());
        let saved = workspace.join("app.war");
        assert!(!saved.symlink_metadata()?.file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(saved)?, "downloaded");
        Ok(())
    }

    #[tokio::test]
    async fn failed_download_leaves_no_file() -> anyhow::Result<()> {
        let workspace = tempfile::tempdir()?;
        let server = TestHttpServer::start(|_| CannedResponse::new(500, "boom"))?;
        let result = run_http(
            &inputs(json!({"url": server.url("/app.war"), "saveAs": "app.war"})),
            &step_paths(workspace.path()),
        )
        .await;
        assert_eq!(result.exit_code, 1);
        assert!(!workspace.path().join("app.war").exists());
        Ok(())
    }
}
