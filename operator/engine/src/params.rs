//! A composition's params: their constraints (`enum`, `pattern`) and whether a run's
//! values keep them. A param is data: constraints are how an author narrows what a runner
//! may pass, say to the image tags or hostnames a step may be given.

use std::collections::BTreeMap;

use maestro_api::{CompositionSpec, ParamSpec};
use regex::Regex;

/// How much of a refused value a message shows.
const SHOWN_VALUE_CHARS: usize = 64;
/// The compiled size a pattern may take: generous for any real pattern, and a bound on
/// what one composition can make the operator hold.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// A param's pattern, anchored at both ends.
fn compile(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        // The parser's message spans lines (the pattern, a caret, the reason): one line
        // reads better in a condition.
        .map_err(|e| {
            let said = e.to_string();
            let said: Vec<&str> = said.split_whitespace().collect();
            format!("not a valid regular expression: {}", said.join(" "))
        })
}

fn shown(value: &str) -> String {
    let mut shown: String = value.chars().take(SHOWN_VALUE_CHARS).collect();
    if shown.len() < value.len() {
        shown.push_str("...");
    }
    format!("{shown:?}")
}

/// Why `value` breaks the param's constraints, if it does.
fn check_value(param: &ParamSpec, pattern: Option<&Regex>, value: &str) -> Result<(), String> {
    if !param.allowed.is_empty() && !param.allowed.iter().any(|a| a == value) {
        let allowed: Vec<String> = param.allowed.iter().map(|a| format!("{a:?}")).collect();
        return Err(format!(
            "param {:?}: {} is not one of {}",
            param.name,
            shown(value),
            allowed.join(", ")
        ));
    }
    if let (Some(regex), Some(source)) = (pattern, &param.pattern)
        && !regex.is_match(value)
    {
        return Err(format!(
            "param {:?}: {} does not match the pattern {source:?}",
            param.name,
            shown(value)
        ));
    }
    Ok(())
}

/// Problems with the params' constraints (a pattern that does not compile, a default that
/// breaks them) and, given a run's values, with those values; each names its field.
pub fn problems(
    spec: &CompositionSpec,
    run_params: Option<&BTreeMap<String, String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, param) in spec.params.iter().enumerate() {
        let pattern = match param.pattern.as_deref().map(compile).transpose() {
            Ok(pattern) => pattern,
            Err(e) => {
                problems.push(format!("spec.params[{i}].pattern: {e}"));
                continue;
            }
        };
        if let Some(default) = &param.default
            && let Err(e) = check_value(param, pattern.as_ref(), default)
        {
            problems.push(format!("spec.params[{i}].default: {e}"));
        }
        if let Some(value) = run_params.and_then(|p| p.get(&param.name))
            && let Err(e) = check_value(param, pattern.as_ref(), value)
        {
            problems.push(format!("spec.params.{}: {e}", param.name));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> CompositionSpec {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const CONSTRAINED: &str = r#"
params:
  - {name: env, enum: [dev, staging], default: dev}
  - {name: tag, pattern: "[a-z0-9.-]{1,20}"}
steps: [{name: s, task: shell, with: {script: "true"}}]
"#;

    #[test]
    fn values_inside_the_constraints_pass() {
        let spec = spec(CONSTRAINED);
        assert!(problems(&spec, None).is_empty());
        assert!(
            problems(
                &spec,
                Some(&values(&[("env", "staging"), ("tag", "v1.2-rc")]))
            )
            .is_empty()
        );
    }

    #[test]
    fn a_value_outside_the_enum_names_the_param_and_the_allowed_values() {
        let got = problems(
            &spec(CONSTRAINED),
            Some(&values(&[("env", "prod"), ("tag", "v1")])),
        );
        assert_eq!(
            got,
            [r#"spec.params.env: param "env": "prod" is not one of "dev", "staging""#]
        );
    }

    #[test]
    fn the_pattern_is_matched_against_the_whole_value() {
        // Unanchored, `[a-z0-9.-]{1,20}` would find "v1" inside the injection.
        let got = problems(
            &spec(CONSTRAINED),
            Some(&values(&[("tag", "v1; rm -rf /")])),
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(
                r#"spec.params.tag: param "tag": "v1; rm -rf /" does not match the pattern"#
            ),
            "{got:?}"
        );
    }

    #[test]
    fn a_bad_pattern_or_a_default_outside_the_constraints_is_a_problem_of_the_composition() {
        let got = problems(
            &spec(
                r#"
params:
  - {name: a, pattern: "(unclosed"}
  - {name: b, enum: [x], default: y}
steps: [{name: s, task: shell, with: {script: "true"}}]
"#,
            ),
            None,
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("spec.params[0].pattern: not a valid regular expression"),
            "{got:?}"
        );
        assert_eq!(
            got[1],
            r#"spec.params[1].default: param "b": "y" is not one of "x""#
        );
    }

    #[test]
    fn long_values_are_shown_cut() {
        let long = "x".repeat(500);
        let got = problems(&spec(CONSTRAINED), Some(&values(&[("env", &long)])));
        assert!(got[0].len() < 200, "{got:?}");
        assert!(got[0].contains("...\""), "{got:?}");
    }
}
