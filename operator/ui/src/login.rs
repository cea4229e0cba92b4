//! The token login page's two actions, for a server with no auth proxy in front: sign in
//! with a Kubernetes bearer token, which the server checks with the API server and keeps
//! only in an HttpOnly, SameSite=Strict cookie (the page's scripts never see it, and no
//! answer carries it), and sign out, which clears that cookie. Both are POSTs, so they
//! pass the same cross-site checks as every action.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::access::TOKEN_COOKIE;
use crate::api::ask_who;
use crate::{ApiError, App};

#[derive(Deserialize)]
pub struct LoginRequest {
    pub token: String,
}

pub async fn login(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(request): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    if !app.access.has_login() {
        return Err(ApiError::bad_request(
            "this server uses your kubeconfig: there is nothing to sign in to",
        ));
    }
    let token = request.token.trim();
    check_token_shape(token)?;
    let caller = ask_who(&app.access.client_with(token)?)
        .await
        .map_err(|error| {
            if error.status == StatusCode::UNAUTHORIZED {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "the API server does not accept this token (expired, revoked or mistyped)",
                )
            } else {
                error
            }
        })?;
    let cookie = format!(
        "{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
        secure_attribute(&headers)
    );
    let mut response = Json(json!({
        "username": caller.username,
        "message": format!("signed in as {}", caller.username),
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, header_value(cookie)?);
    Ok(response)
}

pub async fn logout(headers: HeaderMap) -> Result<Response, ApiError> {
    let cookie = format!(
        "{TOKEN_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure_attribute(&headers)
    );
    let mut response = Json(json!({ "message": "signed out" })).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, header_value(cookie)?);
    Ok(response)
}

/// `; Secure` when the browser reached the server over https: the server itself speaks
/// plain HTTP, so that is what the proxy in front says (`X-Forwarded-Proto`).
fn secure_attribute(headers: &HeaderMap) -> &'static str {
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| {
            proto
                .split(',')
                .next()
                .is_some_and(|first| first.trim().eq_ignore_ascii_case("https"))
        });
    if forwarded_https { "; Secure" } else { "" }
}

/// A bearer token is one run of visible characters that may stand in a cookie (a JWT's
/// base64url and dots); anything else is a paste gone wrong.
fn check_token_shape(token: &str) -> Result<(), ApiError> {
    if token.is_empty() {
        return Err(ApiError::bad_request("paste a Kubernetes bearer token"));
    }
    let fits = token.len() <= 3500
        && token
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && !matches!(byte, b';' | b',' | b'"' | b'\\'));
    if fits {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "that is not a bearer token: one line of letters, digits and ._-~+/= (at most 3500)",
        ))
    }
}

fn header_value(cookie: String) -> Result<HeaderValue, ApiError> {
    HeaderValue::try_from(cookie).map_err(|_| ApiError::bad_request("the token cannot be kept"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_secure_only_when_the_browser_used_https() {
        let mut headers = HeaderMap::new();
        assert_eq!(secure_attribute(&headers), "");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(secure_attribute(&headers), "; Secure");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        assert_eq!(secure_attribute(&headers), "");
    }

    #[test]
    fn only_a_token_shaped_paste_is_kept() {
        assert!(check_token_shape("eyJhbGciOi.eyJpc3Mi.sig-_").is_ok());
        assert!(check_token_shape("").is_err());
        assert!(check_token_shape("two words").is_err());
        assert!(check_token_shape("a;Path=/evil").is_err());
    }
}
