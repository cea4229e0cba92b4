//! The benchmark's smoke mode: every workload runs, tiny, for Maestro and the bare client
//! (Argo is for `make bench` only), on the fake node and a small one on the real node, so
//! the bench never rots. It asserts that the bench completes and measured what it says,
//! never how fast (speed is for `make bench`).

use anyhow::{Result, anyhow};
use maestro_e2e::bench::{self, NodeKind, Plan, System, Workload};

#[tokio::test]
async fn the_bench_runs_every_workload_in_smoke_mode() -> Result<()> {
    let plan = Plan::smoke();
    let figures = bench::run_all(&plan).await?;
    println!("{}\n{}", bench::table(&figures), bench::ratios(&figures));
    let cases = plan
        .workloads
        .iter()
        .map(|w| (*w, NodeKind::Fake))
        .chain(plan.real_workloads.iter().map(|w| (*w, NodeKind::Real)));
    for (workload, node) in cases {
        for &system in &plan.systems {
            let found = figures
                .iter()
                .find(|f| f.system == system && f.workload == workload && f.node == node);
            if !Plan::runs(system, workload) {
                assert!(
                    found.is_none(),
                    "the bare client has no gates and no history"
                );
                continue;
            }
            let f = found.ok_or_else(|| anyhow!("no {workload:?} figures for {system:?}"))?;
            // Every handoff was seen: each run's pods were watched from start to end.
            let handoffs = match workload {
                Workload::OneStep { .. } | Workload::Gated { .. } | Workload::History { .. } => 0,
                Workload::Sequential { runs, steps } => runs * (steps - 1),
                Workload::FanOut { width } => width + 1,
            };
            assert_eq!(
                f.handoffs_ms.len(),
                handoffs,
                "{system:?} {workload:?} handoffs"
            );
            // The API server counted the creation of the pods and runs at least.
            let created = workload.steps().max(workload.runs());
            assert!(
                f.api_writes >= created as f64,
                "{system:?} {workload:?}: {} writes for {created} pods or runs",
                f.api_writes
            );
            if system == System::Maestro {
                assert!(f.peak_rss > 0, "the operator's memory was sampled");
            }
            if node == NodeKind::Real {
                // Every pod's own start was seen (its step container running or ended).
                assert_eq!(
                    f.pod_starts_ms.len(),
                    workload.steps(),
                    "{system:?} {workload:?} pod starts on the real node"
                );
            }
            if let Workload::History { kept, .. } = workload {
                let history = f
                    .history
                    .as_ref()
                    .ok_or_else(|| anyhow!("no history figures for {system:?}"))?;
                assert_eq!(history.kept, kept, "the history's size");
                assert!(
                    history.settled_rss > 0,
                    "the memory with history was sampled"
                );
            }
        }
    }
    Ok(())
}
