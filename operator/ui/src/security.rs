//! What every request passes before a handler: the Host check (against DNS rebinding),
//! the cross-site check of actions, and the security headers of every answer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{ApiError, App};

/// The header every action (POST) must carry. A cross-site form cannot set it, and a
/// cross-site script that does needs a CORS preflight this server never grants.
pub const ACTION_HEADER: &str = "x-maestro-ui";

/// Scripts, styles and connections only from this server; no inline script or style, no
/// frames, no forms posting elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Err(error) = check(&app.allowed_hosts, request.method(), request.headers()) {
        return with_headers(error.into_response());
    }
    with_headers(next.run(request).await)
}

/// Whether a request may go on; if not, why not.
pub fn check(
    allowed_hosts: &[String],
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !allowed_hosts.is_empty() && !allowed_hosts.iter().any(|allowed| allowed == host) {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this server answers only to {}, not to host {host:?}",
                allowed_hosts.join(" or ")
            ),
        ));
    }
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    let refused = |why: String| ApiError::new(StatusCode::FORBIDDEN, why);
    if headers.get(ACTION_HEADER).is_none() {
        return Err(refused(format!(
            "an action needs the {ACTION_HEADER} header (the UI sends it; a cross-site form cannot)"
        )));
    }
    if let Some(site) = headers.get("sec-fetch-site")
        && site != "same-origin"
    {
        return Err(refused(format!(
            "a cross-site action is refused (Sec-Fetch-Site: {})",
            site.to_str().unwrap_or("?")
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let same = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|origin_host| origin_host == host);
        if !same {
            return Err(refused(format!(
                "an action from origin {origin:?} is refused: only this server's own pages may act"
            )));
        }
    }
    Ok(())
}

fn with_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                HeaderValue::from_str(value).expect("a header value"),
            );
        }
        map
    }

    fn local() -> Vec<String> {
        vec!["127.0.0.1:7683".into(), "localhost:7683".into()]
    }

    #[test]
    fn reads_pass_from_the_servers_own_host_only() {
        let ok = headers(&[("host", "127.0.0.1:7683")]);
        assert_eq!(check(&local(), &Method::GET, &ok), Ok(()));
        let rebound = headers(&[("host", "evil.example:7683")]);
        let error = check(&local(), &Method::GET, &rebound).expect_err("a foreign host");
        assert_eq!(error.status, StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(check(&[], &Method::GET, &rebound), Ok(()));
    }

    #[test]
    fn an_action_needs_the_header_and_the_same_origin() {
        let host = ("host", "127.0.0.1:7683");
        let same = headers(&[
            host,
            (ACTION_HEADER, "1"),
            ("origin", "http://127.0.0.1:7683"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(check(&local(), &Method::POST, &same), Ok(()));

        let form = headers(&[host, ("origin", "http://127.0.0.1:7683")]);
        let error = check(&local(), &Method::POST, &form).expect_err("no action header");
        assert!(error.message.contains("x-maestro-ui"), "{error}");

        let cross = headers(&[
            host,
            (ACTION_HEADER, "1"),
            ("origin", "https://evil.example"),
        ]);
        let error = check(&local(), &Method::POST, &cross).expect_err("another origin");
        assert_eq!(error.status, StatusCode::FORBIDDEN);
        assert!(error.message.contains("evil.example"), "{error}");

        let site = headers(&[host, (ACTION_HEADER, "1"), ("sec-fetch-site", "cross-site")]);
        assert!(check(&local(), &Method::POST, &site).is_err());
    }
}
