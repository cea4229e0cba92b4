//! `kubectl maestro run COMPOSITION [-p key=value]... [--wait]`

use std::process::ExitCode;

use kube::Api;
use kube::api::PostParams;
use maestro_api::{
    Composition, CompositionRun, CompositionRunSpec, CompositionRunStatus, RunPhase, StepPhase,
};

use crate::Target;
use crate::identity::whoami;
use crate::lookup::{self, POLL_INTERVAL, get_composition, retrying};
use crate::params::{check_params, parse_param};
use crate::table::wire_name;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The Composition to run.
    pub composition: String,
    /// A parameter of the composition, as key=value; repeat for several.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Wait until the run ends; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
}

pub async fn run(target: &Target, args: RunArgs) -> anyhow::Result<ExitCode> {
    let composition = get_composition(target, &args.composition).await?;
    // Only a warning: the operator checks again when the run starts, and what made the
    // composition invalid (a missing Task) may have been fixed since.
    if let Some(problem) = not_ready(&composition) {
        eprintln!(
            "warning: composition {:?} is not ready: {problem}",
            args.composition
        );
    }
    let params = check_params(&args.composition, &composition.spec.params, &args.params)
        .map_err(anyhow::Error::msg)?;

    // Who starts the run, as the API server authenticates them: the admission policy
    // refuses a run that names anyone else, or nobody, and a gate that forbids
    // self-approval ignores this user's decisions.
    let caller = whoami(&target.client).await?;
    let mut new_run = CompositionRun::new(
        "",
        CompositionRunSpec {
            composition: args.composition.clone(),
            params,
            cancel: false,
            priority: 0,
            started_by: Some(caller.username),
            rerun_of: None,
        },
    );
    new_run.metadata.name = None;
    new_run.metadata.generate_name = Some(format!("{}-", args.composition));
    let runs: Api<CompositionRun> = Api::namespaced(target.client.clone(), &target.namespace);
    let created = runs
        .create(&PostParams::default(), &new_run)
        .await
        .map_err(|error| lookup::api_error(error, "creating the compositionrun"))?;
    let name = created.metadata.name.unwrap_or_default();
    println!("compositionrun/{name} created");

    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    wait_and_report(&runs, &name, &target.namespace).await
}

/// `--wait`: waits until the run ends, printing each phase it enters; success only if it
/// succeeded, else says why it did not.
pub async fn wait_and_report(
    runs: &Api<CompositionRun>,
    name: &str,
    namespace: &str,
) -> anyhow::Result<ExitCode> {
    let status = wait_until_finished(runs, name, namespace).await?;
    if status.phase == RunPhase::Succeeded {
        return Ok(ExitCode::SUCCESS);
    }
    let why = failure_summary(&status)
        .map(|why| format!(": {why}"))
        .unwrap_or_default();
    eprintln!(
        "error: compositionrun {name:?} ended in phase {}{why}",
        wire_name(&status.phase)
    );
    Ok(ExitCode::FAILURE)
}

/// Why the operator found the composition unfit to run, if it did (`Ready=False`).
fn not_ready(composition: &Composition) -> Option<String> {
    composition
        .status
        .iter()
        .flat_map(|status| &status.conditions)
        .find(|condition| condition.type_ == "Ready" && condition.status == "False")
        .map(|condition| {
            if condition.message.is_empty() {
                condition.reason.clone()
            } else {
                condition.message.clone()
            }
        })
}

/// Polls the run, printing each phase it enters, until it has ended.
async fn wait_until_finished(
    runs: &Api<CompositionRun>,
    name: &str,
    namespace: &str,
) -> anyhow::Result<CompositionRunStatus> {
    let mut shown: Option<RunPhase> = None;
    loop {
        let run = retrying(&format!("reading compositionrun {name:?}"), || {
            runs.get_opt(name)
        })
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "compositionrun {name:?} was deleted from namespace {namespace:?} while waiting"
            )
        })?;
        // No status yet: the operator has not seen the run; keep waiting.
        if let Some(status) = run.status {
            if shown != Some(status.phase) {
                println!("compositionrun/{name} {}", wire_name(&status.phase));
                shown = Some(status.phase);
            }
            if status.phase.is_finished() {
                return Ok(status);
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Why a run did not succeed: the message of its `Succeeded=False` (or `Invalid`)
/// condition, else its first failed step's.
pub fn failure_summary(status: &CompositionRunStatus) -> Option<String> {
    let from_condition = status
        .conditions
        .iter()
        .filter(|condition| !condition.message.is_empty())
        .find(|condition| {
            (condition.type_ == "Succeeded" && condition.status == "False")
                || (condition.type_ == "Invalid" && condition.status == "True")
        })
        .map(|condition| condition.message.clone());
    from_condition.or_else(|| {
        status
            .steps
            .iter()
            .find(|step| step.phase == StepPhase::Failed)
            .map(|step| match &step.message {
                Some(message) => format!("step {:?} failed: {message}", step.name),
                None => format!("step {:?} failed", step.name),
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use maestro_api::StepStatus;

    #[test]
    fn explains_a_failure_by_condition_then_step() {
        let failed_step = StepStatus {
            name: "deploy".into(),
            phase: StepPhase::Failed,
            message: Some("exit code 2".into()),
            ..Default::default()
        };
        let mut status = CompositionRunStatus {
            phase: RunPhase::Failed,
            steps: vec![failed_step],
            ..Default::default()
        };
        assert_eq!(
            failure_summary(&status).as_deref(),
            Some("step \"deploy\" failed: exit code 2")
        );
        status.conditions.push(Condition {
            type_: "Succeeded".into(),
            status: "False".into(),
            reason: "StepFailed".into(),
            message: "step deploy failed".into(),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            observed_generation: None,
        });
        assert_eq!(
            failure_summary(&status).as_deref(),
            Some("step deploy failed")
        );
    }
}
