//! The step result: what the agent reports to the operator, and writing it within the size
//! limit of a pod's termination message.

use std::path::Path;

/// The step result and its size limit are the protocol's, shared with the operator.
pub use maestro_protocol::{ExternalResource, RESULT_SIZE_LIMIT_BYTES, StepResult};

/// Exit code for a step whose command could not be started (the shells' convention).
pub const EXIT_CANNOT_START: i32 = 127;
/// Exit code for a step the agent rejected before running anything (bad input, unknown task).
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code for a step whose command succeeded but whose result the agent could not deliver.
pub const EXIT_AGENT_FAILURE: i32 = 1;

/// A result ready to write: the JSON and the exit code the agent exits with.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverableResult {
    pub json: String,
    pub exit_code: i32,
    /// The error the delivered result carries, to repeat in the pod log.
    pub error: Option<String>,
}

/// Serializes `result` compactly, replacing it by a failure when it is over the size limit:
/// a truncated termination message would lose the result anyway, and a step whose outputs do
/// not fit must fail rather than succeed without them.
pub fn serialize_within_limit(result: &StepResult) -> DeliverableResult {
    let full = match serde_json::to_string(result) {
        Ok(json) => json,
        // Serializing maps of strings cannot fail; still, report rather than panic.
        Err(error) => return replacement(result, format!("cannot serialize the result: {error}")),
    };
    if full.len() <= RESULT_SIZE_LIMIT_BYTES {
        return DeliverableResult {
            json: full,
            exit_code: result.exit_code,
            error: result.error.clone(),
        };
    }
    // An output read to its cap was longer on disk: the size is then a lower bound.
    let capped = result
        .outputs
        .values()
        .any(|value| value.len() > RESULT_SIZE_LIMIT_BYTES);
    let message = format!(
        "outputs are {}{} bytes, over the {RESULT_SIZE_LIMIT_BYTES}-byte limit of a step's \
         result{}; write large data to the workspace and output its path",
        if capped { "at least " } else { "" },
        full.len(),
        largest_outputs(result)
    );
    replacement(result, message)
}

/// How many outputs an oversized result's error names.
const NAMED_LARGEST_OUTPUTS: usize = 3;

/// `" (largest: a 5000 bytes, b 30 bytes)"`: the outputs to look at first, or nothing when
/// the result has none. An output read to its cap is "over" the limit: the agent reads no
/// further (see `outputs::OUTPUT_READ_LIMIT_BYTES`).
fn largest_outputs(result: &StepResult) -> String {
    let mut sizes: Vec<(&str, usize)> = result
        .outputs
        .iter()
        .map(|(name, value)| (name.as_str(), value.len()))
        .collect();
    if sizes.is_empty() {
        return String::new();
    }
    // Largest first; equal sizes by name, so the message is stable.
    sizes.sort_by(|left, right| right.1.cmp(&left.1).then(left.0.cmp(right.0)));
    let named: Vec<String> = sizes
        .iter()
        .take(NAMED_LARGEST_OUTPUTS)
        .map(|(name, size)| {
            if *size > RESULT_SIZE_LIMIT_BYTES {
                format!("{name} over {RESULT_SIZE_LIMIT_BYTES} bytes")
            } else {
                format!("{name} {size} bytes")
            }
        })
        .collect();
    format!(" (largest: {})", named.join(", "))
}

/// The small result that replaces one that cannot be delivered: it keeps the command's exit
/// code, or fails the step if the command had succeeded.
fn replacement(result: &StepResult, message: String) -> DeliverableResult {
    let exit_code = failed_exit_code(result.exit_code);
    let small = StepResult::failure(exit_code, message);
    let json =
        serde_json::to_string(&small).unwrap_or_else(|_| format!("{{\"exitCode\":{exit_code}}}"));
    DeliverableResult {
        json,
        exit_code,
        error: small.error,
    }
}

/// The exit code of a step that failed after its command exited with `command_exit_code`.
fn failed_exit_code(command_exit_code: i32) -> i32 {
    if command_exit_code == 0 {
        EXIT_AGENT_FAILURE
    } else {
        command_exit_code
    }
}

/// Writes the result to `path` (normally `/dev/termination-log`) and returns the exit code the
/// agent should exit with. A result that cannot be written fails a step that had succeeded,
/// because the operator would otherwise see success without the step's outputs.
pub fn write_result(result: &StepResult, path: &Path) -> i32 {
    let delivered = serialize_within_limit(result);
    if let Some(error) = &delivered.error {
        // The pod log is where a user looks first; the result only shows in the run status.
        eprintln!("maestro-agent: error: {error}");
    }
    // A plain overwrite, not temp file + rename: the termination log is a bind-mounted file.
    match std::fs::write(path, delivered.json.as_bytes()) {
        Ok(()) => delivered.exit_code,
        Err(error) => {
            eprintln!(
                "maestro-agent: error: cannot write the step result to {}: {error}",
                path.display()
            );
            failed_exit_code(delivered.exit_code)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use maestro_protocol::ReportValue;

    use super::*;

    #[test]
    fn empty_fields_are_omitted() {
        let result = StepResult::default();
        let delivered = serialize_within_limit(&result);
        assert_eq!(delivered.json, r#"{"exitCode":0}"#);
        assert_eq!(delivered.exit_code, 0);
    }

    #[test]
    fn all_fields_serialize_in_camel_case() {
        let result = StepResult {
            outputs: BTreeMap::from([("greeting".to_owned(), "hello".to_owned())]),
            resources: vec![ExternalResource {
                kind: "ec2-instance".to_owned(),
                id: "i-0123".to_owned(),
                region: "eu-west-1".to_owned(),
            }],
            released: vec![ExternalResource {
                kind: "ec2-instance".to_owned(),
                id: "i-0456".to_owned(),
                region: "eu-west-1".to_owned(),
            }],
            report: BTreeMap::from([
                ("count".to_owned(), ReportValue::Number(3.into())),
                ("note".to_owned(), ReportValue::Text("ok".to_owned())),
            ]),
            exit_code: 4,
            error: Some("boom".to_owned()),
        };
        let delivered = serialize_within_limit(&result);
        assert_eq!(delivered.exit_code, 4);
        assert_eq!(
            delivered.json,
            r#"{"outputs":{"greeting":"hello"},"resources":[{"kind":"ec2-instance","id":"i-0123","region":"eu-west-1"}],"released":[{"kind":"ec2-instance","id":"i-0456","region":"eu-west-1"}],"report":{"count":3,"note":"ok"},"exitCode":4,"error":"boom"}"#
        );
    }

    fn result_with_output_of(bytes: usize, exit_code: i32) -> StepResult {
        StepResult {
            outputs: BTreeMap::from([("big".to_owned(), "x".repeat(bytes))]),
            exit_code,
            ..StepResult::default()
        }
    }

    #[test]
    fn result_at_the_limit_is_kept() {
        let overhead = r#"{"outputs":{"big":""},"exitCode":0}"#.len();
        let result = result_with_output_of(RESULT_SIZE_LIMIT_BYTES - overhead, 0);
        let delivered = serialize_within_limit(&result);
        assert_eq!(delivered.json.len(), RESULT_SIZE_LIMIT_BYTES);
        assert_eq!(delivered.exit_code, 0);
    }

    #[test]
    fn oversized_result_of_a_successful_command_fails_the_step() {
        let result = result_with_output_of(5000, 0);
        let full_len = serde_json::to_string(&result)
            .map(|json| json.len())
            .unwrap_or(0);
        let delivered = serialize_within_limit(&result);
        assert_eq!(delivered.exit_code, 1);
        let expected = format!(
            "{{\"exitCode\":1,\"error\":\"outputs are at least {full_len} bytes, over the 4096-byte limit \
             of a step's result (largest: big over 4096 bytes); write large data to the \
             workspace and output its path\"}}"
        );
        assert_eq!(delivered.json, expected);
    }

    #[test]
    fn oversized_result_names_its_largest_outputs_first() {
        let result = StepResult {
            outputs: BTreeMap::from([
                ("small".to_owned(), "x".repeat(10)),
                ("medium".to_owned(), "x".repeat(1500)),
                ("large".to_owned(), "x".repeat(2000)),
                ("alsoLarge".to_owned(), "x".repeat(2000)),
            ]),
            ..StepResult::default()
        };
        let delivered = serialize_within_limit(&result);
        let error = delivered.error.unwrap_or_default();
        assert!(
            error.contains("(largest: alsoLarge 2000 bytes, large 2000 bytes, medium 1500 bytes)"),
            "{error}"
        );
        assert!(!error.contains("small"), "{error}");
    }

    #[test]
    fn oversized_result_of_a_failed_command_keeps_its_exit_code() {
        let delivered = serialize_within_limit(&result_with_output_of(5000, 3));
        assert_eq!(delivered.exit_code, 3);
        assert!(
            delivered
                .json
                .starts_with(r#"{"exitCode":3,"error":"outputs are "#),
            "{}",
            delivered.json
        );
    }

    #[test]
    fn write_result_writes_the_file_and_returns_the_exit_code() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("result.json");
        let exit_code = write_result(&StepResult::failure(2, "bad"), &path);
        assert_eq!(exit_code, 2);
        assert_eq!(
            std::fs::read_to_string(&path)?,
            r#"{"exitCode":2,"error":"bad"}"#
        );
        Ok(())
    }

    #[test]
    fn unwritable_result_fails_a_successful_step() {
        let path = Path::new("/nonexistent-dir/result.json");
        assert_eq!(write_result(&StepResult::default(), path), 1);
    }
}
