//! The git push webhook endpoint: `POST /hooks/github`, `/hooks/gitlab`, `/hooks/gitea`
//! on its own port. Every replica serves it (a delivery is a user-like write, and the
//! deterministic run name makes a second delivery harmless). A delivery is read (at most
//! 1 MiB), parsed, matched against the compositions' git triggers by repository (read from
//! the operator's cache: an unauthenticated request makes no API call but the Secret reads
//! that verify it), verified with each such composition's secret, and starts one run per
//! composition whose trigger also matches the ref and paths. Refusals create nothing and
//! say why, except that an unsigned or unverified delivery gets the same answer whatever
//! its repository, so the endpoint does not tell which repositories have triggers.

use std::{collections::BTreeMap, sync::Arc};

use http_body_util::{BodyExt, Limited};
use hyper::{
    Method, Request, StatusCode,
    body::Incoming,
    header::{CONTENT_LENGTH, HeaderMap},
};
use kube::{Api, Client, ResourceExt, core::DeserializeGuard, runtime::reflector::Store};
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::Semaphore};

mod outcome;

pub use outcome::{Outcome, label_value};

use crate::{
    http::{self, HttpResponse, respond},
    k8s::{self, Created, RunBuilder},
    metrics::Metrics,
};
use maestro_api::labels;
use maestro_api::{Composition, CompositionRun, GitTrigger};
use maestro_engine::triggers::{
    push::{self, EventKind, MAX_BODY_BYTES, Mismatch, Provider, Push},
    signature,
};

/// How long a delivery may take to send its body (at most 1 MiB).
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// At most this many delivery bodies are read or held at once (32 MiB at most, with 1 MiB
/// each), well under the chart's memory limit. The connection cap alone would allow 256
/// bodies (256 MiB, the whole limit) from senders that trickle them.
const MAX_BODIES_IN_MEMORY: usize = 32;

/// How long a delivery waits for the compositions cache while the operator starts.
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The answer to every delivery that is unsigned, or whose signature verifies with the
/// secret of no composition of its repository: the same whether or not some composition
/// has a trigger for it.
pub const UNVERIFIED: &str = "bad signature: it verifies with the secret of no composition triggered by this repository; nothing created";

/// The operator's cache of Compositions (the watched namespace's, or all).
pub type CompositionCache = Store<DeserializeGuard<Composition>>;

/// What the endpoint needs from the cluster.
#[derive(Clone)]
pub struct Webhook {
    client: Client,
    compositions: CompositionCache,
    metrics: Metrics,
    /// One permit per body in memory: a delivery holds one from before its body is read
    /// until it is answered.
    bodies: Arc<Semaphore>,
    /// How long a delivery waits for a permit before it is told to retry.
    body_wait: std::time::Duration,
}

impl Webhook {
    fn new(client: Client, compositions: CompositionCache, metrics: Metrics) -> Self {
        Self {
            client,
            compositions,
            metrics,
            bodies: Arc::new(Semaphore::new(MAX_BODIES_IN_MEMORY)),
            body_wait: BODY_READ_TIMEOUT,
        }
    }
}

/// Serves the endpoint on `addr` until the process ends, with the compositions cache the
/// controllers fill (sent once they have made it).
pub async fn serve(
    addr: String,
    client: Client,
    compositions: tokio::sync::oneshot::Receiver<CompositionCache>,
    metrics: Metrics,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(&addr).await?;
    for provider in [Provider::GitHub, Provider::GitLab, Provider::Gitea] {
        for result in Outcome::PROVIDER_RESULTS {
            let _ = metrics
                .webhook_deliveries
                .with_label_values(&[provider.name(), result]);
        }
    }
    let compositions = compositions
        .await
        .map_err(|_| std::io::Error::other("the controllers never made the compositions cache"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving git push webhooks on /hooks/github, /hooks/gitlab, /hooks/gitea");
    serve_on(listener, Webhook::new(client, compositions, metrics)).await
}

/// Serves the endpoint on a bound listener.
async fn serve_on(listener: TcpListener, webhook: Webhook) -> std::io::Result<()> {
    let webhook = Arc::new(webhook);
    http::serve(listener, "webhook", move |request| {
        let webhook = webhook.clone();
        async move { webhook.answer(request).await }
    })
    .await
}

impl Webhook {
    async fn answer(&self, request: Request<Incoming>) -> HttpResponse {
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
        // Senders that trickle their bodies fill these permits, not the memory; the
        // others wait for one, or are told to retry (a 503, which senders retry).
        let Ok(Ok(_body_permit)) =
            tokio::time::timeout(self.body_wait, self.bodies.clone().acquire_owned()).await
        else {
            return Outcome::Error(
                "too many deliveries are being read at once; retry later".into(),
            );
        };
        let (parts, body) = request.into_parts();
        // A sender that trickles its body does not hold the connection for ever.
        let reading = tokio::time::timeout(
            BODY_READ_TIMEOUT,
            Limited::new(body, MAX_BODY_BYTES).collect(),
        );
        let body = match reading.await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Outcome::TooLarge,
            Ok(Err(e)) => return Outcome::Malformed(format!("cannot read the body: {e}")),
            Err(_) => {
                return Outcome::Malformed(format!(
                    "the body was not sent within {}s",
                    BODY_READ_TIMEOUT.as_secs()
                ));
            }
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
        // Unsigned: refused before anything is looked up.
        let Some(credential) = provider.credential_headers().iter().find_map(|h| header(h)) else {
            return Outcome::Unauthorized(format!(
                "missing signature: send {}",
                provider.credential_headers().join(" or ")
            ));
        };
        let push = match push::parse(body) {
            Ok(push) => push,
            Err(e) => return Outcome::Malformed(e),
        };
        // The signed body names the delivery: a redelivery, or a captured body replayed
        // under a new delivery id or to another provider's endpoint, makes the same run
        // name, so it starts nothing while that run is kept (at least a day).
        let body_hash = hex::encode(Sha256::digest(body));
        let delivery = provider
            .delivery_headers()
            .iter()
            .find_map(|h| header(h))
            .map(str::to_string);
        let compositions = match self.cached_compositions().await {
            Ok(c) => c,
            Err(e) => return Outcome::Error(e),
        };
        let candidates: Vec<(&Composition, &GitTrigger)> = compositions
            .iter()
            .filter_map(|c| c.0.as_ref().ok())
            .flat_map(|c| {
                c.spec
                    .triggers
                    .iter()
                    .flat_map(|t| &t.git)
                    .filter(|t| push::same_repository(t, &push))
                    .map(move |t| (c, t))
            })
            .collect();
        let mut authentic = Vec::new();
        for (composition, trigger) in candidates {
            let secret = self.secret(composition, trigger).await;
            if secret.is_some_and(|s| signature::verify(provider, &s, body, Some(credential))) {
                authentic.push((composition, trigger));
            }
        }
        if authentic.is_empty() {
            return Outcome::Unauthorized(UNVERIFIED.into());
        }
        if push.deleted {
            return Outcome::Ignored(format!("{} was deleted; nothing to run", push.git_ref));
        }
        let chosen = match choose(authentic, &push) {
            Ok(chosen) => chosen,
            Err(why_not) => {
                return Outcome::NoMatch(format!("no matching composition: {why_not}"));
            }
        };
        let (mut created, mut duplicates) = (Vec::new(), Vec::new());
        for (composition, trigger) in chosen {
            match self
                .start_run(composition, trigger, &push, &body_hash, delivery.as_deref())
                .await
            {
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

    /// Every cached composition that deserializes: one malformed object must not make
    /// every delivery fail (the Composition controller marks it). Waits a little for the
    /// cache while the operator starts; the sender retries an error answer.
    async fn cached_compositions(&self) -> Result<Vec<Arc<DeserializeGuard<Composition>>>, String> {
        if tokio::time::timeout(CACHE_WAIT, crate::controller::filled(&self.compositions))
            .await
            .is_err()
        {
            return Err(
                "the operator is starting and has not read the compositions yet; retry".into(),
            );
        }
        Ok(self.compositions.state())
    }

    /// The trigger's secret, or None (logged) when it cannot be read. The Composition
    /// controller reports the same problems in the composition's Ready condition.
    async fn secret(&self, composition: &Composition, trigger: &GitTrigger) -> Option<Vec<u8>> {
        let ns = composition.namespace()?;
        let reference = &trigger.secret_ref;
        match k8s::secret_key(&self.client, &ns, &reference.name, &reference.key).await {
            Ok(secret) => Some(secret),
            Err(why) => {
                tracing::warn!(composition = %composition.name_any(), %why, "cannot read the webhook secret");
                None
            }
        }
    }

    /// Creates the delivery's run of `composition`; returns its name and whether it is
    /// new (false: a redelivery found it already there).
    async fn start_run(
        &self,
        composition: &Composition,
        trigger: &GitTrigger,
        push: &Push,
        body_hash: &str,
        delivery: Option<&str>,
    ) -> Result<(String, bool), kube::Error> {
        let ns = composition.namespace().unwrap_or_default();
        let composition_name = composition.name_any();
        let name = labels::webhook_run_name(&composition_name, body_hash);
        let declared = |p: &str| composition.spec.params.iter().any(|d| d.name == p);
        // Without a delivery id the body's hash stands for it in the label.
        let delivery =
            delivery.map_or_else(|| format!("body-{}", &body_hash[..32]), str::to_string);
        // The builder's priority 0: a pushed commit queues like a manual run.
        let run = RunBuilder::new(&name, &ns, &composition_name)
            .label(labels::COMPOSITION, &composition_name)
            .label(labels::TRIGGER, "git")
            .label(labels::DELIVERY, &label_value(&delivery))
            .annotation(labels::DELIVERY, &delivery)
            .annotation(labels::BODY_SHA256, body_hash)
            .params(push::run_params(trigger, push, declared))
            .build();
        let api: Api<CompositionRun> = Api::namespaced(self.client.clone(), &ns);
        match k8s::create_or_existing(&api, &run).await? {
            Created::Created => {
                tracing::info!(run = %name, composition = %composition_name, git_ref = %push.git_ref, commit = %push.commit_sha, %delivery, "push started a run");
                Ok((name, true))
            }
            Created::Existed => {
                tracing::info!(run = %name, %delivery, "redelivered push: the run exists already");
                Ok((name, false))
            }
        }
    }
}

/// Of the authentic (composition, trigger) pairs, those whose trigger matches the push's
/// ref and paths, one per composition; or why none does.
fn choose<'a>(
    authentic: Vec<(&'a Composition, &'a GitTrigger)>,
    push: &Push,
) -> Result<Vec<(&'a Composition, &'a GitTrigger)>, String> {
    let mut why_not = Vec::new();
    let mut chosen: BTreeMap<(String, String), (&Composition, &GitTrigger)> = BTreeMap::new();
    for (composition, trigger) in authentic {
        let name = composition.name_any();
        match push::check_ref_and_paths(trigger, push) {
            Ok(()) => {
                let key = (composition.namespace().unwrap_or_default(), name);
                chosen.entry(key).or_insert((composition, trigger));
            }
            Err(Mismatch::Ref(r)) => {
                why_not.push(format!("{name}: {r} matches no branch or tag pattern"))
            }
            Err(Mismatch::Paths) => {
                why_not.push(format!("{name}: no changed file matches the path patterns"))
            }
        }
    }
    if chosen.is_empty() {
        Err(why_not.join("; "))
    } else {
        Ok(chosen.into_values().collect())
    }
}

#[cfg(test)]
mod tests;
