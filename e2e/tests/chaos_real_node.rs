//! The chaos suite's faults on the real node, with real containers (the 200-run mix runs
//! on kwok): the node's kubelet killed for 30 s while steps run; and the EC2 API (a moto
//! server on this machine) unreachable just as a failed run's cleanup starts removing its
//! instance. Steps must end as their commands did, never hang; the cleanup must try
//! again, with a growing wait, and remove the instance once the API answers.

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::{Api, api::PostParams};
use maestro_api::{CompositionRun, RunPhase, StepPhase};
use maestro_e2e::{cluster::Component, maestro::Env, wait_for, world::Moto};
use serde_json::json;

const RUN_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test]
async fn a_cleanup_outlasts_an_ec2_api_outage_and_then_removes_the_instance() -> Result<()> {
    let moto = Moto::start().await?;
    let env = Env::new("chaos-cloud").await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "aws-credentials"},
        "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    let composition = format!(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {{name: provision-then-fail}}
spec:
  context: {{awsRegion: us-east-1, awsEndpoint: "{}"}}
  cleanup: Always
  steps:
    - name: provision
      task: ec2-provision
      secretEnv: [aws-credentials]
      with: {{imageId: ami-12c6146b, instanceType: t3.small}}
    - name: tests
      task: shell
      with: {{script: "sleep 4; echo the tests failed; exit 1"}}
"#,
        moto.url
    );
    let names = env.apply_yaml(&composition).await?;
    env.wait_compositions_ready(&names).await?;
    let run = env.start_run("provision-then-fail", &[]).await?;
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);

    // While the failing step runs, the instance exists; then the EC2 API goes away.
    wait_for("the tests step to run", RUN_TIMEOUT, || async {
        let r = runs.get(&run).await.map_err(|e| e.to_string())?;
        let status = r.status.unwrap_or_default();
        let tests = status.steps.iter().find(|s| s.name == "tests");
        match tests.map(|s| s.phase) {
            Some(StepPhase::Running) => Ok(()),
            other => Err(format!("tests is {other:?}")),
        }
    })
    .await?;
    assert_eq!(moto.live_instances().await?.len(), 1, "the instance runs");
    // Pods reach moto on the node's address: refuse those connections at once.
    let outage = moto.refuse_connections()?;
    let retrying = wait_for("a cleanup attempt to fail", RUN_TIMEOUT, || async {
        let r = runs.get(&run).await.map_err(|e| e.to_string())?;
        let cleanup = r.status.unwrap_or_default().cleanup.unwrap_or_default();
        match cleanup.next_attempt_time {
            Some(_) => Ok(cleanup),
            None => Err(format!("cleanup: {cleanup:?}")),
        }
    })
    .await?;
    let said = retrying.message.clone().unwrap_or_default();
    assert!(
        said.contains("cleanup attempt 1 failed") && said.contains("attempt 2 at"),
        "{said}"
    );
    assert_eq!(retrying.phase, StepPhase::Running);
    // The API comes back before the next attempt.
    drop(outage);

    let done = env.wait_finished(&run, RUN_TIMEOUT).await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Failed, "{status:#?}");
    let cleanup = status.cleanup.clone().context("no cleanup status")?;
    assert_eq!(cleanup.phase, StepPhase::Succeeded, "{cleanup:#?}");
    assert!(cleanup.attempts >= 2, "{cleanup:#?}");
    assert!(status.resources.is_empty(), "{:?}", status.resources);
    assert!(
        moto.live_instances().await?.is_empty(),
        "instances left in moto: {:?}",
        moto.live_instances().await?
    );
    println!(
        "cleanup: {} attempts; {}",
        cleanup.attempts,
        cleanup.message.unwrap_or_default()
    );
    Ok(())
}

/// Steps of 15 s; three runs at once, so several pods are mid-step when the kubelet dies.
const SOAK: &str = r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: soak}
spec:
  steps:
    - name: soak
      task: shell
      retries: {limit: 1, backoff: 2s}
      with: {script: "sleep 15; echo soaked"}
    - name: after
      task: shell
      with: {script: echo after}
"#;

#[tokio::test]
async fn steps_running_while_the_kubelet_is_down_end_as_their_commands_did() -> Result<()> {
    let env = Env::new("chaos-kubelet").await?;
    let names = env.apply_yaml(SOAK).await?;
    env.wait_compositions_ready(&names).await?;
    let mut started = Vec::new();
    for _ in 0..3 {
        started.push(env.start_run("soak", &[]).await?);
    }
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    wait_for("every soak step to run", RUN_TIMEOUT, || async {
        let mut running = 0;
        for run in &started {
            let r = runs.get(run).await.map_err(|e| e.to_string())?;
            let soak = r
                .status
                .unwrap_or_default()
                .steps
                .into_iter()
                .find(|s| s.name == "soak");
            running += usize::from(soak.is_some_and(|s| s.phase == StepPhase::Running));
        }
        match running == started.len() {
            true => Ok(()),
            false => Err(format!("{running} of {} running", started.len())),
        }
    })
    .await?;

    let mut kubelet = Component::running("kubelet")?;
    kubelet.kill_and_restart(Duration::from_secs(30)).await?;
    let nodes: Api<Node> = Api::all(env.client.clone());
    wait_for("the node to be Ready again", RUN_TIMEOUT, || async {
        let list = nodes
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let ready = list.items.iter().all(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        match ready {
            true => Ok(()),
            false => Err("a node is not Ready".to_string()),
        }
    })
    .await?;

    for run in &started {
        let done = env.wait_finished(run, RUN_TIMEOUT).await?;
        let status = done.status.clone().unwrap_or_default();
        // The containers ran on while the kubelet was away; it reports them when it is
        // back, so each step ends as its command did: no retry, no second pod.
        assert_eq!(status.phase, RunPhase::Succeeded, "{run}: {status:#?}");
        let pods = env.step_pods(run).await?;
        let soak: Vec<&(String, u32, String)> =
            pods.iter().filter(|(step, _, _)| step == "soak").collect();
        println!("{run}: {pods:?}");
        assert_eq!(soak.len(), 1, "{run}: one soak pod: {pods:?}");
    }
    Ok(())
}
