//! Triggers with real parts. Git webhooks: a real git repository (commits made with the
//! git CLI, served over HTTP), push payloads built from those commits and signed, POSTed
//! with curl from a pod through a cluster Service to the operator's webhook endpoint; the
//! started run's git step checks out exactly the pushed commit, and every refusal creates
//! nothing. Cron: a schedule of every minute starts a run named after its minute.

// A test file is its crate's root: its modules live in triggers/ by path.
#[path = "triggers/client.rs"]
mod client;
#[path = "triggers/repo.rs"]
mod repo;

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::{core::v1::Secret, events::v1::Event};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams, PostParams},
};
use maestro_api::{Composition, CompositionRun, RunPhase, labels};
use maestro_e2e::{
    maestro::Env,
    wait_for,
    world::{Sink, TempDir, node_ip},
};
use serde_json::json;

use client::{Delivery, deliver, free_port, webhook_service};
use repo::{github_push, gitlab_push, hmac_hex, make_repo, sha256_hex};

/// The webhook secret (GitHub's documentation example; the apostrophe tests quoting).
const SECRET: &str = "It's a Secret to Everybody";
const COMPOSITION: &str = "on-push";

async fn runs(env: &Env) -> Result<Vec<CompositionRun>> {
    let api: Api<CompositionRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    Ok(api.list(&ListParams::default()).await?.items)
}

fn signed_github(name: &'static str, delivery: &str, body: &str, key: &str) -> Result<Delivery> {
    Ok(Delivery {
        name,
        provider: "github",
        headers: vec![
            ("X-GitHub-Event".into(), "push".into()),
            ("X-GitHub-Delivery".into(), delivery.into()),
            (
                "X-Hub-Signature-256".into(),
                format!("sha256={}", hmac_hex(SECRET, body.as_bytes())?),
            ),
        ],
        body_key: Some(key.into()),
    })
}

fn assert_answer(results: &[(String, u16, String)], name: &str, code: u16, says: &str) {
    let (_, got, body) = results
        .iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("no result for {name}"));
    assert_eq!(
        *got, code,
        "{name}: status (answer {body}); all: {results:?}"
    );
    assert!(
        body.contains(says),
        "{name}: answer {body:?} lacks {says:?}"
    );
}

#[tokio::test]
async fn git_pushes_start_runs_at_the_pushed_commit_and_refusals_create_nothing() -> Result<()> {
    let started = std::time::Instant::now();
    let port = free_port()?;
    let env = Env::with_operator_args(
        "triggers-git",
        &["--webhook-addr".into(), format!("{}:{port}", node_ip())],
    )
    .await?;
    let ns = env.ns.name.clone();
    let dir = TempDir::new("maestro-triggers-git")?;
    let (pushed, docs_only) = make_repo(&dir.0)?;
    let sink = Sink::start(&dir.0).await?;
    let repo_url = format!("{}/app.git", sink.url);

    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "push-hook"},
        "stringData": {"secret": SECRET}
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    let compositions: Api<Composition> = Api::namespaced(env.client.clone(), &ns);
    let composition: Composition = serde_json::from_value(json!({
        "metadata": {"name": COMPOSITION},
        "spec": {
            "params": [
                {"name": "repository"}, {"name": "commitSha"},
                {"name": "ref", "default": ""}, {"name": "author", "default": ""},
                {"name": "message", "default": ""}
            ],
            "triggers": {"git": [{
                "repository": repo_url,
                "branches": ["main"],
                "paths": ["src/**"],
                "secretRef": {"name": "push-hook"}
            }]},
            // Into the workspace's root, a directory the volume owns, not the step's user;
            // then the user's own git reads that clone in a shell step.
            "steps": [{
                "name": "checkout",
                "task": "git",
                "with": {"repo": "{{ params.repository }}", "ref": "{{ params.commitSha }}"}
            }, {
                "name": "inspect",
                "task": "shell",
                "with": {"script": "git -C /workspace rev-parse HEAD > \"$MAESTRO_OUTPUTS/head\""}
            }]
        }
    }))?;
    compositions
        .create(&PostParams::default(), &composition)
        .await?;
    let url = webhook_service(&env, port).await?;
    eprintln!("setup: {:?}", started.elapsed());

    // The pushes, built from the real commits. Their payloads spell the repository in
    // another case: it is the same repository to the trigger, but no clone of it exists
    // (the server's paths are case-sensitive), so a run that cloned the payload's URL
    // instead of the trigger's would fail.
    let payload_url = format!("{}/App.git", sink.url);
    let push_main = github_push(&payload_url, "refs/heads/main", &pushed).to_string();
    let push_feature = github_push(&payload_url, "refs/heads/feature", &pushed).to_string();
    let push_docs = github_push(&payload_url, "refs/heads/main", &docs_only).to_string();
    // The same push to Gitea, as other bytes (a trailing newline): a body of its own.
    let push_gitea = format!("{push_main}\n");
    let other_repo = github_push(
        &format!("{}/other.git", sink.url),
        "refs/heads/main",
        &pushed,
    )
    .to_string();
    let gitlab = gitlab_push(&payload_url, "refs/heads/main", &pushed).to_string();
    // Another repository whose homepage (a field its owner sets to anything) names the
    // triggered one: a payload's homepage never matches a trigger.
    let mut homepage = github_push(
        &format!("{}/other.git", sink.url),
        "refs/heads/main",
        &pushed,
    );
    homepage["repository"]["homepage"] = repo_url.clone().into();
    let homepage = homepage.to_string();
    let payloads: Vec<(String, String)> = vec![
        ("push-main.json".into(), push_main.clone()),
        ("push-gitea.json".into(), push_gitea.clone()),
        ("push-feature.json".into(), push_feature.clone()),
        ("push-docs.json".into(), push_docs.clone()),
        ("other-repo.json".into(), other_repo.clone()),
        ("gitlab.json".into(), gitlab.clone()),
        ("homepage.json".into(), homepage.clone()),
        (
            "malformed.json".into(),
            r#"{"ref": "refs/heads/main", "after": "#.into(),
        ),
        (
            "ping.json".into(),
            r#"{"zen": "Keep it logically awesome."}"#.into(),
        ),
    ];

    // Refusals first: each answered, none creates a run.
    let github_headers = |delivery: &str, signature: &str| {
        vec![
            ("X-GitHub-Event".to_string(), "push".to_string()),
            ("X-GitHub-Delivery".to_string(), delivery.to_string()),
            ("X-Hub-Signature-256".to_string(), signature.to_string()),
        ]
    };
    let forged = format!(
        "sha256={}",
        hmac_hex("not the secret", push_main.as_bytes())?
    );
    let refusals = vec![
        Delivery {
            name: "forged",
            provider: "github",
            headers: github_headers("d-forged", &forged),
            body_key: Some("push-main.json".into()),
        },
        Delivery {
            name: "unsigned",
            provider: "github",
            headers: github_headers("d-unsigned", "")
                .into_iter()
                .take(2)
                .collect(),
            body_key: Some("push-main.json".into()),
        },
        Delivery {
            name: "oversized",
            provider: "github",
            headers: github_headers("d-big", "sha256=00"),
            body_key: None,
        },
        Delivery {
            name: "malformed",
            provider: "github",
            headers: github_headers("d-malformed", "sha256=00"),
            body_key: Some("malformed.json".into()),
        },
        signed_github("unknown-repo", "d-other", &other_repo, "other-repo.json")?,
        signed_github("homepage", "d-homepage", &homepage, "homepage.json")?,
        signed_github(
            "other-branch",
            "d-feature",
            &push_feature,
            "push-feature.json",
        )?,
        signed_github("docs-only", "d-docs", &push_docs, "push-docs.json")?,
        Delivery {
            name: "gitlab-bad-token",
            provider: "gitlab",
            headers: vec![
                ("X-Gitlab-Event".into(), "Push Hook".into()),
                ("X-Gitlab-Event-UUID".into(), "g-bad".into()),
                ("X-Gitlab-Token".into(), "guess".into()),
            ],
            body_key: Some("gitlab.json".into()),
        },
        Delivery {
            name: "gitea-forged",
            provider: "gitea",
            headers: vec![
                ("X-Gitea-Event".into(), "push".into()),
                ("X-Gitea-Delivery".into(), "t-bad".into()),
                (
                    "X-Gitea-Signature".into(),
                    hmac_hex("nope", push_main.as_bytes())?,
                ),
            ],
            body_key: Some("push-main.json".into()),
        },
        Delivery {
            name: "ping",
            provider: "github",
            headers: vec![
                ("X-GitHub-Event".into(), "ping".into()),
                ("X-GitHub-Delivery".into(), "d-ping".into()),
            ],
            body_key: Some("ping.json".into()),
        },
    ];
    let results = deliver(&env, "refusals", &url, &payloads, &refusals).await?;
    eprintln!("refusals delivered: {:?}", started.elapsed());
    assert_answer(&results, "forged", 401, "bad signature");
    assert_answer(&results, "unsigned", 401, "missing signature");
    assert_answer(&results, "oversized", 413, "larger than 1048576 bytes");
    assert_answer(&results, "malformed", 400, "malformed push payload");
    // Signed, but no trigger is for this repository: the same answer as a forgery, so
    // the endpoint does not tell which repositories have triggers.
    assert_answer(&results, "unknown-repo", 401, "bad signature");
    assert_answer(&results, "homepage", 401, "bad signature");
    assert_answer(&results, "other-branch", 202, "no matching composition");
    assert_answer(&results, "docs-only", 202, "no changed file matches");
    assert_answer(&results, "gitlab-bad-token", 401, "bad signature");
    assert_answer(&results, "gitea-forged", 401, "bad signature");
    assert_answer(&results, "ping", 200, "pong");
    let none = runs(&env).await?;
    assert!(
        none.is_empty(),
        "refused deliveries created runs: {:?}",
        none.iter().map(|r| r.name_any()).collect::<Vec<_>>()
    );

    // Authentic pushes, one redelivered and one replayed under a new delivery id: three
    // runs, not five.
    let accepted = vec![
        signed_github("github", "d-main", &push_main, "push-main.json")?,
        signed_github("github-again", "d-main", &push_main, "push-main.json")?,
        signed_github("github-replayed", "d-replay", &push_main, "push-main.json")?,
        Delivery {
            name: "gitlab",
            provider: "gitlab",
            headers: vec![
                ("X-Gitlab-Event".into(), "Push Hook".into()),
                ("X-Gitlab-Event-UUID".into(), "g-main".into()),
                ("X-Gitlab-Token".into(), SECRET.into()),
            ],
            body_key: Some("gitlab.json".into()),
        },
        Delivery {
            name: "gitea",
            provider: "gitea",
            headers: vec![
                ("X-Gitea-Event".into(), "push".into()),
                ("X-Gitea-Delivery".into(), "t-main".into()),
                (
                    "X-Gitea-Signature".into(),
                    hmac_hex(SECRET, push_gitea.as_bytes())?,
                ),
            ],
            body_key: Some("push-gitea.json".into()),
        },
    ];
    let results = deliver(&env, "pushes", &url, &payloads, &accepted).await?;
    eprintln!("pushes delivered: {:?}", started.elapsed());
    // Runs are named by the signed body's SHA-256 (computed here by openssl).
    let run_of = |body: &str| -> Result<String> {
        Ok(labels::webhook_run_name(
            COMPOSITION,
            &sha256_hex(body.as_bytes())?,
        ))
    };
    let github_run = run_of(&push_main)?;
    assert_answer(&results, "github", 201, &github_run);
    assert_answer(&results, "github-again", 200, "duplicate delivery");
    assert_answer(&results, "github-replayed", 200, &github_run);
    assert_answer(&results, "gitlab", 201, &run_of(&gitlab)?);
    assert_answer(&results, "gitea", 201, &run_of(&push_gitea)?);
    let created = runs(&env).await?;
    assert_eq!(
        created.len(),
        3,
        "one run per signed body: {:?}",
        created.iter().map(|r| r.name_any()).collect::<Vec<_>>()
    );

    for run in &created {
        let name = run.name_any();
        assert_eq!(
            run.labels().get(labels::TRIGGER).map(String::as_str),
            Some("git")
        );
        assert_eq!(run.spec.params["commitSha"], pushed.sha, "{name}");
        assert_eq!(run.spec.params["ref"], "refs/heads/main", "{name}");
        assert_eq!(run.spec.params["repository"], repo_url, "{name}");
        let done = env.wait_finished(&name, Duration::from_secs(240)).await?;
        let status = done.status.unwrap_or_default();
        assert_eq!(status.phase, RunPhase::Succeeded, "{name}: {status:?}");
        let checkout = status
            .steps
            .iter()
            .find(|s| s.name == "checkout")
            .context("no checkout step")?;
        assert_eq!(
            checkout.outputs.get("commit"),
            Some(&pushed.sha),
            "{name}: the git step checked out the pushed commit"
        );
        let inspect = status
            .steps
            .iter()
            .find(|s| s.name == "inspect")
            .context("no inspect step")?;
        assert_eq!(
            inspect.outputs.get("head").map(|h| h.trim()),
            Some(pushed.sha.as_str()),
            "{name}: git in a shell step reads the clone in the workspace's root"
        );
    }
    let github = created
        .iter()
        .find(|r| r.name_any() == github_run)
        .context("the GitHub run")?;
    assert_eq!(github.spec.params["author"], "Dev Eloper");
    assert_eq!(
        github.spec.params["message"],
        "Second version\n\nwith a library"
    );
    eprintln!("runs checked: {:?}", started.elapsed());
    Ok(())
}

/// A time in every-minute's status, once set, in seconds since the epoch.
async fn status_time(
    compositions: &Api<Composition>,
    what: &str,
    timeout: Duration,
    pick: fn(
        maestro_api::CompositionStatus,
    ) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> Result<i64> {
    wait_for(what, timeout, || async {
        let c = compositions
            .get("every-minute")
            .await
            .map_err(|e| e.to_string())?;
        c.status
            .and_then(pick)
            .map(|t| t.0.as_second())
            .ok_or_else(|| "not set".to_string())
    })
    .await
}

#[tokio::test]
async fn a_schedule_of_every_minute_starts_a_run_named_after_its_minute() -> Result<()> {
    let started = std::time::Instant::now();
    let env = Env::new("triggers-cron").await?;
    let ns = env.ns.name.clone();
    let compositions: Api<Composition> = Api::namespaced(env.client.clone(), &ns);
    let composition: Composition = serde_json::from_value(json!({
        "metadata": {"name": "every-minute"},
        "spec": {
            "params": [{"name": "who", "default": "nobody"}],
            "triggers": {"cron": {
                "schedule": "* * * * *",
                "timeZone": "Europe/Paris",
                "concurrencyPolicy": "Forbid",
                "params": {"who": "cron"}
            }},
            "steps": [{"name": "hello", "task": "shell",
                       "with": {"script": "echo \"hello $WHO\"", "env": {"WHO": "{{ params.who }}"}}}]
        }
    }))?;
    compositions
        .create(&PostParams::default(), &composition)
        .await?;
    // The examples are valid and Ready too (their schedule and webhook never fire here).
    env.apply_example_ready("triggers/nightly.yaml").await?;
    // As the example's comment says: until its Secret exists the composition is Invalid
    // and names the Secret; once it is created the composition becomes Ready by itself.
    let on_push = env.apply_example("triggers/on-push.yaml").await?;
    let missing = wait_for(
        "build-on-push to be Invalid for its missing Secret",
        Duration::from_secs(30),
        || async {
            let found = compositions
                .get("build-on-push")
                .await
                .map_err(|e| e.to_string())?;
            let ready = found
                .status
                .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
                .ok_or("no Ready condition yet")?;
            match ready.status.as_str() {
                "False" => Ok(ready.message),
                other => Err(format!("Ready is {other}")),
            }
        },
    )
    .await?;
    // Missing and short alike, and no length: the operator reads the Secret with its own
    // right, so the condition says no more than whether it can verify deliveries.
    assert!(
        missing
            .contains("key \"secret\" of Secret app-webhook is missing, or shorter than 16 bytes"),
        "the condition names the unusable Secret: {missing}"
    );
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    let app_webhook: Secret = serde_json::from_value(json!({
        "metadata": {"name": "app-webhook"},
        "stringData": {"secret": "0123456789abcdef0123456789abcdef"}
    }))?;
    secrets.create(&PostParams::default(), &app_webhook).await?;
    env.wait_compositions_ready(&on_push).await?;
    refuses_bad_triggers(&compositions, &ns).await?;
    let api: Api<CompositionRun> = Api::namespaced(env.client.clone(), &ns);
    let run = wait_for(
        "the schedule to start a run",
        Duration::from_secs(130),
        || async {
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .next()
                .ok_or_else(|| "no run yet".to_string())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\noperator log:\n{}", env.operator.log_tail()))?;
    eprintln!("first scheduled run after {:?}", started.elapsed());
    let created = run
        .metadata
        .creation_timestamp
        .clone()
        .context("no creationTimestamp")?
        .0
        .as_second();
    let minute = created - created.rem_euclid(60);
    let name = run.name_any();
    assert_eq!(
        name,
        format!("every-minute-{}", minute / 60),
        "named after its minute"
    );
    assert!(
        created - minute <= 10,
        "run created {} s after its minute",
        created - minute
    );
    assert_eq!(
        run.labels().get(labels::TRIGGER).map(String::as_str),
        Some("cron")
    );
    assert_eq!(run.spec.params["who"], "cron");
    let schedule_time = status_time(
        &compositions,
        "status.lastScheduleTime",
        Duration::from_secs(30),
        |s| s.last_schedule_time,
    )
    .await?;
    assert_eq!(
        schedule_time, minute,
        "lastScheduleTime is the run's minute"
    );
    let done = env.wait_finished(&name, Duration::from_secs(120)).await?;
    assert_eq!(done.status.map(|s| s.phase), Some(RunPhase::Succeeded));
    // `kubectl describe comp every-minute` tells what the schedule did.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &ns);
    wait_for(
        "a ScheduleStarted Event on the composition",
        Duration::from_secs(30),
        || async {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .iter()
                .find(|e| {
                    e.reason.as_deref() == Some("ScheduleStarted")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some("every-minute")
                        && e.note.as_deref().is_some_and(|n| n.contains(name.as_str()))
                })
                .map(|_| ())
                .ok_or_else(|| format!("{} events, none about the schedule", list.items.len()))
        },
    )
    .await?;

    // The next minute starts the next run, on time (the first one has ended, so Forbid
    // lets it start).
    let next = format!("every-minute-{}", minute / 60 + 1);
    let second = wait_for(
        &format!("run {next} on the next minute"),
        Duration::from_secs(75),
        || async {
            api.get_opt(&next)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not created yet".to_string())
        },
    )
    .await?;
    let second_created = second
        .metadata
        .creation_timestamp
        .context("no creationTimestamp")?
        .0
        .as_second();
    assert!(
        (minute + 60..=minute + 70).contains(&second_created),
        "the second run was created {} s after the first's minute",
        second_created - minute
    );

    // Someone who may create runs (a runner) takes the name of the minute after, with
    // params of their own, before the schedule gets there. The schedule must not count the
    // squatter as its run: it skips that minute, says so on the composition, and leaves
    // the squatter as it was (not owned, not labelled as scheduled).
    let third = format!("every-minute-{}", minute / 60 + 2);
    let squatter: CompositionRun = serde_json::from_value(json!({
        "metadata": {"name": third},
        "spec": {"composition": "every-minute", "params": {"who": "squatter"}}
    }))?;
    api.create(&PostParams::default(), &squatter).await?;
    let skipped = status_time(
        &compositions,
        "status.lastSkippedTime of the squatted minute",
        Duration::from_secs(90),
        |s| s.last_skipped_time,
    )
    .await?;
    assert_eq!(
        skipped,
        minute + 120,
        "the squatted minute counts as skipped"
    );
    let note = wait_for(
        "a ScheduleNameTaken Event on the composition",
        Duration::from_secs(30),
        || async {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .iter()
                .find(|e| {
                    e.reason.as_deref() == Some("ScheduleNameTaken")
                        && e.type_.as_deref() == Some("Warning")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some("every-minute")
                })
                .and_then(|e| e.note.clone())
                .ok_or_else(|| "no ScheduleNameTaken Event yet".to_string())
        },
    )
    .await?;
    assert!(
        note.contains(&format!(
            "run {third} already exists and is not this schedule's"
        )),
        "the warning names the squatted run: {note}"
    );
    let squatter = api.get(&third).await?;
    assert!(
        squatter.owner_references().is_empty(),
        "the schedule adopted the squatter: {:?}",
        squatter.owner_references()
    );
    assert_eq!(squatter.labels().get(labels::TRIGGER), None);
    assert_eq!(squatter.spec.params["who"], "squatter");
    eprintln!("cron test: {:?}", started.elapsed());
    Ok(())
}

/// A concurrency policy that does not exist is refused at admission; a schedule that does
/// not parse makes the composition Invalid with a message naming it.
async fn refuses_bad_triggers(compositions: &Api<Composition>, namespace: &str) -> Result<()> {
    let with_cron = |name: &str, cron: serde_json::Value| {
        json!({
            "apiVersion": "maestro.dev/v1alpha1",
            "kind": "Composition",
            "metadata": {"name": name},
            "spec": {
                "triggers": {"cron": cron},
                "steps": [{"name": "hello", "task": "shell", "with": {"script": "true"}}]
            }
        })
    };
    // Untyped, as kubectl would send it: the Rust type cannot even hold this policy.
    let untyped: Api<DynamicObject> = Api::namespaced_with(
        compositions.clone().into_client(),
        namespace,
        &ApiResource::erase::<Composition>(&()),
    );
    let bad_policy: DynamicObject = serde_json::from_value(with_cron(
        "bad-policy",
        json!({"schedule": "@daily", "concurrencyPolicy": "Sometimes"}),
    ))?;
    let refused = untyped.create(&PostParams::default(), &bad_policy).await;
    let message = format!("{refused:?}");
    assert!(
        refused.is_err() && message.contains("concurrencyPolicy"),
        "{message}"
    );
    compositions
        .create(
            &PostParams::default(),
            &serde_json::from_value(with_cron("bad-schedule", json!({"schedule": "at noon"})))?,
        )
        .await?;
    wait_for(
        "bad-schedule to be Invalid",
        Duration::from_secs(30),
        || async {
            let c = compositions
                .get("bad-schedule")
                .await
                .map_err(|e| e.to_string())?;
            let ready = c
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .find(|c| c.type_ == "Ready")
                .cloned();
            match ready {
                Some(r) if r.reason == "Invalid" && r.message.contains("invalid schedule") => {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await?;
    Ok(())
}
