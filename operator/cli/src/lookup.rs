//! Reading Maestro objects with errors a user can act on: `compositionrun "x" not found
//! in namespace "default"` rather than a dump of the API's Status object.

use std::time::Duration;

use anyhow::anyhow;
use kube::Api;
use maestro_api::{Composition, CompositionRun};

use crate::Target;

/// Reads a run, or fails saying which run is missing where.
pub async fn get_run(target: &Target, name: &str) -> anyhow::Result<CompositionRun> {
    let runs: Api<CompositionRun> = Api::namespaced(target.client.clone(), &target.namespace);
    runs.get_opt(name)
        .await
        .map_err(|error| api_error(error, &format!("reading compositionrun {name:?}")))?
        .ok_or_else(|| not_found("compositionrun", name, &target.namespace))
}

/// Reads a composition, or fails saying which one is missing where.
pub async fn get_composition(target: &Target, name: &str) -> anyhow::Result<Composition> {
    let compositions: Api<Composition> = Api::namespaced(target.client.clone(), &target.namespace);
    compositions
        .get_opt(name)
        .await
        .map_err(|error| api_error(error, &format!("reading composition {name:?}")))?
        .ok_or_else(|| not_found("composition", name, &target.namespace))
}

pub fn not_found(kind: &str, name: &str, namespace: &str) -> anyhow::Error {
    anyhow!("{kind} {name:?} not found in namespace {namespace:?}")
}

/// An API error as one line: the server's own message when it sent one (a refusal by
/// RBAC or an admission policy says exactly what was refused and why).
pub fn api_error(error: kube::Error, doing: &str) -> anyhow::Error {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => {
            anyhow!("{doing}: {}", status.message)
        }
        other => anyhow!("{doing}: {other}"),
    }
}

/// Whether an error may go away by itself: the API server restarting or a connection
/// dropping, as opposed to a refusal or a missing object.
pub fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// How long the long-running commands (`run --wait`, `logs -f`) keep retrying while the
/// API server is unreachable, so a restart of the control plane does not end them.
pub const OUTAGE_TOLERANCE: Duration = Duration::from_secs(120);
/// The pause between two polls of the long-running commands.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Calls `attempt` until it succeeds, retrying transient errors for up to
/// [`OUTAGE_TOLERANCE`] and telling the user once that it is waiting.
pub async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let started = tokio::time::Instant::now();
    let mut warned = false;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if is_transient(&error) && started.elapsed() < OUTAGE_TOLERANCE => {
                if !warned {
                    eprintln!("warning: {what}: {error}; retrying");
                    warned = true;
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            Err(error) => return Err(api_error(error, what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn status(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, "Reason").with_code(code).boxed())
    }

    #[test]
    fn names_the_missing_object_and_namespace() {
        assert_eq!(
            not_found("compositionrun", "x", "default").to_string(),
            r#"compositionrun "x" not found in namespace "default""#
        );
    }

    #[test]
    fn shows_the_servers_message() {
        let error = api_error(
            status(403, "approvals.maestro.dev is forbidden"),
            "creating",
        );
        assert_eq!(
            error.to_string(),
            "creating: approvals.maestro.dev is forbidden"
        );
    }

    #[test]
    fn retries_only_what_may_heal() {
        assert!(is_transient(&status(503, "unavailable")));
        assert!(!is_transient(&status(403, "forbidden")));
        assert!(!is_transient(&status(404, "gone")));
    }
}
