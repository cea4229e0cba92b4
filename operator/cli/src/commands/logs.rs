//! `kubectl maestro logs RUN [-f]`: the logs of a run's step pods, one after the other in
//! the order they ran, each line tagged with its step.

use std::collections::HashSet;
use std::io::Write as _;
use std::pin::pin;
use std::process::ExitCode;

use futures::AsyncBufReadExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, LogParams};
use maestro_api::CompositionRun;
use maestro_api::labels;
use tokio::time::{Duration, Instant, sleep};

use crate::Target;
use crate::loglines::{ResumePoint, split_timestamp, tag_line, tag_width};
use crate::lookup::{OUTAGE_TOLERANCE, POLL_INTERVAL, api_error, get_run, is_transient, retrying};
use maestro_api::step_pods::{ContainerProgress, StepPod, container_progress, execution_order};

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The CompositionRun whose logs to print.
    pub run: String,
    /// Keep printing as steps run, until the run has ended.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// How long `logs -f` waits, once the run has ended, for pods that never started to go.
const ENDED_RUN_GRACE: Duration = Duration::from_secs(10);

pub async fn run(target: &Target, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let run = get_run(target, &args.run).await?;
    let pods: Api<Pod> = Api::namespaced(target.client.clone(), &target.namespace);
    let logs = RunLogs {
        pods,
        run_name: args.run,
        runs: Api::namespaced(target.client.clone(), &target.namespace),
    };
    if args.follow {
        logs.follow().await?;
    } else {
        logs.print_existing(&run).await?;
    }
    Ok(ExitCode::SUCCESS)
}

struct RunLogs {
    pods: Api<Pod>,
    runs: Api<CompositionRun>,
    run_name: String,
}

impl RunLogs {
    async fn list_step_pods(&self) -> Result<Vec<StepPod>, kube::Error> {
        let selector = format!("{}={}", labels::RUN, self.run_name);
        let list = self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await?;
        let mut pods: Vec<StepPod> = list.items.iter().map(StepPod::from_pod).collect();
        execution_order(&mut pods);
        Ok(pods)
    }

    /// Prints the log of every pod that has one, then returns.
    async fn print_existing(&self, run: &CompositionRun) -> anyhow::Result<()> {
        let pods = self
            .list_step_pods()
            .await
            .map_err(|error| api_error(error, "listing the run's pods"))?;
        if pods.is_empty() {
            eprintln!("compositionrun {:?} has no step pods (yet)", self.run_name);
        }
        let width = aligned_width(run, &pods);
        for pod in &pods {
            if pod.progress.has_log() {
                self.print_pod(pod, width, false).await?;
            } else {
                eprintln!("{} pod {} has not started: no log", pod.tag(), pod.name);
            }
        }
        Ok(())
    }

    /// Streams the pods' logs in the order they ran, as they run, until the run has
    /// ended and every pod's log has been printed.
    async fn follow(&self) -> anyhow::Result<()> {
        let mut printed: HashSet<String> = HashSet::new();
        let mut ended_since: Option<Instant> = None;
        loop {
            // Read the run before its pods: if it has ended, every pod it ever had is in
            // the list that follows.
            let run = retrying(
                &format!("reading compositionrun {:?}", self.run_name),
                || self.runs.get_opt(&self.run_name),
            )
            .await?
            .ok_or_else(|| anyhow::anyhow!("compositionrun {:?} was deleted", self.run_name))?;
            let run_ended = run
                .status
                .as_ref()
                .is_some_and(|status| status.phase.is_finished());
            let pods = retrying("listing the run's pods", || self.list_step_pods()).await?;
            let width = aligned_width(&run, &pods);

            // The earliest pod not yet printed that has a log. A pod that has not started
            // does not hold up the ones after it: their logs stay readable until we get
            // to them, so nothing is lost by taking them first.
            let next = pods
                .iter()
                .find(|pod| !printed.contains(&pod.name) && pod.progress.has_log());
            if let Some(pod) = next {
                self.print_pod(pod, width, true).await?;
                printed.insert(pod.name.clone());
                continue;
            }

            let waiting: Vec<&StepPod> = pods
                .iter()
                .filter(|pod| {
                    !printed.contains(&pod.name) && pod.progress == ContainerProgress::Waiting
                })
                .collect();
            if run_ended {
                let since = *ended_since.get_or_insert_with(Instant::now);
                if waiting.is_empty() {
                    return Ok(());
                }
                // The operator stops a run's pods when it ends; one that still waits will
                // never log. Do not hang on it.
                if since.elapsed() >= ENDED_RUN_GRACE {
                    for pod in waiting {
                        eprintln!("{} pod {} never started: no log", pod.tag(), pod.name);
                    }
                    return Ok(());
                }
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// Prints one pod's log; with `follow`, keeps printing until its container has ended,
    /// reopening the stream (without repeating lines) when the connection breaks.
    async fn print_pod(&self, pod: &StepPod, width: usize, follow: bool) -> anyhow::Result<()> {
        let tag = pod.tag();
        let mut resume = ResumePoint::default();
        let mut progress = pod.progress;
        let mut broken_since: Option<Instant> = None;
        let mut warned = false;
        loop {
            let keep_open = follow && progress == ContainerProgress::Running;
            match self
                .read_log(&pod.name, &tag, width, keep_open, &mut resume)
                .await?
            {
                StreamEnd::Complete => {
                    broken_since = None;
                    warned = false;
                    // A terminated container's log was read to its end.
                    if !keep_open {
                        return Ok(());
                    }
                }
                StreamEnd::PodGone => return Ok(()),
                StreamEnd::Broken(error) => {
                    let since = *broken_since.get_or_insert_with(Instant::now);
                    if !follow || since.elapsed() >= OUTAGE_TOLERANCE {
                        return Err(error);
                    }
                    if !warned {
                        eprintln!("warning: {error:#}; resuming");
                        warned = true;
                    }
                    sleep(POLL_INTERVAL).await;
                }
            }
            // The stream ended while the container ran: it has stopped (the kubelet may
            // not have said so yet), or the connection broke. Look again.
            sleep(Duration::from_millis(300)).await;
            let current = retrying(&format!("reading pod {}", pod.name), || {
                self.pods.get_opt(&pod.name)
            })
            .await?;
            progress = match current {
                None => return Ok(()),
                Some(current) => container_progress(&current),
            };
            if progress == ContainerProgress::NeverStarted {
                return Ok(());
            }
            if progress == ContainerProgress::Waiting {
                sleep(POLL_INTERVAL).await;
            }
        }
    }

    /// Reads one log stream to its end, printing the lines not printed before.
    async fn read_log(
        &self,
        pod_name: &str,
        tag: &str,
        width: usize,
        follow: bool,
        resume: &mut ResumePoint,
    ) -> anyhow::Result<StreamEnd> {
        let params = LogParams {
            container: Some(labels::STEP_CONTAINER.to_string()),
            follow,
            // Timestamps let a reopened stream skip what was printed already.
            timestamps: true,
            since_time: resume.since(),
            ..LogParams::default()
        };
        resume.reopen();
        let doing = format!("reading the log of pod {pod_name}");
        let stream = match self.pods.log_stream(pod_name, &params).await {
            Ok(stream) => stream,
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                return Ok(StreamEnd::PodGone);
            }
            // 400: the container is not running yet, or not any more: look at the pod
            // again rather than give up.
            Err(error @ kube::Error::Api(_)) if is_bad_request(&error) => {
                return Ok(StreamEnd::Broken(api_error(error, &doing)));
            }
            Err(error) if is_transient(&error) => {
                return Ok(StreamEnd::Broken(api_error(error, &doing)));
            }
            Err(error) => return Err(api_error(error, &doing)),
        };
        let mut stream = pin!(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match stream.read_until(b'\n', &mut line).await {
                Ok(0) => return Ok(StreamEnd::Complete),
                Ok(_) => {}
                Err(error) => {
                    let error = anyhow::Error::new(error).context(doing);
                    return Ok(StreamEnd::Broken(error));
                }
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            // A step may print bytes that are not UTF-8; show them rather than stop.
            let text = String::from_utf8_lossy(&line);
            let (time, text) = split_timestamp(&text);
            if resume.is_new(time) {
                writeln!(std::io::stdout().lock(), "{}", tag_line(tag, width, text))?;
            }
        }
    }
}

fn is_bad_request(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 400)
}

/// How a log stream ended.
enum StreamEnd {
    /// The server closed it: the whole log (so far) was read.
    Complete,
    /// The pod no longer exists.
    PodGone,
    /// It could not be opened or it broke; worth another try.
    Broken(anyhow::Error),
}

/// The tag width that lines up every step's lines: over the run's steps (so the width
/// does not change as pods appear) and the pods (which add retries' `#2`).
fn aligned_width(run: &CompositionRun, pods: &[StepPod]) -> usize {
    let step_tags: Vec<String> = run
        .status
        .iter()
        .flat_map(|status| &status.steps)
        .map(|step| format!("[{}]", step.name))
        .chain(pods.iter().map(StepPod::tag))
        .collect();
    tag_width(step_tags.iter().map(String::as_str))
}
