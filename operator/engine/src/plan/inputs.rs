//! A step's inputs and parameters, rendered from `with`, task defaults and the scope.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use crate::{
    TaskRuns,
    expr::{self, Scope},
};
use maestro_api::{Step, TaskSpec};

/// The step's inputs: `with` rendered, task defaults (rendered too) for the rest.
pub(super) fn resolve_inputs(
    step: &Step,
    task: &TaskSpec,
    scope: &Scope,
) -> Result<Map<String, Json>, String> {
    let mut inputs = Map::new();
    for (key, value) in &step.with {
        let v = expr::render(value, scope).map_err(|e| format!("input {key:?}: {e}"))?;
        inputs.insert(key.clone(), v);
    }
    for input in &task.inputs {
        if inputs.contains_key(&input.name) {
            continue;
        }
        match &input.default {
            Some(d) => {
                let v = expr::render(d, scope)
                    .map_err(|e| format!("default of input {:?}: {e}", input.name))?;
                inputs.insert(input.name.clone(), v);
            }
            None if input.required => return Err(format!("input {:?} is required", input.name)),
            None => {}
        }
    }
    Ok(inputs)
}

/// The image and command of a `container` step, from its inputs.
pub(super) fn container_inputs(inputs: &Map<String, Json>) -> Result<TaskRuns, String> {
    let image = match inputs.get("image") {
        Some(Json::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("input \"image\" must name an image".into()),
    };
    let command = match inputs.get("command") {
        Some(Json::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| match v {
                Json::String(s) => Ok(s.clone()),
                other => Ok(other.to_string()),
            })
            .collect::<Result<Vec<_>, String>>()?,
        Some(Json::String(s)) if !s.is_empty() => vec!["sh".into(), "-c".into(), s.clone()],
        _ => {
            return Err("input \"command\" must be a list of words or a shell command line".into());
        }
    };
    let pull_policy = inputs
        .get("imagePullPolicy")
        .and_then(Json::as_str)
        .map(str::to_string);
    Ok(TaskRuns::Container {
        image,
        command,
        pull_policy,
    })
}

/// A call step's `with` values rendered as the child run's parameters.
pub(super) fn render_params(
    step: &Step,
    scope: &Scope,
) -> Result<BTreeMap<String, String>, String> {
    step.with
        .iter()
        .map(|(k, v)| {
            expr::render(v, scope)
                .map(|v| (k.clone(), json_text(v)))
                .map_err(|e| format!("param {k:?}: {e}"))
        })
        .collect()
}

pub(super) fn json_text(v: Json) -> String {
    match v {
        Json::String(s) => s,
        other => other.to_string(),
    }
}
