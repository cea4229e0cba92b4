//! A run's aggregated log: every step pod's log in the order the pods ran, streamed
//! (following the running step) until the run has ended, or read once for a download.
//! A step whose pod is gone gets a plain note saying its log went with it.

use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{AsyncBufReadExt, Stream};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, LogParams};
use kube::{Api, Client};
use maestro_api::step_pods::{ContainerProgress, StepPod, container_progress, execution_order};
use maestro_api::{CompositionRun, labels};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep};

use crate::api::get_run;
use crate::watch::json_event;
use crate::{ApiError, App};

/// How often the pods of a run are listed again while its log is followed and no pod has
/// a log to read.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long to wait, once the run has ended, for pods that never started to go.
const ENDED_RUN_GRACE: Duration = Duration::from_secs(10);

/// One item of the aggregated log.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum LogItem {
    /// A line of a step's log.
    Line {
        step: String,
        attempt: u32,
        text: String,
    },
    /// Something the reader should know that is not a log line (a pod that is gone).
    Note { step: Option<String>, text: String },
    /// The log is complete: the run has ended and every log was read.
    End,
}

impl LogItem {
    fn event(&self) -> Event {
        let name = match self {
            Self::Line { .. } => "line",
            Self::Note { .. } => "note",
            Self::End => "end",
        };
        json_event(name, self)
    }

    /// The item as a line of the downloaded text.
    fn text_line(&self) -> Option<String> {
        match self {
            Self::Line {
                step,
                attempt,
                text,
            } => Some(format!("[{}] {text}", tag(step, *attempt))),
            Self::Note { text, .. } => Some(format!("# {text}")),
            Self::End => None,
        }
    }
}

fn tag(step: &str, attempt: u32) -> String {
    if attempt > 1 {
        format!("{step}#{attempt}")
    } else {
        step.to_string()
    }
}

pub async fn stream(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let client = app.access.client_for(&headers)?;
    // A missing or forbidden run is an error answer, not an empty stream.
    get_run(client.clone(), &namespace, &name).await?;
    let (sender, receiver) = mpsc::channel(512);
    tokio::spawn(RunLog::new(client, &namespace, &name, sender).aggregate(true));
    let events = futures::stream::unfold(receiver, |mut receiver| async move {
        let item = receiver.recv().await?;
        Some((Ok(item.event()), receiver))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

pub async fn download(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let client = app.access.client_for(&headers)?;
    get_run(client.clone(), &namespace, &name).await?;
    let (sender, mut receiver) = mpsc::channel(512);
    tokio::spawn(RunLog::new(client, &namespace, &name, sender).aggregate(false));
    let mut text = String::new();
    while let Some(item) = receiver.recv().await {
        if let Some(line) = item.text_line() {
            text.push_str(&line);
            text.push('\n');
        }
    }
    let mut response = text.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // Run names are DNS labels, so they need no quoting beyond the quotes.
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.log\""))
    {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}

/// The steps whose latest pod the run's status names but that no longer exists (a
/// rerun's reused steps aside: their pods are the source run's). A Running step's pod is
/// not gone: the operator names a pod in the status before it creates it, so it may not
/// exist yet; were it deleted, the step would not stay Running.
fn gone_pods(run: &CompositionRun, pods: &[StepPod]) -> Vec<(String, String)> {
    let existing: HashSet<&str> = pods.iter().map(|pod| pod.name.as_str()).collect();
    let reused = reused_steps(run);
    run.status
        .iter()
        .flat_map(|status| &status.steps)
        .filter(|step| step.phase != maestro_api::StepPhase::Running)
        .filter(|step| !reused.iter().any(|(name, _)| name == &step.name))
        .filter_map(|step| Some((step.name.clone(), step.pod_name.clone()?)))
        .filter(|(_, pod)| !existing.contains(pod.as_str()))
        .collect()
}

/// A rerun's steps that kept their source's outcome (the engine says `reused from RUN`),
/// with that run: their log is the source's.
fn reused_steps(run: &CompositionRun) -> Vec<(String, String)> {
    let Some(source) = run.spec.rerun_of.as_ref().map(|of| of.run.clone()) else {
        return Vec::new();
    };
    let said = format!("reused from {source}");
    run.status
        .iter()
        .flat_map(|status| &status.steps)
        .filter(|step| step.message.as_deref() == Some(said.as_str()))
        .map(|step| (step.name.clone(), source.clone()))
        .collect()
}

/// Splits the RFC 3339 timestamp the API puts before each line with `timestamps=true`.
fn split_timestamp(line: &str) -> (Option<Timestamp>, &str) {
    match line.split_once(' ') {
        Some((stamp, rest)) => match stamp.parse::<Timestamp>() {
            Ok(time) => (Some(time), rest),
            Err(_) => (None, line),
        },
        None => match line.parse::<Timestamp>() {
            Ok(time) => (Some(time), ""),
            Err(_) => (None, line),
        },
    }
}

/// The receiver went away (the page was closed): stop reading.
struct Closed;

struct RunLog {
    runs: Api<CompositionRun>,
    pods: Api<Pod>,
    name: String,
    sender: mpsc::Sender<LogItem>,
}

impl RunLog {
    fn new(client: Client, namespace: &str, name: &str, sender: mpsc::Sender<LogItem>) -> Self {
        Self {
            runs: Api::namespaced(client.clone(), namespace),
            pods: Api::namespaced(client, namespace),
            name: name.to_string(),
            sender,
        }
    }

    async fn send(&self, item: LogItem) -> Result<(), Closed> {
        self.sender.send(item).await.map_err(|_| Closed)
    }

    async fn note(&self, step: Option<&str>, text: String) -> Result<(), Closed> {
        self.send(LogItem::Note {
            step: step.map(str::to_string),
            text,
        })
        .await
    }

    async fn aggregate(self, follow: bool) {
        if let Ok(()) = self.read(follow).await {
            let _ = self.send(LogItem::End).await;
        }
    }

    async fn list_pods(&self) -> Result<Vec<StepPod>, kube::Error> {
        let selector = format!("{}={}", labels::RUN, self.name);
        let list = self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await?;
        let mut pods: Vec<StepPod> = list.items.iter().map(StepPod::from_pod).collect();
        execution_order(&mut pods);
        Ok(pods)
    }

    async fn read(&self, follow: bool) -> Result<(), Closed> {
        let mut printed: HashSet<String> = HashSet::new();
        let mut announced: HashSet<String> = HashSet::new();
        let mut ended_since: Option<Instant> = None;
        let mut failures = 0u32;
        loop {
            // Nobody reads any more (the page was closed): stop polling for them.
            if self.sender.is_closed() {
                return Err(Closed);
            }
            // The run before its pods: if it has ended, every pod it had is in the list.
            let (run, pods) = match self.runs.get_opt(&self.name).await {
                Ok(Some(run)) => match self.list_pods().await {
                    Ok(pods) => (run, pods),
                    Err(error) => {
                        failures += 1;
                        self.retry_or_stop(follow, failures, "listing the run's pods", error)
                            .await?;
                        continue;
                    }
                },
                Ok(None) => {
                    return self
                        .note(None, format!("compositionrun {} was deleted", self.name))
                        .await;
                }
                Err(error) => {
                    failures += 1;
                    self.retry_or_stop(follow, failures, "reading the run", error)
                        .await?;
                    continue;
                }
            };
            failures = 0;
            for (step, source) in reused_steps(&run) {
                if announced.insert(format!("reused {step}")) {
                    self.note(
                        Some(&step),
                        format!(
                            "step {step}: reused from {source}, which ran it; its log is with that run"
                        ),
                    )
                    .await?;
                }
            }
            for (step, pod) in gone_pods(&run, &pods) {
                if !printed.contains(&pod) && announced.insert(pod.clone()) {
                    self.note(
                        Some(&step),
                        format!(
                            "step {step}: pod {pod} is gone, and its log with it (Kubernetes keeps a step's log only as long as its pod)"
                        ),
                    )
                    .await?;
                }
            }
            let next = pods
                .iter()
                .find(|pod| !printed.contains(&pod.name) && pod.progress.has_log());
            if let Some(pod) = next {
                self.read_pod(pod, follow).await?;
                printed.insert(pod.name.clone());
                continue;
            }
            let waiting: Vec<&StepPod> = pods
                .iter()
                .filter(|pod| {
                    !printed.contains(&pod.name) && pod.progress == ContainerProgress::Waiting
                })
                .collect();
            let ended = run
                .status
                .as_ref()
                .is_some_and(|status| status.phase.is_finished());
            if !follow || ended {
                let since = *ended_since.get_or_insert_with(Instant::now);
                if waiting.is_empty() || !follow || since.elapsed() >= ENDED_RUN_GRACE {
                    for pod in waiting {
                        self.note(
                            Some(&pod.step),
                            format!(
                                "step {}: pod {} has not started: no log",
                                pod.step, pod.name
                            ),
                        )
                        .await?;
                    }
                    if pods.is_empty() && announced.is_empty() {
                        self.note(None, format!("run {} has no step pods", self.name))
                            .await?;
                    }
                    return Ok(());
                }
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// After a failed API call: a note, then another try while following (the API server
    /// may be restarting), else the end.
    async fn retry_or_stop(
        &self,
        follow: bool,
        failures: u32,
        doing: &str,
        error: kube::Error,
    ) -> Result<(), Closed> {
        let error = ApiError::kube(error, doing);
        if !follow || failures > 60 {
            self.note(None, error.message).await?;
            return Err(Closed);
        }
        if failures == 1 {
            self.note(None, format!("{}; retrying", error.message))
                .await?;
        }
        sleep(POLL_INTERVAL).await;
        Ok(())
    }

    /// One pod's log; following, until its container has ended, reopening the stream
    /// (without repeating lines) when it ends early.
    async fn read_pod(&self, pod: &StepPod, follow: bool) -> Result<(), Closed> {
        let mut last: Option<Timestamp> = None;
        let mut current = pod.progress;
        loop {
            let keep_open = follow && current == ContainerProgress::Running;
            let params = LogParams {
                container: Some(labels::STEP_CONTAINER.to_string()),
                follow: keep_open,
                timestamps: true,
                since_time: last.and_then(|time| Timestamp::from_second(time.as_second()).ok()),
                ..LogParams::default()
            };
            match self.pods.log_stream(&pod.name, &params).await {
                Ok(stream) => {
                    let mut stream = pin!(stream);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        // A quiet step may print nothing for hours: notice a closed
                        // page without waiting for its next line.
                        let read = tokio::select! {
                            read = stream.read_until(b'\n', &mut line) => read,
                            () = self.sender.closed() => return Err(Closed),
                        };
                        match read {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        if line.last() == Some(&b'\n') {
                            line.pop();
                        }
                        let text = String::from_utf8_lossy(&line);
                        let (time, text) = split_timestamp(&text);
                        if let (Some(time), Some(seen)) = (time, last)
                            && time <= seen
                        {
                            continue;
                        }
                        if time.is_some() {
                            last = time;
                        }
                        self.send(LogItem::Line {
                            step: pod.step.clone(),
                            attempt: pod.attempt,
                            text: text.to_string(),
                        })
                        .await?;
                    }
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    return self
                        .note(
                            Some(&pod.step),
                            format!(
                                "step {}: pod {} is gone, and its log with it",
                                pod.step, pod.name
                            ),
                        )
                        .await;
                }
                // 400: the container is not running yet or any more; look again below.
                Err(kube::Error::Api(status)) if status.code == 400 && follow => {}
                Err(error) => {
                    let error =
                        ApiError::kube(error, &format!("reading the log of pod {}", pod.name));
                    return self.note(Some(&pod.step), error.message).await;
                }
            }
            if !keep_open {
                return Ok(());
            }
            sleep(Duration::from_millis(300)).await;
            current = match self.pods.get_opt(&pod.name).await {
                Ok(Some(found)) => container_progress(&found),
                Ok(None) => return Ok(()),
                Err(_) => current,
            };
            if current == ContainerProgress::NeverStarted {
                return Ok(());
            }
            if current == ContainerProgress::Waiting {
                sleep(POLL_INTERVAL).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maestro_api::{CompositionRunSpec, CompositionRunStatus, StepStatus};

    fn at(second: i64) -> Option<Timestamp> {
        Timestamp::from_second(1_700_000_000 + second).ok()
    }

    fn pod(step: &str, attempt: u32, began: Option<Timestamp>) -> StepPod {
        StepPod {
            name: format!("r-{step}-{attempt}"),
            step: step.into(),
            attempt,
            began,
            progress: ContainerProgress::Terminated,
        }
    }

    #[test]
    fn names_the_steps_whose_pods_are_gone() {
        let mut run = CompositionRun::new(
            "r",
            CompositionRunSpec {
                composition: "c".into(),
                params: Default::default(),
                cancel: false,
                priority: 0,
                started_by: None,
                rerun_of: None,
            },
        );
        let step = |name: &str, pod: Option<&str>| StepStatus {
            name: name.into(),
            pod_name: pod.map(str::to_string),
            ..Default::default()
        };
        run.status = Some(CompositionRunStatus {
            steps: vec![
                step("build", Some("r-build-1")),
                step("sign-off", None),
                step("deploy", Some("r-deploy-1")),
            ],
            ..Default::default()
        });
        let gone = gone_pods(&run, &[pod("deploy", 1, at(1))]);
        assert_eq!(gone, vec![("build".to_string(), "r-build-1".to_string())]);
        // A Running step's pod, named before its create, is not gone yet.
        if let Some(status) = run.status.as_mut() {
            status.steps[0].phase = maestro_api::StepPhase::Running;
        }
        assert!(gone_pods(&run, &[pod("deploy", 1, at(1))]).is_empty());
        if let Some(status) = run.status.as_mut() {
            status.steps[0].phase = maestro_api::StepPhase::Failed;
        }

        // In a rerun, a reused step's pod is its source's: not gone, reused.
        run.spec.rerun_of = Some(maestro_api::RerunOf {
            run: "src".into(),
            uid: "uid-src".into(),
            from: None,
        });
        if let Some(status) = run.status.as_mut() {
            status.steps[0].message = Some("reused from src".into());
        }
        assert!(gone_pods(&run, &[pod("deploy", 1, at(1))]).is_empty());
        assert_eq!(
            reused_steps(&run),
            vec![("build".to_string(), "src".to_string())]
        );
    }

    #[test]
    fn download_lines_carry_the_step_and_retries_their_attempt() {
        let line = LogItem::Line {
            step: "build".into(),
            attempt: 2,
            text: "compiling".into(),
        };
        assert_eq!(line.text_line().as_deref(), Some("[build#2] compiling"));
        let note = LogItem::Note {
            step: None,
            text: "run r has no step pods".into(),
        };
        assert_eq!(
            note.text_line().as_deref(),
            Some("# run r has no step pods")
        );
        let (time, text) = split_timestamp("2025-05-01T10:00:00.5Z hello");
        assert!(time.is_some());
        assert_eq!(text, "hello");
    }
}
