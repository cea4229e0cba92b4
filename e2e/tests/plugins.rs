//! Plugin tasks: a Task that runs its own image. examples/plugins/semver is a Python plugin
//! (semver-bump) in an image e2e/images/build-images.sh builds and imports as
//! `localhost/maestro/plugin-semver:dev`; examples/release-version uses it. The first test
//! runs the script with the host's python3 and needs no cluster.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use maestro_api::{CompositionRun, RunPhase, StepPhase, StepStatus, labels};
use maestro_e2e::maestro::{Env, apply_file, repo_root};

const PLUGIN_IMAGE: &str = "localhost/maestro/plugin-semver:dev";
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn plugin_dir() -> PathBuf {
    repo_root().join("examples/plugins/semver")
}

// ---------------------------------------------------------------------------------------
// The plugin's logic, without a cluster.

/// What one run of the script did: exit code, stdout, stderr and the outputs it wrote.
struct ScriptRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    outputs: BTreeMap<String, String>,
}

/// Runs semver.py as the agent would: only the MAESTRO_* variables the plugin reads (an
/// unset input is left out, as the agent leaves out an input without a value), and an
/// empty outputs directory.
fn run_script(version: Option<&str>, part: Option<&str>) -> anyhow::Result<ScriptRun> {
    let outputs = std::env::temp_dir().join(format!(
        "maestro-semver-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    std::fs::create_dir_all(&outputs)?;
    let mut cmd = Command::new("python3");
    cmd.arg(plugin_dir().join("semver.py"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MAESTRO_OUTPUTS", &outputs);
    if let Some(v) = version {
        cmd.env("MAESTRO_INPUT_VERSION", v);
    }
    if let Some(p) = part {
        cmd.env("MAESTRO_INPUT_PART", p);
    }
    let out = cmd.output().context("running python3 (is it installed?)")?;
    let written = read_outputs(&outputs);
    std::fs::remove_dir_all(&outputs)?;
    Ok(ScriptRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        outputs: written?,
    })
}

/// The output files, with one trailing newline trimmed as the agent does.
fn read_outputs(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut outputs = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let text = std::fs::read_to_string(entry.path())?;
        let value = text.strip_suffix('\n').unwrap_or(&text).to_string();
        outputs.insert(entry.file_name().to_string_lossy().into_owned(), value);
    }
    Ok(outputs)
}

#[test]
fn semver_script_bumps_versions() -> anyhow::Result<()> {
    // (version, part, next): part None is the default, patch.
    let cases = [
        ("1.4.2", None, "1.4.3"),
        ("1.4.2", Some("patch"), "1.4.3"),
        ("1.4.2", Some("minor"), "1.5.0"),
        ("1.4.2", Some("major"), "2.0.0"),
        ("v0.9.19", Some("patch"), "0.9.20"),
        ("1.4.2", Some(""), "1.4.3"),
        // A pre-release is bumped to its release, as npm's semver does; build metadata
        // goes.
        ("1.4.3-rc.1", Some("patch"), "1.4.3"),
        ("1.5.0-rc.1", Some("minor"), "1.5.0"),
        ("1.5.1-rc.1", Some("minor"), "1.6.0"),
        ("2.0.0-beta+exp.sha.5114f85", Some("major"), "2.0.0"),
        ("1.4.2+build.7", Some("patch"), "1.4.3"),
    ];
    for (version, part, next) in cases {
        let run = run_script(Some(version), part)?;
        let what = format!(
            "{version} {part:?}: stdout {} stderr {}",
            run.stdout, run.stderr
        );
        assert_eq!(run.code, Some(0), "{what}");
        assert_eq!(
            run.outputs,
            BTreeMap::from([
                ("next".to_string(), next.to_string()),
                ("tag".to_string(), format!("v{next}")),
            ]),
            "{what}"
        );
        let bumped = part.filter(|p| !p.is_empty()).unwrap_or("patch");
        assert_eq!(
            run.stdout,
            format!("semver-bump: {version} -> {next} ({bumped} bump)\n"),
            "{what}"
        );
        assert_eq!(run.stderr, "", "{what}");
    }
    Ok(())
}

#[test]
fn semver_script_refuses_bad_input_with_exit_code_2() -> anyhow::Result<()> {
    let bad_version = |v: &str| {
        format!(
            "semver-bump: input \"version\": \"{v}\" is not a semantic version \
             (MAJOR.MINOR.PATCH, like 1.4.2)\n"
        )
    };
    let cases = [
        (
            None,
            None,
            "semver-bump: input \"version\" is required (like 1.4.2)\n".to_string(),
        ),
        (
            Some("  "),
            None,
            "semver-bump: input \"version\" is required (like 1.4.2)\n".to_string(),
        ),
        (Some("1.4"), None, bad_version("1.4")),
        (Some("01.4.2"), None, bad_version("01.4.2")),
        (Some("1.4.2.0"), None, bad_version("1.4.2.0")),
        (Some("1.4.x"), Some("minor"), bad_version("1.4.x")),
        (
            Some("1.4.2"),
            Some("huge"),
            "semver-bump: input \"part\" must be major, minor or patch, not \"huge\"\n".to_string(),
        ),
        (
            Some("1.4.2"),
            Some("Minor"),
            "semver-bump: input \"part\" must be major, minor or patch, not \"Minor\"\n"
                .to_string(),
        ),
    ];
    for (version, part, message) in cases {
        let run = run_script(version, part)?;
        let what = format!("{version:?} {part:?}");
        assert_eq!(run.code, Some(2), "{what}: stderr {}", run.stderr);
        assert_eq!(run.stderr, message, "{what}");
        assert_eq!(run.stdout, "", "{what}");
        assert!(run.outputs.is_empty(), "{what}: wrote {:?}", run.outputs);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// On the cluster.

/// Applies the semver-bump Task and examples/release-version into the test namespace and
/// waits until the composition is Ready: a run started before the operator's caches hold
/// the namespace's new Task would be judged without it.
async fn apply_plugin_example(env: &Env) -> anyhow::Result<()> {
    let tasks = apply_file(&env.client, &env.ns.name, &plugin_dir().join("task.yaml")).await?;
    assert_eq!(tasks, vec!["semver-bump"]);
    env.apply_example_ready("release-version/composition.yaml")
        .await?;
    Ok(())
}

fn step<'a>(run: &'a CompositionRun, name: &str) -> anyhow::Result<&'a StepStatus> {
    run.status
        .as_ref()
        .and_then(|s| s.steps.iter().find(|x| x.name == name))
        .with_context(|| format!("no step {name} in the status of {:?}", run.metadata.name))
}

/// Checks that the step's pod ran the plugin's own image with the Task's command under
/// `maestro-agent exec`, and returns the pod's name.
async fn assert_ran_plugin_image(
    env: &Env,
    run: &CompositionRun,
    step_name: &str,
) -> anyhow::Result<String> {
    let pod_name = step(run, step_name)?
        .pod_name
        .clone()
        .context("the step records no pod")?;
    let pod = Api::<Pod>::namespaced(env.client.clone(), &env.ns.name)
        .get(&pod_name)
        .await?;
    let spec = pod.spec.context("pod without spec")?;
    let container = spec
        .containers
        .iter()
        .find(|c| c.name == labels::STEP_CONTAINER)
        .context("no step container")?;
    assert_eq!(container.image.as_deref(), Some(PLUGIN_IMAGE));
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        container.command.as_deref().unwrap_or_default(),
        [
            "/maestro/bin/maestro-agent",
            "exec",
            "--",
            "python3",
            "/plugin/semver.py"
        ]
    );
    // What the kubelet ran, not only what was asked: the image and its digest in
    // containerd, where build-images.sh imported it.
    let status = pod
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == labels::STEP_CONTAINER)
        .context("no status of the step container")?;
    assert!(
        status.image.ends_with("maestro/plugin-semver:dev"),
        "ran {}",
        status.image
    );
    assert!(
        status.image_id.contains("sha256:"),
        "image id {}",
        status.image_id
    );
    assert!(
        status
            .state
            .and_then(|s| s.terminated)
            .is_some_and(|t| t.started_at.is_some()),
        "the step container never ran"
    );
    Ok(pod_name)
}

#[tokio::test]
async fn semver_plugin_bumps_the_version_for_the_next_step() -> anyhow::Result<()> {
    let env = Env::new("plugin").await?;
    apply_plugin_example(&env).await?;
    let name = env
        .start_run(
            "release-version",
            &[("version", "1.4.2"), ("part", "minor")],
        )
        .await?;
    let run = env.wait_finished(&name, RUN_TIMEOUT).await?;
    let status = run.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Succeeded, "status: {status:#?}");
    assert_eq!(status.progress.as_deref(), Some("2/2"));

    let bump = step(&run, "bump")?;
    assert_eq!(bump.phase, StepPhase::Succeeded);
    assert_eq!(bump.exit_code, Some(0));
    assert_eq!(
        bump.outputs,
        BTreeMap::from([
            ("next".to_string(), "1.5.0".to_string()),
            ("tag".to_string(), "v1.5.0".to_string()),
        ])
    );
    // The shell step read the plugin's output through its template.
    assert_eq!(step(&run, "announce")?.outputs["tag"], "v1.5.0");
    assert_ran_plugin_image(&env, &run, "bump").await?;

    let log = env.cli(&["logs", &name]).await?;
    let line = |tag: &str, text: &str| log.lines().any(|l| l.starts_with(tag) && l.contains(text));
    assert!(
        line("[bump]", "semver-bump: 1.4.2 -> 1.5.0 (minor bump)"),
        "log:\n{log}"
    );
    assert!(line("[announce]", "next release: v1.5.0"), "log:\n{log}");

    // The composition's default part, patch, and a v-prefixed version.
    let name = env
        .start_run("release-version", &[("version", "v2.7.9")])
        .await?;
    let run = env.wait_finished(&name, RUN_TIMEOUT).await?;
    assert_eq!(
        run.status.as_ref().map(|s| s.phase),
        Some(RunPhase::Succeeded)
    );
    assert_eq!(step(&run, "bump")?.outputs["tag"], "v2.7.10");
    Ok(())
}

#[tokio::test]
async fn semver_plugin_fails_the_step_on_a_bad_version() -> anyhow::Result<()> {
    let env = Env::new("plugin-bad").await?;
    apply_plugin_example(&env).await?;
    let name = env
        .start_run("release-version", &[("version", "1.4")])
        .await?;
    let run = env.wait_finished(&name, RUN_TIMEOUT).await?;
    let status = run.status.clone().unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Failed, "status: {status:#?}");

    // Exit code 2 is the plugin's "bad input"; the step fails on its first attempt and the
    // next step never starts.
    let bump = step(&run, "bump")?;
    assert_eq!(bump.phase, StepPhase::Failed, "status: {status:#?}");
    assert_eq!(bump.exit_code, Some(2));
    assert_eq!(bump.attempts, 1);
    // The plugin's last stderr line says why, in the step's status.
    let message = bump.message.clone().unwrap_or_default();
    assert!(
        message.starts_with("exited with code 2: ") && message.contains(r#"input "version""#),
        "step message: {message:?}"
    );
    assert!(bump.outputs.is_empty(), "outputs {:?}", bump.outputs);
    let announce = step(&run, "announce")?;
    assert_eq!(announce.phase, StepPhase::Skipped, "status: {status:#?}");
    let failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .context("no Succeeded condition")?;
    assert_eq!(failed.status, "False");
    assert_eq!(failed.message, format!("step bump failed: {message}"));
    assert_ran_plugin_image(&env, &run, "bump").await?;

    // The plugin's own message names the input; the agent passes stderr to the pod log
    // unchanged (a plugin's words reach the step's status only as its exit code).
    let log = env.cli(&["logs", &name]).await?;
    let expected = "semver-bump: input \"version\": \"1.4\" is not a semantic version \
                    (MAJOR.MINOR.PATCH, like 1.4.2)";
    assert!(
        log.lines()
            .any(|l| l.starts_with("[bump]") && l.contains(expected)),
        "log:\n{log}"
    );
    assert!(!log.contains("[announce]"), "log:\n{log}");
    Ok(())
}
