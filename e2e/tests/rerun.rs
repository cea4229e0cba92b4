//! `kubectl maestro rerun` with `examples/rerun/`: a rerun with a changed param reruns the
//! failed step and what follows, reusing the others' outputs and the workspace files they
//! left (the EC2 cycle is in acceptance.rs). A second rerun of the same run is
//! refused, naming the first. A rerun of a fork starts again only the child that failed.

use std::time::Duration;

use anyhow::{Context, Result};
use kube::{Api, ResourceExt, api::ListParams};
use maestro_api::{CompositionRun, RunPhase, StepPhase};
use maestro_e2e::maestro::Env;

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn created(said: &str) -> Result<String> {
    said.split_whitespace()
        .find_map(|word| word.strip_prefix("compositionrun/"))
        .map(str::to_string)
        .with_context(|| format!("no run name in {said:?}"))
}

#[tokio::test]
async fn a_rerun_with_a_changed_param_reuses_outputs_and_workspace_files() -> Result<()> {
    let env = Env::new("rerun-example").await?;
    env.apply_example_ready("rerun/flaky-environment.yaml")
        .await?;
    let first = env.start_run("flaky-environment", &[]).await?;
    let failed = env.wait_finished(&first, RUN_TIMEOUT).await?;
    let status = failed.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Failed, "{status:#?}");
    let machine = status
        .steps
        .iter()
        .find(|s| s.name == "provision")
        .and_then(|s| s.outputs.get("machine").cloned())
        .context("no machine output")?;

    let said = env.cli(&["rerun", &first, "-p", "ready=yes"]).await?;
    assert!(said.contains("param ready: \"no\" -> \"yes\""), "{said}");
    let rerun = created(&said)?;
    let done = env.wait_finished(&rerun, RUN_TIMEOUT).await?;
    let rs = done.status.clone().unwrap_or_default();
    assert_eq!(rs.phase, RunPhase::Succeeded, "{rs:#?}");
    let step = |name: &str| rs.steps.iter().find(|s| s.name == name).cloned();
    for reused in ["provision", "checkout"] {
        let st = step(reused).context("no step")?;
        assert_eq!(st.phase, StepPhase::Succeeded);
        assert_eq!(
            st.message.as_deref(),
            Some(format!("reused from {first}").as_str())
        );
    }
    assert_eq!(
        step("provision").map(|s| s.outputs["machine"].clone()),
        Some(machine.clone()),
        "the reused output is the first run's"
    );
    let pods = env.step_pods(&rerun).await?;
    let steps: Vec<&str> = pods.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(steps, ["report", "test"], "{pods:?}");
    // The test step read the first run's output and the file its checkout left.
    let log = env.cli(&["logs", &rerun]).await?;
    assert!(
        log.contains(&format!("testing on {machine} with smoke test")),
        "log:\n{log}"
    );
    let condition = rs
        .conditions
        .iter()
        .find(|c| c.type_ == "Rerun")
        .map(|c| c.message.clone());
    assert_eq!(
        condition.as_deref(),
        Some(format!("reruns test, report of {first}; reuses provision, checkout").as_str())
    );

    // The first run's ledger and workspace went to that rerun: a second is refused.
    let second = created(&env.cli(&["rerun", &first, "-p", "ready=yes"]).await?)?;
    let refused = env.wait_finished(&second, RUN_TIMEOUT).await?;
    let why = refused
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Invalid"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        why.contains(&format!("was rerun already by {rerun}")),
        "{why}"
    );
    Ok(())
}

#[tokio::test]
async fn a_rerun_of_a_fork_starts_again_only_the_child_that_failed() -> Result<()> {
    let env = Env::new("rerun-fork").await?;
    env.apply_example_ready("rerun/fork-suites.yaml").await?;
    let first = env.start_run("suites", &[]).await?;
    let failed = env.wait_finished(&first, RUN_TIMEOUT).await?;
    let status = failed.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Failed, "{status:#?}");
    let fork = |s: &maestro_api::CompositionRunStatus| {
        s.steps.iter().find(|st| st.name == "suites").cloned()
    };
    let source_fork = fork(&status).context("no suites step")?;
    let [unit_child, flaky_child] = source_fork.child_runs.as_slice() else {
        anyhow::bail!("two child runs: {source_fork:#?}");
    };
    assert_eq!(source_fork.failed_runs, std::slice::from_ref(flaky_child));

    let rerun = created(&env.cli(&["rerun", &first, "-p", "ready=yes"]).await?)?;
    let done = env.wait_finished(&rerun, RUN_TIMEOUT).await?;
    let rs = done.status.clone().unwrap_or_default();
    assert_eq!(rs.phase, RunPhase::Succeeded, "{rs:#?}");
    let rerun_fork = fork(&rs).context("no suites step")?;
    assert_eq!(rerun_fork.reused_runs, std::slice::from_ref(unit_child));
    assert_eq!(rerun_fork.child_runs.first(), Some(unit_child));
    let new_child = rerun_fork.child_runs.get(1).context("no second child")?;
    assert_ne!(new_child, flaky_child, "the failed child runs again, anew");

    // What ran, counted by the cluster: the unit suite once in all, the flaky one twice.
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    let all = runs.list(&ListParams::default()).await?.items;
    let of = |composition: &str| -> Vec<String> {
        all.iter()
            .filter(|r| r.spec.composition == composition)
            .map(|r| r.name_any())
            .collect()
    };
    assert_eq!(of("unit-suite"), std::slice::from_ref(unit_child));
    let mut flaky = of("flaky-suite");
    flaky.sort();
    let mut want = vec![flaky_child.clone(), new_child.clone()];
    want.sort();
    assert_eq!(flaky, want);
    let describe = env.cli(&["describe", &rerun]).await?;
    assert!(
        describe.contains(&format!("{unit_child} (reused), {new_child}")),
        "{describe}"
    );
    Ok(())
}
