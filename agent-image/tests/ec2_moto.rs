//! The EC2 built-ins against a real EC2 API on loopback: moto's server (e2e/moto/moto.sh
//! installs and starts it). The built `maestro-agent` binary runs as a step pod would, and the
//! test checks what it did through the same API with its own aws-sdk-ec2 client.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{
    InstanceAttributeName, InstanceStateName, ResourceType, Tag, TagSpecification,
};
use serde_json::{Value, json};
use tempfile::TempDir;

/// Fake credentials: moto accepts any. The secret is distinctive so the test can check that
/// no log line shows it.
const ACCESS_KEY: &str = "testing";
const SECRET_KEY: &str = "maestro-test-secret-never-printed";
const REGION: &str = "eu-west-1";

fn moto_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/moto/moto.sh")
}

/// A moto server for one test, stopped when dropped, even when the test fails.
struct Moto {
    url: String,
}

impl Moto {
    fn start() -> anyhow::Result<Self> {
        let started = Instant::now();
        let output = Command::new("bash")
            .arg(moto_script())
            .arg("start")
            // If this test binary is killed before the guard's drop, moto goes with it.
            .env("MOTO_STOP_WITH_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .output()
            .context("cannot run e2e/moto/moto.sh")?;
        if !output.status.success() {
            bail!(
                "moto.sh start failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let url = String::from_utf8(output.stdout)?.trim().to_owned();
        if !url.starts_with("http://") {
            bail!("moto.sh start printed {url:?}, not a URL");
        }
        println!("moto at {url} in {:?}", started.elapsed());
        Ok(Self { url })
    }

    /// The test's own client, in the region the agent is told to use.
    fn client(&self) -> Client {
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.url)
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .build();
        Client::from_conf(config)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let stopped = Command::new("bash")
            .arg(moto_script())
            .args(["stop", &self.url])
            .stdin(Stdio::null())
            .status();
        if !stopped.as_ref().is_ok_and(|status| status.success()) {
            eprintln!("could not stop moto at {}: {stopped:?}", self.url);
        }
    }
}

/// One step run of the agent: its result and outputs in a temporary directory.
struct Step {
    dir: TempDir,
    output: Output,
}

impl Step {
    /// Runs `maestro-agent builtin <task>` with `inputs` as a step of the run `run-ec2`.
    fn run(task: &str, inputs: &Value) -> anyhow::Result<Self> {
        Self::run_as("run-ec2", task, inputs)
    }

    /// Runs `maestro-agent builtin <task>` with `inputs`, the step variables of the run `run`
    /// and the credentials the operator would set from a Secret. Nothing of the caller's AWS
    /// setup leaks in: no profile, region or endpoint variables, no config files.
    fn run_as(run: &str, task: &str, inputs: &Value) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let output = Command::new(env!("CARGO_BIN_EXE_maestro-agent"))
            .args(["builtin", task])
            .env("MAESTRO_INPUTS", inputs.to_string())
            .env("MAESTRO_RESULT_PATH", dir.path().join("termination-log"))
            .env("MAESTRO_OUTPUTS", dir.path().join("outputs"))
            .env("MAESTRO_WORKSPACE", dir.path())
            .env("MAESTRO_RUN", run)
            .env("MAESTRO_STEP", task)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_SESSION_TOKEN", "maestro-test-session")
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_EC2")
            .env_remove("MAESTRO_LOG_LEVEL")
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains(SECRET_KEY) && !stderr.contains("maestro-test-session"),
            "a credential was printed: {stderr}"
        );
        Ok(Self { dir, output })
    }

    fn result(&self) -> anyhow::Result<Value> {
        let path = self.dir.path().join("termination-log");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("no result at {}; {}", path.display(), self.stderr()))?;
        Ok(serde_json::from_str(&text)?)
    }

    fn exit_code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

fn ledger_entries(ids: &[String]) -> Value {
    ids.iter()
        .map(|id| json!({"kind": "ec2-instance", "id": id, "region": REGION}))
        .collect()
}

/// An image moto knows: with the validation moto.sh enables, unknown ones are rejected.
async fn some_image(client: &Client) -> anyhow::Result<String> {
    let images = client.describe_images().owners("amazon").send().await?;
    images
        .images()
        .iter()
        .find_map(|image| image.image_id().map(str::to_owned))
        .context("moto lists no image")
}

#[tokio::test]
async fn provision_then_deprovision_through_the_ec2_api() -> anyhow::Result<()> {
    let moto = Moto::start()?;
    let client = moto.client();
    let image = some_image(&client).await?;
    let user_data = "#!/bin/sh\necho hello from maestro\n";

    let started = Instant::now();
    let provision = Step::run(
        "ec2-provision",
        &json!({
            "imageId": image,
            "count": 2,
            "tags": {"team": "qa"},
            "userData": user_data,
            "region": REGION,
            "endpoint": moto.url,
            "waitSeconds": 60,
        }),
    )?;
    println!("ec2-provision took {:?}", started.elapsed());
    let result = provision.result()?;
    assert_eq!(
        provision.exit_code(),
        Some(0),
        "{result}; {}",
        provision.stderr()
    );
    assert_eq!(result["exitCode"], 0, "{result}");
    let ids: Vec<String> = result["outputs"]["instanceIds"]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 2, "{result}");
    assert!(ids.iter().all(|id| id.starts_with("i-")), "{result}");
    assert_eq!(result["resources"], ledger_entries(&ids));
    let outputs = &result["outputs"];
    let private_ips = outputs["privateIps"].as_str().unwrap_or_default();
    assert_eq!(private_ips.split(',').count(), 2, "{result}");
    assert_eq!(
        outputs["privateIp"].as_str(),
        private_ips.split(',').next(),
        "{result}"
    );
    assert!(
        outputs["publicIp"]
            .as_str()
            .is_some_and(|ip| !ip.is_empty()),
        "{result}"
    );

    // What EC2 itself says about them.
    let described = client
        .describe_instances()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await?;
    let instances: Vec<_> = described
        .reservations()
        .iter()
        .flat_map(|reservation| reservation.instances())
        .collect();
    assert_eq!(instances.len(), 2);
    for instance in &instances {
        assert_eq!(
            instance.state().and_then(|state| state.name()),
            Some(&InstanceStateName::Running)
        );
        assert_eq!(
            instance.instance_type().map(|kind| kind.as_str()),
            Some("t3.micro")
        );
        assert_eq!(instance.image_id(), Some(image.as_str()));
        let tags: Vec<(&str, &str)> = instance
            .tags()
            .iter()
            .filter_map(|tag| Some((tag.key()?, tag.value()?)))
            .collect();
        for expected in [
            ("team", "qa"),
            ("maestro.dev/run", "run-ec2"),
            ("maestro.dev/step", "ec2-provision"),
        ] {
            assert!(tags.contains(&expected), "{expected:?} not in {tags:?}");
        }
    }
    let attribute = client
        .describe_instance_attribute()
        .instance_id(&ids[0])
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await?;
    let encoded = attribute
        .user_data()
        .and_then(|value| value.value())
        .unwrap_or_default();
    assert_eq!(
        aws_smithy_types::base64::decode(encoded)?,
        user_data.as_bytes()
    );

    // Deprovision them, with an id EC2 never knew: that one counts as released too.
    let unknown = "i-0123456789abcdef0".to_owned();
    let mut asked = ids.clone();
    asked.push(unknown.clone());
    let started = Instant::now();
    let deprovision = Step::run(
        "ec2-deprovision",
        &json!({
            "instanceIds": asked.join(","),
            "region": REGION,
            "endpoint": moto.url,
            "waitSeconds": 60,
        }),
    )?;
    println!("ec2-deprovision took {:?}", started.elapsed());
    let result = deprovision.result()?;
    assert_eq!(
        deprovision.exit_code(),
        Some(0),
        "{result}; {}",
        deprovision.stderr()
    );
    assert_eq!(result["outputs"]["terminated"], asked.join(","));
    assert_eq!(result["released"], ledger_entries(&asked));
    assert!(result.get("resources").is_none(), "{result}");

    let described = client
        .describe_instances()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await?;
    let states: Vec<_> = described
        .reservations()
        .iter()
        .flat_map(|reservation| reservation.instances())
        .map(|instance| instance.state().and_then(|state| state.name()).cloned())
        .collect();
    assert_eq!(
        states,
        vec![Some(InstanceStateName::Terminated); 2],
        "{described:?}"
    );

    // Deprovisioning again (a cleanup retry) finds them terminated: released, no error.
    let again = Step::run(
        "ec2-deprovision",
        &json!({"instanceIds": ids, "region": REGION, "endpoint": moto.url}),
    )?;
    let result = again.result()?;
    assert_eq!(again.exit_code(), Some(0), "{result}; {}", again.stderr());
    assert_eq!(result["released"], ledger_entries(&ids));
    Ok(())
}

/// Launches one instance directly (not through the agent), tagged `maestro.dev/run=run` if
/// given: another run's machine, or one Maestro never made.
async fn launch(client: &Client, image: &str, run: Option<&str>) -> anyhow::Result<String> {
    let mut request = client
        .run_instances()
        .image_id(image)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1);
    if let Some(run) = run {
        request = request.tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key("maestro.dev/run").value(run).build())
                .build(),
        );
    }
    let output = request.send().await?;
    output
        .instances()
        .first()
        .and_then(|instance| instance.instance_id())
        .map(str::to_owned)
        .context("RunInstances returned no instance")
}

async fn state(client: &Client, id: &str) -> anyhow::Result<Option<InstanceStateName>> {
    let described = client.describe_instances().instance_ids(id).send().await?;
    Ok(described
        .reservations()
        .iter()
        .flat_map(|reservation| reservation.instances())
        .find_map(|instance| instance.state().and_then(|state| state.name()).cloned()))
}

#[tokio::test]
async fn deprovision_terminates_only_this_runs_instances() -> anyhow::Result<()> {
    let moto = Moto::start()?;
    let client = moto.client();
    let image = some_image(&client).await?;

    // Run A's instance, launched by the agent as run A.
    let provision = Step::run_as(
        "run-a",
        "ec2-provision",
        &json!({"imageId": image, "region": REGION, "endpoint": moto.url, "waitSeconds": 60}),
    )?;
    let result = provision.result()?;
    assert_eq!(provision.exit_code(), Some(0), "{result}");
    let ours = result["outputs"]["instanceIds"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(ours.starts_with("i-"), "{result}");
    let others = launch(&client, &image, Some("run-b")).await?;
    let untagged = launch(&client, &image, None).await?;

    // Run A's cleanup with a ledger that also holds the other two.
    let asked = [ours.clone(), others.clone(), untagged.clone()];
    let deprovision = Step::run_as(
        "run-a",
        "ec2-deprovision",
        &json!({"instanceIds": asked, "region": REGION, "endpoint": moto.url, "waitSeconds": 60}),
    )?;
    let result = deprovision.result()?;
    assert_eq!(
        deprovision.exit_code(),
        Some(1),
        "{result}; {}",
        deprovision.stderr()
    );
    let error = result["error"].as_str().unwrap_or_default();
    for expected in [
        format!(
            "{others} is not tagged maestro.dev/run=run-a (it carries maestro.dev/run=run-b); \
             left running"
        ),
        format!(
            "{untagged} is not tagged maestro.dev/run=run-a (it has no maestro.dev/run tag); \
             left running"
        ),
    ] {
        assert!(error.contains(&expected), "{expected:?} not in {error:?}");
    }
    assert!(!error.contains(&format!("{ours} is")), "{error}");
    assert_eq!(result["outputs"]["terminated"], ours.as_str(), "{result}");
    // The refused ids leave the ledger too: they were never this run's to remove.
    assert_eq!(result["released"], ledger_entries(&asked), "{result}");

    assert_eq!(
        state(&client, &ours).await?,
        Some(InstanceStateName::Terminated)
    );
    for id in [&others, &untagged] {
        assert_eq!(
            state(&client, id).await?,
            Some(InstanceStateName::Running),
            "{id} was touched"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_aws_error_fails_the_step_with_its_code_and_message() -> anyhow::Result<()> {
    let moto = Moto::start()?;
    let client = moto.client();
    let step = Step::run(
        "ec2-provision",
        &json!({
            "imageId": "ami-00000000deadbeef",
            "region": REGION,
            "endpoint": moto.url,
        }),
    )?;
    let result = step.result()?;
    assert_eq!(step.exit_code(), Some(1), "{result}");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("RunInstances failed: InvalidAMIID.NotFound: ")
            && error.contains("ami-00000000deadbeef"),
        "{error}"
    );
    assert!(result.get("resources").is_none(), "{result}");
    assert!(step.stderr().contains(error), "{}", step.stderr());

    let image = some_image(&client).await?;
    let step = Step::run(
        "ec2-provision",
        &json!({
            "imageId": image,
            "instanceType": "t3.nonexistent",
            "region": REGION,
            "endpoint": moto.url,
        }),
    )?;
    let result = step.result()?;
    assert_eq!(step.exit_code(), Some(1), "{result}");
    assert!(
        result["error"]
            .as_str()
            .is_some_and(|error| error.starts_with("RunInstances failed: InvalidInstanceType")),
        "{result}"
    );

    // Nothing was launched by either.
    let described = client.describe_instances().send().await?;
    assert!(described.reservations().is_empty(), "{described:?}");
    Ok(())
}

#[test]
fn an_empty_instance_list_is_a_no_op() -> anyhow::Result<()> {
    // An endpoint where nothing listens: any call would fail the step.
    let endpoint = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", listener.local_addr()?)
    };
    for ids in [json!([]), json!(""), json!(null)] {
        let step = Step::run(
            "ec2-deprovision",
            &json!({"instanceIds": ids, "endpoint": endpoint}),
        )?;
        assert_eq!(step.exit_code(), Some(0), "{}", step.stderr());
        assert_eq!(
            step.result()?,
            json!({"outputs": {"terminated": ""}, "exitCode": 0})
        );
        assert!(
            step.stderr().contains("nothing to deprovision"),
            "{}",
            step.stderr()
        );
    }
    Ok(())
}

#[test]
fn bad_input_fails_with_exit_code_2_before_any_call() -> anyhow::Result<()> {
    let step = Step::run("ec2-provision", &json!({"count": 1}))?;
    assert_eq!(step.exit_code(), Some(2));
    assert_eq!(
        step.result()?,
        json!({"exitCode": 2, "error": "input \"imageId\" is required"})
    );
    let step = Step::run("ec2-deprovision", &json!({"instanceIds": ["vol-1"]}))?;
    assert_eq!(step.exit_code(), Some(2));
    assert_eq!(
        step.result()?["error"],
        "input \"instanceIds\": \"vol-1\" is not an EC2 instance id (i-0123456789abcdef0)"
    );
    Ok(())
}
