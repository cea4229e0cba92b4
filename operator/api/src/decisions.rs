//! A person's decision on an approval gate, as `kubectl maestro approve|reject` and the
//! UI make it: the checks before it is made, and the Approval that records it. The
//! operator judges every Approval again; these checks spare the approver a decision that
//! would change nothing, and say why.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::{
    Approval, ApprovalGate, ApprovalSpec, CompositionRun, CompositionSpec, Decision, StepPhase,
};

/// Why a decision is not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The run has no such step, or the step does not wait for approval.
    NotWaiting(String),
    /// The gate would not count this person's decision (self-approval, a group missing).
    Ineligible(String),
    /// The run object lacks its UID (it was not read from the API server).
    NoUid(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotWaiting(why) | Self::Ineligible(why) | Self::NoUid(why) => f.write_str(why),
        }
    }
}

/// Who decides, as the API server authenticates them (never a name someone typed).
pub struct Decider<'a> {
    pub username: &'a str,
    pub groups: &'a [String],
}

/// The Approval recording `decider`'s `decision` on `step` of `run`, with the gate it
/// counts for (`None`: the run's snapshot does not show one; the operator still judges).
/// The Approval is owned by the run's UID, so the operator counts it for this very run
/// (not another of the same name), and it goes when the run goes.
pub fn approval_for(
    run: &CompositionRun,
    step: &str,
    decision: Decision,
    decider: &Decider<'_>,
    comment: Option<String>,
) -> Result<(Approval, Option<ApprovalGate>), Refusal> {
    check_waiting(run, step).map_err(Refusal::NotWaiting)?;
    let name = run.name_any();
    let gate = gate_of(run, step);
    if let Some(why) = gate.as_ref().and_then(|gate| {
        gate.ineligible(
            decider.username,
            decider.groups,
            run.spec.started_by.as_deref(),
        )
    }) {
        return Err(Refusal::Ineligible(format!(
            "{name}/{step}: {why}; the gate would not count this decision"
        )));
    }
    let uid = run
        .uid()
        .ok_or_else(|| Refusal::NoUid(format!("run {name} has no uid")))?;
    let mut approval = Approval::new(
        "",
        ApprovalSpec {
            run: name.clone(),
            step: step.to_string(),
            decision,
            approved_by: decider.username.to_string(),
            approver_groups: groups_to_record(gate.as_ref(), decider.groups),
            comment: comment.filter(|text| !text.trim().is_empty()),
        },
    );
    approval.metadata.name = None;
    approval.metadata.generate_name = Some(format!("{name}-{step}-"));
    approval.metadata.owner_references = Some(vec![OwnerReference {
        api_version: CompositionRun::api_version(&()).into_owned(),
        kind: CompositionRun::kind(&()).into_owned(),
        name,
        uid,
        ..OwnerReference::default()
    }]);
    Ok((approval, gate))
}

/// The approval gate of `step`, from the composition snapshot the run follows; `None`
/// when the run has no snapshot that can be read.
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
            serde_json::to_value(found.phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
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
    use crate::{CompositionRunSpec, CompositionRunStatus, StepStatus};

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

    #[test]
    fn the_approval_is_owned_by_the_runs_uid_and_names_the_decider() {
        let mut run = gated_run(
            serde_json::json!({"groups": ["release-managers"], "allowSelfApproval": false}),
        );
        run.spec.started_by = Some("carol".into());
        let groups = vec!["release-managers".to_string(), "everyone".to_string()];
        let dave = Decider {
            username: "dave",
            groups: &groups,
        };
        // Read from the API server, a run has its UID; a run without one is refused.
        let refused = approval_for(&run, "sign-off", Decision::Approve, &dave, None);
        assert!(matches!(refused, Err(Refusal::NoUid(_))), "{refused:?}");
        run.metadata.uid = Some("uid-y".into());
        let (approval, gate) = approval_for(
            &run,
            "sign-off",
            Decision::Approve,
            &dave,
            Some("  ".into()),
        )
        .expect("dave may approve");
        assert!(gate.is_some());
        assert_eq!(approval.spec.approved_by, "dave");
        assert_eq!(approval.spec.approver_groups, ["release-managers"]);
        assert_eq!(approval.spec.comment, None, "a blank comment is none");
        assert_eq!(
            approval.metadata.generate_name.as_deref(),
            Some("y-sign-off-")
        );
        let owner = &approval.metadata.owner_references.expect("owned")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("CompositionRun", "uid-y")
        );

        let carol = Decider {
            username: "carol",
            groups: &groups,
        };
        let refused = approval_for(&run, "sign-off", Decision::Approve, &carol, None);
        assert!(
            matches!(&refused, Err(Refusal::Ineligible(why)) if why.contains("carol started the run")),
            "{refused:?}"
        );
        let refused = approval_for(&run, "build", Decision::Approve, &dave, None);
        assert!(
            matches!(refused, Err(Refusal::NotWaiting(_))),
            "{refused:?}"
        );
    }
}
