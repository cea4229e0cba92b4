//! `make bench`: runs the benchmark's workloads on a kwok fake node against Maestro, Argo
//! Workflows (at its defaults and tuned) and a bare client, then the small real-node
//! workloads (Maestro and the bare client), and prints the tables.
//! `--smoke` runs them tiny and without Argo (as `make test` does), to show the bench
//! still works; `--medium` runs a fifth of the sizes; `--repeat N` runs each measurement
//! N times and keeps the median; `--real` runs the real-node part alone, `--fake` the
//! fake-node part alone; `--only SYSTEMS` and `--workloads W1,..` narrow it.

use anyhow::{Context, Result};
use maestro_e2e::bench::{self, Plan};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let repeat = match args.iter().position(|a| a == "--repeat") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse::<usize>().ok())
            .context("--repeat takes a number")?,
        None => 3,
    };
    // The operator is the one built beside this binary (a release build for the real
    // bench), unless MAESTRO_BIN_DIR names another folder.
    if let Some(dir) = std::env::current_exe()?.parent() {
        maestro_e2e::maestro::set_bin_dir(dir);
    }
    let mut plan = if smoke {
        Plan::smoke()
    } else if args.iter().any(|a| a == "--medium") {
        Plan::medium(repeat)
    } else {
        Plan::full(repeat)
    };
    // `--only maestro,bare` and `--workloads w1,w2` narrow the plan, for a quicker look
    // at one change; a published table runs everything.
    if let Some(names) = flag_list(&args, "--only")? {
        plan.systems.retain(|s| names.iter().any(|n| n == s.name()));
        anyhow::ensure!(
            !plan.systems.is_empty(),
            "--only names no system (bare, maestro, argo-default, argo-tuned)"
        );
    }
    if args.iter().any(|a| a == "--real") {
        plan.workloads.clear();
    }
    if args.iter().any(|a| a == "--fake") {
        plan.real_workloads.clear();
    }
    if let Some(names) = flag_list(&args, "--workloads")? {
        plan.workloads
            .retain(|w| names.iter().any(|n| n == w.label()));
        plan.real_workloads
            .retain(|w| names.iter().any(|n| n == w.label()));
    }
    anyhow::ensure!(
        !plan.workloads.is_empty() || !plan.real_workloads.is_empty(),
        "nothing to run: --workloads names none of w1..w5 (the real node runs w1 and w2)"
    );
    let figures = bench::run_all(&plan).await?;
    println!("{}", bench::table(&figures));
    println!("{}", bench::ratios(&figures));
    Ok(())
}

/// The comma-separated values after `flag`, if it is given.
fn flag_list(args: &[String], flag: &str) -> Result<Option<Vec<String>>> {
    let Some(i) = args.iter().position(|a| a == flag) else {
        return Ok(None);
    };
    let value = args
        .get(i + 1)
        .with_context(|| format!("{flag} takes a comma-separated list"))?;
    Ok(Some(
        value.split(',').map(|v| v.trim().to_string()).collect(),
    ))
}
