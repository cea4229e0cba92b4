//! The standard Task library (shell, git, http, ...), compiled into the operator and kept
//! in the library namespace by the leader.
//!
//! Why the operator and not the Helm chart: Helm maps every object of a release to an API
//! before it creates any, so a chart cannot create Tasks in the same install that creates
//! the Task CRD; a first `helm install` (and a first GitOps sync) would end without a
//! library. The operator also knows exactly which built-ins its agent image has, so the
//! library always matches the operator's version, upgrade after upgrade.

use std::time::Duration;

use k8s_openapi::{api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};

use maestro_api::Task;
use maestro_api::labels;

/// The library's Task files, as shipped (operator/library/*.yaml).
const FILES: [(&str, &str); 9] = [
    (
        "container.yaml",
        include_str!("../../library/container.yaml"),
    ),
    (
        "ec2-deprovision.yaml",
        include_str!("../../library/ec2-deprovision.yaml"),
    ),
    (
        "ec2-provision.yaml",
        include_str!("../../library/ec2-provision.yaml"),
    ),
    ("git.yaml", include_str!("../../library/git.yaml")),
    ("http.yaml", include_str!("../../library/http.yaml")),
    ("maven.yaml", include_str!("../../library/maven.yaml")),
    ("notify.yaml", include_str!("../../library/notify.yaml")),
    ("shell.yaml", include_str!("../../library/shell.yaml")),
    (
        "tomcat-deploy.yaml",
        include_str!("../../library/tomcat-deploy.yaml"),
    ),
];

/// Label on the Tasks the operator keeps, so it can remove the ones a newer version no
/// longer ships and never touches a Task a user put in the namespace.
pub const LIBRARY_LABEL: &str = "maestro.dev/library";
const LIBRARY_VALUE: &str = "standard";
const FIELD_MANAGER: &str = "maestro-operator-library";

/// Where and how the leader installs the library.
#[derive(Debug, Clone)]
pub struct LibraryInstall {
    pub namespace: String,
    /// A Deployment in that namespace that owns the Tasks (the operator's own, in the
    /// chart), so uninstalling the operator removes its library too.
    pub owner_deployment: Option<String>,
}

/// The library's Tasks, as compiled in. The names of the files are in the errors.
pub fn tasks() -> anyhow::Result<Vec<Task>> {
    FILES
        .iter()
        .map(|(file, text)| {
            serde_yaml::from_str::<Task>(text)
                .map_err(|e| anyhow::anyhow!("library file {file}: {e}"))
        })
        .collect()
}

/// Applies the library, then deletes the library Tasks it no longer holds. Retries until
/// it succeeds: the leader keeps reconciling runs meanwhile.
pub async fn keep_installed(client: Client, install: LibraryInstall) {
    let mut wait = Duration::from_secs(1);
    loop {
        match apply(&client, &install).await {
            Ok(n) => {
                tracing::info!(namespace = %install.namespace, tasks = n, "standard Task library installed");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "installing the standard Task library");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
    }
}

async fn apply(client: &Client, install: &LibraryInstall) -> anyhow::Result<usize> {
    let owner = match &install.owner_deployment {
        Some(name) => {
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &install.namespace);
            let deployment = deployments.get(name).await?;
            Some(owner_of(&deployment)?)
        }
        None => None,
    };
    let api: Api<Task> = Api::namespaced(client.clone(), &install.namespace);
    let tasks = tasks()?;
    let mut names = Vec::new();
    for mut task in tasks {
        let name = task.name_any();
        let meta = &mut task.metadata;
        meta.namespace = Some(install.namespace.clone());
        let task_labels = meta.labels.get_or_insert_default();
        task_labels.insert(LIBRARY_LABEL.into(), LIBRARY_VALUE.into());
        task_labels.insert(labels::MANAGED_BY.into(), labels::MANAGER.into());
        meta.owner_references = owner.clone().map(|o| vec![o]);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&task),
        )
        .await?;
        names.push(name);
    }
    let shipped = api
        .list(&ListParams::default().labels(&format!("{LIBRARY_LABEL}={LIBRARY_VALUE}")))
        .await?;
    for old in shipped {
        let name = old.name_any();
        if !names.contains(&name) {
            api.delete(&name, &DeleteParams::default()).await?;
            tracing::info!(task = %name, "removed a Task the library no longer ships");
        }
    }
    Ok(names.len())
}

/// A non-controller owner reference: the garbage collector deletes the library with the
/// Deployment, and nothing else treats the Deployment as the Tasks' controller.
fn owner_of(deployment: &Deployment) -> anyhow::Result<OwnerReference> {
    let uid = deployment
        .meta()
        .uid
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the owner Deployment has no uid"))?;
    Ok(OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: deployment.name_any(),
        uid,
        ..OwnerReference::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in operator/library is compiled in, and each parses as a Task named
    /// after its file.
    #[test]
    fn every_library_file_is_compiled_in_and_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../library");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("library dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        let compiled: Vec<String> = FILES.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(compiled, on_disk, "add the new file to library::FILES");
        for (task, (file, _)) in tasks().expect("library parses").iter().zip(FILES) {
            assert_eq!(format!("{}.yaml", task.name_any()), file);
        }
    }
}
