//! Finding out what a `ref` input names in the remote repository (a branch, a tag, another
//! ref, or a commit), before anything is written to the checkout's path.

use std::ffi::OsStr;
use std::path::Path;

use super::CheckoutError;
use super::runner::GitRunner;

/// Where `ls-remote` runs: not in the workspace, whose clone's configuration (or ownership, if
/// another user made it) has no say in what the remote holds.
const OUTSIDE_ANY_REPOSITORY: &str = "/";

/// What to fetch and check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteTarget {
    /// `refs/heads/<name>`; checked out as a local branch of that name.
    Branch(String),
    /// `refs/tags/<name>`; checked out detached.
    Tag(String),
    /// A full ref name other than a branch or tag, e.g. `refs/pull/12/head`.
    OtherRef(String),
    /// A commit sha, full or abbreviated.
    Commit(String),
}

impl RemoteTarget {
    /// The ref as reported in the `ref` output: the branch, tag, ref or sha.
    pub fn name(&self) -> &str {
        match self {
            Self::Branch(name) | Self::Tag(name) | Self::OtherRef(name) | Self::Commit(name) => {
                name
            }
        }
    }
}

/// Resolves `git_ref` against the remote, or the remote's default branch when it is `None`.
/// Like git itself, a tag wins over a branch of the same name.
pub async fn resolve_remote_target(
    git: &GitRunner,
    git_ref: Option<&str>,
) -> Result<RemoteTarget, CheckoutError> {
    let Some(git_ref) = git_ref else {
        return default_branch(git).await.map(RemoteTarget::Branch);
    };
    let patterns: Vec<String> = if git_ref.starts_with("refs/") {
        vec![git_ref.to_owned()]
    } else {
        vec![
            format!("refs/tags/{git_ref}"),
            format!("refs/heads/{git_ref}"),
        ]
    };
    let mut args = vec![
        OsStr::new("ls-remote"),
        OsStr::new("--"),
        OsStr::new(&git.repo),
    ];
    args.extend(patterns.iter().map(OsStr::new));
    let listing = git
        .run(Some(Path::new(OUTSIDE_ANY_REPOSITORY)), &args)
        .await
        .map_err(CheckoutError::Failed)?;
    let remote_refs: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split_once('\t').map(|(_, name)| name))
        .collect();
    // ls-remote matches patterns on their tail (refs/heads/x also matches refs/foo/refs/heads/x),
    // so only exact names count.
    let found = patterns
        .iter()
        .find(|pattern| remote_refs.contains(&pattern.as_str()));
    match found {
        Some(full) => Ok(if let Some(tag) = full.strip_prefix("refs/tags/") {
            RemoteTarget::Tag(tag.to_owned())
        } else if let Some(branch) = full.strip_prefix("refs/heads/") {
            RemoteTarget::Branch(branch.to_owned())
        } else {
            RemoteTarget::OtherRef(full.clone())
        }),
        None if looks_like_commit_sha(git_ref) => Ok(RemoteTarget::Commit(git_ref.to_owned())),
        None => Err(unknown_ref(git_ref, &git.shown_repo)),
    }
}

/// The message for a ref the repository does not have.
pub fn unknown_ref(git_ref: &str, shown_repo: &str) -> CheckoutError {
    CheckoutError::BadInput(format!(
        r#"input "ref": {git_ref:?} is not a branch, tag or commit of {shown_repo}"#
    ))
}

/// The branch the remote's HEAD points at.
async fn default_branch(git: &GitRunner) -> Result<String, CheckoutError> {
    let listing = git
        .run(
            Some(Path::new(OUTSIDE_ANY_REPOSITORY)),
            &[
                OsStr::new("ls-remote"),
                OsStr::new("--symref"),
                OsStr::new("--"),
                OsStr::new(&git.repo),
                OsStr::new("HEAD"),
            ],
        )
        .await
        .map_err(CheckoutError::Failed)?;
    // The symref line reads `ref: refs/heads/main<TAB>HEAD`.
    listing
        .lines()
        .filter_map(|line| line.strip_prefix("ref: "))
        .filter_map(|line| line.split_once('\t'))
        .find(|(_, name)| *name == "HEAD")
        .and_then(|(target, _)| target.strip_prefix("refs/heads/"))
        .map(str::to_owned)
        .ok_or_else(|| {
            CheckoutError::Failed(format!(
                r#"cannot tell the default branch of {}: its HEAD is not a branch; give input "ref""#,
                git.shown_repo
            ))
        })
}

/// Whether `text` can be a (possibly abbreviated) commit sha: 7 to 40 hex digits, or 64 for
/// SHA-256 repositories.
pub fn looks_like_commit_sha(text: &str) -> bool {
    ((7..=40).contains(&text.len()) || text.len() == 64)
        && text.chars().all(|character| character.is_ascii_hexdigit())
}

/// Whether `text` is a full commit sha, which a server can be asked for directly.
pub fn is_full_commit_sha(text: &str) -> bool {
    looks_like_commit_sha(text) && (text.len() == 40 || text.len() == 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_shas_are_hex_of_sha_lengths() {
        assert!(looks_like_commit_sha("c7f95cc"));
        assert!(looks_like_commit_sha(&"a".repeat(40)));
        assert!(is_full_commit_sha(&"A".repeat(40)));
        assert!(!is_full_commit_sha("c7f95cc"));
        for not_a_sha in ["c7f95c", "main", "v1.2.3", "deadbeefx", &"a".repeat(41)] {
            assert!(!looks_like_commit_sha(not_a_sha), "{not_a_sha}");
        }
    }
}
