//! The web UI in a real browser against the real cluster: `kubectl maestro ui` serves it
//! (as the test's user, or as an impersonated one), Debian's headless chromium driven by
//! playwright-core (e2e/ui/*.mjs) uses it, and these tests check what the page showed
//! and what the cluster recorded. Each browser test saves a screenshot under
//! $CARGO_TARGET_DIR/e2e-artifacts/ui/.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use maestro_api::{Approval, CompositionRun, RunPhase, StepPhase};
use maestro_e2e::maestro::{Env, repo_root, workspace_bin};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const TIMEOUT: Duration = Duration::from_secs(120);
/// The longest one browser script may take: each of its waits gives up after 90 s, so a
/// script still going after this is hung (a browser that does not close).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// A run whose middle step prints a line a second for twelve seconds.
const TICKER: &str = r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: ui-ticker}
spec:
  steps:
    - name: build
      task: shell
      with: {script: echo "built"}
    - name: ticker
      task: shell
      with:
        script: |
          for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "tick $i"; sleep 1; done
    - name: report
      task: shell
      with: {script: echo "reported"}
"#;

/// alice and mallory may see runs and their logs; only alice may decide gates.
const USERS: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: ui-viewer}
rules:
- apiGroups: [maestro.dev]
  resources: [compositions, compositionruns]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods, pods/log]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: ui-viewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: ui-viewer}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: mallory}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: ui-approver}
rules:
- apiGroups: [maestro.dev]
  resources: [approvals]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: ui-approver}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: ui-approver}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
"#;

/// Where the screenshots go.
fn artifacts_dir() -> Result<PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        // target/debug/deps/<test> -> target
        None => std::env::current_exe()?
            .ancestors()
            .nth(3)
            .context("test executable has no target dir")?
            .to_path_buf(),
    };
    let dir = target.join("e2e-artifacts/ui");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The browser tests' folder with playwright-core installed: e2e/ui copied into a
/// versioned cache folder (npm ci there only when the lock file changed), so the repo
/// gets no node_modules and a warm machine installs nothing. Tests running at once wait
/// for the first to have installed it.
fn browser_tests() -> Result<PathBuf> {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let cache = std::env::var_os("MAESTRO_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/maestro")))
        .context("neither MAESTRO_CACHE nor HOME is set")?;
    let dir = cache.join("ui-e2e-v1");
    std::fs::create_dir_all(&dir)?;
    let source = repo_root().join("e2e/ui");
    for entry in std::fs::read_dir(&source)? {
        let path = entry?.path();
        let is_test_file = path
            .extension()
            .is_some_and(|ext| ext == "mjs" || ext == "json");
        if is_test_file && let Some(name) = path.file_name() {
            std::fs::copy(&path, dir.join(name))?;
        }
    }
    let lock = std::fs::read_to_string(dir.join("package-lock.json"))?;
    let stamp = dir.join("node_modules/.installed-lock.json");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(lock.as_str()) {
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
            .current_dir(&dir)
            .output()
            .context("running npm ci for the browser tests (is npm installed?)")?;
        if !out.status.success() {
            bail!("npm ci failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(&stamp, &lock)?;
    }
    Ok(dir)
}

/// `kubectl maestro ui` for the test namespace, as the test's user or (`--as`) another;
/// stopped when dropped.
struct UiServer {
    url: String,
    _child: Child,
}

impl UiServer {
    async fn start(env: &Env, as_user: Option<&str>) -> Result<Self> {
        Self::start_in(&env.ns.name, as_user).await
    }

    async fn start_in(namespace: &str, as_user: Option<&str>) -> Result<Self> {
        let mut command = Command::new(workspace_bin("kubectl-maestro")?);
        command.args(["ui", "--port", "0", "--no-open", "-n", namespace]);
        if let Some(user) = as_user {
            command.args(["--as", user]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting kubectl-maestro ui")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("kubectl maestro ui printed no URL")??
            .context("kubectl maestro ui exited before printing its URL")?;
        let url = first
            .strip_prefix("Maestro UI: ")
            .with_context(|| format!("unexpected first line {first:?}"))?
            .trim_end_matches('/')
            .to_string();
        // Keep reading its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { url, _child: child })
    }
}

/// Runs a browser test script with `name=value` arguments; returns the JSON line it
/// printed last.
async fn browser(script: &str, args: &[(&str, &str)]) -> Result<Value> {
    browser_with_token(script, args, None).await
}

/// [`browser`], with a bearer token for the script in its environment (never on its
/// command line).
async fn browser_with_token(
    script: &str,
    args: &[(&str, &str)],
    token: Option<&str>,
) -> Result<Value> {
    let dir = browser_tests()?;
    let mut command = browser_command(&dir, script, args);
    if let Some(token) = token {
        command.env("MAESTRO_UI_TOKEN", token);
    }
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
        .await
        .with_context(|| format!("browser test {script} hung"))??;
    result_of(script, &out.status, &out.stdout, &out.stderr)
}

fn browser_command(dir: &Path, script: &str, args: &[(&str, &str)]) -> Command {
    let mut command = Command::new("node");
    command
        .arg(dir.join(script))
        .args(args.iter().map(|(name, value)| format!("{name}={value}")))
        .current_dir(dir)
        .kill_on_drop(true);
    command
}

fn result_of(
    script: &str,
    status: &std::process::ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<Value> {
    let stdout = String::from_utf8_lossy(stdout);
    let stderr = String::from_utf8_lossy(stderr);
    if !status.success() {
        bail!("browser test {script} failed ({status}):\n{stderr}\n{stdout}");
    }
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .with_context(|| format!("{script} printed no result: {stdout}\n{stderr}"))
}

fn screenshot(name: &str) -> Result<String> {
    Ok(artifacts_dir()?
        .join(format!("{name}.png"))
        .to_string_lossy()
        .into_owned())
}

#[tokio::test]
async fn the_run_page_shows_the_graph_with_phases_and_streams_the_log_while_a_step_runs_and_says_when_a_pod_is_gone()
-> Result<()> {
    let env = Env::new("ui-run").await?;
    let names = env.apply_yaml(TICKER).await?;
    env.wait_compositions_ready(&names).await?;
    let server = UiServer::start(&env, None).await?;
    let run = env.start_run("ui-ticker", &[]).await?;
    let shot = screenshot("run-graph-and-log")?;
    let seen = browser(
        "run-graph-and-log.mjs",
        &[
            ("url", &server.url),
            ("namespace", &env.ns.name),
            ("run", &run),
            ("screenshot", &shot),
        ],
    )
    .await?;
    let ticking = &seen["whileTicking"];
    assert_eq!(ticking["tickerPhase"], "Running", "{seen}");
    assert_eq!(ticking["buildPhase"], "Succeeded", "{seen}");
    assert_eq!(
        ticking["lastTickShown"], 0,
        "the log came only at the end: {seen}"
    );
    assert_eq!(ticking["logState"], "following", "{seen}");
    for step in ["build", "ticker", "report"] {
        assert_eq!(seen["phases"][step], "Succeeded", "{step}: {seen}");
    }
    let filtered: Vec<&str> = seen["filtered"]
        .as_array()
        .context("no filtered lines")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(filtered, ["build"], "the log filtered to build: {seen}");
    let ended = env.wait_finished(&run, TIMEOUT).await?;
    assert_eq!(ended.status.map(|s| s.phase), Some(RunPhase::Succeeded));

    // Once a step's pod is gone, so is its log: the page says so, and shows the rest.
    let build_pod = env
        .step_pods(&run)
        .await?
        .into_iter()
        .find(|(step, _, _)| step == "build")
        .map(|(_, _, pod)| pod)
        .context("no build pod")?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    pods.delete(&build_pod, &DeleteParams::default().grace_period(0))
        .await?;
    maestro_e2e::wait_for(&format!("pod {build_pod} to be gone"), TIMEOUT, || async {
        match pods.get_opt(&build_pod).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("still there".to_string()),
            Err(error) => Err(error.to_string()),
        }
    })
    .await?;
    let shot = screenshot("log-pod-gone")?;
    let seen = browser(
        "log-gone.mjs",
        &[
            ("url", &server.url),
            ("namespace", &env.ns.name),
            ("run", &run),
            ("step", "build"),
            ("screenshot", &shot),
        ],
    )
    .await?;
    let notes = seen["notes"].to_string();
    assert!(
        notes.contains(&format!(
            "step build: pod {build_pod} is gone, and its log with it"
        )),
        "{seen}"
    );
    assert_eq!(
        seen["steps"],
        serde_json::json!(["ticker", "report"]),
        "{seen}"
    );
    Ok(())
}

#[tokio::test]
async fn approve_is_refused_without_the_approver_role_and_records_the_approver_with_it()
-> Result<()> {
    let env = Env::new("ui-approve").await?;
    env.apply_example_ready("approval/release-gate.yaml")
        .await?;
    env.apply_yaml(USERS).await?;
    let ns = env.ns.name.clone();
    maestro_e2e::wait_until_allowed(
        &env.client,
        "alice",
        "create",
        "maestro.dev",
        "approvals",
        &ns,
    )
    .await?;
    maestro_e2e::wait_until_allowed(
        &env.client,
        "mallory",
        "watch",
        "maestro.dev",
        "compositionruns",
        &ns,
    )
    .await?;
    let run = env.start_run("release-gate", &[]).await?;
    env.wait_phase(&run, &[RunPhase::WaitingApproval], TIMEOUT)
        .await?;

    // mallory may look but not approve: the page shows the API's refusal.
    let as_mallory = UiServer::start(&env, Some("mallory")).await?;
    let shot = screenshot("approve-refused")?;
    let refused = browser(
        "approve.mjs",
        &[
            ("url", &as_mallory.url),
            ("namespace", &ns),
            ("run", &run),
            ("step", "sign-off"),
            ("comment", "let me through"),
            ("expect", "refused"),
            ("screenshot", &shot),
        ],
    )
    .await?;
    assert_eq!(refused["user"], "mallory", "{refused}");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(r#"User "mallory" cannot create resource "approvals""#),
        "{refused}"
    );
    assert_eq!(refused["stillWaiting"], true, "{refused}");
    let approvals: Api<Approval> = Api::namespaced(env.client.clone(), &ns);
    assert!(approvals.list(&Default::default()).await?.items.is_empty());

    // alice approves with a comment: the run goes on, and her name is on the decision.
    let as_alice = UiServer::start(&env, Some("alice")).await?;
    let shot = screenshot("approve")?;
    let approved = browser(
        "approve.mjs",
        &[
            ("url", &as_alice.url),
            ("namespace", &ns),
            ("run", &run),
            ("step", "sign-off"),
            ("comment", "tests are green"),
            ("screenshot", &shot),
        ],
    )
    .await?;
    assert_eq!(approved["user"], "alice", "{approved}");
    let decision = approved["decision"].as_str().unwrap_or_default();
    assert!(
        decision.contains("approved by alice") && decision.contains("tests are green"),
        "{approved}"
    );
    let ended = env.wait_finished(&run, TIMEOUT).await?;
    let status = ended.status.context("no status")?;
    assert_eq!(status.phase, RunPhase::Succeeded);
    let gate = status
        .steps
        .iter()
        .find(|s| s.name == "sign-off")
        .context("no sign-off step")?;
    assert_eq!(gate.phase, StepPhase::Succeeded);
    assert_eq!(gate.approved_by.as_deref(), Some("alice"));
    let made = approvals.list(&Default::default()).await?.items;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0].spec.approved_by, "alice");
    assert_eq!(made[0].spec.comment.as_deref(), Some("tests are green"));
    Ok(())
}

#[tokio::test]
async fn the_runs_list_shows_new_runs_and_their_phases_without_a_reload() -> Result<()> {
    let env = Env::new("ui-list").await?;
    env.apply_example_ready("hello/composition.yaml").await?;
    env.apply_example_ready("approval/release-gate.yaml")
        .await?;
    let server = UiServer::start(&env, None).await?;
    let dir = browser_tests()?;
    let shot = screenshot("runs-list")?;
    let mut script = browser_command(
        &dir,
        "runs-list.mjs",
        &[("url", &server.url), ("screenshot", &shot)],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()?;
    let mut stdout = BufReader::new(script.stdout.take().context("no stdout")?).lines();
    let first = tokio::time::timeout(TIMEOUT, stdout.next_line()).await;
    if !matches!(&first, Ok(Ok(Some(line))) if line == "ready") {
        let out = script.wait_with_output().await?;
        bail!(
            "the runs list never got live: {first:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let hello = env.start_run("hello", &[]).await?;
    let gated = env.start_run("release-gate", &[]).await?;
    let mut stdin = script.stdin.take().context("no stdin")?;
    stdin
        .write_all(format!("{hello} {gated}\n").as_bytes())
        .await?;
    stdin.flush().await?;
    let mut rest = String::new();
    let read_all = async {
        while let Some(line) = stdout.next_line().await? {
            rest.push_str(&line);
            rest.push('\n');
        }
        script.wait_with_output().await
    };
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, read_all)
        .await
        .context("browser test runs-list.mjs hung")??;
    let seen = result_of("runs-list.mjs", &out.status, rest.as_bytes(), &out.stderr)?;
    assert_eq!(seen["marker"], "same page", "the page was reloaded: {seen}");
    assert_eq!(seen["button"], "Approve sign-off", "{seen}");
    assert_eq!(seen["rows"], 2, "{seen}");
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    let hello_run = runs.get(&hello).await?;
    assert_eq!(hello_run.status.map(|s| s.phase), Some(RunPhase::Succeeded));
    let user = seen["user"].as_str().unwrap_or_default();
    assert_eq!(
        seen["said"],
        format!("{gated}/sign-off approved by {user}"),
        "{seen}"
    );
    let approved = env.wait_finished(&gated, TIMEOUT).await?;
    let gate = approved
        .status
        .iter()
        .flat_map(|s| &s.steps)
        .find(|s| s.name == "sign-off")
        .cloned()
        .context("no sign-off step")?;
    assert_eq!(gate.approved_by.as_deref(), Some(user), "{gate:?}");
    Ok(())
}

#[tokio::test]
async fn the_cancel_button_cancels_a_running_run_and_run_again_starts_a_new_one() -> Result<()> {
    let env = Env::new("ui-cancel").await?;
    env.apply_example_ready("cancel/long-job.yaml").await?;
    let run = env.start_run("long-job", &[]).await?;
    let server = UiServer::start(&env, None).await?;
    let shot = screenshot("cancel")?;
    let seen = browser(
        "cancel.mjs",
        &[
            ("url", &server.url),
            ("namespace", &env.ns.name),
            ("run", &run),
            ("step", "soak"),
            ("screenshot", &shot),
        ],
    )
    .await?;
    assert_eq!(seen["said"], format!("{run}: cancel requested"), "{seen}");
    assert_eq!(seen["phase"], "Cancelled", "{seen}");
    let ended = env.wait_finished(&run, TIMEOUT).await?;
    assert!(ended.spec.cancel);
    assert_eq!(ended.status.map(|s| s.phase), Some(RunPhase::Cancelled));

    // Run again: a new run of the composition with the same params, started by the
    // page's user.
    let again = seen["again"].as_str().context("no new run")?;
    assert_ne!(again, run);
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    let again = runs.get(again).await?;
    assert_eq!(again.spec.composition, "long-job");
    assert_eq!(again.spec.params, ended.spec.params);
    assert!(!again.spec.cancel);
    assert_eq!(
        again.spec.started_by.as_deref(),
        seen["user"].as_str(),
        "{seen}"
    );
    Ok(())
}

/// A composition whose second step fails the first time and passes when it runs again
/// in the same workspace (it leaves a mark there): a rerun needs no changed param.
const SECOND_TRY: &str = r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: second-try}
spec:
  steps:
    - name: prepare
      task: shell
      with: {script: echo prepared > "$MAESTRO_OUTPUTS/what"}
    - name: flaky
      task: shell
      with:
        script: |
          if [ -f "$MAESTRO_WORKSPACE/tried" ]; then echo passed; exit 0; fi
          touch "$MAESTRO_WORKSPACE/tried"; echo the first try fails; exit 1
"#;

#[tokio::test]
async fn the_rerun_button_reruns_the_failed_step_and_opens_the_rerun() -> Result<()> {
    let env = Env::new("ui-rerun").await?;
    let names = env.apply_yaml(SECOND_TRY).await?;
    env.wait_compositions_ready(&names).await?;
    let run = env.start_run("second-try", &[]).await?;
    let failed = env.wait_finished(&run, TIMEOUT).await?;
    assert_eq!(
        failed.status.as_ref().map(|s| s.phase),
        Some(RunPhase::Failed)
    );
    let server = UiServer::start(&env, None).await?;
    let shot = screenshot("rerun")?;
    let seen = browser(
        "rerun.mjs",
        &[
            ("url", &server.url),
            ("namespace", &env.ns.name),
            ("run", &run),
            ("screenshot", &shot),
        ],
    )
    .await?;
    assert_eq!(seen["button"], "Rerun failed steps", "{seen}");
    assert_eq!(seen["rerunOf"], run.as_str(), "{seen}");
    let rerun = seen["rerun"].as_str().context("no rerun")?;
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    let done = runs.get(rerun).await?;
    let of = done.spec.rerun_of.clone().context("not a rerun")?;
    assert_eq!((of.run.as_str(), of.from.as_deref()), (run.as_str(), None));
    assert_eq!(done.spec.started_by.as_deref(), seen["user"].as_str());
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Succeeded, "{status:#?}");
    let prepare = status.steps.iter().find(|s| s.name == "prepare");
    assert_eq!(
        prepare.and_then(|s| s.message.as_deref()),
        Some(format!("reused from {run}").as_str())
    );
    let pods = env.step_pods(rerun).await?;
    let steps: Vec<&str> = pods.iter().map(|(step, _, _)| step.as_str()).collect();
    assert_eq!(steps, ["flaky"], "only the failed step ran again: {pods:?}");
    assert_eq!(
        seen["notes"],
        serde_json::json!([format!(
            "step prepare: reused from {run}, which ran it; its log is with that run"
        )]),
        "{seen}"
    );
    Ok(())
}

#[tokio::test]
async fn the_agents_page_shows_the_slot_holding_a_run_then_its_warm_composition_live() -> Result<()>
{
    let env = Env::new("ui-agents").await?;
    let names = env
        .apply_yaml(
            r#"
apiVersion: maestro.dev/v1alpha1
kind: Agent
metadata: {name: builders}
spec:
  capacity: 2
  slots: 1
  cache:
    persistentVolumeClaim: {size: 100Mi}
---
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: build}
spec:
  steps:
    - {name: compile, task: shell, with: {script: "sleep 8; echo built"}}
"#,
        )
        .await?;
    let compositions: Vec<String> = names.into_iter().filter(|n| n == "build").collect();
    env.wait_compositions_ready(&compositions).await?;
    let server = UiServer::start(&env, None).await?;
    let run = env.start_run("build", &[]).await?;
    let shot = screenshot("agents")?;
    let seen = browser(
        "agents.mjs",
        &[
            ("url", &server.url),
            ("namespace", &env.ns.name),
            ("agent", "builders"),
            ("run", &run),
            ("composition", "build"),
            ("screenshot", &shot),
        ],
    )
    .await?;
    assert_eq!(seen["busy"], "1", "{seen}");
    assert_eq!(seen["freed"], serde_json::json!(["free"]), "{seen}");
    assert_eq!(
        seen["misses"], "1",
        "the first run on a slot is a miss: {seen}"
    );
    assert_eq!(seen["same"], true, "the page was reloaded: {seen}");
    let done = env.wait_finished(&run, TIMEOUT).await?;
    assert_eq!(done.status.map(|s| s.phase), Some(RunPhase::Succeeded));
    Ok(())
}

/// A ServiceAccount that may see runs (the ui-viewer Role of [`USERS`]) but not approve.
const READER: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: ui-reader}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: ui-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: ui-viewer}
subjects:
- {kind: ServiceAccount, name: ui-reader}
"#;

/// The in-cluster server (`maestro-ui`, started here with the test's admin kubeconfig,
/// whose credentials it must drop) acts with each request's own token only: none is
/// refused; a reader's token shows the reader's name and gets the API's refusal to
/// approve, though the server's kubeconfig could have approved.
#[tokio::test]
async fn the_in_cluster_server_acts_with_each_requests_own_token_only() -> Result<()> {
    let env = Env::new("ui-token").await?;
    env.apply_example_ready("approval/release-gate.yaml")
        .await?;
    env.apply_yaml(USERS).await?;
    env.apply_yaml(READER).await?;
    let ns = env.ns.name.clone();
    let reader = format!("system:serviceaccount:{ns}:ui-reader");
    maestro_e2e::wait_until_allowed(
        &env.client,
        &reader,
        "watch",
        "maestro.dev",
        "compositionruns",
        &ns,
    )
    .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request("ui-reader", &PostParams::default(), &request)
        .await?
        .status
        .context("the TokenRequest has no status")?
        .token;
    let run = env.start_run("release-gate", &[]).await?;
    env.wait_phase(&run, &[RunPhase::WaitingApproval], TIMEOUT)
        .await?;

    let mut server = Command::new(workspace_bin("maestro-ui")?)
        .args(["--listen", "127.0.0.1:0", "--namespace", &ns])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting maestro-ui")?;
    let mut lines = BufReader::new(server.stdout.take().context("no stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("maestro-ui printed no URL")??
        .context("maestro-ui exited before printing its URL")?;
    let url = first
        .strip_prefix("Maestro UI: ")
        .with_context(|| format!("unexpected first line {first:?}"))?
        .trim_end_matches('/')
        .to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let shot = screenshot("in-cluster-token")?;
    let seen = browser_with_token(
        "approve.mjs",
        &[
            ("url", &url),
            ("namespace", &ns),
            ("run", &run),
            ("step", "sign-off"),
            ("comment", "as the reader"),
            ("expect", "refused"),
            ("screenshot", &shot),
        ],
        Some(&token),
    )
    .await?;
    assert_eq!(seen["withoutToken"], 401, "{seen}");
    assert_eq!(seen["user"], reader.as_str(), "{seen}");
    let error = seen["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!(
            r#"User "{reader}" cannot create resource "approvals""#
        )),
        "{seen}"
    );
    let approvals: Api<Approval> = Api::namespaced(env.client.clone(), &ns);
    assert!(approvals.list(&Default::default()).await?.items.is_empty());
    Ok(())
}

/// A composition with a required param and one with a default and a choice of values,
/// for the Run form.
const GREET: &str = r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: ui-greet}
spec:
  params:
    - {name: who, description: "whom to greet"}
    - {name: mood, default: calm, enum: [calm, loud]}
  steps:
    - name: greet
      task: shell
      with:
        script: echo "hello $WHO"
        env: {WHO: "{{ params.who }}"}
"#;

/// A ServiceAccount that may see the test namespace's runs and start them: the user who
/// signs in on the login page.
const RUNNER: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: ui-runner}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: ui-runner}
rules:
- apiGroups: [maestro.dev]
  resources: [compositions, compositionruns, agents]
  verbs: [get, list, watch]
- apiGroups: [maestro.dev]
  resources: [compositionruns]
  verbs: [create]
- apiGroups: [""]
  resources: [pods, pods/log]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: ui-runner}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: ui-runner}
subjects:
- {kind: ServiceAccount, name: ui-runner}
"#;

/// A token of the test namespace's ServiceAccount `name`, for ten minutes.
async fn token_of(env: &Env, name: &str) -> Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns.name);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    Ok(accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await?
        .status
        .context("the TokenRequest has no status")?
        .token)
}

/// The chart's UI (ui.enabled, image localhost/maestro/ui:dev) installed into the test
/// namespace with `sets`, alone: no operator replica (the test's own operator runs the
/// runs) and nothing cluster-wide. Returns its URL once its Deployment is Ready: the
/// Service's ClusterIP (this machine is the node and runs kube-proxy), else the pod's IP.
/// The namespace's deletion removes it.
async fn install_chart_ui(env: &Env, release: &str, sets: &str) -> Result<String> {
    let ns = &env.ns.name;
    let chart = repo_root().join("charts/maestro");
    let values = format!(
        "ui.enabled=true,ui.namespace={ns},replicas=0,crds.install=false,rbac.create=false,\
         rbac.userRoles=false,approvalPolicy.install=false,dashboards.enabled=false,\
         webhook.enabled=false,library.install=false{sets}"
    );
    let out = Command::new("helm")
        .arg("install")
        .arg(release)
        .arg(&chart)
        .args([
            "--namespace",
            ns,
            "--set",
            &values,
            "--wait",
            "--timeout",
            "120s",
        ])
        .output()
        .await
        .context("running helm (source /var/lib/maestro-cluster/env for PATH)")?;
    if !out.status.success() {
        let pods = Command::new("kubectl")
            .args(["get", "pods,events", "-n", ns, "-o", "wide"])
            .output()
            .await
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        bail!(
            "helm install {release} failed: {}{}\n{pods}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let name = format!("{release}-maestro-ui");
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), ns);
    let ready = deployments
        .get(&name)
        .await?
        .status
        .and_then(|status| status.ready_replicas);
    assert_eq!(ready, Some(1), "the UI Deployment is not Ready");
    let services: Api<Service> = Api::namespaced(env.client.clone(), ns);
    let service = services.get(&name).await?;
    let spec = service.spec.context("the UI Service has no spec")?;
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let cluster_ip = spec.cluster_ip.context("the UI Service has no ClusterIP")?;
    let port = spec
        .ports
        .and_then(|ports| ports.first().map(|port| port.port))
        .context("the UI Service has no port")?;
    let reachable = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect((cluster_ip.as_str(), u16::try_from(port)?)),
    )
    .await
    .is_ok_and(|connected| connected.is_ok());
    if reachable {
        return Ok(format!("http://{cluster_ip}:{port}"));
    }
    eprintln!("[ui] the Service's ClusterIP {cluster_ip} is not reachable here: the pod's IP");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let selector = format!("app.kubernetes.io/instance={release},app.kubernetes.io/component=ui");
    let pod_ip = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .find_map(|pod| pod.status?.pod_ip)
        .context("the UI pod has no IP")?;
    Ok(format!("http://{pod_ip}:8080"))
}

/// The chart's UI with no auth proxy in front: the page asks for a token, a
/// ServiceAccount's token signs in (kept in an HttpOnly, SameSite=Strict cookie, nowhere
/// a script reads), the runs list shows the namespace's run, the Run form starts a run
/// with the typed param as that user and opens it, the Grafana link points at the
/// chart's dashboard, and signing out clears the cookie and shows the login page again.
#[tokio::test]
async fn the_charts_ui_signs_in_with_a_token_runs_a_composition_from_its_form_and_signs_out()
-> Result<()> {
    let env = Env::new("ui-chart").await?;
    env.apply_yaml(GREET).await?;
    env.wait_compositions_ready(&["ui-greet".to_string()])
        .await?;
    env.apply_yaml(RUNNER).await?;
    let ns = env.ns.name.clone();
    let runner = format!("system:serviceaccount:{ns}:ui-runner");
    maestro_e2e::wait_until_allowed(
        &env.client,
        &runner,
        "create",
        "maestro.dev",
        "compositionruns",
        &ns,
    )
    .await?;
    let token = token_of(&env, "ui-runner").await?;
    let first = env.start_run("ui-greet", &[("who", "first")]).await?;
    let url = install_chart_ui(&env, "ui-login", ",ui.grafanaUrl=http://grafana.example/").await?;

    let shot = screenshot("chart-login")?;
    let seen = browser_with_token(
        "login.mjs",
        &[
            ("url", &url),
            ("run", &first),
            ("composition", "ui-greet"),
            ("param", "who"),
            ("value", "from the form"),
            ("screenshot", &shot),
        ],
        Some(&token),
    )
    .await?;
    assert_eq!(seen["apiWithoutToken"], 401, "{seen}");
    assert_eq!(seen["user"], runner.as_str(), "{seen}");
    assert_eq!(
        seen["cookie"],
        serde_json::json!({"name": "maestro-token", "httpOnly": true, "sameSite": "Strict"}),
        "{seen}"
    );
    assert_eq!(
        seen["stored"],
        serde_json::json!({"script": false, "local": false}),
        "{seen}"
    );
    assert_eq!(
        seen["grafana"], "http://grafana.example/d/maestro-overview",
        "{seen}"
    );
    assert_eq!(
        seen["fields"],
        serde_json::json!(["who*", "mood"]),
        "{seen}"
    );
    assert_eq!(seen["afterLogout"], false, "{seen}");

    let started = seen["started"].as_str().context("no run opened")?;
    assert_ne!(started, first);
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &ns);
    let started = runs.get(started).await?;
    assert_eq!(started.spec.composition, "ui-greet");
    assert_eq!(
        started.spec.params.get("who").map(String::as_str),
        Some("from the form")
    );
    assert_eq!(started.spec.started_by.as_deref(), Some(runner.as_str()));
    let shown = seen["shownParams"].as_str().unwrap_or_default();
    assert!(shown.contains("who=from the form"), "{seen}");
    Ok(())
}

/// The chart's read-only mode: a visitor who has not signed in sees the namespace's
/// runs through the viewer ServiceAccount, with no action buttons and no Grafana link
/// (none is configured), and an approval sent anyway is refused with a clear message;
/// no Approval is created.
#[tokio::test]
async fn the_charts_read_only_mode_shows_runs_without_signing_in_and_refuses_to_approve()
-> Result<()> {
    let env = Env::new("ui-readonly").await?;
    env.apply_example_ready("approval/release-gate.yaml")
        .await?;
    let ns = env.ns.name.clone();
    let run = env.start_run("release-gate", &[]).await?;
    env.wait_phase(&run, &[RunPhase::WaitingApproval], TIMEOUT)
        .await?;
    let url = install_chart_ui(&env, "ui-public", &format!(",ui.readOnly.namespace={ns}")).await?;
    let viewer = format!("system:serviceaccount:{ns}:ui-public-maestro-ui");
    maestro_e2e::wait_until_allowed(
        &env.client,
        &viewer,
        "watch",
        "maestro.dev",
        "compositionruns",
        &ns,
    )
    .await?;

    let shot = screenshot("chart-read-only")?;
    let seen = browser(
        "read-only.mjs",
        &[
            ("url", &url),
            ("namespace", &ns),
            ("run", &run),
            ("step", "sign-off"),
            ("screenshot", &shot),
        ],
    )
    .await?;
    assert_eq!(seen["user"], viewer.as_str(), "{seen}");
    assert_eq!(seen["approveButtons"], 0, "{seen}");
    assert_eq!(seen["runPageButtons"], 0, "{seen}");
    assert_eq!(seen["grafanaLinks"], 0, "{seen}");
    assert_eq!(seen["refusal"]["status"], 403, "{seen}");
    let error = seen["refusal"]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(&format!(
            "read-only: this UI shows namespace {ns} to visitors"
        )),
        "{seen}"
    );
    let approvals: Api<Approval> = Api::namespaced(env.client.clone(), &ns);
    assert!(approvals.list(&Default::default()).await?.items.is_empty());
    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &ns);
    let still = runs.get(&run).await?.status.map(|status| status.phase);
    assert_eq!(still, Some(RunPhase::WaitingApproval));
    Ok(())
}

/// How many runs and steps the benchmark draws.
const BENCH_RUNS: usize = 5000;
const BENCH_STEPS: usize = 64;

/// A benchmark, not a test (it prints figures; `make test` skips it): the runs list's
/// first render with 5,000 runs and a run page with a 64-step graph, in the browser,
/// each from navigation to drawn. No operator runs in its namespace, so the runs stay
/// as created; one run gets a 64-step status written directly.
#[tokio::test]
#[ignore = "a benchmark: cargo test -p maestro-e2e --test ui -- --ignored --nocapture"]
async fn benchmark_the_runs_list_with_5000_runs_and_a_64_step_run() -> Result<()> {
    use futures::{StreamExt as _, TryStreamExt as _};
    use kube::api::{Patch, PatchParams};

    let client = maestro_e2e::client().await?;
    maestro_e2e::maestro::install_crds(&client).await?;
    let ns = maestro_e2e::TestNamespace::create(&client, "ui-bench").await?;
    // Eight layers of eight steps, each after two steps of the layer before.
    let steps: Vec<Value> = (0..BENCH_STEPS)
        .map(|i| {
            let mut step = serde_json::json!({
                "name": format!("s{i:02}"),
                "task": "shell",
                "with": {"script": "true"},
            });
            if i >= 8 {
                step["dependsOn"] =
                    serde_json::json!([format!("s{:02}", i - 8), format!("s{:02}", (i - 8) ^ 1)]);
            } else {
                step["dependsOn"] = serde_json::json!([]);
            }
            step
        })
        .collect();
    let composition = serde_json::json!({
        "apiVersion": "maestro.dev/v1alpha1",
        "kind": "Composition",
        "metadata": {"name": "wide"},
        "spec": {"steps": steps},
    });
    maestro_e2e::maestro::apply_yaml(&client, &ns.name, &serde_yaml::to_string(&composition)?)
        .await?;
    let runs: Api<CompositionRun> = Api::namespaced(client.clone(), &ns.name);
    futures::stream::iter(0..BENCH_RUNS)
        .map(|i| {
            let runs = runs.clone();
            async move {
                let run: CompositionRun = serde_json::from_value(serde_json::json!({
                    "apiVersion": "maestro.dev/v1alpha1",
                    "kind": "CompositionRun",
                    "metadata": {"name": format!("wide-{i:04}")},
                    "spec": {"composition": "wide"},
                }))?;
                runs.create(&PostParams::default(), &run).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let phases = ["Succeeded", "Running", "Pending", "Failed"];
    let step_statuses: Vec<Value> = (0..BENCH_STEPS)
        .map(|i| {
            serde_json::json!({
                "name": format!("s{i:02}"),
                "phase": phases[(i / 16) % phases.len()],
                "attempts": 1,
                "startTime": "2026-01-01T10:00:00Z",
            })
        })
        .collect();
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "compositionSpec": composition["spec"],
        "steps": step_statuses,
    }});
    runs.patch_status("wide-0000", &PatchParams::default(), &Patch::Merge(&status))
        .await?;

    let server = UiServer::start_in(&ns.name, None).await?;
    let shot = screenshot("bench")?;
    let runs_text = BENCH_RUNS.to_string();
    let steps_text = BENCH_STEPS.to_string();
    let seen = browser(
        "ui-bench.mjs",
        &[
            ("url", &server.url),
            ("namespace", &ns.name),
            ("run", "wide-0000"),
            ("runs", &runs_text),
            ("steps", &steps_text),
            ("screenshot", &shot),
        ],
    )
    .await?;
    println!("ui benchmark ({BENCH_RUNS} runs, a {BENCH_STEPS}-step run), three tries each:");
    println!(
        "  runs list, navigation to first rows drawn (ms): {}",
        seen["listMs"]
    );
    println!("  rows drawn at once: {}", seen["rowsDrawn"]);
    println!(
        "  run page, navigation to the {BENCH_STEPS}-node graph drawn (ms): {}",
        seen["graphMs"]
    );
    assert_eq!(seen["rowsDrawn"], 200, "{seen}");
    Ok(())
}

/// How many lines the log benchmark's step prints.
const BENCH_LINES: usize = 20_000;

/// A benchmark, not a test (it prints figures; `make test` skips it): a run's aggregated
/// log of 20,000 lines streamed into the page, from navigation to every line drawn.
#[tokio::test]
#[ignore = "a benchmark: cargo test -p maestro-e2e --test ui -- --ignored --nocapture"]
async fn benchmark_log_lines_streamed_to_the_page() -> Result<()> {
    let env = Env::new("ui-log-bench").await?;
    let composition = format!(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {{name: chatty}}
spec:
  steps:
    - name: chatter
      task: shell
      with:
        script: seq -f "line %g of a chatty build step" 1 {BENCH_LINES}
"#
    );
    let names = env.apply_yaml(&composition).await?;
    env.wait_compositions_ready(&names).await?;
    let run = env.start_run("chatty", &[]).await?;
    let ended = env.wait_finished(&run, TIMEOUT).await?;
    assert_eq!(ended.status.map(|s| s.phase), Some(RunPhase::Succeeded));
    let server = UiServer::start(&env, None).await?;
    let shot = screenshot("log-bench")?;
    let lines = BENCH_LINES.to_string();
    let seen = browser(
        "ui-log-bench.mjs",
        &[
            ("url", &server.url),
            ("namespace", &env.ns.name),
            ("run", &run),
            ("lines", &lines),
            ("screenshot", &shot),
        ],
    )
    .await?;
    println!("ui log benchmark ({BENCH_LINES} lines of one step), three tries:");
    println!("  navigation to every line drawn (ms): {}", seen["logMs"]);
    println!("  lines per second: {}", seen["linesPerSecond"]);
    Ok(())
}
