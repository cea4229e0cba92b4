//! The git push webhook endpoint: `POST /hooks/github`, `/hooks/gitlab`, `/hooks/gitea`
//! on its own port. Every replica serves it (a delivery is a user-like write, and the
//! deterministic run name makes a second delivery harmless). A delivery is read (at most
//! 1 MiB), parsed, matched against the compositions' git triggers by repository, verified
//! with each such composition's secret, and starts one run per composition whose trigger
//! also matches the ref and paths. Refusals create nothing and say why.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, PostParams},
};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::{
    api::{Composition, CompositionRun, CompositionRunSpec, GitTrigger},
    controller::FIELD_MANAGER,
    labels,
    metrics::Metrics,
    triggers::{
        push::{self, EventKind, MAX_BODY_BYTES, Mismatch, Provider, Push},
        signature,
    },
};

/// How a delivery ended: its HTTP answer and its `result` label in
/// `maestro_webhook_deliveries_total`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Runs were created (a redelivery to some of the compositions is listed too).
    Created {
        runs: Vec<String>,
    },
    /// Every run this delivery would start exists already: a redelivery.
    Duplicate {
        runs: Vec<String>,
    },
    /// Authentic (or not checked: no composition for the repository) but nothing to run.
    NoMatch(String),
    /// GitHub's ping.
    Pong,
    /// Not a push, or a push that deleted its ref.
    Ignored(String),
    Unauthorized(String),
    TooLarge,
    Malformed(String),
    NotFound,
    MethodNotAllowed,
    /// The cluster could not be read or written; the sender should retry.
    Error(String),
}

impl Outcome {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Created { .. } => StatusCode::CREATED,
            Self::Duplicate { .. } | Self::Pong => StatusCode::OK,
            Self::NoMatch(_) | Self::Ignored(_) => StatusCode::ACCEPTED,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Error(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn result(&self) -> &'static str {
        match self {
            Self::Created { .. } => "created",
            Self::Duplicate { .. } => "duplicate",
            Self::NoMatch(_) => "no_match",
            Self::Pong => "ping",
            Self::Ignored(_) => "ignored",
            Self::Unauthorized(_) => "unauthorized",
            Self::TooLarge => "too_large",
            Self::Malformed(_) => "malformed",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Error(_) => "error",
        }
    }

    /// The answer's JSON body: `result`, a `message` for people, and `runs`.
    pub fn body(&self) -> serde_json::Value {
        let (message, runs): (String, &[String]) = match self {
            Self::Created { runs } => (format!("started {} run(s)", runs.len()), runs),
            Self::Duplicate { runs } => (
                "duplicate delivery: its runs exist already; nothing created".into(),
                runs,
            ),
            Self::NoMatch(m) | Self::Ignored(m) | Self::Unauthorized(m) | Self::Malformed(m) => {
                (m.clone(), &[])
            }
            Self::Error(m) => (format!("cannot handle the delivery now: {m}"), &[]),
            Self::Pong => ("pong".into(), &[]),
            Self::TooLarge => (
                format!("payload larger than {MAX_BODY_BYTES} bytes; nothing created"),
                &[],
            ),
            Self::NotFound => (
                "not found: POST to /hooks/github, /hooks/gitlab or /hooks/gitea".into(),
                &[],
            ),
            Self::MethodNotAllowed => ("only POST is accepted".into(), &[]),
        };
        json!({"result": self.result(), "message": message, "runs": runs})
    }
}

/// What the endpoint needs from the cluster.
#[derive(Clone)]
pub struct Webhook {
    client: Client,
    /// Only compositions of this namespace (the operator's watched one), or all.
    namespace: Option<String>,
    metrics: Metrics,
}

/// Serves the endpoint on `addr` until the process ends.
pub async fn serve(
    addr: String,
    client: Client,
    namespace: Option<String>,
    metrics: Metrics,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving git push webhooks on /hooks/github, /hooks/gitlab, /hooks/gitea");
    serve_on(
        listener,
        Webhook {
            client,
            namespace,
            metrics,
        },
    )
    .await
}

/// Serves the endpoint on a bound listener.
async fn serve_on(listener: TcpListener, webhook: Webhook) -> std::io::Result<()> {
    let webhook = Arc::new(webhook);
    loop {
        let (stream, peer) = listener.accept().await?;
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(webhook.answer(request).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "webhook connection");
            }
        });
    }
}

impl Webhook {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        if path == "/healthz" {
            return respond(StatusCode::OK, "text/plain", "ok\n".into());
        }
        let provider = Provider::from_path(&path);
        let outcome = match provider {
            None => Outcome::NotFound,
            Some(_) if request.method() != Method::POST => Outcome::MethodNotAllowed,
            Some(provider) => self.receive(provider, request).await,
        };
        let provider_name = provider.map_or("none", Provider::name);
        self.metrics
            .webhook_deliveries
            .with_label_values(&[provider_name, outcome.result()])
            .inc();
        tracing::info!(provider = provider_name, result = outcome.result(), status = outcome.status().as_u16(), body = %outcome.body(), "webhook delivery");
        respond(
            outcome.status(),
            "application/json",
            format!("{}\n", outcome.body()),
        )
    }

    /// Reads the body within the size limit, then handles the delivery.
    async fn receive(&self, provider: Provider, request: Request<Incoming>) -> Outcome {
        let declared_length = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Refused before reading a byte of it when the sender says it is too large.
        if declared_length.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Outcome::TooLarge;
        }
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Outcome::TooLarge,
            Err(e) => return Outcome::Malformed(format!("cannot read the body: {e}")),
        };
        self.deliver(provider, &parts.headers, &body).await
    }

    async fn deliver(&self, provider: Provider, headers: &HeaderMap, body: &[u8]) -> Outcome {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let Some(event) = header(provider.event_header()) else {
            return Outcome::Malformed(format!("missing {} header", provider.event_header()));
        };
        match provider.event_kind(event) {
            EventKind::Ping => return Outcome::Pong,
            EventKind::Other => {
                return Outcome::Ignored(format!(
                    "event {event:?} ignored: only pushes start runs"
                ));
            }
            EventKind::Push => {}
        }
        let push = match push::parse(body) {
            Ok(push) => push,
            Err(e) => return Outcome::Malformed(e),
        };
        if push.deleted {
            return Outcome::Ignored(format!("{} was deleted; nothing to run", push.git_ref));
        }
        // Without a delivery id, the body's hash stands for it: a redelivery repeats both.
        let delivery = provider
            .delivery_headers()
            .iter()
            .find_map(|h| header(h))
            .map(str::to_string)
            .unwrap_or_else(|| format!("body-{}", &hex::encode(Sha256::digest(body))[..32]));
        let credential = provider.credential_headers().iter().find_map(|h| header(h));
        let compositions = match self.compositions().await {
            Ok(c) => c,
            Err(e) => return Outcome::Error(e.to_string()),
        };
        let candidates: Vec<(&Composition, &GitTrigger)> = compositions
            .iter()
            .flat_map(|c| {
                c.spec
                    .triggers
                    .iter()
                    .flat_map(|t| &t.git)
                    .filter(|t| push::same_repository(t, &push))
                    .map(move |t| (c, t))
            })
            .collect();
        if candidates.is_empty() {
            return Outcome::NoMatch(format!(
                "no matching composition: none has a git trigger for repository {}",
                push.clone_url
            ));
        }
        if credential.is_none() {
            return Outcome::Unauthorized(format!(
                "missing signature: send {}",
                provider.credential_headers().join(" or ")
            ));
        }
        let mut authentic = Vec::new();
        for (composition, trigger) in candidates {
            let secret = self.secret(composition, trigger).await;
            if secret.is_some_and(|s| signature::verify(provider, &s, body, credential)) {
                authentic.push((composition, trigger));
            }
        }
        if authentic.is_empty() {
            return Outcome::Unauthorized(
                "bad signature: it verifies with the secret of no composition triggered by this repository; nothing created".into(),
            );
        }
        let mut why_not = Vec::new();
        let mut chosen: BTreeMap<(String, String), (&Composition, &GitTrigger)> = BTreeMap::new();
        for (composition, trigger) in authentic {
            let key = (
                composition.namespace().unwrap_or_default(),
                composition.name_any(),
            );
            match push::check_ref_and_paths(trigger, &push) {
                Ok(()) => {
                    chosen.entry(key).or_insert((composition, trigger));
                }
                Err(Mismatch::Ref(r)) => {
                    why_not.push(format!("{}: {r} matches no branch or tag pattern", key.1))
                }
                Err(Mismatch::Paths) => why_not.push(format!(
                    "{}: no changed file matches the path patterns",
                    key.1
                )),
            }
        }
        if chosen.is_empty() {
            return Outcome::NoMatch(format!("no matching composition: {}", why_not.join("; ")));
        }
        let (mut created, mut duplicates) = (Vec::new(), Vec::new());
        for (composition, trigger) in chosen.into_values() {
            match self.start_run(composition, trigger, &push, &delivery).await {
                Ok((name, true)) => created.push(name),
                Ok((name, false)) => duplicates.push(name),
                Err(e) => return Outcome::Error(e.to_string()),
            }
        }
        if created.is_empty() {
            Outcome::Duplicate { runs: duplicates }
        } else {
            created.extend(duplicates);
            Outcome::Created { runs: created }
        }
    }

    async fn compositions(&self) -> Result<Vec<Composition>, kube::Error> {
        let api: Api<Composition> = match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        Ok(api.list(&Default::default()).await?.items)
    }

    /// The trigger's secret, or None (logged) when it cannot be read.
    async fn secret(&self, composition: &Composition, trigger: &GitTrigger) -> Option<Vec<u8>> {
        let ns = composition.namespace()?;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let reference = &trigger.secret_ref;
        let found = match api.get(&reference.name).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(composition = %composition.name_any(), secret = %reference.name, error = %e, "cannot read the webhook secret");
                return None;
            }
        };
        let value = found
            .data
            .as_ref()
            .and_then(|d| d.get(&reference.key))
            .map(|v| v.0.clone());
        if value.is_none() {
            tracing::warn!(composition = %composition.name_any(), secret = %reference.name, key = %reference.key, "the webhook secret has no such key");
        }
        value
    }

    /// Creates the delivery's run of `composition`; returns its name and whether it is
    /// new (false: a redelivery found it already there).
    async fn start_run(
        &self,
        composition: &Composition,
        trigger: &GitTrigger,
        push: &Push,
        delivery: &str,
    ) -> Result<(String, bool), kube::Error> {
        let ns = composition.namespace().unwrap_or_default();
        let composition_name = composition.name_any();
        let name = labels::webhook_run_name(&composition_name, delivery);
        let declared = |p: &str| composition.spec.params.iter().any(|d| d.name == p);
        let run = CompositionRun {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(BTreeMap::from([
                    (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
                    (labels::COMPOSITION.to_string(), composition_name.clone()),
                    (labels::TRIGGER.to_string(), "git".to_string()),
                    (labels::DELIVERY.to_string(), label_value(delivery)),
                ])),
                annotations: Some(BTreeMap::from([(
                    labels::DELIVERY.to_string(),
                    delivery.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            spec: CompositionRunSpec {
                composition: composition_name.clone(),
                params: push::run_params(trigger, push, declared),
                cancel: false,
            },
            status: None,
        };
        let api: Api<CompositionRun> = Api::namespaced(self.client.clone(), &ns);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match api.create(&params, &run).await {
            Ok(_) => {
                tracing::info!(run = %name, composition = %composition_name, git_ref = %push.git_ref, commit = %push.commit_sha, %delivery, "push started a run");
                Ok((name, true))
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::info!(run = %name, %delivery, "redelivered push: the run exists already");
                Ok((name, false))
            }
            Err(e) => Err(e),
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

/// `text` as a label value: at most 63 of its letters, digits, `-`, `_` and `.`, starting
/// and ending with a letter or digit.
pub fn label_value(text: &str) -> String {
    let kept: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect();
    kept.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_have_their_documented_codes_and_results() {
        let cases = [
            (Outcome::Unauthorized("x".into()), 401, "unauthorized"),
            (Outcome::TooLarge, 413, "too_large"),
            (Outcome::Malformed("x".into()), 400, "malformed"),
            (Outcome::NoMatch("x".into()), 202, "no_match"),
            (
                Outcome::Created {
                    runs: vec!["a".into()],
                },
                201,
                "created",
            ),
            (
                Outcome::Duplicate {
                    runs: vec!["a".into()],
                },
                200,
                "duplicate",
            ),
        ];
        for (outcome, code, result) in cases {
            assert_eq!(outcome.status().as_u16(), code, "{outcome:?}");
            assert_eq!(outcome.result(), result);
            assert_eq!(outcome.body()["result"], result);
        }
        assert_eq!(
            Outcome::Duplicate {
                runs: vec!["r".into()]
            }
            .body()["runs"][0],
            "r"
        );
    }

    /// The HTTP layer, up to the point where the cluster would be asked: answers, size
    /// limit (declared and streamed), and the metric of each result.
    #[tokio::test]
    async fn answers_before_the_cluster_is_asked() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        crate::tls::install_crypto_provider();
        // A client for an address where nothing listens: these requests never reach it.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let metrics = Metrics::new().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let webhook = Webhook {
            client,
            namespace: None,
            metrics: metrics.clone(),
        };
        tokio::spawn(serve_on(listener, webhook));
        let send = |head: String, body: Vec<u8>| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            // The endpoint may answer and close before the whole body is sent.
            let _ = s.write_all(&body).await;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let post = |path: &str, headers: &str, body: &str| {
            send(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
                    body.len()
                ),
                body.as_bytes().to_vec(),
            )
        };
        let status = |answer: &str| answer.split_whitespace().nth(1).unwrap_or("").to_string();

        let health = send(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
            vec![],
        )
        .await;
        assert_eq!(status(&health), "200");
        assert_eq!(status(&post("/hooks/svn", "", "{}").await), "404");
        let get = send(
            "GET /hooks/github HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
            vec![],
        )
        .await;
        assert_eq!(status(&get), "405");
        let declared = send(
            "POST /hooks/github HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-GitHub-Event: push\r\nContent-Length: 2000000\r\n\r\n".into(),
            vec![],
        )
        .await;
        assert_eq!(status(&declared), "413", "{declared}");
        // Chunked: no length declared, refused once 1 MiB has been read.
        let mut chunked = format!("{:x}\r\n", MAX_BODY_BYTES + 10).into_bytes();
        chunked.extend(vec![b'x'; MAX_BODY_BYTES + 10]);
        chunked.extend(b"\r\n0\r\n\r\n");
        let streamed = send(
            "POST /hooks/gitea HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Gitea-Event: push\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            chunked,
        )
        .await;
        assert_eq!(status(&streamed), "413", "{streamed}");
        let malformed = post("/hooks/github", "X-GitHub-Event: push\r\n", "{\"ref\": ").await;
        assert_eq!(status(&malformed), "400");
        assert!(malformed.contains("malformed push payload"), "{malformed}");
        assert_eq!(
            status(&post("/hooks/github", "", "{}").await),
            "400",
            "no event header"
        );
        assert_eq!(
            status(&post("/hooks/github", "X-GitHub-Event: ping\r\n", "{}").await),
            "200"
        );
        let other = post("/hooks/gitlab", "X-Gitlab-Event: Issue Hook\r\n", "{}").await;
        assert_eq!(status(&other), "202");
        assert!(other.contains("only pushes start runs"), "{other}");
        let deleted = r#"{"ref":"refs/heads/x","after":"0000000000000000000000000000000000000000","deleted":true,"repository":{"clone_url":"https://h/r.git"}}"#;
        let answer = post("/hooks/github", "X-GitHub-Event: push\r\n", deleted).await;
        assert_eq!(status(&answer), "202");
        assert!(answer.contains("was deleted"), "{answer}");

        let text = metrics.render();
        for (provider, result, n) in [
            ("github", "too_large", 1),
            ("gitea", "too_large", 1),
            ("github", "malformed", 2),
            ("github", "ping", 1),
            ("gitlab", "ignored", 1),
            ("github", "ignored", 1),
            ("none", "not_found", 1),
            ("github", "method_not_allowed", 1),
        ] {
            let line = format!(
                "maestro_webhook_deliveries_total{{provider=\"{provider}\",result=\"{result}\"}} {n}"
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }

    #[test]
    fn delivery_ids_become_valid_label_values() {
        assert_eq!(
            label_value("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            "72d3162e-cc78-11e3-81ab-4c9367dc0958"
        );
        assert_eq!(label_value("-a b/c_"), "abc");
        assert!(label_value(&"x".repeat(100)).len() <= 63);
    }
}
