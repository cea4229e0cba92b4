//! `kubectl maestro describe RUN`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use k8s_openapi::jiff::Timestamp;
use maestro_api::{CompositionRun, CompositionRunStatus, StepPhase, StepStatus};

use crate::Target;
use crate::lookup::get_run;
use crate::table::{NONE, one_line, render_table, wire_name};
use crate::timefmt::{format_duration, moment, seconds_between, span};

#[derive(clap::Args, Debug)]
pub struct DescribeArgs {
    /// The CompositionRun to describe.
    pub run: String,
}

pub async fn run(target: &Target, args: DescribeArgs) -> anyhow::Result<ExitCode> {
    let run = get_run(target, &args.run).await?;
    let text = describe(&run, Timestamp::now());
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// The width of the top-level labels (`Composition:` and two spaces), as kubectl aligns
/// them.
const LABEL_WIDTH: usize = 14;

/// The whole description, as text.
pub fn describe(run: &CompositionRun, now: Timestamp) -> String {
    let default_status = CompositionRunStatus::default();
    // A run the operator has not picked up yet has no status; describe it as empty.
    let status = run.status.as_ref().unwrap_or(&default_status);
    let mut out = String::new();
    let mut field = |label: &str, value: &str| {
        let label = format!("{label}:");
        let _ = writeln!(out, "{label:<LABEL_WIDTH$}{value}");
    };
    field("Name", run.metadata.name.as_deref().unwrap_or_default());
    field(
        "Namespace",
        run.metadata.namespace.as_deref().unwrap_or_default(),
    );
    field("Composition", &run.spec.composition);
    field("Started by", &started_by(run));
    field(
        "Phase",
        &if run.status.is_some() {
            wire_name(&status.phase)
        } else {
            "<not yet seen by the operator>".to_string()
        },
    );
    field("Progress", status.progress.as_deref().unwrap_or(NONE));
    if let Some(agent) = &status.agent {
        let cache = if agent.cache_hit {
            "warm cache"
        } else {
            "cold cache"
        };
        field(
            "Agent",
            &format!("{} slot {} ({cache})", agent.name, agent.slot),
        );
    }
    if run.spec.cancel {
        field("Cancel", "requested");
    }
    field("Started", &moment(status.start_time.as_ref(), now));
    field("Completed", &moment(status.completion_time.as_ref(), now));
    if status.start_time.is_some() {
        field(
            "Duration",
            &span(
                status.start_time.as_ref(),
                status.completion_time.as_ref(),
                now,
            ),
        );
    }
    if let Some(on_failure_run) = &status.on_failure_run {
        field("On failure", on_failure_run);
    }
    if let Some(of) = &run.spec.rerun_of {
        let from = of
            .from
            .as_ref()
            .map(|step| format!(" from step {step}"))
            .unwrap_or_default();
        field("Rerun of", &format!("{}{from}", of.run));
    }
    if let Some(workspace_of) = &status.workspace_of {
        field("Workspace", &format!("{workspace_of}'s"));
    }
    if let Some(handed) = &status.handed_over {
        field(
            "Handed over",
            &format!(
                "ledger ({} resource(s)) and workspace to rerun {}",
                handed.resources.len(),
                handed.run
            ),
        );
    }

    section_map(&mut out, "Params", &run.spec.params);
    section_map(&mut out, "Context", &status.context);
    section_conditions(&mut out, status);
    section_steps(&mut out, &status.steps, now);
    section_outputs(&mut out, &status.steps);
    section_list(
        &mut out,
        "Child runs",
        status
            .steps
            .iter()
            .filter(|step| !step.child_runs.is_empty())
            .map(|step| (step.name.as_str(), step.child_runs_marked())),
    );
    section_approvals(&mut out, &status.steps, now);
    section_resources(&mut out, status);
    out
}

/// A titled list of `key:  value` lines, keys aligned, or `<none>`.
fn section_map(out: &mut String, title: &str, entries: &BTreeMap<String, String>) {
    section_list(
        out,
        title,
        entries
            .iter()
            .map(|(key, value)| (key.as_str(), value.clone())),
    );
}

fn section_list<'a>(
    out: &mut String,
    title: &str,
    entries: impl Iterator<Item = (&'a str, String)>,
) {
    let entries: Vec<(&str, String)> = entries.collect();
    if entries.is_empty() {
        let label = format!("{title}:");
        let _ = writeln!(out, "{label:<LABEL_WIDTH$}{NONE}");
        return;
    }
    let _ = writeln!(out, "{title}:");
    let width = entries
        .iter()
        .map(|(key, _)| key.len() + 1)
        .max()
        .unwrap_or(0);
    for (key, value) in entries {
        let key = format!("{key}:");
        let _ = writeln!(out, "  {key:<width$}  {value}");
    }
}

fn section_table(out: &mut String, title: &str, headers: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        let label = format!("{title}:");
        let _ = writeln!(out, "{label:<LABEL_WIDTH$}{NONE}");
    } else {
        let _ = writeln!(out, "{title}:");
        out.push_str(&render_table("  ", headers, rows));
    }
}

fn section_conditions(out: &mut String, status: &CompositionRunStatus) {
    let rows: Vec<Vec<String>> = status
        .conditions
        .iter()
        .map(|condition| {
            vec![
                condition.type_.clone(),
                condition.status.clone(),
                condition.reason.clone(),
                one_line(&condition.message),
            ]
        })
        .collect();
    section_table(
        out,
        "Conditions",
        &["TYPE", "STATUS", "REASON", "MESSAGE"],
        &rows,
    );
}

fn section_steps(out: &mut String, steps: &[StepStatus], now: Timestamp) {
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|step| {
            let mut message = step.message.as_deref().map(one_line).unwrap_or_default();
            if let Some(next) = step
                .next_attempt_time
                .as_ref()
                .filter(|_| !step.phase.is_finished())
            {
                let wait = format_duration(seconds_between(now, next.0));
                let sep = if message.is_empty() { "" } else { "; " };
                let _ = write!(message, "{sep}next attempt in {wait}");
            }
            vec![
                step.name.clone(),
                wire_name(&step.phase),
                step.attempts.to_string(),
                span(step.start_time.as_ref(), step.finish_time.as_ref(), now),
                step.node_name.clone().unwrap_or_else(|| "-".into()),
                message,
            ]
        })
        .collect();
    section_table(
        out,
        "Steps",
        &["STEP", "PHASE", "ATTEMPTS", "DURATION", "NODE", "MESSAGE"],
        &rows,
    );
}

fn section_outputs(out: &mut String, steps: &[StepStatus]) {
    let with_outputs: Vec<&StepStatus> = steps
        .iter()
        .filter(|step| !step.outputs.is_empty())
        .collect();
    if with_outputs.is_empty() {
        let _ = writeln!(out, "{:<LABEL_WIDTH$}{NONE}", "Outputs:");
        return;
    }
    let _ = writeln!(out, "Outputs:");
    for step in with_outputs {
        let _ = writeln!(out, "  {}:", step.name);
        let width = step
            .outputs
            .keys()
            .map(|key| key.len() + 1)
            .max()
            .unwrap_or(0);
        for (key, value) in &step.outputs {
            let key = format!("{key}:");
            let _ = writeln!(out, "    {key:<width$}  {value}");
        }
    }
}

/// Who started the run: its `startedBy`, else the trigger the operator recorded (a
/// scheduled or pushed run has no starter), else nothing.
fn started_by(run: &CompositionRun) -> String {
    if let Some(user) = &run.spec.started_by {
        return user.clone();
    }
    match run
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(maestro_api::labels::TRIGGER))
    {
        Some(trigger) => format!("<the {trigger} trigger>"),
        None => NONE.to_string(),
    }
}

/// Every decision on the run's approval gates: who, what, when, whether it counts, and
/// the comment.
fn section_approvals(out: &mut String, steps: &[StepStatus], now: Timestamp) {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for step in steps {
        for record in &step.approvals {
            rows.push(vec![
                step.name.clone(),
                record.by.clone(),
                wire_name(&record.decision),
                moment(record.time.as_ref(), now),
                match &record.ignored {
                    None => "yes".into(),
                    Some(why) => format!("no: {}", one_line(why)),
                },
                record.comment.as_deref().map(one_line).unwrap_or_default(),
            ]);
        }
        // A status written before decisions were recorded one by one names only who
        // decided.
        if step.approvals.is_empty()
            && let Some(by) = &step.approved_by
        {
            let decision = if step.phase == StepPhase::Failed {
                "Reject"
            } else {
                "Approve"
            };
            rows.push(vec![
                step.name.clone(),
                by.clone(),
                decision.into(),
                "-".into(),
                "yes".into(),
                String::new(),
            ]);
        }
    }
    section_table(
        out,
        "Approvals",
        &["STEP", "BY", "DECISION", "TIME", "COUNTS", "COMMENT"],
        &rows,
    );
}

fn section_resources(out: &mut String, status: &CompositionRunStatus) {
    let rows: Vec<Vec<String>> = status
        .resources
        .iter()
        .map(|entry| {
            vec![
                entry.kind.clone(),
                entry.id.clone(),
                entry.region.clone().unwrap_or_else(|| "-".into()),
                entry.step.clone(),
            ]
        })
        .collect();
    section_table(out, "Resources", &["KIND", "ID", "REGION", "STEP"], &rows);
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use maestro_api::{ApprovalRecord, CompositionRunSpec, Decision, LedgerEntry, RunPhase};

    fn at(text: &str) -> Time {
        Time(text.parse().unwrap())
    }

    #[test]
    fn describes_a_run_waiting_for_approval() {
        let mut run = CompositionRun::new(
            "acceptance-tests-x7k2p",
            CompositionRunSpec {
                composition: "acceptance-tests".into(),
                params: BTreeMap::from([("version".into(), "1.4.3".into())]),
                cancel: false,
                priority: 0,
                started_by: Some("carol".into()),
                rerun_of: None,
            },
        );
        run.metadata.namespace = Some("qa".into());
        run.status = Some(CompositionRunStatus {
            phase: RunPhase::WaitingApproval,
            progress: Some("2/3".into()),
            start_time: Some(at("2025-05-01T10:00:00Z")),
            steps: vec![
                StepStatus {
                    name: "provision".into(),
                    phase: StepPhase::Succeeded,
                    attempts: 2,
                    start_time: Some(at("2025-05-01T10:00:00Z")),
                    finish_time: Some(at("2025-05-01T10:01:05Z")),
                    node_name: Some("node-1".into()),
                    outputs: BTreeMap::from([
                        ("instanceId".into(), "i-0d1e".into()),
                        ("publicIp".into(), "54.12.3.4".into()),
                    ]),
                    ..Default::default()
                },
                StepStatus {
                    name: "sign-off".into(),
                    phase: StepPhase::WaitingApproval,
                    start_time: Some(at("2025-05-01T10:01:05Z")),
                    message: Some("waiting for\napproval".into()),
                    approvals: vec![
                        ApprovalRecord {
                            name: "acceptance-tests-x7k2p-sign-off-abcde".into(),
                            by: "alice".into(),
                            decision: Decision::Approve,
                            time: Some(at("2025-05-01T10:01:30Z")),
                            comment: Some("tests are green".into()),
                            ignored: None,
                        },
                        ApprovalRecord {
                            name: "acceptance-tests-x7k2p-sign-off-fghij".into(),
                            by: "carol".into(),
                            decision: Decision::Approve,
                            time: Some(at("2025-05-01T10:01:40Z")),
                            comment: None,
                            ignored: Some("carol started the run and may not approve it".into()),
                        },
                    ],
                    ..Default::default()
                },
                StepStatus {
                    name: "deprovision".into(),
                    ..Default::default()
                },
            ],
            resources: vec![LedgerEntry {
                kind: "ec2-instance".into(),
                id: "i-0d1e".into(),
                region: Some("eu-west-1".into()),
                step: "provision".into(),
                run: None,
            }],
            conditions: vec![Condition {
                type_: "Succeeded".into(),
                status: "Unknown".into(),
                reason: "WaitingApproval".into(),
                message: "step sign-off waits for approval".into(),
                last_transition_time: at("2025-05-01T10:01:05Z"),
                observed_generation: None,
            }],
            ..Default::default()
        });
        let text = describe(&run, "2025-05-01T10:02:00Z".parse().unwrap());
        let expected = "\
Name:         acceptance-tests-x7k2p
Namespace:    qa
Composition:  acceptance-tests
Started by:   carol
Phase:        WaitingApproval
Progress:     2/3
Started:      2025-05-01T10:00:00Z (2m ago)
Completed:    <none>
Duration:     2m00s
Params:
  version:  1.4.3
Context:      <none>
Conditions:
  TYPE        STATUS    REASON            MESSAGE
  Succeeded   Unknown   WaitingApproval   step sign-off waits for approval
Steps:
  STEP          PHASE             ATTEMPTS   DURATION   NODE     MESSAGE
  provision     Succeeded         2          1m05s      node-1
  sign-off      WaitingApproval   0          55s        -        waiting for approval
  deprovision   Pending           0          -          -
Outputs:
  provision:
    instanceId:  i-0d1e
    publicIp:    54.12.3.4
Child runs:   <none>
Approvals:
  STEP       BY      DECISION   TIME                             COUNTS                                             COMMENT
  sign-off   alice   Approve    2025-05-01T10:01:30Z (30s ago)   yes                                                tests are green
  sign-off   carol   Approve    2025-05-01T10:01:40Z (20s ago)   no: carol started the run and may not approve it
Resources:
  KIND           ID       REGION      STEP
  ec2-instance   i-0d1e   eu-west-1   provision
";
        assert_eq!(text, expected);
    }

    #[test]
    fn names_the_agent_slot_of_a_routed_run() {
        let mut run = CompositionRun::new(
            "build-abc",
            CompositionRunSpec {
                composition: "build".into(),
                params: BTreeMap::new(),
                cancel: false,
                priority: 0,
                started_by: None,
                rerun_of: None,
            },
        );
        run.status = Some(CompositionRunStatus {
            phase: RunPhase::Running,
            agent: Some(maestro_api::RunAgent {
                name: "builders".into(),
                slot: 1,
                cache_hit: true,
                assigned_time: None,
            }),
            ..Default::default()
        });
        let text = describe(&run, "2025-05-01T10:02:00Z".parse().unwrap());
        assert!(
            text.contains("Agent:        builders slot 1 (warm cache)\n"),
            "{text}"
        );
    }
}
