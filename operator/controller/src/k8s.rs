//! The operator's writes to the API, one helper per shape of write, so every create,
//! delete and status apply treats "already there" and "already gone" the same way, and
//! every write carries the field manager `maestro-operator`.

use std::{collections::BTreeMap, fmt::Debug};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, Resource,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use maestro_api::labels;
use maestro_api::{CompositionRun, CompositionRunSpec};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "maestro-operator";

/// What a create found: the object is new, or was there already (409 AlreadyExists).
/// Every object the operator creates has a deterministic name, so "there already" means
/// an earlier pass (or an earlier process) made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    Existed,
}

/// What a delete or patch of an object found: it was there, or it is gone (404).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Found,
    Gone,
}

fn created<T>(result: Result<T, kube::Error>) -> Result<Created, kube::Error> {
    match result {
        Ok(_) => Ok(Created::Created),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Created::Existed),
        Err(e) => Err(e),
    }
}

fn found<T>(result: Result<T, kube::Error>) -> Result<Found, kube::Error> {
    match result {
        Ok(_) => Ok(Found::Found),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Found::Gone),
        Err(e) => Err(e),
    }
}

/// Creates `object`, or finds it there already.
pub async fn create_or_existing<K>(api: &Api<K>, object: &K) -> Result<Created, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    created(api.create(&params, object).await)
}

/// After a create answered AlreadyExists: who holds the name, unless the object there is
/// owned by `owner_uid` (then it is ours, and `None`). `None` too if it is gone meanwhile.
pub async fn holder_unless_owned<K>(
    api: &Api<K>,
    name: &str,
    owner_uid: &str,
) -> Result<Option<String>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    holder_unless(api, name, |existing| {
        existing
            .meta()
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner_uid)
    })
    .await
}

/// After a create answered AlreadyExists: who holds the name (its owners, for the
/// message), unless `is_ours` says the object there is the one the create meant. `None`
/// too if it is gone meanwhile.
pub async fn holder_unless<K>(
    api: &Api<K>,
    name: &str,
    is_ours: impl Fn(&K) -> bool,
) -> Result<Option<String>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(None);
    };
    if is_ours(&existing) {
        return Ok(None);
    }
    let holders: Vec<String> = existing
        .meta()
        .owner_references
        .iter()
        .flatten()
        .map(|o| format!("{} {}", o.kind, o.name))
        .collect();
    Ok(Some(if holders.is_empty() {
        "owned by nobody".to_string()
    } else {
        format!("owned by {}", holders.join(", "))
    }))
}

/// Deletes an object, or finds it gone already.
pub async fn delete_or_gone<K>(
    api: &Api<K>,
    name: &str,
    params: &DeleteParams,
) -> Result<Found, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    found(api.delete(name, params).await)
}

/// Merge-patches an object's spec, or finds it gone already.
pub async fn merge_or_gone<K>(
    api: &Api<K>,
    name: &str,
    params: &PatchParams,
    patch: &serde_json::Value,
) -> Result<Found, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    found(api.patch(name, params, &Patch::Merge(patch)).await)
}

/// Writes an object's whole status by server-side apply, forced, as `maestro-operator`
/// (a partial status would drop the fields it leaves out). The apiVersion and kind are
/// the kind's own, never written by hand.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = status_patch::<K>(status);
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
}

fn status_patch<K: Resource<DynamicType = ()>>(status: &impl Serialize) -> serde_json::Value {
    json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    })
}

/// Builds a CompositionRun the operator creates (a child or onFailure run, a scheduled
/// run, a pushed commit's run): labelled as managed by Maestro, not cancelled, priority 0
/// unless told.
pub struct RunBuilder {
    run: CompositionRun,
}

impl RunBuilder {
    pub fn new(name: &str, namespace: &str, composition: &str) -> Self {
        let run = CompositionRun {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(
                    labels::MANAGED_BY.to_string(),
                    labels::MANAGER.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            spec: CompositionRunSpec {
                composition: composition.to_string(),
                params: BTreeMap::new(),
                cancel: false,
                priority: 0,
                started_by: None,
                rerun_of: None,
            },
            status: None,
        };
        RunBuilder { run }
    }

    pub fn params(mut self, params: BTreeMap<String, String>) -> Self {
        self.run.spec.params = params;
        self
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.run.spec.priority = priority;
        self
    }

    /// The user the run is started for (a child or onFailure run: its parent's starter).
    pub fn started_by(mut self, user: Option<String>) -> Self {
        self.run.spec.started_by = user;
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.run
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.to_string());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.run
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Makes `owner` the run's controller, so the run goes when its owner goes.
    pub fn owner(mut self, owner: OwnerReference) -> Self {
        self.run.metadata.owner_references = Some(vec![owner]);
        self
    }

    pub fn build(self) -> CompositionRun {
        self.run
    }
}

/// The bytes of one key of a Secret in `ns`, or why they cannot be read (no such Secret,
/// no such key, or the API's error), in words that name the Secret and the key.
pub async fn secret_key(
    client: &kube::Client,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<Vec<u8>, String> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(secret)) => secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.0.clone())
            .ok_or_else(|| format!("Secret {name} has no key {key:?}")),
        Ok(None) => Err(format!("Secret {name} does not exist")),
        Err(e) => Err(format!("cannot read Secret {name}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maestro_api::{Agent, Composition};

    #[test]
    fn the_status_patch_names_the_kinds_own_api_version() {
        let patch = status_patch::<CompositionRun>(&json!({"phase": "Running"}));
        assert_eq!(patch["apiVersion"], "maestro.dev/v1alpha1");
        assert_eq!(patch["kind"], "CompositionRun");
        assert_eq!(patch["status"]["phase"], "Running");
        assert_eq!(status_patch::<Agent>(&json!({}))["kind"], "Agent");
        assert_eq!(
            status_patch::<Composition>(&json!({}))["kind"],
            "Composition"
        );
    }

    #[test]
    fn a_built_run_is_managed_and_not_cancelled() {
        let run = RunBuilder::new("r", "ns", "comp")
            .label(labels::TRIGGER, "cron")
            .build();
        let got = run.metadata.labels.unwrap_or_default();
        assert_eq!(
            got.get(labels::MANAGED_BY).map(String::as_str),
            Some(labels::MANAGER)
        );
        assert_eq!(got.get(labels::TRIGGER).map(String::as_str), Some("cron"));
        assert_eq!(run.metadata.annotations, None);
        assert_eq!(run.metadata.owner_references, None);
        assert!(!run.spec.cancel);
        assert_eq!(run.spec.priority, 0);
        assert_eq!(run.spec.composition, "comp");
    }
}
