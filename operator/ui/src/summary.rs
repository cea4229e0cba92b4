//! What the pages get of Maestro's objects: a run's one-line summary for the runs list
//! (small, so a list of thousands stays cheap to send and to hold), and whole objects
//! without the bookkeeping no page shows (managedFields).

use kube::ResourceExt;
use maestro_api::{CompositionRun, StepPhase};
use serde::Serialize;

/// One row of the runs list.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub composition: String,
    pub phase: String,
    pub progress: Option<String>,
    pub created: Option<String>,
    pub start_time: Option<String>,
    pub completion_time: Option<String>,
    pub started_by: Option<String>,
    /// The steps waiting for an approval, with the gate's message.
    pub waiting: Vec<WaitingStep>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct WaitingStep {
    pub step: String,
    pub message: Option<String>,
}

/// The wire name of a serde unit enum (`Running`), as the API shows it.
pub fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

pub fn summarise(run: &CompositionRun) -> RunSummary {
    let status = run.status.clone().unwrap_or_default();
    let time = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map(|t| t.0.to_string())
    };
    RunSummary {
        namespace: run.namespace().unwrap_or_default(),
        name: run.name_any(),
        uid: run.uid().unwrap_or_default(),
        composition: run.spec.composition.clone(),
        phase: wire_name(&status.phase),
        progress: status.progress.clone(),
        created: time(&run.metadata.creation_timestamp),
        start_time: time(&status.start_time),
        completion_time: time(&status.completion_time),
        started_by: run.spec.started_by.clone(),
        waiting: status
            .steps
            .iter()
            .filter(|step| step.phase == StepPhase::WaitingApproval)
            .map(|step| WaitingStep {
                step: step.name.clone(),
                message: step.message.clone(),
            })
            .collect(),
    }
}

/// An object as JSON without its managedFields.
pub fn without_managed_fields<K: kube::Resource + Serialize>(mut object: K) -> serde_json::Value {
    object.meta_mut().managed_fields = None;
    serde_json::to_value(&object).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use maestro_api::{CompositionRunSpec, CompositionRunStatus, RunPhase, StepStatus};

    #[test]
    fn a_waiting_run_names_its_gate() {
        let mut run = CompositionRun::new(
            "release-gate-x7",
            CompositionRunSpec {
                composition: "release-gate".into(),
                params: Default::default(),
                cancel: false,
                priority: 0,
                started_by: Some("dave".into()),
                rerun_of: None,
            },
        );
        run.metadata.namespace = Some("ci".into());
        run.status = Some(CompositionRunStatus {
            phase: RunPhase::WaitingApproval,
            progress: Some("1/3".into()),
            steps: vec![
                StepStatus {
                    name: "build".into(),
                    phase: StepPhase::Succeeded,
                    ..Default::default()
                },
                StepStatus {
                    name: "sign-off".into(),
                    phase: StepPhase::WaitingApproval,
                    message: Some("Ship 1.4.3 to production?".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let summary = summarise(&run);
        assert_eq!(summary.phase, "WaitingApproval");
        assert_eq!(summary.namespace, "ci");
        assert_eq!(summary.started_by.as_deref(), Some("dave"));
        assert_eq!(
            summary.waiting,
            vec![WaitingStep {
                step: "sign-off".into(),
                message: Some("Ship 1.4.3 to production?".into())
            }]
        );
    }
}
