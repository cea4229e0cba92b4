//! Admission and act against in-memory caches (reflector `Writer`s) and a mocked API
//! server (`tower_test::mock`), as kube-rs' controller-rs tests its reconciler: what
//! only the e2e tests covered before.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use hyper::{Request, Response};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::{
    Api, Client,
    client::Body,
    core::DeserializeGuard,
    runtime::{
        events::{Recorder, Reporter},
        reflector::store::Writer,
        watcher,
    },
};
use maestro_api::{Agent, CompositionRun, CompositionRunStatus, CompositionSpec, Task};
use maestro_engine::{Action, Admission, StepPod, TaskRuns};
use serde_json::json;

use super::context::{Context, Error, FIELD_MANAGER, Settings};
use super::{admission, agent, agents, composition, cron, pods, run, world};
use crate::k8s::{self, Created};
use crate::metrics::Metrics;

const NS: &str = "team";

/// Requests the mocked API server saw, as "METHOD path".
type Seen = Arc<Mutex<Vec<String>>>;

/// A client whose API server answers every request with `answer(method, path, body)`
/// (status code and body), recording what it was asked.
fn mocked_client(
    answer: impl Fn(&str, &str, &serde_json::Value) -> (u16, serde_json::Value) + Send + 'static,
) -> (Client, Seen) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let bytes = http_body_util::BodyExt::collect(request.into_body())
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            log.lock().expect("seen").push(format!("{method} {path}"));
            let (code, reply) = answer(&method, &path, &body);
            let response = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                .expect("response");
            respond.send_response(response);
        }
    });
    (Client::new(service, "default"), seen)
}

fn already_exists() -> (u16, serde_json::Value) {
    (
        409,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": "AlreadyExists", "message": "already exists", "code": 409}),
    )
}

/// The in-memory caches the test fills, and the Context reading them.
struct World {
    ctx: Context,
    runs: Writer<DeserializeGuard<CompositionRun>>,
    compositions: Writer<DeserializeGuard<maestro_api::Composition>>,
    pods: Writer<Pod>,
    agents: Writer<Agent>,
    tasks: Writer<Task>,
    claims: Writer<PersistentVolumeClaim>,
}

fn world(client: Client) -> World {
    let runs = Writer::default();
    let pods = Writer::default();
    let agents = Writer::default();
    let compositions = Writer::default();
    let tasks = Writer::default();
    let approvals = Writer::default();
    let claims = Writer::default();
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: None,
    };
    let ctx = Context {
        client: client.clone(),
        settings: Settings {
            pods: pods::PodSettings {
                agent_image: "localhost/maestro/agent:dev".into(),
                agent_pull_policy: "IfNotPresent".into(),
                workspace: None,
            },
            library_namespace: "maestro-system".into(),
            finished_run_ttl: Duration::from_secs(3600),
            watch_namespace: None,
            library: None,
            allow_host_path_caches: true,
            step_events: true,
        },
        recorder: Recorder::new(client, reporter),
        runs: runs.as_reader(),
        compositions: compositions.as_reader(),
        tasks: tasks.as_reader(),
        pods: pods.as_reader(),
        approvals: approvals.as_reader(),
        agents: agents.as_reader(),
        claims: claims.as_reader(),
        metrics: Metrics::new().expect("metrics"),
        admissions: admission::AdmissionLocks::default(),
        failures: Mutex::new(HashMap::new()),
        taken: Mutex::new(HashMap::new()),
        refused: Mutex::new(HashMap::new()),
        created: Mutex::new(HashMap::new()),
        uncreated: Mutex::new(HashMap::new()),
        written: Mutex::new(HashMap::new()),
        agents_written: Mutex::new(HashMap::new()),
        nodes_unwritten: Mutex::new(HashMap::new()),
        deleted_pods: Default::default(),
        writing: AtomicBool::new(true),
        agent_counts: agent::AssignmentCounts::default(),
    };
    World {
        ctx,
        runs,
        compositions,
        pods,
        agents,
        tasks,
        claims,
    }
}

fn agent(name: &str, capacity: u32, slots: u32) -> Agent {
    let mut agent: Agent = serde_json::from_value(json!({
        "apiVersion": "maestro.dev/v1alpha1", "kind": "Agent",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
        "spec": {"capacity": capacity, "slots": slots,
                 "cache": {"hostPath": {"path": "/var/cache/maestro"}}},
    }))
    .expect("agent");
    agent.metadata.generation = Some(1);
    agent
}

fn queued_run(name: &str, created: &str) -> CompositionRun {
    serde_json::from_value(json!({
        "apiVersion": "maestro.dev/v1alpha1", "kind": "CompositionRun",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                     "creationTimestamp": created},
        "spec": {"composition": "build"},
    }))
    .expect("run")
}

fn agent_pod(name: &str, agent: &str, phase: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS,
                     "labels": {maestro_api::labels::AGENT: agent}},
        "status": {"phase": phase},
    }))
    .expect("pod")
}

fn apply<K>(writer: &mut Writer<K>, object: K)
where
    K: kube::runtime::reflector::Lookup + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer.apply_watcher_event(&watcher::Event::Apply(object));
}

#[tokio::test]
async fn capacity_counts_live_pods_and_pods_in_flight() {
    let (client, seen) = mocked_client(|_, _, _| (500, json!({})));
    let mut w = world(client);
    let pool = agent("pool", 3, 1);
    apply(&mut w.agents, pool.clone());
    apply(&mut w.pods, agent_pod("a-1", "pool", "Running"));
    apply(&mut w.pods, agent_pod("a-0", "pool", "Succeeded"));
    apply(&mut w.pods, agent_pod("other-1", "other", "Running"));
    let mut admissions = admission::Admissions::default();
    assert_eq!(
        agents::free_capacity(&w.ctx, NS, &pool, &mut admissions),
        2,
        "one live pod of three; ended pods and other Agents' pods do not count"
    );
    admissions.created(NS, "pool", "a-2");
    assert_eq!(
        agents::free_capacity(&w.ctx, NS, &pool, &mut admissions),
        1,
        "a pod just created counts before the cache shows it"
    );
    apply(&mut w.pods, agent_pod("a-2", "pool", "Pending"));
    assert_eq!(
        agents::free_capacity(&w.ctx, NS, &pool, &mut admissions),
        1,
        "once the cache shows it, it is counted once"
    );
    assert!(
        seen.lock().expect("seen").is_empty(),
        "capacity is read from the caches only"
    );
}

#[tokio::test]
async fn one_free_slot_goes_to_the_oldest_run_and_the_next_waits() {
    let (client, seen) = mocked_client(|method, path, body| match (method, path) {
        // The assignment is written to the run's status: answer with the run, as applied.
        ("PATCH", p) if p.ends_with("/status") => {
            let name = p.rsplit('/').nth(1).unwrap_or_default();
            let mut run =
                serde_json::to_value(queued_run(name, "2026-01-01T00:00:00Z")).expect("run json");
            run["status"] = body["status"].clone();
            (200, run)
        }
        _ => (500, json!({})),
    });
    let mut w = world(client);
    let pool = agent("pool", 2, 1);
    apply(&mut w.agents, pool.clone());
    let first = queued_run("first", "2026-01-01T00:00:00Z");
    let second = queued_run("second", "2026-01-01T00:01:00Z");
    apply(&mut w.runs, DeserializeGuard(Ok(first.clone())));
    apply(&mut w.runs, DeserializeGuard(Ok(second.clone())));

    let lock = w.ctx.admissions.of(NS);
    let mut admissions = lock.lock().await;
    let mut status = CompositionRunStatus::default();
    let route = run::admit(
        &first,
        NS,
        std::slice::from_ref(&pool),
        &mut status,
        false,
        &mut admissions,
        &w.ctx,
    )
    .await
    .expect("admitted");
    assert_eq!(route.admission, Admission::Admitted);
    assert_eq!(route.pod_budget, Some(2));
    let assigned = status.agent.clone().expect("an assignment");
    assert_eq!((assigned.name.as_str(), assigned.slot), ("pool", 0));
    assert_eq!(
        *seen.lock().expect("seen"),
        vec![format!(
            "PATCH /apis/maestro.dev/v1alpha1/namespaces/{NS}/compositionruns/first/status"
        )],
        "the assignment is written before any pod exists"
    );

    // The run cache does not show the assignment yet: the lock's memory of it keeps the
    // second run from taking the same slot.
    let mut status = CompositionRunStatus::default();
    let route = run::admit(
        &second,
        NS,
        &[pool],
        &mut status,
        false,
        &mut admissions,
        &w.ctx,
    )
    .await
    .expect("routed");
    assert!(
        matches!(route.admission, Admission::Queued(_)),
        "{:?}",
        route.admission
    );
    assert_eq!(status.agent, None);
    assert_eq!(
        seen.lock().expect("seen").len(),
        1,
        "a queued run writes nothing here"
    );
}

#[tokio::test]
async fn namespaces_have_their_own_admission_lock() {
    let (client, _) = mocked_client(|_, _, _| (500, json!({})));
    let w = world(client);
    let held = w.ctx.admissions.of("a").lock_owned().await;
    assert!(
        w.ctx.admissions.of("b").try_lock().is_ok(),
        "another namespace does not wait"
    );
    assert!(
        w.ctx.admissions.of("a").try_lock().is_err(),
        "the same namespace does"
    );
    drop(held);
}

fn step_pod(name: &str) -> StepPod {
    StepPod {
        name: name.into(),
        step: "greet".into(),
        attempt: 1,
        task: "shell".into(),
        runs: TaskRuns::Builtin(maestro_api::BuiltinTask::Shell),
        inputs: serde_json::Map::new(),
        context: Default::default(),
        service_account: None,
        node_selector: Default::default(),
        tolerations: Vec::new(),
        secret_env: Vec::new(),
        timeout: None,
        workspace_of: None,
        ledger_runs: Vec::new(),
    }
}

#[tokio::test]
async fn act_creates_the_step_pod_and_checks_the_owner_of_one_that_existed() {
    let (client, seen) = mocked_client(|method, path, body| match method {
        "POST" if body["metadata"]["name"] == "r-greet-1" => (201, body.clone()),
        "POST" => already_exists(),
        // r-greet-2 is the run's own (its UID), r-greet-3 a stranger's.
        "GET" if path.ends_with("/r-greet-2") => (
            200,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "r-greet-2",
                   "ownerReferences": [{"apiVersion": "maestro.dev/v1alpha1",
                       "kind": "CompositionRun", "name": "r", "uid": "uid-r"}]}}),
        ),
        "GET" => (
            200,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "r-greet-3"}}),
        ),
        _ => (500, json!({})),
    });
    let w = world(client);
    let parent = queued_run("r", "2026-01-01T00:00:00Z");
    for pod in ["r-greet-1", "r-greet-2", "r-greet-3"] {
        run::act(
            &parent,
            NS,
            &Action::CreatePod(Box::new(step_pod(pod))),
            None,
            &w.ctx,
        )
        .await
        .expect("created, or there already");
    }
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    assert_eq!(
        *seen.lock().expect("seen"),
        vec![
            format!("POST {pods}"),
            format!("POST {pods}"),
            format!("GET {pods}/r-greet-2"),
            format!("POST {pods}"),
            format!("GET {pods}/r-greet-3"),
        ]
    );
    assert_eq!(
        w.ctx.taken_names("uid-r"),
        vec![maestro_engine::TakenName {
            name: "r-greet-3".into(),
            holder: "owned by nobody".into(),
            object: None,
        }],
        "only the pod the run does not own is taken"
    );
}

/// A workspace claim found there already is mounted only when it is the run's own (by
/// UID): one left by an earlier run of the same name, or a look-alike, fails the step
/// naming the claim, and no pod is created to mount it.
#[tokio::test]
async fn a_workspace_claim_that_existed_is_used_only_when_the_run_owns_it() {
    for (claim_owner, pod_created) in [
        (Some("uid-r"), true),
        (Some("uid-old"), false),
        (None, false),
    ] {
        let (client, seen) = mocked_client(move |method, path, body| match method {
            "POST" if path.ends_with("/persistentvolumeclaims") => already_exists(),
            "POST" => (201, body.clone()),
            "GET" if path.ends_with("/persistentvolumeclaims/r-workspace") => {
                let owners: Vec<serde_json::Value> = claim_owner
                    .iter()
                    .map(|uid| {
                        json!({"apiVersion": "maestro.dev/v1alpha1",
                        "kind": "CompositionRun", "name": "r", "uid": uid})
                    })
                    .collect();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "metadata": {"name": "r-workspace", "ownerReferences": owners}}),
                )
            }
            _ => (500, json!({})),
        });
        let mut w = world(client);
        w.ctx.settings.pods.workspace = Some(pods::WorkspaceClaim {
            storage_class: None,
            size: "1Gi".into(),
        });
        let run = queued_run("r", "2026-01-01T00:00:00Z");
        run::act(
            &run,
            NS,
            &Action::CreatePod(Box::new(step_pod("r-greet-1"))),
            None,
            &w.ctx,
        )
        .await
        .expect("acted");
        let claims = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims");
        let mut expected = vec![
            format!("POST {claims}"),
            format!("GET {claims}/r-workspace"),
        ];
        if pod_created {
            expected.push(format!("POST /api/v1/namespaces/{NS}/pods"));
        }
        assert_eq!(
            *seen.lock().expect("seen"),
            expected,
            "claim owner {claim_owner:?}"
        );
        let taken = w.ctx.taken_names("uid-r");
        if pod_created {
            assert!(taken.is_empty(), "{taken:?}");
        } else {
            let holder = match claim_owner {
                Some(_) => "owned by CompositionRun r",
                None => "owned by nobody",
            };
            assert_eq!(
                taken,
                vec![maestro_engine::TakenName {
                    name: "r-greet-1".into(),
                    holder: holder.into(),
                    object: Some("claim r-workspace".into()),
                }],
                "the step's pod name is taken, the claim named"
            );
        }
    }
}

/// The onFailure run carries the failed run's name and UID in reserved labels; one found
/// there already without them (a runner made it first) is not the handler.
#[tokio::test]
async fn an_on_failure_run_that_existed_counts_only_with_the_failed_runs_uid() {
    for (labels, counted) in [
        (
            json!({"maestro.dev/failed-run": "r", "maestro.dev/failed-run-uid": "uid-r"}),
            true,
        ),
        (
            json!({"maestro.dev/failed-run": "r", "maestro.dev/failed-run-uid": "uid-old"}),
            false,
        ),
        (json!({}), false),
    ] {
        let posted: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
        let post_log = posted.clone();
        let shown = labels.to_string();
        let (client, _) = mocked_client(move |method, _, body| match method {
            "POST" => {
                *post_log.lock().expect("posted") = Some(body.clone());
                already_exists()
            }
            "GET" => (
                200,
                json!({"apiVersion": "maestro.dev/v1alpha1", "kind": "CompositionRun",
                       "metadata": {"name": "r-onfailure", "namespace": NS, "labels": labels},
                       "spec": {"composition": "notify"}}),
            ),
            _ => (500, json!({})),
        });
        let w = world(client);
        let failed = queued_run("r", "2026-01-01T00:00:00Z");
        let handler = maestro_engine::NewRun {
            name: "r-onfailure".into(),
            composition: "notify".into(),
            params: Default::default(),
            step: None,
            owned: false,
            started_by: None,
        };
        run::act(&failed, NS, &Action::CreateRun(handler), None, &w.ctx)
            .await
            .expect("acted");
        let body = posted.lock().expect("posted").clone().unwrap_or_default();
        assert_eq!(
            body["metadata"]["labels"]["maestro.dev/failed-run-uid"],
            "uid-r"
        );
        assert_eq!(body["metadata"]["ownerReferences"], serde_json::Value::Null);
        // The handler names the chain of compositions that led to it.
        assert_eq!(
            body["metadata"]["annotations"]["maestro.dev/chain"],
            "build -> notify"
        );
        let taken = w.ctx.taken_names("uid-r");
        assert_eq!(taken.is_empty(), counted, "{shown}: {taken:?}");
        if !counted {
            assert_eq!(taken[0].name, "r-onfailure");
            assert_eq!(taken[0].holder, "owned by nobody");
        }
    }
}

/// A scheduled run is owned by its Composition; a run of the scheduled name found there
/// already counts as the schedule's only with that owner's UID and the reserved cron label.
#[tokio::test]
async fn a_scheduled_run_that_existed_counts_only_when_the_schedule_made_it() {
    let composition: maestro_api::Composition = serde_json::from_value(json!({
        "apiVersion": "maestro.dev/v1alpha1", "kind": "Composition",
        "metadata": {"name": "nightly", "namespace": NS, "uid": "uid-nightly"},
        "spec": {"steps": []},
    }))
    .expect("composition");
    let trigger: maestro_api::CronTrigger =
        serde_json::from_value(json!({"schedule": "0 3 * * *"})).expect("trigger");
    let scheduled_labels =
        json!({"maestro.dev/trigger": "cron", "maestro.dev/composition": "nightly"});
    let ours = json!([{"apiVersion": "maestro.dev/v1alpha1", "kind": "Composition",
                       "name": "nightly", "uid": "uid-nightly"}]);
    let earlier = json!([{"apiVersion": "maestro.dev/v1alpha1", "kind": "Composition",
                          "name": "nightly", "uid": "uid-deleted"}]);
    for (existing, expected) in [
        (None, cron::Scheduled::Created),
        (
            Some((scheduled_labels.clone(), ours.clone())),
            cron::Scheduled::Existed,
        ),
        // A runner's run: no reserved labels, whatever owner it claims.
        (
            Some((json!({}), ours.clone())),
            cron::Scheduled::Taken("owned by Composition nightly".into()),
        ),
        (
            Some((json!({}), json!([]))),
            cron::Scheduled::Taken("owned by nobody".into()),
        ),
        // Left by a deleted Composition of the same name.
        (
            Some((scheduled_labels.clone(), earlier)),
            cron::Scheduled::Taken("owned by Composition nightly".into()),
        ),
    ] {
        let posted: Arc<Mutex<Option<serde_json::Value>>> = Arc::default();
        let post_log = posted.clone();
        let (client, _) = mocked_client(move |method, _, body| match (method, &existing) {
            ("POST", None) => {
                *post_log.lock().expect("posted") = Some(body.clone());
                (201, body.clone())
            }
            ("POST", Some(_)) => already_exists(),
            ("GET", Some((labels, owners))) => (
                200,
                json!({"apiVersion": "maestro.dev/v1alpha1", "kind": "CompositionRun",
                       "metadata": {"name": "nightly-123", "namespace": NS, "labels": labels,
                                    "ownerReferences": owners},
                       "spec": {"composition": "nightly"}}),
            ),
            _ => (500, json!({})),
        });
        let runs: Api<CompositionRun> = Api::namespaced(client, NS);
        let outcome = cron::create_run(&runs, &composition, &trigger, "nightly-123", NS)
            .await
            .expect("created or found");
        assert_eq!(outcome, expected);
        if let Some(body) = posted.lock().expect("posted").clone() {
            let owner = &body["metadata"]["ownerReferences"][0];
            assert_eq!(owner["uid"], "uid-nightly");
            assert_eq!(owner["kind"], "Composition");
            assert_eq!(owner["blockOwnerDeletion"], serde_json::Value::Null);
        }
    }
}

/// The operator reads a git trigger's Secret with its own right: the condition says the
/// same whether the Secret is missing, lacks the key or is short, and never its length.
#[tokio::test]
async fn an_unusable_webhook_secret_is_reported_the_same_whatever_is_wrong() {
    // The Secrets' values as the API serves them, in base64: 20 bytes and 8 bytes.
    let twenty_bytes = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM=";
    let eight_bytes = "MTIzNDU2Nzg=";
    let (client, _) = mocked_client(move |_, path, _| {
        let secret = |data: serde_json::Value| {
            (
                200,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": data}),
            )
        };
        match path.rsplit('/').next().unwrap_or_default() {
            "no-key" => secret(json!({"other": twenty_bytes})),
            "short" => secret(json!({"secret": eight_bytes})),
            "good" => secret(json!({"secret": twenty_bytes})),
            _ => (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "NotFound", "message": "not found", "code": 404}),
            ),
        }
    });
    let w = world(client);
    for (secret, problem) in [
        ("absent", true),
        ("no-key", true),
        ("short", true),
        ("good", false),
    ] {
        let composition: maestro_api::Composition = serde_json::from_value(json!({
            "apiVersion": "maestro.dev/v1alpha1", "kind": "Composition",
            "metadata": {"name": "c", "namespace": NS, "uid": "uid-c"},
            "spec": {"steps": [], "triggers": {"git": [
                {"repository": "https://git.example/acme/app", "secretRef": {"name": secret}}]}},
        }))
        .expect("composition");
        let problems = composition::webhook_secret_problems(&w.ctx, NS, &composition).await;
        let expected: Vec<String> = problem
            .then(|| {
                format!(
                    "spec.triggers.git[0].secretRef: key \"secret\" of Secret {secret} is \
                     missing, or shorter than 16 bytes (every delivery is refused until then)"
                )
            })
            .into_iter()
            .collect();
        assert_eq!(problems, expected, "{secret}");
    }
}

#[tokio::test]
async fn a_pod_just_created_counts_as_pending_until_the_cache_shows_it() {
    use kube::Resource as _;
    let (client, seen) = mocked_client(|method, _, body| match method {
        "POST" => (201, body.clone()),
        _ => (500, json!({})),
    });
    let mut w = world(client);
    let run = queued_run("r", "2026-01-01T00:00:00Z");
    let step = step_pod("r-greet-1");
    run::act(
        &run,
        NS,
        &Action::CreatePod(Box::new(step.clone())),
        None,
        &w.ctx,
    )
    .await
    .expect("created");
    // The cache does not show it yet: the next pass sees it Pending, and does not ask
    // for it again.
    let observed = run::observe_world(&run, NS, None, &w.ctx);
    let pod = observed
        .pod("r-greet-1")
        .expect("the created pod is observed");
    assert_eq!(pod.phase, maestro_engine::PodPhase::Pending);
    assert_eq!(seen.lock().expect("seen").len(), 1, "one create only");
    // Once the cache shows it, the cache's pod counts, and only once.
    let owner = run.controller_owner_ref(&()).expect("owner");
    let mut cached = pods::step_pod(&step, "r", NS, "build", owner, &w.ctx.settings.pods, None);
    cached.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase: Some("Running".into()),
        ..Default::default()
    });
    apply(&mut w.pods, cached);
    let observed = run::observe_world(&run, NS, None, &w.ctx);
    assert_eq!(observed.pods.len(), 1);
    assert_eq!(observed.pods[0].phase, maestro_engine::PodPhase::Running);
    assert!(
        w.ctx.created_unseen("uid-r", &[]).is_empty(),
        "a pod the cache showed is forgotten, so a deleted one is made again"
    );
}

#[tokio::test]
async fn a_failed_pod_create_names_the_pod() {
    let (client, _) = mocked_client(|_, _, _| {
        (
            500,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "InternalError", "message": "etcd is down", "code": 500}),
        )
    });
    let w = world(client);
    let parent = queued_run("r", "2026-01-01T00:00:00Z");
    let error = run::act(
        &parent,
        NS,
        &Action::CreatePod(Box::new(step_pod("r-greet-1"))),
        None,
        &w.ctx,
    )
    .await
    .expect_err("the API failed");
    assert!(
        matches!(&error, Error::CreatePod { name, .. } if name == "r-greet-1"),
        "{error}"
    );
    assert_eq!(error.metric_label(), "create_pod");
}

#[tokio::test]
async fn create_or_existing_tells_a_new_object_from_one_there_already() {
    let (client, _) = mocked_client(|_, _, body| {
        if body["metadata"]["name"] == "new" {
            (201, body.clone())
        } else {
            already_exists()
        }
    });
    let api: Api<Pod> = Api::namespaced(client, NS);
    let new = agent_pod("new", "pool", "Pending");
    let created = k8s::create_or_existing(&api, &new).await;
    assert_eq!(created.expect("created"), Created::Created);
    let old = agent_pod("old", "pool", "Pending");
    let created = k8s::create_or_existing(&api, &old).await;
    assert_eq!(created.expect("there already"), Created::Existed);
}

/// A Task whose description says where it came from.
fn task(name: &str, ns: &str, origin: &str) -> Task {
    serde_json::from_value(json!({
        "apiVersion": "maestro.dev/v1alpha1", "kind": "Task",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"builtin": "shell", "description": origin},
    }))
    .expect("task")
}

#[tokio::test]
async fn a_runs_tasks_come_from_its_namespace_first_then_the_library() {
    let (client, _) = mocked_client(|_, _, _| (500, json!({})));
    let mut w = world(client);
    apply(
        &mut w.tasks,
        task("build", "maestro-system", "library/build"),
    );
    apply(&mut w.tasks, task("build", NS, "team/build"));
    apply(&mut w.tasks, task("lint", "maestro-system", "library/lint"));
    apply(&mut w.tasks, task("deploy", "elsewhere", "other/deploy"));
    let spec: CompositionSpec = serde_json::from_value(json!({"steps": [
        {"name": "b", "task": "build"}, {"name": "l", "task": "lint"},
        {"name": "d", "task": "deploy"},
    ]}))
    .expect("spec");
    let found = world::tasks_of(&w.ctx, NS, &spec);
    let origin = |name: &str| found.get(name).and_then(|t| t.description.as_deref());
    assert_eq!(
        origin("build"),
        Some("team/build"),
        "the namespace's own wins"
    );
    assert_eq!(origin("lint"), Some("library/lint"), "then the library's");
    assert_eq!(origin("deploy"), None, "never another namespace's");
}

/// The Ready condition an Agent reconcile wrote, as (status, reason, message), and whether
/// it asked to create a claim; `claim_owner` owns the slot's claim, which is in the claim
/// cache if `cached` (else only the API server has it: it lacks Maestro's label).
async fn agent_reconciled_with_claim_owned_by(
    claim_owner: &str,
    cached: bool,
) -> (String, String, String, bool) {
    let claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "pool-cache-0", "namespace": NS,
                     "ownerReferences": [{"apiVersion": "maestro.dev/v1alpha1", "kind": "Agent",
                                          "name": "pool", "uid": claim_owner, "controller": true}]},
    });
    let patches: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let keep = patches.clone();
    let stored = claim.clone();
    let (client, seen) = mocked_client(move |method, path, body| {
        if method == "PATCH" {
            keep.lock().expect("patches").push(body.clone());
        }
        match (method, path.contains("persistentvolumeclaims")) {
            ("POST", true) => already_exists(),
            ("GET", true) => (200, stored.clone()),
            _ => (
                200,
                json!({"apiVersion": "maestro.dev/v1alpha1", "kind": "Agent",
                       "metadata": {"name": "pool", "namespace": NS}, "spec": {"capacity": 1}}),
            ),
        }
    });
    let mut w = world(client);
    let mut pool = agent("pool", 1, 1);
    pool.spec.cache = None;
    apply(&mut w.agents, pool.clone());
    if cached {
        apply(&mut w.claims, serde_json::from_value(claim).expect("claim"));
    }
    agent::reconcile(Arc::new(pool), Arc::new(w.ctx))
        .await
        .expect("reconcile");
    let asked_to_create = seen
        .lock()
        .expect("seen")
        .iter()
        .any(|r| r.starts_with("POST") && r.contains("persistentvolumeclaims"));
    assert_eq!(
        asked_to_create, !cached,
        "a claim is asked for only when not cached"
    );
    let patches = patches.lock().expect("patches");
    let ready = patches
        .iter()
        .flat_map(|p| {
            p["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|c| c["type"] == "Ready")
        .expect("a Ready condition written");
    let field = |k: &str| ready[k].as_str().unwrap_or_default().to_string();
    (
        field("status"),
        field("reason"),
        field("message"),
        asked_to_create,
    )
}

#[tokio::test]
async fn an_agent_is_ready_only_when_its_slot_claims_are_its_own() {
    let refused = "slot 0: claim pool-cache-0 exists but is not owned by this Agent";
    for cached in [true, false] {
        let (status, reason, message, _) =
            agent_reconciled_with_claim_owned_by("uid-pool", cached).await;
        assert_eq!(
            (status.as_str(), reason.as_str(), message.as_str()),
            ("True", "SlotsReady", "1 slots ready"),
            "its own claim (cached: {cached})"
        );
        let (status, reason, message, _) =
            agent_reconciled_with_claim_owned_by("uid-of-someone-else", cached).await;
        assert_eq!(
            (status.as_str(), reason.as_str(), message.as_str()),
            ("False", "CacheClaimFailed", refused),
            "a stranger's claim is neither taken nor replaced (cached: {cached})"
        );
    }
}

#[test]
fn push_started_runs_are_kept_a_day_so_replays_meet_their_name() {
    let hour = Duration::from_secs(3600);
    let manual = queued_run("manual", "2026-01-01T00:00:00Z");
    assert_eq!(run::kept_for(&manual, hour), hour);
    let mut pushed = queued_run("pushed", "2026-01-01T00:00:00Z");
    kube::ResourceExt::labels_mut(&mut pushed)
        .insert(maestro_api::labels::TRIGGER.into(), "git".into());
    assert_eq!(run::kept_for(&pushed, hour), 24 * hour);
    assert_eq!(run::kept_for(&pushed, 48 * hour), 48 * hour);
}

#[tokio::test]
async fn a_host_path_cache_needs_the_operators_opt_in() {
    let (client, seen) = mocked_client(|_, _, _| (500, json!({})));
    let mut w = world(client);
    let pool = agent("pool", 1, 1);
    let (made, ready) = agent::ensure_claims(&w.ctx, &pool).await;
    assert!(made.is_empty() && ready.is_ok(), "allowed: {ready:?}");
    w.ctx.settings.allow_host_path_caches = false;
    let (_, ready) = agent::ensure_claims(&w.ctx, &pool).await;
    let refused = ready.expect_err("hostPath without the opt-in");
    assert_eq!(refused.reason, "HostPathNotAllowed");
    assert!(
        refused.message.contains("--allow-host-path-caches"),
        "{refused:?}"
    );
    assert!(
        seen.lock().expect("requests").is_empty(),
        "no claim is made for a hostPath cache"
    );
}

#[test]
fn only_refusals_that_retrying_cannot_change_count_against_a_pod() {
    let status = |code: u16| {
        kube::Error::Api(
            kube::core::Status::failure(&format!("refused with {code}"), "Forbidden")
                .with_code(code)
                .boxed(),
        )
    };
    assert_eq!(
        run::lasting_refusal(&status(403)).as_deref(),
        Some("refused with 403")
    );
    assert!(run::lasting_refusal(&status(422)).is_some());
    for passing in [409, 429, 500, 503] {
        assert_eq!(run::lasting_refusal(&status(passing)), None, "{passing}");
    }
}

#[tokio::test]
async fn a_pod_refused_three_times_in_a_row_is_reported_and_a_success_forgets_it() {
    let (client, _) = mocked_client(|_, _, _| (500, json!({})));
    let w = world(client);
    let ctx = &w.ctx;
    for _ in 0..2 {
        ctx.create_refused("uid-r", "r-a-1", Some("forbidden".into()));
    }
    assert!(
        ctx.refused_creates("uid-r").is_empty(),
        "two refusals may be a hiccup"
    );
    ctx.create_refused("uid-r", "r-a-1", Some("forbidden: quota".into()));
    let refused = ctx.refused_creates("uid-r");
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].tries, refused[0].message.as_str()),
        (3, "forbidden: quota")
    );
    assert!(ctx.refused_creates("uid-other").is_empty());
    ctx.create_refused("uid-r", "r-a-1", None);
    assert!(ctx.refused_creates("uid-r").is_empty());
}

/// A one-step run of composition `build` (its `greet` step runs the shell Task), with
/// its finalizer, cached as the operator would find it, and the mocked API server's
/// answers: every status write is answered with the run as written (and kept, for the
/// next pass), a pod create as `pod_answer(number of pod creates so far)` says.
fn one_step_world(
    pod_answer: impl Fn(usize) -> u16 + Send + 'static,
) -> (World, Seen, Arc<Mutex<CompositionRun>>) {
    let mut run = queued_run("r", "2026-01-01T00:00:00Z");
    run.metadata.finalizers = Some(vec![super::context::RUN_FINALIZER.into()]);
    run.metadata.resource_version = Some("1".into());
    let current = Arc::new(Mutex::new(run));
    let stored = current.clone();
    let pod_creates = Arc::new(Mutex::new(0usize));
    let (client, seen) = mocked_client(move |method, path, body| {
        if method == "PATCH" && path.ends_with("/compositionruns/r/status") {
            let mut run = stored.lock().expect("run").clone();
            run.status = serde_json::from_value(body["status"].clone()).ok();
            // etcd's revision grows with every write: the cache's older copy is told apart.
            let version = run
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok());
            run.metadata.resource_version = Some((version.unwrap_or(1) + 1).to_string());
            *stored.lock().expect("run") = run.clone();
            return (200, serde_json::to_value(run).expect("json"));
        }
        if method == "POST" && path.ends_with("/pods") {
            let mut n = pod_creates.lock().expect("count");
            let code = pod_answer(*n);
            *n += 1;
            return match code {
                201 => (201, body.clone()),
                code => (
                    code,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "ServiceUnavailable", "message": "the API server is restarting",
                           "code": code}),
                ),
            };
        }
        // Events, and anything else the pass asks for on the way.
        (201, body.clone())
    });
    let mut w = world(client);
    let composition: maestro_api::Composition = serde_json::from_value(json!({
        "apiVersion": "maestro.dev/v1alpha1", "kind": "Composition",
        "metadata": {"name": "build", "namespace": NS, "uid": "uid-build"},
        "spec": {"steps": [{"name": "greet", "task": "shell",
                            "retries": {"limit": 1, "backoff": "1s"}}]},
    }))
    .expect("composition");
    apply(&mut w.compositions, DeserializeGuard(Ok(composition)));
    apply(&mut w.tasks, task("shell", NS, "the namespace's"));
    apply(
        &mut w.runs,
        DeserializeGuard(Ok(current.lock().expect("run").clone())),
    );
    (w, seen, current)
}

/// The run's status writes and pod creates, in order, as `status` and `pod NAME`.
fn writes(seen: &Seen) -> Vec<String> {
    seen.lock()
        .expect("seen")
        .iter()
        .filter_map(|s| {
            if s.ends_with("/compositionruns/r/status") {
                Some("status".to_string())
            } else if s.starts_with("POST") && s.ends_with("/pods") {
                Some("pod".to_string())
            } else {
                None
            }
        })
        .collect()
}

async fn reconcile_once(w: &Arc<Context>, run: &CompositionRun) -> Result<(), Error> {
    run::reconcile(Arc::new(DeserializeGuard(Ok(run.clone()))), w.clone())
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_new_pod_is_named_in_the_status_before_it_is_created() {
    // The first create fails (the API server went away after the status write); the next
    // pass asks for the same pod again, as the same attempt.
    let (w, seen, current) = one_step_world(|n| if n == 0 { 503 } else { 201 });
    let cached = current.lock().expect("run").clone();
    let ctx = Arc::new(w.ctx);
    let first = reconcile_once(&ctx, &cached).await;
    assert!(first.is_err(), "the failed create fails the pass");
    assert_eq!(
        writes(&seen),
        ["status", "pod"],
        "the status write comes first"
    );
    let written = current.lock().expect("run").clone();
    let step = &written.status.as_ref().expect("status").steps[0];
    assert_eq!(step.pod_name.as_deref(), Some("r-greet-1"));
    assert_eq!(step.phase, maestro_api::StepPhase::Running);

    // The cache still shows the run without status: the pass reads what it wrote.
    reconcile_once(&ctx, &cached).await.expect("second pass");
    assert_eq!(
        writes(&seen),
        ["status", "pod", "pod"],
        "the same pod is asked for again, and nothing else is written"
    );
    let creates: Vec<String> = seen
        .lock()
        .expect("seen")
        .iter()
        .filter(|s| s.starts_with("POST") && s.ends_with("/pods"))
        .cloned()
        .collect();
    assert_eq!(creates.len(), 2);
    let step = &current
        .lock()
        .expect("run")
        .clone()
        .status
        .expect("status")
        .steps[0];
    assert_eq!(
        (step.attempts, step.phase),
        (1, maestro_api::StepPhase::Running)
    );
}

#[tokio::test]
async fn a_named_pod_another_replica_cannot_see_is_not_created_again_as_its_attempt() {
    // One replica named the pod and created it; it died, and the pod was deleted before
    // the next leader looked. The next leader (a fresh process) finds the status naming
    // r-greet-1 and no such pod.
    let (first, _, current) = one_step_world(|_| 201);
    let cached = current.lock().expect("run").clone();
    reconcile_once(&Arc::new(first.ctx), &cached)
        .await
        .expect("the first leader's pass");
    let named = current.lock().expect("run").clone();
    assert_eq!(
        named.status.as_ref().expect("status").steps[0]
            .pod_name
            .as_deref(),
        Some("r-greet-1")
    );

    let (mut next, seen, next_current) = one_step_world(|_| 201);
    *next_current.lock().expect("run") = named.clone();
    apply(&mut next.runs, DeserializeGuard(Ok(named.clone())));
    reconcile_once(&Arc::new(next.ctx), &named)
        .await
        .expect("the next leader's pass");
    assert_eq!(writes(&seen), ["status"], "no pod is created again");
    let status = next_current
        .lock()
        .expect("run")
        .clone()
        .status
        .expect("status");
    let step = &status.steps[0];
    assert_eq!(step.phase, maestro_api::StepPhase::Retrying, "{step:?}");
    let message = step.message.clone().unwrap_or_default();
    assert!(
        message.contains("pod r-greet-1 was deleted before the step ended")
            && message.contains("or the operator stopped before creating it"),
        "{message}"
    );
}

#[tokio::test]
async fn an_agents_own_status_write_counts_until_the_cache_shows_it() {
    let (client, _) = mocked_client(|_, _, _| (500, json!({})));
    let w = world(client);
    let version = |v: &str| {
        let mut pool = agent("pool", 2, 2);
        pool.metadata.resource_version = Some(v.into());
        pool
    };
    let mut ours = version("7");
    ours.status = Some(maestro_api::AgentStatus {
        cache_misses: 2,
        ..Default::default()
    });
    w.ctx.agent_status_written(ours);
    // The cache still has the Agent before the write: the written one counts.
    let newer = w
        .ctx
        .agent_newer_than_cache(&version("6"))
        .expect("ours is newer");
    assert_eq!(newer.status.as_ref().map(|s| s.cache_misses), Some(2));
    // Another Agent of the same name (recreated: another UID) is not ours.
    let mut other = version("6");
    other.metadata.uid = Some("uid-another-pool".into());
    assert!(w.ctx.agent_newer_than_cache(&other).is_none());
    // Once the cache shows the write, the cache counts (and the note is gone).
    w.ctx.agent_status_written(version("7"));
    assert!(w.ctx.agent_newer_than_cache(&version("7")).is_none());
    assert!(w.ctx.agent_newer_than_cache(&version("6")).is_none());
}
