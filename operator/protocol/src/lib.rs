//! The contract between Maestro's operator and the `maestro-agent` in every step pod,
//! written once for both sides:
//! - [`StepResult`]: the JSON the agent writes to the pod's termination message and the
//!   operator reads back;
//! - [`BuiltinTask`]: the built-in task names the operator passes to `maestro-agent builtin`;
//! - [`env`]: the `MAESTRO_*` variables the operator sets in a step's container.
//!
//! Serde only: no Kubernetes types, no runtime, so the agent links nothing of the operator.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The kubelet keeps at most this many bytes of a container's termination message, so a
/// result must fit in it.
pub const RESULT_SIZE_LIMIT_BYTES: usize = 4096;

/// The result of a step. Empty fields are left out so small results stay small; every
/// field may be missing when read (a pod killed before the agent wrote anything reads as
/// the default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StepResult {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// External resources the step created (e.g. an EC2 instance), for the run's ledger.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ExternalResource>,
    /// External resources the step removed (ec2-deprovision), taken off the run's ledger.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<ExternalResource>,
    /// Values the task reports (tests run, artifact size...), exported as metrics.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub report: BTreeMap<String, ReportValue>,
    /// The step's exit code; the agent exits with it, so it matches the container's.
    pub exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StepResult {
    /// A result for a step that failed before or instead of running its command.
    pub fn failure(exit_code: i32, error: impl Into<String>) -> Self {
        Self {
            exit_code,
            error: Some(error.into()),
            ..Self::default()
        }
    }
}

/// An external resource a step created or removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExternalResource {
    pub kind: String,
    pub id: String,
    /// Empty when the resource has no region.
    pub region: String,
}

/// A value of a step's report: a number or a string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReportValue {
    Number(serde_json::Number),
    Text(String),
}

impl ReportValue {
    /// The value as a metric sample, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Number(n) => n.as_f64(),
            Self::Text(_) => None,
        }
    }
}

// A Task whose `runs.builtin` names one runs `maestro-agent builtin <name>` in the agent
// image. The doc line below is the CRD's description of `runs.builtin`.
/// A built-in task of `maestro-agent`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum BuiltinTask {
    /// Runs a script with a shell.
    Shell,
    /// Clones or fetches a git repository into the run's workspace.
    Git,
    /// Makes an HTTP request or downloads a file.
    Http,
    /// Starts EC2 instances and records them in the run's ledger.
    Ec2Provision,
    /// Terminates EC2 instances, by default every one this run provisioned.
    Ec2Deprovision,
    /// Posts a JSON message to a webhook (Slack-compatible).
    Notify,
    /// Runs any image and command given as inputs.
    Container,
}

impl BuiltinTask {
    /// Every built-in, in the order `maestro-agent` lists them.
    pub const ALL: [Self; 7] = [
        Self::Shell,
        Self::Git,
        Self::Http,
        Self::Ec2Provision,
        Self::Ec2Deprovision,
        Self::Notify,
        Self::Container,
    ];

    /// The name used in YAML and on the agent's command line, e.g. `ec2-provision`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shell => "shell",
            Self::Git => "git",
            Self::Http => "http",
            Self::Ec2Provision => "ec2-provision",
            Self::Ec2Deprovision => "ec2-deprovision",
            Self::Notify => "notify",
            Self::Container => "container",
        }
    }

    /// The built-in named `name`, as the agent receives it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == name)
    }
}

/// The environment of a step's main container: names the operator sets and the agent reads.
pub mod env {
    /// The run's name.
    pub const RUN: &str = "MAESTRO_RUN";
    /// Runs whose ledger this run took over (a rerun takes its source's), joined by
    /// commas: what is tagged with one of them is this run's to release too.
    pub const LEDGER_RUNS: &str = "MAESTRO_LEDGER_RUNS";
    /// The step's name.
    pub const STEP: &str = "MAESTRO_STEP";
    /// The attempt number, from 1.
    pub const ATTEMPT: &str = "MAESTRO_ATTEMPT";
    /// The Task the step runs.
    pub const TASK: &str = "MAESTRO_TASK";
    /// Where the command writes one file per output.
    pub const OUTPUTS_DIR: &str = "MAESTRO_OUTPUTS";
    /// Where the agent writes the result JSON.
    pub const RESULT_PATH: &str = "MAESTRO_RESULT_PATH";
    /// The run's shared workspace.
    pub const WORKSPACE_DIR: &str = "MAESTRO_WORKSPACE";
    /// The resolved inputs, as one JSON object.
    pub const INPUTS: &str = "MAESTRO_INPUTS";
    /// The run's shared context, as one JSON object.
    pub const CONTEXT: &str = "MAESTRO_CONTEXT";
    /// Prefix of one variable per scalar input: `MAESTRO_INPUT_<NAME>`, upper case.
    pub const INPUT_PREFIX: &str = "MAESTRO_INPUT_";

    /// Default of [`OUTPUTS_DIR`].
    pub const DEFAULT_OUTPUTS_DIR: &str = "/maestro/outputs";
    /// Default of [`RESULT_PATH`]: the container's termination message.
    pub const DEFAULT_RESULT_PATH: &str = "/dev/termination-log";
    /// Default of [`WORKSPACE_DIR`].
    pub const DEFAULT_WORKSPACE_DIR: &str = "/workspace";

    /// The variable of one scalar input.
    pub fn input_var(input: &str) -> String {
        format!("{INPUT_PREFIX}{}", input.to_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the agent writes is what the operator reads: every field survives the trip.
    #[test]
    fn a_full_result_round_trips() -> Result<(), serde_json::Error> {
        let written = StepResult {
            outputs: BTreeMap::from([("greeting".to_owned(), "hello".to_owned())]),
            resources: vec![ExternalResource {
                kind: "ec2-instance".to_owned(),
                id: "i-0123".to_owned(),
                region: "eu-west-1".to_owned(),
            }],
            released: vec![ExternalResource {
                kind: "ec2-instance".to_owned(),
                id: "i-0456".to_owned(),
                region: String::new(),
            }],
            report: BTreeMap::from([
                ("tests".to_owned(), ReportValue::Number(12.into())),
                ("suite".to_owned(), ReportValue::Text("smoke".to_owned())),
            ]),
            exit_code: 3,
            error: Some("2 tests failed".to_owned()),
        };
        let json = serde_json::to_string(&written)?;
        let read: StepResult = serde_json::from_str(&json)?;
        assert_eq!(read, written);
        assert_eq!(read.report["tests"].as_f64(), Some(12.0));
        assert_eq!(read.report["suite"].as_f64(), None);
        Ok(())
    }

    #[test]
    fn a_minimal_result_reads_with_defaults() -> Result<(), serde_json::Error> {
        let read: StepResult = serde_json::from_str(r#"{"exitCode":0}"#)?;
        assert_eq!(read, StepResult::default());
        let read: StepResult = serde_json::from_str("{}")?;
        assert_eq!(read.exit_code, 0);
        Ok(())
    }

    #[test]
    fn builtin_names_match_their_serde_names() -> Result<(), serde_json::Error> {
        for builtin in BuiltinTask::ALL {
            let json = serde_json::to_string(&builtin)?;
            assert_eq!(json, format!("\"{}\"", builtin.as_str()));
            assert_eq!(BuiltinTask::from_name(builtin.as_str()), Some(builtin));
        }
        assert_eq!(BuiltinTask::from_name("maven"), None);
        Ok(())
    }

    #[test]
    fn input_variables_are_upper_case() {
        assert_eq!(env::input_var("script"), "MAESTRO_INPUT_SCRIPT");
    }
}
