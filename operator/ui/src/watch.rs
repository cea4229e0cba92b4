//! Live lists as server-sent events, each driven by a Kubernetes watch (never by polling
//! whole lists): `list` once with every object (and again after the watch had to start
//! over), then `upsert` and `delete` per change, and `problem` when the API refuses or
//! fails (the watch retries with a backoff).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt, future};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use maestro_api::{Agent, CompositionRun};
use serde::{Deserialize, Serialize};

use crate::summary::{summarise, without_managed_fields};
use crate::{ApiError, App};

#[derive(Deserialize, Debug, Default)]
pub struct NamespaceQuery {
    /// The namespace to list; absent or empty: every namespace the user may list.
    pub namespace: Option<String>,
}

impl NamespaceQuery {
    pub fn api<K>(&self, client: Client) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self.namespace.as_deref().filter(|ns| !ns.is_empty()) {
            Some(namespace) => Api::namespaced(client, namespace),
            None => Api::all(client),
        }
    }
}

/// The runs of a namespace (or all), as summaries.
pub async fn runs(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<NamespaceQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let runs: Api<CompositionRun> = query.api(app.access.client_for(&headers)?);
    let events = watcher(runs, watcher::Config::default()).default_backoff();
    Ok(Sse::new(as_events(events, |run| summarise(&run))).keep_alive(KeepAlive::default()))
}

/// One run, whole, each time it changes.
pub async fn one_run(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let runs: Api<CompositionRun> = Api::namespaced(app.access.client_for(&headers)?, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher(runs, config).default_backoff();
    Ok(Sse::new(as_events(events, without_managed_fields)).keep_alive(KeepAlive::default()))
}

/// The Agents of a namespace (or all), whole, live: slots, the run each holds, the
/// composition each last ran, cache hits and misses, the queue.
pub async fn agents(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<NamespaceQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let agents: Api<Agent> = query.api(app.access.client_for(&headers)?);
    let events = watcher(agents, watcher::Config::default()).default_backoff();
    Ok(Sse::new(as_events(events, without_managed_fields)).keep_alive(KeepAlive::default()))
}

#[derive(Serialize)]
struct Deleted {
    namespace: String,
    name: String,
}

/// A watch's events as server-sent events, each object rendered by `render`.
fn as_events<K, T>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    render: impl Fn(K) -> T,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    K: kube::Resource,
    T: Serialize,
{
    let mut listed: Vec<T> = Vec::new();
    events.filter_map(move |event| {
        let sent = match event {
            Ok(watcher::Event::Init) => {
                listed.clear();
                None
            }
            Ok(watcher::Event::InitApply(object)) => {
                listed.push(render(object));
                None
            }
            Ok(watcher::Event::InitDone) => Some(json_event("list", &std::mem::take(&mut listed))),
            Ok(watcher::Event::Apply(object)) => Some(json_event("upsert", &render(object))),
            Ok(watcher::Event::Delete(object)) => Some(json_event(
                "delete",
                &Deleted {
                    namespace: object.namespace().unwrap_or_default(),
                    name: object.name_any(),
                },
            )),
            Err(error) => Some(problem(&watch_problem(error))),
        };
        future::ready(sent.map(Ok))
    })
}

/// A failed watch as one line: the API's own message when it sent one.
fn watch_problem(error: watcher::Error) -> String {
    match error {
        watcher::Error::InitialListFailed(error)
        | watcher::Error::WatchStartFailed(error)
        | watcher::Error::WatchFailed(error) => {
            let not_served = matches!(&error, kube::Error::Api(status) if status.code == 404);
            let message = ApiError::kube(error, "watching").message;
            if not_served {
                format!("{message} (are Maestro's CRDs installed?)")
            } else {
                message
            }
        }
        other => other.to_string(),
    }
}

pub fn json_event<T: Serialize>(name: &str, value: &T) -> Event {
    Event::default()
        .event(name)
        .json_data(value)
        .unwrap_or_else(|error| problem(&format!("cannot encode an event: {error}")))
}

pub fn problem(message: &str) -> Event {
    json_event_infallible("problem", &serde_json::json!({ "error": message }))
}

fn json_event_infallible(name: &str, value: &serde_json::Value) -> Event {
    // A serde_json::Value always encodes.
    Event::default().event(name).data(value.to_string())
}
