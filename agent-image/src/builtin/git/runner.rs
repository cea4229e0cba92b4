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

/// The host (with its port, as git sends it) the credentials are for: the helper answers no
/// other, so a submodule, a redirect or an `insteadOf` pointing elsewhere never gets them.
pub const CREDENTIAL_HOST_VAR: &str = "MAESTRO_GIT_CREDENTIAL_HOST";

/// A credential helper that answers git's `get` request from the two variables, and only for
/// the https host in [`CREDENTIAL_HOST_VAR`]. It runs in git's child shell, so the values
/// travel only through the environment. It reads git's whole request (git writes it before
/// reading the answer). `printf` rather than `echo`, because dash's `echo` would interpret
/// backslashes in a password.
const CREDENTIAL_HELPER: &str = "!f() { test \"$1\" = get || return 0; \
     asked_protocol=; asked_host=; \
     while IFS= read -r line; do case \"$line\" in \
     protocol=*) asked_protocol=\"${line#protocol=}\";; host=*) asked_host=\"${line#host=}\";; \
     '') break;; esac; done; \
     test \"$asked_protocol\" = https -o \"$asked_protocol\" = http || return 0; \
     test -n \"$MAESTRO_GIT_CREDENTIAL_HOST\" && \
     test \"$asked_host\" = \"$MAESTRO_GIT_CREDENTIAL_HOST\" || return 0; \
     printf 'username=%s\\npassword=%s\\n' \"$GIT_USERNAME\" \"$GIT_PASSWORD\"; }; f";

/// Settings on every git command line. Command-line settings win over the repository's own
/// configuration, which a reused clone (an agent slot an earlier, maybe less trusted, run
/// used) may have planted: no hooks and no fsmonitor command run, and the empty helper
/// clears every credential helper configured before, ours (if any) comes after it.
const HARDENING_SETTINGS: [&str; 3] = [
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "credential.helper=",
];

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
        for setting in HARDENING_SETTINGS {
            command.arg("-c").arg(setting);
        }
        let credential_host = credential_host(&self.repo);
        if self.credentials.is_some() && credential_host.is_some() {
            // After the empty helper above, so the system's, the user's or the clone's
            // helpers neither answer instead of ours nor store the password.
            command
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
        match (&self.credentials, credential_host) {
            (Some(credentials), Some(host)) => {
                command
                    .env(USERNAME_VAR, &credentials.username)
                    .env(PASSWORD_VAR, &credentials.password)
                    .env(CREDENTIAL_HOST_VAR, host);
            }
            _ => {
                command
                    .env_remove(USERNAME_VAR)
                    .env_remove(PASSWORD_VAR)
                    .env_remove(CREDENTIAL_HOST_VAR);
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

/// The host git names in its credential requests for `repo` (`host` or `host:port`, as
/// written in the URL, without any user name), for http and https URLs only: other transports
/// do not ask credential helpers.
pub fn credential_host(repo: &str) -> Option<String> {
    let (scheme, rest) = repo.split_once("://")?;
    if !matches!(scheme.to_ascii_lowercase().as_str(), "https" | "http") {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    (!host.is_empty()).then(|| host.to_owned())
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
    fn credential_host_is_the_authority_of_http_urls_only() {
        assert_eq!(
            credential_host("https://user:pw@git.example.com:8443/team/app.git").as_deref(),
            Some("git.example.com:8443")
        );
        assert_eq!(
            credential_host("HTTP://git.example.com").as_deref(),
            Some("git.example.com")
        );
        assert_eq!(credential_host("ssh://git@git.example.com/app.git"), None);
        assert_eq!(credential_host("git@git.example.com:team/app.git"), None);
        assert_eq!(credential_host("/srv/repo"), None);
        assert_eq!(credential_host("https:///path"), None);
    }

    /// Asks the credential helper, as `git credential fill` does, for `protocol`/`host`.
    fn ask_helper(protocol: &str, host: &str) -> std::process::Output {
        let request = format!("protocol={protocol}\nhost={host}\npath=app.git\n\n");
        let mut child = std::process::Command::new("git")
            .args(["-c", "credential.helper="])
            .arg("-c")
            .arg(format!("credential.helper={CREDENTIAL_HELPER}"))
            .args(["credential", "fill"])
            .env("GIT_TERMINAL_PROMPT", "0")
            .env(USERNAME_VAR, "me")
            .env(PASSWORD_VAR, "hunter2")
            .env(CREDENTIAL_HOST_VAR, "git.example.com")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("git runs");
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin
                .write_all(request.as_bytes())
                .expect("request written");
        }
        child.wait_with_output().expect("git credential finishes")
    }

    #[test]
    fn credential_helper_answers_only_for_the_repositorys_host() {
        let answer = ask_helper("https", "git.example.com");
        let stdout = String::from_utf8_lossy(&answer.stdout);
        assert!(answer.status.success(), "{answer:?}");
        assert!(stdout.contains("password=hunter2"), "{stdout}");

        for (protocol, host) in [
            ("https", "evil.example.com"),
            ("https", "git.example.com.evil.example.com"),
            ("https", "git.example.com:8443"),
            ("ftp", "git.example.com"),
        ] {
            let refused = ask_helper(protocol, host);
            let stdout = String::from_utf8_lossy(&refused.stdout);
            assert!(
                !stdout.contains("hunter2"),
                "{protocol}://{host} got the password: {stdout}"
            );
            // With no answer and no terminal, git gives up.
            assert!(!refused.status.success(), "{protocol}://{host}");
        }
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
