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
