//! Running the git CLI for the git task: without prompts, with the step's credentials handed
//! to git through a credential helper (never in a URL, an argument, an output or the log), and
//! with git's messages freed of any credentials the repository URL itself carries.

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

/// The variables the operator sets from the step's `credentialsSecret`.
pub const USERNAME_VAR: &str = "GIT_USERNAME";
pub const PASSWORD_VAR: &str = "GIT_PASSWORD";
/// The user name sent with a token when none is given; GitHub, GitLab and Gitea accept any.
const DEFAULT_USERNAME: &str = "git";

/// A credential helper that answers git's `get` request from the two variables. It runs in
/// git's child shell, so the values travel only through the environment. `printf` rather than
/// `echo`, because dash's `echo` would interpret backslashes in a password.
const CREDENTIAL_HELPER: &str = "!f() { test \"$1\" = get || return 0; \
     printf 'username=%s\\npassword=%s\\n' \"$GIT_USERNAME\" \"$GIT_PASSWORD\"; }; f";

/// Most git errors say what went wrong in their last lines; this keeps the result small.
const MAX_ERROR_CHARS: usize = 1000;

/// Credentials for an https repository.
#[derive(Clone, PartialEq, Eq)]
pub struct GitCredentials {
    pub username: String,
    pub password: String,
}

impl GitCredentials {
    /// The credentials in `GIT_USERNAME`/`GIT_PASSWORD`, if a password is there.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let password = lookup(PASSWORD_VAR).filter(|password| !password.is_empty())?;
        let username = lookup(USERNAME_VAR)
            .filter(|username| !username.is_empty())
            .unwrap_or_else(|| DEFAULT_USERNAME.to_owned());
        Some(Self { username, password })
    }
}

impl fmt::Debug for GitCredentials {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("GitCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Runs git commands for one repository.
#[derive(Debug)]
pub struct GitRunner {
    pub credentials: Option<GitCredentials>,
    /// The repository as given, and as it may be shown; git's messages have the first
    /// replaced by the second.
    pub repo: String,
    pub shown_repo: String,
}

impl GitRunner {
    /// Runs `git <args>` in `dir` and returns its standard output. On failure the error is
    /// `git <subcommand> failed: <git's last lines>`. Git's warnings go to the pod log.
    pub async fn run(&self, dir: Option<&Path>, args: &[&OsStr]) -> Result<String, String> {
        let mut command = Command::new("git");
        if self.credentials.is_some() {
            // The empty value first clears helpers from the system or user configuration, so
            // they neither answer instead of ours nor store the password.
            command
                .arg("-c")
                .arg("credential.helper=")
                .arg("-c")
                .arg(format!("credential.helper={CREDENTIAL_HELPER}"));
        }
        if let Some(dir) = dir {
            // The workspace's root belongs to the volume (root, or the node's directory
            // owner), not to the step's user: git would refuse it as "dubious ownership".
            // This directory is the one the task was told to check out into, so trust it;
            // a command-line setting is one git honours for this.
            let mut trusted = std::ffi::OsString::from("safe.directory=");
            trusted.push(dir.as_os_str());
            command.arg("-c").arg(trusted).current_dir(dir);
        }
        command
            .args(args)
            // A missing or wrong password must fail, not wait for a terminal that never answers.
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match &self.credentials {
            Some(credentials) => {
                command
                    .env(USERNAME_VAR, &credentials.username)
                    .env(PASSWORD_VAR, &credentials.password);
            }
            None => {
                command.env_remove(USERNAME_VAR).env_remove(PASSWORD_VAR);
            }
        }
        let subcommand = args
            .first()
            .map(|arg| arg.to_string_lossy().into_owned())
            .unwrap_or_default();
        let output = command
            .output()
            .await
            .map_err(|error| format!("cannot run git (the agent image should have it): {error}"))?;
        let stderr = self.redact(&String::from_utf8_lossy(&output.stderr));
        if output.status.success() {
            if !stderr.trim().is_empty() {
                eprint!("{stderr}");
            }
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!("git {subcommand} failed: {}", last_lines(&stderr)))
        }
    }

    fn redact(&self, text: &str) -> String {
        if self.repo == self.shown_repo {
            text.to_owned()
        } else {
            text.replace(&self.repo, &self.shown_repo)
        }
    }
}

/// The end of git's error output, within [`MAX_ERROR_CHARS`].
fn last_lines(stderr: &str) -> String {
    let text = stderr.trim();
    if text.is_empty() {
        return "(git printed no message)".to_owned();
    }
    let count = text.chars().count();
    if count <= MAX_ERROR_CHARS {
        return text.to_owned();
    }
    let tail: String = text.chars().skip(count - MAX_ERROR_CHARS).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_need_a_password_and_default_the_user_name() {
        let only_user = |name: &str| (name == USERNAME_VAR).then(|| "me".to_owned());
        assert_eq!(GitCredentials::from_lookup(only_user), None);
        let only_password = |name: &str| (name == PASSWORD_VAR).then(|| "tok".to_owned());
        assert_eq!(
            GitCredentials::from_lookup(only_password),
            Some(GitCredentials {
                username: "git".to_owned(),
                password: "tok".to_owned(),
            })
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let credentials = GitCredentials {
            username: "me".to_owned(),
            password: "hunter2".to_owned(),
        };
        assert!(!format!("{credentials:?}").contains("hunter2"));
    }

    #[test]
    fn long_errors_keep_their_end() {
        let long = format!("{}fatal: the point", "x".repeat(2000));
        let kept = last_lines(&long);
        assert!(kept.ends_with("fatal: the point"));
        assert_eq!(kept.chars().count(), MAX_ERROR_CHARS + 1);
        assert_eq!(last_lines("  \n"), "(git printed no message)");
    }

    #[tokio::test]
    async fn failures_name_the_subcommand_and_hide_url_credentials() {
        let runner = GitRunner {
            credentials: None,
            repo: "https://user:pw@127.0.0.1:1/none.git".to_owned(),
            shown_repo: "https://127.0.0.1:1/none.git".to_owned(),
        };
        let error = runner
            .run(None, &[OsStr::new("ls-remote"), OsStr::new(&runner.repo)])
            .await
            .err()
            .unwrap_or_default();
        assert!(error.starts_with("git ls-remote failed: "), "{error}");
        assert!(!error.contains("pw@"), "{error}");
    }
}
