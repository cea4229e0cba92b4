//! Git push events of GitHub, GitLab and Gitea: which provider a delivery comes from,
//! what it says (repository, ref, commit, author, message, changed files) and whether a
//! composition's git trigger matches it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::glob;
use maestro_api::GitTrigger;

/// The largest body the webhook reads; a larger delivery is refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A git hosting service that delivers push events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    GitLab,
    Gitea,
}

/// What the delivery's headers say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A branch or tag push: it may start runs.
    Push,
    /// GitHub's `ping`, sent when a webhook is created: answered, nothing more.
    Ping,
    /// Any other event: acknowledged and ignored.
    Other,
}

impl Provider {
    /// The provider served at a webhook path (`/hooks/github`...).
    pub fn from_path(path: &str) -> Option<Self> {
        match path.trim_end_matches('/') {
            "/hooks/github" => Some(Self::GitHub),
            "/hooks/gitlab" => Some(Self::GitLab),
            "/hooks/gitea" => Some(Self::Gitea),
            _ => None,
        }
    }

    /// The provider's name in metrics and answers.
    pub fn name(self) -> &'static str {
        match self {
            Self::GitHub => "github",
            Self::GitLab => "gitlab",
            Self::Gitea => "gitea",
        }
    }

    /// The header naming the event.
    pub fn event_header(self) -> &'static str {
        match self {
            Self::GitHub => "x-github-event",
            Self::GitLab => "x-gitlab-event",
            Self::Gitea => "x-gitea-event",
        }
    }

    /// The headers carrying the delivery's unique id, in order of preference; a
    /// redelivery repeats it.
    pub fn delivery_headers(self) -> &'static [&'static str] {
        match self {
            Self::GitHub => &["x-github-delivery"],
            Self::GitLab => &["x-gitlab-event-uuid", "idempotency-key"],
            Self::Gitea => &["x-gitea-delivery"],
        }
    }

    /// The headers carrying the signature (or GitLab's token), in order of preference.
    pub fn credential_headers(self) -> &'static [&'static str] {
        match self {
            Self::GitHub => &["x-hub-signature-256"],
            Self::GitLab => &["x-gitlab-token"],
            Self::Gitea => &["x-gitea-signature", "x-hub-signature-256"],
        }
    }

    /// What the event header's value means.
    pub fn event_kind(self, event: &str) -> EventKind {
        match (self, event) {
            (Self::GitHub, "push") | (Self::Gitea, "push") => EventKind::Push,
            (Self::GitLab, "Push Hook") | (Self::GitLab, "Tag Push Hook") => EventKind::Push,
            (Self::GitHub, "ping") => EventKind::Ping,
            _ => EventKind::Other,
        }
    }
}

/// A push, whatever the provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// Every URL the payload gives for the repository (clone, web, ssh).
    pub repository_urls: Vec<String>,
    /// The URL a run clones from: the payload's HTTP clone URL.
    pub clone_url: String,
    /// The full ref pushed, like `refs/heads/main` or `refs/tags/v1.0`.
    pub git_ref: String,
    /// The commit the ref points to after the push.
    pub commit_sha: String,
    /// The head commit's author (or the pusher when the payload has no commit).
    pub author: String,
    /// The head commit's message.
    pub message: String,
    /// Files added, modified or removed by the pushed commits.
    pub changed_paths: BTreeSet<String>,
    /// The push deleted the ref: nothing to run.
    pub deleted: bool,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "ref")]
    git_ref: String,
    after: Option<String>,
    checkout_sha: Option<String>,
    #[serde(default)]
    deleted: bool,
    repository: Option<Repository>,
    project: Option<Repository>,
    head_commit: Option<Commit>,
    #[serde(default)]
    commits: Vec<Commit>,
    pusher: Option<Person>,
    user_name: Option<String>,
}

/// The repository fields of all three providers (GitLab's `project` too).
#[derive(Deserialize)]
struct Repository {
    clone_url: Option<String>,
    git_http_url: Option<String>,
    http_url: Option<String>,
    html_url: Option<String>,
    web_url: Option<String>,
    ssh_url: Option<String>,
    git_ssh_url: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize)]
struct Commit {
    id: Option<String>,
    message: Option<String>,
    author: Option<Person>,
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
}

#[derive(Deserialize)]
struct Person {
    name: Option<String>,
    username: Option<String>,
    login: Option<String>,
}

impl Person {
    fn display(&self) -> Option<String> {
        self.name
            .clone()
            .or_else(|| self.username.clone())
            .or_else(|| self.login.clone())
    }
}

/// Reads a push event's body; the error says what is wrong with it (a 400 answer).
pub fn parse(body: &[u8]) -> Result<Push, String> {
    let payload: Payload =
        serde_json::from_slice(body).map_err(|e| format!("malformed push payload: {e}"))?;
    let repos: Vec<&Repository> = [payload.repository.as_ref(), payload.project.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    // Only the repository's own identity: GitLab's `homepage` (and any other free-form
    // URL in the payload) can name some other project's page, so it never matches.
    let mut repository_urls = Vec::new();
    for repo in &repos {
        for url in [
            &repo.clone_url,
            &repo.git_http_url,
            &repo.http_url,
            &repo.html_url,
            &repo.web_url,
            &repo.ssh_url,
            &repo.git_ssh_url,
            &repo.url,
        ]
        .into_iter()
        .flatten()
        {
            if !repository_urls.contains(url) {
                repository_urls.push(url.clone());
            }
        }
    }
    let clone_url = repos
        .iter()
        .find_map(|r| r.clone_url.clone().or_else(|| r.git_http_url.clone()))
        .or_else(|| repository_urls.first().cloned())
        .ok_or("malformed push payload: no repository URL")?;
    let commit_sha = payload
        .checkout_sha
        .clone()
        .or(payload.after.clone())
        .unwrap_or_default();
    let deleted = payload.deleted || commit_sha.is_empty() || commit_sha.bytes().all(|b| b == b'0');
    // The head commit: GitHub and Gitea name it; GitLab lists it among the commits.
    let head = payload.head_commit.as_ref().or_else(|| {
        payload
            .commits
            .iter()
            .find(|c| c.id.as_deref() == Some(commit_sha.as_str()))
            .or(payload.commits.last())
    });
    let author = head
        .and_then(|c| c.author.as_ref())
        .and_then(Person::display)
        .or_else(|| payload.pusher.as_ref().and_then(Person::display))
        .or(payload.user_name.clone())
        .unwrap_or_default();
    let message = head
        .and_then(|c| c.message.clone())
        .unwrap_or_default()
        .trim_end()
        .to_string();
    let changed_paths = payload
        .commits
        .iter()
        .chain(payload.head_commit.as_ref())
        .flat_map(|c| c.added.iter().chain(&c.modified).chain(&c.removed))
        .cloned()
        .collect();
    Ok(Push {
        repository_urls,
        clone_url,
        git_ref: payload.git_ref,
        commit_sha,
        author,
        message,
        changed_paths,
        deleted,
    })
}

/// A repository URL reduced to `host/path`: no scheme, user, `.git` suffix, trailing
/// slash or case, and the ssh form `git@host:path` read as `host/path`.
pub fn normalize_repository(url: &str) -> String {
    let url = url.trim().to_lowercase();
    let (rest, had_scheme) = match url.split_once("://") {
        Some((_, rest)) => (rest.to_string(), true),
        None => (url.clone(), false),
    };
    let rest = match rest.split_once('@') {
        Some((user, host_path)) if !user.contains('/') => host_path.to_string(),
        _ => rest,
    };
    let rest = if had_scheme {
        rest
    } else {
        // scp-like syntax: `host:path`.
        rest.replacen(':', "/", 1)
    };
    let rest = rest.trim_end_matches('/');
    rest.strip_suffix(".git").unwrap_or(rest).to_string()
}

/// Whether the push is to the trigger's repository.
pub fn same_repository(trigger: &GitTrigger, push: &Push) -> bool {
    let wanted = normalize_repository(&trigger.repository);
    push.repository_urls
        .iter()
        .any(|url| normalize_repository(url) == wanted)
}

/// Why a trigger of the right repository does not start a run for a push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The pushed branch or tag matches none of the patterns.
    Ref(String),
    /// No changed file matches the path patterns.
    Paths,
}

/// Whether a push to the trigger's repository starts a run: its branch or tag matches
/// and, for a branch push with path patterns, a changed file matches one. A tag push
/// carries no file list, so path patterns do not apply to it.
pub fn check_ref_and_paths(trigger: &GitTrigger, push: &Push) -> Result<(), Mismatch> {
    if let Some(branch) = push.git_ref.strip_prefix("refs/heads/") {
        let any_branch = trigger.branches.is_empty() && trigger.tags.is_empty();
        if !any_branch && !glob::matches_any(&trigger.branches, branch) {
            return Err(Mismatch::Ref(push.git_ref.clone()));
        }
        if !trigger.paths.is_empty()
            && !push
                .changed_paths
                .iter()
                .any(|p| glob::matches_any(&trigger.paths, p))
        {
            return Err(Mismatch::Paths);
        }
        Ok(())
    } else if let Some(tag) = push.git_ref.strip_prefix("refs/tags/") {
        if glob::matches_any(&trigger.tags, tag) {
            Ok(())
        } else {
            Err(Mismatch::Ref(push.git_ref.clone()))
        }
    } else {
        Err(Mismatch::Ref(push.git_ref.clone()))
    }
}

/// How long a push-started run is kept at least, so a replay of its delivery's body
/// within this window meets the run's name and starts nothing.
pub const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The params of the run a push starts: the push's own (only those the composition
/// declares, as `declared` says) and the trigger's. `repository` is the trigger's own
/// URL, as its author wrote it, never one from the payload: the payload only has to name
/// the same repository, and what is cloned is the author's choice.
pub fn run_params(
    trigger: &GitTrigger,
    push: &Push,
    declared: impl Fn(&str) -> bool,
) -> BTreeMap<String, String> {
    let values = [
        trigger.repository.clone(),
        push.git_ref.clone(),
        push.commit_sha.clone(),
        push.author.clone(),
        push.message.clone(),
    ];
    let mut params: BTreeMap<String, String> = super::PUSH_PARAMS
        .iter()
        .zip(values)
        .filter(|(name, _)| declared(name))
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    params.extend(trigger.params.clone());
    params
}

#[cfg(test)]
mod tests;
