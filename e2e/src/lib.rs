//! Helpers shared by Maestro's end-to-end tests: a client for the cluster KUBECONFIG
//! names, throwaway namespaces, polling with a deadline that says what it waited for.

pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod maestro;
pub mod world;

use std::{future::Future, time::Duration};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api, Client,
    api::{DeleteParams, ObjectMeta, PostParams},
};

/// The agent image the tests run; `make images` imports it into the local cluster.
pub fn agent_image() -> String {
    std::env::var("MAESTRO_AGENT_IMAGE").unwrap_or_else(|_| "localhost/maestro/agent:dev".into())
}

/// A client for the cluster that KUBECONFIG names (the local one after `make cluster-up`).
pub async fn client() -> Result<Client> {
    Ok(Client::try_from(cluster_config().await?)?)
}

/// The cluster's config, as KUBECONFIG (or the pod's account) says.
async fn cluster_config() -> Result<kube::Config> {
    // kube links rustls with aws-lc-rs; choose it once before the first connection.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    kube::Config::infer()
        .await
        .context("no cluster: run `make cluster-up` and source its env file, or set KUBECONFIG")
}

/// A client for the same cluster that acts as `user` (impersonation, like `kubectl
/// --as`), for tests of what a user with only some rights may do.
pub async fn client_as(user: &str) -> Result<Client> {
    let mut config = cluster_config().await?;
    config.auth_info.impersonate = Some(user.to_string());
    Ok(Client::try_from(config)?)
}

/// A client that acts as `user` in `groups` (like `kubectl --as USER --as-group G...`):
/// the API server sees exactly those groups (and system:authenticated).
pub async fn client_as_in(user: &str, groups: &[&str]) -> Result<Client> {
    let mut config = cluster_config().await?;
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    Ok(Client::try_from(config)?)
}

/// Waits until the API server's authorizer lets `user` `verb` the `resource` (of
/// `group`) in `namespace`. RBAC writes reach the authorizer through its informers a
/// moment later, so a test that grants a right and uses it at once would race.
pub async fn wait_until_allowed(
    client: &Client,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
) -> Result<()> {
    wait_until_allowed_on(client, user, verb, group, resource, namespace, None).await
}

/// [`wait_until_allowed`] for one object by name (for rights granted by `resourceNames`).
pub async fn wait_until_allowed_on(
    client: &Client,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
    name: Option<&str>,
) -> Result<()> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_string()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_string()),
                group: Some(group.to_string()),
                resource: Some(resource.to_string()),
                namespace: Some(namespace.to_string()),
                name: name.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    wait_for(
        &format!("{user} allowed to {verb} {resource} {name:?} in {namespace}"),
        Duration::from_secs(30),
        || {
            let (reviews, review) = (reviews.clone(), review.clone());
            async move {
                let answer = reviews
                    .create(&PostParams::default(), &review)
                    .await
                    .map_err(|e| e.to_string())?;
                match answer.status {
                    Some(status) if status.allowed => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await
}

/// A namespace for one test, enforcing the restricted Pod Security Standard; deleted when
/// dropped so a failing test leaves nothing behind on a shared cluster.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        Self::create_with_security(client, prefix, "restricted").await
    }

    /// A namespace enforcing Pod Security Standard `level` (`restricted`, `baseline` or
    /// `privileged`, for pods that mount hostPath volumes).
    pub async fn create_with_security(client: &Client, prefix: &str, level: &str) -> Result<Self> {
        let suffix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() % 1_000_000_000)
            .unwrap_or_default();
        let name = format!("e2e-{prefix}-{suffix}");
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [
                        ("pod-security.kubernetes.io/enforce", level),
                        ("maestro.dev/e2e", "true"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        // Pods are refused until kube-controller-manager has made the namespace's default
        // ServiceAccount.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_for(
            "the namespace's default ServiceAccount (is kube-controller-manager running?)",
            Duration::from_secs(60),
            || async {
                match accounts.get_opt("default").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("not created yet".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await?;
        Ok(Self { name })
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        cleanup_in_drop(move |client| async move {
            let api = Api::<Namespace>::all(client);
            let _ = api.delete(&name, &DeleteParams::background()).await;
        });
    }
}

/// Runs `cleanup` to its end from a `Drop`. Drop cannot await, and the test's client is
/// bound to the test's runtime, which the dropping thread blocks: so the cleanup runs on
/// a thread with a runtime and a client of its own, and the drop waits for it.
pub fn cleanup_in_drop<F, Fut>(cleanup: F)
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let handle = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if let Ok(client) = Client::try_default().await {
                cleanup(client).await;
            }
        });
    });
    let _ = handle.join();
}

/// Polls `probe` every 500 ms until it returns `Ok`, or fails after `timeout` naming
/// `what` and the last state the probe described in its `Err`, so a timeout says what
/// was missing.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return Ok(v),
            Err(state) if tokio::time::Instant::now() >= deadline => {
                bail!("timed out after {timeout:?} waiting for {what}; last seen: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Waits until `api` lists no object (what the garbage collector or the operator was to
/// delete), or fails after `timeout` with how many are left.
pub async fn wait_all_gone<K>(what: &str, timeout: Duration, api: &Api<K>) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_for(what, timeout, || async {
        let left = api
            .list(&kube::api::ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} left"))
        }
    })
    .await
}

/// The holderIdentity of the Lease `name`, `None` when there is no Lease or no holder.
pub async fn lease_holder(
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
    name: &str,
) -> Result<Option<String>, String> {
    let lease = leases.get_opt(name).await.map_err(|e| e.to_string())?;
    Ok(lease
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}
