//! Reading the EC2 built-ins' inputs. Inputs arrive as resolved JSON; templated values often
//! end up as strings, so numbers and lists also accept their text forms. Messages name the
//! input at fault; the caller turns them into exit code 2.

use serde_json::Value;

use super::Ec2Target;
use crate::builtin::Inputs;

const DEFAULT_REGION: &str = "us-east-1";

/// A string input; absent, null and blank all mean "not given", because a template that
/// renders to "" means the user did not set it.
pub fn optional_string(inputs: &Inputs, name: &str) -> Result<Option<String>, String> {
    match inputs.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.trim().to_owned())),
        Some(_) => Err(format!("input {name:?} must be a string")),
    }
}

/// A list of strings given as a JSON array of strings or as one comma-separated string
/// (what a step output such as `instanceIds` is). Blank entries are dropped.
pub fn string_list(inputs: &Inputs, name: &str) -> Result<Vec<String>, String> {
    let not_a_list =
        || format!("input {name:?} must be an array of strings or a comma-separated string");
    let items: Vec<String> = match inputs.get(name) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(text)) => text.split(',').map(str::to_owned).collect(),
        Some(Value::Array(values)) => values
            .iter()
            .map(|value| match value {
                Value::String(text) => Ok(text.clone()),
                _ => Err(not_a_list()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(not_a_list()),
    };
    Ok(items
        .iter()
        .map(|item| item.trim())
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect())
}

/// A whole number in `min..=max`, given as a JSON integer or its decimal text.
pub fn integer_in(
    inputs: &Inputs,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, String> {
    let out_of_range = || format!("input {name:?} must be an integer from {min} to {max}");
    let value = match inputs.get(name) {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Number(number)) => match number.as_u64() {
            Some(value) => value,
            // CEL and YAML may hand a whole number over as a float (`2.0`).
            None => number
                .as_f64()
                .filter(|value| value.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(value))
                .map(|value| value as u64)
                .ok_or_else(out_of_range)?,
        },
        Some(Value::String(text)) if text.trim().is_empty() => return Ok(default),
        Some(Value::String(text)) => text.trim().parse().map_err(|_| out_of_range())?,
        Some(_) => return Err(out_of_range()),
    };
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(out_of_range())
    }
}

/// The `region` and `endpoint` inputs. No region input: `AWS_REGION`, then
/// `AWS_DEFAULT_REGION` (read through `env`, so tests need not change the process
/// environment), then us-east-1.
pub fn ec2_target(
    inputs: &Inputs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Ec2Target, String> {
    let region = match optional_string(inputs, "region")? {
        Some(region) => region,
        None => ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .into_iter()
            .filter_map(&env)
            .map(|region| region.trim().to_owned())
            .find(|region| !region.is_empty())
            .unwrap_or_else(|| DEFAULT_REGION.to_owned()),
    };
    // The region becomes part of the endpoint's host name and of the ledger entries.
    if !region
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!(
            "input \"region\" must be a region name like eu-west-1, got {region:?}"
        ));
    }
    let endpoint = optional_string(inputs, "endpoint")?;
    if let Some(endpoint) = &endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        return Err(format!(
            "input \"endpoint\" must be an http:// or https:// URL, got {endpoint:?}"
        ));
    }
    Ok(Ec2Target { region, endpoint })
}

/// Instance ids as EC2 writes them: `i-` then hex digits (8 or 17 of them today). Checked so
/// a typo fails as an input error naming it, not as a Malformed error for the whole batch.
pub fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        !hex.is_empty() && hex.len() <= 32 && hex.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_support::inputs;
    use serde_json::json;

    #[test]
    fn lists_accept_arrays_and_comma_separated_text() {
        let expected = Ok(vec!["i-1".to_owned(), "i-2".to_owned()]);
        assert_eq!(
            string_list(&inputs(json!({"ids": ["i-1", " i-2 ", ""]})), "ids"),
            expected
        );
        assert_eq!(
            string_list(&inputs(json!({"ids": "i-1, i-2,"})), "ids"),
            expected
        );
        assert_eq!(
            string_list(&inputs(json!({"ids": ""})), "ids"),
            Ok(Vec::new())
        );
        assert_eq!(string_list(&inputs(json!({})), "ids"), Ok(Vec::new()));
        let wrong =
            Err("input \"ids\" must be an array of strings or a comma-separated string".to_owned());
        assert_eq!(string_list(&inputs(json!({"ids": [1]})), "ids"), wrong);
        assert_eq!(string_list(&inputs(json!({"ids": {"a": 1}})), "ids"), wrong);
    }

    #[test]
    fn integers_accept_numbers_and_text_within_range() {
        let read = |value: Value| integer_in(&inputs(json!({ "n": value })), "n", 7, 1, 20);
        assert_eq!(read(json!(null)), Ok(7));
        assert_eq!(read(json!(3)), Ok(3));
        assert_eq!(read(json!(2.0)), Ok(2));
        assert_eq!(read(json!(" 20 ")), Ok(20));
        assert_eq!(read(json!("")), Ok(7));
        let wrong = Err("input \"n\" must be an integer from 1 to 20".to_owned());
        for bad in [
            json!(0),
            json!(21),
            json!(-1),
            json!(1.5),
            json!("x"),
            json!(true),
        ] {
            assert_eq!(read(bad.clone()), wrong, "{bad}");
        }
    }

    #[test]
    fn region_comes_from_the_input_then_the_environment_then_the_default() {
        let no_env = |_: &str| None;
        let region_of = |inputs: &Inputs, env: &dyn Fn(&str) -> Option<String>| {
            ec2_target(inputs, env).map(|target| target.region)
        };
        assert_eq!(
            region_of(&inputs(json!({"region": "eu-west-1"})), &|_| Some(
                "us-west-2".to_owned()
            )),
            Ok("eu-west-1".to_owned())
        );
        let env = |name: &str| match name {
            "AWS_REGION" => Some(String::new()),
            "AWS_DEFAULT_REGION" => Some("ap-south-1".to_owned()),
            _ => None,
        };
        assert_eq!(
            region_of(&inputs(json!({"region": ""})), &env),
            Ok("ap-south-1".to_owned())
        );
        assert_eq!(
            region_of(&inputs(json!({})), &no_env),
            Ok("us-east-1".to_owned())
        );
        assert_eq!(
            region_of(&inputs(json!({"region": "EU West"})), &no_env),
            Err(
                "input \"region\" must be a region name like eu-west-1, got \"EU West\"".to_owned()
            )
        );
    }

    #[test]
    fn endpoint_must_be_an_http_url() {
        let target = ec2_target(
            &inputs(json!({"endpoint": "http://127.0.0.1:5000"})),
            |_| None,
        );
        assert_eq!(
            target,
            Ok(Ec2Target {
                region: "us-east-1".to_owned(),
                endpoint: Some("http://127.0.0.1:5000".to_owned()),
            })
        );
        assert_eq!(
            ec2_target(&inputs(json!({"endpoint": "localhost:5000"})), |_| None),
            Err(
                "input \"endpoint\" must be an http:// or https:// URL, got \"localhost:5000\""
                    .to_owned()
            )
        );
        assert_eq!(
            ec2_target(&inputs(json!({"endpoint": 5000})), |_| None),
            Err("input \"endpoint\" must be a string".to_owned())
        );
    }

    #[test]
    fn instance_ids_look_like_ec2_ids() {
        for id in ["i-0123abcd", "i-0123456789abcdef0"] {
            assert!(is_instance_id(id), "{id}");
        }
        for id in ["", "i-", "0123abcd", "i-01 23", "ami-0123", "i-x/y"] {
            assert!(!is_instance_id(id), "{id}");
        }
    }
}
