//! `-p key=value` parameters of `kubectl maestro run`.

use std::collections::BTreeMap;

use maestro_api::ParamSpec;

/// Parses one `-p key=value`. The value may itself hold '=' (a URL's query string), so
/// only the first '=' separates.
pub fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some(("", _)) => Err(format!(
            "{text:?} has no name before '=': expected key=value"
        )),
        Some((key, value)) => Ok((key.to_string(), value.to_string())),
        None => Err(format!("{text:?} has no '=': expected key=value")),
    }
}

/// Checks the given parameters against the composition's and returns them as a map.
/// A misspelt or missing parameter is caught here, before a run is created that could
/// only end Invalid.
pub fn check_params(
    composition: &str,
    declared: &[ParamSpec],
    given: &[(String, String)],
) -> Result<BTreeMap<String, String>, String> {
    let mut params = BTreeMap::new();
    for (key, value) in given {
        if !declared.iter().any(|param| &param.name == key) {
            let known: Vec<&str> = declared.iter().map(|param| param.name.as_str()).collect();
            let known = if known.is_empty() {
                "it takes no parameters".to_string()
            } else {
                format!("its parameters are: {}", known.join(", "))
            };
            return Err(format!(
                "composition {composition:?} has no parameter {key:?}; {known}"
            ));
        }
        if params.insert(key.clone(), value.clone()).is_some() {
            return Err(format!("parameter {key:?} is given more than once"));
        }
    }
    let missing: Vec<&str> = declared
        .iter()
        .filter(|param| param.default.is_none() && !params.contains_key(&param.name))
        .map(|param| param.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "composition {composition:?} requires {}: add -p {}=VALUE",
            missing.join(", "),
            missing[0]
        ));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, default: Option<&str>) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            default: default.map(Into::into),
            description: None,
            allowed: Vec::new(),
            pattern: None,
        }
    }

    fn pair(key: &str, value: &str) -> (String, String) {
        (key.into(), value.into())
    }

    #[test]
    fn splits_at_the_first_equals() {
        assert_eq!(parse_param("version=1.4.3"), Ok(pair("version", "1.4.3")));
        assert_eq!(parse_param("url=a?b=c"), Ok(pair("url", "a?b=c")));
        assert_eq!(parse_param("empty="), Ok(pair("empty", "")));
    }

    #[test]
    fn refuses_a_missing_equals_or_name() {
        let missing = parse_param("version").unwrap_err();
        assert!(missing.contains("no '='"), "{missing}");
        assert!(missing.contains("expected key=value"), "{missing}");
        assert!(parse_param("=1.4.3").is_err());
    }

    #[test]
    fn accepts_declared_params_and_leaves_defaults_to_the_operator() {
        let declared = [param("version", Some("1.4.2")), param("env", None)];
        let params = check_params("c", &declared, &[pair("env", "qa")]).unwrap();
        assert_eq!(
            params,
            BTreeMap::from([("env".to_string(), "qa".to_string())])
        );
    }

    #[test]
    fn refuses_unknown_duplicate_and_missing_params() {
        let declared = [param("version", Some("1.4.2")), param("env", None)];
        let unknown = check_params("c", &declared, &[pair("verison", "1")]).unwrap_err();
        assert!(unknown.contains("no parameter \"verison\""), "{unknown}");
        assert!(unknown.contains("version, env"), "{unknown}");
        let twice = check_params("c", &declared, &[pair("env", "a"), pair("env", "b")]);
        assert!(twice.unwrap_err().contains("more than once"));
        let missing = check_params("c", &declared, &[]).unwrap_err();
        assert!(missing.contains("requires env"), "{missing}");
    }
}
