//! Proves the cluster is real: the kubelet runs containers from the locally built agent
//! image, the garbage collector (kube-controller-manager) removes dependents, and the
//! scheduler places a Deployment's pod.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Event, Pod},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, LogParams, PostParams},
};
use maestro_e2e::{TestNamespace, agent_image, client, wait_for};
use serde_json::json;

/// A container that satisfies the restricted Pod Security Standard.
fn restricted_container(name: &str, script: &str) -> serde_json::Value {
    json!({
        "name": name,
        "image": agent_image(),
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", script],
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    })
}

#[tokio::test]
async fn agent_image_pod_fails_with_its_exit_code_and_logs() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "smoke-pod").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "exit-three"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [restricted_container("main", "echo 'maestro smoke: hello from the agent image'; exit 3")]
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;

    let exit_code = wait_for(
        "pod exit-three to end in phase Failed (is the kubelet running?)",
        Duration::from_secs(120),
        || async {
            let pod = pods.get("exit-three").await.map_err(|e| e.to_string())?;
            let status = pod.status.unwrap_or_default();
            let phase = status.phase.unwrap_or_default();
            let terminated = status
                .container_statuses
                .unwrap_or_default()
                .into_iter()
                .find_map(|c| c.state.and_then(|s| s.terminated));
            match (phase.as_str(), terminated) {
                ("Failed", Some(t)) => Ok(t.exit_code),
                _ => Err(format!(
                    "phase {phase:?}, node {:?}",
                    pod.spec.and_then(|s| s.node_name)
                )),
            }
        },
    )
    .await?;
    assert_eq!(exit_code, 3, "the container's exit code");

    let logs = pods.logs("exit-three", &LogParams::default()).await?;
    assert!(
        logs.contains("maestro smoke: hello from the agent image"),
        "pod logs: {logs:?}"
    );
    Ok(())
}

#[tokio::test]
async fn garbage_collector_removes_dependents_of_a_deleted_owner() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "smoke-gc").await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let owner: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "owner"}, "data": {"role": "owner"}}))?;
    let owner = cms.create(&PostParams::default(), &owner).await?;
    let dependent: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                "uid": owner.uid().ok_or_else(|| anyhow::anyhow!("owner has no uid"))?
            }]
        },
        "data": {"role": "dependent"}
    }))?;
    cms.create(&PostParams::default(), &dependent).await?;

    cms.delete("owner", &DeleteParams::background()).await?;
    wait_for(
        "the garbage collector to delete the dependent (is kube-controller-manager running?)",
        Duration::from_secs(60),
        || async {
            match cms.get_opt("dependent").await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(cm) => Err(format!(
                    "dependent still present, owners {:?}",
                    cm.owner_references()
                )),
            }
        },
    )
    .await
}

#[tokio::test]
async fn scheduler_places_a_deployments_pod() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "smoke-sched").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "sleeper"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "sleeper"}},
            "template": {
                "metadata": {"labels": {"app": "sleeper"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [restricted_container("main", "sleep 3600")]
                }
            }
        }
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let (pod_name, node) = wait_for(
        "the Deployment's pod to be created and bound to a node \
         (are kube-controller-manager and kube-scheduler running?)",
        Duration::from_secs(90),
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=sleeper"))
                .await
                .map_err(|e| e.to_string())?;
            let pod = list.items.into_iter().next().ok_or("no pod yet")?;
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            node.map(|n| (pod.name_any(), n))
                .ok_or_else(|| format!("pod {} not bound", pod.name_any()))
        },
    )
    .await?;

    // The binding must come from kube-scheduler, which records a Scheduled event.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let scheduled_by = wait_for(
        "a Scheduled event for the pod",
        Duration::from_secs(30),
        || async {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("Scheduled")
                        && e.involved_object.name.as_deref() == Some(&pod_name)
                })
                .map(|e| {
                    e.reporting_component
                        .or(e.source.and_then(|s| s.component))
                        .unwrap_or_default()
                })
                .ok_or_else(|| "no Scheduled event".to_string())
        },
    )
    .await?;
    assert_eq!(scheduled_by, "default-scheduler");
    assert!(!node.is_empty());
    Ok(())
}
