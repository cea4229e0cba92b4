//! Agents: runs routed to slots with warm cache volumes, capacity, and capabilities, on
//! the local cluster with its local-path provisioner (PVC mode) and in a privileged
//! namespace (hostPath mode). Each test has its own namespace and operator, so they run
//! at once.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{ListParams, LogParams},
};
use maestro_api::{Agent, CompositionRun, RunAgent, RunPhase, StepStatus, labels};
use maestro_e2e::{
    maestro::{Env, metrics_addr_from_log, repo_root},
    wait_for,
    world::{Sink, TempDir, run},
};

const RUN_TIMEOUT: Duration = Duration::from_secs(150);

fn assignment(run: &CompositionRun) -> Result<RunAgent> {
    run.status
        .as_ref()
        .and_then(|s| s.agent.clone())
        .with_context(|| format!("run {} has no status.agent", run.name_any()))
}

fn step<'a>(run: &'a CompositionRun, name: &str) -> Result<&'a StepStatus> {
    run.status
        .as_ref()
        .and_then(|s| s.steps.iter().find(|st| st.name == name))
        .with_context(|| format!("run {} has no step {name}", run.name_any()))
}

fn succeeded(run: &CompositionRun) -> Result<()> {
    let phase = run.status.as_ref().map(|s| s.phase);
    if phase != Some(RunPhase::Succeeded) {
        bail!(
            "run {} ended {phase:?}: {:#?}",
            run.name_any(),
            run.status.as_ref().map(|s| &s.steps)
        );
    }
    Ok(())
}

/// The step container's [start, finish) interval in whole seconds since the epoch.
fn container_interval(pod: &Pod) -> Option<(i64, i64)> {
    let terminated = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == labels::STEP_CONTAINER)?
        .state
        .as_ref()?
        .terminated
        .clone()?;
    Some((
        terminated.started_at?.0.as_second(),
        terminated.finished_at?.0.as_second(),
    ))
}

async fn pod(env: &Env, name: &str) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    Ok(pods.get(name).await?)
}

async fn step_log(env: &Env, pod_name: &str) -> Result<String> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    Ok(pods
        .logs(
            pod_name,
            &LogParams {
                container: Some(labels::STEP_CONTAINER.into()),
                ..LogParams::default()
            },
        )
        .await?)
}

/// How long a checkout took: from the step container's start (whole seconds, as the
/// kubelet reports it) to the timestamp of the git task's summary line in its log
/// (nanoseconds), so within a second; and the step's whole time, pod start included.
async fn checkout_times(env: &Env, run: &CompositionRun) -> Result<(f64, i64)> {
    let st = step(run, "checkout")?;
    let pod_name = st.pod_name.clone().context("checkout has no pod")?;
    let started = pod(env, &pod_name)
        .await?
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().find(|c| c.name == labels::STEP_CONTAINER))
        .and_then(|c| c.state?.terminated?.started_at)
        .context("the checkout container has no start time")?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let log = pods
        .logs(
            &pod_name,
            &LogParams {
                container: Some(labels::STEP_CONTAINER.into()),
                timestamps: true,
                ..LogParams::default()
            },
        )
        .await?;
    let summary = log
        .lines()
        .find(|l| l.contains("clone at") || l.contains("cloned"))
        .with_context(|| format!("no summary line in the checkout's log: {log}"))?;
    let at: k8s_openapi::jiff::Timestamp = summary
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("no timestamp on {summary:?}"))?;
    let container = at.duration_since(started.0).as_secs_f64();
    let whole = match (&st.start_time, &st.finish_time) {
        (Some(a), Some(b)) => b.0.duration_since(a.0).as_secs(),
        _ => bail!("the checkout step has no start or finish time"),
    };
    Ok((container, whole))
}

const CHECKOUT: &str = r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: checkout}
spec:
  params:
    - {name: repo}
    - {name: hold, default: "0"}
  steps:
    - name: checkout
      task: git
      with: {repo: "{{ params.repo }}", path: src}
    - name: count
      task: shell
      with: {script: "git -C src rev-list --count HEAD > $MAESTRO_OUTPUTS/commits; sleep \"$HOLD\"", env: {HOLD: "{{ params.hold }}"}}
"#;

/// The issue's warm-cache scenario: the second run of a composition lands on the first
/// run's slot and its git step fetches into the clone already there; with that slot busy,
/// a third run waits the Agent's affinityWait and then takes the other slot.
#[tokio::test]
async fn second_run_reuses_the_warm_slot_and_a_third_takes_another_after_the_wait() -> Result<()> {
    let env = Env::new("agents-warm").await?;
    let dir = TempDir::new("maestro-agents-warm")?;
    let script = repo_root().join("e2e/servers/make-big-repo.sh");
    run(
        &dir.0,
        "bash",
        &[
            &script.display().to_string(),
            &dir.0.display().to_string(),
            "10000",
        ],
    )?;
    let sink = Sink::start(&dir.0).await?;
    let repo = format!("{}/big.git", sink.url);
    env.apply_yaml(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: Agent
metadata: {name: builders}
spec:
  capacity: 4
  slots: 2
  affinityWait: 5s
  cache:
    persistentVolumeClaim: {size: 1Gi}
"#,
    )
    .await?;
    let compositions = env.apply_yaml(CHECKOUT).await?;
    env.wait_compositions_ready(&compositions).await?;

    let first = env.start_run("checkout", &[("repo", &repo)]).await?;
    let first = env.wait_finished(&first, RUN_TIMEOUT).await?;
    succeeded(&first)?;
    let first_slot = assignment(&first)?;
    assert!(!first_slot.cache_hit, "the first run finds a cold slot");
    assert_eq!(step(&first, "checkout")?.outputs["fetched"], "false");
    assert_eq!(step(&first, "count")?.outputs["commits"], "10001");

    // Ten new commits upstream, then the second run.
    let work = dir.0.join("big-work");
    for i in 0..10 {
        run(
            &work,
            "git",
            &["commit", "-q", "--allow-empty", "-m", &format!("new {i}")],
        )?;
    }
    run(&work, "git", &["push", "-q", "served", "main"])?;
    run(&dir.0.join("big.git"), "git", &["update-server-info"])?;
    let second = env
        .start_run("checkout", &[("repo", &repo), ("hold", "40")])
        .await?;
    let second_running = wait_for("the second run's checkout to end", RUN_TIMEOUT, || async {
        let api: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
        let r = api.get(&second).await.map_err(|e| e.to_string())?;
        match r.status.as_ref().and_then(|s| s.steps.first()) {
            Some(s) if s.phase.is_finished() => Ok(r),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let second_slot = assignment(&second_running)?;
    assert_eq!(
        (second_slot.name.as_str(), second_slot.slot),
        (first_slot.name.as_str(), first_slot.slot),
        "the second run lands on the first run's slot"
    );
    assert!(second_slot.cache_hit, "and counts as a cache hit");
    let checkout = step(&second_running, "checkout")?;
    assert_eq!(checkout.outputs["fetched"], "true", "{checkout:?}");
    let log = step_log(&env, checkout.pod_name.as_deref().unwrap_or_default()).await?;
    assert!(
        log.contains("fetched into existing clone"),
        "the second checkout fetches into the clone: {log}"
    );
    let (first_container, first_step) = checkout_times(&env, &first).await?;
    let (second_container, second_step) = checkout_times(&env, &second_running).await?;
    println!(
        "checkout of a 10011-commit repository (~210 MB in ~15,000 files): first (clone) \
         {first_container:.1}s in the container, {first_step}s as a step; second (fetch into \
         the warm clone) {second_container:.1}s in the container, {second_step}s as a step"
    );

    // The second run holds the warm slot (it sleeps): a third waits 5 s for it, then
    // takes the other slot.
    let third = env.start_run("checkout", &[("repo", &repo)]).await?;
    let queued = env
        .wait_phase(&third, &[RunPhase::Queued], Duration::from_secs(20))
        .await?;
    let reason = queued
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Succeeded"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(reason.contains("warm cache"), "{reason}");
    let third = env.wait_finished(&third, RUN_TIMEOUT).await?;
    succeeded(&third)?;
    let third_slot = assignment(&third)?;
    assert_eq!(third_slot.name, first_slot.name);
    assert_ne!(
        third_slot.slot, first_slot.slot,
        "the third run takes the other slot"
    );
    assert!(!third_slot.cache_hit);
    let created = third
        .metadata
        .creation_timestamp
        .clone()
        .context("no creation time")?;
    let assigned = third_slot
        .assigned_time
        .clone()
        .context("no assignment time")?;
    let waited = assigned.0.duration_since(created.0).as_secs();
    assert!(
        waited >= 4,
        "the third run waited the affinityWait (5s) first, not {waited}s"
    );
    let api: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    let second_now = api.get(&second).await?;
    assert!(
        !second_now
            .status
            .as_ref()
            .is_some_and(|s| s.phase.is_finished()),
        "the second run still held its slot when the third finished"
    );

    let agents: Api<Agent> = Api::namespaced(env.client.clone(), &env.ns.name);
    let status = wait_for("the Agent's status", Duration::from_secs(20), || async {
        let a = agents.get("builders").await.map_err(|e| e.to_string())?;
        match a.status {
            Some(s) if s.cache_hits >= 1 && s.cache_misses >= 2 => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    assert_eq!(status.slots.len(), 2);
    assert!(
        status
            .slots
            .iter()
            .all(|s| s.last_composition.as_deref() == Some("checkout"))
    );

    // The same counts in the operator's metrics (the busy-slots gauge follows within a
    // status period).
    let addr = metrics_addr_from_log(&env.operator.log).map_err(anyhow::Error::msg)?;
    let url = format!("http://{addr}/metrics");
    wait_for("the Agent metrics", Duration::from_secs(20), || async {
        let metrics = run(&dir.0, "curl", &["-fsS", &url]).map_err(|e| e.to_string())?;
        let missing: Vec<&str> = [
            r#"maestro_agent_cache_hits_total{agent="builders"} 1"#,
            r#"maestro_agent_cache_misses_total{agent="builders"} 2"#,
            r#"maestro_agent_slots_busy{agent="builders"} 1"#,
            "maestro_run_queue_wait_seconds_count 3",
        ]
        .into_iter()
        .filter(|line| !metrics.lines().any(|l| l == *line))
        .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {missing:?}"))
        }
    })
    .await?;
    Ok(())
}

/// With capacity 2 and five runs of two parallel steps each, never more than two step
/// pods run at once, from the pods' own start and finish times, also across an operator
/// restart; all runs succeed.
#[tokio::test]
async fn capacity_bounds_the_step_pods_running_at_once() -> Result<()> {
    let mut env = Env::new("agents-capacity").await?;
    env.apply_yaml(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: Agent
metadata: {name: narrow}
spec:
  capacity: 2
  slots: 5
  cache:
    persistentVolumeClaim: {size: 100Mi}
---
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: pair}
spec:
  steps:
    - {name: left, task: shell, with: {script: "sleep 2"}}
    - {name: right, task: shell, dependsOn: [], with: {script: "sleep 2"}}
"#,
    )
    .await?;
    env.wait_compositions_ready(&["pair".to_string()]).await?;
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(env.start_run("pair", &[]).await?);
    }
    // A restarted operator rebuilds who holds which slot and how many pods run from the
    // cluster: restart it while the first pods run and the others wait.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let agent_pods = ListParams::default().labels(&format!("{}=narrow", labels::AGENT));
    wait_for("the first step pods", Duration::from_secs(60), || async {
        let n = pods
            .list(&agent_pods)
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} pods"))
        }
    })
    .await?;
    env.operator.kill().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.operator.restart().await?;
    for name in &runs {
        let run = env.wait_finished(name, Duration::from_secs(240)).await?;
        succeeded(&run)?;
    }
    let list = pods.list(&agent_pods).await?;
    let mut intervals = Vec::new();
    for p in &list.items {
        intervals.push(
            container_interval(p).with_context(|| format!("pod {} has no times", p.name_any()))?,
        );
    }
    assert_eq!(intervals.len(), 10, "two step pods per run");
    // At each start, count the intervals [start, finish) that contain it.
    let most = intervals
        .iter()
        .map(|(at, _)| intervals.iter().filter(|(s, f)| s <= at && at < f).count())
        .max()
        .unwrap_or(0);
    println!("capacity 2, 10 step pods: at most {most} ran at once; intervals {intervals:?}");
    assert!(most <= 2, "{most} step pods ran at once: {intervals:?}");
    assert_eq!(most, 2, "the capacity is used");
    Ok(())
}

/// A Task needing a capability no Agent offers leaves the run Queued with a reason that
/// names the capability, and no pod is made.
#[tokio::test]
async fn missing_capability_keeps_the_run_queued_with_a_reason() -> Result<()> {
    let env = Env::new("agents-capability").await?;
    env.apply_yaml(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: Agent
metadata: {name: cloud}
spec:
  capacity: 2
  capabilities: [aws]
  cache:
    persistentVolumeClaim: {size: 100Mi}
---
apiVersion: maestro.dev/v1alpha1
kind: Task
metadata: {name: mvn}
spec:
  builtin: shell
  requires: [maven]
  inputs:
    - {name: script, type: string, required: true}
---
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: build}
spec:
  steps:
    - {name: package, task: mvn, with: {script: "mvn package"}}
"#,
    )
    .await?;
    env.wait_compositions_ready(&["build".to_string()]).await?;
    let name = env.start_run("build", &[]).await?;
    let queued = env
        .wait_phase(&name, &[RunPhase::Queued], Duration::from_secs(30))
        .await?;
    let message = queued
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Succeeded"))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .context("no Succeeded condition")?;
    assert_eq!(message.0, "Queued");
    assert_eq!(
        message.1,
        r#"no Agent offers capability "maven" (required by task mvn of step package)"#
    );
    // Still queued a while later, without a pod.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let api: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    let later = api.get(&name).await?;
    assert_eq!(
        later.status.as_ref().map(|s| s.phase),
        Some(RunPhase::Queued)
    );
    assert!(env.step_pods(&name).await?.is_empty());
    Ok(())
}

/// hostPath mode, in a namespace that allows it: a run writes a file into its slot's
/// workspace and the next run on the same slot reads it.
#[tokio::test]
async fn host_path_cache_keeps_files_for_the_next_run_on_the_slot() -> Result<()> {
    // hostPath caches are an administrator's opt-in.
    let env = Env::with_options(
        "agents-hostpath",
        "privileged",
        &["--allow-host-path-caches".to_string()],
    )
    .await?;
    let host_dir = format!("/tmp/maestro-e2e-{}", env.ns.name);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(host_dir.clone());
    env.apply_yaml(&format!(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: Agent
metadata: {{name: dev}}
spec:
  capacity: 1
  cache:
    hostPath: {{path: {host_dir}}}
---
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {{name: remember}}
spec:
  steps:
    - name: note
      task: shell
      with:
        script: |
          cat /workspace/note.txt > $MAESTRO_OUTPUTS/previous 2>/dev/null || echo none > $MAESTRO_OUTPUTS/previous
          echo "$MAESTRO_RUN" > /workspace/note.txt
"#
    ))
    .await?;
    env.wait_compositions_ready(&["remember".to_string()])
        .await?;
    let first = env.start_run("remember", &[]).await?;
    let first_run = env.wait_finished(&first, RUN_TIMEOUT).await?;
    succeeded(&first_run)?;
    assert_eq!(step(&first_run, "note")?.outputs["previous"], "none");
    let second = env.start_run("remember", &[]).await?;
    let second_run = env.wait_finished(&second, RUN_TIMEOUT).await?;
    succeeded(&second_run)?;
    assert_eq!(
        step(&second_run, "note")?.outputs["previous"],
        first,
        "the second run reads what the first left in the slot"
    );
    assert!(assignment(&second_run)?.cache_hit);
    Ok(())
}

const PLANT_AND_LOOK: &str = r#"
apiVersion: maestro.dev/v1alpha1
kind: Agent
metadata: {name: shared}
spec:
  capacity: 1
  slots: 1
  cache:
    persistentVolumeClaim: {size: 1Gi}
---
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: plant}
spec:
  params: [{name: repo}]
  steps:
    - name: checkout
      task: git
      with: {repo: "{{ params.repo }}", path: src}
    - name: plant
      task: shell
      with:
        script: |
          set -eu
          marker="$PWD/hook-ran"
          mkdir -p planted
          for hook in post-checkout reference-transaction; do
            for dir in src/.git/hooks planted; do
              printf '#!/bin/sh\necho planted hook ran >&2\ntouch %s\n' "$marker" > "$dir/$hook"
              chmod +x "$dir/$hook"
            done
          done
          cp planted/post-checkout planted/fsmonitor
          git -C src config core.hooksPath "$PWD/planted"
          git -C src config core.fsmonitor "$PWD/planted/fsmonitor"
          # Plain git in this slot runs them: the plant works.
          git -C src checkout -q --detach HEAD
          if [ -e hook-ran ]; then echo yes; else echo no; fi > "$MAESTRO_OUTPUTS/plainGitRanIt"
          rm -f hook-ran
---
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: victim}
spec:
  params: [{name: repo}]
  steps:
    - name: checkout
      task: git
      with: {repo: "{{ params.repo }}", path: src}
    - name: look
      task: shell
      with:
        script: |
          if [ -e hook-ran ]; then echo yes; else echo no; fi > "$MAESTRO_OUTPUTS/hookRan"
          git -C src config --local --get-regexp '^core[.](hookspath|fsmonitor)$' | wc -l | tr -d ' ' > "$MAESTRO_OUTPUTS/plantedSettings"
"#;

/// An Agent slot is shared by every composition routed to it, whatever its trust: a run
/// plants git hooks (in `.git/hooks`, in a `core.hooksPath` of its own, and as
/// `core.fsmonitor`) in the clone its slot keeps. The next run on that slot checks out into
/// the same clone, fetching into it, and none of them runs: its git step runs with hooks and
/// fsmonitor off, and scrubs the planted settings from the clone.
#[tokio::test]
async fn hooks_a_run_plants_in_its_slots_clone_never_run_in_the_next_run() -> Result<()> {
    let env = Env::new("agents-hooks").await?;
    let dir = TempDir::new("maestro-agents-hooks")?;
    let work = dir.0.join("work");
    std::fs::create_dir_all(&work)?;
    run(&work, "git", &["init", "-q", "-b", "main"])?;
    run(&work, "git", &["config", "user.email", "e2e@example.com"])?;
    run(&work, "git", &["config", "user.name", "Maestro e2e"])?;
    std::fs::write(work.join("README"), "one\n")?;
    run(&work, "git", &["add", "."])?;
    run(&work, "git", &["commit", "-q", "-m", "one"])?;
    run(&dir.0, "git", &["clone", "-q", "--bare", "work", "app.git"])?;
    run(&dir.0.join("app.git"), "git", &["update-server-info"])?;
    let sink = Sink::start(&dir.0).await?;
    let repo = format!("{}/app.git", sink.url);
    let compositions = env.apply_yaml(PLANT_AND_LOOK).await?;
    let compositions: Vec<String> = compositions.into_iter().filter(|c| c != "shared").collect();
    env.wait_compositions_ready(&compositions).await?;

    let planted = env.start_run("plant", &[("repo", &repo)]).await?;
    let planted = env.wait_finished(&planted, RUN_TIMEOUT).await?;
    succeeded(&planted)?;
    assert_eq!(
        step(&planted, "plant")?.outputs["plainGitRanIt"],
        "yes",
        "the planted hooks run for plain git, so the test can tell"
    );

    // A new commit upstream, so the next checkout fetches and moves HEAD (what fires
    // reference-transaction and post-checkout).
    std::fs::write(work.join("README"), "two\n")?;
    run(&work, "git", &["commit", "-q", "-am", "two"])?;
    run(
        &work,
        "git",
        &[
            "push",
            "-q",
            &dir.0.join("app.git").display().to_string(),
            "main",
        ],
    )?;
    run(&dir.0.join("app.git"), "git", &["update-server-info"])?;
    let head = run(&work, "git", &["rev-parse", "HEAD"])?;

    let victim = env.start_run("victim", &[("repo", &repo)]).await?;
    let victim = env.wait_finished(&victim, RUN_TIMEOUT).await?;
    succeeded(&victim)?;
    assert_eq!(
        (assignment(&victim)?.name, assignment(&victim)?.slot),
        (assignment(&planted)?.name, assignment(&planted)?.slot),
        "the victim lands on the planted slot"
    );
    let checkout = step(&victim, "checkout")?;
    assert_eq!(
        checkout.outputs["fetched"], "true",
        "it reused the planted clone"
    );
    assert_eq!(checkout.outputs["commit"], head.trim());
    let look = step(&victim, "look")?;
    assert_eq!(
        look.outputs["hookRan"], "no",
        "a planted hook ran in the next run"
    );
    assert_eq!(
        look.outputs["plantedSettings"], "0",
        "the clone still names the planted hooks"
    );
    let log = step_log(&env, checkout.pod_name.as_deref().unwrap_or_default()).await?;
    assert!(!log.contains("planted hook ran"), "{log}");
    assert!(
        log.contains("setting(s) from the existing clone's .git/config"),
        "the checkout says it scrubbed the clone: {log}"
    );
    Ok(())
}
