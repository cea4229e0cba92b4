//! Proves the cluster provisions volumes dynamically, the way Maestro's runs use them: a
//! PersistentVolumeClaim that names no class gets the default one, and step pods running
//! as uid 65532 under the restricted Pod Security Standard share its volume: one writes a
//! file, a second reads it back. Deleting the claim deletes the volume. On the local
//! cluster (default class `maestro-local`, local-path-provisioner started by
//! e2e/cluster/storage.sh) the test also checks the volume's directory on this machine.

use std::{os::unix::fs::MetadataExt, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{
    core::v1::{PersistentVolume, PersistentVolumeClaim, Pod},
    storage::v1::StorageClass,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, LogParams, PostParams},
};
use maestro_e2e::{TestNamespace, agent_image, client, wait_for};
use serde_json::json;

/// The default StorageClass of the local cluster (e2e/cluster/storage.sh).
const LOCAL_CLASS: &str = "maestro-local";
const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
const CLAIM: &str = "workspace";
const STEP_UID: i64 = 65532;

/// The cluster's default StorageClass: the one a claim without a class gets.
async fn default_storage_class(client: &Client) -> Result<StorageClass> {
    let classes = Api::<StorageClass>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    classes
        .items
        .into_iter()
        .find(|c| {
            c.annotations()
                .get(DEFAULT_CLASS_ANNOTATION)
                .map(String::as_str)
                == Some("true")
        })
        .context("no default StorageClass (on the local cluster, run e2e/cluster/storage.sh)")
}

/// A pod that satisfies the restricted Pod Security Standard, runs as a Maestro step does
/// (uid and fsGroup 65532), and mounts the claim at /workspace.
fn step_pod(name: &str, script: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": STEP_UID,
                "fsGroup": STEP_UID,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": CLAIM}}],
            "containers": [{
                "name": "main",
                "image": agent_image(),
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}],
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": STEP_UID,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"}
                }
            }]
        }
    }))?)
}

/// Creates the pod, waits until it succeeds, and returns its logs; a failed pod is an
/// error that carries its logs.
async fn run_to_success(pods: &Api<Pod>, pod: &Pod) -> Result<String> {
    let name = pod.name_any();
    pods.create(&PostParams::default(), pod)
        .await
        .with_context(|| format!("creating pod {name}"))?;
    let phase = wait_for(
        &format!(
            "pod {name} to finish (its claim is provisioned first: is local-path-provisioner \
             running? see $CLUSTER_DIR/logs/local-path-provisioner.log)"
        ),
        Duration::from_secs(180),
        || async {
            let pod = pods.get(&name).await.map_err(|e| e.to_string())?;
            let status = pod.status.unwrap_or_default();
            match status.phase.as_deref() {
                Some(p @ ("Succeeded" | "Failed")) => Ok(p.to_string()),
                p => Err(format!(
                    "phase {p:?}, conditions {:?}",
                    status
                        .conditions
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|c| c.status != "True")
                        .map(|c| format!("{}: {}", c.type_, c.message.unwrap_or_default()))
                        .collect::<Vec<_>>()
                )),
            }
        },
    )
    .await?;
    let logs = pods.logs(&name, &LogParams::default()).await?;
    if phase != "Succeeded" {
        bail!("pod {name} ended in phase {phase}; logs:\n{logs}");
    }
    Ok(logs)
}

/// The directory on the node that a local-path volume is.
fn volume_path(pv: &PersistentVolume) -> Option<PathBuf> {
    let spec = pv.spec.as_ref()?;
    spec.host_path
        .as_ref()
        .map(|h| h.path.clone())
        .or_else(|| spec.local.as_ref().map(|l| l.path.clone()))
        .map(PathBuf::from)
}

#[tokio::test]
async fn claim_gets_a_volume_that_step_pods_share_and_deleting_it_removes_the_volume() -> Result<()>
{
    let client = client().await?;
    let class = default_storage_class(&client).await?;
    let class_name = class.name_any();
    // Only the local cluster's volumes are directories on this machine.
    let on_this_machine = class_name == LOCAL_CLASS;
    if on_this_machine {
        assert_eq!(class.provisioner, "rancher.io/local-path");
        assert_eq!(
            class.volume_binding_mode.as_deref(),
            Some("WaitForFirstConsumer")
        );
        assert_eq!(class.reclaim_policy.as_deref(), Some("Delete"));
    } else {
        eprintln!("default StorageClass {class_name} is not {LOCAL_CLASS}: skipping host checks");
    }

    let ns = TestNamespace::create(&client, "storage").await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());

    // A claim that names no class, as a run's workspace claim does.
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": CLAIM},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "16Mi"}}
        }
    }))?;
    let claim = claims.create(&PostParams::default(), &claim).await?;
    let spec = claim.spec.unwrap_or_default();
    assert_eq!(
        spec.storage_class_name.as_deref(),
        Some(class_name.as_str()),
        "the claim gets the default StorageClass"
    );
    if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") {
        let claim = claims.get(CLAIM).await?;
        let status = claim.status.unwrap_or_default();
        assert_eq!(
            status.phase.as_deref(),
            Some("Pending"),
            "no volume before a pod uses the claim"
        );
    }

    let message = format!("maestro storage e2e: written in {}", ns.name);
    let writer = step_pod(
        "writer",
        &format!(
            "set -eu; echo \"uid $(id -u) groups $(id -G)\"; \
             printf '%s\\n' '{message}' > /workspace/hello.txt; ls -ln /workspace"
        ),
    )?;
    let logs = run_to_success(&pods, &writer).await?;
    assert!(logs.contains("uid 65532"), "writer logs: {logs}");

    let pv_name = wait_for("the claim to be Bound", Duration::from_secs(30), || async {
        let claim = claims.get(CLAIM).await.map_err(|e| e.to_string())?;
        let phase = claim.status.and_then(|s| s.phase).unwrap_or_default();
        match claim.spec.and_then(|s| s.volume_name) {
            Some(pv) if phase == "Bound" => Ok(pv),
            pv => Err(format!("phase {phase:?}, volume {pv:?}")),
        }
    })
    .await?;
    let pv = volumes.get(&pv_name).await?;
    let pv_spec = pv.spec.clone().unwrap_or_default();
    assert_eq!(
        pv_spec.storage_class_name.as_deref(),
        Some(class_name.as_str())
    );

    // A second pod, a later step, reads what the first wrote.
    let reader = step_pod(
        "reader",
        "set -eu; cat /workspace/hello.txt; echo \"owner $(stat -c %u /workspace/hello.txt)\"",
    )?;
    let logs = run_to_success(&pods, &reader).await?;
    assert!(logs.contains(&message), "reader logs: {logs}");
    assert!(logs.contains("owner 65532"), "reader logs: {logs}");

    // On the local cluster the volume is a directory on this machine.
    let host_dir = if on_this_machine {
        let dir = volume_path(&pv).with_context(|| format!("{pv_name} is not a local path"))?;
        let file = dir.join("hello.txt");
        let content = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {} on this machine", file.display()))?;
        assert_eq!(content, format!("{message}\n"));
        assert_eq!(i64::from(std::fs::metadata(&file)?.uid()), STEP_UID);
        Some(dir)
    } else {
        None
    };

    // Deleting the claim (once no pod uses it) deletes its volume: the PersistentVolume
    // (reclaimPolicy Delete) and, through the provisioner's teardown, the directory.
    for pod in ["writer", "reader"] {
        pods.delete(pod, &DeleteParams::default()).await?;
    }
    claims.delete(CLAIM, &DeleteParams::default()).await?;
    wait_for(
        "the claim's volume to be deleted (is local-path-provisioner running?)",
        Duration::from_secs(180),
        || async {
            let claim = claims.get_opt(CLAIM).await.map_err(|e| e.to_string())?;
            let pv = volumes.get_opt(&pv_name).await.map_err(|e| e.to_string())?;
            let dir_exists = host_dir.as_ref().is_some_and(|d| d.exists());
            match (claim, pv, dir_exists) {
                (None, None, false) => Ok(()),
                (claim, pv, dir_exists) => Err(format!(
                    "claim present: {}, volume phase: {:?}, directory present: {dir_exists}",
                    claim.is_some(),
                    pv.map(|pv| pv.status.and_then(|s| s.phase))
                )),
            }
        },
    )
    .await?;
    Ok(())
}
