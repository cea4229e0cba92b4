//! `make chaos`: 200 runs through each fault kind for 2 minutes, on a kwok fake node, and
//! the table of what held (docs/reliability.md). `--smoke` runs the version `make test`
//! runs: 50 runs, each fault kind once in 40 s. Exits non-zero when anything did not hold.

use std::time::Duration;

use anyhow::Result;
use maestro_e2e::chaos::{self, Mix};

#[tokio::main]
async fn main() -> Result<()> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let scenarios = if smoke {
        chaos::smoke_suite(Mix::smoke(), Duration::from_secs(40))
    } else {
        chaos::suite(Mix::full(), Duration::from_secs(120))
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
