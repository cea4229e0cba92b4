//! `kubectl maestro get [RUN]`

use std::io::Write;
use std::process::ExitCode;

use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;
use maestro_api::CompositionRun;

use crate::Target;
use crate::lookup::{api_error, get_run};
use crate::table::{render_table, wire_name};
use crate::timefmt::{format_age, seconds_between};

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Show only this run (default: every run in the namespace).
    pub run: Option<String>,
}

const HEADERS: [&str; 5] = ["NAME", "COMPOSITION", "PHASE", "PROGRESS", "AGE"];

pub async fn run(target: &Target, args: GetArgs) -> anyhow::Result<ExitCode> {
    let mut runs = match &args.run {
        Some(name) => vec![get_run(target, name).await?],
        None => {
            let api: Api<CompositionRun> =
                Api::namespaced(target.client.clone(), &target.namespace);
            api.list(&ListParams::default())
                .await
                .map_err(|error| api_error(error, "listing compositionruns"))?
                .items
        }
    };
    if runs.is_empty() {
        // Like kubectl: the notice is not data, so it goes to stderr.
        eprintln!(
            "No compositionruns found in {} namespace.",
            target.namespace
        );
        return Ok(ExitCode::SUCCESS);
    }
    newest_last(&mut runs);
    let rows = rows(&runs, Timestamp::now());
    std::io::stdout()
        .lock()
        .write_all(render_table("", &HEADERS, &rows).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// Oldest first, so the run just started is at the bottom, next to the prompt.
fn newest_last(runs: &mut [CompositionRun]) {
    runs.sort_by(|a, b| {
        let created = |run: &CompositionRun| run.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

fn rows(runs: &[CompositionRun], now: Timestamp) -> Vec<Vec<String>> {
    runs.iter()
        .map(|run| {
            let status = run.status.as_ref();
            vec![
                run.metadata.name.clone().unwrap_or_default(),
                run.spec.composition.clone(),
                // No status yet: the operator has not picked the run up.
                status.map_or_else(String::new, |status| wire_name(&status.phase)),
                status
                    .and_then(|status| status.progress.clone())
                    .unwrap_or_default(),
                run.metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or_else(String::new, |created| {
                        format_age(seconds_between(created.0, now))
                    }),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use maestro_api::{CompositionRunSpec, CompositionRunStatus, RunPhase};

    fn run_created_at(name: &str, second: i64, phase: Option<RunPhase>) -> CompositionRun {
        let mut run = CompositionRun::new(
            name,
            CompositionRunSpec {
                composition: "acceptance-tests".into(),
                params: Default::default(),
                cancel: false,
                priority: 0,
                started_by: None,
                rerun_of: None,
            },
        );
        run.metadata.creation_timestamp = Some(Time(Timestamp::from_second(second).unwrap()));
        run.status = phase.map(|phase| CompositionRunStatus {
            phase,
            progress: Some("5/7".into()),
            ..Default::default()
        });
        run
    }

    #[test]
    fn lists_runs_newest_last() {
        let mut runs = vec![
            run_created_at("new", 1_000, None),
            run_created_at("old", 640, Some(RunPhase::WaitingApproval)),
        ];
        newest_last(&mut runs);
        let now = Timestamp::from_second(1_000).unwrap();
        let table = render_table("", &HEADERS, &rows(&runs, now));
        assert_eq!(
            table,
            "NAME   COMPOSITION        PHASE             PROGRESS   AGE\n\
             old    acceptance-tests   WaitingApproval   5/7        6m\n\
             new    acceptance-tests                                0s\n"
        );
    }
}
