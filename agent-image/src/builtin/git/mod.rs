//! The `git` built-in: checks out a repository at a branch, tag or commit, by default into the
//! run's workspace so later steps find it. Into a path that already holds a clone of the same
//! repository (a warm agent slot) it fetches only what is new instead of cloning again.
//!
//! A "clone" is `git init` + `git remote add origin` + `git fetch` + `git checkout`, rather
//! than `git clone`, because the workspace may already hold files from earlier steps (a
//! downloaded WAR), which `git clone` refuses; files in the way of the checkout are
//! overwritten, others are left alone.

mod remote_ref;
mod runner;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use reqwest::Url;

use self::remote_ref::{RemoteTarget, is_full_commit_sha, resolve_remote_target, unknown_ref};
use self::runner::{GitCredentials, GitRunner};
use super::Inputs;
use super::inputs::{optional_string, optional_whole_number, path_in_workspace, required_string};
use crate::result::{EXIT_AGENT_FAILURE, EXIT_BAD_INPUT, StepResult};
use crate::step_env::StepPaths;

/// URL schemes git can fetch from that make sense for a step (not `ext::`, which runs
/// commands).
const URL_SCHEMES: [&str; 5] = ["https", "http", "ssh", "git", "file"];

/// The `git` task's inputs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitInputs {
    /// A URL, an scp-like `user@host:path`, or an absolute local path.
    pub repo: String,
    pub git_ref: Option<String>,
    /// Where to check out; absolute.
    pub path: PathBuf,
    pub depth: Option<u64>,
}

/// Why a checkout failed: the inputs (exit code 2: retrying cannot help) or anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutError {
    BadInput(String),
    Failed(String),
}

/// What was checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub commit: String,
    pub path: PathBuf,
    pub git_ref: String,
    /// Whether an existing clone was fetched into, rather than a new one made.
    pub fetched: bool,
}

impl Checkout {
    fn outputs(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("commit".to_owned(), self.commit.clone()),
            ("path".to_owned(), self.path.display().to_string()),
            ("ref".to_owned(), self.git_ref.clone()),
            ("fetched".to_owned(), self.fetched.to_string()),
        ])
    }

    /// The line for the pod log.
    fn summary(&self, shown_repo: &str) -> String {
        let short = self.commit.get(..12).unwrap_or(&self.commit);
        if self.fetched {
            format!(
                "fetched into existing clone at {}: {} at {short}",
                self.path.display(),
                self.git_ref
            )
        } else {
            format!(
                "cloned {shown_repo} ({}) into {} at {short}",
                self.git_ref,
                self.path.display()
            )
        }
    }
}

/// Runs the git task: validates its inputs, then checks out.
pub async fn run_git(inputs: &Inputs, paths: &StepPaths) -> StepResult {
    let git_inputs = match parse_git_inputs(inputs, &paths.workspace_dir) {
        Ok(git_inputs) => git_inputs,
        Err(message) => return StepResult::failure(EXIT_BAD_INPUT, message),
    };
    let credentials = GitCredentials::from_lookup(|name| std::env::var(name).ok());
    match checkout(&git_inputs, credentials).await {
        Ok(checkout) => StepResult {
            outputs: checkout.outputs(),
            ..StepResult::default()
        },
        Err(CheckoutError::BadInput(message)) => StepResult::failure(EXIT_BAD_INPUT, message),
        Err(CheckoutError::Failed(message)) => StepResult::failure(EXIT_AGENT_FAILURE, message),
    }
}

/// Validates the inputs, with messages that name the input at fault.
pub fn parse_git_inputs(inputs: &Inputs, workspace_dir: &Path) -> Result<GitInputs, String> {
    let repo = repo_input(&required_string(inputs, "repo")?, workspace_dir)?;
    let git_ref = match optional_string(inputs, "ref")? {
        None => None,
        Some(git_ref) if git_ref.trim().is_empty() => None,
        Some(git_ref) => {
            let git_ref = git_ref.trim().to_owned();
            // Git's own rules are longer; these are the ones that could change the meaning
            // of the command line.
            if git_ref.starts_with('-')
                || git_ref
                    .contains(|character: char| character.is_whitespace() || character.is_control())
            {
                return Err(format!(
                    r#"input "ref": {git_ref:?} is not a valid branch, tag or commit name"#
                ));
            }
            Some(git_ref)
        }
    };
    let path = match optional_string(inputs, "path")? {
        None => workspace_dir.to_path_buf(),
        Some(given) => path_in_workspace(given.trim(), workspace_dir),
    };
    if path.exists() && !path.is_dir() {
        return Err(format!(
            r#"input "path": {} is not a directory"#,
            path.display()
        ));
    }
    Ok(GitInputs {
        repo,
        git_ref,
        path,
        depth: optional_whole_number(inputs, "depth", 1)?,
    })
}

/// The repository as git should see it: URLs and scp-like addresses as given, local paths
/// made absolute (relative ones are inside the workspace).
fn repo_input(given: &str, workspace_dir: &Path) -> Result<String, String> {
    let repo = given.trim();
    const MESSAGE: &str = r#"input "repo" must be an https, http, ssh, git or file URL, a user@host:path address or a path"#;
    if repo.starts_with('-') || repo.contains(|character: char| character.is_control()) {
        return Err(MESSAGE.to_owned());
    }
    // `<transport>::<address>` runs a remote helper (`ext::` runs any command).
    if repo
        .split_once("::")
        .is_some_and(|(transport, _)| !transport.contains('/'))
    {
        return Err(MESSAGE.to_owned());
    }
    if let Some((scheme, _)) = repo.split_once("://") {
        return if URL_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
            Ok(repo.to_owned())
        } else {
            Err(MESSAGE.to_owned())
        };
    }
    // Git reads `host:path` as ssh when the colon comes before any slash.
    let scp_like = repo
        .split_once(':')
        .is_some_and(|(host, _)| !host.is_empty() && !host.contains('/'));
    if scp_like {
        return Ok(repo.to_owned());
    }
    Ok(path_in_workspace(repo, workspace_dir).display().to_string())
}

/// `repo` as it may be shown: a URL without its user name and password (either may be a
/// token).
fn shown_repo(repo: &str) -> String {
    match Url::parse(repo) {
        Ok(mut url)
            if repo.contains("://") && (!url.username().is_empty() || url.password().is_some()) =>
        {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        _ => repo.to_owned(),
    }
}

/// Checks out `inputs.repo` at the ref into `inputs.path`.
pub async fn checkout(
    inputs: &GitInputs,
    credentials: Option<GitCredentials>,
) -> Result<Checkout, CheckoutError> {
    let git = GitRunner {
        credentials,
        repo: inputs.repo.clone(),
        shown_repo: shown_repo(&inputs.repo),
    };
    // First, so that a wrong ref fails before the path is touched.
    let target = resolve_remote_target(&git, inputs.git_ref.as_deref()).await?;
    let fetched = prepare_clone(&git, &inputs.path).await?;
    let commit = fetch_target(&git, &inputs.path, &target, inputs.depth).await?;
    let dir = Some(inputs.path.as_path());
    let mut checkout_args = vec![OsStr::new("checkout"), OsStr::new("-q"), OsStr::new("-f")];
    match &target {
        // A local branch, so later steps see the branch name (`git branch --show-current`).
        RemoteTarget::Branch(branch) => {
            checkout_args.extend([OsStr::new("-B"), OsStr::new(branch)]);
        }
        _ => checkout_args.push(OsStr::new("--detach")),
    }
    checkout_args.push(OsStr::new(&commit));
    git.run(dir, &checkout_args)
        .await
        .map_err(CheckoutError::Failed)?;
    let head = git
        .run(dir, &[OsStr::new("rev-parse"), OsStr::new("HEAD")])
        .await
        .map_err(CheckoutError::Failed)?;
    let checkout = Checkout {
        commit: head.trim().to_owned(),
        path: inputs.path.clone(),
        git_ref: target.name().to_owned(),
        fetched,
    };
    println!("{}", checkout.summary(&git.shown_repo));
    Ok(checkout)
}

/// Makes `path` a repository with `origin` pointing at the repo, unless it is a clone of the
/// repo already. Returns whether it was one (and so will be fetched into).
async fn prepare_clone(git: &GitRunner, path: &Path) -> Result<bool, CheckoutError> {
    if path.join(".git").exists() {
        let origin = git
            .run(
                Some(path),
                &[
                    OsStr::new("config"),
                    OsStr::new("--get"),
                    OsStr::new("remote.origin.url"),
                ],
            )
            .await
            .unwrap_or_default();
        let origin = origin.trim();
        if same_repository(origin, &git.repo) {
            scrub_reused_clone_config(git, path)
                .await
                .map_err(CheckoutError::Failed)?;
            return Ok(true);
        }
        let holds = if origin.is_empty() {
            "a git repository without an origin".to_owned()
        } else {
            format!("a clone of {}", shown_repo(origin))
        };
        return Err(CheckoutError::BadInput(format!(
            r#"input "path": {} holds {holds}, not of {}; give the git task another path"#,
            path.display(),
            git.shown_repo
        )));
    }
    tokio::fs::create_dir_all(path).await.map_err(|error| {
        CheckoutError::Failed(format!("cannot create {}: {error}", path.display()))
    })?;
    let dir = Some(path);
    git.run(
        dir,
        &[OsStr::new("init"), OsStr::new("-q"), OsStr::new(".")],
    )
    .await
    .map_err(CheckoutError::Failed)?;
    add_origin(git, dir).await.map_err(CheckoutError::Failed)?;
    Ok(false)
}

/// Makes `origin` exactly the repository the step asked for.
async fn add_origin(git: &GitRunner, dir: Option<&Path>) -> Result<String, String> {
    git.run(
        dir,
        &[
            OsStr::new("remote"),
            OsStr::new("add"),
            OsStr::new("origin"),
            OsStr::new(&git.repo),
        ],
    )
    .await
}

/// The settings of a clone's own configuration that a reused clone keeps: the repository's
/// format and how its work tree behaves. Everything else (`url.*.insteadOf`, `credential.*`,
/// `include*`, `core.sshCommand`, `core.worktree`, filter drivers, remotes, proxies, and
/// `extensions.worktreeConfig`, which would read a second file this scrub does not see) may
/// have been planted by an earlier run of lower trust in the same agent slot, to redirect the
/// fetch, catch the credentials or run a command. Keys as git lists them: lower case.
const KEPT_CLONE_SETTINGS: [&str; 9] = [
    "core.repositoryformatversion",
    "core.bare",
    "core.filemode",
    "core.logallrefupdates",
    "core.ignorecase",
    "core.precomposeunicode",
    "core.symlinks",
    "extensions.objectformat",
    "extensions.refstorage",
];

/// Whether the clone's own setting `key` is one a reused clone keeps.
fn is_kept_clone_setting(key: &str) -> bool {
    KEPT_CLONE_SETTINGS.contains(&key.to_ascii_lowercase().as_str())
}

/// Removes every setting but [`KEPT_CLONE_SETTINGS`] from a reused clone's own configuration,
/// and points `origin` at exactly the repository the step asked for.
async fn scrub_reused_clone_config(git: &GitRunner, path: &Path) -> Result<(), String> {
    let dir = Some(path);
    // `--local` reads the file itself, without following its includes.
    let listed = git
        .run(
            dir,
            &[
                OsStr::new("config"),
                OsStr::new("--local"),
                OsStr::new("--null"),
                OsStr::new("--name-only"),
                OsStr::new("--list"),
            ],
        )
        .await?;
    let mut removed = std::collections::BTreeSet::new();
    for key in listed
        .split('\0')
        .map(str::trim)
        .filter(|key| !key.is_empty())
    {
        if is_kept_clone_setting(key) || !removed.insert(key.to_owned()) {
            continue;
        }
        git.run(
            dir,
            &[
                OsStr::new("config"),
                OsStr::new("--local"),
                OsStr::new("--unset-all"),
                OsStr::new(key),
            ],
        )
        .await?;
    }
    if !removed.is_empty() {
        // Only the count: a planted `url.<address>.insteadOf` key may hold a token.
        eprintln!(
            "removed {} setting(s) from the existing clone's .git/config",
            removed.len()
        );
    }
    add_origin(git, dir).await?;
    Ok(())
}

/// Whether two repository addresses name the same repository, ignoring a trailing slash and
/// `.git`.
fn same_repository(left: &str, right: &str) -> bool {
    let normalize = |repo: &str| {
        let repo = repo.trim().trim_end_matches('/');
        repo.strip_suffix(".git").unwrap_or(repo).to_owned()
    };
    normalize(left) == normalize(right)
}

/// Fetches what `target` needs and returns the commit to check out.
async fn fetch_target(
    git: &GitRunner,
    path: &Path,
    target: &RemoteTarget,
    depth: Option<u64>,
) -> Result<String, CheckoutError> {
    let history = depth.map_or(History::AsIs, History::Depth);
    let (refspec, local) = match target {
        RemoteTarget::Branch(branch) => (
            format!("+refs/heads/{branch}:refs/remotes/origin/{branch}"),
            format!("refs/remotes/origin/{branch}"),
        ),
        // Kept as a local tag, so `git describe` works in later steps.
        RemoteTarget::Tag(tag) => (
            format!("+refs/tags/{tag}:refs/tags/{tag}"),
            format!("refs/tags/{tag}"),
        ),
        RemoteTarget::OtherRef(name) => (name.clone(), "FETCH_HEAD".to_owned()),
        RemoteTarget::Commit(sha) => return fetch_commit(git, path, sha, history).await,
    };
    fetch(git, path, &[refspec.as_str()], history)
        .await
        .map_err(CheckoutError::Failed)?;
    commit_of(git, path, &local)
        .await
        .ok_or_else(|| CheckoutError::Failed(format!("git fetched no commit for {local}")))
}

/// Fetches a commit by its sha. Servers hand out a full sha on request (protocol v2); an
/// abbreviated one, or a server that refuses, needs all branches and tags, in full history,
/// to find it in.
async fn fetch_commit(
    git: &GitRunner,
    path: &Path,
    sha: &str,
    history: History,
) -> Result<String, CheckoutError> {
    let fetched_directly =
        is_full_commit_sha(sha) && fetch(git, path, &[sha], history).await.is_ok();
    if !fetched_directly {
        let shallow = git
            .run(
                Some(path),
                &[
                    OsStr::new("rev-parse"),
                    OsStr::new("--is-shallow-repository"),
                ],
            )
            .await
            .is_ok_and(|answer| answer.trim() == "true");
        let everything = [
            "+refs/heads/*:refs/remotes/origin/*",
            "+refs/tags/*:refs/tags/*",
        ];
        let history = if shallow {
            History::Unshallow
        } else {
            History::AsIs
        };
        fetch(git, path, &everything, history)
            .await
            .map_err(CheckoutError::Failed)?;
    }
    commit_of(git, path, sha)
        .await
        .ok_or_else(|| unknown_ref(sha, &git.shown_repo))
}

/// How much history a fetch gets.
#[derive(Debug, Clone, Copy)]
enum History {
    /// Git's default: all of it, or as deep as the clone already is.
    AsIs,
    Depth(u64),
    /// All of it, in a clone that was shallow.
    Unshallow,
}

/// `git fetch` from origin, quietly, without other tags.
async fn fetch(
    git: &GitRunner,
    path: &Path,
    refspecs: &[&str],
    history: History,
) -> Result<String, String> {
    let history_option = match history {
        History::AsIs => None,
        History::Depth(depth) => Some(format!("--depth={depth}")),
        History::Unshallow => Some("--unshallow".to_owned()),
    };
    let mut args = vec![
        OsStr::new("fetch"),
        OsStr::new("-q"),
        OsStr::new("--no-tags"),
        OsStr::new("--force"),
    ];
    if let Some(option) = &history_option {
        args.push(OsStr::new(option));
    }
    args.push(OsStr::new("origin"));
    args.extend(refspecs.iter().map(OsStr::new));
    git.run(Some(path), &args).await
}

/// The commit `name` resolves to in the repository at `path`, if any.
async fn commit_of(git: &GitRunner, path: &Path, name: &str) -> Option<String> {
    let spec = format!("{name}^{{commit}}");
    git.run(
        Some(path),
        &[
            OsStr::new("rev-parse"),
            OsStr::new("--verify"),
            OsStr::new("-q"),
            OsStr::new(&spec),
        ],
    )
    .await
    .ok()
    .map(|sha| sha.trim().to_owned())
    .filter(|sha| !sha.is_empty())
}
