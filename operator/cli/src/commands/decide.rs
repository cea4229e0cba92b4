//! `kubectl maestro approve|reject RUN STEP [--comment TEXT]`

use std::process::ExitCode;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};
use maestro_api::{
    Approval, ApprovalGate, ApprovalSpec, CompositionRun, CompositionSpec, Decision, StepPhase,
};

use crate::Target;
use crate::identity::whoami;
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
    let caller = whoami(&target.client).await?;
    let gate = gate_of(&run, &args.step);
    // The operator would ignore this decision (and say why in the run's status); saying
    // so now spares the approver a decision that silently changes nothing.
    if let Some(gate) = &gate
        && let Some(why) = gate.ineligible(
            &caller.username,
            &caller.groups,
            run.spec.started_by.as_deref(),
        )
    {
        anyhow::bail!(
            "{}/{}: {why}; the gate would not count this decision{}",
            args.run,
            args.step,
            if run.spec.started_by.as_deref() == Some(caller.username.as_str()) {
                " (to stop your own run, kubectl maestro cancel it)"
            } else {
                ""
            }
        );
    }

    let mut approval = Approval::new(
        "",
        ApprovalSpec {
            run: args.run.clone(),
            step: args.step.clone(),
            decision,
            approved_by: caller.username.clone(),
            approver_groups: groups_to_record(gate.as_ref(), &caller.groups),
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
    let user = caller.username;
    println!(
        "approval {}: {}/{} {verb} by {user}",
        created.metadata.name.unwrap_or_default(),
        args.run,
        args.step
    );
    if let Some(gate) = gate.filter(|g| g.required_approvals() > 1 && decision == Decision::Approve)
    {
        println!(
            "the gate needs {} different approvers; kubectl maestro describe {} shows how many it has",
            gate.required_approvals(),
            args.run
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The approval gate of `step`, from the composition snapshot the run follows; `None`
/// when the run has no snapshot the CLI can read (the operator still judges).
pub fn gate_of(run: &CompositionRun, step: &str) -> Option<ApprovalGate> {
    let snapshot = run.status.as_ref()?.composition_spec.clone()?;
    let spec: CompositionSpec = serde_json::from_value(snapshot).ok()?;
    spec.steps
        .into_iter()
        .find(|candidate| candidate.name == step)?
        .approval
}

/// The caller's groups an Approval records: those the gate names, which is all the
/// operator needs, and keeps the Approval small however many groups the caller has.
/// The admission policy checks each against the request's groups.
pub fn groups_to_record(gate: Option<&ApprovalGate>, groups: &[String]) -> Vec<String> {
    let Some(gate) = gate else {
        return Vec::new();
    };
    groups
        .iter()
        .filter(|group| gate.groups.contains(group))
        .cloned()
        .collect()
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
                started_by: None,
                rerun_of: None,
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

    fn gated_run(gate: serde_json::Value) -> CompositionRun {
        let mut run = run_with(&[("sign-off", StepPhase::WaitingApproval)]);
        if let Some(status) = run.status.as_mut() {
            status.composition_spec = Some(serde_json::json!({
                "steps": [
                    {"name": "build", "task": "shell"},
                    {"name": "sign-off", "approval": gate},
                ]
            }));
        }
        run
    }

    #[test]
    fn reads_the_gate_from_the_runs_snapshot() {
        let run = gated_run(serde_json::json!({"approvers": 2, "groups": ["release-managers"]}));
        let gate = gate_of(&run, "sign-off").expect("the gate");
        assert_eq!(gate.required_approvals(), 2);
        assert!(!gate.self_approval_allowed());
        assert_eq!(gate_of(&run, "build"), None);
        assert_eq!(gate_of(&run_with(&[]), "sign-off"), None);
    }

    #[test]
    fn records_only_the_groups_the_gate_names() {
        let run = gated_run(serde_json::json!({"groups": ["release-managers", "sre"]}));
        let gate = gate_of(&run, "sign-off");
        let mine = vec![
            "system:authenticated".to_string(),
            "sre".to_string(),
            "developers".to_string(),
        ];
        assert_eq!(groups_to_record(gate.as_ref(), &mine), vec!["sre"]);
        assert!(groups_to_record(None, &mine).is_empty());
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
