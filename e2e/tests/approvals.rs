//! Approvals that take two people, end to end (examples/approval/two-person.yaml): the
//! run records who started it as the API server saw them; the starter, and a user
//! outside the gate's group, are refused (by the CLI, by the admission policy, and by the
//! operator, which ignores what got past the others and says why); one approval leaves
//! the gate waiting and saying so; a second approval by the same user counts once; two
//! distinct release managers pass it; one rejection fails another run's gate. Users are
//! impersonated (`--as alice --as-group release-managers`), as the admin may.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Api, Client, Resource, ResourceExt, api::PostParams};
use maestro_api::{
    Approval, ApprovalRecord, ApprovalSpec, CompositionRun, CompositionRunSpec, Decision, RunPhase,
    StepPhase, StepStatus,
};
use maestro_e2e::{maestro::Env, wait_for};

/// Pods start in seconds on the local cluster; a run or a status change that takes this
/// long is stuck.
const TIMEOUT: Duration = Duration::from_secs(90);

/// The gate's group.
const MANAGERS: &str = "release-managers";

/// The rights of every user of this test: see and start runs, decide gates. Who may
/// decide which gate is then up to the gate, not RBAC.
const RELEASE_ROLE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: release}
rules:
- apiGroups: [maestro.dev]
  resources: [compositions, compositionruns]
  verbs: [get, list, watch]
- apiGroups: [maestro.dev]
  resources: [compositionruns, approvals]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: release}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: release}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: dave}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: mallory}
"#;

/// `kubectl maestro ARGS --as USER --as-group GROUP`.
async fn cli_as(env: &Env, user: &str, group: &str, args: &[&str]) -> Result<String> {
    let mut all = args.to_vec();
    all.extend(["--as", user, "--as-group", group]);
    env.cli(&all).await
}

/// Like [`cli_as`], for a command that must fail; returns its error.
async fn cli_refused(env: &Env, user: &str, group: &str, args: &[&str]) -> Result<String> {
    match cli_as(env, user, group, args).await {
        Ok(out) => bail!("kubectl maestro {args:?} as {user} succeeded: {out}"),
        Err(refusal) => Ok(format!("{refusal:#}")),
    }
}

/// The run's name from `kubectl maestro run`'s `compositionrun/NAME created`.
fn created_run(said: &str) -> Result<String> {
    said.lines()
        .find_map(|l| l.strip_prefix("compositionrun/")?.strip_suffix(" created"))
        .map(str::to_string)
        .with_context(|| format!("no run name in {said:?}"))
}

fn gate(run: &CompositionRun) -> Result<&StepStatus> {
    run.status
        .as_ref()
        .and_then(|s| s.steps.iter().find(|st| st.name == "sign-off"))
        .with_context(|| format!("run {} has no sign-off step status", run.name_any()))
}

/// Waits until the run's sign-off gate satisfies `check` (which says what it saw when
/// not), and returns the run.
async fn wait_gate(
    env: &Env,
    name: &str,
    what: &str,
    check: impl Fn(&StepStatus) -> Result<(), String>,
) -> Result<CompositionRun> {
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    wait_for(&format!("run {name}: {what}"), TIMEOUT, || async {
        let run = runs.get(name).await.map_err(|e| e.to_string())?;
        let step = gate(&run).map_err(|e| e.to_string())?;
        check(step).map(|()| run.clone())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\noperator log:\n{}", env.operator.log_tail()))
}

/// An Approval made directly (not through the CLI), owned by the run as the CLI makes it.
fn approval_of(run: &CompositionRun, by: &str, groups: &[&str]) -> Result<Approval> {
    let mut approval = Approval::new(
        "",
        ApprovalSpec {
            run: run.name_any(),
            step: "sign-off".into(),
            decision: Decision::Approve,
            approved_by: by.into(),
            approver_groups: groups.iter().map(|g| g.to_string()).collect(),
            comment: None,
        },
    );
    approval.metadata.name = None;
    approval.metadata.generate_name = Some(format!("{by}-"));
    approval.metadata.owner_references = Some(vec![OwnerReference {
        api_version: CompositionRun::api_version(&()).into_owned(),
        kind: CompositionRun::kind(&()).into_owned(),
        name: run.name_any(),
        uid: run.uid().context("the run has no uid")?,
        ..OwnerReference::default()
    }]);
    Ok(approval)
}

fn records(step: &StepStatus) -> String {
    step.approvals
        .iter()
        .map(|r: &ApprovalRecord| {
            format!(
                "{} {:?} ignored={:?} comment={:?}",
                r.by, r.decision, r.ignored, r.comment
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test]
async fn two_release_managers_other_than_the_starter_pass_the_gate_and_one_rejects() -> Result<()> {
    let env = Env::new("approvals").await?;
    env.apply_example_ready("approval/two-person.yaml").await?;
    env.apply_yaml(RELEASE_ROLE).await?;
    for user in ["dave", "alice", "bob", "mallory"] {
        maestro_e2e::wait_until_allowed(
            &env.client,
            user,
            "create",
            "maestro.dev",
            "approvals",
            &env.ns.name,
        )
        .await?;
    }
    maestro_e2e::wait_until_allowed(
        &env.client,
        "dave",
        "create",
        "maestro.dev",
        "compositionruns",
        &env.ns.name,
    )
    .await?;

    // dave starts two runs through the CLI, which records him as their starter.
    let start = ["run", "two-person-release"];
    let name = created_run(&cli_as(&env, "dave", MANAGERS, &start).await?)?;
    let rejected_name = created_run(&cli_as(&env, "dave", MANAGERS, &start).await?)?;
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    assert_eq!(
        runs.get(&name).await?.spec.started_by.as_deref(),
        Some("dave")
    );

    // A run that names somebody else as its starter, or nobody, is refused at admission.
    let dave_client: Client = maestro_e2e::client_as_in("dave", &[MANAGERS]).await?;
    let dave_runs: Api<CompositionRun> = Api::namespaced(dave_client.clone(), &env.ns.name);
    for (started_by, want) in [(Some("alice"), "not alice"), (None, "and it is missing")] {
        let mut forged = CompositionRun::new(
            "",
            CompositionRunSpec {
                composition: "two-person-release".into(),
                params: Default::default(),
                cancel: false,
                priority: 0,
                started_by: started_by.map(str::to_string),
                rerun_of: None,
            },
        );
        forged.metadata.name = None;
        forged.metadata.generate_name = Some("forged-".into());
        match dave_runs.create(&PostParams::default(), &forged).await {
            Err(kube::Error::Api(refusal)) => assert!(
                refusal
                    .message
                    .contains("spec.startedBy must be the user who makes the request (dave)")
                    && refusal.message.contains(want),
                "unexpected refusal: {refusal:?}"
            ),
            Ok(run) => bail!("a run started by {started_by:?} was admitted: {run:?}"),
            Err(other) => return Err(other.into()),
        }
    }

    let waiting = wait_gate(&env, &name, "waiting for two approvals", |st| {
        match (st.phase, st.message.as_deref()) {
            (StepPhase::WaitingApproval, Some("Ship 2.0.0 to production? (0 of 2 approvals)")) => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    // The starter: the CLI refuses, and an Approval made past it does not count.
    let approve = ["approve", name.as_str(), "sign-off"];
    let refusal = cli_refused(&env, "dave", MANAGERS, &approve).await?;
    assert!(
        refusal.contains("dave started the run and may not approve it"),
        "{refusal}"
    );
    let dave_approvals: Api<Approval> = Api::namespaced(dave_client, &env.ns.name);
    dave_approvals
        .create(
            &PostParams::default(),
            &approval_of(&waiting, "dave", &[MANAGERS])?,
        )
        .await?;
    wait_gate(
        &env,
        &name,
        "dave's approval recorded as not counting",
        |st| {
            let ignored = st.approvals.iter().any(|r| {
                r.by == "dave"
                    && r.ignored
                        .as_deref()
                        .is_some_and(|w| w.contains("started the run"))
            });
            let message = st.message.as_deref().unwrap_or_default();
            if ignored
                && st.phase == StepPhase::WaitingApproval
                && message.contains("0 of 2 approvals; dave's approval does not count")
            {
                Ok(())
            } else {
                Err(format!("{:?} {message:?}: {}", st.phase, records(st)))
            }
        },
    )
    .await?;

    // A user outside the group: the CLI refuses, and claiming the group is refused at
    // admission.
    let refusal = cli_refused(&env, "mallory", "developers", &approve).await?;
    assert!(
        refusal.contains("mallory is in none of the groups release-managers"),
        "{refusal}"
    );
    let mallory: Api<Approval> = Api::namespaced(
        maestro_e2e::client_as_in("mallory", &["developers"]).await?,
        &env.ns.name,
    );
    match mallory
        .create(
            &PostParams::default(),
            &approval_of(&waiting, "mallory", &[MANAGERS])?,
        )
        .await
    {
        Err(kube::Error::Api(refusal)) => assert!(
            refusal
                .message
                .contains("spec.approverGroups may name only groups mallory is in")
                && refusal.message.contains("not release-managers"),
            "unexpected refusal: {refusal:?}"
        ),
        Ok(a) => bail!("mallory's claim of release-managers was admitted: {a:?}"),
        Err(other) => return Err(other.into()),
    }

    // One release manager: the gate waits and says how far it got; her second approval
    // counts once.
    let said = cli_as(
        &env,
        "alice",
        MANAGERS,
        &[
            "approve",
            name.as_str(),
            "sign-off",
            "--comment",
            "tests are green",
        ],
    )
    .await?;
    assert!(
        said.contains(&format!("{name}/sign-off approved by alice")),
        "{said}"
    );
    wait_gate(&env, &name, "1 of 2 approvals", |st| {
        let message = st.message.as_deref().unwrap_or_default();
        if st.phase == StepPhase::WaitingApproval
            && message.contains("1 of 2 approvals; alice approved")
        {
            Ok(())
        } else {
            Err(format!("{:?} {message:?}", st.phase))
        }
    })
    .await?;
    cli_as(&env, "alice", MANAGERS, &approve).await?;
    wait_gate(&env, &name, "alice's second approval counted once", |st| {
        let again = st
            .approvals
            .iter()
            .any(|r| r.by == "alice" && r.ignored.as_deref() == Some("alice already approved"));
        if again && st.phase == StepPhase::WaitingApproval {
            Ok(())
        } else {
            Err(format!("{:?}: {}", st.phase, records(st)))
        }
    })
    .await?;

    // A second, distinct release manager passes the gate.
    cli_as(&env, "bob", MANAGERS, &approve).await?;
    let done = env.wait_finished(&name, TIMEOUT).await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Succeeded, "{status:#?}");
    let signed = gate(&done)?;
    let counted: Vec<&str> = signed
        .approvals
        .iter()
        .filter(|r| r.ignored.is_none())
        .map(|r| r.by.as_str())
        .collect();
    // Oldest first; Approvals made in the same second (creation times have seconds only)
    // sort by name, so alice and bob may come in either order here.
    let mut who = counted.clone();
    who.sort_unstable();
    assert_eq!(who, ["alice", "bob"], "{}", records(signed));
    let by = counted.join(", ");
    assert_eq!(signed.approved_by.as_deref(), Some(by.as_str()));
    assert_eq!(
        signed.message.as_deref(),
        Some(format!("approved by {by}").as_str())
    );
    assert!(
        signed
            .approvals
            .iter()
            .all(|r| r.time.is_some() && r.decision == Decision::Approve)
    );
    let described = env.cli(&["describe", &name]).await?;
    for want in [
        "Started by:   dave",
        "tests are green",
        "no: dave started the run and may not approve it",
        "no: alice already approved",
    ] {
        assert!(described.contains(want), "no {want:?} in:\n{described}");
    }
    let pods: Vec<String> = env
        .step_pods(&name)
        .await?
        .into_iter()
        .map(|(step, _, _)| step)
        .collect();
    assert_eq!(pods, ["build", "ship"]);

    // The other run: one approval, then one rejection fails the gate.
    wait_gate(&env, &rejected_name, "waiting", |st| {
        if st.phase == StepPhase::WaitingApproval {
            Ok(())
        } else {
            Err(format!("{:?}", st.phase))
        }
    })
    .await?;
    let on_rejected = ["approve", rejected_name.as_str(), "sign-off"];
    cli_as(&env, "alice", MANAGERS, &on_rejected).await?;
    cli_as(
        &env,
        "bob",
        MANAGERS,
        &[
            "reject",
            rejected_name.as_str(),
            "sign-off",
            "--comment",
            "not on a Friday",
        ],
    )
    .await?;
    let failed = env.wait_finished(&rejected_name, TIMEOUT).await?;
    let status = failed.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Failed, "{status:#?}");
    let gate_status = gate(&failed)?;
    assert_eq!(gate_status.phase, StepPhase::Failed);
    assert_eq!(gate_status.message.as_deref(), Some("rejected by bob"));
    let bob = gate_status
        .approvals
        .iter()
        .find(|r| r.by == "bob")
        .context("no record of bob's rejection")?;
    assert_eq!(bob.decision, Decision::Reject);
    assert_eq!(bob.comment.as_deref(), Some("not on a Friday"));
    assert!(bob.ignored.is_none());
    let ship = status
        .steps
        .iter()
        .find(|s| s.name == "ship")
        .context("no ship step")?;
    assert_eq!(ship.phase, StepPhase::Skipped);
    Ok(())
}

/// The attack of a run deleted and made again under its name: an approval given to the
/// first run, whether owned by it (as the CLI makes it) or not, and kept past the delete
/// (`--cascade=orphan`), does not pass the new run's gate. The gate asks again, and a new
/// approval passes it, and the first run's orphaned claim and pod are not taken for the new run's.
#[tokio::test]
async fn an_approval_of_a_deleted_run_does_not_pass_the_run_made_under_its_name() -> Result<()> {
    let env = Env::new("approvals-recreated").await?;
    env.apply_yaml(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: gated}
spec:
  steps:
    - name: sign-off
      approval: {message: Ship it?}
    - {name: ship, task: shell, with: {script: "echo shipped"}}
"#,
    )
    .await?;
    env.wait_compositions_ready(&["gated".to_string()]).await?;
    env.apply_yaml(RELEASE_ROLE).await?;
    maestro_e2e::wait_until_allowed(
        &env.client,
        "alice",
        "create",
        "maestro.dev",
        "approvals",
        &env.ns.name,
    )
    .await?;
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    let run_named = || {
        let mut run = CompositionRun::new(
            "recreated",
            CompositionRunSpec {
                composition: "gated".into(),
                params: Default::default(),
                cancel: false,
                priority: 0,
                started_by: None,
                rerun_of: None,
            },
        );
        run.metadata.namespace = Some(env.ns.name.clone());
        run
    };
    let waiting = |st: &StepStatus| {
        if st.phase == StepPhase::WaitingApproval {
            Ok(())
        } else {
            Err(format!("{:?} {:?}", st.phase, st.message))
        }
    };

    // The first run: alice approves it through the CLI (an Approval owned by the run),
    // and once more directly, with no owner.
    let first = runs.create(&PostParams::default(), &run_named()).await?;
    let first_uid = first.uid().context("the run has no uid")?;
    let first = wait_gate(&env, "recreated", "the first run waiting", waiting).await?;
    let alice: Api<Approval> = Api::namespaced(
        maestro_e2e::client_as_in("alice", &[MANAGERS]).await?,
        &env.ns.name,
    );
    let mut unowned = approval_of(&first, "alice", &[])?;
    unowned.metadata.owner_references = None;
    // Made before the CLI's, so the gate is still waiting when it is admitted.
    alice.create(&PostParams::default(), &unowned).await?;
    cli_as(
        &env,
        "alice",
        MANAGERS,
        &["approve", "recreated", "sign-off"],
    )
    .await?;
    env.wait_finished("recreated", TIMEOUT).await?;

    // Deleted, leaving what it owns behind, then made again under the same name.
    runs.delete(
        "recreated",
        &kube::api::DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
            ..Default::default()
        },
    )
    .await?;
    wait_for("the first run gone", TIMEOUT, || async {
        match runs.get_opt("recreated").await {
            Ok(None) => Ok(()),
            Ok(Some(run)) => Err(format!(
                "still there: deleted at {:?}, finalizers {:?}",
                run.metadata.deletion_timestamp, run.metadata.finalizers
            )),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\noperator log:\n{}", env.operator.log_tail()))?;
    let approvals: Api<Approval> = Api::namespaced(env.client.clone(), &env.ns.name);
    let kept = approvals.list(&Default::default()).await?.items;
    assert_eq!(
        kept.len(),
        2,
        "both approvals of the first run outlive it: {:?}",
        kept.iter().map(|a| a.name_any()).collect::<Vec<_>>()
    );
    let second = runs.create(&PostParams::default(), &run_named()).await?;
    assert_ne!(second.uid().as_deref(), Some(first_uid.as_str()));

    // The gate waits, and counts neither approval. The operator has seen them (they were
    // there before the run was), so a few reconciles later it still must not have.
    wait_gate(&env, "recreated", "the second run waiting", waiting).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = runs.get("recreated").await?;
    let st = gate(&still)?;
    assert_eq!(st.phase, StepPhase::WaitingApproval, "{}", records(st));
    assert!(st.approved_by.is_none(), "{:?}", st.approved_by);
    assert!(
        st.approvals.iter().all(|r| r.ignored.is_some()),
        "an approval of the first run counted: {}",
        records(st)
    );

    // A new approval passes the gate. The first run's orphaned workspace claim and
    // step pod are still there under the names the new run's would have: the new run
    // takes neither for its own (the --cascade=orphan attack), and its step fails naming
    // what holds the name.
    cli_as(
        &env,
        "alice",
        MANAGERS,
        &["approve", "recreated", "sign-off"],
    )
    .await?;
    let done = env.wait_finished("recreated", TIMEOUT).await?;
    let status = done.status.clone().unwrap_or_default();
    let signed = gate(&done)?;
    assert_eq!(signed.phase, StepPhase::Succeeded, "{}", records(signed));
    assert_eq!(signed.approved_by.as_deref(), Some("alice"));
    assert_eq!(status.phase, RunPhase::Failed, "{status:#?}");
    let ship = status
        .steps
        .iter()
        .find(|s| s.name == "ship")
        .context("no ship step")?;
    let message = ship.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("recreated-workspace") && message.contains("is not this run's"),
        "{message}"
    );
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(env.client.clone(), &env.ns.name);
    let old_pod = pods.get("recreated-ship-1").await?;
    assert_eq!(
        old_pod.metadata.owner_references.unwrap_or_default().len(),
        0,
        "the first run's pod is left as it was: orphaned"
    );
    Ok(())
}
