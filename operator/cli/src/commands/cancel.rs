//! `kubectl maestro cancel RUN`

use std::process::ExitCode;

use kube::Api;
use kube::api::{Patch, PatchParams};
use maestro_api::CompositionRun;

use crate::Target;
use crate::lookup::{api_error, get_run, not_found};
use crate::table::wire_name;

#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// The CompositionRun to cancel.
    pub run: String,
}

pub async fn run(target: &Target, args: CancelArgs) -> anyhow::Result<ExitCode> {
    let run = get_run(target, &args.run).await?;
    if let Some(status) = run
        .status
        .as_ref()
        .filter(|status| status.phase.is_finished())
    {
        // Cancelling an ended run would only mark it, confusingly, as cancel requested.
        println!(
            "compositionrun/{} already ended (phase {}); nothing to cancel",
            args.run,
            wire_name(&status.phase)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let runs: Api<CompositionRun> = Api::namespaced(target.client.clone(), &target.namespace);
    let cancel = serde_json::json!({ "spec": { "cancel": true } });
    match runs
        .patch(&args.run, &PatchParams::default(), &Patch::Merge(&cancel))
        .await
    {
        Ok(_) => {}
        // Deleted between the read and the patch.
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            return Err(not_found("compositionrun", &args.run, &target.namespace));
        }
        Err(error) => return Err(api_error(error, "requesting the cancel")),
    }
    println!("compositionrun/{} cancel requested", args.run);
    Ok(ExitCode::SUCCESS)
}
