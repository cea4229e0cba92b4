//! A run's step pods as a reader of their logs needs them (`kubectl maestro logs` and the
//! UI's aggregated log): which step and attempt each runs, in what order they ran, and
//! whether their step container has a log yet.

use crate::labels;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

/// What `logs` needs to know of one step pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepPod {
    pub name: String,
    pub step: String,
    pub attempt: u32,
    /// When the kubelet started the pod, else when it was created: the order steps ran.
    pub began: Option<Timestamp>,
    pub progress: ContainerProgress,
}

/// How far a pod's step container has come, which decides whether it has a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerProgress {
    /// Not started yet (scheduling, pulling, init containers): no log yet, but soon.
    Waiting,
    /// Running: its log grows.
    Running,
    /// Ended: its log is complete.
    Terminated,
    /// The pod ended without its container ever starting: it never will have a log.
    NeverStarted,
}

impl ContainerProgress {
    pub fn has_log(self) -> bool {
        matches!(self, Self::Running | Self::Terminated)
    }
}

impl StepPod {
    pub fn from_pod(pod: &Pod) -> Self {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let pod_labels = pod.metadata.labels.as_ref();
        let label = |key: &str| pod_labels.and_then(|labels| labels.get(key));
        let step = label(labels::STEP).cloned().unwrap_or_else(|| name.clone());
        let attempt = label(labels::ATTEMPT)
            .and_then(|attempt| attempt.parse().ok())
            .unwrap_or(1);
        let began = pod
            .status
            .as_ref()
            .and_then(|status| status.start_time.as_ref())
            .or(pod.metadata.creation_timestamp.as_ref())
            .map(|time| time.0);
        Self {
            name,
            step,
            attempt,
            began,
            progress: container_progress(pod),
        }
    }

    /// The tag that starts each of this pod's log lines: the step, and the attempt when
    /// it is a retry.
    pub fn tag(&self) -> String {
        if self.attempt > 1 {
            format!("[{}#{}]", self.step, self.attempt)
        } else {
            format!("[{}]", self.step)
        }
    }
}

/// The progress of the pod's container named [`labels::STEP_CONTAINER`].
pub fn container_progress(pod: &Pod) -> ContainerProgress {
    let status = pod.status.as_ref();
    let state = status
        .and_then(|status| status.container_statuses.as_ref())
        .and_then(|containers| {
            containers
                .iter()
                .find(|container| container.name == labels::STEP_CONTAINER)
        })
        .and_then(|container| container.state.as_ref());
    if state.is_some_and(|state| state.terminated.is_some()) {
        return ContainerProgress::Terminated;
    }
    if state.is_some_and(|state| state.running.is_some()) {
        return ContainerProgress::Running;
    }
    let pod_ended = status
        .and_then(|status| status.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    if pod_ended {
        ContainerProgress::NeverStarted
    } else {
        ContainerProgress::Waiting
    }
}

/// Sorts pods into the order they ran: by start, then attempt, then step name (so
/// pods started in the same second keep a stable order).
pub fn execution_order(pods: &mut [StepPod]) {
    pods.sort_by(|a, b| {
        // A pod with no time at all sorts last: it is the newest thing we know of.
        let began = |pod: &StepPod| (pod.began.is_none(), pod.began);
        began(a)
            .cmp(&began(b))
            .then(a.attempt.cmp(&b.attempt))
            .then_with(|| a.step.cmp(&b.step))
            .then_with(|| a.name.cmp(&b.name))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::collections::BTreeMap;

    fn at(second: i64) -> Option<Timestamp> {
        Some(Timestamp::from_second(1_700_000_000 + second).unwrap())
    }

    fn step_pod(step: &str, attempt: u32, began: Option<Timestamp>) -> StepPod {
        StepPod {
            name: format!("run-{step}-{attempt}"),
            step: step.into(),
            attempt,
            began,
            progress: ContainerProgress::Terminated,
        }
    }

    fn order(mut pods: Vec<StepPod>) -> Vec<String> {
        execution_order(&mut pods);
        pods.iter().map(StepPod::tag).collect()
    }

    #[test]
    fn orders_by_start_then_attempt() {
        let tags = order(vec![
            step_pod("deploy", 1, at(30)),
            step_pod("build", 2, at(20)),
            step_pod("build", 1, at(10)),
            step_pod("notify", 1, None),
            step_pod("test-b", 1, at(40)),
            step_pod("test-a", 1, at(40)),
        ]);
        assert_eq!(
            tags,
            [
                "[build]",
                "[build#2]",
                "[deploy]",
                "[test-a]",
                "[test-b]",
                "[notify]"
            ]
        );
    }

    #[test]
    fn attempt_breaks_ties_in_the_same_second() {
        let tags = order(vec![
            step_pod("build", 2, at(10)),
            step_pod("build", 1, at(10)),
        ]);
        assert_eq!(tags, ["[build]", "[build#2]"]);
    }

    fn pod(
        labels: &[(&str, &str)],
        phase: &str,
        state: Option<ContainerState>,
        start: Option<i64>,
        created: Option<i64>,
    ) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        pod.metadata.creation_timestamp = created.and_then(at).map(Time);
        pod.status = Some(PodStatus {
            phase: Some(phase.into()),
            start_time: start.and_then(at).map(Time),
            container_statuses: state.map(|state| {
                vec![ContainerStatus {
                    name: labels::STEP_CONTAINER.into(),
                    state: Some(state),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        pod
    }

    #[test]
    fn reads_step_attempt_and_start_from_the_pod() {
        let running = ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        };
        let p = pod(
            &[(labels::STEP, "deploy"), (labels::ATTEMPT, "3")],
            "Running",
            Some(running),
            Some(5),
            Some(1),
        );
        let summary = StepPod::from_pod(&p);
        assert_eq!(summary.tag(), "[deploy#3]");
        assert_eq!(summary.began, at(5));
        assert_eq!(summary.progress, ContainerProgress::Running);
    }

    #[test]
    fn falls_back_to_creation_time_and_first_attempt() {
        let p = pod(&[(labels::STEP, "build")], "Pending", None, None, Some(1));
        let summary = StepPod::from_pod(&p);
        assert_eq!(summary.tag(), "[build]");
        assert_eq!(summary.began, at(1));
        assert_eq!(summary.progress, ContainerProgress::Waiting);
    }

    #[test]
    fn tells_apart_waiting_ended_and_never_started() {
        let terminated = ContainerState {
            terminated: Some(ContainerStateTerminated::default()),
            ..Default::default()
        };
        let done = pod(&[], "Succeeded", Some(terminated), Some(1), Some(1));
        assert_eq!(container_progress(&done), ContainerProgress::Terminated);
        let creating = pod(&[], "Pending", Some(ContainerState::default()), None, None);
        assert_eq!(container_progress(&creating), ContainerProgress::Waiting);
        let failed = pod(&[], "Failed", Some(ContainerState::default()), None, None);
        assert_eq!(container_progress(&failed), ContainerProgress::NeverStarted);
    }
}
