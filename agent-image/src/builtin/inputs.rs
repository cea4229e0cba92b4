//! Reading typed values out of a step's inputs, with messages that name the input at fault.
//!
//! Absent and null both mean "not given". Number inputs also accept numeric strings, because
//! a template such as `"{{ params.retries }}"` renders to a string.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Inputs;

/// A string input.
pub fn optional_string(inputs: &Inputs, name: &str) -> Result<Option<String>, String> {
    match inputs.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(format!("input {name:?} must be a string")),
    }
}

/// A string input that must be given and not be blank.
pub fn required_string(inputs: &Inputs, name: &str) -> Result<String, String> {
    let text =
        optional_string(inputs, name)?.ok_or_else(|| format!("input {name:?} is required"))?;
    if text.trim().is_empty() {
        return Err(format!("input {name:?} must not be empty"));
    }
    Ok(text)
}

/// An object-of-strings input (e.g. headers), in the order given.
pub fn optional_string_map(inputs: &Inputs, name: &str) -> Result<Vec<(String, String)>, String> {
    let entries = match inputs.get(name) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(entries)) => entries,
        Some(_) => return Err(format!("input {name:?} must be an object of strings")),
    };
    entries
        .iter()
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key.clone(), text.clone())),
            _ => Err(format!(
                "input {name:?} must be an object of strings; {key:?} is not a string"
            )),
        })
        .collect()
}

/// A whole-number input of at least `minimum`.
pub fn optional_whole_number(
    inputs: &Inputs,
    name: &str,
    minimum: u64,
) -> Result<Option<u64>, String> {
    let Some(value) = inputs.get(name).filter(|value| !value.is_null()) else {
        return Ok(None);
    };
    whole_number(value)
        .filter(|number| *number >= minimum)
        .map(Some)
        .ok_or_else(|| format!("input {name:?} must be a whole number of at least {minimum}"))
}

/// A number of seconds greater than zero, e.g. a timeout.
pub fn optional_seconds(inputs: &Inputs, name: &str) -> Result<Option<f64>, String> {
    let Some(value) = inputs.get(name).filter(|value| !value.is_null()) else {
        return Ok(None);
    };
    let seconds = match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    // A day bounds it well below what Duration can hold, and no step waits that long.
    const MAX_SECONDS: f64 = 86_400.0;
    seconds
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0 && *seconds <= MAX_SECONDS)
        .map(Some)
        .ok_or_else(|| format!("input {name:?} must be a number of seconds above 0"))
}

/// `value` as a whole number, if it is one (a JSON number or a numeric string).
pub fn whole_number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// Where a path input points: relative paths are inside the workspace, so steps of a run
/// find each other's files; absolute paths are kept.
pub fn path_in_workspace(given: &str, workspace_dir: &Path) -> PathBuf {
    workspace_dir.join(given)
}

/// The path input `name` (`given`), which must stay inside the workspace: relative or
/// absolute, once `..` is applied and symlinks are followed, it must name the workspace or
/// something in it. A step must not read or write the pod's other files (its service account
/// token, the agent itself) through a file input. Returns the path as joined, unresolved.
pub fn contained_path_in_workspace(
    name: &str,
    given: &str,
    workspace_dir: &Path,
) -> Result<PathBuf, String> {
    let path = path_in_workspace(given, workspace_dir);
    let outside = || {
        format!(
            "input {name:?}: {given:?} is outside the workspace {}; give a path inside it",
            workspace_dir.display()
        )
    };
    let workspace = resolve_existing_prefix(&lexically_normal(workspace_dir)).map_err(|error| {
        format!(
            "cannot resolve the workspace {}: {error}",
            workspace_dir.display()
        )
    })?;
    let resolved = resolve_existing_prefix(&lexically_normal(&path)).map_err(|_| outside())?;
    if resolved.starts_with(&workspace) {
        Ok(path)
    } else {
        Err(outside())
    }
}

/// `path` with `.` dropped and each `..` applied to what comes before it, without looking at
/// the file system (`..` above the root stays at the root, as the kernel does).
fn lexically_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// `path` with its longest existing prefix resolved (symlinks followed, as the kernel will
/// when the path is opened or created) and the rest appended as it is.
fn resolve_existing_prefix(path: &Path) -> std::io::Result<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut missing = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(mut resolved) => {
                resolved.extend(missing.iter().rev());
                return Ok(resolved);
            }
            Err(error) => {
                // A dangling symlink is left out of the resolution: it is resolved as if it
                // were missing, and refused below unless its parent is inside. Writing
                // through it is prevented where files are created.
                let Some(file_name) = existing.file_name().map(std::ffi::OsStr::to_os_string)
                else {
                    return Err(error);
                };
                missing.push(file_name);
                if !existing.pop() {
                    return Err(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::test_support::inputs;
    use serde_json::json;

    #[test]
    fn required_strings_must_be_given_and_not_blank() {
        let given = inputs(json!({"url": "x", "blank": " ", "number": 1}));
        assert_eq!(required_string(&given, "url"), Ok("x".to_owned()));
        assert_eq!(
            required_string(&given, "missing"),
            Err(r#"input "missing" is required"#.to_owned())
        );
        assert_eq!(
            required_string(&given, "blank"),
            Err(r#"input "blank" must not be empty"#.to_owned())
        );
        assert_eq!(
            required_string(&given, "number"),
            Err(r#"input "number" must be a string"#.to_owned())
        );
    }

    #[test]
    fn whole_numbers_accept_numeric_strings() {
        let given = inputs(json!({"a": 3, "b": "4", "c": -1, "d": 1.5, "e": "x", "f": null}));
        assert_eq!(optional_whole_number(&given, "a", 0), Ok(Some(3)));
        assert_eq!(optional_whole_number(&given, "b", 0), Ok(Some(4)));
        assert_eq!(optional_whole_number(&given, "f", 0), Ok(None));
        assert_eq!(optional_whole_number(&given, "missing", 0), Ok(None));
        for bad in ["c", "d", "e"] {
            assert_eq!(
                optional_whole_number(&given, bad, 0),
                Err(format!(
                    "input {bad:?} must be a whole number of at least 0"
                ))
            );
        }
        assert_eq!(
            optional_whole_number(&given, "a", 5),
            Err(r#"input "a" must be a whole number of at least 5"#.to_owned())
        );
    }

    #[test]
    fn seconds_are_positive_and_bounded() {
        let given = inputs(json!({"a": 0.5, "b": "30", "zero": 0, "huge": 1e12, "word": "soon"}));
        assert_eq!(optional_seconds(&given, "a"), Ok(Some(0.5)));
        assert_eq!(optional_seconds(&given, "b"), Ok(Some(30.0)));
        for bad in ["zero", "huge", "word"] {
            assert_eq!(
                optional_seconds(&given, bad),
                Err(format!("input {bad:?} must be a number of seconds above 0"))
            );
        }
    }

    #[test]
    fn string_maps_name_the_bad_entry() {
        let given = inputs(json!({"h": {"A": "1"}, "bad": {"B": 2}, "list": ["A"]}));
        assert_eq!(
            optional_string_map(&given, "h"),
            Ok(vec![("A".to_owned(), "1".to_owned())])
        );
        assert_eq!(optional_string_map(&given, "missing"), Ok(Vec::new()));
        assert_eq!(
            optional_string_map(&given, "bad"),
            Err(r#"input "bad" must be an object of strings; "B" is not a string"#.to_owned())
        );
        assert_eq!(
            optional_string_map(&given, "list"),
            Err(r#"input "list" must be an object of strings"#.to_owned())
        );
    }

    #[test]
    fn contained_paths_stay_inside_the_workspace_after_dots_and_symlinks() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        let workspace = root.path().join("workspace");
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir_all(workspace.join("dist"))?;
        std::fs::create_dir_all(&elsewhere)?;
        std::fs::write(elsewhere.join("secret"), "token")?;
        std::os::unix::fs::symlink(&elsewhere, workspace.join("escape"))?;
        std::os::unix::fs::symlink(elsewhere.join("secret"), workspace.join("secret-link"))?;
        std::os::unix::fs::symlink("dist", workspace.join("dist-link"))?;

        let inside_absolute = workspace.join("dist/app.war").display().to_string();
        for inside in [
            "app.war",
            "dist/app.war",
            "dist/../app.war",
            "./new/dir/app.war",
            "dist-link/app.war",
            inside_absolute.as_str(),
        ] {
            assert_eq!(
                contained_path_in_workspace("saveAs", inside, &workspace),
                Ok(workspace.join(inside)),
                "{inside}"
            );
        }
        let outside_absolute = elsewhere.join("secret").display().to_string();
        for outside in [
            "../elsewhere/secret",
            "dist/../../elsewhere/secret",
            "/etc/passwd",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            outside_absolute.as_str(),
            "escape/secret",
            "escape/new-file",
            "secret-link",
        ] {
            assert_eq!(
                contained_path_in_workspace("bodyFile", outside, &workspace),
                Err(format!(
                    r#"input "bodyFile": {outside:?} is outside the workspace {}; give a path inside it"#,
                    workspace.display()
                )),
                "{outside}"
            );
        }
        Ok(())
    }

    #[test]
    fn relative_paths_are_inside_the_workspace() {
        let workspace = Path::new("/workspace");
        assert_eq!(
            path_in_workspace("app.war", workspace),
            PathBuf::from("/workspace/app.war")
        );
        assert_eq!(
            path_in_workspace("/tmp/app.war", workspace),
            PathBuf::from("/tmp/app.war")
        );
    }
}
