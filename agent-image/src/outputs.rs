//! Collecting a step's outputs: one file per output in the outputs directory.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;

use maestro_protocol::ReportValue;

use crate::result::RESULT_SIZE_LIMIT_BYTES;
use crate::step_env::REPORT_FILE;

/// The most read of one output file: one byte over the result limit is enough to know the
/// result cannot be delivered, and a command that wrote 1 GiB to an output must not make the
/// agent hold 1 GiB.
pub const OUTPUT_READ_LIMIT_BYTES: u64 = RESULT_SIZE_LIMIT_BYTES as u64 + 1;

/// Reads every output file in `dir`: the file name is the output's name, its content the value
/// with a single trailing newline trimmed (so `echo value > $MAESTRO_OUTPUTS/name` works).
/// Entries that cannot be outputs (not regular files, or names that are not identifiers) are
/// skipped with a warning rather than failing the step: a tool may leave scratch files there.
/// A missing directory means no outputs, since the command may have removed it.
pub fn collect_outputs(dir: &Path) -> io::Result<BTreeMap<String, String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => return Err(error),
    };
    let mut outputs = BTreeMap::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(path = %path.display(), "ignoring output file: name is not UTF-8");
            continue;
        };
        if name == REPORT_FILE {
            continue; // the report, read by collect_report
        }
        if !is_valid_output_name(&name) {
            tracing::warn!(
                "ignoring output file {name:?}: an output name starts with a letter and has \
                 only letters, digits and underscores"
            );
            continue;
        }
        // file_type() does not follow symlinks, so a symlink is skipped like a directory:
        // it could point anywhere, e.g. at a huge file or a device.
        if !entry.file_type()?.is_file() {
            tracing::warn!("ignoring output {name:?}: not a regular file");
            continue;
        }
        let mut bytes = Vec::new();
        std::fs::File::open(&path)?
            .take(OUTPUT_READ_LIMIT_BYTES)
            .read_to_end(&mut bytes)?;
        let value = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => {
                tracing::warn!("output {name:?} is not UTF-8; invalid bytes are replaced");
                String::from_utf8_lossy(error.as_bytes()).into_owned()
            }
        };
        outputs.insert(name, trim_one_trailing_newline(value));
    }
    Ok(outputs)
}

/// Reads the report file the command may have left in `dir` (see `REPORT_VAR`): a JSON
/// object whose values are numbers or strings. No file means no report.
pub fn collect_report(dir: &Path) -> Result<BTreeMap<String, ReportValue>, String> {
    let path = dir.join(REPORT_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => {
            return Err(format!(
                "cannot read the report {}: {error}",
                path.display()
            ));
        }
    };
    let mut bytes = Vec::new();
    file.take(OUTPUT_READ_LIMIT_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("cannot read the report {}: {error}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|error| {
        format!(
            "the report {} must be a JSON object of numbers and strings: {error}",
            path.display()
        )
    })
}

/// Hands a result to the `maestro-agent exec` that runs this process (a library Task's
/// command): each output as a file in `dir`, the report as `report_path`, the error as the
/// last line on stderr (exec puts it in the step's message). Returns the exit code to exit
/// with: the result's, or 1 if it could not be handed over.
pub fn write_for_exec(
    result: &maestro_protocol::StepResult,
    dir: &Path,
    report_path: &Path,
) -> i32 {
    let written = (|| -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, value) in &result.outputs {
            std::fs::write(dir.join(name), value)?;
        }
        if !result.report.is_empty() {
            let json = serde_json::to_vec(&result.report).map_err(io::Error::other)?;
            std::fs::write(report_path, json)?;
        }
        Ok(())
    })();
    let mut exit_code = result.exit_code;
    if let Err(error) = written {
        eprintln!("cannot write the outputs to {}: {error}", dir.display());
        if exit_code == 0 {
            exit_code = 1;
        }
    }
    if let Some(error) = &result.error {
        // On a line of its own: a tool may leave its last stderr line unfinished (mvn
        // ends with terminal reset codes), and exec takes the last line as the message.
        eprintln!("\n{error}");
    }
    exit_code
}

/// Whether `name` matches `^[a-zA-Z][a-zA-Z0-9_]*$`, the names outputs can have.
pub fn is_valid_output_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && chars.all(|rest| rest.is_ascii_alphanumeric() || rest == '_')
}

fn trim_one_trailing_newline(mut value: String) -> String {
    if value.ends_with('\n') {
        value.pop();
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_are_identifiers() {
        for valid in ["a", "greeting", "imageTag", "x_1", "Z9"] {
            assert!(is_valid_output_name(valid), "{valid}");
        }
        for invalid in ["", "1a", "_a", "a-b", "a.txt", "a b", "é", ".hidden"] {
            assert!(!is_valid_output_name(invalid), "{invalid}");
        }
    }

    #[test]
    fn collects_files_trimming_one_trailing_newline() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("greeting"), "hello\n")?;
        std::fs::write(dir.path().join("twoLines"), "a\nb\n\n")?;
        std::fs::write(dir.path().join("noNewline"), "raw")?;
        std::fs::write(dir.path().join("empty"), "")?;
        let outputs = collect_outputs(dir.path())?;
        assert_eq!(
            outputs,
            BTreeMap::from([
                ("empty".to_owned(), String::new()),
                ("greeting".to_owned(), "hello".to_owned()),
                ("noNewline".to_owned(), "raw".to_owned()),
                ("twoLines".to_owned(), "a\nb\n".to_owned()),
            ])
        );
        Ok(())
    }

    #[test]
    fn ignores_bad_names_directories_and_symlinks() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("good"), "1")?;
        std::fs::write(dir.path().join("bad-name"), "2")?;
        std::fs::write(dir.path().join(".hidden"), "3")?;
        std::fs::create_dir(dir.path().join("subdir"))?;
        std::os::unix::fs::symlink(dir.path().join("good"), dir.path().join("link"))?;
        let outputs = collect_outputs(dir.path())?;
        assert_eq!(
            outputs,
            BTreeMap::from([("good".to_owned(), "1".to_owned())])
        );
        Ok(())
    }

    #[test]
    fn replaces_invalid_utf8() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("binary"), b"a\xffb\n")?;
        let outputs = collect_outputs(dir.path())?;
        assert_eq!(
            outputs.get("binary").map(String::as_str),
            Some("a\u{fffd}b")
        );
        Ok(())
    }

    #[test]
    fn huge_output_files_are_read_only_past_the_result_limit() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let huge = std::fs::File::create(dir.path().join("huge"))?;
        // Sparse: 1 GiB on paper, nothing on disk.
        huge.set_len(1 << 30)?;
        let outputs = collect_outputs(dir.path())?;
        assert_eq!(
            outputs.get("huge").map(String::len),
            Some(RESULT_SIZE_LIMIT_BYTES + 1)
        );
        Ok(())
    }

    #[test]
    fn the_report_file_is_no_output_and_must_be_an_object() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(
            collect_report(dir.path())
                .map_err(anyhow::Error::msg)?
                .is_empty()
        );
        std::fs::write(
            dir.path().join(REPORT_FILE),
            r#"{"testsRun": 12, "suite": "smoke"}"#,
        )?;
        let report = collect_report(dir.path()).map_err(anyhow::Error::msg)?;
        assert_eq!(
            report.get("testsRun").and_then(ReportValue::as_f64),
            Some(12.0)
        );
        assert_eq!(
            report.get("suite"),
            Some(&ReportValue::Text("smoke".into()))
        );
        assert!(collect_outputs(dir.path())?.is_empty());
        std::fs::write(dir.path().join(REPORT_FILE), r#"{"nested": {"a": 1}}"#)?;
        let error = collect_report(dir.path()).err().unwrap_or_default();
        assert!(
            error.contains("must be a JSON object of numbers and strings"),
            "{error}"
        );
        Ok(())
    }

    #[test]
    fn a_result_handed_to_exec_comes_back_from_its_files() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let outputs_dir = dir.path().join("outputs");
        let result = maestro_protocol::StepResult {
            outputs: BTreeMap::from([("testsRun".to_owned(), "3".to_owned())]),
            report: BTreeMap::from([("testsRun".to_owned(), ReportValue::Number(3.into()))]),
            exit_code: 1,
            error: Some("1 of 3 tests failed".to_owned()),
            ..maestro_protocol::StepResult::default()
        };
        let exit_code = write_for_exec(&result, &outputs_dir, &outputs_dir.join(REPORT_FILE));
        assert_eq!(exit_code, 1);
        assert_eq!(collect_outputs(&outputs_dir)?, result.outputs);
        assert_eq!(
            collect_report(&outputs_dir).map_err(anyhow::Error::msg)?,
            result.report
        );
        Ok(())
    }

    #[test]
    fn missing_directory_has_no_outputs() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(collect_outputs(&dir.path().join("gone"))?.is_empty());
        Ok(())
    }
}
