//! `make bench`: runs the benchmark's workloads on a kwok fake node and prints a table.
//! `--smoke` runs them tiny (as `make test` does), to show the bench still works.

use anyhow::Result;
use maestro_e2e::bench::{self, Sizes};

#[tokio::main]
async fn main() -> Result<()> {
    let smoke = std::env::args().any(|a| a == "--smoke");
    // The operator is the one built beside this binary (a release build for the real
    // bench), unless MAESTRO_BIN_DIR names another folder.
    if let Some(dir) = std::env::current_exe()?.parent() {
        maestro_e2e::maestro::set_bin_dir(dir);
    }
    let sizes = if smoke { Sizes::SMOKE } else { Sizes::FULL };
    let figures = bench::run_all(sizes).await?;
    println!("{}", bench::table(&figures));
    Ok(())
}
