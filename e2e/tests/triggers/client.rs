//! Deliveries as a git host makes them: curl from a pod in the test namespace, through a
//! cluster Service, to the operator's webhook endpoint on this machine.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api,
    api::{LogParams, PostParams},
};
use maestro_e2e::{agent_image, maestro::Env, wait_for, world::node_ip};
use serde_json::{Value, json};

/// The Service in the test namespace that fronts the operator's webhook endpoint.
const SERVICE: &str = "maestro-webhook";

/// One POST the client pod makes.
pub struct Delivery {
    pub name: &'static str,
    pub provider: &'static str,
    pub headers: Vec<(String, String)>,
    /// A ConfigMap key holding the body, or None for the oversized body made in the pod.
    pub body_key: Option<String>,
}

/// `text` quoted for sh.
pub fn sq(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The client pod's script: one curl per delivery, each printing
/// `RESULT <name> <status> <answer>`.
pub fn client_script(url: &str, deliveries: &[Delivery]) -> String {
    // The Service's rules and the operator's listener may be a moment behind the test.
    let mut script = format!(
        "set -u\nfor i in $(seq 1 60); do curl -sf -o /dev/null {} && break; sleep 0.5; done\n",
        sq(&format!("{url}/healthz"))
    );
    for d in deliveries {
        let mut curl = format!(
            "curl -sS -o /tmp/answer -w '%{{http_code}}' -X POST {} -H 'Content-Type: application/json'",
            sq(&format!("{url}/hooks/{}", d.provider))
        );
        for (k, v) in &d.headers {
            curl.push_str(&format!(" -H {}", sq(&format!("{k}: {v}"))));
        }
        let line = match &d.body_key {
            Some(key) => format!("code=$({curl} --data-binary @/payloads/{key})"),
            // Expect: 100-continue lets the endpoint refuse before the body is sent.
            None => format!(
                "code=$(head -c 1200000 /dev/zero | tr '\\0' x | {curl} -H 'Expect: 100-continue' --data-binary @-)"
            ),
        };
        script.push_str(&format!(
            "{line}\necho \"RESULT {} $code $(tr -d '\\n' < /tmp/answer)\"\n",
            d.name
        ));
    }
    script
}

/// Runs the deliveries from a pod in the test namespace and returns, by delivery name,
/// (HTTP status, answer body).
pub async fn deliver(
    env: &Env,
    pod_name: &str,
    url: &str,
    payloads: &[(String, String)],
    deliveries: &[Delivery],
) -> Result<Vec<(String, u16, String)>> {
    let ns = env.ns.name.as_str();
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), ns);
    let data: serde_json::Map<String, Value> = payloads
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": pod_name},
        "data": data,
    }))?;
    config_maps.create(&PostParams::default(), &cm).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod_name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "curl",
                "image": agent_image(),
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", client_script(url, deliveries)],
                "volumeMounts": [{"name": "payloads", "mountPath": "/payloads"}],
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"}
                }
            }],
            "volumes": [{"name": "payloads", "configMap": {"name": pod_name}}]
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait_for(
        &format!("client pod {pod_name} to end"),
        Duration::from_secs(120),
        || async {
            let p = pods.get(pod_name).await.map_err(|e| e.to_string())?;
            let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
            match phase.as_str() {
                "Succeeded" | "Failed" => Ok(()),
                other => Err(format!("phase {other:?}")),
            }
        },
    )
    .await?;
    let logs = pods.logs(pod_name, &LogParams::default()).await?;
    let mut results = Vec::new();
    for line in logs.lines().filter_map(|l| l.strip_prefix("RESULT ")) {
        let mut parts = line.splitn(3, ' ');
        let name = parts.next().unwrap_or_default().to_string();
        let code = parts.next().unwrap_or_default().parse().unwrap_or(0);
        let body = parts.next().unwrap_or_default().to_string();
        results.push((name, code, body));
    }
    if results.len() != deliveries.len() {
        bail!(
            "the client pod reported {} of {} deliveries; its log:\n{logs}",
            results.len(),
            deliveries.len()
        );
    }
    Ok(results)
}

/// A Service without selector plus an EndpointSlice that sends its port to the operator
/// process on this machine; returns the Service's URL as pods reach it (its ClusterIP:
/// the test cluster runs no DNS).
pub async fn webhook_service(env: &Env, port: u16) -> Result<String> {
    let ns = env.ns.name.as_str();
    let services: Api<Service> = Api::namespaced(env.client.clone(), ns);
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": SERVICE},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]}
    }))?;
    let created = services.create(&PostParams::default(), &service).await?;
    let slices: Api<EndpointSlice> = Api::namespaced(env.client.clone(), ns);
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": format!("{SERVICE}-host"), "labels": {"kubernetes.io/service-name": SERVICE}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [node_ip()], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}]
    }))?;
    slices.create(&PostParams::default(), &slice).await?;
    let ip = created
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the webhook Service has no ClusterIP")?;
    Ok(format!("http://{ip}"))
}

/// A free port on the address pods reach this machine on.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind((node_ip().as_str(), 0))?;
    Ok(listener.local_addr()?.port())
}
