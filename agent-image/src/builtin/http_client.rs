//! What the `http` and `notify` built-ins share: the HTTP client, parsing URL and header
//! inputs, and talking about URLs, errors and bodies without leaking secrets into the pod log
//! or the step's result.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::Inputs;
use super::address_guard::{AddressGuard, GuardedResolver};
use super::inputs::{optional_string_map, required_string};

/// How much of a response body goes into an output or an error message.
pub const BODY_EXCERPT_BYTES: usize = 1024;

/// The client for one task. `timeout` covers each attempt, from connecting to the end of the
/// response body. Proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` as usual (through a
/// proxy, the guard sees the proxy's address: the proxy is the pod's configuration, not the
/// step's). Every name it connects to, and every redirect, passes `guard`.
pub fn build_client(timeout: Duration, guard: &AddressGuard) -> Result<reqwest::Client, String> {
    let guard = Arc::new(guard.clone());
    reqwest::Client::builder()
        .user_agent(concat!("maestro-agent/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .redirect(guard.redirect_policy())
        .dns_resolver(GuardedResolver { guard })
        .build()
        .map_err(|error| format!("cannot set up the HTTP client: {}", describe_error(error)))
}

/// The URL input `name`, which must be an http or https URL whose host `guard` does not refuse
/// by its spelling (names are checked again, resolved, when the request connects).
pub fn guarded_url_input(inputs: &Inputs, name: &str, guard: &AddressGuard) -> Result<Url, String> {
    let url = http_url_input(inputs, name)?;
    match guard.refusal_for_url(&url) {
        Some(refusal) => Err(format!("input {name:?}: {refusal}")),
        None => Ok(url),
    }
}

/// The URL input `name`, which must be an absolute http or https URL.
pub fn http_url_input(inputs: &Inputs, name: &str) -> Result<Url, String> {
    let text = required_string(inputs, name)?;
    // The value is not repeated in the message: a URL may carry a token.
    let invalid = || format!("input {name:?} must be an http or https URL");
    let url = Url::parse(text.trim()).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid());
    }
    Ok(url)
}

/// The headers input `name`: an object of strings, each a valid header.
pub fn headers_input(inputs: &Inputs, name: &str) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (key, value) in optional_string_map(inputs, name)? {
        let header_name = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| format!("input {name:?}: {key:?} is not a valid header name"))?;
        let mut header_value = HeaderValue::from_str(&value).map_err(|_| {
            format!("input {name:?}: the value of {key:?} is not a valid header value")
        })?;
        // Keeps tokens out of any debug output of the request.
        header_value.set_sensitive(true);
        headers.append(header_name, header_value);
    }
    Ok(headers)
}

/// `url` as it may be shown in the log and in errors: without user name and password, and
/// with the query string elided, since query strings often carry tokens (presigned URLs).
pub fn shown_url(url: &Url) -> String {
    let mut shown = url.clone();
    // Both only fail for URLs that cannot have credentials, which then have none to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_fragment(None);
    if shown.query().is_some() {
        shown.set_query(None);
        format!("{shown}?…")
    } else {
        shown.to_string()
    }
}

/// An error's message with its causes, e.g. `error sending request: client error (Connect):
/// tcp connect error: Connection refused (os error 111)`, without the URL (callers show it
/// through [`shown_url`]).
pub fn describe_error(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some layers repeat their cause's message in their own.
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Reads at most `limit` bytes of the response body, leaving the rest unread.
pub async fn read_body_prefix(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut prefix = Vec::new();
    while prefix.len() < limit {
        let Some(chunk) = response.chunk().await? else {
            break;
        };
        let wanted = limit - prefix.len();
        prefix.extend_from_slice(&chunk[..chunk.len().min(wanted)]);
    }
    Ok(prefix)
}

/// The first bytes of a body as text: invalid UTF-8 replaced, a character cut at the end
/// dropped, and shortened until its JSON form stays within twice the excerpt size, so that
/// escaped quotes or control characters cannot push the result over its 4096-byte limit.
pub fn body_excerpt(prefix: &[u8]) -> String {
    let prefix = &prefix[..prefix.len().min(BODY_EXCERPT_BYTES)];
    let complete = match std::str::from_utf8(prefix) {
        Ok(_) => prefix,
        // error_len() is None when the bytes end in the middle of a character.
        Err(error) if error.error_len().is_none() => &prefix[..error.valid_up_to()],
        Err(_) => prefix,
    };
    let mut excerpt = String::from_utf8_lossy(complete).into_owned();
    while json_len(&excerpt) > 2 * BODY_EXCERPT_BYTES {
        excerpt.pop();
    }
    excerpt
}

fn json_len(text: &str) -> usize {
    serde_json::to_string(text).map_or(usize::MAX, |json| json.len())
}

/// A byte count for people: `512 bytes`, `3.4 kB`, `48.2 MB`, `1.3 GB` (decimal units).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, f64); 3] = [("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    // Exact up to 2^53 bytes, far past any download; and it is only for display.
    let value = bytes as f64;
    UNITS.iter().find(|(_, size)| value >= *size).map_or_else(
        || format!("{bytes} bytes"),
        |(unit, size)| format!("{:.1} {unit}", value / size),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_http_server::{CannedResponse, TestHttpServer};
    use crate::builtin::test_support::inputs;
    use serde_json::json;

    /// The test server listens on loopback, which the guard allows anyway.
    fn unguarded() -> AddressGuard {
        AddressGuard {
            enforced: false,
            api_service: None,
        }
    }

    #[test]
    fn url_inputs_must_be_http_urls() {
        for bad in [
            json!("ftp://x/y"),
            json!("not a url"),
            json!("/relative"),
            json!(3),
        ] {
            let error = http_url_input(&inputs(json!({"url": bad})), "url")
                .err()
                .unwrap_or_default();
            assert!(
                error == r#"input "url" must be an http or https URL"#
                    || error == r#"input "url" must be a string"#,
                "{error}"
            );
        }
        assert_eq!(
            http_url_input(&inputs(json!({})), "url").err(),
            Some(r#"input "url" is required"#.to_owned())
        );
        let url = http_url_input(&inputs(json!({"url": " https://example.com/a "})), "url");
        assert_eq!(
            url.map(String::from),
            Ok("https://example.com/a".to_owned())
        );
    }

    #[test]
    fn header_inputs_are_validated() {
        let good = headers_input(&inputs(json!({"h": {"X-Token": "abc"}})), "h");
        assert_eq!(
            good.ok()
                .and_then(|headers| headers.get("x-token").cloned())
                .map(|value| value.as_bytes().to_vec()),
            Some(b"abc".to_vec())
        );
        assert_eq!(
            headers_input(&inputs(json!({"h": {"Bad Name": "x"}})), "h").err(),
            Some(r#"input "h": "Bad Name" is not a valid header name"#.to_owned())
        );
        assert_eq!(
            headers_input(&inputs(json!({"h": {"X": "a\nb"}})), "h").err(),
            Some(r#"input "h": the value of "X" is not a valid header value"#.to_owned())
        );
    }

    #[test]
    fn shown_urls_hide_credentials_and_queries() -> anyhow::Result<()> {
        let url = Url::parse("https://user:secret@example.com:8443/deploy?token=abc#top")?;
        assert_eq!(shown_url(&url), "https://example.com:8443/deploy?…");
        let url = Url::parse("http://example.com/app.war")?;
        assert_eq!(shown_url(&url), "http://example.com/app.war");
        Ok(())
    }

    #[test]
    fn excerpts_are_bounded_and_valid_text() {
        assert_eq!(body_excerpt(b"hello"), "hello");
        let long = "é".repeat(BODY_EXCERPT_BYTES);
        let excerpt = body_excerpt(long.as_bytes());
        // 1024 bytes is 512 two-byte characters exactly.
        assert_eq!(excerpt.chars().count(), BODY_EXCERPT_BYTES / 2);
        let cut = format!("a{}", "é".repeat(BODY_EXCERPT_BYTES));
        assert!(!body_excerpt(cut.as_bytes()).contains('\u{fffd}'));
        assert_eq!(body_excerpt(b"a\xffb"), "a\u{fffd}b");
        let controls = vec![1_u8; BODY_EXCERPT_BYTES];
        assert!(json_len(&body_excerpt(&controls)) <= 2 * BODY_EXCERPT_BYTES);
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(999), "999 bytes");
        assert_eq!(human_size(3_400), "3.4 kB");
        assert_eq!(human_size(48_200_000), "48.2 MB");
        assert_eq!(human_size(1_300_000_000), "1.3 GB");
    }

    #[tokio::test]
    async fn tls_client_constructs_and_attempts_a_handshake() -> anyhow::Result<()> {
        let client =
            build_client(Duration::from_secs(5), &unguarded()).map_err(anyhow::Error::msg)?;
        // A plain-HTTP server answers the ClientHello with garbage: the handshake is tried and
        // fails cleanly, which shows the TLS stack (provider, roots) is wired up.
        let server = TestHttpServer::start(|_| CannedResponse::new(200, "plain"))?;
        let https_url = server.url("/").replacen("http://", "https://", 1);
        let error = client
            .get(&https_url)
            .send()
            .await
            .err()
            .map(describe_error)
            .unwrap_or_default();
        assert!(error.starts_with("error sending request"), "{error}");
        Ok(())
    }

    #[tokio::test]
    async fn connect_errors_describe_their_cause_without_the_url() -> anyhow::Result<()> {
        let client =
            build_client(Duration::from_secs(5), &unguarded()).map_err(anyhow::Error::msg)?;
        // Binding then dropping a listener leaves a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let error = client
            .get(format!("http://127.0.0.1:{port}/secret-path"))
            .send()
            .await
            .err();
        assert!(error.as_ref().is_some_and(reqwest::Error::is_connect));
        let message = error.map(describe_error).unwrap_or_default();
        assert!(message.contains("onnection refused"), "{message}");
        assert!(!message.contains("secret-path"), "{message}");
        Ok(())
    }
}
