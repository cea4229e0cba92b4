//! The seed's seven-step delivery cycle end to end on the local cluster: the war from a
//! local HTTP server, an instance from moto (a real EC2 API endpoint), the deploy as an
//! HTTP call, the tests from a git repository served over HTTP, run with the container
//! task, an approval, the deprovision. Also: failing tests (onFailure notifies QA, the
//! instance is still terminated) and a run deleted in the middle (the finalizer
//! terminates its instance).

use std::{path::Path, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use maestro_api::{CompositionRun, RunPhase, StepPhase};
use maestro_e2e::{
    maestro::Env,
    wait_for,
    world::{Moto, Sink, TempDir, run},
};
use serde_json::json;

const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// The release and the tests' git repository, made by e2e/servers/make-world.sh (the
/// demo uses the same script); returns the war's bytes.
fn make_world(root: &Path) -> anyhow::Result<Vec<u8>> {
    let script = maestro_e2e::maestro::repo_root().join("e2e/servers/make-world.sh");
    run(
        root,
        "bash",
        &[&script.display().to_string(), &root.display().to_string()],
    )?;
    Ok(std::fs::read(
        root.join("com/acme/app/1.4.2/app-1.4.2.war"),
    )?)
}

struct World {
    env: Env,
    sink: Sink,
    moto: Moto,
    _dir: TempDir,
    war: Vec<u8>,
}

async fn world(prefix: &str) -> anyhow::Result<World> {
    let env = Env::new(prefix).await?;
    let dir = TempDir::new(&format!("maestro-{prefix}"))?;
    let war = make_world(&dir.0)?;
    let sink = Sink::start(&dir.0).await?;
    let moto = Moto::start().await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "aws-credentials"},
        "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    env.apply_example("acceptance-tests/composition.yaml")
        .await?;
    env.apply_example("acceptance-tests/notify-qa.yaml").await?;
    Ok(World {
        env,
        sink,
        moto,
        _dir: dir,
        war,
    })
}

impl World {
    async fn start(&self, tests_ref: &str) -> anyhow::Result<String> {
        let url = self.sink.url.clone();
        let repo = format!("{url}/qa/acceptance.git");
        let notify = format!("{url}/notify");
        self.env
            .start_run(
                "acceptance-tests",
                &[
                    ("artifactRepo", url.as_str()),
                    ("deployUrl", url.as_str()),
                    ("testsRepo", repo.as_str()),
                    ("testsRef", tests_ref),
                    ("awsEndpoint", self.moto.url.as_str()),
                    ("notifyUrl", notify.as_str()),
                ],
            )
            .await
    }
}

fn step_phase(run: &CompositionRun, step: &str) -> Option<StepPhase> {
    run.status
        .as_ref()?
        .steps
        .iter()
        .find(|s| s.name == step)
        .map(|s| s.phase)
}

#[tokio::test]
async fn acceptance_cycle_succeeds_and_leaves_no_instance() -> anyhow::Result<()> {
    let w = world("accept-ok").await?;
    let name = w.start("main").await?;
    let waiting = w
        .env
        .wait_phase(
            &name,
            &[RunPhase::WaitingApproval, RunPhase::Failed],
            RUN_TIMEOUT,
        )
        .await?;
    let status = waiting.status.clone().unwrap_or_default();
    assert_eq!(
        status.phase,
        RunPhase::WaitingApproval,
        "status: {status:#?}"
    );

    // The instance runs, it is in the ledger, and the war reached the deploy endpoint.
    let live = w.moto.live_instances().await?;
    assert_eq!(live.len(), 1, "instances: {live:?}");
    let ledger: Vec<&str> = status.resources.iter().map(|r| r.id.as_str()).collect();
    assert!(
        live[0].starts_with(ledger.first().copied().unwrap_or("none")),
        "ledger {ledger:?}, moto {live:?}"
    );
    let deploys: Vec<_> = w
        .sink
        .records()
        .await?
        .into_iter()
        .filter(|r| r["method"] == "PUT")
        .collect();
    assert_eq!(deploys.len(), 1, "deploys: {deploys:?}");
    assert_eq!(deploys[0]["size"], json!(w.war.len()));
    let checkout = status
        .steps
        .iter()
        .find(|s| s.name == "checkout-tests")
        .map(|s| s.outputs.clone())
        .unwrap_or_default();
    assert_eq!(
        checkout.get("commit").map(String::len),
        Some(40),
        "checkout outputs {checkout:?}"
    );

    w.env.cli(&["approve", &name, "sign-off"]).await?;
    let done = w.env.wait_finished(&name, RUN_TIMEOUT).await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Succeeded, "status: {status:#?}");
    assert!(
        status.resources.is_empty(),
        "ledger: {:?}",
        status.resources
    );
    assert_eq!(step_phase(&done, "deprovision"), Some(StepPhase::Succeeded));
    assert!(
        w.moto.live_instances().await?.is_empty(),
        "moto still runs an instance"
    );

    let log = w.env.cli(&["logs", &name]).await?;
    assert!(
        log.lines()
            .any(|l| l.starts_with("[run-tests") && l.contains("Tests run: 2, Failures: 0")),
        "log:\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn failing_tests_notify_qa_and_still_terminate_the_instance() -> anyhow::Result<()> {
    let w = world("accept-fail").await?;
    let name = w.start("failing").await?;
    let done = w.env.wait_finished(&name, RUN_TIMEOUT).await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Failed, "status: {status:#?}");
    assert_eq!(step_phase(&done, "run-tests"), Some(StepPhase::Failed));
    assert_eq!(step_phase(&done, "deprovision"), Some(StepPhase::Skipped));
    // The cleanup, not the skipped deprovision step, terminated the instance.
    assert_eq!(
        status.cleanup.as_ref().map(|c| c.phase),
        Some(StepPhase::Succeeded),
        "{:?}",
        status.cleanup
    );
    assert!(status.resources.is_empty());
    assert!(
        w.moto.live_instances().await?.is_empty(),
        "moto still runs an instance"
    );
    let pods = w.env.step_pods(&name).await?;
    assert_eq!(
        pods.iter().filter(|(s, _, _)| s == "run-tests").count(),
        2,
        "one retry: {pods:?}"
    );

    // onFailure started notify-qa, which told the webhook what failed.
    let notify_run = status.on_failure_run.clone().unwrap_or_default();
    let notified = w.env.wait_finished(&notify_run, RUN_TIMEOUT).await?;
    assert_eq!(notified.status.map(|s| s.phase), Some(RunPhase::Succeeded));
    let records = w.sink.records().await?;
    let note = records
        .iter()
        .find(|r| r["method"] == "POST" && r["path"] == "/notify");
    let text = note.and_then(|r| r["body"].as_str()).unwrap_or_default();
    assert!(
        text.contains(&name) && text.contains("run-tests"),
        "notification: {text:?}"
    );
    Ok(())
}

#[tokio::test]
async fn deleting_a_run_midway_terminates_its_instance() -> anyhow::Result<()> {
    let w = world("accept-delete").await?;
    let name = w.start("main").await?;
    w.env
        .wait_phase(&name, &[RunPhase::WaitingApproval], RUN_TIMEOUT)
        .await?;
    assert_eq!(w.moto.live_instances().await?.len(), 1);

    let runs: Api<CompositionRun> = Api::namespaced(w.env.client.clone(), &w.env.ns.name);
    runs.delete(&name, &DeleteParams::default()).await?;
    wait_for(
        "the deleted run to go away after its cleanup",
        RUN_TIMEOUT,
        || async {
            match runs.get_opt(&name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(r) => Err(format!(
                    "still there: {:?}",
                    r.status.map(|s| (s.phase, s.cleanup))
                )),
            }
        },
    )
    .await?;
    assert!(
        w.moto.live_instances().await?.is_empty(),
        "moto still runs an instance"
    );
    Ok(())
}

/// The rerun: the seed's cycle, held for a rerun (`rerunWindow`), whose tests fail
/// for a reason outside the release (the environment). After the fix, `kubectl maestro
/// rerun` runs only run-tests, sign-off and deprovision, against the same instance and in
/// the same workspace (the checked-out tests and the downloaded war are still there); the
/// source hands its ledger over and removes nothing, and once the rerun ends no instance is
/// left.
#[tokio::test]
async fn a_rerun_runs_only_the_failed_tests_and_what_follows_on_the_same_instance()
-> anyhow::Result<()> {
    let w = world("accept-rerun").await?;
    let compositions: Api<maestro_api::Composition> =
        Api::namespaced(w.env.client.clone(), &w.env.ns.name);
    compositions
        .patch(
            "acceptance-tests",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"rerunWindow": "10m"}})),
        )
        .await?;
    let name = w.start("until-fixed").await?;
    let failed = w.env.wait_finished(&name, RUN_TIMEOUT).await?;
    let status = failed.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Failed, "status: {status:#?}");
    assert_eq!(step_phase(&failed, "run-tests"), Some(StepPhase::Failed));
    // Held, not removed: the instance is still there for the rerun.
    assert_eq!(
        status.cleanup.as_ref().map(|c| c.phase),
        Some(StepPhase::Pending),
        "{:?}",
        status.cleanup
    );
    let instance = status
        .resources
        .first()
        .map(|r| r.id.clone())
        .unwrap_or_default();
    let live = w.moto.live_instances().await?;
    assert!(
        live.len() == 1 && live[0].starts_with(&instance),
        "ledger {instance:?}, moto {live:?}"
    );

    // The environment is fixed; rerun from the failed step.
    std::fs::write(w.sink.root.join("fixed"), "yes\n")?;
    let said = w.env.cli(&["rerun", &name]).await?;
    let rerun = said
        .split_whitespace()
        .find_map(|word| word.strip_prefix("compositionrun/"))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no run name in {said:?}"))?;
    let waiting = w
        .env
        .wait_phase(
            &rerun,
            &[
                RunPhase::WaitingApproval,
                RunPhase::Failed,
                RunPhase::Invalid,
            ],
            RUN_TIMEOUT,
        )
        .await?;
    let rs = waiting.status.clone().unwrap_or_default();
    assert_eq!(rs.phase, RunPhase::WaitingApproval, "rerun status: {rs:#?}");
    for reused in ["fetch-war", "provision", "deploy", "checkout-tests"] {
        let st = rs.steps.iter().find(|s| s.name == reused);
        assert_eq!(
            st.map(|s| (s.phase, s.message.clone().unwrap_or_default())),
            Some((StepPhase::Succeeded, format!("reused from {name}"))),
            "{reused}: {st:?}"
        );
    }
    // Only run-tests ran a pod (once: the environment is fixed).
    let pods = w.env.step_pods(&rerun).await?;
    let steps: Vec<&str> = pods.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(steps, ["run-tests"], "the rerun's pods: {pods:?}");
    // The same instance, now in the rerun's ledger, still naming the run that tagged it.
    let ledger: Vec<(String, Option<String>)> = rs
        .resources
        .iter()
        .map(|r| (r.id.clone(), r.run.clone()))
        .collect();
    assert_eq!(ledger, [(instance.clone(), Some(name.clone()))]);
    assert_eq!(w.moto.live_instances().await?.len(), 1);
    // The source handed it over and will remove nothing.
    let runs: Api<CompositionRun> = Api::namespaced(w.env.client.clone(), &w.env.ns.name);
    let source = runs.get(&name).await?.status.unwrap_or_default();
    assert_eq!(
        source.handed_over.as_ref().map(|h| h.run.as_str()),
        Some(rerun.as_str())
    );
    assert!(source.resources.is_empty(), "{:?}", source.resources);
    assert_eq!(
        source.cleanup.as_ref().map(|c| c.phase),
        Some(StepPhase::Skipped)
    );
    // The war was deployed once, by the source.
    let deploys = w
        .sink
        .records()
        .await?
        .into_iter()
        .filter(|r| r["method"] == "PUT")
        .count();
    assert_eq!(deploys, 1);

    // An approval is never reused: the rerun's gate asks again.
    w.env.cli(&["approve", &rerun, "sign-off"]).await?;
    let done = w.env.wait_finished(&rerun, RUN_TIMEOUT).await?;
    let rs = done.status.clone().unwrap_or_default();
    assert_eq!(rs.phase, RunPhase::Succeeded, "rerun status: {rs:#?}");
    assert_eq!(step_phase(&done, "deprovision"), Some(StepPhase::Succeeded));
    assert!(rs.resources.is_empty(), "ledger: {:?}", rs.resources);
    assert!(
        w.moto.live_instances().await?.is_empty(),
        "moto still runs an instance"
    );
    let log = w.env.cli(&["logs", &rerun]).await?;
    assert!(
        log.lines()
            .any(|l| l.starts_with("[run-tests") && l.contains("Tests run: 2, Failures: 0")),
        "log:\n{log}"
    );
    Ok(())
}
