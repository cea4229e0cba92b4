//! `kubectl maestro approve|reject RUN STEP [--comment TEXT]`

use std::process::ExitCode;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt};
use maestro_api::{Approval, ApprovalSpec, CompositionRun, Decision, StepPhase};

use crate::Target;
use crate::lookup::{api_error, get_run};
use crate::table::wire_name;

#[derive(clap::Args, Debug)]
pub struct DecideArgs {
    /// The CompositionRun.
    pub run: String,
    /// Its step that waits for approval.
    pub step: String,
    /// A note kept with the decision.
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
}

pub async fn run(
    target: &Target,
    args: DecideArgs,
    decision: Decision,
) -> anyhow::Result<ExitCode> {
    let run = get_run(target, &args.run).await?;
    check_waiting(&run, &args.step).map_err(anyhow::Error::msg)?;
    // The approver is whoever the API server authenticates, never a name from the
    // command line: the admission policy refuses an approvedBy that differs anyway.
    let user = authenticated_user(&target.client).await?;

    let mut approval = Approval::new(
        "",
        ApprovalSpec {
            run: args.run.clone(),
            step: args.step.clone(),
            decision,
            approved_by: user.clone(),
            comment: args.comment,
        },
    );
    approval.metadata.name = None;
    approval.metadata.generate_name = Some(format!("{}-{}-", args.run, args.step));
    // Owned by this very run (its UID): the operator counts no approval owned by another
    // run of the same name, and the approval goes when its run goes.
    approval.metadata.owner_references = Some(vec![OwnerReference {
        api_version: CompositionRun::api_version(&()).into_owned(),
        kind: CompositionRun::kind(&()).into_owned(),
        name: run.name_any(),
        uid: run
            .uid()
            .ok_or_else(|| anyhow::anyhow!("run {} has no uid", args.run))?,
        ..OwnerReference::default()
    }]);
    let approvals: Api<Approval> = Api::namespaced(target.client.clone(), &target.namespace);
    let created = approvals
        .create(&PostParams::default(), &approval)
        .await
        .map_err(|error| api_error(error, "creating the approval"))?;
    let verb = match decision {
        Decision::Approve => "approved",
        Decision::Reject => "rejected",
    };
    println!(
        "approval {}: {}/{} {verb} by {user}",
        created.metadata.name.unwrap_or_default(),
        args.run,
        args.step
    );
    Ok(ExitCode::SUCCESS)
}

/// The caller's user name as the API server sees it (`kubectl auth whoami`).
async fn authenticated_user(client: &Client) -> anyhow::Result<String> {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|error| api_error(error, "asking the API server who you are"))?;
    review
        .status
        .and_then(|status| status.user_info)
        .and_then(|user| user.username)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!("the API server did not say who you are (empty SelfSubjectReview)")
        })
}

/// Whether the run has a step of that name waiting for approval; if not, why not.
pub fn check_waiting(run: &CompositionRun, step: &str) -> Result<(), String> {
    let run_name = run.metadata.name.as_deref().unwrap_or_default();
    let steps = run
        .status
        .as_ref()
        .map(|status| status.steps.as_slice())
        .unwrap_or_default();
    match steps.iter().find(|candidate| candidate.name == step) {
        Some(found) if found.phase == StepPhase::WaitingApproval => Ok(()),
        Some(found) => Err(format!(
            "step {step:?} of run {run_name:?} is not waiting for approval (phase {})",
            wire_name(&found.phase)
        )),
        None if steps.is_empty() => Err(format!(
            "run {run_name:?} has no step {step:?} (the operator has not reported its steps yet)"
        )),
        None => {
            let names: Vec<&str> = steps
                .iter()
                .map(|candidate| candidate.name.as_str())
                .collect();
            Err(format!(
                "run {run_name:?} has no step {step:?}; its steps are: {}",
                names.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maestro_api::{CompositionRunSpec, CompositionRunStatus, StepStatus};

    fn run_with(steps: &[(&str, StepPhase)]) -> CompositionRun {
        let mut run = CompositionRun::new(
            "y",
            CompositionRunSpec {
                composition: "c".into(),
                params: Default::default(),
                cancel: false,
                priority: 0,
            },
        );
        run.status = Some(CompositionRunStatus {
            steps: steps
                .iter()
                .map(|(name, phase)| StepStatus {
                    name: name.to_string(),
                    phase: *phase,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        run
    }

    #[test]
    fn accepts_only_a_step_waiting_for_approval() {
        let run = run_with(&[
            ("build", StepPhase::Succeeded),
            ("x", StepPhase::WaitingApproval),
        ]);
        assert_eq!(check_waiting(&run, "x"), Ok(()));
        let run = run_with(&[("x", StepPhase::Running)]);
        assert_eq!(
            check_waiting(&run, "x").unwrap_err(),
            r#"step "x" of run "y" is not waiting for approval (phase Running)"#
        );
    }

    #[test]
    fn names_the_steps_when_the_step_is_unknown() {
        let run = run_with(&[
            ("build", StepPhase::Running),
            ("sign-off", StepPhase::Pending),
        ]);
        let error = check_waiting(&run, "signoff").unwrap_err();
        assert!(error.contains("build, sign-off"), "{error}");
        let error = check_waiting(&run_with(&[]), "x").unwrap_err();
        assert!(error.contains("not reported its steps yet"), "{error}");
    }
}
