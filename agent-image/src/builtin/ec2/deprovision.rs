//! The `ec2-deprovision` built-in: TerminateInstances, then wait until every instance is
//! terminated, reporting what it released so the operator takes it off the run's ledger.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Instance, InstanceStateName};
use tokio::time::Instant;

use super::inputs::{ec2_target, integer_in, is_instance_id, string_list};
use super::{
    Ec2Target, INSTANCE_NOT_FOUND, Interrupts, PollBackoff, aws_error_message, describe_instances,
    ec2_client, instance_resources, signal_exit_code, state_of,
};
use crate::builtin::Inputs;
use crate::result::{EXIT_AGENT_FAILURE, EXIT_BAD_INPUT, RESULT_SIZE_LIMIT_BYTES, StepResult};
use crate::step_env::StepPaths;

const DEFAULT_WAIT_SECONDS: u64 = 300;
const MAX_WAIT_SECONDS: u64 = 86_400;
/// Ids per TerminateInstances call: well under EC2's limit, and a failing batch falls back
/// to one call per id, so batches stay small.
const BATCH_SIZE: usize = 50;

/// The `ec2-deprovision` task's inputs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeprovisionInputs {
    /// Distinct ids in the order given.
    pub instance_ids: Vec<String>,
    pub target: Ec2Target,
    /// Zero: return once EC2 accepted the terminations.
    pub wait: Duration,
}

pub async fn run_ec2_deprovision(inputs: &Inputs, _paths: &StepPaths) -> StepResult {
    let parsed = match parse_deprovision_inputs(inputs, |name| std::env::var(name).ok()) {
        Ok(parsed) => parsed,
        Err(message) => return StepResult::failure(EXIT_BAD_INPUT, message),
    };
    if parsed.instance_ids.is_empty() {
        tracing::info!("nothing to deprovision: input \"instanceIds\" lists no instance");
        return fit_result(released_result(&[], &parsed.target.region, 0, None));
    }
    let interrupts = Interrupts::listen();
    let client = ec2_client(&parsed.target).await;
    fit_result(deprovision(&client, &parsed, interrupts).await)
}

pub fn parse_deprovision_inputs(
    inputs: &Inputs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<DeprovisionInputs, String> {
    let mut seen = BTreeSet::new();
    let mut instance_ids = Vec::new();
    for id in string_list(inputs, "instanceIds")? {
        if !is_instance_id(&id) {
            return Err(format!(
                "input \"instanceIds\": {id:?} is not an EC2 instance id (i-0123456789abcdef0)"
            ));
        }
        if seen.insert(id.clone()) {
            instance_ids.push(id);
        }
    }
    Ok(DeprovisionInputs {
        instance_ids,
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

/// The result listing `released` (in the given order) as both the `terminated` output and
/// the ledger entries to remove.
fn released_result(
    released: &[String],
    region: &str,
    exit_code: i32,
    error: Option<String>,
) -> StepResult {
    StepResult {
        outputs: BTreeMap::from([("terminated".to_owned(), released.join(","))]),
        released: instance_resources(released, region),
        exit_code,
        error,
        ..StepResult::default()
    }
}

/// Drops the `terminated` output if the result would not fit the termination message:
/// `released` is what keeps the run's ledger right, and the output repeats it.
fn fit_result(mut result: StepResult) -> StepResult {
    let size = serde_json::to_string(&result).map_or(0, |json| json.len());
    if size > RESULT_SIZE_LIMIT_BYTES && result.outputs.remove("terminated").is_some() {
        tracing::warn!(
            "output \"terminated\" left out: with it the result is {size} bytes, over the \
             {RESULT_SIZE_LIMIT_BYTES}-byte limit; deprovision fewer instances per step"
        );
    }
    result
}

/// What TerminateInstances made of the ids.
#[derive(Debug, Default)]
struct Requested {
    /// Termination accepted (shutting down or already terminated).
    accepted: Vec<String>,
    /// EC2 does not know them: terminated long ago, or never there. Released all the same.
    not_found: Vec<String>,
}

async fn deprovision(
    client: &Client,
    inputs: &DeprovisionInputs,
    mut interrupts: Interrupts,
) -> StepResult {
    let region = &inputs.target.region;
    let ids = &inputs.instance_ids;
    let requested = match terminate(client, ids).await {
        Ok(requested) => requested,
        Err((message, not_found)) => {
            let released = in_order(ids, &not_found);
            return released_result(&released, region, EXIT_AGENT_FAILURE, Some(message));
        }
    };
    if !requested.not_found.is_empty() {
        tracing::info!(
            "already gone (not found): {}",
            requested.not_found.join(", ")
        );
    }
    if inputs.wait.is_zero() {
        // Termination cannot be undone once EC2 accepted it: the instances are released.
        return released_result(ids, region, 0, None);
    }

    let mut done: BTreeSet<String> = requested.not_found.iter().cloned().collect();
    let deadline = Instant::now() + inputs.wait;
    let mut backoff = PollBackoff::new();
    loop {
        let pending: Vec<String> = requested
            .accepted
            .iter()
            .filter(|id| !done.contains(*id))
            .cloned()
            .collect();
        let described = match describe_instances(client, &pending).await {
            Ok(described) => described,
            Err(message) => {
                let released = in_order(ids, &done);
                return released_result(
                    &released,
                    region,
                    EXIT_AGENT_FAILURE,
                    Some(format!("waiting for the instances to terminate: {message}")),
                );
            }
        };
        let (terminated, waiting) = termination_progress(&pending, &described);
        done.extend(terminated);
        if waiting.is_empty() {
            tracing::info!("terminated {}", ids.join(", "));
            return released_result(ids, region, 0, None);
        }
        let released = in_order(ids, &done);
        let now = Instant::now();
        if now >= deadline {
            return released_result(
                &released,
                region,
                EXIT_AGENT_FAILURE,
                Some(format!(
                    "instances were not terminated after {} s: {}; they stay in the run's \
                     ledger",
                    inputs.wait.as_secs(),
                    waiting.join(", ")
                )),
            );
        }
        let delay = backoff.next_delay().min(deadline - now);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            signal = interrupts.next() => {
                return released_result(
                    &released,
                    region,
                    signal_exit_code(signal),
                    Some(format!(
                        "{signal} received while waiting for {} to terminate",
                        waiting.join(", ")
                    )),
                );
            }
        }
    }
}

/// Requests the termination of `ids`. EC2 fails a whole call when one id is unknown, so a
/// batch that fails that way is retried one id at a time to tell the unknown ones apart.
/// On failure, returns the message and the ids found unknown so far.
async fn terminate(client: &Client, ids: &[String]) -> Result<Requested, (String, Vec<String>)> {
    let mut requested = Requested::default();
    for batch in ids.chunks(BATCH_SIZE) {
        match terminate_batch(client, batch).await {
            Ok(accepted) => requested.accepted.extend(accepted),
            Err((code, _)) if code.as_deref() == Some(INSTANCE_NOT_FOUND) => {
                for id in batch {
                    match terminate_batch(client, std::slice::from_ref(id)).await {
                        Ok(accepted) => requested.accepted.extend(accepted),
                        Err((code, _)) if code.as_deref() == Some(INSTANCE_NOT_FOUND) => {
                            requested.not_found.push(id.clone());
                        }
                        Err((_, message)) => return Err((message, requested.not_found)),
                    }
                }
            }
            Err((_, message)) => return Err((message, requested.not_found)),
        }
    }
    Ok(requested)
}

/// One TerminateInstances call: the ids whose termination EC2 accepted, or the error's AWS
/// code and message.
async fn terminate_batch(
    client: &Client,
    ids: &[String],
) -> Result<Vec<String>, (Option<String>, String)> {
    let output = client
        .terminate_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .send()
        .await
        .map_err(|error| {
            (
                error.code().map(str::to_owned),
                aws_error_message("TerminateInstances", &error),
            )
        })?;
    let mut accepted: Vec<String> = output
        .terminating_instances()
        .iter()
        .filter_map(|change| change.instance_id().map(str::to_owned))
        .collect();
    // EC2 answers for every id it accepted; an id it left out is still asked about while
    // waiting, so it is not released unseen.
    for id in ids {
        if !accepted.contains(id) {
            accepted.push(id.clone());
        }
    }
    Ok(accepted)
}

/// Splits `ids` into those terminated (or no longer listed: EC2 forgets terminated instances
/// after a while) and `id: state` of the others.
fn termination_progress(
    ids: &[String],
    described: &BTreeMap<String, Instance>,
) -> (Vec<String>, Vec<String>) {
    let mut terminated = Vec::new();
    let mut waiting = Vec::new();
    for id in ids {
        match described.get(id).map(state_of) {
            None | Some(InstanceStateName::Terminated) => terminated.push(id.clone()),
            Some(state) => waiting.push(format!("{id}: {}", state.as_str())),
        }
    }
    (terminated, waiting)
}

/// The ids of `ids` that are in `subset`, in the order of `ids`.
fn in_order<'a>(ids: &[String], subset: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let subset: BTreeSet<&String> = subset.into_iter().collect();
    ids.iter()
        .filter(|id| subset.contains(id))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_support::inputs;
    use crate::result::ExternalResource;
    use aws_sdk_ec2::types::InstanceState;
    use serde_json::{Value, json};

    #[test]
    fn ids_come_as_a_list_or_comma_separated_and_are_deduplicated() {
        let expected = vec!["i-0a".to_owned(), "i-0b".to_owned()];
        for given in [json!(["i-0a", "i-0b", "i-0a"]), json!("i-0a, i-0b,i-0a,")] {
            let parsed = parse_deprovision_inputs(&inputs(json!({"instanceIds": given})), |_| None);
            assert_eq!(
                parsed.map(|parsed| parsed.instance_ids),
                Ok(expected.clone())
            );
        }
    }

    #[test]
    fn defaults_and_all_inputs() {
        assert_eq!(
            parse_deprovision_inputs(&inputs(json!({})), |name| (name == "AWS_REGION")
                .then(|| "eu-central-1".to_owned())),
            Ok(DeprovisionInputs {
                instance_ids: Vec::new(),
                target: Ec2Target {
                    region: "eu-central-1".to_owned(),
                    endpoint: None,
                },
                wait: Duration::from_secs(300),
            })
        );
        assert_eq!(
            parse_deprovision_inputs(
                &inputs(json!({
                    "instanceIds": ["i-1"],
                    "region": "eu-west-1",
                    "endpoint": "https://ec2.example",
                    "waitSeconds": "30",
                })),
                |_| None
            ),
            Ok(DeprovisionInputs {
                instance_ids: vec!["i-1".to_owned()],
                target: Ec2Target {
                    region: "eu-west-1".to_owned(),
                    endpoint: Some("https://ec2.example".to_owned()),
                },
                wait: Duration::from_secs(30),
            })
        );
    }

    #[test]
    fn messages_name_the_bad_input() {
        let error_for = |value: Value| {
            parse_deprovision_inputs(&inputs(value), |_| None)
                .err()
                .unwrap_or_default()
        };
        assert_eq!(
            error_for(json!({"instanceIds": ["i-1", "ami-2"]})),
            r#"input "instanceIds": "ami-2" is not an EC2 instance id (i-0123456789abcdef0)"#
        );
        assert_eq!(
            error_for(json!({"instanceIds": 5})),
            r#"input "instanceIds" must be an array of strings or a comma-separated string"#
        );
        assert_eq!(
            error_for(json!({"waitSeconds": "soon"})),
            r#"input "waitSeconds" must be an integer from 0 to 86400"#
        );
    }

    #[tokio::test]
    async fn an_empty_list_is_a_successful_no_op() {
        let paths = StepPaths::from_lookup(|_| None);
        let result = run_ec2_deprovision(&inputs(json!({"instanceIds": []})), &paths).await;
        assert_eq!(
            result,
            StepResult {
                outputs: BTreeMap::from([("terminated".to_owned(), String::new())]),
                ..StepResult::default()
            }
        );
    }

    #[test]
    fn unlisted_and_terminated_instances_are_done() {
        let described: BTreeMap<String, Instance> = [
            ("i-1", InstanceStateName::Terminated),
            ("i-2", InstanceStateName::ShuttingDown),
        ]
        .into_iter()
        .map(|(id, state)| {
            let instance = Instance::builder()
                .instance_id(id)
                .state(InstanceState::builder().name(state).build())
                .build();
            (id.to_owned(), instance)
        })
        .collect();
        let ids = ["i-1".to_owned(), "i-2".to_owned(), "i-3".to_owned()];
        assert_eq!(
            termination_progress(&ids, &described),
            (
                vec!["i-1".to_owned(), "i-3".to_owned()],
                vec!["i-2: shutting-down".to_owned()]
            )
        );
    }

    #[test]
    fn released_lists_keep_the_given_order() {
        let ids = ["i-3".to_owned(), "i-1".to_owned(), "i-2".to_owned()];
        let done = ["i-2".to_owned(), "i-3".to_owned()];
        let released = in_order(&ids, &done);
        assert_eq!(released, ["i-3", "i-2"]);
        let result = released_result(&released, "eu-west-1", 0, None);
        assert_eq!(
            result.outputs.get("terminated").map(String::as_str),
            Some("i-3,i-2")
        );
        assert_eq!(
            result.released.first(),
            Some(&ExternalResource {
                kind: "ec2-instance".to_owned(),
                id: "i-3".to_owned(),
                region: "eu-west-1".to_owned(),
            })
        );
    }

    #[test]
    fn a_long_list_drops_the_output_before_the_ledger_entries() {
        let ids: Vec<String> = (0..50).map(|n| format!("i-{n:017x}")).collect();
        let result = fit_result(released_result(&ids, "eu-west-1", 0, None));
        assert!(!result.outputs.contains_key("terminated"));
        assert_eq!(result.released.len(), 50);
        let small = fit_result(released_result(&ids[..3], "eu-west-1", 0, None));
        assert!(small.outputs.contains_key("terminated"));
    }
}
