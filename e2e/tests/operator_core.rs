//! The operator core end to end: the real operator binary against the real cluster,
//! compositions from examples/, final phases, outputs, pods per step and logs.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use k8s_openapi::{
    api::{
        authentication::v1::SelfSubjectReview,
        core::v1::{Event, Pod},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use maestro_api::{
    Approval, ApprovalSpec, CompositionRun, CompositionRunStatus, Decision, RunPhase, StepPhase,
    StepStatus, labels,
};
use maestro_e2e::{maestro::Env, wait_for};

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn outputs(run: &maestro_api::CompositionRun, step: &str) -> BTreeMap<String, String> {
    run.status
        .as_ref()
        .and_then(|s| s.steps.iter().find(|x| x.name == step))
        .map(|s| s.outputs.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn hello_passes_an_output_along() -> anyhow::Result<()> {
    let env = Env::new("hello").await?;
    env.apply_example("hello/composition.yaml").await?;
    let name = env.start_run("hello", &[("who", "maestro")]).await?;
    let run = env.wait_finished(&name, RUN_TIMEOUT).await?;
    let status = run.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Succeeded, "status: {status:#?}");
    assert_eq!(status.progress.as_deref(), Some("3/3"));
    assert!(status.steps.iter().all(|s| s.phase == StepPhase::Succeeded));
    assert_eq!(outputs(&run, "greet")["greeting"], "hello maestro");
    assert_eq!(outputs(&run, "shout")["loud"], "HELLO MAESTRO");
    assert_eq!(outputs(&run, "count")["length"], "13");

    // One pod per step, one attempt each.
    let pods = env.step_pods(&name).await?;
    let steps: Vec<(&str, u32)> = pods.iter().map(|(s, a, _)| (s.as_str(), *a)).collect();
    assert_eq!(steps, vec![("count", 1), ("greet", 1), ("shout", 1)]);

    // The aggregated log, in execution order, each line prefixed with its step.
    let log = env.cli(&["logs", &name]).await?;
    let lines: Vec<&str> = log.lines().collect();
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
    let (greet, shout, count) = (
        at("hello maestro"),
        at("HELLO MAESTRO"),
        at("has 13 characters"),
    );
    assert!(
        greet.is_some() && shout.is_some() && count.is_some(),
        "log:\n{log}"
    );
    assert!(greet < shout && shout < count, "steps out of order:\n{log}");
    assert!(
        lines[greet.unwrap_or(0)].starts_with("[greet]"),
        "log:\n{log}"
    );

    // Kubernetes Events tell the run's story.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns.name);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name.as_str()))
        .filter_map(|e| e.reason)
        .collect();
    for want in ["RunStarted", "RunSucceeded"] {
        assert!(
            reasons.iter().any(|r| r == want),
            "no {want} event in {reasons:?}"
        );
    }
    // A step's routine progress is in the status, with times, not in Events (unless the
    // operator runs with --step-events): two Events per step were most of its writes.
    for routine in ["StepStarted", "StepSucceeded"] {
        assert!(
            !reasons.iter().any(|r| r == routine),
            "a routine {routine} event was recorded: {reasons:?}"
        );
    }

    // Nothing changes once the run has ended, so nothing is written: the object's
    // resourceVersion stays put across several resyncs of the operator.
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    let before = runs.get(&name).await?.metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = runs.get(&name).await?.metadata.resource_version;
    assert_eq!(before, after, "the finished run was written again");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Helpers of the scenario tests below.

/// A generous bound for one scenario's run: pods start in a few seconds on the local
/// cluster, so a run that needs this long is stuck.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

/// The run's status, or an error saying it has none yet.
fn status_of(run: &CompositionRun) -> anyhow::Result<&CompositionRunStatus> {
    run.status
        .as_ref()
        .with_context(|| format!("run {} has no status", run.name_any()))
}

/// One step's status, by name.
fn step_of<'a>(run: &'a CompositionRun, step: &str) -> anyhow::Result<&'a StepStatus> {
    status_of(run)?
        .steps
        .iter()
        .find(|candidate| candidate.name == step)
        .with_context(|| format!("run {} has no step {step}", run.name_any()))
}

/// The run's status as YAML, for assertion messages (what `kubectl get crun -o yaml` shows).
fn status_yaml(run: &CompositionRun) -> String {
    serde_yaml::to_string(&run.status).unwrap_or_else(|e| format!("(unprintable status: {e})"))
}

/// A time the operator recorded, or an error naming which one is missing.
fn recorded(time: Option<&Time>, what: &str) -> anyhow::Result<Timestamp> {
    time.map(|t| t.0)
        .with_context(|| format!("{what} is not recorded"))
}

fn step_started(run: &CompositionRun, step: &str) -> anyhow::Result<Timestamp> {
    recorded(
        step_of(run, step)?.start_time.as_ref(),
        &format!("startTime of step {step}"),
    )
}

fn step_finished(run: &CompositionRun, step: &str) -> anyhow::Result<Timestamp> {
    recorded(
        step_of(run, step)?.finish_time.as_ref(),
        &format!("finishTime of step {step}"),
    )
}

fn run_completed(run: &CompositionRun) -> anyhow::Result<Timestamp> {
    recorded(
        status_of(run)?.completion_time.as_ref(),
        &format!("completionTime of run {}", run.name_any()),
    )
}

/// The Succeeded condition's reason and message.
fn succeeded_condition(run: &CompositionRun) -> anyhow::Result<(String, String)> {
    status_of(run)?
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .map(|c| (c.reason.clone(), c.message.clone()))
        .with_context(|| format!("run {} has no Succeeded condition", run.name_any()))
}

/// The attempts that got a pod, per step: what `kubectl get pods -l maestro.dev/run=RUN`
/// shows.
async fn attempts_per_step(env: &Env, run: &str) -> anyhow::Result<BTreeMap<String, Vec<u32>>> {
    let mut attempts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (step, attempt, _pod) in env.step_pods(run).await? {
        attempts.entry(step).or_default().push(attempt);
    }
    for list in attempts.values_mut() {
        list.sort_unstable();
    }
    Ok(attempts)
}

/// When a step pod's step container started and ended, as the kubelet reports them.
async fn container_run_times(env: &Env, pod: &str) -> anyhow::Result<(Timestamp, Timestamp)> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let found = pods.get(pod).await?;
    let ended = found
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == labels::STEP_CONTAINER)
        .and_then(|c| c.state)
        .and_then(|s| s.terminated)
        .with_context(|| format!("pod {pod}: the step container has not ended"))?;
    Ok((
        recorded(ended.started_at.as_ref(), &format!("pod {pod} startedAt"))?,
        recorded(ended.finished_at.as_ref(), &format!("pod {pod} finishedAt"))?,
    ))
}

fn pod_name(run: &str, step: &str, attempt: u32) -> String {
    labels::step_pod_name(run, step, attempt)
}

async fn get_run(env: &Env, name: &str) -> anyhow::Result<CompositionRun> {
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    Ok(runs.get(name).await?)
}

/// Waits until `accept` holds for the run; `accept` says what it saw when it does not.
async fn wait_run_until(
    env: &Env,
    name: &str,
    what: &str,
    timeout: Duration,
    accept: impl Fn(&CompositionRun) -> Result<(), String>,
) -> anyhow::Result<CompositionRun> {
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    let accept = &accept;
    let runs = &runs;
    wait_for(&format!("run {name}: {what}"), timeout, || async move {
        let run = runs.get(name).await.map_err(|e| e.to_string())?;
        accept(&run).map(|()| run)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\noperator log:\n{}", env.operator.log_tail()))
}

/// Accepts a run whose `step` is in `phase`.
fn step_in(step: &str, phase: StepPhase) -> impl Fn(&CompositionRun) -> Result<(), String> {
    move |run| match step_of(run, step) {
        Ok(found) if found.phase == phase => Ok(()),
        Ok(found) => Err(format!("step {step} is {:?}", found.phase)),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits until the pod's step container is running (its script has started).
async fn wait_container_running(env: &Env, pod: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let pods = &pods;
    wait_for(
        &format!("pod {pod}'s step container to run"),
        Duration::from_secs(60),
        || async move {
            let found = pods.get(pod).await.map_err(|e| e.to_string())?;
            let state = found
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.name == labels::STEP_CONTAINER)
                .and_then(|c| c.state);
            match state {
                Some(s) if s.running.is_some() => Ok(()),
                other => Err(format!("state {other:?}")),
            }
        },
    )
    .await
    .map(|_| ())
}

/// The user the API server authenticates for the test's kubeconfig (`kubectl auth whoami`).
async fn authenticated_user(client: &Client) -> anyhow::Result<String> {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|name| !name.is_empty())
        .context("the SelfSubjectReview names no user")
}

/// The lines of `kubectl maestro logs RUN` tagged with `tag` (like `[deploy#2]`).
fn tagged<'a>(log: &'a str, tag: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|line| line.split_whitespace().next() == Some(tag))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Scenarios.

/// examples/dag: build fans out to two test branches and a `when`-gated preview deploy,
/// and package joins them. With the default env the preview deploy is Skipped and gets no
/// pod; package runs only after both test branches ended.
#[tokio::test]
async fn dag_fans_out_skips_on_when_and_joins() -> anyhow::Result<()> {
    let env = Env::new("dag").await?;
    env.apply_example_ready("dag/composition.yaml").await?;
    let name = env.start_run("dag", &[]).await?;
    let run = env.wait_finished(&name, SCENARIO_TIMEOUT).await?;
    let status = status_of(&run)?;
    assert_eq!(status.phase, RunPhase::Succeeded, "{}", status_yaml(&run));
    assert_eq!(status.progress.as_deref(), Some("5/5"));

    // The false `when` skipped the preview deploy: no pod, never started.
    let skipped = step_of(&run, "deploy-preview")?;
    assert_eq!(skipped.phase, StepPhase::Skipped, "{}", status_yaml(&run));
    assert!(
        skipped
            .message
            .as_deref()
            .is_some_and(|m| m.contains("when is false")),
        "{}",
        status_yaml(&run)
    );
    assert!(skipped.pod_name.is_none() && skipped.start_time.is_none());
    for step in ["build", "test-unit", "test-lint", "package"] {
        assert_eq!(step_of(&run, step)?.phase, StepPhase::Succeeded, "{step}");
    }
    let expected: BTreeMap<String, Vec<u32>> = ["build", "package", "test-lint", "test-unit"]
        .into_iter()
        .map(|step| (step.to_string(), vec![1]))
        .collect();
    assert_eq!(attempts_per_step(&env, &name).await?, expected);

    // Fan out: both test branches started before either ended (each sleeps 3 s).
    let (unit_start, unit_end) = (
        step_started(&run, "test-unit")?,
        step_finished(&run, "test-unit")?,
    );
    let (lint_start, lint_end) = (
        step_started(&run, "test-lint")?,
        step_finished(&run, "test-lint")?,
    );
    assert!(
        unit_start < lint_end && lint_start < unit_end,
        "the test branches did not overlap:\n{}",
        status_yaml(&run)
    );
    assert!(step_finished(&run, "build")? <= unit_start.min(lint_start));
    // Join: package started after both branches ended, by the run's status and by the
    // kubelet's container times.
    let package_start = step_started(&run, "package")?;
    assert!(
        package_start >= unit_end.max(lint_end),
        "package started before a branch ended:\n{}",
        status_yaml(&run)
    );
    let (_, unit_container_end) =
        container_run_times(&env, &pod_name(&name, "test-unit", 1)).await?;
    let (_, lint_container_end) =
        container_run_times(&env, &pod_name(&name, "test-lint", 1)).await?;
    let (package_container_start, _) =
        container_run_times(&env, &pod_name(&name, "package", 1)).await?;
    assert!(package_container_start >= unit_container_end.max(lint_container_end));

    // Outputs flowed along the graph, and package saw the skipped step's phase.
    assert_eq!(outputs(&run, "build")["version"], "1.4.3");
    assert_eq!(outputs(&run, "package")["artifact"], "app-1.4.3.tar.gz");
    let log = env.cli(&["logs", &name]).await?;
    assert!(
        tagged(&log, "[test-unit]")
            .iter()
            .any(|l| l.contains("unit tests of 1.4.3 started")),
        "log:\n{log}"
    );
    assert!(
        tagged(&log, "[package]")
            .iter()
            .any(|l| l.contains("packaging app-1.4.3.tar.gz (preview: Skipped)")),
        "log:\n{log}"
    );
    assert!(!log.contains("[deploy-preview]"), "log:\n{log}");
    Ok(())
}

/// examples/retry-onfailure: deploy fails on each of its three tries (two retries, 1 s
/// backoff), the run fails, smoke-test is skipped, and onFailure starts notify-failure
/// as `<run>-onfailure` with the failed run's name and step.
#[tokio::test]
async fn retries_then_on_failure_starts_the_notification() -> anyhow::Result<()> {
    let env = Env::new("retry").await?;
    env.apply_example_ready("retry-onfailure/notify-failure.yaml")
        .await?;
    env.apply_example_ready("retry-onfailure/flaky-deploy.yaml")
        .await?;
    let name = env.start_run("flaky-deploy", &[]).await?;
    let run = env.wait_finished(&name, SCENARIO_TIMEOUT).await?;
    let status = status_of(&run)?;
    assert_eq!(status.phase, RunPhase::Failed, "{}", status_yaml(&run));
    let (reason, message) = succeeded_condition(&run)?;
    assert_eq!(reason, "StepFailed");
    assert_eq!(message, "step deploy failed: exited with code 1");

    let deploy = step_of(&run, "deploy")?;
    assert_eq!(deploy.phase, StepPhase::Failed, "{}", status_yaml(&run));
    assert_eq!(deploy.attempts, 3);
    assert_eq!(deploy.exit_code, Some(1));
    assert_eq!(
        deploy.pod_name.as_deref(),
        Some(&*pod_name(&name, "deploy", 3))
    );
    let smoke = step_of(&run, "smoke-test")?;
    assert_eq!(smoke.phase, StepPhase::Skipped, "{}", status_yaml(&run));
    assert_eq!(
        smoke.message.as_deref(),
        Some("not started: step \"deploy\" failed")
    );

    // Three pods for deploy (attempts 1, 2, 3), none for the skipped step; each retry
    // started only after the previous attempt had ended and its backoff had passed.
    let attempts = attempts_per_step(&env, &name).await?;
    assert_eq!(
        attempts,
        BTreeMap::from([("deploy".to_string(), vec![1, 2, 3])])
    );
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    // The backoff before attempts 2 and 3 is 1 s, then doubled; recorded times have whole
    // seconds, so allow one second less.
    let mut previous_end: Option<Timestamp> = None;
    for (attempt, backoff_secs) in [(1, 0), (2, 1), (3, 2)] {
        let pod = pod_name(&name, "deploy", attempt);
        let created = recorded(
            pods.get(&pod).await?.metadata.creation_timestamp.as_ref(),
            "creationTimestamp",
        )?;
        if let Some(end) = previous_end {
            let gap = created.duration_since(end);
            assert!(
                gap >= SignedDuration::from_secs(backoff_secs - 1),
                "attempt {attempt} began {gap} after the last ended, before its backoff"
            );
        }
        previous_end = Some(container_run_times(&env, &pod).await?.1);
    }

    let log = env.cli(&["logs", &name]).await?;
    for tag in ["[deploy]", "[deploy#2]", "[deploy#3]"] {
        assert!(
            tagged(&log, tag)
                .iter()
                .any(|l| l.contains("connection refused")),
            "no {tag} line in log:\n{log}"
        );
    }
    assert!(!log.contains("[smoke-test]"), "log:\n{log}");

    // onFailure: `<run>-onfailure`, a run of notify-failure with the failed run's context.
    let notify_name = format!("{name}-onfailure");
    assert_eq!(status.on_failure_run.as_deref(), Some(&*notify_name));
    let notify = env.wait_finished(&notify_name, SCENARIO_TIMEOUT).await?;
    assert_eq!(notify.spec.composition, "notify-failure");
    assert_eq!(notify.spec.params["failedRun"], name);
    assert_eq!(notify.spec.params["failedStep"], "deploy");
    assert_eq!(
        notify.spec.params["summary"],
        format!("{name} failed at step deploy")
    );
    assert_eq!(
        notify.labels().get(labels::FAILED_RUN).map(String::as_str),
        Some(&*name)
    );
    assert_eq!(
        status_of(&notify)?.phase,
        RunPhase::Succeeded,
        "{}",
        status_yaml(&notify)
    );
    assert_eq!(outputs(&notify, "notify")["failedRun"], name);
    assert_eq!(outputs(&notify, "notify")["failedStep"], "deploy");
    let notify_log = env.cli(&["logs", &notify_name]).await?;
    let expected =
        format!("run {name} failed at step deploy: step deploy failed: exited with code 1");
    assert!(
        tagged(&notify_log, "[notify]")
            .iter()
            .any(|l| l.ends_with(&expected)),
        "log:\n{notify_log}"
    );
    Ok(())
}

/// examples/fork-join: the builds step forks build-backend and build-frontend as child
/// runs `<run>-builds-0` and `-1`, owned by the release run; both succeed, then publish
/// runs after the join with the children's names.
#[tokio::test]
async fn fork_join_of_two_child_compositions() -> anyhow::Result<()> {
    let env = Env::new("fork").await?;
    env.apply_example_ready("fork-join/release.yaml").await?;
    let name = env.start_run("release", &[("version", "2.0.0")]).await?;
    let run = env.wait_finished(&name, SCENARIO_TIMEOUT).await?;
    let status = status_of(&run)?;
    assert_eq!(status.phase, RunPhase::Succeeded, "{}", status_yaml(&run));

    let children = [
        (format!("{name}-builds-0"), "build-backend", "compile"),
        (format!("{name}-builds-1"), "build-frontend", "bundle"),
    ];
    let child_names: Vec<String> = children.iter().map(|(c, _, _)| c.clone()).collect();
    let builds = step_of(&run, "builds")?;
    assert_eq!(builds.phase, StepPhase::Succeeded);
    assert_eq!(builds.child_runs, child_names);
    assert_eq!(outputs(&run, "builds")["runs"], child_names.join(","));
    assert_eq!(outputs(&run, "publish")["builtBy"], child_names.join(","));

    let parent_uid = run.uid().context("the run has no uid")?;
    let mut child_runs = Vec::new();
    for (child_name, composition, step) in &children {
        let child = get_run(&env, child_name).await?;
        assert_eq!(child.spec.composition, *composition);
        assert_eq!(child.spec.params["version"], "2.0.0");
        let owner = child
            .owner_references()
            .iter()
            .find(|o| o.uid == parent_uid)
            .with_context(|| format!("{child_name} is not owned by {name}"))?;
        assert_eq!(owner.kind, "CompositionRun");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(
            child.labels().get(labels::PARENT_RUN).map(String::as_str),
            Some(&*name)
        );
        assert_eq!(
            status_of(&child)?.phase,
            RunPhase::Succeeded,
            "{}",
            status_yaml(&child)
        );
        assert_eq!(
            attempts_per_step(&env, child_name).await?,
            BTreeMap::from([(step.to_string(), vec![1])])
        );
        child_runs.push(child);
    }
    assert_eq!(
        outputs(&child_runs[0], "compile")["artifact"],
        "backend-2.0.0.jar"
    );
    assert_eq!(
        outputs(&child_runs[1], "bundle")["artifact"],
        "frontend-2.0.0.tgz"
    );

    // Fork: the children ran at the same time (each sleeps 2 s). Join: publish started
    // after both had ended, and the builds step itself ran no pod.
    let (backend, frontend) = (&child_runs[0], &child_runs[1]);
    let started = |r: &CompositionRun| recorded(status_of(r)?.start_time.as_ref(), "startTime");
    assert!(
        started(backend)? < run_completed(frontend)?
            && started(frontend)? < run_completed(backend)?,
        "the child runs did not overlap"
    );
    assert!(
        step_started(&run, "publish")? >= run_completed(backend)?.max(run_completed(frontend)?)
    );
    assert_eq!(
        attempts_per_step(&env, &name).await?,
        BTreeMap::from([("publish".to_string(), vec![1])])
    );
    let log = env.cli(&["logs", &children[0].0]).await?;
    assert!(
        tagged(&log, "[compile]")
            .iter()
            .any(|l| l.ends_with("backend 2.0.0 compiling")),
        "log:\n{log}"
    );
    Ok(())
}

/// examples/wait-for: a run of deploy-after-nightly started while a nightly-build run is
/// in progress waits for it (waitFor, mode Running): its wait step ends only after the
/// nightly run has ended, and only then does deploy get a pod.
#[tokio::test]
async fn wait_for_ends_after_the_running_composition() -> anyhow::Result<()> {
    let env = Env::new("waitfor").await?;
    env.apply_example_ready("wait-for/compositions.yaml")
        .await?;
    let nightly_name = env.start_run("nightly-build", &[("seconds", "8")]).await?;
    wait_run_until(
        &env,
        &nightly_name,
        "build running",
        SCENARIO_TIMEOUT,
        step_in("build", StepPhase::Running),
    )
    .await?;
    let name = env.start_run("deploy-after-nightly", &[]).await?;
    let waiting = wait_run_until(
        &env,
        &name,
        "wait-nightly running",
        SCENARIO_TIMEOUT,
        step_in("wait-nightly", StepPhase::Running),
    )
    .await?;
    let wait_step = step_of(&waiting, "wait-nightly")?;
    assert_eq!(
        wait_step.message.as_deref(),
        Some(&*format!("waiting for run {nightly_name}"))
    );
    assert_eq!(wait_step.child_runs, vec![nightly_name.clone()]);

    let nightly = env.wait_finished(&nightly_name, SCENARIO_TIMEOUT).await?;
    assert_eq!(status_of(&nightly)?.phase, RunPhase::Succeeded);
    let run = env.wait_finished(&name, SCENARIO_TIMEOUT).await?;
    assert_eq!(
        status_of(&run)?.phase,
        RunPhase::Succeeded,
        "{}",
        status_yaml(&run)
    );
    let nightly_end = run_completed(&nightly)?;
    let wait_step = step_of(&run, "wait-nightly")?;
    assert_eq!(
        wait_step.message.as_deref(),
        Some(&*format!("run {nightly_name} succeeded"))
    );
    // It really waited: it started while the nightly build was running and ended after
    // it; deploy's pod was created after that.
    assert!(step_started(&run, "wait-nightly")? < nightly_end);
    assert!(step_finished(&run, "wait-nightly")? >= nightly_end);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let deploy_pod = pods.get(&pod_name(&name, "deploy", 1)).await?;
    let deploy_created = recorded(
        deploy_pod.metadata.creation_timestamp.as_ref(),
        "deploy pod creationTimestamp",
    )?;
    assert!(deploy_created >= nightly_end);
    // The wait step runs no pod.
    assert_eq!(
        attempts_per_step(&env, &name).await?,
        BTreeMap::from([("deploy".to_string(), vec![1])])
    );
    Ok(())
}

/// examples/approval: a gate approved with `kubectl maestro approve` records the
/// authenticated user; an Approval forged with somebody else's name is refused at
/// admission; a gate with a 5 s timeout that nobody approves fails the run.
#[tokio::test]
async fn approval_gates_record_the_real_approver_and_time_out() -> anyhow::Result<()> {
    let env = Env::new("approval").await?;
    env.apply_example_ready("approval/release-gate.yaml")
        .await?;
    env.apply_example_ready("approval/expiring-gate.yaml")
        .await?;
    // The expiring gate runs its 5 s meanwhile.
    let expiring_name = env.start_run("expiring-gate", &[]).await?;
    let name = env.start_run("release-gate", &[]).await?;

    let waiting = env
        .wait_phase(&name, &[RunPhase::WaitingApproval], SCENARIO_TIMEOUT)
        .await?;
    let gate = step_of(&waiting, "sign-off")?;
    assert_eq!(gate.phase, StepPhase::WaitingApproval);
    assert_eq!(gate.message.as_deref(), Some("Ship 1.4.3 to production?"));
    assert_eq!(
        attempts_per_step(&env, &name).await?,
        BTreeMap::from([("build".to_string(), vec![1])])
    );

    // A forged approval, naming somebody else, is refused by the admission policy.
    let approvals: Api<Approval> = Api::namespaced(env.client.clone(), &env.ns.name);
    let forged = Approval::new(
        "forged-sign-off",
        ApprovalSpec {
            run: name.clone(),
            step: "sign-off".into(),
            decision: Decision::Approve,
            approved_by: "mallory".into(),
            approver_groups: Vec::new(),
            comment: None,
        },
    );
    match approvals.create(&PostParams::default(), &forged).await {
        Err(kube::Error::Api(refusal)) => {
            assert!(
                refusal.message.contains("spec.approvedBy must be the user")
                    && refusal.message.contains("mallory"),
                "unexpected refusal: {refusal:?}"
            );
        }
        Ok(_) => anyhow::bail!("a forged Approval naming mallory was admitted"),
        Err(other) => return Err(other.into()),
    }
    assert!(
        approvals
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );
    assert_eq!(
        get_run(&env, &name).await?.status.map(|s| s.phase),
        Some(RunPhase::WaitingApproval)
    );

    // Approved through the CLI with kubectl's `--as`: the approver is whoever the API
    // server authenticated, here the impersonated alice, who may read runs and create
    // Approvals in this namespace and nothing more.
    let admin = authenticated_user(&env.client).await?;
    env.apply_yaml(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: release-approver}
rules:
- apiGroups: [maestro.dev]
  resources: [compositionruns]
  verbs: [get, list, watch]
- apiGroups: [maestro.dev]
  resources: [approvals]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-approves}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: release-approver}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
"#,
    )
    .await?;
    let user = "alice".to_string();
    assert_ne!(admin, user);
    maestro_e2e::wait_until_allowed(
        &env.client,
        &user,
        "create",
        "maestro.dev",
        "approvals",
        &env.ns.name,
    )
    .await?;
    let said = env
        .cli(&["approve", &name, "sign-off", "--as", "alice"])
        .await?;
    assert!(
        said.contains(&format!("{name}/sign-off approved by {user}")),
        "approve said: {said}"
    );
    let run = env.wait_finished(&name, SCENARIO_TIMEOUT).await?;
    assert_eq!(
        status_of(&run)?.phase,
        RunPhase::Succeeded,
        "{}",
        status_yaml(&run)
    );
    let gate = step_of(&run, "sign-off")?;
    assert_eq!(gate.phase, StepPhase::Succeeded);
    assert_eq!(gate.approved_by.as_deref(), Some(&*user));
    assert_eq!(
        gate.message.as_deref(),
        Some(&*format!("approved by {user}"))
    );
    assert_eq!(
        attempts_per_step(&env, &name).await?,
        BTreeMap::from([
            ("build".to_string(), vec![1]),
            ("ship".to_string(), vec![1])
        ])
    );
    let log = env.cli(&["logs", &name]).await?;
    assert!(
        tagged(&log, "[ship]")
            .iter()
            .any(|l| l.ends_with("shipped 1.4.3")),
        "log:\n{log}"
    );

    // Nobody approved the expiring gate within its 5 s.
    let expired = env.wait_finished(&expiring_name, SCENARIO_TIMEOUT).await?;
    assert_eq!(
        status_of(&expired)?.phase,
        RunPhase::Failed,
        "{}",
        status_yaml(&expired)
    );
    let gate = step_of(&expired, "quick-sign-off")?;
    assert_eq!(gate.phase, StepPhase::Failed);
    assert_eq!(gate.message.as_deref(), Some("no approval within 5s"));
    assert!(gate.approved_by.is_none());
    let waited = step_finished(&expired, "quick-sign-off")?
        .duration_since(step_started(&expired, "quick-sign-off")?);
    // Recorded times have whole seconds.
    assert!(
        waited >= SignedDuration::from_secs(4),
        "waited only {waited}"
    );
    assert_eq!(step_of(&expired, "ship")?.phase, StepPhase::Skipped);
    assert_eq!(
        succeeded_condition(&expired)?.1,
        "step quick-sign-off failed: no approval within 5s"
    );
    assert!(attempts_per_step(&env, &expiring_name).await?.is_empty());
    Ok(())
}

/// examples/cancel: `kubectl maestro cancel` while soak sleeps: the run ends Cancelled
/// within seconds, soak's pod is stopped, and report never gets a pod.
#[tokio::test]
async fn cancel_stops_a_running_run() -> anyhow::Result<()> {
    let env = Env::new("cancel").await?;
    env.apply_example_ready("cancel/long-job.yaml").await?;
    let name = env.start_run("long-job", &[]).await?;
    let soak_pod = pod_name(&name, "soak", 1);
    wait_run_until(
        &env,
        &name,
        "soak running",
        SCENARIO_TIMEOUT,
        step_in("soak", StepPhase::Running),
    )
    .await?;
    wait_container_running(&env, &soak_pod).await?;

    let asked = std::time::Instant::now();
    let said = env.cli(&["cancel", &name]).await?;
    assert!(said.contains("cancel requested"), "cancel said: {said}");
    let run = env
        .wait_phase(&name, &[RunPhase::Cancelled], Duration::from_secs(30))
        .await?;
    let took = asked.elapsed();
    assert!(run.spec.cancel);
    assert_eq!(succeeded_condition(&run)?.0, "Cancelled");
    assert_eq!(step_of(&run, "prepare")?.phase, StepPhase::Succeeded);
    assert_eq!(step_of(&run, "soak")?.phase, StepPhase::Cancelled);
    assert_eq!(step_of(&run, "report")?.phase, StepPhase::Cancelled);

    // soak's pod is gone, or its container has ended; never left sleeping.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let pods = &pods;
    let soak_pod = &soak_pod;
    let pod_end = wait_for(
        &format!("pod {soak_pod} to be gone or terminated"),
        Duration::from_secs(40),
        || async move {
            let Some(pod) = pods.get_opt(soak_pod).await.map_err(|e| e.to_string())? else {
                return Ok("gone");
            };
            let terminated = pod
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.name == labels::STEP_CONTAINER)
                .and_then(|c| c.state)
                .is_some_and(|s| s.terminated.is_some());
            if terminated {
                Ok("terminated")
            } else {
                Err(format!(
                    "still there, deletion requested: {}",
                    pod.metadata.deletion_timestamp.is_some()
                ))
            }
        },
    )
    .await?;
    // A step started after the cancel would show up by now.
    let attempts = attempts_per_step(&env, &name).await?;
    assert!(
        !attempts.contains_key("report"),
        "report got a pod: {attempts:?}"
    );
    assert_eq!(attempts.get("prepare"), Some(&vec![1]));
    assert_eq!(
        get_run(&env, &name).await?.status.map(|s| s.phase),
        Some(RunPhase::Cancelled)
    );
    println!("cancelled in {took:?}; soak pod {pod_end}");
    Ok(())
}

/// examples/operator-restart: the operator is killed (SIGKILL) while step two of four
/// runs and started again a few seconds later; the run still succeeds and no step ran
/// twice: one pod per step, all first attempts.
#[tokio::test]
async fn operator_killed_mid_run_resumes_without_rerunning_steps() -> anyhow::Result<()> {
    let mut env = Env::new("restart").await?;
    env.apply_example_ready("operator-restart/four-steps.yaml")
        .await?;
    let name = env.start_run("four-steps", &[]).await?;
    wait_run_until(
        &env,
        &name,
        "step two running",
        SCENARIO_TIMEOUT,
        step_in("two", StepPhase::Running),
    )
    .await?;
    wait_container_running(&env, &pod_name(&name, "two", 1)).await?;

    env.operator.kill().await?;
    // Step two (5 s) ends while nobody watches.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let unattended = get_run(&env, &name).await?;
    assert_eq!(step_of(&unattended, "two")?.phase, StepPhase::Running);
    assert_eq!(step_of(&unattended, "three")?.phase, StepPhase::Pending);
    env.operator.restart().await?;

    let run = env.wait_finished(&name, SCENARIO_TIMEOUT).await?;
    assert_eq!(
        status_of(&run)?.phase,
        RunPhase::Succeeded,
        "{}",
        status_yaml(&run)
    );
    let expected: BTreeMap<String, Vec<u32>> = ["four", "one", "three", "two"]
        .into_iter()
        .map(|step| (step.to_string(), vec![1]))
        .collect();
    assert_eq!(attempts_per_step(&env, &name).await?, expected);
    for step in ["one", "two", "three", "four"] {
        assert_eq!(step_of(&run, step)?.attempts, 1, "{}", status_yaml(&run));
    }
    assert_eq!(outputs(&run, "four")["count"], "4");
    let log = env.cli(&["logs", &name]).await?;
    for line in [
        "step one",
        "step two after 1",
        "step three after 2",
        "step four after 3",
    ] {
        assert_eq!(
            log.lines().filter(|l| l.ends_with(line)).count(),
            1,
            "{line:?} not exactly once in log:\n{log}"
        );
    }
    Ok(())
}
