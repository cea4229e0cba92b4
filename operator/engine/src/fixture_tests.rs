//! Drives the pure engine from YAML fixtures in operator/engine/tests/fixtures/engine/. Each fixture is a
//! composition, its tasks, a run, and rounds: what was observed at a time, and what the
//! engine must answer (phases, created and deleted objects, inputs, outputs, messages).
//! The status one round returns is the status the next round starts from, as in the
//! controller.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use crate::{self as engine, Action, Admission, Observed, PlanInput};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use maestro_api::{
    CompositionRunSpec, CompositionRunStatus, CompositionSpec, TaskSpec, parse_duration,
};
use serde::Deserialize;
use serde_json::Value as Json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    #[allow(dead_code)]
    description: String,
    /// Absent: the composition was not found.
    composition: Option<CompositionSpec>,
    #[serde(default)]
    tasks: Option<BTreeMap<String, TaskSpec>>,
    run: CompositionRunSpec,
    /// The run's depth (label maestro.dev/depth); 0 if absent.
    #[serde(default)]
    depth: u32,
    /// The compositions that led to the run (annotation maestro.dev/chain); absent: only
    /// the run's own.
    #[serde(default)]
    chain: Option<String>,
    rounds: Vec<Round>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Round {
    /// Time since the first round, like `30s`.
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    observe: Observed,
    /// Request a cancel from this round on.
    #[serde(default)]
    cancel: bool,
    /// The run object is being deleted in this round.
    #[serde(default)]
    delete: bool,
    /// The run waits for an Agent slot, with this reason.
    #[serde(default)]
    queued: Option<String>,
    /// How many new step pods the run's Agent has room for this round.
    #[serde(default)]
    pod_budget: Option<u32>,
    /// The Tasks as the cluster has them from this round on (edited, shadowed...).
    #[serde(default)]
    tasks: Option<BTreeMap<String, TaskSpec>>,
    expect: Expect,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    phase: Option<String>,
    progress: Option<String>,
    #[serde(default)]
    steps: BTreeMap<String, String>,
    /// Names of pods and runs created by this round (exactly these).
    creates: Option<Vec<String>>,
    /// Names of pods deleted and runs cancelled by this round (exactly these).
    deletes: Option<Vec<String>>,
    /// Inputs of pods created this round, by pod name (exactly these keys and values).
    #[serde(default)]
    inputs: BTreeMap<String, serde_json::Map<String, Json>>,
    /// Params of runs created this round, by run name (these keys and values at least).
    #[serde(default)]
    params: BTreeMap<String, BTreeMap<String, String>>,
    /// Outputs recorded for steps.
    #[serde(default)]
    outputs: BTreeMap<String, BTreeMap<String, String>>,
    /// Substrings of steps' messages.
    #[serde(default)]
    messages: BTreeMap<String, String>,
    /// Substring of the Invalid condition's message.
    invalid: Option<String>,
    /// Reason of the Succeeded condition.
    reason: Option<String>,
    /// Substring of the Succeeded condition's message.
    condition_message: Option<String>,
    /// Conditions other than Succeeded, by type, each as a substring of
    /// `STATUS REASON: message`.
    #[serde(default)]
    conditions: BTreeMap<String, String>,
    /// Reasons of the events recorded this round (exactly these, in order).
    events: Option<Vec<String>>,
    /// Whether the engine asks to be called again after a delay, and the delay.
    requeue: Option<String>,
    #[serde(default)]
    approved_by: BTreeMap<String, String>,
    /// The child runs of steps, by step: `NAME, NAME (reused), NAME (failed)`, exactly.
    #[serde(default)]
    children: BTreeMap<String, String>,
    /// `startedBy` of runs created this round, by run name (`null`: none).
    #[serde(default)]
    started_by: BTreeMap<String, Option<String>>,
    /// The decisions recorded in steps' status, each as `by Decision` and, when it does
    /// not count, `(ignored: substring of why)`; exactly these, in order.
    #[serde(default)]
    approvals: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    ledger: Option<Vec<String>>,
    /// Phase of the cleanup of leftovers.
    cleanup: Option<String>,
    /// Workspace hand-overs asked for this round, as `CLAIM_OF -> RUN (UID)`.
    shares: Option<Vec<String>>,
    /// Pods created this round, by name: `workspace of RUN; ledger runs [A, B]`.
    #[serde(default)]
    pods: BTreeMap<String, String>,
    /// The rerun the ledger was handed to, as `RUN (UID)`.
    handed_over: Option<String>,
    /// The ledger with the run each entry came from, as `KIND/ID of RUN`.
    ledger_of: Option<Vec<String>>,
}

fn base_time() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().expect("valid timestamp")
}

fn default_tasks() -> BTreeMap<String, TaskSpec> {
    serde_yaml::from_str(
        r#"
shell:
  builtin: shell
  inputs:
    - {name: script, required: true}
    - {name: shell, default: sh}
    - {name: env, type: object}
"#,
    )
    .expect("default tasks parse")
}

fn run_fixture(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let fixture: Fixture = serde_yaml::from_str(&text).map_err(|e| format!("bad fixture: {e}"))?;
    let mut tasks = fixture.tasks.unwrap_or_else(default_tasks);
    let mut spec = fixture.run.clone();
    let mut status = CompositionRunStatus::default();
    for (n, round) in fixture.rounds.iter().enumerate() {
        let offset = round
            .at
            .as_deref()
            .map(parse_duration)
            .transpose()?
            .unwrap_or_default();
        let now = base_time() + SignedDuration::try_from(offset).map_err(|e| e.to_string())?;
        spec.cancel |= round.cancel;
        if let Some(changed) = &round.tasks {
            tasks = changed.clone();
        }
        let input = PlanInput {
            run_name: "r",
            uid: "uid-r",
            namespace: "ns",
            generation: Some(1),
            depth: fixture.depth,
            chain: fixture.chain.as_deref().unwrap_or(&fixture.run.composition),
            spec: &spec,
            status: &status,
            composition: fixture.composition.as_ref(),
            tasks: &tasks,
            observed: &round.observe,
            now,
            deleting: round.delete,
            admission: round
                .queued
                .clone()
                .map_or(Admission::Admitted, Admission::Queued),
            pod_budget: round.pod_budget,
        };
        let plan = engine::plan(&input);
        check(&round.expect, &plan).map_err(|e| {
            format!(
                "round {n}: {e}\nstatus: {:#?}\nactions: {:#?}",
                plan.status, plan.actions
            )
        })?;
        // Planning again from the same state must give the same answer: the controller
        // may reconcile any number of times.
        let again = engine::plan(&input);
        if again != plan {
            return Err(format!("round {n}: planning twice gave different answers"));
        }
        status = plan.status;
    }
    Ok(())
}

fn check(expect: &Expect, plan: &engine::Plan) -> Result<(), String> {
    let status = &plan.status;
    if let Some(phase) = &expect.phase {
        let got = format!("{:?}", status.phase);
        if &got != phase {
            return Err(format!("phase: want {phase}, got {got}"));
        }
    }
    if let Some(progress) = &expect.progress
        && status.progress.as_ref() != Some(progress)
    {
        return Err(format!(
            "progress: want {progress}, got {:?}",
            status.progress
        ));
    }
    for (step, phase) in &expect.steps {
        let got = status
            .steps
            .iter()
            .find(|s| &s.name == step)
            .map(|s| format!("{:?}", s.phase));
        if got.as_ref() != Some(phase) {
            return Err(format!("step {step}: want {phase}, got {got:?}"));
        }
    }
    let mut creates = BTreeSet::new();
    let mut deletes = BTreeSet::new();
    for action in &plan.actions {
        match action {
            Action::CreatePod(p) => {
                creates.insert(p.name.clone());
            }
            Action::CreateRun(r) => {
                creates.insert(r.name.clone());
            }
            Action::DeletePod { name } | Action::CancelRun { name } => {
                deletes.insert(name.clone());
            }
            Action::ShareWorkspace { .. } => {}
        }
    }
    if let Some(want) = &expect.shares {
        let got: Vec<String> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::ShareWorkspace {
                    claim_of, run, uid, ..
                } => Some(format!("{claim_of} -> {run} ({uid})")),
                _ => None,
            })
            .collect();
        if &got != want {
            return Err(format!("shares: want {want:?}, got {got:?}"));
        }
    }
    for (pod, want) in &expect.pods {
        let got = plan.actions.iter().find_map(|a| match a {
            Action::CreatePod(p) if &p.name == pod => Some(format!(
                "workspace of {}; ledger runs [{}]",
                p.workspace_of.as_deref().unwrap_or("its run"),
                p.ledger_runs.join(", ")
            )),
            _ => None,
        });
        if got.as_ref() != Some(want) {
            return Err(format!("pod {pod}: want {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &expect.handed_over {
        let got = status
            .handed_over
            .as_ref()
            .map(|h| format!("{} ({})", h.run, h.uid));
        if got.as_ref() != Some(want) {
            return Err(format!("handedOver: want {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &expect.ledger_of {
        let got: Vec<String> = status
            .resources
            .iter()
            .map(|r| format!("{}/{} of {}", r.kind, r.id, r.run.as_deref().unwrap_or("r")))
            .collect();
        if &got != want {
            return Err(format!("ledger (with runs): want {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &expect.creates {
        let want: BTreeSet<String> = want.iter().cloned().collect();
        if want != creates {
            return Err(format!("creates: want {want:?}, got {creates:?}"));
        }
    }
    if let Some(want) = &expect.deletes {
        let want: BTreeSet<String> = want.iter().cloned().collect();
        if want != deletes {
            return Err(format!("deletes: want {want:?}, got {deletes:?}"));
        }
    }
    for (pod, want) in &expect.inputs {
        let got = plan.actions.iter().find_map(|a| match a {
            Action::CreatePod(p) if &p.name == pod => Some(&p.inputs),
            _ => None,
        });
        if got != Some(want) {
            return Err(format!("inputs of {pod}: want {want:?}, got {got:?}"));
        }
    }
    for (run, want) in &expect.params {
        let got = plan.actions.iter().find_map(|a| match a {
            Action::CreateRun(r) if &r.name == run => Some(&r.params),
            _ => None,
        });
        let Some(got) = got else {
            return Err(format!("run {run} not created"));
        };
        for (k, v) in want {
            if got.get(k) != Some(v) {
                return Err(format!(
                    "params of {run}: {k} want {v:?}, got {:?}",
                    got.get(k)
                ));
            }
        }
    }
    for (step, want) in &expect.outputs {
        let got = status
            .steps
            .iter()
            .find(|s| &s.name == step)
            .map(|s| &s.outputs);
        if got != Some(want) {
            return Err(format!("outputs of {step}: want {want:?}, got {got:?}"));
        }
    }
    for (step, want) in &expect.messages {
        let got = status
            .steps
            .iter()
            .find(|s| &s.name == step)
            .and_then(|s| s.message.clone())
            .unwrap_or_default();
        if !got.contains(want.as_str()) {
            return Err(format!(
                "message of {step}: want it to contain {want:?}, got {got:?}"
            ));
        }
    }
    for (step, want) in &expect.children {
        let got = status
            .steps
            .iter()
            .find(|s| &s.name == step)
            .map(maestro_api::StepStatus::child_runs_marked)
            .unwrap_or_default();
        if &got != want {
            return Err(format!("children of {step}: want {want:?}, got {got:?}"));
        }
    }
    for (step, want) in &expect.approved_by {
        let got = status
            .steps
            .iter()
            .find(|s| &s.name == step)
            .and_then(|s| s.approved_by.clone());
        if got.as_ref() != Some(want) {
            return Err(format!("approvedBy of {step}: want {want}, got {got:?}"));
        }
    }
    for (run, want) in &expect.started_by {
        let got = plan.actions.iter().find_map(|a| match a {
            Action::CreateRun(r) if &r.name == run => Some(&r.started_by),
            _ => None,
        });
        if got != Some(want) {
            return Err(format!("startedBy of {run}: want {want:?}, got {got:?}"));
        }
    }
    for (step, want) in &expect.approvals {
        let got: Vec<&maestro_api::ApprovalRecord> = status
            .steps
            .iter()
            .find(|s| &s.name == step)
            .map(|s| s.approvals.iter().collect())
            .unwrap_or_default();
        let matches = got.len() == want.len()
            && got.iter().zip(want).all(|(record, want)| {
                let head = format!("{} {:?}", record.by, record.decision);
                match (want.split_once(" (ignored: "), &record.ignored) {
                    (None, None) => *want == head,
                    (Some((w_head, w_why)), Some(why)) => {
                        w_head == head && why.contains(w_why.trim_end_matches(')'))
                    }
                    _ => false,
                }
            });
        if !matches {
            return Err(format!("approvals of {step}: want {want:?}, got {got:#?}"));
        }
    }
    if let Some(want) = &expect.invalid {
        let got = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Invalid")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        if !got.contains(want.as_str()) {
            return Err(format!(
                "Invalid condition: want it to contain {want:?}, got {got:?}"
            ));
        }
    }
    if let Some(want) = &expect.reason {
        let got = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Succeeded")
            .map(|c| c.reason.clone());
        if got.as_ref() != Some(want) {
            return Err(format!("Succeeded reason: want {want}, got {got:?}"));
        }
    }
    if let Some(want) = &expect.condition_message {
        let got = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Succeeded")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        if !got.contains(want.as_str()) {
            return Err(format!(
                "Succeeded message: want it to contain {want:?}, got {got:?}"
            ));
        }
    }
    for (type_, want) in &expect.conditions {
        let got = status
            .conditions
            .iter()
            .find(|c| &c.type_ == type_)
            .map(|c| format!("{} {}: {}", c.status, c.reason, c.message));
        if !got.as_deref().is_some_and(|g| g.contains(want.as_str())) {
            return Err(format!(
                "{type_} condition: want it to contain {want:?}, got {got:?}"
            ));
        }
    }
    if let Some(want) = &expect.events {
        let got: Vec<&str> = plan.events.iter().map(|e| e.reason).collect();
        if &got != want {
            return Err(format!("events: want {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &expect.requeue {
        let want = parse_duration(want)?;
        if plan.requeue_after != Some(want) {
            return Err(format!(
                "requeue: want {want:?}, got {:?}",
                plan.requeue_after
            ));
        }
    }
    if let Some(want) = &expect.ledger {
        let got: Vec<String> = status
            .resources
            .iter()
            .map(|r| format!("{}/{}", r.kind, r.id))
            .collect();
        if &got != want {
            return Err(format!("ledger: want {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &expect.cleanup {
        let got = status.cleanup.as_ref().map(|c| format!("{:?}", c.phase));
        if got.as_ref() != Some(want) {
            return Err(format!(
                "cleanup: want {want}, got {got:?} ({:?})",
                status.cleanup
            ));
        }
    }
    Ok(())
}

#[test]
fn engine_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engine");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no fixtures in {}", dir.display());
    let failures: Vec<String> = paths
        .iter()
        .filter_map(|p| {
            run_fixture(p)
                .err()
                .map(|e| format!("{}: {e}", p.display()))
        })
        .collect();
    println!("{} engine fixtures, {} failed", paths.len(), failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The standard library's Tasks (operator/library) parse as Tasks, and their
/// templated defaults render: the deprovision task takes the run's ledger by default.
#[test]
fn library_task_defaults_render() {
    use super::expr::{LedgerScope, Scope, render};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../library");
    let mut tasks = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("library dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue; // the library's image folders
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let task: maestro_api::Task =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        tasks.insert(task.metadata.name.clone().unwrap_or_default(), task.spec);
    }
    for name in [
        "shell",
        "git",
        "http",
        "notify",
        "container",
        "ec2-provision",
        "ec2-deprovision",
    ] {
        assert!(tasks.contains_key(name), "library lacks {name}");
    }
    let mut scope = Scope {
        ledger: vec![
            LedgerScope {
                kind: "ec2-instance".into(),
                id: "i-1".into(),
                region: "eu-west-1".into(),
                step: "p".into(),
            },
            LedgerScope {
                kind: "ec2-instance".into(),
                id: "i-2".into(),
                region: "eu-west-1".into(),
                step: "p".into(),
            },
        ],
        ..Scope::default()
    };
    let deprovision = &tasks["ec2-deprovision"];
    let default = |name: &str| {
        deprovision
            .inputs
            .iter()
            .find(|i| i.name == name)
            .and_then(|i| i.default.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        render(&default("instanceIds"), &scope),
        Ok(serde_json::json!(["i-1", "i-2"]))
    );
    assert_eq!(
        render(&default("region"), &scope),
        Ok(serde_json::json!("eu-west-1"))
    );
    scope.ledger.clear();
    scope.context.insert("awsRegion".into(), "us-west-2".into());
    assert_eq!(
        render(&default("instanceIds"), &scope),
        Ok(serde_json::json!([]))
    );
    assert_eq!(
        render(&default("region"), &scope),
        Ok(serde_json::json!("us-west-2"))
    );
    assert_eq!(
        render(&default("endpoint"), &scope),
        Ok(serde_json::json!(""))
    );
}
