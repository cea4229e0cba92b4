//! The router as a browser meets it, before any request reaches Kubernetes: the embedded
//! app is served with its security headers, and actions from elsewhere are refused. The
//! client points at an address nothing listens on, so a request that got through to
//! Kubernetes would fail differently.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use maestro_ui::{Access, Settings, router};
use tower::ServiceExt;

fn app() -> axum::Router {
    let config = kube::Config::new("https://127.0.0.1:9".parse().expect("a URL"));
    let client = kube::Client::try_from(config).expect("a client");
    router(Settings {
        access: Access::Kubeconfig(client),
        default_namespace: "ci".into(),
        allowed_hosts: vec!["127.0.0.1:7683".into()],
        grafana_url: None,
    })
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).expect("a request")
}

#[tokio::test]
async fn serves_the_embedded_app_with_a_content_security_policy() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
    ] {
        let response = app()
            .oneshot(request("GET", path, &[("host", "127.0.0.1:7683")]))
            .await
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        let content_type = headers[header::CONTENT_TYPE].to_str().unwrap_or_default();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let policy = headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap_or_default();
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    }
}

#[tokio::test]
async fn refuses_actions_from_other_sites_and_requests_for_other_hosts() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cancel = "/api/runs/ci/release-1/cancel";
    let json = ("content-type", "application/json");
    let host = ("host", "127.0.0.1:7683");
    let form = app()
        .oneshot(request("POST", cancel, &[host, json]))
        .await
        .expect("an answer");
    assert_eq!(form.status(), StatusCode::FORBIDDEN);
    assert!(form.headers().contains_key(header::CONTENT_SECURITY_POLICY));

    let cross = app()
        .oneshot(request(
            "POST",
            cancel,
            &[
                host,
                json,
                ("x-maestro-ui", "1"),
                ("origin", "https://evil.example"),
            ],
        ))
        .await
        .expect("an answer");
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);

    let rebound = app()
        .oneshot(request(
            "GET",
            "/api/config",
            &[("host", "evil.example:7683")],
        ))
        .await
        .expect("an answer");
    assert_eq!(rebound.status(), StatusCode::MISDIRECTED_REQUEST);

    let config = app()
        .oneshot(request("GET", "/api/config", &[host]))
        .await
        .expect("an answer");
    assert_eq!(config.status(), StatusCode::OK);
}

/// The in-cluster mode with no token: the page learns it must show the login page, the
/// API answers 401, and signing in or out is an action like any other (refused from
/// another site).
#[tokio::test]
async fn without_a_token_the_page_gets_the_login_page_and_login_is_an_action() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let in_cluster = || {
        let config = kube::Config::new("https://127.0.0.1:9".parse().expect("a URL"));
        router(Settings {
            access: Access::bearer_token(config),
            default_namespace: "ci".into(),
            allowed_hosts: Vec::new(),
            grafana_url: Some("https://grafana.example/".into()),
        })
    };
    let host = ("host", "ui.example");
    let config = in_cluster()
        .oneshot(request("GET", "/api/config", &[host]))
        .await
        .expect("an answer");
    assert_eq!(config.status(), StatusCode::OK);
    let body = axum::body::to_bytes(config.into_body(), 1 << 16)
        .await
        .expect("a body");
    let config: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(config["session"], "none");
    assert_eq!(config["login"], true);
    assert_eq!(
        config["dashboardUrl"],
        "https://grafana.example/d/maestro-overview"
    );

    let whoami = in_cluster()
        .oneshot(request("GET", "/api/whoami", &[host]))
        .await
        .expect("an answer");
    assert_eq!(whoami.status(), StatusCode::UNAUTHORIZED);

    for path in ["/api/login", "/api/logout"] {
        let cross = in_cluster()
            .oneshot(request(
                "POST",
                path,
                &[
                    host,
                    ("content-type", "application/json"),
                    ("x-maestro-ui", "1"),
                    ("origin", "https://evil.example"),
                ],
            ))
            .await
            .expect("an answer");
        assert_eq!(cross.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(!cross.headers().contains_key(header::SET_COOKIE), "{path}");
    }

    let logout = in_cluster()
        .oneshot(request(
            "POST",
            "/api/logout",
            &[host, ("x-maestro-ui", "1"), ("origin", "http://ui.example")],
        ))
        .await
        .expect("an answer");
    assert_eq!(logout.status(), StatusCode::OK);
    let cookie = logout.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap_or_default();
    assert!(cookie.starts_with("maestro-token=;"), "{cookie}");
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Max-Age=0"),
        "{cookie}"
    );
}
