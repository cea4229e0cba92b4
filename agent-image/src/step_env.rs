//! The environment the operator gives a step's main container: where outputs and the result
//! go, and the run's workspace.

use std::ffi::OsString;
use std::path::PathBuf;

use maestro_protocol::env::{DEFAULT_OUTPUTS_DIR, DEFAULT_RESULT_PATH, DEFAULT_WORKSPACE_DIR};
pub use maestro_protocol::env::{
    INPUTS as INPUTS_VAR, OUTPUTS_DIR as OUTPUTS_DIR_VAR, RESULT_PATH as RESULT_PATH_VAR,
    WORKSPACE_DIR as WORKSPACE_DIR_VAR,
};

/// The variable `maestro-agent exec` gives its command: the file where the command may
/// write its report values, a JSON object of numbers and strings (tests run, artifact size),
/// which the operator exports as metrics. It is in the outputs directory, under a name no
/// output can have.
pub const REPORT_VAR: &str = "MAESTRO_REPORT";
/// The report file's name in the outputs directory.
pub const REPORT_FILE: &str = "report.json";

/// Paths of a step, from the `MAESTRO_*` variables or their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPaths {
    /// Where the command writes one file per output.
    pub outputs_dir: PathBuf,
    /// Where the agent writes the result JSON: the pod's termination message by default.
    pub result_path: PathBuf,
    /// The run's shared workspace.
    pub workspace_dir: PathBuf,
}

impl StepPaths {
    pub fn from_process_env() -> Self {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// Reads the paths through `lookup`, so tests need not change the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Self {
        // An empty variable means "not set": a template that renders to "" should not make
        // the agent write into its current directory.
        let path_or = |name: &str, default: &str| {
            lookup(name)
                .filter(|value| !value.is_empty())
                .map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        Self {
            outputs_dir: path_or(OUTPUTS_DIR_VAR, DEFAULT_OUTPUTS_DIR),
            result_path: path_or(RESULT_PATH_VAR, DEFAULT_RESULT_PATH),
            workspace_dir: path_or(WORKSPACE_DIR_VAR, DEFAULT_WORKSPACE_DIR),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_and_empty_variables_fall_back_to_defaults() {
        let paths =
            StepPaths::from_lookup(|name| (name == RESULT_PATH_VAR).then(|| OsString::from("")));
        assert_eq!(
            paths,
            StepPaths {
                outputs_dir: PathBuf::from("/maestro/outputs"),
                result_path: PathBuf::from("/dev/termination-log"),
                workspace_dir: PathBuf::from("/workspace"),
            }
        );
    }

    #[test]
    fn variables_override_defaults() {
        let paths = StepPaths::from_lookup(|name| Some(OsString::from(format!("/x/{name}"))));
        assert_eq!(paths.outputs_dir, PathBuf::from("/x/MAESTRO_OUTPUTS"));
        assert_eq!(paths.result_path, PathBuf::from("/x/MAESTRO_RESULT_PATH"));
        assert_eq!(paths.workspace_dir, PathBuf::from("/x/MAESTRO_WORKSPACE"));
    }
}
