//! Validation of a composition before any pod starts: unique names, known steps and
//! tasks, no dependency cycle, required inputs and params present, CEL that parses,
//! durations that parse. Every problem names the field it is in.

use std::collections::BTreeMap;

use maestro_api::{BuiltinTask, CompositionSpec, Step, TaskInput, TaskSpec, parse_duration};

use super::expr;

/// The steps each step waits for, by index into `spec.steps`.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub deps: Vec<Vec<usize>>,
}

/// Validates `spec` against the Tasks found for it (`None`: skip the checks that need
/// Tasks) and, for a run, the run's params. Returns every problem found, each naming its
/// field.
pub fn validate(
    spec: &CompositionSpec,
    tasks: Option<&BTreeMap<String, TaskSpec>>,
    run_params: Option<&BTreeMap<String, String>>,
) -> Result<Graph, Vec<String>> {
    let mut problems = Vec::new();
    // The schema refuses it; a composition stored before that rule still meets this.
    if !spec.secret_env.is_empty() {
        problems.push(
            "spec.secretEnv would hand every step every Secret: name Secrets per step \
             (spec.steps[].secretEnv) or in the Task that needs them (the Task's spec.secretEnv)"
                .into(),
        );
    }
    let mut index = BTreeMap::new();
    for (i, step) in spec.steps.iter().enumerate() {
        if index.insert(step.name.as_str(), i).is_some() {
            problems.push(format!(
                "spec.steps[{i}].name: duplicate step name {:?}",
                step.name
            ));
        }
    }

    let mut deps = Vec::with_capacity(spec.steps.len());
    for (i, step) in spec.steps.iter().enumerate() {
        let mut mine = Vec::new();
        match &step.depends_on {
            Some(names) => {
                for name in names {
                    match index.get(name.as_str()) {
                        Some(&j) if j == i => problems.push(format!(
                            "spec.steps[{i}].dependsOn: step {:?} depends on itself",
                            step.name
                        )),
                        Some(&j) => mine.push(j),
                        None => problems
                            .push(format!("spec.steps[{i}].dependsOn: unknown step {name:?}")),
                    }
                }
            }
            None if i > 0 => mine.push(i - 1),
            None => {}
        }
        deps.push(mine);
        check_step(i, step, tasks, &mut problems);
    }
    if let Some(cycle) = find_cycle(&deps) {
        let names: Vec<&str> = cycle.iter().map(|&i| spec.steps[i].name.as_str()).collect();
        problems.push(format!(
            "spec.steps: dependency cycle {}",
            names.join(" -> ")
        ));
    }

    if let Some(call) = &spec.on_failure {
        for (key, value) in &call.params {
            let text = serde_json::Value::String(value.clone());
            if let Err(e) = template_exprs_in(&text).and_then(check_all) {
                problems.push(format!("spec.onFailure.params.{key}: {e}"));
            }
        }
    }
    if let Some(t) = &spec.timeout
        && let Err(e) = parse_duration(t)
    {
        problems.push(format!("spec.timeout: {e}"));
    }
    problems.extend(crate::params::problems(spec, run_params));
    if let Some(params) = run_params {
        for p in &spec.params {
            if p.default.is_none() && !params.contains_key(&p.name) {
                problems.push(format!("spec.params: missing required param {:?}", p.name));
            }
        }
        for key in params.keys() {
            if !spec.params.iter().any(|p| &p.name == key) {
                problems.push(format!(
                    "spec.params.{key}: the composition has no param {key:?}"
                ));
            }
        }
    }

    if problems.is_empty() {
        Ok(Graph { deps })
    } else {
        Err(problems)
    }
}

fn check_step(
    i: usize,
    step: &Step,
    tasks: Option<&BTreeMap<String, TaskSpec>>,
    problems: &mut Vec<String>,
) {
    let at = format!("spec.steps[{i}]");
    if step.kind().is_none() {
        problems.push(format!(
            "{at}: a step runs exactly one of task, approval, composition, compositions, waitFor"
        ));
    }
    if let Some(when) = &step.when
        && let Err(e) = expr::check(when)
    {
        problems.push(format!("{at}.when: {e}"));
    }
    for (key, value) in &step.with {
        if let Err(e) = template_exprs_in(value).and_then(check_all) {
            problems.push(format!("{at}.with.{key}: {e}"));
        }
    }
    for (field, value) in [
        ("timeout", step.timeout.as_deref()),
        (
            "retries.backoff",
            step.retries.as_ref().and_then(|r| r.backoff.as_deref()),
        ),
        (
            "retries.maxBackoff",
            step.retries.as_ref().and_then(|r| r.max_backoff.as_deref()),
        ),
        (
            "approval.timeout",
            step.approval.as_ref().and_then(|a| a.timeout.as_deref()),
        ),
    ] {
        if let Some(Err(e)) = value.map(parse_duration) {
            problems.push(format!("{at}.{field}: {e}"));
        }
    }
    let Some(task_name) = &step.task else { return };
    let Some(tasks) = tasks else { return };
    let Some(task) = tasks.get(task_name) else {
        problems.push(format!("{at}.task: task {task_name:?} not found"));
        return;
    };
    for input in &task.inputs {
        if input.required && input.default.is_none() && !step.with.contains_key(&input.name) {
            problems.push(format!(
                "{at}.with: missing required input {:?} of task {task_name:?}",
                input.name
            ));
        }
    }
    for (key, value) in &step.with {
        match task.inputs.iter().find(|input| &input.name == key) {
            None => problems.push(format!(
                "{at}.with.{key}: task {task_name:?} has no input {key:?}"
            )),
            Some(input) if is_code(task, input, value) && holds_template(value) => {
                problems.push(format!(
                    "{at}.with.{key}: input {key:?} of task {task_name:?} is code and may not \
                 hold a {{{{ }}}} template (a param or an output is data, never code): pass \
                 the value through env, e.g. env: {{VALUE: \"{{{{ params.x }}}}\"}}, and \
                 read it as $VALUE"
                ))
            }
            Some(_) => {}
        }
        if let Some(position) = shell_command_template(value) {
            problems.push(format!(
                "{at}.with.{key}[{position}]: a {{{{ }}}} template in the command line of a \
                 shell's -c would run a param or an output as code: pass the value through \
                 env and read it as $VALUE"
            ));
        }
    }
}

/// Whether `value`, given to `input` of `task`, is code: an input the Task marks as code,
/// or the container task's command written as one shell command line (it runs as
/// `sh -c`).
fn is_code(task: &TaskSpec, input: &TaskInput, value: &serde_json::Value) -> bool {
    input.code
        || (task.builtin == Some(BuiltinTask::Container)
            && input.name == "command"
            && value.is_string())
}

/// Whether a string in `value` holds a `{{ }}` template.
fn holds_template(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains("{{"),
        serde_json::Value::Array(items) => items.iter().any(holds_template),
        serde_json::Value::Object(map) => map.values().any(holds_template),
        _ => false,
    }
}

/// In a command given as a list (`[sh, -c, "..."]`), the position of a script after `-c`
/// that holds a template. Other list elements reach the program as arguments, never
/// through a shell, so a template there stays data.
fn shell_command_template(value: &serde_json::Value) -> Option<usize> {
    let items = value.as_array()?;
    items.windows(2).enumerate().find_map(|(i, pair)| {
        let after_dash_c = pair[0].as_str().is_some_and(|flag| flag == "-c");
        (after_dash_c && holds_template(&pair[1])).then_some(i + 1)
    })
}

/// Every `{{ }}` expression in the strings of a JSON value.
fn template_exprs_in(value: &serde_json::Value) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    collect_exprs(value, &mut out)?;
    Ok(out)
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) -> Result<(), String> {
    match value {
        serde_json::Value::String(s) => {
            out.extend(
                expr::template_expressions(s)?
                    .into_iter()
                    .map(str::to_string),
            );
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(|v| collect_exprs(v, out))?,
        serde_json::Value::Object(map) => map.values().try_for_each(|v| collect_exprs(v, out))?,
        _ => {}
    }
    Ok(())
}

fn check_all(exprs: Vec<String>) -> Result<(), String> {
    exprs.iter().try_for_each(|e| expr::check(e))
}

/// A dependency cycle as a path of step indices that starts and ends at the same step.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: usize,
        deps: &[Vec<usize>],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[n] = Mark::Open;
        path.push(n);
        for &d in &deps[n] {
            match marks[d] {
                Mark::Open => {
                    let start = path.iter().position(|&p| p == d).unwrap_or(0);
                    let mut cycle: Vec<usize> = path[start..].to_vec();
                    cycle.push(d);
                    cycle.reverse();
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(d, deps, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[n] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; deps.len()];
    for n in 0..deps.len() {
        if marks[n] == Mark::New
            && let Some(c) = visit(n, deps, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> CompositionSpec {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn library() -> BTreeMap<String, TaskSpec> {
        serde_yaml::from_str(
            r#"
shell:
  builtin: shell
  inputs:
    - {name: script, required: true, code: true}
    - {name: env, type: object}
container:
  builtin: container
  inputs:
    - {name: image, required: true}
    - {name: command, type: array, required: true}
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn problems(yaml: &str) -> Vec<String> {
        validate(&spec(yaml), Some(&library()), None)
            .err()
            .unwrap_or_default()
    }

    /// A param or an output is data: a template in code is refused, the same value
    /// through env is fine.
    #[test]
    fn templates_in_code_are_refused_and_env_is_the_way() {
        let refused = problems(
            r#"
params: [{name: who}]
steps:
  - {name: greet, task: shell, with: {script: 'echo "hello {{ params.who }}"'}}
"#,
        );
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].starts_with(
                "spec.steps[0].with.script: input \"script\" of task \"shell\" is code and may \
                 not hold a {{ }} template"
            ),
            "{refused:?}"
        );
        assert!(
            refused[0].contains("pass the value through env"),
            "{refused:?}"
        );
        assert!(
            problems(
                r#"
params: [{name: who}]
steps:
  - {name: greet, task: shell, with: {script: 'echo "hello $WHO"', env: {WHO: "{{ params.who }}"}}}
"#
            )
            .is_empty()
        );
    }

    #[test]
    fn a_shell_command_line_of_the_container_task_is_code_but_arguments_are_data() {
        let sh_c = problems(
            r#"
params: [{name: v}]
steps:
  - {name: d, task: container, with: {image: i, command: [sh, -c, "deploy {{ params.v }}"]}}
"#,
        );
        assert!(
            sh_c.iter()
                .any(|p| p.starts_with("spec.steps[0].with.command[2]: a {{ }} template")),
            "{sh_c:?}"
        );
        let line = problems(
            r#"
params: [{name: v}]
steps:
  - {name: d, task: container, with: {image: i, command: "deploy {{ params.v }}"}}
"#,
        );
        assert!(
            line.iter()
                .any(|p| p.starts_with("spec.steps[0].with.command: input \"command\"")),
            "{line:?}"
        );
        assert!(
            problems(
                r#"
params: [{name: v}]
steps:
  - {name: d, task: container, with: {image: i, command: [deploy, "{{ params.v }}"]}}
"#
            )
            .is_empty()
        );
    }
}
