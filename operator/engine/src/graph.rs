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
                 shell's -c (or -ec, -xc...) would run a param or an output as code: pass the value through \
                 env and read it as $VALUE"
            ));
        }
    }
}

/// Whether `value`, given to `input` of `task`, is code: an input the Task marks as code,
/// the builtin shell's `script` (whatever the Task says: a namespace Task may declare it
/// without the mark, and the shell still runs it), or the container task's command written
/// as one shell command line (it runs as `sh -c`).
fn is_code(task: &TaskSpec, input: &TaskInput, value: &serde_json::Value) -> bool {
    input.code
        || (task.builtin == Some(BuiltinTask::Shell) && input.name == "script")
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

/// Programs that run their `-c` operand as shell code (matched by the file name, so
/// `/bin/sh` and `/usr/bin/env bash` count too).
const SHELLS: &[&str] = &["sh", "bash", "zsh", "dash", "ash", "ksh", "mksh", "busybox"];

/// In a command given as a list (`[sh, -c, "..."]`), the position of a script that a shell
/// runs as code and that holds a template. A shell runs its first operand as code when any
/// of its option clusters holds `c` (`-c`, `-ec`, `-euxc`, `-o pipefail -c`); so does a
/// list of a shell's options alone (`[-ec, "..."]`, arguments for a shell named
/// elsewhere). A literal `-c` anywhere still counts, whatever the program (`python -c`).
/// Other list elements reach the program as arguments, never through a shell, so a
/// template there stays data.
fn shell_command_template(value: &serde_json::Value) -> Option<usize> {
    let items = value.as_array()?;
    let words: Vec<Option<&str>> = items.iter().map(serde_json::Value::as_str).collect();
    let shell_starts = words.iter().enumerate().filter_map(|(i, word)| {
        let program = (*word)?.rsplit('/').next()?;
        SHELLS.contains(&program).then_some(i + 1)
    });
    let starts_with_options = words
        .first()
        .copied()
        .flatten()
        .is_some_and(|w| w.len() > 1 && (w.starts_with('-') || w.starts_with('+')));
    let script_positions = shell_starts
        .chain(starts_with_options.then_some(0))
        .filter_map(|start| shell_script_position(&words, start));
    let after_dash_c = words
        .windows(2)
        .enumerate()
        .filter(|(_, pair)| pair[0] == Some("-c"))
        .map(|(i, _)| i + 1);
    let mut candidates: Vec<usize> = script_positions.chain(after_dash_c).collect();
    candidates.sort_unstable();
    candidates
        .into_iter()
        .find(|&i| items.get(i).is_some_and(holds_template))
}

/// Reads a shell's options from `words[start..]`: the position of the operand it runs as
/// code, if an option cluster holds `c`. `-o NAME`, `+o NAME`, `-O NAME` and `+O NAME`
/// take the next word; a long option (`--login`) is skipped, `--rcfile` and `--init-file`
/// with their file; `--` ends the options. A word that is not a string ends them too.
fn shell_script_position(words: &[Option<&str>], start: usize) -> Option<usize> {
    let mut runs_code = false;
    let mut i = start;
    while let Some(word) = words.get(i) {
        let Some(word) = word else { return None };
        if *word == "--" {
            i += 1;
            break;
        }
        if let Some(long) = word.strip_prefix("--") {
            i += if matches!(long, "rcfile" | "init-file") {
                2
            } else {
                1
            };
            continue;
        }
        let Some(cluster) = word.strip_prefix('-').or_else(|| word.strip_prefix('+')) else {
            break;
        };
        if cluster.is_empty() {
            break;
        }
        runs_code |= word.starts_with('-') && cluster.contains('c');
        let takes_name = cluster.contains('o') || cluster.contains('O');
        i += if takes_name { 2 } else { 1 };
    }
    (runs_code && i < words.len()).then_some(i)
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

    /// A namespace Task may declare the builtin shell's `script` without `code: true`:
    /// the shell still runs it, so it is code all the same.
    #[test]
    fn the_builtin_shells_script_is_code_even_unmarked() {
        let tasks: BTreeMap<String, TaskSpec> = serde_yaml::from_str(
            r#"
db-shell:
  builtin: shell
  inputs: [{name: script, required: true}]
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let refused = validate(
            &spec(
                r#"
params: [{name: v}]
steps:
  - {name: s, task: db-shell, with: {script: 'psql -c "{{ params.v }}"'}}
"#,
            ),
            Some(&tasks),
            None,
        )
        .err()
        .unwrap_or_default();
        assert!(
            refused.iter().any(|p| p.starts_with(
                "spec.steps[0].with.script: input \"script\" of task \"db-shell\" is code"
            )),
            "{refused:?}"
        );
    }

    /// Every way of asking a shell to run its operand as code counts, not only a literal
    /// `-c` right before it.
    #[test]
    fn every_shell_flag_cluster_with_c_makes_the_operand_code() {
        let command = |line: &str| {
            format!(
                "params: [{{name: v}}]\nsteps:\n  - {{name: d, task: container, with: \
                 {{image: i, command: {line}}}}}\n"
            )
        };
        for (line, position) in [
            (r#"[sh, -c, "x {{ params.v }}"]"#, 2),
            (r#"[sh, -ec, "x {{ params.v }}"]"#, 2),
            (r#"[bash, -xc, "x {{ params.v }}"]"#, 2),
            (r#"[bash, -euxc, "x {{ params.v }}"]"#, 2),
            (r#"[bash, -o, pipefail, -c, "x {{ params.v }}"]"#, 4),
            (r#"[bash, -c, -e, "x {{ params.v }}"]"#, 3),
            (r#"[bash, +o, posix, -ce, "x {{ params.v }}"]"#, 4),
            (r#"[bash, --norc, -ec, "x {{ params.v }}"]"#, 3),
            (r#"[/bin/sh, -ec, "x {{ params.v }}"]"#, 2),
            (r#"[/usr/bin/env, bash, -ec, "x {{ params.v }}"]"#, 3),
            (r#"[zsh, -ec, "x {{ params.v }}"]"#, 2),
            (r#"[dash, -ec, "x {{ params.v }}"]"#, 2),
            (r#"[ash, -ec, "x {{ params.v }}"]"#, 2),
            (r#"[ksh, -ec, "x {{ params.v }}"]"#, 2),
            (r#"[busybox, sh, -ec, "x {{ params.v }}"]"#, 3),
            (r#"[timeout, "60", bash, -ec, "x {{ params.v }}"]"#, 4),
            (r#"[-ec, "x {{ params.v }}"]"#, 1),
            (r#"[python3, -c, "x {{ params.v }}"]"#, 2),
        ] {
            let found = problems(&command(line));
            let expected = format!("spec.steps[0].with.command[{position}]: a {{{{ }}}} template");
            assert!(
                found.iter().any(|p| p.starts_with(&expected)),
                "{line}: {found:?}"
            );
        }
        // The arguments after the script are the script's $0, $1...: data, as are the
        // arguments of a shell that runs a script file, not a -c operand.
        for line in [
            r#"[bash, -ec, 'echo "$1"', script, "{{ params.v }}"]"#,
            r#"[bash, -e, deploy.sh, "{{ params.v }}"]"#,
            r#"[sh, ./run.sh, -c, x]"#,
            r#"[deploy, --cluster, "{{ params.v }}"]"#,
        ] {
            let found = problems(&command(line));
            assert!(found.is_empty(), "{line}: {found:?}");
        }
    }
}
