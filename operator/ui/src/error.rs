//! Errors the API answers with: an HTTP status and one line a user can act on, the
//! Kubernetes API's own message when it sent one (a refusal by RBAC or an admission
//! policy says exactly what was refused and why).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A Kubernetes API error while `doing` something, with the API's status code.
    pub fn kube(error: kube::Error, doing: &str) -> Self {
        match error {
            kube::Error::Api(status) => {
                let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::BAD_GATEWAY);
                let message = if status.message.is_empty() {
                    status.reason.clone()
                } else {
                    status.message.clone()
                };
                Self::new(code, format!("{doing}: {message}"))
            }
            other => Self::new(StatusCode::BAD_GATEWAY, format!("{doing}: {other}")),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    #[test]
    fn keeps_the_apis_code_and_message() {
        let refusal = kube::Error::Api(
            Status::failure(
                r#"approvals.maestro.dev is forbidden: User "mallory" cannot create resource "approvals""#,
                "Forbidden",
            )
            .with_code(403)
            .boxed(),
        );
        let error = ApiError::kube(refusal, "creating the approval");
        assert_eq!(error.status, StatusCode::FORBIDDEN);
        assert_eq!(
            error.message,
            r#"creating the approval: approvals.maestro.dev is forbidden: User "mallory" cannot create resource "approvals""#
        );
    }
}
