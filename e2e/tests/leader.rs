//! Leader election end to end: two operator replicas (local processes) watch one
//! namespace and elect a leader through a Lease there. Exactly one holds it; when the
//! leader is killed (SIGKILL, as a node failure would) the other takes the Lease within
//! 15 seconds and finishes the run in flight, with one pod per step.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use maestro_api::{Composition, CompositionRun, RunPhase, StepPhase};
use maestro_e2e::{
    TestNamespace,
    maestro::{self, LIBRARY_NAMESPACE},
    wait_for,
};

const LEASE: &str = "maestro-operator";
const TAKEOVER_LIMIT: Duration = Duration::from_secs(20); // the 15 s lease, a 2 s retry, margin
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// One operator replica: the real binary as a local process, with its own identity
/// (POD_NAME, as the Deployment's downward API would set it); killed when dropped.
struct Replica {
    identity: String,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Replica {
    /// Starts a replica the way `Operator::start` starts the single operator of other
    /// tests, plus an identity of its own.
    fn start(ns: &str, identity: &str) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("maestro-operator-{identity}.log"));
        let file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(maestro::workspace_bin("maestro-operator")?)
            .args(["--namespace", ns, "--lease-namespace", ns])
            .args(["--library-namespace", LIBRARY_NAMESPACE])
            .args(["--metrics-addr", "127.0.0.1:0"])
            // Two replicas on one host: each its own webhook port.
            .args(["--webhook-addr", "127.0.0.1:0"])
            .env("POD_NAME", identity)
            .env("MAESTRO_LOG_LEVEL", "info,maestro_operator=debug")
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .context("starting maestro-operator")?;
        Ok(Self {
            identity: identity.into(),
            child,
            log,
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} ---\n{}",
            self.identity,
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

/// The Lease's holderIdentity, `None` when there is no Lease or no holder.
async fn holder(leases: &Api<Lease>) -> Result<Option<String>, String> {
    maestro_e2e::lease_holder(leases, LEASE).await
}

/// On SIGTERM (a rolling update, a drain) the leader clears holderIdentity as it stops,
/// so the follower takes over on its next try instead of waiting for the Lease to expire.
#[tokio::test]
async fn a_terminated_leader_hands_the_lease_over_at_once() -> anyhow::Result<()> {
    let client = maestro_e2e::client().await?;
    maestro::install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "handover").await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let mut replicas = vec![Replica::start(&ns.name, &format!("{}-a", ns.name))?];
    wait_for("a to take the Lease", Duration::from_secs(60), || async {
        holder(&leases)
            .await?
            .ok_or_else(|| "no holder".to_string())
    })
    .await?;
    replicas.push(Replica::start(&ns.name, &format!("{}-b", ns.name))?);
    // Let b fill its caches and find the Lease taken.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let pid = replicas[0].child.id().context("replica a has exited")?;
    let sent = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    assert!(sent.success());
    let terminated = Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(20), replicas[0].child.wait())
        .await
        .context("the leader did not stop after SIGTERM")??;
    assert!(exit.success(), "{exit:?}\n{}", replicas[0].log_tail());
    let log = std::fs::read_to_string(&replicas[0].log)?;
    assert!(
        log.contains("released the lease"),
        "{}",
        replicas[0].log_tail()
    );
    let b = replicas[1].identity.clone();
    let took = wait_for("b to take the Lease", Duration::from_secs(15), || async {
        match holder(&leases).await? {
            Some(h) if h == b => Ok(terminated.elapsed()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await?;
    println!(
        "handover: {b} holds the Lease {:.1} s after SIGTERM to the leader",
        took.as_secs_f64()
    );
    // Without the release it would wait for expiry: up to 10 s after the last renewal.
    assert!(
        took < Duration::from_secs(5),
        "handover took {took:?}\n{}",
        replicas[1].log_tail()
    );
    Ok(())
}

#[tokio::test]
async fn the_follower_takes_over_a_killed_leader_and_finishes_the_run() -> anyhow::Result<()> {
    let client = maestro_e2e::client().await?;
    maestro::install_crds(&client).await?;
    maestro::install_library(&client).await?;
    let ns = TestNamespace::create(&client, "leader").await?;
    let result = scenario(&client, &ns.name).await;
    maestro::delete_runs(&client, &ns.name).await;
    result
}

async fn scenario(client: &Client, ns: &str) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let mut replicas = vec![
        Replica::start(ns, &format!("{ns}-a"))?,
        Replica::start(ns, &format!("{ns}-b"))?,
    ];
    let logs = |replicas: &[Replica]| {
        replicas
            .iter()
            .map(Replica::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Exactly one leads: the Lease names one of the two, and stays with it while both
    // run (a follower must not take a Lease that is being renewed).
    let first = wait_for(
        "a replica to take the Lease",
        Duration::from_secs(60),
        || {
            let leases = &leases;
            async move { holder(leases).await?.ok_or_else(|| "no holder".to_string()) }
        },
    )
    .await
    .with_context(|| logs(&replicas))?;
    let leader = replicas
        .iter()
        .position(|r| r.identity == first)
        .with_context(|| format!("the Lease names {first}, neither replica"))?;
    let follower = 1 - leader;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        holder(&leases)
            .await
            .map_err(anyhow::Error::msg)?
            .as_deref(),
        Some(first.as_str()),
        "the Lease changed hands while its holder lived\n{}",
        logs(&replicas)
    );
    let lease = leases.get(LEASE).await?;
    let spec = lease.spec.clone().unwrap_or_default();
    assert_eq!(
        spec.lease_duration_seconds,
        Some(15),
        "the lease lasts 15 s"
    );
    assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
    let transitions = spec.lease_transitions.unwrap_or(0);
    let follower_log = std::fs::read_to_string(&replicas[follower].log)?;
    assert!(
        follower_log.contains("following"),
        "the follower does not say it follows\n{}",
        logs(&replicas)
    );
    assert!(
        !follower_log.contains("became leader"),
        "{}",
        logs(&replicas)
    );

    // A run of four 3-second steps, under way when the leader dies.
    let compositions: Api<Composition> = Api::namespaced(client.clone(), ns);
    maestro::apply_file(
        client,
        ns,
        &maestro::repo_root().join("examples/leader-takeover/four-sleeps.yaml"),
    )
    .await?;
    wait_for(
        "composition four-sleeps to be Ready",
        Duration::from_secs(30),
        || async {
            let found = compositions
                .get("four-sleeps")
                .await
                .map_err(|e| e.to_string())?;
            let ready = found
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                Ok(())
            } else {
                Err("not Ready".into())
            }
        },
    )
    .await
    .with_context(|| logs(&replicas))?;
    let run = maestro::start_run(client, ns, "four-sleeps", &[]).await?;
    let runs: Api<CompositionRun> = Api::namespaced(client.clone(), ns);
    wait_for("step two to run", Duration::from_secs(90), || async {
        let found = runs.get(&run).await.map_err(|e| e.to_string())?;
        let two = found
            .status
            .as_ref()
            .and_then(|s| s.steps.iter().find(|s| s.name == "two"))
            .map(|s| s.phase);
        match two {
            Some(StepPhase::Running) => Ok(()),
            other => Err(format!("step two {other:?}")),
        }
    })
    .await
    .with_context(|| logs(&replicas))?;

    replicas[leader].child.kill().await?;
    let killed = Instant::now();
    let identity = replicas[follower].identity.clone();
    let took = wait_for(
        "the follower to take the Lease",
        TAKEOVER_LIMIT + Duration::from_secs(10),
        || {
            let leases = &leases;
            let identity = &identity;
            async move {
                match holder(leases).await? {
                    Some(h) if &h == identity => Ok(killed.elapsed()),
                    other => Err(format!("holder {other:?}")),
                }
            }
        },
    )
    .await
    .with_context(|| logs(&replicas))?;
    println!(
        "takeover: {identity} holds the Lease {:.1} s after the leader was killed",
        took.as_secs_f64()
    );
    assert!(
        took <= TAKEOVER_LIMIT,
        "takeover took {took:?}\n{}",
        logs(&replicas)
    );
    let spec = leases.get(LEASE).await?.spec.unwrap_or_default();
    assert_eq!(spec.lease_transitions, Some(transitions + 1));

    let finished = maestro::wait_finished(client, ns, &run, RUN_TIMEOUT)
        .await
        .with_context(|| logs(&replicas))?;
    let status = finished.status.clone().unwrap_or_default();
    assert_eq!(
        status.phase,
        RunPhase::Succeeded,
        "{}\n{}",
        serde_yaml::to_string(&status)?,
        logs(&replicas)
    );
    let mut pods: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (step, attempt, _) in maestro::step_pods(client, ns, &run).await? {
        pods.entry(step).or_default().push(attempt);
    }
    let expected: BTreeMap<String, Vec<u32>> = ["one", "two", "three", "four"]
        .into_iter()
        .map(|s| (s.to_string(), vec![1]))
        .collect();
    assert_eq!(pods, expected, "one pod per step");
    for step in &status.steps {
        assert_eq!(step.attempts, 1, "step {}", step.name);
    }
    Ok(())
}
