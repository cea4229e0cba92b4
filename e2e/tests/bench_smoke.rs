//! The benchmark's smoke mode: every workload runs, tiny, for every system, so the bench
//! never rots. It asserts that the bench completes and measured what it says, never how
//! fast (speed is for `make bench`).

use anyhow::Result;
use maestro_e2e::bench::{self, Sizes};

#[tokio::test]
async fn the_bench_runs_every_workload_in_smoke_mode() -> Result<()> {
    let sizes = Sizes::SMOKE;
    let figures = bench::run_all(sizes).await?;
    println!("{}", bench::table(&figures));
    for system in ["bare", "maestro"] {
        let w1 = figures
            .iter()
            .find(|f| f.system == system && f.workload == "w1")
            .ok_or_else(|| anyhow::anyhow!("no w1 figures for {system}"))?;
        assert_eq!(
            (w1.runs, w1.steps),
            (sizes.w1_runs, sizes.w1_runs),
            "{system} w1"
        );
        let w2 = figures
            .iter()
            .find(|f| f.system == system && f.workload == "w2")
            .ok_or_else(|| anyhow::anyhow!("no w2 figures for {system}"))?;
        assert_eq!(w2.steps, sizes.w2_runs * sizes.w2_steps, "{system} w2");
        // Every handoff of every chain was seen: each run's pods were watched end to end.
        assert_eq!(
            w2.handoffs_ms.len(),
            sizes.w2_runs * (sizes.w2_steps - 1),
            "{system} w2 handoffs"
        );
    }
    let maestro = figures
        .iter()
        .find(|f| f.system == "maestro")
        .map(|f| f.peak_rss);
    assert!(
        maestro.is_some_and(|rss| rss > 0),
        "the operator's memory was sampled"
    );
    Ok(())
}
