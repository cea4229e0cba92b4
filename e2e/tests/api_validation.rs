//! API validation end to end: every composition of e2e/corpus/invalid/ is either refused
//! by the API server at admission (CRD schema or CEL rule) or accepted and then marked
//! Ready=False, reason Invalid, by the operator, each with a message naming the field.
//! Each corpus file says which, and with which message, in `# expect:` lines:
//!
//! ```text
//! # expect: refused: <text the API server's error must contain>
//! # expect: invalid: <text the Ready condition's message must contain>
//! # expect: ready
//! ```
//!
//! Also: a run of an invalid composition ends Invalid without a pod, a run's spec cannot
//! change except `cancel`, and `kubectl explain` prints the doc comments of the API types.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use maestro_api::{Composition, CompositionRun, RunPhase};
use maestro_e2e::{
    maestro::{Env, apply_file, install_crds, repo_root},
    wait_for,
};
use serde_json::json;

/// How long the operator may take to write a composition's Ready condition.
const STATUS_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a run may take to reach a phase.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// The message of the CEL transition rule on a CompositionRun's spec (operator/api/src/run.rs).
const RUN_SPEC_FROZEN: &str =
    "a run's composition, params and priority cannot change once created; start a new run instead";
/// The message of the rule that keeps a cancelled run cancelled.
const RUN_STAYS_CANCELLED: &str = "a cancelled run cannot be resumed";

/// The outcome a corpus file expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The API server refuses the object at admission.
    Refused,
    /// The API server accepts it and the operator marks it Ready=False, reason Invalid.
    Invalid,
    /// The API server accepts it and the operator marks it Ready=True.
    Ready,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Refused => "refused",
            Self::Invalid => "invalid",
            Self::Ready => "ready",
        })
    }
}

/// One file of the corpus and what it expects.
#[derive(Debug, Clone)]
struct Case {
    path: PathBuf,
    /// The Composition's metadata.name.
    name: String,
    outcome: Outcome,
    /// Texts the error or condition message must all contain.
    snippets: Vec<String>,
}

impl Case {
    fn parse(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut outcome = None;
        let mut snippets = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("# expect:") else {
                continue;
            };
            let rest = rest.trim();
            let (kind, snippet) = match rest.split_once(':') {
                Some((kind, snippet)) => (kind.trim(), Some(snippet.trim())),
                None => (rest, None),
            };
            let this = match kind {
                "refused" => Outcome::Refused,
                "invalid" => Outcome::Invalid,
                "ready" => Outcome::Ready,
                other => bail!("{}: unknown outcome {other:?} in {line:?}", path.display()),
            };
            if outcome.is_some_and(|o| o != this) {
                bail!("{}: `# expect:` lines disagree", path.display());
            }
            outcome = Some(this);
            match snippet {
                Some(s) if !s.is_empty() => snippets.push(s.to_string()),
                _ if this != Outcome::Ready => {
                    bail!("{}: {line:?} gives no message to expect", path.display())
                }
                _ => {}
            }
        }
        let Some(outcome) = outcome else {
            bail!("{} has no `# expect:` line", path.display());
        };
        let doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
        let name = doc["metadata"]["name"]
            .as_str()
            .with_context(|| format!("{} has no metadata.name", path.display()))?
            .to_string();
        if doc["kind"].as_str() != Some("Composition") {
            bail!("{} is not a Composition", path.display());
        }
        Ok(Self {
            path: path.to_path_buf(),
            name,
            outcome,
            snippets,
        })
    }

    fn file(&self) -> String {
        self.path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The snippets `text` lacks.
    fn missing_in(&self, text: &str) -> Vec<&str> {
        self.snippets
            .iter()
            .filter(|s| !text.contains(s.as_str()))
            .map(String::as_str)
            .collect()
    }
}

fn corpus(dir: &str) -> Result<Vec<Case>> {
    let dir = repo_root().join("e2e/corpus").join(dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    let cases = paths
        .iter()
        .map(|p| Case::parse(p))
        .collect::<Result<Vec<_>>>()?;
    let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() != cases.len() {
        bail!("two files of {} share a metadata.name", dir.display());
    }
    Ok(cases)
}

/// The API server's refusal inside an error of the harness, if it is one.
fn api_refusal(e: &anyhow::Error) -> Option<&kube::core::Status> {
    match e.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(status)) => Some(status),
        _ => None,
    }
}

fn ready_condition(c: &Composition) -> Option<Condition> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .cloned()
}

fn describe(c: &Condition) -> String {
    format!(
        "Ready={} reason={} message={:?}",
        c.status, c.reason, c.message
    )
}

/// Waits until the operator has written a Ready condition for the composition's current
/// generation that `matches`; on a timeout, says what the condition was.
async fn wait_ready_condition(
    api: &Api<Composition>,
    name: &str,
    matches: impl Fn(&Condition) -> bool,
) -> Result<Condition> {
    wait_for(
        &format!("the Ready condition of composition {name}"),
        STATUS_TIMEOUT,
        || async {
            let c = api.get(name).await.map_err(|e| e.to_string())?;
            let cond = ready_condition(&c).ok_or("no Ready condition yet")?;
            if cond.observed_generation != c.metadata.generation {
                return Err(format!("stale: {}", describe(&cond)));
            }
            if matches(&cond) {
                Ok(cond)
            } else {
                Err(describe(&cond))
            }
        },
    )
    .await
}

/// Applies one corpus file and checks its expected outcome. Ok holds what was seen.
async fn check_case(client: &Client, ns: &str, case: &Case) -> Result<String, String> {
    let api: Api<Composition> = Api::namespaced(client.clone(), ns);
    match apply_file(client, ns, &case.path).await {
        Err(e) => {
            let Some(status) = api_refusal(&e) else {
                return Err(format!("applying failed, not an API refusal: {e:#}"));
            };
            let message = &status.message;
            if case.outcome != Outcome::Refused {
                return Err(format!(
                    "expected {}, but the API server refused it (HTTP {}): {message}",
                    case.outcome, status.code
                ));
            }
            if status.code != 422 {
                return Err(format!(
                    "refused with HTTP {} (want 422 Invalid): {message}",
                    status.code
                ));
            }
            let missing = case.missing_in(message);
            if missing.is_empty() {
                Ok(format!("refused: {message}"))
            } else {
                Err(format!(
                    "refused, but the error lacks {missing:?}; the error: {message}"
                ))
            }
        }
        Ok(_) => match case.outcome {
            Outcome::Refused => {
                // Say what the operator made of it, to tell how far the problem got.
                let seen = wait_ready_condition(&api, &case.name, |c| c.status == "False")
                    .await
                    .map(|c| describe(&c))
                    .unwrap_or_else(|e| e.to_string());
                Err(format!(
                    "expected the API server to refuse it ({:?}), but it was accepted; \
                     the operator then reported: {seen}",
                    case.snippets
                ))
            }
            Outcome::Invalid => wait_ready_condition(&api, &case.name, |c| {
                c.status == "False"
                    && c.reason == "Invalid"
                    && case.missing_in(&c.message).is_empty()
            })
            .await
            .map(|c| format!("invalid: {}", c.message))
            .map_err(|e| {
                format!(
                    "accepted, but no Ready=False reason=Invalid condition containing {:?}: {e}",
                    case.snippets
                )
            }),
            Outcome::Ready => wait_ready_condition(&api, &case.name, |c| c.status == "True")
                .await
                .map(|c| format!("ready: {}", c.message))
                .map_err(|e| format!("expected Ready=True: {e}")),
        },
    }
}

/// Deletes every run of the namespace and waits until they are gone, while the operator
/// still runs to remove its finalizer (otherwise the namespace could not be deleted).
async fn delete_runs(env: &Env) -> Result<()> {
    let api: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    api.delete_collection(&DeleteParams::background(), &ListParams::default())
        .await?;
    wait_for("the runs to be deleted", RUN_TIMEOUT, || async {
        let left = api
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        if left.items.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{:?}",
                left.items.iter().map(|r| r.name_any()).collect::<Vec<_>>()
            ))
        }
    })
    .await
}

#[tokio::test]
async fn invalid_compositions_are_refused_or_marked_invalid() -> Result<()> {
    let invalid = corpus("invalid")?;
    let valid = corpus("valid")?;
    assert!(
        invalid.len() >= 10,
        "the invalid corpus has {} files",
        invalid.len()
    );
    for case in &invalid {
        assert_ne!(
            case.outcome,
            Outcome::Ready,
            "{} is in invalid/",
            case.file()
        );
    }
    for case in &valid {
        assert_eq!(case.outcome, Outcome::Ready, "{} is in valid/", case.file());
    }

    let env = Env::new("apival").await?;
    // The valid compositions are the control: the same harness, the same operator, Ready.
    let cases: Vec<(&str, &Case)> = invalid
        .iter()
        .map(|c| ("invalid", c))
        .chain(valid.iter().map(|c| ("valid", c)))
        .collect();
    let results = futures::future::join_all(
        cases
            .iter()
            .map(|(_, case)| check_case(&env.client, &env.ns.name, case)),
    )
    .await;

    let mut failures = Vec::new();
    println!("API validation corpus ({} cases):", cases.len());
    for ((dir, case), result) in cases.iter().zip(&results) {
        let expect = format!("{dir}/{} (expect {})", case.file(), case.outcome);
        match result {
            Ok(seen) => println!("  PASS {expect}: {seen}"),
            Err(why) => {
                println!("  FAIL {expect}: {why}");
                failures.push(format!("{expect}: {why}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}\noperator log:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        env.operator.log_tail()
    );
    Ok(())
}

fn condition<'a>(run: &'a CompositionRun, type_: &str) -> Option<&'a Condition> {
    run.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Asserts that a run ended Invalid, with an Invalid condition containing every snippet,
/// and that no pod was created in the namespace.
async fn assert_invalid_without_pods(env: &Env, name: &str, snippets: &[String]) -> Result<()> {
    let run = env.wait_finished(name, RUN_TIMEOUT).await?;
    let status = run.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Invalid, "run {name}: {status:#?}");
    let invalid = condition(&run, "Invalid")
        .unwrap_or_else(|| panic!("run {name} has no Invalid condition: {status:#?}"));
    assert_eq!(invalid.status, "True", "{invalid:?}");
    assert_eq!(invalid.reason, "Invalid", "{invalid:?}");
    for snippet in snippets {
        assert!(
            invalid.message.contains(snippet.as_str()),
            "run {name}: the Invalid condition should contain {snippet:?}, got {:?}",
            invalid.message
        );
    }
    let succeeded = condition(&run, "Succeeded")
        .unwrap_or_else(|| panic!("run {name} has no Succeeded condition: {status:#?}"));
    assert_eq!(
        (succeeded.status.as_str(), succeeded.reason.as_str()),
        ("False", "Invalid"),
        "{succeeded:?}"
    );
    assert!(
        status.start_time.is_none(),
        "an invalid run never starts: {status:#?}"
    );
    assert!(
        status
            .steps
            .iter()
            .all(|s| s.pod_name.is_none() && s.attempts == 0),
        "no step of an invalid run may start: {:#?}",
        status.steps
    );
    assert_eq!(env.step_pods(name).await?, vec![], "pods of run {name}");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let all: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert!(all.is_empty(), "pods in the namespace: {all:?}");
    Ok(())
}

#[tokio::test]
async fn a_run_of_an_invalid_composition_ends_invalid_without_pods() -> Result<()> {
    let case = Case::parse(&repo_root().join("e2e/corpus/invalid/unknown-task.yaml"))?;
    assert_eq!(case.outcome, Outcome::Invalid);
    let env = Env::new("apival-run").await?;
    apply_file(&env.client, &env.ns.name, &case.path).await?;
    // The composition is marked invalid first; a run of it is refused by the engine
    // for the same reason.
    let compositions: Api<Composition> = Api::namespaced(env.client.clone(), &env.ns.name);
    wait_ready_condition(&compositions, &case.name, |c| {
        c.status == "False" && case.missing_in(&c.message).is_empty()
    })
    .await?;
    let name = env.start_run(&case.name, &[]).await?;
    assert_invalid_without_pods(&env, &name, &case.snippets).await?;

    // A valid composition, but a run that misses its required param and sets one the
    // composition does not declare: Invalid too, naming both.
    let needs = repo_root().join("e2e/corpus/valid/needs-version.yaml");
    apply_file(&env.client, &env.ns.name, &needs).await?;
    wait_ready_condition(&compositions, "needs-version", |c| c.status == "True").await?;
    let name = env.start_run("needs-version", &[("colour", "red")]).await?;
    assert_invalid_without_pods(
        &env,
        &name,
        &[
            r#"spec.params: missing required param "version""#.to_string(),
            r#"spec.params.colour: the composition has no param "colour""#.to_string(),
        ],
    )
    .await?;

    delete_runs(&env).await
}

/// Patches a run's spec with a JSON merge patch; Err holds the API server's refusal.
async fn patch_spec(
    api: &Api<CompositionRun>,
    name: &str,
    spec: serde_json::Value,
) -> Result<CompositionRun, kube::core::Status> {
    match api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
    {
        Ok(run) => Ok(run),
        Err(kube::Error::Api(status)) => Err(*status),
        Err(other) => panic!("patching run {name}: {other}"),
    }
}

fn assert_refused(result: Result<CompositionRun, kube::core::Status>, what: &str, want: &str) {
    match result {
        Ok(run) => panic!("{what} was allowed: spec is now {:?}", run.spec),
        Err(status) => {
            assert_eq!(status.code, 422, "{what}: {status:?}");
            assert!(
                status.message.contains(want),
                "{what}: the refusal should say {want:?}, got {:?}",
                status.message
            );
        }
    }
}

#[tokio::test]
async fn a_run_spec_cannot_change_except_cancel() -> Result<()> {
    let env = Env::new("apival-frozen").await?;
    let path = repo_root().join("e2e/corpus/valid/approval-gate.yaml");
    apply_file(&env.client, &env.ns.name, &path).await?;
    let name = env
        .start_run("approval-gate", &[("release", "1.0")])
        .await?;
    // In flight: the run waits at its approval gate.
    env.wait_phase(&name, &[RunPhase::WaitingApproval], RUN_TIMEOUT)
        .await?;
    let api: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);

    assert_refused(
        patch_spec(&api, &name, json!({"composition": "fan-out-join"})).await,
        "changing spec.composition",
        RUN_SPEC_FROZEN,
    );
    assert_refused(
        patch_spec(&api, &name, json!({"params": {"release": "2.0"}})).await,
        "changing a value of spec.params",
        RUN_SPEC_FROZEN,
    );
    assert_refused(
        patch_spec(&api, &name, json!({"params": {"extra": "x"}})).await,
        "adding a key to spec.params",
        RUN_SPEC_FROZEN,
    );
    assert_refused(
        patch_spec(&api, &name, json!({"params": {"release": null}})).await,
        "removing a key of spec.params",
        RUN_SPEC_FROZEN,
    );
    assert_refused(
        patch_spec(&api, &name, json!({"priority": 5})).await,
        "changing spec.priority",
        RUN_SPEC_FROZEN,
    );
    // Changing both the frozen fields and cancel at once is refused as a whole.
    assert_refused(
        patch_spec(
            &api,
            &name,
            json!({"composition": "fan-out-join", "cancel": true}),
        )
        .await,
        "changing spec.composition together with spec.cancel",
        RUN_SPEC_FROZEN,
    );
    let run = api.get(&name).await?;
    assert_eq!(run.spec.composition, "approval-gate");
    assert_eq!(
        run.spec.params,
        [("release".to_string(), "1.0".to_string())].into()
    );
    assert!(!run.spec.cancel);

    // Cancel is the one change allowed, and it ends the run.
    let cancelled = patch_spec(&api, &name, json!({"cancel": true}))
        .await
        .map_err(|s| anyhow::anyhow!("setting spec.cancel=true was refused: {s:?}"))?;
    assert!(cancelled.spec.cancel);
    let run = env.wait_finished(&name, RUN_TIMEOUT).await?;
    let phase = run.status.as_ref().map(|s| s.phase);
    assert_eq!(phase, Some(RunPhase::Cancelled), "{:#?}", run.status);
    // ... and cannot be taken back.
    assert_refused(
        patch_spec(&api, &name, json!({"cancel": false})).await,
        "setting spec.cancel back to false",
        RUN_STAYS_CANCELLED,
    );

    delete_runs(&env).await
}

/// `kubectl`, found on PATH (source /var/lib/maestro-cluster/env for the local cluster's).
fn kubectl() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
        .context("kubectl is not on PATH: source /var/lib/maestro-cluster/env")
}

/// Whitespace collapsed to single spaces: kubectl explain wraps long lines.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn kubectl_explain_prints_the_doc_comments() -> Result<()> {
    let client = maestro_e2e::client().await?;
    install_crds(&client).await?;
    let kubectl = kubectl()?;
    let expectations: [(&str, &[&str]); 5] = [
        (
            "composition.spec.steps",
            &[
                "KIND: Composition",
                "FIELD: steps <[]Object>",
                "The steps. Each runs exactly one of: a `task`, an `approval` gate",
                "dependsOn <[]string>",
                "`dependsOn: []` starts it at once (fan out).",
                "The step's name: a DNS label of at most 40 characters, unique in the composition.",
                "A CEL condition over `params`, `steps.<name>.outputs`, `context` and `run`",
            ],
        ),
        (
            "compositionrun.status.steps",
            &[
                "KIND: CompositionRun",
                "FIELD: steps <[]Object>",
                "Each step's state, in the composition's order.",
                "How many attempts have started (1 for the first).",
                "Who approved or rejected the gate, as the API server authenticated them.",
            ],
        ),
        (
            "task.spec.inputs",
            &[
                "KIND: Task",
                "FIELD: inputs <[]Object>",
                "The inputs a step gives this task in its `with` map.",
                "Whether a step must set this input (a required input has no default).",
                "values are checked against it before the step's pod starts.",
            ],
        ),
        (
            "compositionrun.spec",
            &[
                "The spec cannot change once created, except `cancel`.",
                "Set to true to cancel the run",
                "Where the run stands in the queue for Agent slots: higher first",
            ],
        ),
        (
            "agent.spec",
            &[
                "KIND: Agent",
                "How many step pods of this pool may run at once, across all its slots.",
                "How long a run waits for the busy slot that last ran its composition",
                "The slots' cache volumes",
            ],
        ),
    ];
    for (field, phrases) in expectations {
        // The API server publishes a new CRD's OpenAPI a moment after it is established.
        wait_for(
            &format!("`kubectl explain {field}` to print the doc comments"),
            Duration::from_secs(60),
            || {
                let kubectl = kubectl.clone();
                async move {
                    let out = tokio::process::Command::new(&kubectl)
                        .args(["explain", field])
                        .output()
                        .await
                        .map_err(|e| format!("running {}: {e}", kubectl.display()))?;
                    let text = squeeze(&String::from_utf8_lossy(&out.stdout));
                    if !out.status.success() {
                        return Err(format!(
                            "kubectl failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        ));
                    }
                    let missing: Vec<&&str> =
                        phrases.iter().filter(|p| !text.contains(**p)).collect();
                    if missing.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("missing {missing:?} in:\n{text}"))
                    }
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// A Role with one `rule`, bound to `user`, as YAML.
fn grant_to(user: &str, name: &str, rule: &str) -> String {
    format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {name}}}
rules: [{rule}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {user}-{name}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]
"#
    )
}

/// Creates `object` until the refusal (403) says `expected`, and returns it. RBAC changes
/// reach the API server's authorizer through its informers, a moment after the write, so
/// after each grant the create is refused for the right before it for a while; a refusal
/// for anything else after 90 s, any other error, or an admission fails at once.
async fn refused_until<K>(api: &Api<K>, object: &K, expected: &str) -> Result<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let said = match api.create(&PostParams::default(), object).await {
            Err(kube::Error::Api(status)) if status.code == 403 => status.message,
            Err(other) => bail!("unexpected error: {other}"),
            Ok(made) => bail!("admitted before: {expected}: {made:?}"),
        };
        if said.contains(expected) {
            return Ok(said);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("still refused for another reason after 90s: {said}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The author-rights policies: writing a Composition needs the right to create pods in its
/// namespace, and every Secret it hands its steps must be one the author may get. Each
/// refusal names what is missing (the Secrets by name); with the rights, the same
/// composition is admitted.
#[tokio::test]
async fn an_author_may_not_ask_for_more_than_they_may_have() -> Result<()> {
    let env = Env::new("authors").await?;
    let grant = |name: &str, rule: &str| grant_to("bob", name, rule);
    env.apply_yaml(&grant(
        "writer",
        "{apiGroups: [maestro.dev], resources: [compositions], verbs: [get, create]}",
    ))
    .await?;
    let composition: Composition = serde_yaml::from_str(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: deploy}
spec:
  steps:
    - {name: provision, task: shell, with: {script: "true"}, secretEnv: [aws-creds]}
    - {name: deploy, task: shell, with: {script: "true"}, secretEnv: [db-password]}
"#,
    )?;
    let bob: Api<Composition> = Api::namespaced(maestro_e2e::client_as("bob").await?, &env.ns.name);
    let post = PostParams::default();

    // Without Secrets only the pods right can be missing. (With both missing, which of the
    // two policies answers first is the API server's choice: CI saw either.)
    let mut plain = composition.clone();
    plain.metadata.name = Some("plain".into());
    for step in &mut plain.spec.steps {
        step.secret_env.clear();
    }
    let said = refused_until(&bob, &plain, "needs the right to create pods there").await?;
    assert!(said.contains("bob lacks"), "{said}");
    env.apply_yaml(&grant(
        "pods",
        "{apiGroups: [''], resources: [pods], verbs: [create]}",
    ))
    .await?;
    // The policy's message cannot say which Secret is missing (the authorizer is not
    // available to messages), so the progress is checked through the authorizer itself.
    let missing_secret =
        "spec.steps[].secretEnv names a Secret that bob may not get (of aws-creds, db-password)";
    refused_until(&bob, &composition, missing_secret).await?;
    env.apply_yaml(&grant(
        "aws",
        "{apiGroups: [''], resources: [secrets], resourceNames: [aws-creds], verbs: [get]}",
    ))
    .await?;
    let allowed = |secret: &'static str| {
        maestro_e2e::wait_until_allowed_on(
            &env.client,
            "bob",
            "get",
            "",
            "secrets",
            &env.ns.name,
            Some(secret),
        )
    };
    // Once the authorizer lets bob read aws-creds, db-password is still missing.
    allowed("aws-creds").await?;
    refused_until(&bob, &composition, missing_secret).await?;
    env.apply_yaml(&grant(
        "db",
        "{apiGroups: [''], resources: [secrets], resourceNames: [db-password], verbs: [get]}",
    ))
    .await?;
    allowed("db-password").await?;
    // With every right granted the create passes, once the authorizer has seen the last grant.
    maestro_e2e::wait_for(
        "bob's composition admitted",
        Duration::from_secs(30),
        || {
            let (bob, post, composition) = (bob.clone(), post.clone(), composition.clone());
            async move {
                bob.create(&post, &composition)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await?;
    Ok(())
}

/// The author-rights policies cover Tasks and Agents as they do Compositions: a user who
/// may write them but not create pods is refused, naming the kind; with the pods right, a
/// Task handing its steps a Secret the user may not get is still refused, naming the
/// field; without the Secret the same user's Task and Agent are admitted.
#[tokio::test]
async fn tasks_and_agents_need_the_authors_rights_too() -> Result<()> {
    let env = Env::new("authors-kinds").await?;
    let grant = |name: &str, rule: &str| grant_to("carol", name, rule);
    env.apply_yaml(&grant(
        "writer",
        "{apiGroups: [maestro.dev], resources: [tasks, agents], verbs: [get, create]}",
    ))
    .await?;
    let carol = maestro_e2e::client_as("carol").await?;
    let tasks: Api<maestro_api::Task> = Api::namespaced(carol.clone(), &env.ns.name);
    let agents: Api<maestro_api::Agent> = Api::namespaced(carol, &env.ns.name);
    let task: maestro_api::Task = serde_yaml::from_str(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: Task
metadata: {name: lint}
spec: {container: {image: "localhost/maestro/agent:dev", command: ["true"]}}
"#,
    )?;
    let mut task_with_secret = task.clone();
    task_with_secret.metadata.name = Some("publish".into());
    task_with_secret.spec.secret_env = vec!["registry-token".into()];
    let agent: maestro_api::Agent = serde_yaml::from_str(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: Agent
metadata: {name: builders}
spec: {capacity: 1}
"#,
    )?;
    let post = PostParams::default();
    let ns = &env.ns.name;
    let said = refused_until(
        &tasks,
        &task,
        &format!("writing tasks in namespace {ns} needs the right to create pods there"),
    )
    .await?;
    assert!(said.contains("carol lacks"), "{said}");
    refused_until(
        &agents,
        &agent,
        &format!("writing agents in namespace {ns} needs the right to create pods there"),
    )
    .await?;
    env.apply_yaml(&grant(
        "pods",
        "{apiGroups: [''], resources: [pods], verbs: [create]}",
    ))
    .await?;
    refused_until(
        &tasks,
        &task_with_secret,
        "spec.secretEnv names a Secret that carol may not get (of registry-token)",
    )
    .await?;
    tasks.create(&post, &task).await?;
    agents.create(&post, &agent).await?;
    Ok(())
}

/// A step pod the API server keeps refusing (here a quota of no pods) fails its step with
/// the API's message after a few tries, instead of retrying for ever.
#[tokio::test]
async fn a_step_pod_the_api_server_keeps_refusing_fails_its_step_with_the_reason() -> Result<()> {
    let env = Env::new("apival-quota").await?;
    env.apply_yaml(
        r#"
apiVersion: v1
kind: ResourceQuota
metadata: {name: no-pods}
spec: {hard: {pods: "0"}}
---
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: blocked}
spec:
  steps:
    - {name: build, task: shell, with: {script: "echo never"}}
"#,
    )
    .await?;
    env.wait_compositions_ready(&["blocked".to_string()])
        .await?;
    let name = env.start_run("blocked", &[]).await?;
    let run = env.wait_finished(&name, RUN_TIMEOUT).await?;
    let status = run.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Failed, "{status:#?}");
    let build = status
        .steps
        .iter()
        .find(|s| s.name == "build")
        .context("no build step")?;
    let message = build.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("the API server refused to create pod") && message.contains("quota"),
        "{message}"
    );
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    assert!(pods.list(&ListParams::default()).await?.items.is_empty());
    Ok(())
}

/// A composition that calls itself starts runs until they are `MAX_RUN_DEPTH` deep, never
/// without end: the deepest run fails its call step saying why, and each run above it
/// fails with its child.
#[tokio::test]
async fn a_composition_that_calls_itself_stops_at_the_depth_limit() -> Result<()> {
    let env = Env::new("apival-depth").await?;
    env.apply_yaml(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: again}
spec:
  steps:
    - {name: call-myself, composition: again}
"#,
    )
    .await?;
    env.wait_compositions_ready(&["again".to_string()]).await?;
    let top = env.start_run("again", &[]).await?;
    let run = env.wait_finished(&top, RUN_TIMEOUT).await?;
    let phase = run.status.as_ref().map(|s| s.phase);
    assert_eq!(phase, Some(RunPhase::Failed));

    let runs: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    let all = runs.list(&ListParams::default()).await?.items;
    let limit = maestro_api::labels::MAX_RUN_DEPTH as usize;
    assert_eq!(
        all.len(),
        limit + 1,
        "the top run and one run per level below it: {:?}",
        all.iter().map(|r| r.name_any()).collect::<Vec<_>>()
    );
    let deepest = all
        .iter()
        .find(|r| maestro_api::labels::depth_of(r.labels()) == limit as u32)
        .context("no run at the depth limit")?;
    let step = deepest
        .status
        .as_ref()
        .and_then(|s| s.steps.iter().find(|s| s.name == "call-myself"))
        .context("the deepest run has no call step")?;
    assert!(
        step.message
            .as_deref()
            .is_some_and(|m| m.contains(&format!("at most {limit} may nest"))
                // The message names the chain: the composition once per run, top first.
                && m.contains(&vec!["again"; limit + 1].join(" -> "))),
        "{:?}",
        step.message
    );
    assert!(
        all.iter()
            .all(|r| r.status.as_ref().map(|s| s.phase) == Some(RunPhase::Failed)),
        "every run fails with the one below it"
    );
    delete_runs(&env).await
}

/// A pod that squats on the name of a run's step pod is never taken for the step's own:
/// the step fails, naming the pod and that the run does not own it, and the squatter is
/// left as it was.
#[tokio::test]
async fn a_step_whose_pod_name_is_taken_fails_instead_of_using_it() -> Result<()> {
    let env = Env::new("apival-taken").await?;
    let squatted = maestro_api::labels::step_pod_name("squatted", "build", 1);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let squatter: Pod = serde_json::from_value(json!({
        "metadata": {"name": squatted},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "pause", "image": "localhost/maestro/pause:3.10",
                "imagePullPolicy": "Never",
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &squatter).await?;
    env.apply_yaml(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata: {name: build}
spec:
  steps:
    - {name: build, task: shell, with: {script: "true"}}
"#,
    )
    .await?;
    env.wait_compositions_ready(&["build".to_string()]).await?;
    env.apply_yaml(
        r#"
apiVersion: maestro.dev/v1alpha1
kind: CompositionRun
metadata: {name: squatted}
spec: {composition: build}
"#,
    )
    .await?;
    let run = env.wait_finished("squatted", RUN_TIMEOUT).await?;
    let status = run.status.context("no status")?;
    assert_eq!(status.phase, RunPhase::Failed);
    let step = status
        .steps
        .iter()
        .find(|s| s.name == "build")
        .context("no build step")?;
    assert_eq!(
        step.message.as_deref(),
        Some(&*format!(
            "pod {squatted} already exists and is not this run's (owned by nobody); delete it or rename the run"
        ))
    );
    let squatter = pods.get(&squatted).await?;
    assert!(
        squatter
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty(),
        "the squatting pod is left as it was"
    );
    delete_runs(&env).await
}
