//! `kubectl maestro rerun RUN [--from STEP] [-p key=value]... [--wait]`: a new run that
//! reruns RUN's failed steps (or STEP and what follows it), reusing the rest.

use std::collections::BTreeMap;
use std::process::ExitCode;

use kube::api::PostParams;
use kube::{Api, ResourceExt};
use maestro_api::{CompositionRun, CompositionRunSpec, CompositionSpec, RerunOf, labels};

use crate::Target;
use crate::commands::run::wait_and_report;
use crate::identity::whoami;
use crate::lookup::{self, get_run};
use crate::params::{check_params, parse_param};
use crate::table::wire_name;

#[derive(clap::Args, Debug)]
pub struct RerunArgs {
    /// The run to rerun. It must have ended.
    pub run: String,
    /// Rerun this step and every step after it in the graph (default: the steps that did
    /// not succeed, and those after them).
    #[arg(long, value_name = "STEP")]
    pub from: Option<String>,
    /// Change a parameter for the rerun, as key=value; repeat for several. The others
    /// keep the run's values.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Wait until the rerun ends; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
}

pub async fn run(target: &Target, args: RerunArgs) -> anyhow::Result<ExitCode> {
    let source = get_run(target, &args.run).await?;
    let status = source.status.clone().unwrap_or_default();
    if !status.phase.is_finished() {
        anyhow::bail!(
            "compositionrun {:?} is {}: rerun it once it has ended (or cancel it first)",
            args.run,
            wire_name(&status.phase)
        );
    }
    let uid = source
        .uid()
        .ok_or_else(|| anyhow::anyhow!("compositionrun {:?} has no uid", args.run))?;
    // The rerun follows the run's snapshot: its steps and params are those it ran.
    let snapshot: CompositionSpec = status
        .composition_spec
        .clone()
        .and_then(|spec| serde_json::from_value(spec).ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "compositionrun {:?} never started ({}): there is nothing to rerun",
                args.run,
                wire_name(&status.phase)
            )
        })?;
    if let Some(from) = &args.from
        && !snapshot.steps.iter().any(|s| &s.name == from)
    {
        let names: Vec<&str> = snapshot.steps.iter().map(|s| s.name.as_str()).collect();
        anyhow::bail!(
            "compositionrun {:?} has no step {from:?}; its steps: {}",
            args.run,
            names.join(", ")
        );
    }
    let params = rerun_params(&source, &snapshot, &args.params).map_err(anyhow::Error::msg)?;
    for (key, (old, new)) in changed(&effective_params(&source, &snapshot), &params) {
        println!("param {key}: {old:?} -> {new:?}");
    }
    let caller = whoami(&target.client).await?;
    let mut rerun = CompositionRun::new(
        "",
        CompositionRunSpec {
            composition: source.spec.composition.clone(),
            params,
            cancel: false,
            priority: source.spec.priority,
            started_by: Some(caller.username),
            rerun_of: Some(RerunOf {
                run: args.run.clone(),
                uid,
                from: args.from.clone(),
            }),
        },
    );
    rerun.metadata.name = None;
    rerun.metadata.generate_name = Some(format!("{}-", labels::rerun_name_base(&args.run)));
    let runs: Api<CompositionRun> = Api::namespaced(target.client.clone(), &target.namespace);
    let created = runs
        .create(&PostParams::default(), &rerun)
        .await
        .map_err(|error| lookup::api_error(error, "creating the rerun"))?;
    let name = created.metadata.name.unwrap_or_default();
    let what = match &args.from {
        Some(from) => format!("from step {from}"),
        None => "its steps that did not succeed".to_string(),
    };
    println!(
        "compositionrun/{name} created: reruns {} ({what})",
        args.run
    );
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    wait_and_report(&runs, &name, &target.namespace).await
}

/// The rerun's params: the run's, with those given changed (each must be a param of the
/// run's composition snapshot).
fn rerun_params(
    source: &CompositionRun,
    snapshot: &CompositionSpec,
    given: &[(String, String)],
) -> Result<BTreeMap<String, String>, String> {
    // Checked as a new run's would be, with the run's own values as the defaults.
    let mut declared = snapshot.params.clone();
    for param in &mut declared {
        if let Some(value) = source.spec.params.get(&param.name) {
            param.default = Some(value.clone());
        }
    }
    let mut params = source.spec.params.clone();
    params.extend(check_params(&source.spec.composition, &declared, given)?);
    Ok(params)
}

/// The values the run had: its params, and the defaults of those it did not set.
fn effective_params(
    source: &CompositionRun,
    snapshot: &CompositionSpec,
) -> BTreeMap<String, String> {
    let mut params: BTreeMap<String, String> = snapshot
        .params
        .iter()
        .filter_map(|p| Some((p.name.clone(), p.default.clone()?)))
        .collect();
    params.extend(source.spec.params.clone());
    params
}

/// The params whose value the rerun changes: (old, new), the old one empty if unset.
fn changed(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<(String, (String, String))> {
    new.iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| {
            (
                k.clone(),
                (old.get(k).cloned().unwrap_or_default(), v.clone()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_keep_the_runs_values_and_change_only_those_given() {
        let source: CompositionRun = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r"},
            "spec": {"composition": "release", "params": {"version": "1.4.2", "env": "qa"}},
        }))
        .expect("a run");
        let snapshot: CompositionSpec = serde_json::from_value(serde_json::json!({
            "params": [{"name": "version"}, {"name": "env"}, {"name": "notes", "default": "-"}],
            "steps": [{"name": "a", "task": "shell"}],
        }))
        .expect("a spec");
        let params = rerun_params(&source, &snapshot, &[("version".into(), "1.4.3".into())])
            .expect("valid params");
        assert_eq!(params["version"], "1.4.3");
        assert_eq!(params["env"], "qa");
        assert_eq!(
            changed(&effective_params(&source, &snapshot), &params),
            [(
                "version".to_string(),
                ("1.4.2".to_string(), "1.4.3".to_string())
            )]
        );
        // A param the run left to its default shows the default as the old value.
        let params = rerun_params(&source, &snapshot, &[("notes".into(), "hotfix".into())])
            .expect("valid params");
        assert_eq!(
            changed(&effective_params(&source, &snapshot), &params),
            [("notes".to_string(), ("-".to_string(), "hotfix".to_string()))]
        );
        let unknown = rerun_params(&source, &snapshot, &[("versoin".into(), "x".into())]);
        assert!(unknown.is_err_and(|e| e.contains("no parameter \"versoin\"")));
    }
}
