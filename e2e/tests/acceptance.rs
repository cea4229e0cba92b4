//! The seed's seven-step delivery cycle end to end on the local cluster, with its real
//! tools: the war from a local HTTP server in a Maven-repository layout, an instance from
//! moto (a real EC2 API endpoint), the deploy to a Tomcat (Debian's tomcat10, a Deployment
//! and Service in the test namespace standing in for the instance) through its manager,
//! the tests from a git repository served over HTTP, run with Maven (JUnit 5 tests that call
//! the deployed app), an approval, the deprovision. Also: failing tests (the step names the
//! failed test, onFailure notifies QA, the instance is still terminated), a run deleted in
//! the middle (the finalizer terminates its instance), a rerun from the failed step, and a
//! second run on an Agent slot whose Maven repository is warm.

use std::{path::Path, time::Duration};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use maestro_api::{CompositionRun, RunPhase, StepPhase, StepStatus};
use maestro_e2e::{
    maestro::Env,
    wait_for,
    world::{Moto, Sink, TempDir, run},
};
use serde_json::json;

/// Maven's first run in a fresh workspace downloads its plugins and JUnit from Maven
/// Central; a cycle takes a minute or two.
const RUN_TIMEOUT: Duration = Duration::from_secs(360);
const TOMCAT_TIMEOUT: Duration = Duration::from_secs(120);
/// The manager's answer to a good deploy, which the deploy step's log shows.
const DEPLOYED: &str = "OK - Deployed application at context path [/app]";

/// The release and the tests' git repository, made by e2e/servers/make-world.sh (the
/// demo uses the same script); returns the war's bytes.
fn make_world(root: &Path) -> anyhow::Result<Vec<u8>> {
    let script = maestro_e2e::maestro::repo_root().join("e2e/servers/make-world.sh");
    run(
        root,
        "bash",
        &[&script.display().to_string(), &root.display().to_string()],
    )?;
    Ok(std::fs::read(
        root.join("com/acme/app/1.4.2/app-1.4.2.war"),
    )?)
}

struct World {
    env: Env,
    sink: Sink,
    moto: Moto,
    _dir: TempDir,
    war: Vec<u8>,
    /// The Tomcat Service's base URL, http://<cluster IP>:8080.
    tomcat: String,
    /// The deploy user's password, for the rerun test's own deploy.
    tomcat_password: String,
}

async fn world(prefix: &str) -> anyhow::Result<World> {
    let env = Env::new(prefix).await?;
    let dir = TempDir::new(&format!("maestro-{prefix}"))?;
    let war = make_world(&dir.0)?;
    let sink = Sink::start(&dir.0).await?;
    let moto = Moto::start().await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "aws-credentials"},
        "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    // A password of this test's own: the Tomcat image holds none.
    let tomcat_password = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let manager: Secret = serde_json::from_value(json!({
        "metadata": {"name": "tomcat-manager"},
        "stringData": {"TOMCAT_MANAGER_USER": "deployer", "TOMCAT_MANAGER_PASSWORD": tomcat_password}
    }))?;
    secrets.create(&PostParams::default(), &manager).await?;
    env.apply_example("acceptance-tests/tomcat.yaml").await?;
    env.apply_example("acceptance-tests/composition.yaml")
        .await?;
    env.apply_example("acceptance-tests/notify-qa.yaml").await?;
    let tomcat = tomcat_ready(&env).await?;
    Ok(World {
        env,
        sink,
        moto,
        _dir: dir,
        war,
        tomcat,
        tomcat_password,
    })
}

/// Waits for the Tomcat Deployment to be ready and returns its Service's URL.
async fn tomcat_ready(env: &Env) -> anyhow::Result<String> {
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns.name);
    wait_for("the Tomcat to be ready", TOMCAT_TIMEOUT, || async {
        let d = deployments.get("tomcat").await.map_err(|e| e.to_string())?;
        let status = d.status.unwrap_or_default();
        match status.ready_replicas {
            Some(n) if n >= 1 => Ok(()),
            _ => Err(format!("status: {:?}", status.conditions)),
        }
    })
    .await?;
    let services: Api<Service> = Api::namespaced(env.client.clone(), &env.ns.name);
    let ip = services
        .get("tomcat")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_default();
    anyhow::ensure!(!ip.is_empty(), "the tomcat Service has no cluster IP");
    Ok(format!("http://{ip}:8080"))
}

impl World {
    async fn start(&self, tests_ref: &str) -> anyhow::Result<String> {
        let url = self.sink.url.clone();
        let repo = format!("{url}/qa/acceptance.git");
        let notify = format!("{url}/notify");
        self.env
            .start_run(
                "acceptance-tests",
                &[
                    ("artifactRepo", url.as_str()),
                    ("tomcatUrl", self.tomcat.as_str()),
                    ("testsRepo", repo.as_str()),
                    ("testsRef", tests_ref),
                    ("awsEndpoint", self.moto.url.as_str()),
                    ("notifyUrl", notify.as_str()),
                ],
            )
            .await
    }

    /// What the Tomcat answers at `path` (curl from this machine, through the Service).
    async fn tomcat_get(&self, path: &str) -> anyhow::Result<String> {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "-m", "20", &format!("{}{path}", self.tomcat)])
            .output()
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The run's step pods' log (kubectl maestro logs).
    async fn log(&self, run: &str) -> anyhow::Result<String> {
        self.env.cli(&["logs", run]).await
    }
}

fn step<'a>(run: &'a CompositionRun, name: &str) -> Option<&'a StepStatus> {
    run.status.as_ref()?.steps.iter().find(|s| s.name == name)
}

/// Seconds from a step's start to its end.
fn step_seconds(run: &CompositionRun, name: &str) -> Option<i64> {
    let s = step(run, name)?;
    let (start, end) = (s.start_time.as_ref()?, s.finish_time.as_ref()?);
    Some(end.0.as_second() - start.0.as_second())
}

fn step_phase(run: &CompositionRun, step: &str) -> Option<StepPhase> {
    run.status
        .as_ref()?
        .steps
        .iter()
        .find(|s| s.name == step)
        .map(|s| s.phase)
}

#[tokio::test]
async fn acceptance_cycle_succeeds_and_leaves_no_instance() -> anyhow::Result<()> {
    let w = world("accept-ok").await?;
    let name = w.start("main").await?;
    let waiting = w
        .env
        .wait_phase(
            &name,
            &[RunPhase::WaitingApproval, RunPhase::Failed],
            RUN_TIMEOUT,
        )
        .await?;
    let status = waiting.status.clone().unwrap_or_default();
    assert_eq!(
        status.phase,
        RunPhase::WaitingApproval,
        "status: {status:#?}"
    );

    // The instance runs, it is in the ledger, and the war reached the deploy endpoint.
    let live = w.moto.live_instances().await?;
    assert_eq!(live.len(), 1, "instances: {live:?}");
    let ledger: Vec<&str> = status.resources.iter().map(|r| r.id.as_str()).collect();
    assert!(
        live[0].starts_with(ledger.first().copied().unwrap_or("none")),
        "ledger {ledger:?}, moto {live:?}"
    );
    // The war the run fetched is what Tomcat serves at /app, and Maven's tests passed.
    let deploy = step(&waiting, "deploy")
        .map(|s| s.outputs.clone())
        .unwrap_or_default();
    assert_eq!(
        deploy.get("answer").map(String::as_str),
        Some(DEPLOYED),
        "{deploy:?}"
    );
    assert_eq!(deploy.get("url"), Some(&format!("{}/app", w.tomcat)));
    let fetched = step(&waiting, "fetch-war")
        .map(|s| s.outputs.clone())
        .unwrap_or_default();
    assert_eq!(fetched.get("bytes"), Some(&w.war.len().to_string()));
    let page = w.tomcat_get("/app/").await?;
    assert_eq!(page.trim(), "Hello from app 1.4.2 at /app");
    let tests = step(&waiting, "run-tests")
        .map(|s| s.outputs.clone())
        .unwrap_or_default();
    assert_eq!(
        (
            tests.get("testsRun").map(String::as_str),
            tests.get("failures").map(String::as_str)
        ),
        (Some("2"), Some("0")),
        "run-tests outputs {tests:?}"
    );
    let checkout = status
        .steps
        .iter()
        .find(|s| s.name == "checkout-tests")
        .map(|s| s.outputs.clone())
        .unwrap_or_default();
    assert_eq!(
        checkout.get("commit").map(String::len),
        Some(40),
        "checkout outputs {checkout:?}"
    );

    w.env.cli(&["approve", &name, "sign-off"]).await?;
    let done = w.env.wait_finished(&name, RUN_TIMEOUT).await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Succeeded, "status: {status:#?}");
    assert!(
        status.resources.is_empty(),
        "ledger: {:?}",
        status.resources
    );
    assert_eq!(step_phase(&done, "deprovision"), Some(StepPhase::Succeeded));
    assert!(
        w.moto.live_instances().await?.is_empty(),
        "moto still runs an instance"
    );

    let log = w.log(&name).await?;
    // What a user reads in `kubectl maestro logs`: Tomcat's answer and Maven's summary.
    for line in log
        .lines()
        .filter(|l| l.contains(DEPLOYED) || l.contains("Tests run:") || l.contains("maven: mvn"))
    {
        println!("acceptance: {line}");
    }
    assert!(
        log.lines()
            .any(|l| l.starts_with("[run-tests") && l.contains("Tests run: 2, Failures: 0")),
        "log:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("[deploy") && l.contains(DEPLOYED)),
        "log:\n{log}"
    );
    // Plain text: no terminal escapes (Maven's colour codes) in what `logs` shows.
    assert!(!log.contains('\u{1b}'), "escape codes in the log:\n{log:?}");

    // Maven's counts are report values: the operator exports them to Prometheus.
    let metrics_addr = wait_for(
        "the operator's metrics address",
        Duration::from_secs(10),
        || async { maestro_e2e::maestro::metrics_addr_from_log(&w.env.operator.log) },
    )
    .await?;
    let metrics = run(
        Path::new("."),
        "curl",
        &["-fsS", &format!("http://{metrics_addr}/metrics")],
    )?;
    let tests_run =
        r#"maestro_task_report{composition="acceptance-tests",key="testsRun",step="run-tests"} 2"#;
    assert!(
        metrics.lines().any(|l| l == tests_run),
        "no {tests_run} in:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("maestro_task_report"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn failing_tests_notify_qa_and_still_terminate_the_instance() -> anyhow::Result<()> {
    let w = world("accept-fail").await?;
    let name = w.start("failing").await?;
    let done = w.env.wait_finished(&name, RUN_TIMEOUT).await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Failed, "status: {status:#?}");
    assert_eq!(step_phase(&done, "run-tests"), Some(StepPhase::Failed));
    let message = step(&done, "run-tests")
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains(
            "1 of 3 tests failed: AppTest.loginPageAnswers (expected: <200> but was: <404>)"
        ),
        "run-tests message: {message}"
    );
    let tests = step(&done, "run-tests")
        .map(|s| s.outputs.clone())
        .unwrap_or_default();
    assert_eq!(
        tests.get("failures").map(String::as_str),
        Some("1"),
        "{tests:?}"
    );
    assert_eq!(step_phase(&done, "deprovision"), Some(StepPhase::Skipped));
    // The cleanup, not the skipped deprovision step, terminated the instance.
    assert_eq!(
        status.cleanup.as_ref().map(|c| c.phase),
        Some(StepPhase::Succeeded),
        "{:?}",
        status.cleanup
    );
    assert!(status.resources.is_empty());
    assert!(
        w.moto.live_instances().await?.is_empty(),
        "moto still runs an instance"
    );
    let pods = w.env.step_pods(&name).await?;
    assert_eq!(
        pods.iter().filter(|(s, _, _)| s == "run-tests").count(),
        2,
        "one retry: {pods:?}"
    );

    // onFailure started notify-qa, which told the webhook what failed.
    let notify_run = status.on_failure_run.clone().unwrap_or_default();
    let notified = w.env.wait_finished(&notify_run, RUN_TIMEOUT).await?;
    assert_eq!(notified.status.map(|s| s.phase), Some(RunPhase::Succeeded));
    let records = w.sink.records().await?;
    let note = records
        .iter()
        .find(|r| r["method"] == "POST" && r["path"] == "/notify");
    let text = note.and_then(|r| r["body"].as_str()).unwrap_or_default();
    assert!(
        text.contains(&name)
            && text.contains("run-tests")
            && text.contains("AppTest.loginPageAnswers"),
        "notification: {text:?}"
    );
    Ok(())
}

#[tokio::test]
async fn deleting_a_run_midway_terminates_its_instance() -> anyhow::Result<()> {
    let w = world("accept-delete").await?;
    let name = w.start("main").await?;
    w.env
        .wait_phase(&name, &[RunPhase::WaitingApproval], RUN_TIMEOUT)
        .await?;
    assert_eq!(w.moto.live_instances().await?.len(), 1);

    let runs: Api<CompositionRun> = Api::namespaced(w.env.client.clone(), &w.env.ns.name);
    runs.delete(&name, &DeleteParams::default()).await?;
    wait_for(
        "the deleted run to go away after its cleanup",
        RUN_TIMEOUT,
        || async {
            match runs.get_opt(&name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(r) => Err(format!(
                    "still there: {:?}",
                    r.status.map(|s| (s.phase, s.cleanup))
                )),
            }
        },
    )
    .await?;
    assert!(
        w.moto.live_instances().await?.is_empty(),
        "moto still runs an instance"
    );
    Ok(())
}

/// The issue's rerun: the seed's cycle, held for a rerun (`rerunWindow`), whose tests fail
/// for a reason outside the release (the environment). After the fix, `kubectl maestro
/// rerun` runs only run-tests, sign-off and deprovision, against the same instance and in
/// the same workspace (the checked-out tests and the downloaded war are still there); the
/// source hands its ledger over and removes nothing, and once the rerun ends no instance is
/// left.
#[tokio::test]
async fn a_rerun_runs_only_the_failed_tests_and_what_follows_on_the_same_instance()
-> anyhow::Result<()> {
    let w = world("accept-rerun").await?;
    let compositions: Api<maestro_api::Composition> =
        Api::namespaced(w.env.client.clone(), &w.env.ns.name);
    compositions
        .patch(
            "acceptance-tests",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"rerunWindow": "10m"}})),
        )
        .await?;
    let name = w.start("until-fixed").await?;
    let failed = w.env.wait_finished(&name, RUN_TIMEOUT).await?;
    let status = failed.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Failed, "status: {status:#?}");
    assert_eq!(step_phase(&failed, "run-tests"), Some(StepPhase::Failed));
    // Held, not removed: the instance is still there for the rerun.
    assert_eq!(
        status.cleanup.as_ref().map(|c| c.phase),
        Some(StepPhase::Pending),
        "{:?}",
        status.cleanup
    );
    let instance = status
        .resources
        .first()
        .map(|r| r.id.clone())
        .unwrap_or_default();
    let live = w.moto.live_instances().await?;
    assert!(
        live.len() == 1 && live[0].starts_with(&instance),
        "ledger {instance:?}, moto {live:?}"
    );

    // The environment is fixed (the Tomcat serves /fixed/ now); rerun from the failed step.
    w.deploy_fixed().await?;
    let said = w.env.cli(&["rerun", &name]).await?;
    let rerun = said
        .split_whitespace()
        .find_map(|word| word.strip_prefix("compositionrun/"))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no run name in {said:?}"))?;
    let waiting = w
        .env
        .wait_phase(
            &rerun,
            &[
                RunPhase::WaitingApproval,
                RunPhase::Failed,
                RunPhase::Invalid,
            ],
            RUN_TIMEOUT,
        )
        .await?;
    let rs = waiting.status.clone().unwrap_or_default();
    assert_eq!(rs.phase, RunPhase::WaitingApproval, "rerun status: {rs:#?}");
    for reused in ["fetch-war", "provision", "deploy", "checkout-tests"] {
        let st = rs.steps.iter().find(|s| s.name == reused);
        assert_eq!(
            st.map(|s| (s.phase, s.message.clone().unwrap_or_default())),
            Some((StepPhase::Succeeded, format!("reused from {name}"))),
            "{reused}: {st:?}"
        );
    }
    // Only run-tests ran a pod (once: the environment is fixed).
    let pods = w.env.step_pods(&rerun).await?;
    let steps: Vec<&str> = pods.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(steps, ["run-tests"], "the rerun's pods: {pods:?}");
    // The same instance, now in the rerun's ledger, still naming the run that tagged it.
    let ledger: Vec<(String, Option<String>)> = rs
        .resources
        .iter()
        .map(|r| (r.id.clone(), r.run.clone()))
        .collect();
    assert_eq!(ledger, [(instance.clone(), Some(name.clone()))]);
    assert_eq!(w.moto.live_instances().await?.len(), 1);
    // The source handed it over and will remove nothing.
    let runs: Api<CompositionRun> = Api::namespaced(w.env.client.clone(), &w.env.ns.name);
    let source = runs.get(&name).await?.status.unwrap_or_default();
    assert_eq!(
        source.handed_over.as_ref().map(|h| h.run.as_str()),
        Some(rerun.as_str())
    );
    assert!(source.resources.is_empty(), "{:?}", source.resources);
    assert_eq!(
        source.cleanup.as_ref().map(|c| c.phase),
        Some(StepPhase::Skipped)
    );
    assert_eq!(step_phase(&waiting, "deploy"), Some(StepPhase::Succeeded));

    // An approval is never reused: the rerun's gate asks again.
    w.env.cli(&["approve", &rerun, "sign-off"]).await?;
    let done = w.env.wait_finished(&rerun, RUN_TIMEOUT).await?;
    let rs = done.status.clone().unwrap_or_default();
    assert_eq!(rs.phase, RunPhase::Succeeded, "rerun status: {rs:#?}");
    assert_eq!(step_phase(&done, "deprovision"), Some(StepPhase::Succeeded));
    assert!(rs.resources.is_empty(), "ledger: {:?}", rs.resources);
    assert!(
        w.moto.live_instances().await?.is_empty(),
        "moto still runs an instance"
    );
    let log = w.log(&rerun).await?;
    assert!(
        log.lines()
            .any(|l| l.starts_with("[run-tests") && l.contains("Tests run: 3, Failures: 0")),
        "log:\n{log}"
    );
    Ok(())
}

impl World {
    /// Deploys the war at /fixed through the manager, as an operator fixing the
    /// environment would; the manager deploys before it answers.
    async fn deploy_fixed(&self) -> anyhow::Result<()> {
        let war = self._dir.0.join("com/acme/app/1.4.2/app-1.4.2.war");
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "-m", "60", "-T"])
            .arg(&war)
            .args(["-u", &format!("deployer:{}", self.tomcat_password)])
            .arg(format!(
                "{}/manager/text/deploy?path=/fixed&update=true",
                self.tomcat
            ))
            .output()
            .await?;
        let answer = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(answer.starts_with("OK"), "deploying /fixed: {answer}");
        Ok(())
    }
}

/// The warm cache: on an Agent slot (examples/agents/pool.yaml), the workspace is the
/// slot's cache volume, and the maven task's local repository is in it. The second run of
/// the composition goes to the same slot and finds every plugin and JUnit already there.
/// Both Maven step times are printed; how much faster is measured, not asserted.
#[tokio::test]
async fn a_second_run_on_a_warm_slot_builds_from_the_cached_maven_repository() -> anyhow::Result<()>
{
    let w = world("accept-warm").await?;
    w.env.apply_example("agents/pool.yaml").await?;
    let mut seconds = Vec::new();
    let mut hits = Vec::new();
    for round in ["cold", "warm"] {
        let name = w.start("main").await?;
        let waiting = w
            .env
            .wait_phase(
                &name,
                &[RunPhase::WaitingApproval, RunPhase::Failed],
                RUN_TIMEOUT,
            )
            .await?;
        let status = waiting.status.clone().unwrap_or_default();
        assert_eq!(
            status.phase,
            RunPhase::WaitingApproval,
            "{round} run: {status:#?}"
        );
        w.env.cli(&["approve", &name, "sign-off"]).await?;
        let done = w.env.wait_finished(&name, RUN_TIMEOUT).await?;
        let status = done.status.clone().unwrap_or_default();
        assert_eq!(
            status.phase,
            RunPhase::Succeeded,
            "{round} run: {status:#?}"
        );
        let agent = status.agent.clone().unwrap_or_default();
        hits.push((agent.slot, agent.cache_hit));
        let took = step_seconds(&done, "run-tests").unwrap_or(-1);
        println!(
            "acceptance: the {round} run's Maven step (run-tests) took {took} s (slot {})",
            agent.slot
        );
        seconds.push(took);
    }
    assert!(!hits[0].1, "the first run finds a cold slot: {hits:?}");
    assert_eq!(
        hits[1],
        (hits[0].0, true),
        "the second run takes the warm slot: {hits:?}"
    );
    println!(
        "acceptance: Maven step cold {} s, warm {} s",
        seconds[0], seconds[1]
    );
    Ok(())
}

/// The maven Task's `settings`: a settings.xml from a Secret, by reference. The tests'
/// `with-settings` branch depends on the release (com.acme:app:war), which only the world's
/// repository holds and no POM names; the Secret's settings.xml makes that repository a
/// mirror, with a server password. The same build fails without the settings (Maven cannot
/// resolve the release) and succeeds with them, and the password is nowhere in the step's
/// log or the run's status. `test-compile` resolves the test classpath without needing the
/// deployed app, so the test needs no Tomcat or instance.
#[tokio::test]
async fn maven_settings_from_a_secret_reach_maven_and_stay_secret() -> anyhow::Result<()> {
    let env = Env::new("accept-settings").await?;
    let dir = TempDir::new("maestro-accept-settings")?;
    make_world(&dir.0)?;
    let sink = Sink::start(&dir.0).await?;
    let password = format!(
        "s3cret-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    // Maven blocks plain-HTTP repositories through a mirror of its own
    // (maven-default-http-blocker); a mirror of the repository's exact id wins over it.
    let settings = format!(
        r#"<settings>
  <servers>
    <server><id>acme-mirror</id><username>qa</username><password>{password}</password></server>
  </servers>
  <mirrors>
    <mirror><id>acme-mirror</id><mirrorOf>acme-releases</mirrorOf><url>{url}</url><blocked>false</blocked></mirror>
  </mirrors>
  <profiles>
    <profile>
      <id>acme</id>
      <repositories>
        <repository><id>acme-releases</id><url>https://repo.acme.invalid/releases</url>
          <snapshots><enabled>false</enabled></snapshots></repository>
      </repositories>
    </profile>
  </profiles>
  <activeProfiles><activeProfile>acme</activeProfile></activeProfiles>
</settings>
"#,
        url = sink.url
    );
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "maven-settings"},
        "stringData": {"MAVEN_SETTINGS_XML": settings}
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    let names = env
        .apply_yaml(
            r#"
apiVersion: maestro.dev/v1alpha1
kind: Composition
metadata:
  name: settings-build
spec:
  params:
    - {name: testsRepo}
  steps:
    - name: checkout
      task: git
      with: {repo: "{{ params.testsRepo }}", ref: with-settings, path: tests}
    - name: without-settings
      task: maven
      continueOnFailure: true
      with: {goals: test-compile}
    - name: with-settings
      task: maven
      secretEnv: [maven-settings]
      with: {goals: test-compile, settings: MAVEN_SETTINGS_XML}
"#,
        )
        .await?;
    env.wait_compositions_ready(&names).await?;
    let repo = format!("{}/qa/acceptance.git", sink.url);
    let name = env
        .start_run("settings-build", &[("testsRepo", repo.as_str())])
        .await?;
    let done = env.wait_finished(&name, RUN_TIMEOUT).await?;
    let status = done.status.clone().unwrap_or_default();
    let without = step(&done, "without-settings").cloned().unwrap_or_default();
    assert_eq!(without.phase, StepPhase::Failed, "status: {status:#?}");
    let message = without.message.clone().unwrap_or_default();
    assert!(
        message.contains("com.acme:app:war:1.4.2"),
        "without settings, Maven cannot resolve the release: {message}"
    );
    assert_eq!(
        step_phase(&done, "with-settings"),
        Some(StepPhase::Succeeded),
        "status: {status:#?}"
    );
    let log = env.cli(&["logs", &name]).await?;
    for line in log
        .lines()
        .filter(|l| l.contains("maven: mvn") || l.contains("BUILD") || l.contains("com.acme:app"))
    {
        println!("acceptance settings: {line}");
    }
    assert!(
        log.lines()
            .any(|l| l.starts_with("[with-settings") && l.contains("--settings")),
        "log:\n{log}"
    );
    assert!(
        !log.contains(&password),
        "the password is in the log:\n{log}"
    );
    let status_json = serde_json::to_string(&status)?;
    assert!(
        !status_json.contains(&password) && !status_json.contains("acme-mirror"),
        "the settings are in the status: {status_json}"
    );
    Ok(())
}
