//! How a request reaches the Kubernetes API. The client is chosen per request: the local
//! mode uses the caller's kubeconfig for every request, the in-cluster mode each request's
//! own bearer token, so the same handlers serve both.

use axum::http::{HeaderMap, StatusCode};
use kube::Client;
use kube::config::AuthInfo;

use crate::ApiError;

/// The header an auth proxy in front (oauth2-proxy with `--pass-access-token`) puts the
/// user's token in.
pub const FORWARDED_TOKEN_HEADER: &str = "x-forwarded-access-token";

/// Whose rights a request uses.
#[derive(Clone)]
pub enum Access {
    /// The caller's kubeconfig, for every request (`kubectl maestro ui` on 127.0.0.1:
    /// only the caller's own browser reaches it).
    Kubeconfig(Client),
    /// Each request's own bearer token (from `X-Forwarded-Access-Token`, else
    /// `Authorization: Bearer`), against the cluster this config names. The config holds
    /// no credentials: the server has no rights of its own, and a request without a
    /// token is refused.
    BearerToken(Box<kube::Config>),
}

impl Access {
    /// Requests carry their user's token; `config` names the cluster (its address and
    /// CA), and any credentials it holds are dropped.
    pub fn bearer_token(mut config: kube::Config) -> Self {
        config.auth_info = AuthInfo::default();
        Self::BearerToken(Box::new(config))
    }

    /// The client to serve a request with these headers.
    pub fn client_for(&self, headers: &HeaderMap) -> Result<Client, ApiError> {
        match self {
            Self::Kubeconfig(client) => Ok(client.clone()),
            Self::BearerToken(config) => {
                let token = request_token(headers).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "no token: this server acts only with your own Kubernetes token \
                         (sign in through the auth proxy in front of it)",
                    )
                })?;
                let mut config = config.as_ref().clone();
                config.auth_info = AuthInfo {
                    token: Some(token.into()),
                    ..AuthInfo::default()
                };
                Client::try_from(config).map_err(|error| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot build a client: {error}"),
                    )
                })
            }
        }
    }
}

/// The request's bearer token, if it carries one.
pub fn request_token(headers: &HeaderMap) -> Option<String> {
    let forwarded = headers
        .get(FORWARDED_TOKEN_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::trim);
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    forwarded
        .or(authorization)
        .filter(|token| !token.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn takes_the_proxys_token_then_the_authorization_header() {
        assert_eq!(
            request_token(&headers(&[("authorization", "Bearer abc")])).as_deref(),
            Some("abc")
        );
        assert_eq!(
            request_token(&headers(&[
                ("authorization", "Bearer abc"),
                (FORWARDED_TOKEN_HEADER, "from-proxy"),
            ]))
            .as_deref(),
            Some("from-proxy")
        );
        assert_eq!(
            request_token(&headers(&[("authorization", "Basic dXNlcg==")])),
            None
        );
        assert_eq!(
            request_token(&headers(&[("authorization", "Bearer ")])),
            None
        );
        assert_eq!(request_token(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn a_request_without_a_token_is_refused_and_the_servers_own_credentials_are_dropped() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut config = kube::Config::new("https://127.0.0.1:9".parse().expect("a URL"));
        config.auth_info.token = Some("the-servers-own".to_string().into());
        let access = Access::bearer_token(config);
        let Access::BearerToken(kept) = &access else {
            panic!("expected the bearer token mode");
        };
        assert!(kept.auth_info.token.is_none());
        let refused = access.client_for(&HeaderMap::new()).err().expect("refused");
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(
            access
                .client_for(&headers(&[("authorization", "Bearer abc")]))
                .is_ok()
        );
    }
}
