//! The operator core end to end: the real operator binary against the real cluster,
//! compositions from examples/, final phases, outputs, pods per step and logs.

use std::{collections::BTreeMap, time::Duration};

use maestro_e2e::maestro::Env;
use maestro_operator::api::{RunPhase, StepPhase};

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn outputs(run: &maestro_operator::api::CompositionRun, step: &str) -> BTreeMap<String, String> {
    run.status
        .as_ref()
        .and_then(|s| s.steps.iter().find(|x| x.name == step))
        .map(|s| s.outputs.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn hello_passes_an_output_along() -> anyhow::Result<()> {
    let env = Env::new("hello").await?;
    env.apply_example("hello/composition.yaml").await?;
    let name = env.start_run("hello", &[("who", "maestro")]).await?;
    let run = env.wait_finished(&name, RUN_TIMEOUT).await?;
    let status = run.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Succeeded, "status: {status:#?}");
    assert_eq!(status.progress.as_deref(), Some("3/3"));
    assert!(status.steps.iter().all(|s| s.phase == StepPhase::Succeeded));
    assert_eq!(outputs(&run, "greet")["greeting"], "hello maestro");
    assert_eq!(outputs(&run, "shout")["loud"], "HELLO MAESTRO");
    assert_eq!(outputs(&run, "count")["length"], "13");

    // One pod per step, one attempt each.
    let pods = env.step_pods(&name).await?;
    let steps: Vec<(&str, u32)> = pods.iter().map(|(s, a, _)| (s.as_str(), *a)).collect();
    assert_eq!(steps, vec![("count", 1), ("greet", 1), ("shout", 1)]);

    // The aggregated log, in execution order, each line prefixed with its step.
    let log = env.cli(&["logs", &name]).await?;
    let lines: Vec<&str> = log.lines().collect();
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
    let (greet, shout, count) = (
        at("hello maestro"),
        at("HELLO MAESTRO"),
        at("has 13 characters"),
    );
    assert!(
        greet.is_some() && shout.is_some() && count.is_some(),
        "log:\n{log}"
    );
    assert!(greet < shout && shout < count, "steps out of order:\n{log}");
    assert!(
        lines[greet.unwrap_or(0)].starts_with("[greet]"),
        "log:\n{log}"
    );
    Ok(())
}
