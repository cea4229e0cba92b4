//! The `ec2-deprovision` built-in: TerminateInstances, then wait until every instance is
//! terminated, reporting what it released so the operator takes it off the run's ledger.
//!
//! When the step runs for a run (`MAESTRO_RUN` set, as in every step and cleanup pod), it
//! terminates only instances tagged `maestro.dev/run=<that run>`: the ids come from the run's
//! ledger, which any step's result can add to, or from a user's input, so they alone must
//! not be able to take down another run's or tenant's machines with the credentials the step
//! holds. This applies to a composition's own deprovision steps too: a run tears down only
//! what it made. Without `MAESTRO_RUN` (the agent run by hand) there is no run to check
//! against and every id given is terminated.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Instance, InstanceStateName};
use tokio::time::Instant;

use super::inputs::{ec2_target, integer_in, is_instance_id, string_list};
use super::provision::RUN_TAG;
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
    /// `MAESTRO_RUN`: only instances tagged with this run are terminated. None: no check.
    pub run: Option<String>,
    /// `MAESTRO_LEDGER_RUNS`: the runs whose ledger this run took over (a rerun's source);
    /// instances tagged with one of them are this run's too.
    pub taken_over: Vec<String>,
}

pub async fn run_ec2_deprovision(inputs: &Inputs, _paths: &StepPaths) -> StepResult {
    let parsed = match parse_deprovision_inputs(inputs, |name| std::env::var(name).ok()) {
        Ok(parsed) => parsed,
        Err(message) => return StepResult::failure(EXIT_BAD_INPUT, message),
    };
    if parsed.instance_ids.is_empty() {
        tracing::info!("nothing to deprovision: input \"instanceIds\" lists no instance");
        let report = Report {
            ids: &[],
            region: &parsed.target.region,
            refused: &[],
        };
        return fit_result(report.result(&BTreeSet::new(), None));
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
        run: env("MAESTRO_RUN").filter(|run| !run.is_empty()),
        taken_over: env("MAESTRO_LEDGER_RUNS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|run| !run.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// What the step reports: built from the ids done so far, with the refusals decided before
/// anything was terminated.
struct Report<'a> {
    /// The ids given, in order.
    ids: &'a [String],
    region: &'a str,
    refused: &'a [Refusal],
}

impl Report<'_> {
    /// The result listing `done` (terminated or gone) as the `terminated` output, and `done`
    /// and the refused ids as the ledger entries to remove, both in the given order.
    /// Refused ids are released too: they are not this run's, so dropping them leaks nothing
    /// of ours, and keeping them would only have every cleanup attempt refuse them again.
    /// Any refusal fails the step, after `failure` if there is one, so that it is seen.
    fn result(&self, done: &BTreeSet<String>, failure: Option<(i32, String)>) -> StepResult {
        let terminated = in_order(self.ids, done);
        let refused_ids = self.refused.iter().map(|refusal| &refusal.id);
        let released = in_order(self.ids, done.iter().chain(refused_ids));
        let (exit_code, error) = match (failure, refusal_message(self.refused)) {
            (Some((code, message)), Some(refusals)) => {
                (code, Some(format!("{message}. {refusals}")))
            }
            (Some((code, message)), None) => (code, Some(message)),
            (None, Some(refusals)) => (EXIT_AGENT_FAILURE, Some(refusals)),
            (None, None) => (0, None),
        };
        StepResult {
            outputs: BTreeMap::from([("terminated".to_owned(), terminated.join(","))]),
            released: instance_resources(&released, self.region),
            exit_code,
            error,
            ..StepResult::default()
        }
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

/// An instance left alone because it does not carry this run's tag.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    id: String,
    /// `i-1 is not tagged maestro.dev/run=a (it carries maestro.dev/run=b); left running`
    reason: String,
}

/// What the step makes of the ids once it has seen their tags.
#[derive(Debug, Default, PartialEq, Eq)]
struct Screened {
    /// Tagged for this run: to terminate.
    ours: Vec<String>,
    /// Not listed by EC2 (never there, or terminated long ago), or already terminated: there
    /// is nothing to terminate, whoever's they were, so they are released without a call,
    /// as an id TerminateInstances answers InvalidInstanceID.NotFound for always was.
    gone: Vec<String>,
    /// Not tagged for this run: never terminated.
    refused: Vec<Refusal>,
}

/// Tag values longer than this are cut in messages: EC2 allows 256 characters, and the
/// message must leave room in the result for the ledger entries.
const SHOWN_TAG_CHARS: usize = 64;
/// Refusals spelled out in the step's error; the log has all of them.
const NAMED_REFUSALS: usize = 3;

/// Sorts `ids` by what `described` (DescribeInstances, by id) says about their run tag.
/// An id EC2 does not list is not terminated: without its tags it cannot be known to be ours.
fn screen(
    ids: &[String],
    described: &BTreeMap<String, Instance>,
    run: &str,
    taken_over: &[String],
) -> Screened {
    let mut screened = Screened::default();
    for id in ids {
        let Some(instance) = described.get(id) else {
            screened.gone.push(id.clone());
            continue;
        };
        let state = state_of(instance);
        if state == InstanceStateName::Terminated {
            screened.gone.push(id.clone());
            continue;
        }
        let tag = instance
            .tags()
            .iter()
            .find(|tag| tag.key() == Some(RUN_TAG))
            .map(|tag| tag.value().unwrap_or_default());
        if tag.is_some_and(|tag| tag == run || taken_over.iter().any(|t| t == tag)) {
            screened.ours.push(id.clone());
            continue;
        }
        let carries = match tag {
            Some(value) => format!("it carries {RUN_TAG}={}", shown(value)),
            None => format!("it has no {RUN_TAG} tag"),
        };
        let left = match state {
            InstanceStateName::Running => "left running".to_owned(),
            other => format!("left alone ({})", other.as_str()),
        };
        screened.refused.push(Refusal {
            id: id.clone(),
            reason: format!("{id} is not tagged {RUN_TAG}={run} ({carries}); {left}"),
        });
    }
    screened
}

/// A tag value for a message, cut to `SHOWN_TAG_CHARS` characters.
fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_TAG_CHARS) {
        Some((end, _)) => format!("{}...", &value[..end]),
        None => value.to_owned(),
    }
}

/// The step's error for `refused`, naming the first few; None when nothing was refused.
fn refusal_message(refused: &[Refusal]) -> Option<String> {
    if refused.is_empty() {
        return None;
    }
    let named: Vec<&str> = refused
        .iter()
        .take(NAMED_REFUSALS)
        .map(|refusal| refusal.reason.as_str())
        .collect();
    let more = match refused.len().saturating_sub(NAMED_REFUSALS) {
        0 => String::new(),
        more => format!("; {more} more refused, see the step's log"),
    };
    Some(format!(
        "refused to terminate {} instance(s) this run did not launch: {}{more}. They are \
         dropped from the run's ledger",
        refused.len(),
        named.join(". ")
    ))
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
    let screened = match &inputs.run {
        Some(run) => match describe_instances(client, ids).await {
            Ok(described) => screen(ids, &described, run, &inputs.taken_over),
            Err(message) => {
                // Nothing was terminated and nothing is released: the next attempt checks again.
                let report = Report {
                    ids,
                    region,
                    refused: &[],
                };
                let message = format!("checking the instances' {RUN_TAG} tag: {message}");
                return report.result(&BTreeSet::new(), Some((EXIT_AGENT_FAILURE, message)));
            }
        },
        None => {
            tracing::warn!(
                "MAESTRO_RUN is not set: terminating every instance given without checking \
                 its {RUN_TAG} tag"
            );
            Screened {
                ours: ids.clone(),
                ..Screened::default()
            }
        }
    };
    for refusal in &screened.refused {
        tracing::warn!("{}", refusal.reason);
    }
    if !screened.gone.is_empty() {
        tracing::info!(
            "already gone (terminated or not listed): {}",
            screened.gone.join(", ")
        );
    }
    let report = Report {
        ids,
        region,
        refused: &screened.refused,
    };
    let mut done: BTreeSet<String> = screened.gone.iter().cloned().collect();
    if screened.ours.is_empty() {
        return report.result(&done, None);
    }

    let requested = match terminate(client, &screened.ours).await {
        Ok(requested) => requested,
        Err((message, not_found)) => {
            done.extend(not_found);
            return report.result(&done, Some((EXIT_AGENT_FAILURE, message)));
        }
    };
    if !requested.not_found.is_empty() {
        tracing::info!(
            "already gone (not found): {}",
            requested.not_found.join(", ")
        );
    }
    done.extend(requested.not_found.iter().cloned());
    if inputs.wait.is_zero() {
        // Termination cannot be undone once EC2 accepted it: the instances are released.
        done.extend(requested.accepted.iter().cloned());
        return report.result(&done, None);
    }

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
                let message = format!("waiting for the instances to terminate: {message}");
                return report.result(&done, Some((EXIT_AGENT_FAILURE, message)));
            }
        };
        let (terminated, waiting) = termination_progress(&pending, &described);
        done.extend(terminated);
        if waiting.is_empty() {
            tracing::info!("terminated {}", screened.ours.join(", "));
            return report.result(&done, None);
        }
        let now = Instant::now();
        if now >= deadline {
            let message = format!(
                "instances were not terminated after {} s: {}; they stay in the run's ledger",
                inputs.wait.as_secs(),
                waiting.join(", ")
            );
            return report.result(&done, Some((EXIT_AGENT_FAILURE, message)));
        }
        let delay = backoff.next_delay().min(deadline - now);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            signal = interrupts.next() => {
                let message = format!(
                    "{signal} received while waiting for {} to terminate",
                    waiting.join(", ")
                );
                return report.result(&done, Some((signal_exit_code(signal), message)));
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
    use aws_sdk_ec2::types::{InstanceState, Tag};
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
                run: None,
                taken_over: Vec::new(),
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
                |name| match name {
                    "MAESTRO_RUN" => Some("build-42-rerun".to_owned()),
                    "MAESTRO_LEDGER_RUNS" => Some("build-42, build-41,".to_owned()),
                    _ => None,
                }
            ),
            Ok(DeprovisionInputs {
                instance_ids: vec!["i-1".to_owned()],
                target: Ec2Target {
                    region: "eu-west-1".to_owned(),
                    endpoint: Some("https://ec2.example".to_owned()),
                },
                wait: Duration::from_secs(30),
                run: Some("build-42-rerun".to_owned()),
                taken_over: vec!["build-42".to_owned(), "build-41".to_owned()],
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
        let done = BTreeSet::from(["i-2".to_owned(), "i-3".to_owned()]);
        assert_eq!(in_order(&ids, &done), ["i-3", "i-2"]);
        let report = Report {
            ids: &ids,
            region: "eu-west-1",
            refused: &[],
        };
        let result = report.result(&done, None);
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
        assert_eq!((result.exit_code, result.error), (0, None));
    }

    fn instance(id: &str, state: InstanceStateName, run_tag: Option<&str>) -> (String, Instance) {
        let mut builder = Instance::builder()
            .instance_id(id)
            .state(InstanceState::builder().name(state).build())
            .tags(Tag::builder().key("team").value("qa").build());
        if let Some(run) = run_tag {
            builder = builder.tags(Tag::builder().key(RUN_TAG).value(run).build());
        }
        (id.to_owned(), builder.build())
    }

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    #[test]
    fn only_instances_tagged_with_this_run_are_terminated() {
        let described: BTreeMap<String, Instance> = [
            instance("i-ours", InstanceStateName::Running, Some("run-a")),
            instance("i-other", InstanceStateName::Running, Some("run-b")),
            instance("i-untagged", InstanceStateName::Stopped, None),
            instance("i-empty", InstanceStateName::Running, Some("")),
            instance(
                "i-ours-stopping",
                InstanceStateName::Stopping,
                Some("run-a"),
            ),
            // Nothing to protect on a terminated instance, whoever's it was.
            instance("i-other-gone", InstanceStateName::Terminated, Some("run-b")),
        ]
        .into_iter()
        .collect();
        let given = ids(&[
            "i-other",
            "i-ours",
            "i-unlisted",
            "i-untagged",
            "i-empty",
            "i-ours-stopping",
            "i-other-gone",
        ]);
        let screened = screen(&given, &described, "run-a", &[]);
        assert_eq!(screened.ours, ids(&["i-ours", "i-ours-stopping"]));
        assert_eq!(
            screened.gone,
            ids(&["i-unlisted", "i-other-gone"]),
            "an unlisted id is not terminated unseen"
        );
        let reasons: Vec<&str> = screened
            .refused
            .iter()
            .map(|refusal| refusal.reason.as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "i-other is not tagged maestro.dev/run=run-a (it carries \
                 maestro.dev/run=run-b); left running",
                "i-untagged is not tagged maestro.dev/run=run-a (it has no maestro.dev/run \
                 tag); left alone (stopped)",
                "i-empty is not tagged maestro.dev/run=run-a (it carries maestro.dev/run=); \
                 left running",
            ]
        );
        assert_eq!(
            screened
                .refused
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["i-other", "i-untagged", "i-empty"]
        );
    }

    // A rerun took over its source's ledger: the source's instances are its to release,
    // and still nobody else's.
    #[test]
    fn a_rerun_terminates_the_instances_of_the_run_it_took_over_and_no_others() {
        let described: BTreeMap<String, Instance> = [
            instance("i-source", InstanceStateName::Running, Some("build-42")),
            instance("i-own", InstanceStateName::Running, Some("build-42-rerun")),
            instance("i-other", InstanceStateName::Running, Some("build-43")),
        ]
        .into_iter()
        .collect();
        let given = ids(&["i-source", "i-own", "i-other"]);
        let screened = screen(
            &given,
            &described,
            "build-42-rerun",
            &["build-42".to_owned()],
        );
        assert_eq!(screened.ours, ids(&["i-source", "i-own"]));
        assert_eq!(
            screened
                .refused
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["i-other"]
        );
        // Without the hand-over, the source's instance is refused like any other.
        let alone = screen(&given, &described, "build-42-rerun", &[]);
        assert_eq!(alone.ours, ids(&["i-own"]));
    }

    #[test]
    fn a_refusal_fails_the_step_but_releases_the_foreign_ids() {
        let given = ids(&["i-1", "i-2", "i-3"]);
        let refused = [Refusal {
            id: "i-2".to_owned(),
            reason: "i-2 is not tagged maestro.dev/run=a (it carries maestro.dev/run=b); \
                     left running"
                .to_owned(),
        }];
        let report = Report {
            ids: &given,
            region: "eu-west-1",
            refused: &refused,
        };
        let done = BTreeSet::from(["i-3".to_owned(), "i-1".to_owned()]);
        let result = report.result(&done, None);
        assert_eq!(
            result.outputs.get("terminated").map(String::as_str),
            Some("i-1,i-3"),
            "a refused id is not reported terminated"
        );
        let released: Vec<&str> = result.released.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(released, ["i-1", "i-2", "i-3"]);
        assert_eq!(result.exit_code, EXIT_AGENT_FAILURE);
        assert_eq!(
            result.error.as_deref(),
            Some(
                "refused to terminate 1 instance(s) this run did not launch: i-2 is not tagged \
                 maestro.dev/run=a (it carries maestro.dev/run=b); left running. They are \
                 dropped from the run's ledger"
            )
        );

        // Another failure comes first and keeps its exit code; the refusal follows.
        let result = report.result(&done, Some((143, "SIGTERM received".to_owned())));
        assert_eq!(result.exit_code, 143);
        assert!(
            result
                .error
                .as_deref()
                .is_some_and(|error| error
                    .starts_with("SIGTERM received. refused to terminate 1 instance(s)")),
            "{:?}",
            result.error
        );
    }

    #[test]
    fn the_error_names_a_few_refusals_with_cut_tag_values() {
        let long = "x".repeat(300);
        let described: BTreeMap<String, Instance> = (0..5)
            .map(|n| instance(&format!("i-{n}"), InstanceStateName::Running, Some(&long)))
            .collect();
        let given: Vec<String> = described.keys().cloned().collect();
        let screened = screen(&given, &described, "run-a", &[]);
        assert_eq!(screened.refused.len(), 5);
        assert!(
            screened.refused[0]
                .reason
                .contains(&format!("maestro.dev/run={}...)", "x".repeat(64))),
            "{:?}",
            screened.refused[0]
        );
        let message = refusal_message(&screened.refused).unwrap_or_default();
        assert!(
            message.starts_with("refused to terminate 5 instance(s)"),
            "{message}"
        );
        assert!(message.contains("i-2 is not tagged") && !message.contains("i-3 is"));
        assert!(
            message.contains("; 2 more refused, see the step's log."),
            "{message}"
        );
        assert!(message.len() < 1000, "{}", message.len());
        assert_eq!(refusal_message(&[]), None);
    }

    #[test]
    fn a_long_list_drops_the_output_before_the_ledger_entries() {
        let ids: Vec<String> = (0..50).map(|n| format!("i-{n:017x}")).collect();
        let report = |ids| Report {
            ids,
            region: "eu-west-1",
            refused: &[],
        };
        let done: BTreeSet<String> = ids.iter().cloned().collect();
        let result = fit_result(report(&ids).result(&done, None));
        assert!(!result.outputs.contains_key("terminated"));
        assert_eq!(result.released.len(), 50);
        let small = fit_result(report(&ids[..3]).result(&done, None));
        assert!(small.outputs.contains_key("terminated"));
    }
}
