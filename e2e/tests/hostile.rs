//! Hostile input end to end: every file of e2e/corpus/hostile/ is one attack, made on the
//! real cluster by a user who holds only the role it names, with the outcome it states
//! (the corpus's README lists the roles and outcomes). Beside the corpus, attacks that
//! need a namespace of their own: a stranger's claim where an Agent slot's cache goes, and
//! a hostPath cache without the administrator's opt-in.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use futures::future::join_all;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Api, Client};
use maestro_api::{Agent, Composition, CompositionRun, RunPhase};
use maestro_e2e::{
    maestro::{Env, create_yaml, delete_yaml, repo_root},
    wait_for,
};

/// The users the corpus's `# as:` lines name, by role.
const ROLES: [(&str, &str); 4] = [
    ("runner", "mallory-runner"),
    ("approver", "mallory-approver"),
    ("viewer", "mallory-viewer"),
    ("author", "mallory-author"),
];

/// How long a run of an attack may take to end.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the operator may take to judge a composition.
const STATUS_TIMEOUT: Duration = Duration::from_secs(45);

/// The composition most runner attacks start: it writes `hello <who>` to an output, with
/// `who` passed through the environment.
const ECHO: &str = r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: hostile-echo}
spec:
  params: [{name: who, default: world}]
  steps:
    - name: echo
      task: shell
      with:
        script: printf 'hello %s' "$WHO" > "$MAESTRO_OUTPUTS/said"
        env: {WHO: "{{ params.who }}"}
"#;

/// The author's rights: Maestro's authoring kinds, pods and claims; no Secrets.
const AUTHOR_ROLE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: hostile-author}
rules:
  - apiGroups: [maestro.dev]
    resources: [compositions, tasks, agents]
    verbs: [get, list, watch, create, update, patch, delete]
  - apiGroups: [""]
    resources: [pods, persistentvolumeclaims]
    verbs: [get, list, watch, create, delete]
"#;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Refused(Vec<String>),
    Invalid(String),
    Ready,
    RunEnds {
        phase: RunPhase,
        text: String,
    },
    Output {
        step: String,
        name: String,
        value: String,
    },
}

#[derive(Debug, Clone)]
struct Case {
    path: PathBuf,
    /// The user who makes the attack.
    user: &'static str,
    expect: Expect,
    /// Applied by the admin first.
    setup: String,
    /// Created as `user`.
    attack: String,
    /// The attack object's kind and name.
    kind: String,
    name: String,
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Case {
    fn parse(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file = file_name(path);
        let mut user = None;
        let mut refused = Vec::new();
        let mut expect = None;
        for line in text.lines() {
            if let Some(role) = line.strip_prefix("# as:") {
                let role = role.trim();
                user = Some(
                    ROLES
                        .iter()
                        .find(|(r, _)| *r == role)
                        .map(|(_, u)| *u)
                        .with_context(|| format!("{file}: unknown role {role:?}"))?,
                );
            }
            let Some(rest) = line.strip_prefix("# expect:") else {
                continue;
            };
            let rest = rest.trim();
            let (kind, detail) = rest.split_once(':').unwrap_or((rest, ""));
            let detail = detail.trim().to_string();
            match kind.trim() {
                "refused" => refused.push(detail),
                "invalid" => expect = Some(Expect::Invalid(detail)),
                "ready" => expect = Some(Expect::Ready),
                "run-ends" => {
                    let (phase, text) = detail
                        .split_once(':')
                        .with_context(|| format!("{file}: run-ends needs PHASE: TEXT"))?;
                    let phase: RunPhase =
                        serde_json::from_value(serde_json::json!(phase.trim()))
                            .with_context(|| format!("{file}: unknown phase {phase:?}"))?;
                    expect = Some(Expect::RunEnds {
                        phase,
                        text: text.trim().to_string(),
                    });
                }
                "output" => {
                    let (key, value) = detail
                        .split_once('=')
                        .with_context(|| format!("{file}: output needs STEP.NAME=VALUE"))?;
                    let (step, name) = key
                        .split_once('.')
                        .with_context(|| format!("{file}: output needs STEP.NAME=VALUE"))?;
                    expect = Some(Expect::Output {
                        step: step.to_string(),
                        name: name.to_string(),
                        value: value.replace("\\n", "\n"),
                    });
                }
                other => bail!("{file}: unknown outcome {other:?}"),
            }
        }
        if !refused.is_empty() {
            if expect.is_some() {
                bail!("{file}: `# expect:` lines disagree");
            }
            expect = Some(Expect::Refused(refused));
        }
        let expect = expect.with_context(|| format!("{file} has no `# expect:` line"))?;
        let user = user.with_context(|| format!("{file} has no `# as:` line"))?;
        if !text.contains("# attack:") {
            bail!("{file} does not say what the attack is (`# attack:`)");
        }
        let docs: Vec<&str> = text
            .split("\n---")
            .filter(|d| {
                d.lines()
                    .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
            })
            .collect();
        let (attack, setup) = docs
            .split_last()
            .with_context(|| format!("{file} has no document"))?;
        let doc: serde_yaml::Value = serde_yaml::from_str(attack)?;
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .with_context(|| format!("{file}: the attack has no metadata.name"))?
            .to_string();
        let wants_run = matches!(expect, Expect::RunEnds { .. } | Expect::Output { .. });
        if wants_run && kind != "CompositionRun" {
            bail!("{file}: a run outcome needs a CompositionRun as the attack");
        }
        if matches!(expect, Expect::Invalid(_) | Expect::Ready) && kind != "Composition" {
            bail!("{file}: a composition outcome needs a Composition as the attack");
        }
        Ok(Self {
            path: path.to_path_buf(),
            user,
            expect,
            setup: setup.join("\n---\n"),
            attack: attack.to_string(),
            kind,
            name,
        })
    }
}

fn corpus() -> Result<Vec<Case>> {
    let dir = repo_root().join("e2e/corpus/hostile");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files.iter().map(|p| Case::parse(p)).collect()
}

/// The chart's user ClusterRoles, rendered by helm under a release name of their own (so
/// they never collide with a release the helm tests install).
async fn install_chart_roles(env: &Env) -> Result<()> {
    let out = Command::new("helm")
        .args(["template", "hostile", "charts/maestro", "--show-only"])
        .arg("templates/rbac-users.yaml")
        .current_dir(repo_root())
        .output()
        .context("running helm template (is the cluster's tools folder on PATH?)")?;
    if !out.status.success() {
        bail!("helm template: {}", String::from_utf8_lossy(&out.stderr));
    }
    env.apply_yaml(&String::from_utf8_lossy(&out.stdout))
        .await?;
    let mut bindings = String::new();
    for (role, user) in ROLES {
        let (kind, name) = match role {
            "author" => ("Role", "hostile-author".to_string()),
            other => ("ClusterRole", format!("hostile-maestro-{other}")),
        };
        bindings.push_str(&format!(
            "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
             metadata: {{name: {user}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: {kind}, name: {name}}}\n\
             subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]\n"
        ));
    }
    env.apply_yaml(AUTHOR_ROLE).await?;
    env.apply_yaml(&bindings).await?;
    // RBAC reaches the authorizer a moment after the write: wait for each user's rights.
    for (user, verb, group, resource) in [
        ("mallory-runner", "create", "maestro.dev", "compositionruns"),
        ("mallory-approver", "create", "maestro.dev", "approvals"),
        ("mallory-viewer", "list", "maestro.dev", "compositionruns"),
        ("mallory-author", "create", "maestro.dev", "compositions"),
        ("mallory-author", "create", "", "pods"),
    ] {
        maestro_e2e::wait_until_allowed(&env.client, user, verb, group, resource, &env.ns.name)
            .await?;
    }
    Ok(())
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Everything a run says about itself: its conditions and its steps' messages.
fn run_messages(run: &CompositionRun) -> String {
    let status = run.status.clone().unwrap_or_default();
    let mut said: Vec<String> = status
        .conditions
        .iter()
        .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
        .collect();
    said.extend(
        status
            .steps
            .iter()
            .filter_map(|s| Some(format!("step {}: {}", s.name, s.message.clone()?))),
    );
    said.join(" | ")
}

/// Makes one attack and checks its outcome. Ok holds what was seen.
async fn check(env: &Env, clients: &[(&str, Client)], case: &Case) -> Result<String, String> {
    if !case.setup.trim().is_empty() {
        let names = env
            .apply_yaml(&case.setup)
            .await
            .map_err(|e| format!("set-up failed: {e:#}"))?;
        let compositions: Api<Composition> = Api::namespaced(env.client.clone(), &env.ns.name);
        let mut ready = Vec::new();
        for name in names {
            if compositions.get_opt(&name).await.ok().flatten().is_some() {
                ready.push(name);
            }
        }
        env.wait_compositions_ready(&ready)
            .await
            .map_err(|e| format!("set-up composition not Ready: {e:#}"))?;
    }
    let client = clients
        .iter()
        .find(|(u, _)| *u == case.user)
        .map(|(_, c)| c.clone())
        .ok_or_else(|| format!("no client for {}", case.user))?;
    let made = create_yaml(&client, &env.ns.name, &case.attack).await;
    match (&case.expect, made) {
        (Expect::Refused(texts), Err(e)) => {
            let said = match e.downcast_ref::<kube::Error>() {
                Some(kube::Error::Api(status)) => status.message.clone(),
                _ => return Err(format!("failed, but not as an API refusal: {e:#}")),
            };
            let missing: Vec<&String> = texts.iter().filter(|t| !said.contains(*t)).collect();
            if missing.is_empty() {
                Ok(format!("refused: {said}"))
            } else {
                Err(format!(
                    "refused, but the message lacks {missing:?}: {said}"
                ))
            }
        }
        (Expect::Refused(texts), Ok(_)) => {
            // Gone at once, so that what slipped through (an Agent, say, which would
            // take every run of the namespace) does not stall the other cases.
            let _ = delete_yaml(&env.client, &env.ns.name, &case.attack).await;
            Err(format!(
                "{} {} was admitted; expected a refusal saying {texts:?}",
                case.kind, case.name
            ))
        }
        (_, Err(e)) => Err(format!("the attack was refused, unexpectedly: {e:#}")),
        (Expect::Invalid(_) | Expect::Ready, Ok(_)) => {
            let want_ready = case.expect == Expect::Ready;
            let api: Api<Composition> = Api::namespaced(env.client.clone(), &env.ns.name);
            wait_for(
                &format!("composition {}", case.name),
                STATUS_TIMEOUT,
                || async {
                    let c = api.get(&case.name).await.map_err(|e| e.to_string())?;
                    let conditions = c.status.map(|s| s.conditions).unwrap_or_default();
                    let seen = condition(&conditions, "Ready").cloned();
                    match (&seen, want_ready, &case.expect) {
                        (Some(r), true, _) if r.status == "True" => {
                            Ok(format!("ready: {}", r.message))
                        }
                        (Some(r), false, Expect::Invalid(text))
                            if r.status == "False"
                                && r.reason == "Invalid"
                                && r.message.contains(text) =>
                        {
                            Ok(format!("invalid: {}", r.message))
                        }
                        _ => Err(format!("Ready condition {seen:?}")),
                    }
                },
            )
            .await
            .map_err(|e| e.to_string())
        }
        (Expect::RunEnds { phase, text }, Ok(_)) => {
            let run = env
                .wait_finished(&case.name, RUN_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            let got = run.status.as_ref().map(|s| s.phase).unwrap_or_default();
            let said = run_messages(&run);
            if got != *phase {
                return Err(format!("ended {got:?}, want {phase:?}: {said}"));
            }
            if !said.contains(text.as_str()) {
                return Err(format!("ended {got:?}, but nothing says {text:?}: {said}"));
            }
            Ok(format!("{got:?}: {said}"))
        }
        (Expect::Output { step, name, value }, Ok(_)) => {
            let run = env
                .wait_finished(&case.name, RUN_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            let status = run.status.clone().unwrap_or_default();
            if status.phase != RunPhase::Succeeded {
                return Err(format!("ended {:?}: {}", status.phase, run_messages(&run)));
            }
            let got = status
                .steps
                .iter()
                .find(|s| &s.name == step)
                .and_then(|s| s.outputs.get(name))
                .cloned();
            if got.as_deref() == Some(value.as_str()) {
                Ok(format!("succeeded; {step}.{name} = {value:?}"))
            } else {
                Err(format!("{step}.{name} is {got:?}, want {value:?}"))
            }
        }
    }
}

#[tokio::test]
async fn every_hostile_input_fails_with_a_clear_message_and_harms_nothing() -> Result<()> {
    let cases = corpus()?;
    assert!(
        cases.len() >= 30,
        "the hostile corpus has {} files; the suite promises at least 30",
        cases.len()
    );
    let env = Env::new("hostile").await?;
    install_chart_roles(&env).await?;
    env.apply_yaml(ECHO).await?;
    env.wait_compositions_ready(&["hostile-echo".to_string()])
        .await?;
    let mut clients = Vec::new();
    for (_, user) in ROLES {
        clients.push((user, maestro_e2e::client_as(user).await?));
    }
    let results = join_all(cases.iter().map(|case| check(&env, &clients, case))).await;
    println!("hostile corpus ({} cases):", cases.len());
    let mut failures = Vec::new();
    for (case, result) in cases.iter().zip(results) {
        let file = file_name(&case.path);
        match result {
            Ok(seen) => println!("  ok   {file} ({}): {seen}", case.user),
            Err(why) => {
                println!("  FAIL {file} ({}): {why}", case.user);
                failures.push(format!("{file}: {why}"));
            }
        }
    }
    // Nobody else's run was harmed: the shared composition still runs, start to end.
    let after = env.start_run("hostile-echo", &[("who", "after")]).await?;
    let done = env.wait_finished(&after, RUN_TIMEOUT).await?;
    let phase = done.status.as_ref().map(|s| s.phase).unwrap_or_default();
    assert_eq!(
        phase,
        RunPhase::Succeeded,
        "a plain run after the attacks: {}",
        run_messages(&done)
    );
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases failed:\n{}\noperator log:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        env.operator.log_tail()
    );
    Ok(())
}

/// The Queued condition's message of a run, once it has one containing `text`.
async fn queued_saying(env: &Env, run: &str, text: &str) -> Result<String> {
    let api: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    wait_for(
        &format!("run {run} queued saying {text:?}"),
        STATUS_TIMEOUT,
        || async {
            let r = api.get(run).await.map_err(|e| e.to_string())?;
            let status = r.status.clone().unwrap_or_default();
            let said = run_messages(&r);
            if status.phase == RunPhase::Queued && said.contains(text) {
                Ok(said)
            } else {
                Err(format!("{:?}: {said}", status.phase))
            }
        },
    )
    .await
}

/// The Agent's Ready condition, once it is False with `reason`.
async fn not_ready(env: &Env, agent: &str, reason: &str) -> Result<Condition> {
    let api: Api<Agent> = Api::namespaced(env.client.clone(), &env.ns.name);
    wait_for(
        &format!("Agent {agent} NotReady ({reason})"),
        STATUS_TIMEOUT,
        || async {
            let a = api.get(agent).await.map_err(|e| e.to_string())?;
            let conditions = a.status.map(|s| s.conditions).unwrap_or_default();
            match condition(&conditions, "Ready") {
                Some(c) if c.status == "False" && c.reason == reason => Ok(c.clone()),
                other => Err(format!("Ready condition {other:?}")),
            }
        },
    )
    .await
}

/// An author pre-creates the claim where an Agent slot keeps its cache (no Maestro label,
/// which the policy would refuse): the Agent never takes the stranger's volume. It turns
/// NotReady naming the claim, and a run waits, saying why, instead of mounting it.
#[tokio::test]
async fn a_strangers_claim_in_an_agent_slot_is_never_mounted() -> Result<()> {
    let env = Env::new("hostile-claim").await?;
    env.apply_yaml(ECHO).await?;
    env.wait_compositions_ready(&["hostile-echo".to_string()])
        .await?;
    env.apply_yaml(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: pool-cache-0}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Mi}}
---
apiVersion: maestro.dev/v1alpha1
kind: Agent
metadata: {name: pool}
spec:
  capacity: 1
  slots: 1
  cache: {persistentVolumeClaim: {size: 1Mi}}
"#,
    )
    .await?;
    let ready = not_ready(&env, "pool", "CacheClaimFailed").await?;
    assert!(
        ready
            .message
            .contains("claim pool-cache-0 exists but is not owned by this Agent"),
        "{ready:?}"
    );
    let run = env.start_run("hostile-echo", &[]).await?;
    let said = queued_saying(&env, &run, "not Ready").await?;
    assert!(said.contains("pool (CacheClaimFailed"), "{said}");
    Ok(())
}

/// An Agent asking for a hostPath cache from an operator that has not opted in: NotReady,
/// saying how an administrator turns it on, and its runs wait instead of mounting the
/// node's disk.
#[tokio::test]
async fn a_host_path_cache_needs_the_administrators_opt_in() -> Result<()> {
    let env = Env::with_security("hostile-hostpath", "privileged").await?;
    env.apply_yaml(ECHO).await?;
    env.wait_compositions_ready(&["hostile-echo".to_string()])
        .await?;
    env.apply_yaml(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: Agent
metadata: {name: node-disk}
spec:
  capacity: 1
  slots: 1
  cache: {hostPath: {path: /var/lib/maestro-hostile}}
"#,
    )
    .await?;
    let ready = not_ready(&env, "node-disk", "HostPathNotAllowed").await?;
    assert!(
        ready.message.contains("--allow-host-path-caches"),
        "{ready:?}"
    );
    let run = env.start_run("hostile-echo", &[]).await?;
    let said = queued_saying(&env, &run, "HostPathNotAllowed").await?;
    assert!(said.contains("node-disk"), "{said}");
    let pods = env.step_pods(&run).await?;
    assert!(pods.is_empty(), "a step pod was made: {pods:?}");
    Ok(())
}

/// The memory limit the chart gives the operator (values.yaml resources.limits.memory).
fn chart_memory_limit() -> Result<u64> {
    let values: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(
        repo_root().join("charts/maestro/values.yaml"),
    )?)?;
    let limit = values["resources"]["limits"]["memory"]
        .as_str()
        .context("values.yaml has no resources.limits.memory")?;
    let mib: u64 = limit
        .strip_suffix("Mi")
        .context("the memory limit is not in Mi")?
        .parse()?;
    Ok(mib * 1024 * 1024)
}

/// 300 slow-loris connections (a request head sent a byte at a time, never finished) and
/// 5,000 idle ones, against the operator's webhook and metrics ports at once: the operator
/// keeps reconciling (a run started meanwhile succeeds), still answers its health check,
/// and stays within the chart's memory limit.
#[tokio::test]
async fn slow_and_idle_connections_do_not_stop_the_operator() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let env = Env::new("hostile-flood").await?;
    env.apply_yaml(ECHO).await?;
    env.wait_compositions_ready(&["hostile-echo".to_string()])
        .await?;
    let log = env.operator.log.clone();
    let webhook = wait_for("the webhook address", STATUS_TIMEOUT, || async {
        maestro_e2e::maestro::webhook_addr_from_log(&log)
    })
    .await?;
    let metrics = wait_for("the metrics address", STATUS_TIMEOUT, || async {
        maestro_e2e::maestro::metrics_addr_from_log(&log)
    })
    .await?;
    let targets = [webhook.clone(), metrics.clone()];
    // Slow loris: each sends a header byte every 500 ms until cut off (or aborted).
    let mut loris = Vec::new();
    for i in 0..300 {
        let addr = targets[i % 2].clone();
        loris.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(&addr).await else {
                return;
            };
            let head = b"POST /hooks/github HTTP/1.1\r\nHost: flood\r\nX-Padding: ";
            for byte in head.iter().chain(std::iter::repeat(&b'a')) {
                if s.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    // Idle: connect and say nothing.
    let mut idle = Vec::new();
    for i in 0..5000 {
        let addr = targets[i % 2].clone();
        idle.push(tokio::spawn(
            async move { TcpStream::connect(&addr).await.ok() },
        ));
    }
    let idle: Vec<Option<TcpStream>> = join_all(idle)
        .await
        .into_iter()
        .map(|r| r.ok().flatten())
        .collect();
    let connected = idle.iter().filter(|s| s.is_some()).count();

    // Meanwhile: a run goes start to end, and the health check answers.
    let run = env.start_run("hostile-echo", &[("who", "flood")]).await?;
    let done = env.wait_finished(&run, RUN_TIMEOUT).await?;
    let phase = done.status.as_ref().map(|s| s.phase).unwrap_or_default();
    assert_eq!(
        phase,
        RunPhase::Succeeded,
        "a run during the flood: {}",
        run_messages(&done)
    );
    let health = wait_for("/healthz during the flood", STATUS_TIMEOUT, || {
        let metrics = metrics.clone();
        async move {
            let mut s = TcpStream::connect(&metrics)
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)
                .await
                .map_err(|e| e.to_string())?;
            if answer.starts_with("HTTP/1.1 200") {
                Ok(answer)
            } else {
                Err(answer)
            }
        }
    })
    .await?;
    assert!(health.contains("ok"), "{health}");
    let resident = env.operator.resident_bytes()?;
    let limit = chart_memory_limit()?;
    println!(
        "flood: {connected} of 5000 idle connections opened, 300 slow; operator resident {} MiB (chart limit {} MiB)",
        resident / (1024 * 1024),
        limit / (1024 * 1024)
    );
    assert!(
        resident < limit,
        "the operator holds {resident} bytes, over the chart's limit of {limit}"
    );
    drop(idle);
    for l in loris {
        l.abort();
    }
    Ok(())
}
