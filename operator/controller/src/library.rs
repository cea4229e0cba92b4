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
    /// The images the installed Tasks run.
    pub images: LibraryImages,
}

/// The image the shipped files name for Tasks that run maestro-agent's own tasks in a
/// container (tomcat-deploy): the agent image `make images` builds.
pub const SHIPPED_AGENT_IMAGE: &str = "localhost/maestro/agent:dev";
/// The image the shipped `maven` Task names (operator/library/images/maven).
pub const SHIPPED_MAVEN_IMAGE: &str = "localhost/maestro/maven:dev";

/// The images of the library's container Tasks, as the operator is configured (its
/// flags; the chart's `agent.image` and `library.mavenImage`). The files ship the local
/// development images, which a cluster pulling from a registry has none of: the
/// installed Tasks get these instead, as built-in tasks get `--agent-image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryImages {
    /// The agent image and its pull policy, the same the operator runs built-ins in.
    pub agent: String,
    pub agent_pull_policy: String,
    /// The `maven` Task's image and its pull policy.
    pub maven: String,
    pub maven_pull_policy: String,
}

impl Default for LibraryImages {
    /// What the files name: the local images, imported rather than pulled.
    fn default() -> Self {
        Self {
            agent: SHIPPED_AGENT_IMAGE.into(),
            agent_pull_policy: "IfNotPresent".into(),
            maven: SHIPPED_MAVEN_IMAGE.into(),
            maven_pull_policy: "IfNotPresent".into(),
        }
    }
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

/// The library's Tasks with `images` in place of the shipped ones. A Task naming any
/// other image keeps it.
pub fn tasks_with(images: &LibraryImages) -> anyhow::Result<Vec<Task>> {
    let mut tasks = tasks()?;
    for container in tasks.iter_mut().filter_map(|t| t.spec.container.as_mut()) {
        let (image, pull_policy) = match container.image.as_str() {
            SHIPPED_AGENT_IMAGE => (&images.agent, &images.agent_pull_policy),
            SHIPPED_MAVEN_IMAGE => (&images.maven, &images.maven_pull_policy),
            _ => continue,
        };
        container.image = image.clone();
        container.image_pull_policy = Some(pull_policy.clone());
    }
    Ok(tasks)
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
    let tasks = tasks_with(&install.images)?;
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
    use std::collections::BTreeMap;

    use maestro_api::{CompositionRunSpec, CompositionRunStatus, CompositionSpec, TaskSpec};
    use maestro_engine::{Action, Admission, Observed, PlanInput};

    use super::*;
    use crate::controller::pods::{self, PodSettings};

    /// The image and pull policy of the step container of the first pod the engine plans
    /// for a run of `composition` (YAML) with these library Tasks, rendered as the
    /// controller renders step pods.
    fn step_image(tasks: &[Task], composition: &str) -> (String, String) {
        let tasks: BTreeMap<String, TaskSpec> = tasks
            .iter()
            .map(|t| (t.name_any(), t.spec.clone()))
            .collect();
        let composition: CompositionSpec =
            serde_yaml::from_str(composition).expect("composition parses");
        let spec: CompositionRunSpec =
            serde_json::from_value(serde_json::json!({"composition": "c"})).expect("run spec");
        let plan = maestro_engine::plan(&PlanInput {
            run_name: "r",
            uid: "u",
            namespace: "ns",
            generation: Some(1),
            depth: 0,
            chain: "c",
            spec: &spec,
            status: &CompositionRunStatus::default(),
            composition: Some(&composition),
            tasks: &tasks,
            observed: &Observed::default(),
            now: k8s_openapi::jiff::Timestamp::now(),
            deleting: false,
            admission: Admission::Admitted,
            pod_budget: None,
        });
        let step = plan
            .actions
            .iter()
            .find_map(|a| match a {
                Action::CreatePod(pod) => Some(pod),
                _ => None,
            })
            .expect("the run's first step gets a pod");
        let settings = PodSettings {
            agent_image: "registry.example/maestro/agent:1.2.3".into(),
            agent_pull_policy: "Always".into(),
            workspace: None,
        };
        let owner = OwnerReference {
            api_version: "maestro.dev/v1alpha1".into(),
            kind: "CompositionRun".into(),
            name: "r".into(),
            uid: "u".into(),
            ..OwnerReference::default()
        };
        let pod = pods::step_pod(step, "r", "ns", "c", owner, &settings, None);
        let spec = pod.spec.expect("pod spec");
        let main = spec
            .containers
            .iter()
            .find(|c| c.name == "step")
            .expect("the step container");
        (
            main.image.clone().unwrap_or_default(),
            main.image_pull_policy.clone().unwrap_or_default(),
        )
    }

    const MAVEN_RUN: &str = "steps: [{name: build, task: maven}]";
    const DEPLOY_RUN: &str = "steps: [{name: deploy, task: tomcat-deploy, with: {url: 'http://tomcat:8080', war: app.war}}]";

    /// The operator's configured images, not the shipped local ones, are what the step
    /// pods of the `maven` and `tomcat-deploy` Tasks run.
    #[test]
    fn configured_images_reach_the_step_pods_of_the_library_tasks() {
        let images = LibraryImages {
            agent: "registry.example/maestro/agent:1.2.3".into(),
            agent_pull_policy: "Always".into(),
            maven: "registry.example/maestro/maven:1.2.3".into(),
            maven_pull_policy: "Always".into(),
        };
        let tasks = tasks_with(&images).expect("library parses");
        assert_eq!(
            step_image(&tasks, MAVEN_RUN),
            (
                "registry.example/maestro/maven:1.2.3".into(),
                "Always".into()
            )
        );
        assert_eq!(
            step_image(&tasks, DEPLOY_RUN),
            (
                "registry.example/maestro/agent:1.2.3".into(),
                "Always".into()
            )
        );
        let container_images: Vec<String> = tasks
            .iter()
            .filter_map(|t| t.spec.container.as_ref().map(|c| c.image.clone()))
            .collect();
        assert!(
            !container_images
                .iter()
                .any(|i| i == SHIPPED_AGENT_IMAGE || i == SHIPPED_MAVEN_IMAGE),
            "no shipped image is left: {container_images:?}"
        );
    }

    /// By default the Tasks run the local images the shipped files name.
    #[test]
    fn the_default_images_are_the_shipped_ones() {
        let tasks = tasks_with(&LibraryImages::default()).expect("library parses");
        assert_eq!(
            step_image(&tasks, MAVEN_RUN),
            (SHIPPED_MAVEN_IMAGE.into(), "IfNotPresent".into())
        );
        assert_eq!(
            step_image(&tasks, DEPLOY_RUN),
            (SHIPPED_AGENT_IMAGE.into(), "IfNotPresent".into())
        );
    }

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
