//! Kubernetes objects turned into the engine's observations. Pure.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use maestro_api::labels;
use maestro_api::{Approval, CompositionRun};
use maestro_engine::{ObservedApproval, ObservedPod, ObservedRun, PodPhase, StepResult};

/// Container waiting reasons that never resolve by themselves: the step fails at once
/// instead of hanging (nothing can be pulled on a node that has no registry).
const STUCK_REASONS: [&str; 4] = [
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// A step pod as the engine sees it; `None` for a pod without Maestro's labels.
pub fn pod(pod: &Pod) -> Option<ObservedPod> {
    let pod_labels = pod.labels();
    let step = pod_labels.get(labels::STEP)?.clone();
    let attempt = pod_labels.get(labels::ATTEMPT)?.parse().ok()?;
    let status = pod.status.clone().unwrap_or_default();
    let mut phase = match status.phase.as_deref() {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        _ => PodPhase::Pending,
    };
    let statuses = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    let mut message = status.message.clone().or(status.reason.clone());
    for cs in statuses.clone() {
        if let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = waiting.reason.clone().unwrap_or_default();
            if STUCK_REASONS.contains(&reason.as_str()) {
                phase = PodPhase::Failed;
                message = Some(format!(
                    "container {}: {reason}: {}",
                    cs.name,
                    waiting.message.clone().unwrap_or_default()
                ));
            }
        }
    }
    let step_state = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == labels::STEP_CONTAINER)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone());
    let result = step_state.as_ref().map(|t| {
        let mut result = t
            .message
            .as_deref()
            .filter(|m| !m.trim().is_empty())
            .map(|m| {
                serde_json::from_str::<StepResult>(m).unwrap_or_else(|e| StepResult {
                    error: Some(format!(
                        "the step's result is not valid JSON ({e}): {}",
                        excerpt(m)
                    )),
                    ..StepResult::default()
                })
            })
            .unwrap_or_default();
        // The agent exits with its result's code, so the two agree; where they do not (no
        // result written, or the container killed after it), the container's code wins
        // over a claim of success.
        if result.exit_code == 0 {
            result.exit_code = t.exit_code;
        }
        if result.error.is_none()
            && t.exit_code != 0
            && let Some(reason) = t
                .reason
                .as_deref()
                .filter(|r| *r != "Error" && *r != "Completed")
        {
            // OOMKilled and similar say more than an exit code.
            result.error = Some(format!("{reason} (exit code {})", t.exit_code));
        }
        result
    });
    if phase == PodPhase::Failed && result.is_none() && message.is_none() {
        // An init container (the agent install) may be what failed.
        message = status
            .init_container_statuses
            .iter()
            .flatten()
            .find_map(|c| {
                let t = c.state.as_ref()?.terminated.as_ref()?;
                (t.exit_code != 0)
                    .then(|| format!("init container {} exited with code {}", c.name, t.exit_code))
            });
    }
    Some(ObservedPod {
        name: pod.name_any(),
        step,
        attempt,
        phase,
        created: pod.creation_timestamp().map(|t| t.0),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        result,
        message,
    })
}

/// Another run as the engine sees it.
pub fn run(run: &CompositionRun) -> ObservedRun {
    let status = run.status.clone().unwrap_or_default();
    ObservedRun {
        name: run.name_any(),
        composition: run.spec.composition.clone(),
        phase: status.phase,
        created: run.creation_timestamp().map(|t| t.0),
        completed: status.completion_time.map(|t| t.0),
    }
}

/// An approval of `run` as the engine sees it, or None when it does not count for this
/// run: it must be owned by this very run (its UID, not only its name, so an approval of
/// an earlier run of the same name never passes a gate) and created once the gate was
/// waiting (a decision made before the question was asked answers nothing).
pub fn approval(a: &Approval, run: &CompositionRun) -> Option<ObservedApproval> {
    if a.spec.run != run.name_any() || !owned_by(a, run) {
        return None;
    }
    let created = a.creation_timestamp().map(|t| t.0);
    let gate_started = run
        .status
        .as_ref()
        .and_then(|s| s.steps.iter().find(|step| step.name == a.spec.step))
        .and_then(|step| step.start_time.as_ref())
        .map(|t| t.0);
    if let (Some(created), Some(started)) = (created, gate_started)
        && created < started
    {
        return None;
    }
    Some(ObservedApproval {
        name: a.name_any(),
        step: a.spec.step.clone(),
        decision: a.spec.decision,
        by: a.spec.approved_by.clone(),
        groups: a.spec.approver_groups.clone(),
        comment: a.spec.comment.clone(),
        created,
    })
}

/// Whether `object` names `run` as an owner by UID. Names and labels can be set by anyone
/// who may create the object; the UID is the run's own.
/// The run's step pods that were deleted after their step's container had ended, as their
/// last state showed them (`deleted`), when the cache no longer has them (`seen`). A pod
/// deleted mid-step gets SIGTERM, its agent writes what it has done so far (an EC2
/// instance it launched) and exits, and the pod goes a moment later: the pass after the
/// deletion found no pod and never read that result, and the instance was left running
/// (the chaos suite's pods-deleted scenario, with EC2 runs). A pod whose container never
/// ended before it went is not here: the engine takes it as deleted mid-step.
pub fn ended_before_deletion(
    deleted: &[std::sync::Arc<Pod>],
    run: &CompositionRun,
    seen: &[ObservedPod],
) -> Vec<ObservedPod> {
    deleted
        .iter()
        .filter(|p| owned_by(p.as_ref(), run))
        .filter_map(|p| pod(p))
        .filter(|gone| !seen.iter().any(|s| s.name == gone.name))
        .filter_map(|mut gone| {
            let result = gone.result.as_ref()?;
            if !matches!(gone.phase, PodPhase::Succeeded | PodPhase::Failed) {
                gone.phase = if result.exit_code == 0 && result.error.is_none() {
                    PodPhase::Succeeded
                } else {
                    PodPhase::Failed
                };
            }
            Some(gone)
        })
        .collect()
}

pub fn owned_by(object: &impl ResourceExt, run: &CompositionRun) -> bool {
    let Some(uid) = run.uid() else { return false };
    object
        .owner_references()
        .iter()
        .any(|o| o.uid == uid && o.kind == "CompositionRun" && o.name == run.name_any())
}

fn excerpt(text: &str) -> String {
    let mut s: String = text.chars().take(200).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_from(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    /// A provision step's pod of run `r` (uid u-1), deleted mid-step: `state` is its step
    /// container's last state.
    fn deleted_provision_pod(phase: &str, state: &str) -> std::sync::Arc<Pod> {
        std::sync::Arc::new(pod_from(&format!(
            r#"
metadata:
  name: r-provision-1
  namespace: ns
  labels: {{maestro.dev/run: r, maestro.dev/step: provision, maestro.dev/attempt: "1"}}
  ownerReferences: [{{apiVersion: maestro.dev/v1alpha1, kind: CompositionRun, name: r, uid: u-1}}]
status:
  phase: {phase}
  containerStatuses:
    - {{name: step, image: agent, imageID: "", ready: false, restartCount: 0, state: {state}}}
"#
        )))
    }

    #[test]
    fn a_pod_deleted_after_its_step_wrote_its_result_is_seen_failed_with_what_it_made() {
        let message = r#"{"exitCode":143,"error":"SIGTERM received while waiting","resources":[{"kind":"ec2-instance","id":"i-1","region":"eu-west-1"}]}"#;
        let state = format!(
            "{{terminated: {{exitCode: 143, message: '{message}', startedAt: '2026-12-01T10:00:00Z', finishedAt: '2026-12-01T10:00:05Z'}}}}"
        );
        let run = waiting_run();
        let gone = ended_before_deletion(&[deleted_provision_pod("Running", &state)], &run, &[]);
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert_eq!(gone[0].phase, PodPhase::Failed);
        let result = gone[0].result.as_ref().expect("the result the agent wrote");
        assert_eq!(
            result.resources[0].id, "i-1",
            "the instance reaches the ledger"
        );

        // Seen in the cache still: the cache's state counts, not the memory's.
        let seen = pod(&deleted_provision_pod("Running", &state)).expect("a step pod");
        let gone = ended_before_deletion(&[deleted_provision_pod("Failed", &state)], &run, &[seen]);
        assert!(gone.is_empty(), "{gone:?}");
    }

    #[test]
    fn a_pod_deleted_before_its_step_ended_or_not_the_runs_is_not_seen() {
        let running = "{running: {startedAt: '2026-12-01T10:00:00Z'}}";
        let run = waiting_run();
        assert!(
            ended_before_deletion(&[deleted_provision_pod("Running", running)], &run, &[])
                .is_empty()
        );
        let ended = "{terminated: {exitCode: 0, startedAt: '2026-12-01T10:00:00Z', finishedAt: '2026-12-01T10:00:05Z'}}";
        let mut other: CompositionRun = waiting_run();
        other.metadata.uid = Some("u-2".into());
        assert!(
            ended_before_deletion(&[deleted_provision_pod("Succeeded", ended)], &other, &[])
                .is_empty(),
            "a pod another run of that name owned"
        );
    }

    /// A run `r` (uid u-1) whose gate `sign-off` started waiting at 10:00:00.
    fn waiting_run() -> CompositionRun {
        serde_yaml::from_str(
            r#"
apiVersion: maestro.dev/v1alpha1
kind: CompositionRun
metadata: {name: r, namespace: ns, uid: u-1}
spec: {composition: c}
status:
  phase: WaitingApproval
  steps:
    - {name: sign-off, phase: WaitingApproval, startTime: "2026-12-01T10:00:00Z"}
"#,
        )
        .unwrap()
    }

    fn approval_of(owner_uid: Option<&str>, created: &str) -> Approval {
        let owner = owner_uid.map_or(String::new(), |uid| {
            format!(
                "ownerReferences: [{{apiVersion: maestro.dev/v1alpha1, kind: CompositionRun, \
                 name: r, uid: {uid}}}]"
            )
        });
        serde_yaml::from_str(&format!(
            r#"
apiVersion: maestro.dev/v1alpha1
kind: Approval
metadata: {{name: a, namespace: ns, creationTimestamp: "{created}", {owner}}}
spec: {{run: r, step: sign-off, decision: Approve, approvedBy: alice}}
"#
        ))
        .unwrap()
    }

    /// Approvals are bound to the run's UID and to the time its gate started waiting:
    /// one left from an earlier run of the same name, one naming the run without owning
    /// it, and one made before the gate asked all count for nothing.
    #[test]
    fn an_approval_counts_only_for_its_own_run_and_after_the_gate_asked() {
        let run = waiting_run();
        let own = approval(&approval_of(Some("u-1"), "2026-12-01T10:00:05Z"), &run);
        assert_eq!(own.map(|a| a.by), Some("alice".to_string()));
        let earlier_run = approval(&approval_of(Some("u-0"), "2026-12-01T10:00:05Z"), &run);
        assert_eq!(earlier_run, None);
        let unowned = approval(&approval_of(None, "2026-12-01T10:00:05Z"), &run);
        assert_eq!(unowned, None);
        let too_early = approval(&approval_of(Some("u-1"), "2026-12-01T09:59:59Z"), &run);
        assert_eq!(too_early, None);
    }

    #[test]
    fn reads_the_result_from_the_termination_message() {
        let p = pod_from(
            r#"
metadata: {name: r-a-1, labels: {maestro.dev/step: a, maestro.dev/attempt: "1"}}
status:
  phase: Succeeded
  containerStatuses:
    - name: step
      image: x
      imageID: ""
      ready: false
      restartCount: 0
      state: {terminated: {exitCode: 0, message: '{"outputs":{"greeting":"hi"},"exitCode":0}'}}
"#,
        );
        let o = pod(&p).unwrap();
        assert_eq!(o.phase, PodPhase::Succeeded);
        assert_eq!(o.result.unwrap().outputs["greeting"], "hi");
    }

    #[test]
    fn oom_and_garbage_results_are_explained() {
        let p = pod_from(
            r#"
metadata: {name: r-a-1, labels: {maestro.dev/step: a, maestro.dev/attempt: "2"}}
status:
  phase: Failed
  containerStatuses:
    - {name: step, image: x, imageID: "", ready: false, restartCount: 0, state: {terminated: {exitCode: 137, reason: OOMKilled}}}
"#,
        );
        let o = pod(&p).unwrap();
        assert_eq!(o.attempt, 2);
        assert_eq!(
            o.result.unwrap().error.unwrap(),
            "OOMKilled (exit code 137)"
        );

        let p = pod_from(
            r#"
metadata: {name: r-a-1, labels: {maestro.dev/step: a, maestro.dev/attempt: "1"}}
status:
  phase: Failed
  containerStatuses:
    - {name: step, image: x, imageID: "", ready: false, restartCount: 0, state: {terminated: {exitCode: 1, message: "not json"}}}
"#,
        );
        assert!(
            pod(&p)
                .unwrap()
                .result
                .unwrap()
                .error
                .unwrap()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn an_image_that_is_not_on_the_node_fails_the_pod() {
        let p = pod_from(
            r#"
metadata: {name: r-a-1, labels: {maestro.dev/step: a, maestro.dev/attempt: "1"}}
status:
  phase: Pending
  containerStatuses:
    - {name: step, image: x, imageID: "", ready: false, restartCount: 0, state: {waiting: {reason: ErrImageNeverPull, message: 'image "x" is not present'}}}
"#,
        );
        let o = pod(&p).unwrap();
        assert_eq!(o.phase, PodPhase::Failed);
        assert!(o.message.unwrap().contains("ErrImageNeverPull"));
    }

    #[test]
    fn pods_without_labels_are_ignored() {
        assert!(pod(&Pod::default()).is_none());
    }
}
