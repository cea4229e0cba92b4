//! The local cluster's own processes, for the chaos suite: e2e/cluster/up.sh starts each
//! one in its own session and records its PID under `$CLUSTER_DIR/pids/NAME.pid`, so a
//! component can be killed and started again exactly as it was, and down.sh still ends it.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use kube::Client;

/// Where the running local cluster keeps its state (as e2e/cluster/versions.sh says).
pub fn cluster_dir() -> PathBuf {
    std::env::var_os("MAESTRO_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/maestro-cluster"))
}

/// A process of the local cluster, by the name up.sh gave it (`etcd`, `kube-apiserver`,
/// `kubelet`, ...), as it runs now.
#[derive(Debug, Clone)]
pub struct Component {
    pub name: String,
    pid: u32,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

impl Component {
    /// The component as it runs: its command line, environment and folder from /proc.
    pub fn running(name: &str) -> Result<Self> {
        let pid_file = cluster_dir().join("pids").join(format!("{name}.pid"));
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("{}: is the local cluster up?", pid_file.display()))?
            .trim()
            .parse()
            .with_context(|| format!("{}: not a PID", pid_file.display()))?;
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let nul_separated = |file: &str| -> Result<Vec<String>> {
            let bytes = std::fs::read(proc.join(file))
                .with_context(|| format!("{name} (pid {pid}) is not running"))?;
            Ok(nul_terminated(&bytes))
        };
        let argv = nul_separated("cmdline")?;
        if argv.is_empty() {
            bail!("{name} (pid {pid}) has exited");
        }
        let env = nul_separated("environ")?
            .into_iter()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        let cwd = std::fs::read_link(proc.join("cwd")).unwrap_or_else(|_| PathBuf::from("/"));
        Ok(Self {
            name: name.to_string(),
            pid,
            argv,
            env,
            cwd,
        })
    }

    /// SIGKILLs the component, waits until it is gone, keeps it down for `down`, then
    /// starts the same command line again (in its own session, appending to its log) and
    /// records the new PID where down.sh looks for it.
    pub async fn kill_and_restart(&mut self, down: Duration) -> Result<()> {
        signal(self.pid, "KILL").await?;
        let gone_by = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{}/cmdline", self.pid)).exists() && !is_zombie(self.pid) {
            if Instant::now() > gone_by {
                bail!("{} (pid {}) did not die on SIGKILL", self.name, self.pid);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(down).await;
        let dir = cluster_dir();
        let log = dir.join("logs").join(format!("{}.log", self.name));
        // Like up.sh's start(): setsid, so the component outlives this test process.
        let out = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(r#"log=$1; shift; setsid "$@" >>"$log" 2>&1 </dev/null & echo $!"#)
            .arg("restart")
            .arg(&log)
            .args(&self.argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.cwd)
            .output()
            .await
            .with_context(|| format!("starting {} again", self.name))?;
        let pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("starting {} again: no PID", self.name))?;
        std::fs::write(
            dir.join("pids").join(format!("{}.pid", self.name)),
            format!("{pid}\n"),
        )?;
        self.pid = pid;
        Ok(())
    }
}

/// An iptables rule of this machine's, present while this lives: the chaos suite adds
/// one to cut traffic, and its guard removes it, also when the test fails on the way.
pub struct IptablesRule(Vec<String>);

impl IptablesRule {
    /// Inserts the rule (`iptables -I SPEC...`, e.g. `OUTPUT -p tcp ... -j DROP`).
    pub fn insert(spec: &[&str]) -> Result<Self> {
        let spec: Vec<String> = spec.iter().map(|s| s.to_string()).collect();
        if !iptables("-I", &spec)?.success() {
            bail!("iptables -I {} failed", spec.join(" "));
        }
        Ok(Self(spec))
    }
}

impl Drop for IptablesRule {
    fn drop(&mut self) {
        match iptables("-D", &self.0) {
            Ok(done) if done.success() => {}
            other => eprintln!("[chaos] removing iptables rule {:?}: {other:?}", self.0),
        }
    }
}

fn iptables(op: &str, spec: &[String]) -> std::io::Result<std::process::ExitStatus> {
    std::process::Command::new("iptables")
        .arg(op)
        .args(spec)
        .status()
}

/// Waits until the API server answers `/readyz` (which checks etcd too).
pub async fn wait_api_ready(client: &Client, timeout: Duration) -> Result<()> {
    let until = Instant::now() + timeout;
    loop {
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .context("a /readyz request")?;
        if client.request_text(request).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > until {
            bail!(
                "the API server was not ready {} s after a restart",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn signal(pid: u32, name: &str) -> Result<()> {
    let status = tokio::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .await?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

/// The strings of a /proc list (cmdline, environ): each ends with a NUL. An empty one is
/// kept: `--listen-metrics-urls ""` is two arguments, and etcd refuses to start without
/// the second.
fn nul_terminated(bytes: &[u8]) -> Vec<String> {
    let Some(body) = bytes.strip_suffix(&[0]) else {
        return match bytes.is_empty() {
            true => Vec::new(),
            false => vec![String::from_utf8_lossy(bytes).into_owned()],
        };
    };
    body.split(|b| *b == 0)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

/// A killed process whose parent has not reaped it yet still has a /proc entry.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1;
            after_name.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::nul_terminated;

    #[test]
    fn empty_arguments_survive_and_nothing_is_added() {
        let cmdline = b"etcd\0--listen-metrics-urls\0\0--log-level\0warn\0";
        assert_eq!(
            nul_terminated(cmdline),
            ["etcd", "--listen-metrics-urls", "", "--log-level", "warn"]
        );
        assert!(nul_terminated(b"").is_empty());
        // A process that rewrote its title may leave no final NUL.
        assert_eq!(nul_terminated(b"pause"), ["pause"]);
    }
}
