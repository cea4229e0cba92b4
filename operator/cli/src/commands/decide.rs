//! `kubectl maestro approve|reject RUN STEP [--comment TEXT]`

use std::process::ExitCode;

use kube::Api;
use kube::api::PostParams;
use maestro_api::decisions::{Decider, Refusal, approval_for};
use maestro_api::{Approval, Decision};

use crate::Target;
use crate::identity::whoami;
use crate::lookup::{api_error, get_run};

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
    // The approver is whoever the API server authenticates, never a name from the
    // command line: the admission policy refuses an approvedBy that differs anyway.
    let caller = whoami(&target.client).await?;
    let decider = Decider {
        username: &caller.username,
        groups: &caller.groups,
    };
    let (approval, gate) = match approval_for(&run, &args.step, decision, &decider, args.comment) {
        Ok(made) => made,
        // The operator would ignore this decision (and say why in the run's status);
        // saying so now spares the approver a decision that silently changes nothing.
        Err(Refusal::Ineligible(why))
            if run.spec.started_by.as_deref() == Some(caller.username.as_str()) =>
        {
            anyhow::bail!("{why} (to stop your own run, kubectl maestro cancel it)")
        }
        Err(refused) => anyhow::bail!("{refused}"),
    };
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
