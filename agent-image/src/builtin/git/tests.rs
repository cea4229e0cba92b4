//! The git task against real repositories made with the git CLI in temporary directories, and
//! one served over HTTP with basic authentication.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use tempfile::TempDir;

use super::runner::GitCredentials;
use super::*;
use crate::builtin::test_http_server::{CannedResponse, TestHttpServer};
use crate::builtin::test_support::{inputs, step_paths};

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
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// An upstream repository: `main` with two commits, a `feature` branch, an annotated tag
/// `v1.0` on the first commit of main.
struct Upstream {
    dir: TempDir,
    first: String,
    second: String,
    feature: String,
}

impl Upstream {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        git_in(dir.path(), &["init", "-q", "."])?;
        let first = commit(dir.path(), "README", "one\n")?;
        git_in(dir.path(), &["tag", "-a", "v1.0", "-m", "release 1.0"])?;
        let second = commit(dir.path(), "README", "two\n")?;
        git_in(dir.path(), &["checkout", "-q", "-b", "feature", &first])?;
        let feature = commit(dir.path(), "FEATURE", "wip\n")?;
        git_in(dir.path(), &["checkout", "-q", "main"])?;
        Ok(Self {
            dir,
            first,
            second,
            feature,
        })
    }

    fn repo(&self) -> String {
        self.dir.path().display().to_string()
    }
}

fn commit(dir: &Path, file: &str, content: &str) -> anyhow::Result<String> {
    std::fs::write(dir.join(file), content)?;
    git_in(dir, &["add", file])?;
    git_in(dir, &["commit", "-q", "-m", &format!("{file}: {content}")])?;
    git_in(dir, &["rev-parse", "HEAD"])
}

fn output<'result>(result: &'result StepResult, name: &str) -> &'result str {
    result.outputs.get(name).map_or("", String::as_str)
}

#[tokio::test]
async fn default_ref_checks_out_the_default_branch_into_the_workspace() -> anyhow::Result<()> {
    let upstream = Upstream::new()?;
    let workspace = tempfile::tempdir()?;
    // A file from an earlier step, e.g. a downloaded WAR, stays.
    std::fs::write(workspace.path().join("app.war"), "war")?;
    let result = run_git(
        &inputs(json!({"repo": upstream.repo()})),
        &step_paths(workspace.path()),
    )
    .await;
    assert_eq!(result.exit_code, 0, "{:?}", result.error);
    assert_eq!(output(&result, "commit"), upstream.second);
    assert_eq!(output(&result, "ref"), "main");
    assert_eq!(output(&result, "fetched"), "false");
    assert_eq!(
        output(&result, "path"),
        workspace.path().display().to_string()
    );
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("README"))?,
        "two\n"
    );
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("app.war"))?,
        "war"
    );
    assert_eq!(
        git_in(workspace.path(), &["branch", "--show-current"])?,
        "main"
    );
    Ok(())
}

#[tokio::test]
async fn branch_checks_out_its_tip_as_a_local_branch() -> anyhow::Result<()> {
    let upstream = Upstream::new()?;
    let workspace = tempfile::tempdir()?;
    let result = run_git(
        &inputs(json!({"repo": upstream.repo(), "ref": "feature", "path": "src/app"})),
        &step_paths(workspace.path()),
    )
    .await;
    assert_eq!(result.exit_code, 0, "{:?}", result.error);
    let checkout_dir = workspace.path().join("src/app");
    assert_eq!(output(&result, "commit"), upstream.feature);
    assert_eq!(output(&result, "ref"), "feature");
    assert_eq!(output(&result, "path"), checkout_dir.display().to_string());
    assert!(checkout_dir.join("FEATURE").is_file());
    assert_eq!(
        git_in(&checkout_dir, &["branch", "--show-current"])?,
        "feature"
    );
    Ok(())
}

#[tokio::test]
async fn tag_checks_out_the_tagged_commit() -> anyhow::Result<()> {
    let upstream = Upstream::new()?;
    let workspace = tempfile::tempdir()?;
    let result = run_git(
        &inputs(json!({"repo": upstream.repo(), "ref": "v1.0"})),
        &step_paths(workspace.path()),
    )
    .await;
    assert_eq!(result.exit_code, 0, "{:?}", result.error);
    // The commit, not the annotated tag object.
    assert_eq!(output(&result, "commit"), upstream.first);
    assert_eq!(output(&result, "ref"), "v1.0");
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("README"))?,
        "one\n"
    );
    assert_eq!(git_in(workspace.path(), &["describe"])?, "v1.0");
    Ok(())
}

#[tokio::test]
async fn commit_sha_checks_out_that_commit_full_or_abbreviated() -> anyhow::Result<()> {
    let upstream = Upstream::new()?;
    for sha in [upstream.first.clone(), upstream.first[..10].to_owned()] {
        let workspace = tempfile::tempdir()?;
        let result = run_git(
            &inputs(json!({"repo": upstream.repo(), "ref": sha})),
            &step_paths(workspace.path()),
        )
        .await;
        assert_eq!(result.exit_code, 0, "{sha}: {:?}", result.error);
        assert_eq!(output(&result, "commit"), upstream.first);
        assert_eq!(output(&result, "ref"), sha);
        assert_eq!(
            std::fs::read_to_string(workspace.path().join("README"))?,
            "one\n"
        );
    }
    Ok(())
}

#[tokio::test]
async fn second_run_fetches_into_the_existing_clone() -> anyhow::Result<()> {
    let upstream = Upstream::new()?;
    let workspace = tempfile::tempdir()?;
    let step = inputs(json!({"repo": upstream.repo(), "depth": 1}));
    let first = run_git(&step, &step_paths(workspace.path())).await;
    assert_eq!(first.exit_code, 0, "{:?}", first.error);
    assert_eq!(output(&first, "fetched"), "false");
    assert_eq!(
        git_in(workspace.path(), &["rev-parse", "--is-shallow-repository"])?,
        "true"
    );
    // A marker in .git shows the second run reuses the repository rather than re-creating it.
    std::fs::write(workspace.path().join(".git/maestro-marker"), "")?;

    let third = commit(upstream.dir.path(), "README", "three\n")?;
    let second = run_git(&step, &step_paths(workspace.path())).await;
    assert_eq!(second.exit_code, 0, "{:?}", second.error);
    assert_eq!(output(&second, "fetched"), "true");
    assert_eq!(output(&second, "commit"), third);
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("README"))?,
        "three\n"
    );
    assert!(workspace.path().join(".git/maestro-marker").exists());
    Ok(())
}

#[tokio::test]
async fn existing_clone_can_switch_to_another_ref_discarding_local_edits() -> anyhow::Result<()> {
    let upstream = Upstream::new()?;
    let workspace = tempfile::tempdir()?;
    let paths = step_paths(workspace.path());
    let first = run_git(&inputs(json!({"repo": upstream.repo()})), &paths).await;
    assert_eq!(first.exit_code, 0, "{:?}", first.error);
    std::fs::write(workspace.path().join("README"), "edited by a build\n")?;
    // The same repository spelled with a trailing slash.
    let repo = format!("{}/", upstream.repo());
    let moved = run_git(&inputs(json!({"repo": repo, "ref": "v1.0"})), &paths).await;
    assert_eq!(moved.exit_code, 0, "{:?}", moved.error);
    assert_eq!(output(&moved, "fetched"), "true");
    assert_eq!(output(&moved, "commit"), upstream.first);
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("README"))?,
        "one\n"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_ref_fails_naming_it_and_leaves_the_path_alone() -> anyhow::Result<()> {
    let upstream = Upstream::new()?;
    let workspace = tempfile::tempdir()?;
    for bad_ref in ["no-such-branch", "0123456789abcdef0123456789abcdef01234567"] {
        let result = run_git(
            &inputs(json!({"repo": upstream.repo(), "ref": bad_ref, "path": bad_ref})),
            &step_paths(workspace.path()),
        )
        .await;
        assert_eq!(result.exit_code, 2, "{bad_ref}");
        let expected = format!(
            r#"input "ref": "{bad_ref}" is not a branch, tag or commit of {}"#,
            upstream.repo()
        );
        assert_eq!(result.error.as_deref(), Some(expected.as_str()));
    }
    // A name that is no sha is rejected before anything is written.
    assert!(!workspace.path().join("no-such-branch").exists());
    Ok(())
}

#[tokio::test]
async fn path_holding_another_repository_is_refused() -> anyhow::Result<()> {
    let upstream = Upstream::new()?;
    let other = Upstream::new()?;
    let workspace = tempfile::tempdir()?;
    let paths = step_paths(workspace.path());
    let first = run_git(&inputs(json!({"repo": other.repo()})), &paths).await;
    assert_eq!(first.exit_code, 0, "{:?}", first.error);
    let result = run_git(&inputs(json!({"repo": upstream.repo()})), &paths).await;
    assert_eq!(result.exit_code, 2);
    let expected = format!(
        r#"input "path": {} holds a clone of {}, not of {}; give the git task another path"#,
        workspace.path().display(),
        other.repo(),
        upstream.repo()
    );
    assert_eq!(result.error.as_deref(), Some(expected.as_str()));
    Ok(())
}

#[tokio::test]
async fn unreachable_repository_fails_with_exit_code_1() -> anyhow::Result<()> {
    let workspace = tempfile::tempdir()?;
    let missing = workspace.path().join("no-repo-here");
    let result = run_git(
        &inputs(json!({"repo": missing.display().to_string(), "path": "checkout"})),
        &step_paths(workspace.path()),
    )
    .await;
    assert_eq!(result.exit_code, 1);
    let error = result.error.unwrap_or_default();
    assert!(error.starts_with("git ls-remote failed: "), "{error}");
    Ok(())
}

#[test]
fn messages_name_the_bad_input() -> anyhow::Result<()> {
    let workspace = tempfile::tempdir()?;
    let ws = workspace.path();
    let error_for = |value: Value| {
        parse_git_inputs(&inputs(value), ws)
            .err()
            .unwrap_or_default()
    };
    let repo_message = r#"input "repo" must be an https, http, ssh, git or file URL, a user@host:path address or a path"#;
    assert_eq!(error_for(json!({})), r#"input "repo" is required"#);
    assert_eq!(error_for(json!({"repo": "ext::sh -c id"})), repo_message);
    assert_eq!(error_for(json!({"repo": "--upload-pack=x"})), repo_message);
    assert_eq!(error_for(json!({"repo": "ftp://host/r.git"})), repo_message);
    assert_eq!(
        error_for(json!({"repo": "https://h/r", "ref": "--all"})),
        r#"input "ref": "--all" is not a valid branch, tag or commit name"#
    );
    assert_eq!(
        error_for(json!({"repo": "https://h/r", "depth": 0})),
        r#"input "depth" must be a whole number of at least 1"#
    );
    std::fs::write(ws.join("file"), "")?;
    assert_eq!(
        error_for(json!({"repo": "https://h/r", "path": "file"})),
        format!(
            r#"input "path": {} is not a directory"#,
            ws.join("file").display()
        )
    );
    Ok(())
}

#[test]
fn repo_addresses_are_kept_and_paths_made_absolute() -> anyhow::Result<()> {
    let ws = Path::new("/workspace");
    let repo_of = |value: &str| -> anyhow::Result<String> {
        parse_git_inputs(&inputs(json!({"repo": value})), ws)
            .map(|parsed| parsed.repo)
            .map_err(anyhow::Error::msg)
    };
    assert_eq!(
        repo_of("https://git.example.com/qa/acceptance.git")?,
        "https://git.example.com/qa/acceptance.git"
    );
    assert_eq!(
        repo_of("git@github.com:acme/app.git")?,
        "git@github.com:acme/app.git"
    );
    assert_eq!(repo_of("/srv/git/app.git")?, "/srv/git/app.git");
    assert_eq!(repo_of("mirrors/app.git")?, "/workspace/mirrors/app.git");
    let parsed =
        parse_git_inputs(&inputs(json!({"repo": "/r"})), ws).map_err(anyhow::Error::msg)?;
    assert_eq!(parsed.path, PathBuf::from("/workspace"));
    assert_eq!(parsed.git_ref, None);
    assert_eq!(parsed.depth, None);
    Ok(())
}

#[test]
fn same_repository_ignores_git_suffix_and_trailing_slash() {
    assert!(same_repository(
        "https://h/acme/app.git",
        "https://h/acme/app"
    ));
    assert!(same_repository(
        "https://h/acme/app/",
        "https://h/acme/app.git"
    ));
    assert!(!same_repository("https://h/acme/app", "https://h/acme/api"));
}

#[test]
fn shown_repositories_have_no_credentials() {
    assert_eq!(
        shown_repo("https://user:token@git.example.com/app.git"),
        "https://git.example.com/app.git"
    );
    assert_eq!(
        shown_repo("https://ghp_token@github.com/acme/app"),
        "https://github.com/acme/app"
    );
    assert_eq!(
        shown_repo("git@github.com:acme/app.git"),
        "git@github.com:acme/app.git"
    );
}

#[test]
fn log_lines_say_whether_it_cloned_or_fetched() {
    let mut checkout = Checkout {
        commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        path: PathBuf::from("/workspace"),
        git_ref: "main".to_owned(),
        fetched: false,
    };
    assert_eq!(
        checkout.summary("https://h/app.git"),
        "cloned https://h/app.git (main) into /workspace at 0123456789ab"
    );
    checkout.fetched = true;
    assert_eq!(
        checkout.summary("https://h/app.git"),
        "fetched into existing clone at /workspace: main at 0123456789ab"
    );
}

/// `maestro:s3cret` in base64, as a basic-auth header carries it.
const BASIC_CREDENTIALS: &str = "Basic bWFlc3RybzpzM2NyZXQ=";

/// Serves the bare repository `dir` over git's "dumb" HTTP protocol (plain files) at
/// `/app.git`, to clients that send [`BASIC_CREDENTIALS`].
fn serve_repository_with_basic_auth(dir: PathBuf) -> anyhow::Result<TestHttpServer> {
    Ok(TestHttpServer::start(move |request| {
        if request.header("authorization") != Some(BASIC_CREDENTIALS) {
            return CannedResponse::new(401, "who are you?")
                .with_header("WWW-Authenticate", "Basic realm=\"git\"");
        }
        let path = request.target.split('?').next().unwrap_or_default();
        let file = path
            .strip_prefix("/app.git/")
            .filter(|relative| !relative.contains(".."))
            .and_then(|relative| std::fs::read(dir.join(relative)).ok());
        match file {
            Some(content) => CannedResponse::new(200, content),
            None => CannedResponse::new(404, "not found"),
        }
    })?)
}

#[tokio::test]
async fn credentials_reach_git_through_the_helper_only() -> anyhow::Result<()> {
    let upstream = Upstream::new()?;
    let served = tempfile::tempdir()?;
    let bare = served.path().join("app.git");
    git_in(
        served.path(),
        &["clone", "-q", "--bare", &upstream.repo(), "app.git"],
    )?;
    git_in(&bare, &["update-server-info"])?;
    let server = serve_repository_with_basic_auth(bare)?;
    let workspace = tempfile::tempdir()?;
    let git_inputs = parse_git_inputs(
        &inputs(json!({"repo": server.url("/app.git")})),
        workspace.path(),
    )
    .map_err(anyhow::Error::msg)?;

    // Without credentials git must fail at once rather than prompt.
    let refused = checkout(&git_inputs, None).await;
    let Err(CheckoutError::Failed(message)) = refused else {
        anyhow::bail!("expected an authentication failure, got {refused:?}");
    };
    assert!(message.starts_with("git ls-remote failed: "), "{message}");

    let credentials = GitCredentials {
        username: "maestro".to_owned(),
        password: "s3cret".to_owned(),
    };
    let done = checkout(&git_inputs, Some(credentials))
        .await
        .map_err(|error| anyhow::anyhow!("{error:?}"))?;
    assert_eq!(done.commit, upstream.second);
    assert_eq!(done.git_ref, "main");
    // Nothing of the password is left in the clone's configuration or its origin URL.
    let config = std::fs::read_to_string(workspace.path().join(".git/config"))?;
    assert!(!config.contains("s3cret"), "{config}");
    assert_eq!(
        git_in(workspace.path(), &["config", "--get", "remote.origin.url"])?,
        server.url("/app.git")
    );
    Ok(())
}

/// Makes an executable hook script at `hook` that creates `marker` when it runs.
fn plant_hook(hook: &Path, marker: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = hook.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(hook, format!("#!/bin/sh\ntouch '{}'\n", marker.display()))?;
    std::fs::set_permissions(hook, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[tokio::test]
async fn hooks_planted_in_a_reused_clone_do_not_run() -> anyhow::Result<()> {
    let upstream = Upstream::new()?;
    let workspace = tempfile::tempdir()?;
    let elsewhere = tempfile::tempdir()?;
    let step = inputs(json!({"repo": upstream.repo()}));
    let first = run_git(&step, &step_paths(workspace.path())).await;
    assert_eq!(first.exit_code, 0, "{:?}", first.error);

    // An earlier run in the same slot plants hooks in .git/hooks and in a hooks directory
    // of its own that the clone's config names, and an fsmonitor command.
    let marker = elsewhere.path().join("hook-ran");
    for hook in ["post-checkout", "reference-transaction", "pre-auto-gc"] {
        plant_hook(&workspace.path().join(".git/hooks").join(hook), &marker)?;
        plant_hook(&elsewhere.path().join("hooks").join(hook), &marker)?;
    }
    let hooks_dir = elsewhere.path().join("hooks").display().to_string();
    git_in(workspace.path(), &["config", "core.hooksPath", &hooks_dir])?;
    let monitor = elsewhere.path().join("fsmonitor");
    plant_hook(&monitor, &marker)?;
    git_in(
        workspace.path(),
        &["config", "core.fsmonitor", &monitor.display().to_string()],
    )?;
    // Without the agent's settings, git would run them.
    git_in(
        workspace.path(),
        &["checkout", "-q", "-f", "--detach", &upstream.first],
    )?;
    assert!(
        marker.exists(),
        "the planted hook should work for plain git"
    );
    std::fs::remove_file(&marker)?;

    let third = commit(upstream.dir.path(), "README", "three\n")?;
    let second = run_git(&step, &step_paths(workspace.path())).await;
    assert_eq!(second.exit_code, 0, "{:?}", second.error);
    assert_eq!(output(&second, "fetched"), "true");
    assert_eq!(output(&second, "commit"), third);
    assert!(!marker.exists(), "a planted hook ran");
    // And the clone's config no longer names them for later plain git commands.
    let left = git_in(workspace.path(), &["config", "--local", "--list"])?;
    assert!(
        !left.contains("hookspath") && !left.contains("fsmonitor"),
        "{left}"
    );
    Ok(())
}

#[tokio::test]
async fn insteadof_planted_in_a_reused_clone_does_not_redirect_the_fetch() -> anyhow::Result<()> {
    let upstream = Upstream::new()?;
    let impostor = Upstream::new()?;
    let impostor_commit = commit(impostor.dir.path(), "README", "impostor\n")?;
    let workspace = tempfile::tempdir()?;
    let step = inputs(json!({"repo": upstream.repo()}));
    let first = run_git(&step, &step_paths(workspace.path())).await;
    assert_eq!(first.exit_code, 0, "{:?}", first.error);

    // An earlier run in the same slot points the repository at its own copy, and names a
    // credential helper of its own.
    let redirect = format!("url.{}.insteadOf", impostor.repo());
    git_in(workspace.path(), &["config", &redirect, &upstream.repo()])?;
    git_in(
        workspace.path(),
        &["config", "credential.helper", "!echo password=stolen"],
    )?;

    let third = commit(upstream.dir.path(), "README", "three\n")?;
    let second = run_git(&step, &step_paths(workspace.path())).await;
    assert_eq!(second.exit_code, 0, "{:?}", second.error);
    assert_eq!(output(&second, "fetched"), "true");
    assert_eq!(output(&second, "commit"), third);
    assert_ne!(output(&second, "commit"), impostor_commit);
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("README"))?,
        "three\n"
    );
    let left = git_in(workspace.path(), &["config", "--local", "--list"])?;
    assert!(
        !left.contains("insteadof") && !left.contains("credential."),
        "{left}"
    );
    assert_eq!(
        git_in(workspace.path(), &["config", "--get", "remote.origin.url"])?,
        upstream.repo()
    );
    Ok(())
}

#[test]
fn reused_clones_keep_only_format_and_work_tree_settings() {
    for kept in [
        "core.repositoryformatversion",
        "core.bare",
        "extensions.objectformat",
    ] {
        assert!(is_kept_clone_setting(kept), "{kept}");
    }
    for removed in [
        "core.hookspath",
        "core.fsmonitor",
        "core.sshcommand",
        "url.https://evil.example/.insteadof",
        "credential.helper",
        "credential.https://git.example.com.helper",
        "include.path",
        "remote.origin.url",
        "filter.lfs.smudge",
        "core.worktree",
        "extensions.worktreeconfig",
        "extensions.partialclone",
    ] {
        assert!(!is_kept_clone_setting(removed), "{removed}");
    }
}
