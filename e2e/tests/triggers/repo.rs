//! The test's git repository, made with the git CLI, and the push events of each provider
//! built from its real commits.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use maestro_e2e::world::run;
use serde_json::{Value, json};

/// A commit of the test repository, as git tells it.
pub struct CommitInfo {
    pub sha: String,
    pub parent: String,
    pub author: String,
    pub email: String,
    pub message: String,
    pub added: Vec<String>,
    pub modified: Vec<String>,
    pub removed: Vec<String>,
}

pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    Ok(run(dir, "git", args)?.trim().to_string())
}

pub fn commit_info(dir: &Path, sha: &str) -> Result<CommitInfo> {
    let show = run(
        dir,
        "git",
        &["show", "-s", "--format=%H%x00%P%x00%an%x00%ae%x00%B", sha],
    )?;
    let fields: Vec<&str> = show.splitn(5, '\0').collect();
    let [sha, parent, author, email, message] = fields[..] else {
        bail!("unexpected git show output {show:?}");
    };
    let (mut added, mut modified, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    for line in git(
        dir,
        &["diff-tree", "--no-commit-id", "--name-status", "-r", sha],
    )?
    .lines()
    {
        match line.split_once('\t') {
            Some(("A", path)) => added.push(path.to_string()),
            Some(("D", path)) => removed.push(path.to_string()),
            Some((_, path)) => modified.push(path.to_string()),
            None => {}
        }
    }
    Ok(CommitInfo {
        sha: sha.to_string(),
        parent: parent.to_string(),
        author: author.to_string(),
        email: email.to_string(),
        message: message.trim_end().to_string(),
        added,
        modified,
        removed,
    })
}

/// The test repository: `src/` changed by the commit that gets pushed, then a commit that
/// changes only `docs/`. Returns (pushed commit, docs-only commit).
pub fn make_repo(root: &Path) -> Result<(CommitInfo, CommitInfo)> {
    let work = root.join("work");
    std::fs::create_dir_all(work.join("src"))?;
    std::fs::create_dir_all(work.join("docs"))?;
    git(&work, &["init", "-q", "-b", "main"])?;
    git(&work, &["config", "user.email", "dev@example.com"])?;
    git(&work, &["config", "user.name", "Dev Eloper"])?;
    std::fs::write(work.join("src/app.txt"), "version 1\n")?;
    git(&work, &["add", "."])?;
    git(&work, &["commit", "-q", "-m", "first version"])?;
    std::fs::write(work.join("src/app.txt"), "version 2\n")?;
    std::fs::write(work.join("src/lib.txt"), "new\n")?;
    git(&work, &["add", "."])?;
    git(
        &work,
        &["commit", "-q", "-m", "Second version\n\nwith a library"],
    )?;
    let pushed = git(&work, &["rev-parse", "HEAD"])?;
    std::fs::write(work.join("docs/notes.md"), "notes\n")?;
    git(&work, &["add", "."])?;
    git(&work, &["commit", "-q", "-m", "notes only"])?;
    let docs = git(&work, &["rev-parse", "HEAD"])?;
    let bare = root.join("app.git");
    run(
        root,
        "git",
        &["clone", "-q", "--bare", "work", &bare.display().to_string()],
    )?;
    // git's "dumb" HTTP protocol needs these index files; the sink is a static server.
    git(&bare, &["update-server-info"])?;
    Ok((commit_info(&work, &pushed)?, commit_info(&work, &docs)?))
}

pub fn commit_json(c: &CommitInfo) -> Value {
    json!({
        "id": c.sha,
        "message": c.message,
        "author": {"name": c.author, "email": c.email, "username": "dev"},
        "added": c.added, "modified": c.modified, "removed": c.removed,
    })
}

/// A GitHub (or Gitea: the same shape) push event for `commit` pushed to `git_ref`.
pub fn github_push(repo_url: &str, git_ref: &str, c: &CommitInfo) -> Value {
    json!({
        "ref": git_ref,
        "before": c.parent,
        "after": c.sha,
        "created": false, "deleted": false, "forced": false,
        "repository": {
            "name": "app", "full_name": "acme/app",
            "html_url": repo_url.trim_end_matches(".git"),
            "url": repo_url.trim_end_matches(".git"),
            "clone_url": repo_url,
        },
        "pusher": {"name": "dev", "email": c.email},
        "commits": [commit_json(c)],
        "head_commit": commit_json(c),
    })
}

/// A GitLab push event (Push Hook).
pub fn gitlab_push(repo_url: &str, git_ref: &str, c: &CommitInfo) -> Value {
    json!({
        "object_kind": "push", "event_name": "push",
        "before": c.parent, "after": c.sha, "checkout_sha": c.sha,
        "ref": git_ref,
        "user_name": "Dev Eloper", "user_username": "dev",
        "project": {
            "name": "app",
            "web_url": repo_url.trim_end_matches(".git"),
            "git_http_url": repo_url,
        },
        "repository": {"name": "app", "url": repo_url, "homepage": repo_url.trim_end_matches(".git"), "git_http_url": repo_url},
        "commits": [commit_json(c)],
        "total_commits_count": 1,
    })
}

/// The hex HMAC-SHA256 of `body`, computed by openssl (not by the code under test).
pub fn hmac_hex(secret: &str, body: &[u8]) -> Result<String> {
    openssl_digest(&["-hmac", secret], body)
}

/// The hex SHA-256 of `body`, computed by openssl.
pub fn sha256_hex(body: &[u8]) -> Result<String> {
    openssl_digest(&[], body)
}

fn openssl_digest(extra: &[&str], body: &[u8]) -> Result<String> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256"])
        .args(extra)
        .arg("-hex")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running openssl")?;
    child
        .stdin
        .take()
        .context("openssl stdin")?
        .write_all(body)?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .last()
        .map(str::to_string)
        .context("openssl printed no digest")
}
