//! Maestro's web UI: one HTTP server that serves the web app (built from web/ and embedded
//! in the binary at build time) and a small JSON and server-sent-events API over the
//! Kubernetes API. Every request reaches Kubernetes as its user ([`Access`]), so RBAC
//! decides what each user sees and may do; the server has no rights of its own.

mod access;
mod api;
mod assets;
mod error;
mod login;
mod logs;
mod security;
mod summary;
mod watch;

use std::sync::Arc;

pub use access::{Access, Session};
pub use error::ApiError;

use axum::Router;
use axum::routing::{get, post};

/// What the server needs besides its listener.
pub struct Settings {
    /// How requests reach the Kubernetes API.
    pub access: Access,
    /// The namespace the UI shows first (the kubeconfig context's).
    pub default_namespace: String,
    /// The Host header values a request may carry (`127.0.0.1:PORT`, `localhost:PORT`);
    /// any other is refused, so a web page on a rebound DNS name cannot reach the
    /// server through the browser. Empty: any host.
    pub allowed_hosts: Vec<String>,
    /// Grafana's address (`https://grafana.example`): the page links to Maestro's
    /// dashboard there. None: no link.
    pub grafana_url: Option<String>,
}

/// The uid of the chart's Grafana dashboard (charts/maestro/dashboards/maestro.json).
pub const DASHBOARD_UID: &str = "maestro-overview";

/// The server's shared state.
pub(crate) struct App {
    pub access: Access,
    pub default_namespace: String,
    pub allowed_hosts: Vec<String>,
    /// The link to the dashboard, if Grafana's address was given.
    pub dashboard_url: Option<String>,
}

/// The HTTP routes of the UI.
pub fn router(settings: Settings) -> Router {
    let app = Arc::new(App {
        access: settings.access,
        default_namespace: settings.default_namespace,
        allowed_hosts: settings.allowed_hosts,
        dashboard_url: settings
            .grafana_url
            .map(|url| url.trim().trim_end_matches('/').to_string())
            .filter(|url| !url.is_empty())
            .map(|url| format!("{url}/d/{DASHBOARD_UID}")),
    });
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/config", get(api::config))
        .route("/api/login", post(login::login))
        .route("/api/logout", post(login::logout))
        .route("/api/whoami", get(api::whoami))
        .route("/api/runs/watch", get(watch::runs))
        .route("/api/runs/{namespace}/{name}", get(api::run))
        .route("/api/runs/{namespace}/{name}/watch", get(watch::one_run))
        .route("/api/runs/{namespace}/{name}/log", get(logs::stream))
        .route("/api/runs/{namespace}/{name}/log.txt", get(logs::download))
        .route("/api/runs/{namespace}/{name}/decide", post(api::decide))
        .route("/api/runs/{namespace}/{name}/cancel", post(api::cancel))
        .route("/api/runs/{namespace}/{name}/again", post(api::run_again))
        .route("/api/runs/{namespace}/{name}/rerun", post(api::rerun))
        .route("/api/compositions", get(api::compositions))
        .route(
            "/api/compositions/{namespace}/{name}/run",
            post(api::run_composition),
        )
        .route("/api/agents/watch", get(watch::agents))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            security::guard,
        ))
        .with_state(app)
}

/// Serves the UI on `listener` until the process is interrupted (Ctrl-C).
pub async fn serve(listener: tokio::net::TcpListener, settings: Settings) -> std::io::Result<()> {
    axum::serve(listener, router(settings))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
