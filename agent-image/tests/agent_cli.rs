//! Runs the built `maestro-agent` binary as a step pod would, with the result and outputs in
//! temporary directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tempfile::TempDir;

#[path = "../src/builtin/test_http_server.rs"]
#[allow(dead_code, reason = "shared with the unit tests, which use all of it")]
mod test_http_server;

use test_http_server::{CannedResponse, TestHttpServer};

/// A step's directories: the result file, the outputs directory and the workspace.
struct StepDirs {
    root: TempDir,
}

impl StepDirs {
    fn new() -> anyhow::Result<Self> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join("workspace"))?;
        Ok(Self { root })
    }

    fn result_path(&self) -> PathBuf {
        self.root.path().join("termination-log")
    }

    fn outputs_dir(&self) -> PathBuf {
        // Not created: the agent must create it.
        self.root.path().join("outputs")
    }

    fn workspace_dir(&self) -> PathBuf {
        self.root.path().join("workspace")
    }

    /// The agent with the environment the operator gives a step's main container.
    fn agent(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_maestro-agent"));
        command
            .args(args)
            .env("MAESTRO_RESULT_PATH", self.result_path())
            .env("MAESTRO_OUTPUTS", self.outputs_dir())
            .env("MAESTRO_WORKSPACE", self.workspace_dir())
            .env_remove("MAESTRO_INPUTS")
            .env_remove("MAESTRO_LOG_LEVEL")
            .stdin(Stdio::null());
        command
    }

    fn result(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            self.result_path(),
        )?)?)
    }
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn exec_exits_with_the_command_exit_code() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let output = step.agent(&["exec", "--", "sh", "-c", "exit 3"]).output()?;
    assert_eq!(output.status.code(), Some(3), "{}", stderr_of(&output));
    assert_eq!(step.result()?, json!({"exitCode": 3}));
    Ok(())
}

#[test]
fn exec_reports_outputs_and_passes_hyphenated_arguments() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let script = r#"echo "$1" > "$MAESTRO_OUTPUTS/flag"; echo "to the log""#;
    let output = step
        .agent(&["exec", "--", "sh", "-c", script, "sh", "--verbose"])
        .output()?;
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "to the log\n");
    assert_eq!(
        step.result()?,
        json!({"outputs": {"flag": "--verbose"}, "exitCode": 0})
    );
    Ok(())
}

#[test]
fn exec_of_a_missing_program_exits_127_naming_it() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let output = step
        .agent(&["exec", "--", "/maestro/no-such-plugin", "arg"])
        .output()?;
    assert_eq!(output.status.code(), Some(127));
    let message = r#"cannot start "/maestro/no-such-plugin": no such file"#;
    assert!(
        stderr_of(&output).contains(message),
        "{}",
        stderr_of(&output)
    );
    assert_eq!(step.result()?, json!({"exitCode": 127, "error": message}));
    Ok(())
}

#[test]
fn exec_with_oversized_outputs_fails_the_step() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let script = r#"head -c 5000 /dev/zero | tr '\0' x > "$MAESTRO_OUTPUTS/big""#;
    let output = step.agent(&["exec", "--", "sh", "-c", script]).output()?;
    assert_eq!(output.status.code(), Some(1));
    let result = step.result()?;
    assert_eq!(result["exitCode"], 1);
    let error = result["error"].as_str().unwrap_or_default();
    // The file is read only to 4097 bytes, so the size is a lower bound.
    assert!(
        error.starts_with(
            "outputs are at least 4132 bytes, over the 4096-byte limit of a step's result \
             (largest: big over 4096 bytes)"
        ),
        "{error}"
    );
    assert!(std::fs::metadata(step.result_path())?.len() <= 4096);
    Ok(())
}

#[test]
fn exec_with_a_1_gib_output_file_fails_naming_it() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    // Sparse, so the test writes nothing; read whole, it would take 1 GiB of memory.
    let script = r#"truncate -s 1G "$MAESTRO_OUTPUTS/huge" && echo v1 > "$MAESTRO_OUTPUTS/tag""#;
    let output = step.agent(&["exec", "--", "sh", "-c", script]).output()?;
    assert_eq!(output.status.code(), Some(1));
    let result = step.result()?;
    let error = result["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("(largest: huge over 4096 bytes, tag 2 bytes)"),
        "{error}"
    );
    assert!(std::fs::metadata(step.result_path())?.len() <= 4096);
    Ok(())
}

/// Polls until `path` exists, so the test signals only after the command is ready for it.
fn wait_for_file(path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn exec_forwards_sigterm_to_the_command() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let ready = step.root.path().join("ready");
    let log = step.root.path().join("stdout");
    // The marker is written after the trap is set: a SIGTERM before that would kill sh.
    // The sleep's output goes elsewhere so the orphaned sleep holds no pipe of the test open.
    let script = format!(
        r#"trap "echo got-term; exit 7" TERM; touch {}; sleep 30 >/dev/null 2>&1 & wait"#,
        ready.display()
    );
    let mut agent = step
        .agent(&["exec", "--", "sh", "-c", &script])
        .stdout(std::fs::File::create(&log)?)
        .spawn()?;
    wait_for_file(&ready, Duration::from_secs(10))?;

    kill(Pid::from_raw(i32::try_from(agent.id())?), Signal::SIGTERM)?;
    let status = agent.wait()?;

    assert_eq!(status.code(), Some(7));
    assert_eq!(std::fs::read_to_string(&log)?, "got-term\n");
    assert_eq!(step.result()?, json!({"exitCode": 7}));
    Ok(())
}

#[test]
fn builtin_shell_runs_the_script_in_the_workspace() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let inputs = json!({
        "script": r#"echo "$GREETING from $(pwd)" > "$MAESTRO_OUTPUTS/greeting""#,
        "env": {"GREETING": "hello"},
    });
    let output = step
        .agent(&["builtin", "shell"])
        .env("MAESTRO_INPUTS", inputs.to_string())
        .output()?;
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let greeting = format!("hello from {}", step.workspace_dir().display());
    assert_eq!(
        step.result()?,
        json!({"outputs": {"greeting": greeting}, "exitCode": 0})
    );
    Ok(())
}

#[test]
fn builtin_shell_with_bad_input_exits_2() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let output = step
        .agent(&["builtin", "shell"])
        .env("MAESTRO_INPUTS", r#"{"script": "true", "env": ["A=1"]}"#)
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    let message = r#"input "env" must be an object of strings"#;
    assert!(
        stderr_of(&output).contains(message),
        "{}",
        stderr_of(&output)
    );
    assert_eq!(step.result()?, json!({"exitCode": 2, "error": message}));
    Ok(())
}

#[test]
fn builtin_container_exits_2_because_the_pod_was_built_wrong() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let output = step.agent(&["builtin", "container"]).output()?;
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        step.result()?,
        json!({
            "exitCode": 2,
            "error": "the container task runs its command with `maestro-agent exec`; this pod \
                      was built wrong",
        })
    );
    Ok(())
}

/// Runs git in `dir` with a fixed identity, so commits work on any machine.
fn git_in(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=Maestro Test",
            "-c",
            "user.email=test@maestro.dev",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "git {args:?}: {}",
        stderr_of(&output)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `maestro:s3cret` in base64, as a basic-auth header carries it.
const BASIC_CREDENTIALS: &str = "Basic bWFlc3RybzpzM2NyZXQ=";

#[test]
fn builtin_git_clones_then_fetches_with_credentials_from_the_environment() -> anyhow::Result<()> {
    // A repository served over git's "dumb" HTTP protocol (plain files) behind basic auth.
    let served = tempfile::tempdir()?;
    let work = served.path().join("work");
    std::fs::create_dir(&work)?;
    git_in(&work, &["init", "-q", "."])?;
    std::fs::write(work.join("pom.xml"), "<project/>")?;
    git_in(&work, &["add", "pom.xml"])?;
    git_in(&work, &["commit", "-q", "-m", "tests"])?;
    let bare = served.path().join("app.git");
    git_in(served.path(), &["clone", "-q", "--bare", "work", "app.git"])?;
    git_in(&bare, &["update-server-info"])?;
    let files = bare.clone();
    let server = TestHttpServer::start(move |request| {
        if request.header("authorization") != Some(BASIC_CREDENTIALS) {
            return CannedResponse::new(401, "")
                .with_header("WWW-Authenticate", "Basic realm=\"git\"");
        }
        let path = request.target.split('?').next().unwrap_or_default();
        match path
            .strip_prefix("/app.git/")
            .and_then(|relative| std::fs::read(files.join(relative)).ok())
        {
            Some(content) => CannedResponse::new(200, content),
            None => CannedResponse::new(404, ""),
        }
    })?;
    let repo = server.url("/app.git");

    let step = StepDirs::new()?;
    let run = || {
        step.agent(&["builtin", "git"])
            .env("MAESTRO_INPUTS", json!({"repo": repo}).to_string())
            .env("GIT_USERNAME", "maestro")
            .env("GIT_PASSWORD", "s3cret")
            .output()
    };
    let first = run()?;
    assert_eq!(first.status.code(), Some(0), "{}", stderr_of(&first));
    let workspace = step.workspace_dir().display().to_string();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.starts_with(&format!("cloned {repo} (main) into {workspace} at ")),
        "{stdout}"
    );
    let commit = git_in(&work, &["rev-parse", "HEAD"])?;
    let expected_outputs = |fetched: &str, commit: &str| json!({"commit": commit, "fetched": fetched, "path": workspace, "ref": "main"});
    assert_eq!(
        step.result()?,
        json!({"outputs": expected_outputs("false", &commit), "exitCode": 0})
    );

    // Upstream moves on; the second run fetches into the clone it finds.
    std::fs::write(
        work.join("pom.xml"),
        "<project><version>2</version></project>",
    )?;
    git_in(&work, &["commit", "-q", "-am", "version 2"])?;
    git_in(&work, &["push", "-q", "../app.git", "main"])?;
    git_in(&bare, &["update-server-info"])?;
    let second = run()?;
    assert_eq!(second.status.code(), Some(0), "{}", stderr_of(&second));
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        stdout.starts_with(&format!(
            "fetched into existing clone at {workspace}: main at "
        )),
        "{stdout}"
    );
    let commit = git_in(&work, &["rev-parse", "HEAD"])?;
    assert_eq!(
        step.result()?,
        json!({"outputs": expected_outputs("true", &commit), "exitCode": 0})
    );
    for output in [&first, &second] {
        assert!(!stderr_of(output).contains("s3cret"));
        assert!(!String::from_utf8_lossy(&output.stdout).contains("s3cret"));
    }
    Ok(())
}

#[test]
fn builtin_http_saves_a_download_into_the_workspace() -> anyhow::Result<()> {
    let war = vec![7_u8; 48_200];
    let served = war.clone();
    let server = TestHttpServer::start(move |_| CannedResponse::new(200, served.clone()))?;
    let step = StepDirs::new()?;
    let inputs = json!({"url": server.url("/releases/app.war"), "saveAs": "app.war"});
    let output = step
        .agent(&["builtin", "http"])
        .env("MAESTRO_INPUTS", inputs.to_string())
        .output()?;
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.ends_with("saved app.war (48.2 kB)\n"), "{stdout}");
    let saved = step.workspace_dir().join("app.war");
    assert!(std::fs::read(&saved)? == war);
    assert_eq!(
        step.result()?,
        json!({
            "outputs": {"bytes": "48200", "path": saved.display().to_string(), "status": "200"},
            "exitCode": 0,
        })
    );
    Ok(())
}

#[test]
fn builtin_notify_posts_and_fails_on_a_rejection() -> anyhow::Result<()> {
    let server = TestHttpServer::start(|request| {
        if request.target == "/ok" {
            CannedResponse::new(200, "ok")
        } else {
            CannedResponse::new(404, "no_service")
        }
    })?;
    let step = StepDirs::new()?;
    let notify = |path: &str| {
        step.agent(&["builtin", "notify"])
            .env(
                "MAESTRO_INPUTS",
                json!({"url": server.url(path), "text": "run done"}).to_string(),
            )
            .output()
    };
    let output = notify("/ok")?;
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_eq!(
        step.result()?,
        json!({"outputs": {"status": "200"}, "exitCode": 0})
    );
    assert_eq!(server.requests()[0].body, br#"{"text":"run done"}"#);

    let output = notify("/services/secret")?;
    assert_eq!(output.status.code(), Some(1));
    let error = format!(
        "the webhook at {} answered 404 Not Found: no_service",
        server.url("")
    );
    assert_eq!(step.result()?, json!({"exitCode": 1, "error": error}));
    Ok(())
}

#[test]
fn install_copies_a_runnable_agent() -> anyhow::Result<()> {
    let step = StepDirs::new()?;
    let bin_dir = step.root.path().join("maestro").join("bin");
    let bin_dir_arg = bin_dir.to_str().unwrap_or_default();
    let output = step.agent(&["install", bin_dir_arg]).output()?;
    assert!(output.status.success(), "{}", stderr_of(&output));

    let installed = Command::new(bin_dir.join("maestro-agent"))
        .arg("version")
        .output()?;
    assert!(installed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&installed.stdout),
        format!("maestro-agent {}\n", env!("CARGO_PKG_VERSION"))
    );
    Ok(())
}

#[test]
fn builtin_http_refuses_a_name_that_resolves_to_the_api_server() -> anyhow::Result<()> {
    let server = TestHttpServer::start(|_| CannedResponse::new(200, "token"))?;
    let step = StepDirs::new()?;
    // `localhost` stands for a DNS name an attacker points at a refused address: here the
    // pod is told the API server is on loopback.
    let url = server.url("/api").replacen("127.0.0.1", "localhost", 1);
    let run = |allow: bool| {
        step.agent(&["builtin", "http"])
            .env(
                "MAESTRO_INPUTS",
                json!({"url": url, "allowRestrictedAddresses": allow}).to_string(),
            )
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .output()
    };
    let refused = run(false)?;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr_of(&refused));
    let error = step.result()?["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains(
            "localhost resolves to a refused address: 127.0.0.1 is the cluster's API server"
        ),
        "{error}"
    );
    assert!(server.requests().is_empty());

    let allowed = run(true)?;
    assert_eq!(allowed.status.code(), Some(0), "{}", stderr_of(&allowed));
    assert_eq!(server.requests().len(), 1);
    Ok(())
}
