//! The chaos suite's smoke mode: 50 runs on the kwok fake node (2 of them, which provision
//! an EC2 instance in moto, on the real node) while each fault kind strikes once in turn
//! (the leader of two replicas killed, step pods deleted and evicted, the provision pods
//! among them, kube-apiserver and etcd killed and started again, the operators cut off
//! from the API server); `make chaos` runs 200 through each kind for longer. It asserts
//! what users rely on after each fault, from
//! counts the suite takes itself: every run ends, Succeeded as its composition implies; no
//! pod name (one run, step and attempt) nor child run was ever created twice; every gate
//! approved during the chaos counted its approval once; no instance is left running in
//! moto, and no EC2 run's ledger holds anything its status does not explain.

use std::time::Duration;

use anyhow::Result;
use maestro_e2e::chaos::{self, Mix};

#[tokio::test]
async fn runs_survive_each_fault_kind_with_nothing_run_twice() -> Result<()> {
    let mix = Mix::smoke();
    let scenarios = chaos::smoke_suite(mix, Duration::from_secs(40));
    let all = chaos::run_all(&scenarios, Duration::from_secs(240)).await?;
    println!("{}", chaos::table(&all));
    // Pods each mix needs at the least: one, ten, 1+6+1, two children and one after the
    // fork, one after the gate, provision, work and deprovision.
    let least = mix.one_step
        + 10 * mix.sequential
        + 8 * mix.fan_out
        + 3 * mix.forks
        + mix.gated
        + 3 * mix.ec2;
    for findings in &all {
        let fault = findings.fault.label();
        let kinds = [
            "leader killed",
            "pods deleted",
            "pods evicted",
            "kube-apiserver restarted",
            "etcd restarted",
            "operator cut off",
        ];
        for kind in kinds {
            assert!(
                findings.injected_by_kind.get(kind).is_some_and(|n| *n > 0),
                "{fault}: never injected: {kind} (injected: {:?})",
                findings.injected_by_kind
            );
        }
        assert!(
            findings.stuck.is_empty(),
            "{fault}: stuck {:?}",
            findings.stuck
        );
        assert!(
            findings.unexpected.is_empty(),
            "{fault}: not Succeeded {:#?}",
            findings.unexpected
        );
        assert!(
            findings.duplicate_pods.is_empty(),
            "{fault}: pods created twice {:?}",
            findings.duplicate_pods
        );
        assert!(
            findings.duplicate_children.is_empty(),
            "{fault}: child runs created twice {:?}",
            findings.duplicate_children
        );
        assert!(
            findings.approvals_not_once.is_empty(),
            "{fault}: gates not approved exactly once {:?}",
            findings.approvals_not_once
        );
        // Each EC2 run made one instance at least (a retried provision may make another).
        assert!(
            findings.instances_made >= mix.ec2,
            "{fault}: moto has {} instance(s), the {} EC2 runs make one each",
            findings.instances_made,
            mix.ec2
        );
        assert!(
            findings.leaked_instances.is_empty(),
            "{fault}: instances left running in moto {:?}",
            findings.leaked_instances
        );
        assert!(
            findings.ledgers_left.is_empty(),
            "{fault}: ledgers not emptied, no cleanup failure recorded {:?}",
            findings.ledgers_left
        );
        assert!(
            findings.pods_created >= least,
            "{fault}: {} pods seen, the runs need {least} at least",
            findings.pods_created
        );
        assert_eq!(
            findings.children_created,
            2 * mix.forks,
            "{fault}: child runs"
        );
        // Idle: nothing left to do but resyncs. A hot loop reconciles hundreds a second,
        // and never stops.
        assert!(
            findings.idle_after.is_some(),
            "{fault}: the operator still reconciles {:.1} times a second {} s after every run \
             ended",
            findings.idle_reconciles_per_second,
            chaos::IDLE_WAIT_LIMIT.as_secs()
        );
    }
    Ok(())
}
