//! What the built-ins' unit tests share: inputs from a JSON literal, step paths in a folder.

use std::path::Path;

use serde_json::Value;

use super::Inputs;
use crate::step_env::StepPaths;

/// The inputs a step would get as `MAESTRO_INPUTS`, from `json!({...})`; anything but an
/// object is no inputs.
pub fn inputs(value: Value) -> Inputs {
    match value {
        Value::Object(map) => map,
        _ => Inputs::new(),
    }
}

/// A step's paths with `workspace` as its workspace and the outputs and result inside it.
pub fn step_paths(workspace: &Path) -> StepPaths {
    StepPaths {
        outputs_dir: workspace.join(".outputs"),
        result_path: workspace.join(".result.json"),
        workspace_dir: workspace.to_path_buf(),
    }
}
