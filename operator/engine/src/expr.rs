//! CEL over a run's data: `when` conditions and `{{ }}` templates in step inputs.
//! Expressions see `params`, `steps.<name>.outputs` (and `.phase`), `context`, `ledger`
//! and `run`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;

/// What expressions can read.
#[derive(Serialize, Debug, Default, Clone)]
pub struct Scope {
    pub params: BTreeMap<String, String>,
    pub steps: BTreeMap<String, StepScope>,
    pub context: BTreeMap<String, String>,
    /// The run's ledger: the external resources it created and still holds.
    pub ledger: Vec<LedgerScope>,
    pub run: RunScope,
}

/// One ledger entry as expressions see it.
#[derive(Serialize, Debug, Default, Clone)]
pub struct LedgerScope {
    pub kind: String,
    pub id: String,
    pub region: String,
    pub step: String,
}

/// One step as expressions see it.
#[derive(Serialize, Debug, Default, Clone)]
pub struct StepScope {
    pub phase: String,
    pub outputs: BTreeMap<String, String>,
}

/// The run as expressions see it.
#[derive(Serialize, Debug, Default, Clone)]
pub struct RunScope {
    pub name: String,
    pub namespace: String,
    pub composition: String,
}

/// At most this many bytes of CEL in one expression.
pub const MAX_EXPRESSION_BYTES: usize = 4096;
/// At most this deep may brackets nest; the parser and the interpreter recurse on it.
pub const MAX_NESTING: usize = 32;
/// At most this many comprehensions (`map`, `filter`, `all`, `exists`, `exists_one`) may
/// nest. The interpreter has no cost budget, and each level multiplies the work by the
/// size of a list: two levels over lists an expression or a run can hold stay cheap, while
/// deeper ones could keep a reconcile busy for minutes.
pub const MAX_COMPREHENSION_DEPTH: usize = 2;

/// Checks that `expr` parses and is within the cost limits, without evaluating it.
pub fn check(expr: &str) -> Result<(), String> {
    compile(expr).map(|_| ())
}

/// Compiles `expr`, refusing it when it is over a cost limit (with a message that says
/// which), so evaluating it inside a reconcile stays cheap.
fn compile(expr: &str) -> Result<cel::Program, String> {
    if expr.len() > MAX_EXPRESSION_BYTES {
        return Err(format!(
            "too costly: the expression is {} bytes, at most {MAX_EXPRESSION_BYTES}",
            expr.len()
        ));
    }
    let mut depth = 0usize;
    for c in expr.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > MAX_NESTING {
            return Err(format!(
                "too costly: brackets nest more than {MAX_NESTING} deep"
            ));
        }
    }
    let program = guarded(|| cel::Program::compile(expr).map_err(|e| parse_error(&e)))?;
    let nesting = comprehension_depth(program.expression());
    if nesting > MAX_COMPREHENSION_DEPTH {
        return Err(format!(
            "too costly: map/filter/all/exists nest {nesting} deep, at most \
             {MAX_COMPREHENSION_DEPTH}"
        ));
    }
    Ok(program)
}

/// How deep comprehensions nest in `expr`.
fn comprehension_depth(expr: &cel::IdedExpr) -> usize {
    use cel::common::ast::{EntryExpr, Expr};
    let deepest = |exprs: &mut dyn Iterator<Item = &cel::IdedExpr>| {
        exprs.map(comprehension_depth).max().unwrap_or(0)
    };
    match &expr.expr {
        Expr::Comprehension(c) => {
            let body = [&c.loop_cond, &c.loop_step, &c.result, &c.accu_init];
            comprehension_depth(&c.iter_range).max(1 + deepest(&mut body.into_iter()))
        }
        Expr::Call(call) => {
            deepest(&mut call.target.as_deref().into_iter().chain(call.args.iter()))
        }
        Expr::List(list) => deepest(&mut list.elements.iter()),
        Expr::Map(map) => deepest(&mut map.entries.iter().flat_map(|e| match &e.expr {
            EntryExpr::MapEntry(entry) => vec![&entry.key, &entry.value],
            EntryExpr::StructField(field) => vec![&field.value],
        })),
        Expr::Struct(st) => deepest(&mut st.entries.iter().flat_map(|e| match &e.expr {
            EntryExpr::MapEntry(entry) => vec![&entry.key, &entry.value],
            EntryExpr::StructField(field) => vec![&field.value],
        })),
        Expr::Select(select) => comprehension_depth(&select.operand),
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => 0,
    }
}

/// Evaluates `expr` to JSON.
pub fn eval(expr: &str, scope: &Scope) -> Result<Json, String> {
    let program = compile(expr)?;
    guarded(|| {
        let mut ctx = cel::Context::default();
        for (name, value) in [
            ("params", cel::to_value(&scope.params)),
            ("steps", cel::to_value(&scope.steps)),
            ("context", cel::to_value(&scope.context)),
            ("ledger", cel::to_value(&scope.ledger)),
            ("run", cel::to_value(&scope.run)),
        ] {
            ctx.add_variable_from_value(name, value.map_err(|e| e.to_string())?);
        }
        let value = program.execute(&ctx).map_err(|e| e.to_string())?;
        value.json().map_err(|e| e.to_string())
    })
}

/// Evaluates a `when` condition, which must give a boolean.
pub fn eval_condition(expr: &str, scope: &Scope) -> Result<bool, String> {
    match eval(expr, scope)? {
        Json::Bool(b) => Ok(b),
        other => Err(format!("must be true or false, got {other}")),
    }
}

/// The `{{ }}` expressions of a template string, in order.
pub fn template_expressions(text: &str) -> Result<Vec<&str>, String> {
    Ok(split_template(text)?
        .into_iter()
        .filter_map(|part| match part {
            Part::Expr(e) => Some(e),
            Part::Text(_) => None,
        })
        .collect())
}

/// Renders every string inside `value`: a string that is exactly one `{{ expr }}` takes
/// the expression's value (and type); other strings get each expression's value as text.
pub fn render(value: &Json, scope: &Scope) -> Result<Json, String> {
    match value {
        Json::String(text) => render_string(text, scope),
        Json::Array(items) => items
            .iter()
            .map(|v| render(v, scope))
            .collect::<Result<_, _>>()
            .map(Json::Array),
        Json::Object(map) => map
            .iter()
            .map(|(k, v)| render(v, scope).map(|v| (k.clone(), v)))
            .collect::<Result<_, _>>()
            .map(Json::Object),
        other => Ok(other.clone()),
    }
}

fn render_string(text: &str, scope: &Scope) -> Result<Json, String> {
    let parts = split_template(text)?;
    if let [Part::Expr(expr)] = parts.as_slice() {
        return eval(expr, scope).map_err(|e| format!("{{{{ {expr} }}}}: {e}"));
    }
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Expr(expr) => {
                match eval(expr, scope).map_err(|e| format!("{{{{ {expr} }}}}: {e}"))? {
                    Json::String(s) => out.push_str(&s),
                    other => out.push_str(&other.to_string()),
                }
            }
        }
    }
    Ok(Json::String(out))
}

enum Part<'a> {
    Text(&'a str),
    Expr(&'a str),
}

fn split_template(text: &str) -> Result<Vec<Part<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("unclosed {{{{ in {text:?}"))?;
        let expr = after[..close].trim();
        if expr.is_empty() {
            return Err(format!("empty {{{{ }}}} in {text:?}"));
        }
        parts.push(Part::Expr(expr));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest));
    }
    Ok(parts)
}

fn parse_error(e: &cel::ParseErrors) -> String {
    format!(
        "invalid CEL: {}",
        e.to_string().lines().next().unwrap_or("parse error")
    )
}

/// Runs CEL on user input, turning a panic inside the interpreter into an error: the
/// operator never panics on user data.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err("the expression could not be evaluated".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn costly_expressions_are_refused_with_the_limit_named() {
        let two = "[1, 2].map(x, [3, 4].map(y, x * y))";
        assert_eq!(eval(two, &Scope::default()), Ok(json!([[3, 4], [6, 8]])));
        let three = "[1, 2].map(x, [3, 4].map(y, [5, 6].map(z, x * y * z)))";
        let error = check(three).err().unwrap_or_default();
        assert_eq!(
            error,
            "too costly: map/filter/all/exists nest 3 deep, at most 2"
        );
        assert_eq!(eval(three, &Scope::default()).err(), Some(error));
        // A comprehension over another's result is not nested.
        assert!(check("[1, 2].map(x, x).filter(y, y > 1).exists(z, z == 2)").is_ok());
        let long = format!("'{}'", "a".repeat(MAX_EXPRESSION_BYTES));
        assert!(
            check(&long)
                .err()
                .unwrap_or_default()
                .contains("at most 4096")
        );
        let deep = format!("{}1{}", "(".repeat(40), ")".repeat(40));
        assert!(
            check(&deep)
                .err()
                .unwrap_or_default()
                .contains("brackets nest more than 32 deep")
        );
    }

    fn scope() -> Scope {
        let mut s = Scope::default();
        s.params.insert("version".into(), "1.4.2".into());
        s.steps.insert(
            "provision".into(),
            StepScope {
                phase: "Succeeded".into(),
                outputs: [("publicIp".into(), "10.0.0.7".into())].into(),
            },
        );
        s.run.name = "acc-x7k2p".into();
        s
    }

    #[test]
    fn renders_embedded_and_whole_expressions() {
        let s = scope();
        assert_eq!(
            render(
                &json!("http://{{ steps.provision.outputs.publicIp }}:8080/app-{{params.version}}"),
                &s
            ),
            Ok(json!("http://10.0.0.7:8080/app-1.4.2"))
        );
        assert_eq!(render(&json!("{{ [1, 2] }}"), &s), Ok(json!([1, 2])));
        assert_eq!(
            render(&json!({"a": ["{{ run.name }}"]}), &s),
            Ok(json!({"a": ["acc-x7k2p"]}))
        );
        assert_eq!(render(&json!(3), &s), Ok(json!(3)));
    }

    #[test]
    fn conditions_must_be_boolean() {
        let s = scope();
        assert_eq!(eval_condition("params.version == '1.4.2'", &s), Ok(true));
        assert_eq!(
            eval_condition("steps.provision.phase != 'Succeeded'", &s),
            Ok(false)
        );
        assert!(
            eval_condition("params.version", &s)
                .unwrap_err()
                .contains("true or false")
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let s = scope();
        assert!(render(&json!("{{ steps.nope.outputs.x }}"), &s).is_err());
        assert!(check("1 +").unwrap_err().starts_with("invalid CEL"));
        assert!(
            render(&json!("{{ unclosed"), &s)
                .unwrap_err()
                .contains("unclosed")
        );
    }
}
