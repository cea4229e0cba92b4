//! How a request reaches the Kubernetes API. The client is chosen per request: the local
//! mode uses the caller's kubeconfig for every request, the in-cluster mode each request's
//! own bearer token (or, in the read-only mode, a viewer's for a request without one), so
//! the same handlers serve both.

use axum::http::{HeaderMap, StatusCode};
use kube::Client;
use kube::config::AuthInfo;

use crate::ApiError;

/// The header an auth proxy in front (oauth2-proxy with `--pass-access-token`) puts the
/// user's token in.
pub const FORWARDED_TOKEN_HEADER: &str = "x-forwarded-access-token";

/// The cookie the token login page keeps the user's token in (HttpOnly: the page's
/// scripts never see it).
pub const TOKEN_COOKIE: &str = "maestro-token";

/// Whose rights a request uses.
#[derive(Clone)]
pub enum Access {
    /// The caller's kubeconfig, for every request (`kubectl maestro ui` on 127.0.0.1:
    /// only the caller's own browser reaches it).
    Kubeconfig(Client),
    /// Each request's own bearer token (from `X-Forwarded-Access-Token`, else
    /// `Authorization: Bearer`, else the login page's cookie), against the cluster this
    /// config names. The config holds no credentials: the server has no rights of its
    /// own, and a request without a token is refused, or served read-only as `viewer`.
    BearerToken {
        cluster: Box<kube::Config>,
        viewer: Option<Viewer>,
    },
}

/// The read-only mode: requests without a user token are served with this
/// ServiceAccount's token (its Role reads one namespace), and may not act.
#[derive(Clone)]
pub struct Viewer {
    pub client: Client,
    pub namespace: String,
}

/// Who a request is served as, as the page is told (`/api/config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Session {
    /// The caller's kubeconfig (`kubectl maestro ui`).
    Kubeconfig,
    /// A token from the auth proxy in front (or an `Authorization` header).
    Header,
    /// The token login page's cookie: the page offers to sign out.
    Cookie,
    /// No user token, served read-only by the viewer.
    Viewer,
    /// No token at all: the page shows the token login page.
    None,
}

impl Access {
    /// Requests carry their user's token; `config` names the cluster (its address and
    /// CA), and any credentials it holds are dropped.
    pub fn bearer_token(mut config: kube::Config) -> Self {
        config.auth_info = AuthInfo::default();
        Self::BearerToken {
            cluster: Box::new(config),
            viewer: None,
        }
    }

    /// [`Access::bearer_token`], and requests without a user token are served in
    /// `namespace` with the token in `token_file` (re-read as it rotates): the viewer
    /// ServiceAccount's, whose Role only reads.
    pub fn bearer_token_or_viewer(
        config: kube::Config,
        namespace: String,
        token_file: String,
    ) -> Result<Self, kube::Error> {
        let mut viewer_config = config.clone();
        viewer_config.auth_info = AuthInfo {
            token_file: Some(token_file),
            ..AuthInfo::default()
        };
        viewer_config.default_namespace = namespace.clone();
        let client = Client::try_from(viewer_config)?;
        let mut cluster = config;
        cluster.auth_info = AuthInfo::default();
        Ok(Self::BearerToken {
            cluster: Box::new(cluster),
            viewer: Some(Viewer { client, namespace }),
        })
    }

    /// Who a request with these headers is served as.
    pub fn session(&self, headers: &HeaderMap) -> Session {
        match self {
            Self::Kubeconfig(_) => Session::Kubeconfig,
            Self::BearerToken { viewer, .. } => match user_token(headers) {
                Some((_, TokenSource::Header)) => Session::Header,
                Some((_, TokenSource::Cookie)) => Session::Cookie,
                None if viewer.is_some() => Session::Viewer,
                None => Session::None,
            },
        }
    }

    /// Whether the token login page can sign a user in here.
    pub fn has_login(&self) -> bool {
        matches!(self, Self::BearerToken { .. })
    }

    /// The client to read with for a request with these headers.
    pub fn client_for(&self, headers: &HeaderMap) -> Result<Client, ApiError> {
        match self {
            Self::Kubeconfig(client) => Ok(client.clone()),
            Self::BearerToken { cluster, viewer } => match user_token(headers) {
                Some((token, _)) => client_with_token(cluster, token),
                None => match viewer {
                    Some(viewer) => Ok(viewer.client.clone()),
                    None => Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "no token: this server acts only with your own Kubernetes token \
                         (sign in on its login page, or through the auth proxy in front of it)",
                    )),
                },
            },
        }
    }

    /// The client to act with (approve, cancel, run, rerun): the user's own; the
    /// read-only viewer never acts.
    pub fn client_to_act(&self, headers: &HeaderMap) -> Result<Client, ApiError> {
        if let Self::BearerToken {
            viewer: Some(viewer),
            ..
        } = self
            && user_token(headers).is_none()
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "read-only: this UI shows namespace {} to visitors without signing in, \
                     and they cannot approve, cancel or start runs; sign in with your own \
                     Kubernetes token to act",
                    viewer.namespace
                ),
            ));
        }
        self.client_for(headers)
    }

    /// A client with `token`, for checking a token before the login page keeps it.
    pub fn client_with(&self, token: &str) -> Result<Client, ApiError> {
        match self {
            Self::Kubeconfig(client) => Ok(client.clone()),
            Self::BearerToken { cluster, .. } => client_with_token(cluster, token.to_string()),
        }
    }
}

fn client_with_token(cluster: &kube::Config, token: String) -> Result<Client, ApiError> {
    let mut config = cluster.clone();
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenSource {
    Header,
    Cookie,
}

/// The request's user token and where it came from: a header (the proxy's wins over
/// `Authorization`) wins over the login page's cookie.
fn user_token(headers: &HeaderMap) -> Option<(String, TokenSource)> {
    request_token(headers)
        .map(|token| (token, TokenSource::Header))
        .or_else(|| cookie_token(headers).map(|token| (token, TokenSource::Cookie)))
}

/// The request's bearer token from its headers, if it carries one.
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

/// The login page's token, from the request's cookies.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, token)| token.trim().to_string())
        .filter(|token| !token.is_empty())
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
        let Access::BearerToken { cluster: kept, .. } = &access else {
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

    #[test]
    fn the_login_cookie_is_a_token_too_and_a_header_wins_over_it() {
        let cookie = headers(&[("cookie", "theme=dark; maestro-token=from-cookie")]);
        assert_eq!(cookie_token(&cookie).as_deref(), Some("from-cookie"));
        assert_eq!(
            user_token(&cookie),
            Some(("from-cookie".to_string(), TokenSource::Cookie))
        );
        let both = headers(&[
            ("cookie", "maestro-token=from-cookie"),
            (FORWARDED_TOKEN_HEADER, "from-proxy"),
        ]);
        assert_eq!(
            user_token(&both),
            Some(("from-proxy".to_string(), TokenSource::Header))
        );
        assert_eq!(
            cookie_token(&headers(&[("cookie", "maestro-token=")])),
            None
        );
    }

    #[tokio::test]
    async fn the_viewer_reads_for_visitors_without_a_token_but_never_acts() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = kube::Config::new("https://127.0.0.1:9".parse().expect("a URL"));
        let token_file =
            std::env::temp_dir().join(format!("maestro-ui-viewer-{}", std::process::id()));
        std::fs::write(&token_file, "the-viewers").expect("a token file");
        let access = Access::bearer_token_or_viewer(
            config,
            "public".into(),
            token_file.to_string_lossy().into_owned(),
        )
        .expect("a viewer");
        let _ = std::fs::remove_file(&token_file);
        let visitor = HeaderMap::new();
        assert_eq!(access.session(&visitor), Session::Viewer);
        assert!(access.client_for(&visitor).is_ok());
        let refused = access.client_to_act(&visitor).err().expect("refused");
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(refused.message.contains("read-only"), "{refused}");
        let signed_in = headers(&[("cookie", "maestro-token=abc")]);
        assert_eq!(access.session(&signed_in), Session::Cookie);
        assert!(access.client_to_act(&signed_in).is_ok());
    }
}
