//! The `ec2-provision` built-in: RunInstances, then wait until every instance is running.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::SdkError;
use aws_sdk_ec2::types::{
    Filter, Instance, InstanceStateName, InstanceType, ResourceType, Tag, TagSpecification,
};
use serde_json::Value;
use tokio::time::Instant;

use super::inputs::{ec2_target, integer_in, optional_string, string_list};
use super::{
    Ec2Target, Interrupts, PollBackoff, aws_error_message, describe_instances, ec2_client,
    instance_resources, signal_exit_code, state_of,
};
use crate::builtin::Inputs;
use crate::result::{EXIT_AGENT_FAILURE, EXIT_BAD_INPUT, StepResult, serialize_within_limit};
use crate::step_env::StepPaths;

const DEFAULT_INSTANCE_TYPE: &str = "t3.micro";
const DEFAULT_WAIT_SECONDS: u64 = 300;
/// The wait is bounded by the step's own timeout anyway; a day catches unit mistakes
/// (milliseconds given as seconds).
const MAX_WAIT_SECONDS: u64 = 86_400;
/// The step's result must fit 4096 bytes with one ledger entry, an id and two addresses per
/// instance (about 130 bytes each); 20 leaves room for the error message. Larger fleets take
/// several steps, or an auto scaling group.
const MAX_COUNT: u64 = 20;
/// EC2's limit on user data, before base64.
const MAX_USER_DATA_BYTES: usize = 16 * 1024;
/// EC2 allows 50 tags per resource; the agent adds two.
const MAX_USER_TAGS: usize = 48;

/// Tags the agent puts on every instance so leftovers of a run or step can be found even if
/// the run's ledger is lost.
pub const RUN_TAG: &str = "maestro.dev/run";
pub const STEP_TAG: &str = "maestro.dev/step";

/// The `ec2-provision` task's inputs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionInputs {
    pub image_id: String,
    pub instance_type: String,
    pub count: u32,
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
    /// As given (plain text); encoded for the API when sending.
    pub user_data: Option<String>,
    /// The user's tags followed by the agent's run and step tags.
    pub tags: Vec<(String, String)>,
    pub target: Ec2Target,
    /// Zero: return right after RunInstances.
    pub wait: Duration,
}

/// Runs the task: validates its inputs, launches the instances and waits for them.
pub async fn run_ec2_provision(inputs: &Inputs, paths: &StepPaths) -> StepResult {
    let parsed = match parse_provision_inputs(inputs, |name| std::env::var(name).ok()) {
        Ok(parsed) => parsed,
        Err(message) => return StepResult::failure(EXIT_BAD_INPUT, message),
    };
    // Listening before RunInstances: a SIGTERM during the call must not kill the agent
    // before it has recorded what the call launched.
    let interrupts = Interrupts::listen();
    let client = ec2_client(&parsed.target).await;
    provision(&client, &parsed, &paths.result_path, interrupts).await
}

/// Validates the inputs; `env` looks up `AWS_REGION`, `MAESTRO_RUN` and the like.
pub fn parse_provision_inputs(
    inputs: &Inputs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ProvisionInputs, String> {
    let image_id = optional_string(inputs, "imageId")?
        .ok_or_else(|| r#"input "imageId" is required"#.to_owned())?;
    let instance_type = optional_string(inputs, "instanceType")?
        .unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.to_owned());
    let count = integer_in(inputs, "count", 1, 1, MAX_COUNT)?;
    let user_data = optional_string_raw(inputs, "userData")?;
    if let Some(user_data) = &user_data
        && user_data.len() > MAX_USER_DATA_BYTES
    {
        return Err(format!(
            "input \"userData\" is {} bytes, over EC2's limit of {MAX_USER_DATA_BYTES}",
            user_data.len()
        ));
    }
    let mut tags = tags_input(inputs)?;
    for (key, var) in [(RUN_TAG, "MAESTRO_RUN"), (STEP_TAG, "MAESTRO_STEP")] {
        if let Some(value) = env(var).filter(|value| !value.is_empty()) {
            tags.push((key.to_owned(), value));
        }
    }
    Ok(ProvisionInputs {
        image_id,
        instance_type,
        count: u32::try_from(count).map_err(|_| r#"input "count" is too large"#.to_owned())?,
        subnet_id: optional_string(inputs, "subnetId")?,
        security_group_ids: string_list(inputs, "securityGroupIds")?,
        key_name: optional_string(inputs, "keyName")?,
        user_data,
        tags,
        target: ec2_target(inputs, &env)?,
        wait: Duration::from_secs(integer_in(
            inputs,
            "waitSeconds",
            DEFAULT_WAIT_SECONDS,
            0,
            MAX_WAIT_SECONDS,
        )?),
    })
}

/// A string input kept as given (user data is a script: its whitespace matters).
fn optional_string_raw(inputs: &Inputs, name: &str) -> Result<Option<String>, String> {
    match inputs.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(format!("input {name:?} must be a string")),
    }
}

fn tags_input(inputs: &Inputs) -> Result<Vec<(String, String)>, String> {
    const NOT_AN_OBJECT: &str = r#"input "tags" must be an object of strings"#;
    let entries = match inputs.get("tags") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(entries)) => entries,
        Some(_) => return Err(NOT_AN_OBJECT.to_owned()),
    };
    if entries.len() > MAX_USER_TAGS {
        return Err(format!(
            "input \"tags\" has {} tags; EC2 allows {MAX_USER_TAGS} besides the agent's two",
            entries.len()
        ));
    }
    entries
        .iter()
        .map(|(key, value)| {
            let Value::String(value) = value else {
                return Err(format!("{NOT_AN_OBJECT}; {key:?} is not a string"));
            };
            // EC2's own rules, checked here so the message names the input.
            if key.is_empty() || key.chars().count() > 128 {
                return Err(format!(
                    "input \"tags\": key {key:?} must have 1 to 128 characters"
                ));
            }
            if key.to_ascii_lowercase().starts_with("aws:") {
                return Err(format!(
                    "input \"tags\": key {key:?} uses the prefix aws:, which AWS reserves"
                ));
            }
            if key == RUN_TAG || key == STEP_TAG {
                return Err(format!(
                    "input \"tags\": key {key:?} is set by the agent to find the run's instances"
                ));
            }
            if value.chars().count() > 256 {
                return Err(format!(
                    "input \"tags\": the value of {key:?} is over 256 characters"
                ));
            }
            Ok((key.clone(), value.clone()))
        })
        .collect()
}

/// What is known of the launched instances, in launch order.
struct Launched {
    ids: Vec<String>,
    /// The latest description of each instance: RunInstances' answer, then DescribeInstances'.
    latest: BTreeMap<String, Instance>,
    region: String,
}

impl Launched {
    /// The step's result with the instances in `resources` and what is known of them in the
    /// outputs, exiting with `exit_code`.
    fn result(&self, exit_code: i32, error: Option<String>) -> StepResult {
        StepResult {
            outputs: provision_outputs(&self.ids, &self.latest),
            resources: instance_resources(&self.ids, &self.region),
            exit_code,
            error,
            ..StepResult::default()
        }
    }
}

async fn provision(
    client: &Client,
    inputs: &ProvisionInputs,
    result_path: &Path,
    mut interrupts: Interrupts,
) -> StepResult {
    let client_token = client_token();
    let launched = match run_instances(client, inputs, &client_token).await {
        Ok(instances) => instances,
        Err(error) => {
            return recover_launched(client, inputs, &client_token, error).await;
        }
    };
    let ids: Vec<String> = launched
        .iter()
        .filter_map(|instance| instance.instance_id().map(str::to_owned))
        .collect();
    if ids.is_empty() {
        return StepResult::failure(
            EXIT_AGENT_FAILURE,
            "RunInstances succeeded but returned no instance ids",
        );
    }
    tracing::info!("launched {} in {}", ids.join(", "), inputs.target.region);
    let mut state = Launched {
        latest: launched
            .into_iter()
            .filter_map(|instance| Some((instance.instance_id()?.to_owned(), instance)))
            .collect(),
        ids,
        region: inputs.target.region.clone(),
    };
    record_provisional(&state, result_path);
    if let Some(signal) = interrupts.received() {
        return interrupted(&state, signal);
    }
    if inputs.wait.is_zero() {
        return state.result(0, None);
    }

    let deadline = Instant::now() + inputs.wait;
    let mut backoff = PollBackoff::new();
    loop {
        match describe_instances(client, &state.ids).await {
            Ok(described) => state.latest.extend(described),
            Err(message) => {
                return state.result(
                    EXIT_AGENT_FAILURE,
                    Some(format!("waiting for the instances to run: {message}")),
                );
            }
        }
        let waiting = match launch_progress(&state.ids, &state.latest) {
            LaunchProgress::Running => return state.result(0, None),
            LaunchProgress::Failed(message) => {
                return state.result(EXIT_AGENT_FAILURE, Some(message));
            }
            LaunchProgress::Waiting(waiting) => waiting,
        };
        let now = Instant::now();
        if now >= deadline {
            return state.result(
                EXIT_AGENT_FAILURE,
                Some(format!(
                    "instances were not running after {} s: {}; they are recorded for cleanup",
                    inputs.wait.as_secs(),
                    summarize(&waiting)
                )),
            );
        }
        let delay = backoff.next_delay().min(deadline - now);
        tracing::debug!("waiting {delay:?} for {}", waiting.join(", "));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            signal = interrupts.next() => return interrupted(&state, signal),
        }
    }
}

async fn run_instances(
    client: &Client,
    inputs: &ProvisionInputs,
    client_token: &str,
) -> Result<Vec<Instance>, SdkError<aws_sdk_ec2::operation::run_instances::RunInstancesError>> {
    let tags: Vec<Tag> = inputs
        .tags
        .iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build())
        .collect();
    let mut request = client
        .run_instances()
        .image_id(&inputs.image_id)
        .instance_type(InstanceType::from(inputs.instance_type.as_str()))
        // Equal bounds: all the instances or none, never a partial fleet.
        .min_count(count_i32(inputs.count))
        .max_count(count_i32(inputs.count))
        // The same token on the SDK's retries makes them return the first launch instead of
        // launching again when an answer was lost.
        .client_token(client_token)
        .set_subnet_id(inputs.subnet_id.clone())
        .set_key_name(inputs.key_name.clone())
        .set_user_data(
            inputs
                .user_data
                .as_ref()
                .map(|text| aws_smithy_types::base64::encode(text.as_bytes())),
        );
    if !inputs.security_group_ids.is_empty() {
        request = request.set_security_group_ids(Some(inputs.security_group_ids.clone()));
    }
    if !tags.is_empty() {
        request = request.tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .set_tags(Some(tags))
                .build(),
        );
    }
    let output = request.send().await?;
    Ok(output.instances().to_vec())
}

fn count_i32(count: u32) -> i32 {
    // count is at most MAX_COUNT.
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// A token unique to this launch (EC2 allows 64 ASCII characters).
fn client_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("maestro-{:x}-{nanos:x}", std::process::id())
}

/// RunInstances failed. When no answer came back (timeout, connection lost) EC2 may still
/// have launched the instances; the client token finds them, so they are recorded rather than
/// left running unseen.
async fn recover_launched(
    client: &Client,
    inputs: &ProvisionInputs,
    client_token: &str,
    error: SdkError<aws_sdk_ec2::operation::run_instances::RunInstancesError>,
) -> StepResult {
    let message = aws_error_message("RunInstances", &error);
    if matches!(error, SdkError::ServiceError(_)) {
        // EC2 answered with an error: nothing was launched.
        return StepResult::failure(EXIT_AGENT_FAILURE, message);
    }
    let filter = Filter::builder()
        .name("client-token")
        .values(client_token)
        .build();
    let found = client
        .describe_instances()
        .filters(filter)
        .send()
        .await
        .map(|output| {
            output
                .reservations()
                .iter()
                .flat_map(|reservation| reservation.instances())
                .filter_map(|instance| instance.instance_id().map(str::to_owned))
                .collect::<Vec<_>>()
        });
    match found {
        Ok(ids) if !ids.is_empty() => StepResult {
            resources: instance_resources(&ids, &inputs.target.region),
            ..StepResult::failure(
                EXIT_AGENT_FAILURE,
                format!(
                    "{message}; yet EC2 launched {}, recorded for cleanup",
                    ids.join(", ")
                ),
            )
        },
        Ok(_) => StepResult::failure(EXIT_AGENT_FAILURE, message),
        Err(_) => StepResult::failure(
            EXIT_AGENT_FAILURE,
            format!("{message}; instances may have been launched: look for the tag {RUN_TAG}"),
        ),
    }
}

/// Writes a result listing the instances right after they are launched. The final result
/// replaces it; if the agent is killed first (SIGKILL, OOM, node loss), the operator still
/// reads which instances exist from the termination message.
fn record_provisional(state: &Launched, result_path: &Path) {
    let provisional = state.result(
        EXIT_AGENT_FAILURE,
        Some(format!(
            "ec2-provision stopped before {} were confirmed running; they are recorded for \
             cleanup",
            state.ids.join(", ")
        )),
    );
    let delivered = serialize_within_limit(&provisional);
    if let Err(error) = std::fs::write(result_path, delivered.json.as_bytes()) {
        tracing::warn!(
            "cannot record the launched instances in {}: {error}",
            result_path.display()
        );
    }
}

fn interrupted(state: &Launched, signal: &str) -> StepResult {
    state.result(
        signal_exit_code(signal),
        Some(format!(
            "{signal} received while waiting for {} to run; they are recorded for cleanup",
            state.ids.join(", ")
        )),
    )
}

/// Where a launch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LaunchProgress {
    Running,
    /// `id: state` of each instance not running yet.
    Waiting(Vec<String>),
    /// An instance will never run (it stopped or terminated, e.g. for lack of capacity).
    Failed(String),
}

fn launch_progress(ids: &[String], latest: &BTreeMap<String, Instance>) -> LaunchProgress {
    let mut waiting = Vec::new();
    for id in ids {
        let Some(instance) = latest.get(id) else {
            // Not visible yet: EC2 is eventually consistent right after a launch.
            waiting.push(format!("{id}: not visible yet"));
            continue;
        };
        match state_of(instance) {
            InstanceStateName::Running => {}
            InstanceStateName::Pending => waiting.push(format!("{id}: pending")),
            InstanceStateName::ShuttingDown
            | InstanceStateName::Terminated
            | InstanceStateName::Stopping
            | InstanceStateName::Stopped => {
                let reason = instance
                    .state_reason()
                    .map(|reason| match (reason.code(), reason.message()) {
                        (Some(code), Some(message)) if message != code => {
                            format!(": {code}: {message}")
                        }
                        (_, Some(message)) => format!(": {message}"),
                        (Some(code), None) => format!(": {code}"),
                        (None, None) => String::new(),
                    })
                    .unwrap_or_default();
                return LaunchProgress::Failed(format!(
                    "instance {id} is {} instead of running{reason}",
                    state_of(instance).as_str()
                ));
            }
            other => waiting.push(format!("{id}: {}", other.as_str())),
        }
    }
    if waiting.is_empty() {
        LaunchProgress::Running
    } else {
        LaunchProgress::Waiting(waiting)
    }
}

/// At most five entries, so a long list cannot push the result over its size limit.
fn summarize(entries: &[String]) -> String {
    const SHOWN: usize = 5;
    let shown = entries[..entries.len().min(SHOWN)].join(", ");
    if entries.len() > SHOWN {
        format!("{shown} and {} more", entries.len() - SHOWN)
    } else {
        shown
    }
}

/// The task's outputs: the ids, and the addresses of the first instance and of all of them
/// (in launch order, skipping instances without one, so the lists can serve as host lists).
fn provision_outputs(
    ids: &[String],
    latest: &BTreeMap<String, Instance>,
) -> BTreeMap<String, String> {
    let addresses = |address: fn(&Instance) -> Option<&str>| -> Vec<String> {
        ids.iter()
            .filter_map(|id| latest.get(id).and_then(address))
            .filter(|ip| !ip.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let first = |address: fn(&Instance) -> Option<&str>| -> String {
        ids.first()
            .and_then(|id| latest.get(id))
            .and_then(address)
            .unwrap_or_default()
            .to_owned()
    };
    BTreeMap::from([
        ("instanceIds".to_owned(), ids.join(",")),
        ("publicIp".to_owned(), first(Instance::public_ip_address)),
        ("privateIp".to_owned(), first(Instance::private_ip_address)),
        (
            "publicIps".to_owned(),
            addresses(Instance::public_ip_address).join(","),
        ),
        (
            "privateIps".to_owned(),
            addresses(Instance::private_ip_address).join(","),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_support::inputs;
    use aws_sdk_ec2::types::{InstanceState, StateReason};
    use serde_json::json;

    fn step_env(name: &str) -> Option<String> {
        match name {
            "MAESTRO_RUN" => Some("build-42".to_owned()),
            "MAESTRO_STEP" => Some("provision".to_owned()),
            _ => None,
        }
    }

    fn error_for(value: Value) -> String {
        parse_provision_inputs(&inputs(value), step_env)
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn image_alone_uses_defaults_and_tags_the_run_and_step() {
        assert_eq!(
            parse_provision_inputs(&inputs(json!({"imageId": "ami-1"})), step_env),
            Ok(ProvisionInputs {
                image_id: "ami-1".to_owned(),
                instance_type: "t3.micro".to_owned(),
                count: 1,
                subnet_id: None,
                security_group_ids: Vec::new(),
                key_name: None,
                user_data: None,
                tags: vec![
                    ("maestro.dev/run".to_owned(), "build-42".to_owned()),
                    ("maestro.dev/step".to_owned(), "provision".to_owned()),
                ],
                target: Ec2Target {
                    region: "us-east-1".to_owned(),
                    endpoint: None,
                },
                wait: Duration::from_secs(300),
            })
        );
    }

    #[test]
    fn all_inputs_are_read() {
        let parsed = parse_provision_inputs(
            &inputs(json!({
                "imageId": "ami-1",
                "instanceType": "m7g.large",
                "count": "3",
                "subnetId": "subnet-1",
                "securityGroupIds": ["sg-1", "sg-2"],
                "keyName": "deploy",
                "userData": "#!/bin/sh\necho hi\n",
                "tags": {"team": "qa"},
                "region": "eu-west-1",
                "endpoint": "http://127.0.0.1:5000",
                "waitSeconds": 0,
            })),
            |_| None,
        );
        assert_eq!(
            parsed,
            Ok(ProvisionInputs {
                image_id: "ami-1".to_owned(),
                instance_type: "m7g.large".to_owned(),
                count: 3,
                subnet_id: Some("subnet-1".to_owned()),
                security_group_ids: vec!["sg-1".to_owned(), "sg-2".to_owned()],
                key_name: Some("deploy".to_owned()),
                user_data: Some("#!/bin/sh\necho hi\n".to_owned()),
                tags: vec![("team".to_owned(), "qa".to_owned())],
                target: Ec2Target {
                    region: "eu-west-1".to_owned(),
                    endpoint: Some("http://127.0.0.1:5000".to_owned()),
                },
                wait: Duration::ZERO,
            })
        );
    }

    #[test]
    fn messages_name_the_bad_input() {
        assert_eq!(error_for(json!({})), r#"input "imageId" is required"#);
        assert_eq!(
            error_for(json!({"imageId": " "})),
            r#"input "imageId" is required"#
        );
        assert_eq!(
            error_for(json!({"imageId": 1})),
            r#"input "imageId" must be a string"#
        );
        assert_eq!(
            error_for(json!({"imageId": "ami-1", "count": 21})),
            r#"input "count" must be an integer from 1 to 20"#
        );
        assert_eq!(
            error_for(json!({"imageId": "ami-1", "count": 0})),
            r#"input "count" must be an integer from 1 to 20"#
        );
        assert_eq!(
            error_for(json!({"imageId": "ami-1", "waitSeconds": -5})),
            r#"input "waitSeconds" must be an integer from 0 to 86400"#
        );
        assert_eq!(
            error_for(json!({"imageId": "ami-1", "securityGroupIds": [1]})),
            r#"input "securityGroupIds" must be an array of strings or a comma-separated string"#
        );
        assert_eq!(
            error_for(json!({"imageId": "ami-1", "userData": {"a": 1}})),
            r#"input "userData" must be a string"#
        );
        assert_eq!(
            error_for(json!({"imageId": "ami-1", "userData": "x".repeat(16 * 1024 + 1)})),
            r#"input "userData" is 16385 bytes, over EC2's limit of 16384"#
        );
        assert_eq!(
            error_for(json!({"imageId": "ami-1", "tags": ["a"]})),
            r#"input "tags" must be an object of strings"#
        );
        assert_eq!(
            error_for(json!({"imageId": "ami-1", "tags": {"n": 1}})),
            r#"input "tags" must be an object of strings; "n" is not a string"#
        );
        assert_eq!(
            error_for(json!({"imageId": "ami-1", "tags": {"aws:x": "1"}})),
            r#"input "tags": key "aws:x" uses the prefix aws:, which AWS reserves"#
        );
        assert_eq!(
            error_for(json!({"imageId": "ami-1", "tags": {"maestro.dev/run": "x"}})),
            r#"input "tags": key "maestro.dev/run" is set by the agent to find the run's instances"#
        );
    }

    fn instance(id: &str, state: InstanceStateName) -> Instance {
        Instance::builder()
            .instance_id(id)
            .state(InstanceState::builder().name(state).build())
            .build()
    }

    fn by_id(instances: Vec<Instance>) -> BTreeMap<String, Instance> {
        instances
            .into_iter()
            .filter_map(|instance| Some((instance.instance_id()?.to_owned(), instance)))
            .collect()
    }

    #[test]
    fn launch_is_done_when_every_instance_runs() {
        let ids = ["i-1".to_owned(), "i-2".to_owned(), "i-3".to_owned()];
        let mut latest = by_id(vec![
            instance("i-1", InstanceStateName::Running),
            instance("i-2", InstanceStateName::Pending),
        ]);
        assert_eq!(
            launch_progress(&ids, &latest),
            LaunchProgress::Waiting(vec![
                "i-2: pending".to_owned(),
                "i-3: not visible yet".to_owned()
            ])
        );
        latest.extend(by_id(vec![
            instance("i-2", InstanceStateName::Running),
            instance("i-3", InstanceStateName::Running),
        ]));
        assert_eq!(launch_progress(&ids, &latest), LaunchProgress::Running);
    }

    #[test]
    fn an_instance_that_terminates_fails_the_launch_with_its_reason() {
        let failed = Instance::builder()
            .instance_id("i-2")
            .state(
                InstanceState::builder()
                    .name(InstanceStateName::Terminated)
                    .build(),
            )
            .state_reason(
                StateReason::builder()
                    .code("Server.InsufficientInstanceCapacity")
                    .message("Insufficient capacity.")
                    .build(),
            )
            .build();
        let latest = by_id(vec![instance("i-1", InstanceStateName::Running), failed]);
        assert_eq!(
            launch_progress(&["i-1".to_owned(), "i-2".to_owned()], &latest),
            LaunchProgress::Failed(
                "instance i-2 is terminated instead of running: \
                 Server.InsufficientInstanceCapacity: Insufficient capacity."
                    .to_owned()
            )
        );
    }

    #[test]
    fn outputs_list_ids_and_addresses_in_launch_order() {
        let with_ips = |id: &str, public: Option<&str>, private: &str| {
            Instance::builder()
                .instance_id(id)
                .set_public_ip_address(public.map(str::to_owned))
                .private_ip_address(private)
                .build()
        };
        let latest = by_id(vec![
            with_ips("i-2", Some("54.0.0.2"), "10.0.0.2"),
            with_ips("i-1", None, "10.0.0.1"),
        ]);
        let outputs = provision_outputs(&["i-1".to_owned(), "i-2".to_owned()], &latest);
        let expected: BTreeMap<String, String> = [
            ("instanceIds", "i-1,i-2"),
            ("publicIp", ""),
            ("privateIp", "10.0.0.1"),
            ("publicIps", "54.0.0.2"),
            ("privateIps", "10.0.0.1,10.0.0.2"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
        assert_eq!(outputs, expected);
    }

    #[test]
    fn a_full_fleet_fits_the_result_size_limit() {
        let ids: Vec<String> = (0..MAX_COUNT).map(|n| format!("i-{n:017x}")).collect();
        let latest = by_id(
            ids.iter()
                .map(|id| {
                    Instance::builder()
                        .instance_id(id)
                        .public_ip_address("255.255.255.255")
                        .private_ip_address("255.255.255.255")
                        .build()
                })
                .collect(),
        );
        let waiting: Vec<String> = ids.iter().map(|id| format!("{id}: pending")).collect();
        let state = Launched {
            ids,
            latest,
            region: "ap-southeast-4".to_owned(),
        };
        let error = format!(
            "instances were not running after 86400 s: {}; they are recorded for cleanup",
            summarize(&waiting)
        );
        let delivered = serialize_within_limit(&state.result(1, Some(error)));
        assert_eq!(delivered.exit_code, 1);
        assert!(
            delivered.json.contains(r#""resources":["#),
            "{}",
            delivered.json
        );
    }

    #[test]
    fn summaries_are_bounded() {
        let entries: Vec<String> = (1..=7).map(|n| format!("i-{n}: pending")).collect();
        assert_eq!(
            summarize(&entries),
            "i-1: pending, i-2: pending, i-3: pending, i-4: pending, i-5: pending and 2 more"
        );
        assert_eq!(summarize(&entries[..1]), "i-1: pending");
    }
}
