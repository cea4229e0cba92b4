//! `make chaos`: 200 runs through each fault kind for 2 minutes, on a kwok fake node (the
//! EC2 runs on the real node, against moto), and the table of what held
//! (docs/reliability.md). `--smoke` runs the version `make test` runs: 50 runs, each fault
//! kind once in 40 s. `--only operator-killed,pods-deleted` runs just the scenarios named
//! (any of the suite's, or `each-once`; with `--smoke`, at the smoke size and 40 s each),
//! for a machine where faults of the control plane or the network would disturb others.
//! `--ec2-only` starts only the mix's EC2 runs (on the real node: no kwok, so beside a
//! benchmark that holds the fake node).
//! Exits non-zero when anything did not hold.

use std::time::Duration;

use anyhow::{Context as _, Result};
use maestro_e2e::chaos::{self, Mix};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let only = match args.iter().position(|a| a == "--only") {
        Some(i) => Some(
            args.get(i + 1)
                .context("--only needs scenario names, like --only operator-killed,pods-deleted")?
                .clone(),
        ),
        None => args
            .iter()
            .find_map(|a| a.strip_prefix("--only="))
            .map(str::to_string),
    };
    let (mix, during) = match smoke {
        true => (Mix::smoke(), Duration::from_secs(40)),
        false => (Mix::full(), Duration::from_secs(120)),
    };
    let mix = match args.iter().any(|a| a == "--ec2-only") {
        true => mix.ec2_only(),
        false => mix,
    };
    let scenarios = match only {
        Some(names) => {
            let mut every = chaos::suite(mix, during);
            every.extend(chaos::smoke_suite(mix, during));
            chaos::only(&every, &names)?
        }
        None if smoke => chaos::smoke_suite(mix, during),
        None => chaos::suite(mix, during),
    };
    if let Some(dir) = std::env::current_exe()?.parent() {
        maestro_e2e::maestro::set_bin_dir(dir);
    }
    let all = chaos::run_all(&scenarios, Duration::from_secs(600)).await?;
    println!("{}", chaos::table(&all));
    let failed: Vec<String> = all
        .iter()
        .filter(|f| !f.held())
        .map(|f| f.fault.label())
        .collect();
    anyhow::ensure!(failed.is_empty(), "did not hold: {}", failed.join("; "));
    Ok(())
}
