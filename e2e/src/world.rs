//! The outside world of a delivery cycle, started on this machine for a test and reached
//! by step pods on the node's address: an HTTP sink (a Maven repository, a deploy
//! endpoint, a webhook, a git repository over HTTP) and moto, a real EC2 API endpoint.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value as Json;

use crate::{maestro::repo_root, wait_for};

/// The address step pods reach this machine on (`MAESTRO_NODE_IP` from the cluster's env
/// file), or loopback for tests that run everything on this machine.
pub fn node_ip() -> String {
    std::env::var("MAESTRO_NODE_IP").unwrap_or_else(|_| "127.0.0.1".into())
}

/// A running `e2e/servers/sink.py`, killed when dropped.
pub struct Sink {
    child: std::process::Child,
    pub root: PathBuf,
    pub url: String,
}

impl Sink {
    /// Serves `root` and records PUTs and POSTs.
    pub async fn start(root: &Path) -> Result<Self> {
        let ready = root.join(".port");
        let _ = std::fs::remove_file(&ready);
        let host = node_ip();
        let child = std::process::Command::new("python3")
            .arg(repo_root().join("e2e/servers/sink.py"))
            .args([
                "--root",
                &root.display().to_string(),
                "--host",
                &host,
                "--port",
                "0",
            ])
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the HTTP sink")?;
        let port = wait_for(
            "the HTTP sink to listen",
            Duration::from_secs(20),
            || async { std::fs::read_to_string(&ready).map_err(|e| e.to_string()) },
        )
        .await?;
        Ok(Self {
            child,
            root: root.to_path_buf(),
            url: format!("http://{host}:{port}"),
        })
    }

    /// Every PUT and POST the sink received.
    pub async fn records(&self) -> Result<Vec<Json>> {
        let out = tokio::process::Command::new("curl")
            .args(["-fsS", &format!("{}/_records", self.url)])
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "reading the sink's records: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running moto server (`e2e/moto/moto.sh`), stopped when dropped.
pub struct Moto {
    pub url: String,
}

impl Moto {
    pub async fn start() -> Result<Self> {
        let out = tokio::process::Command::new("bash")
            .arg(repo_root().join("e2e/moto/moto.sh"))
            .arg("start")
            .env("MOTO_HOST", node_ip())
            // moto stops by itself if this test process dies before dropping it.
            .env("MOTO_STOP_WITH_PID", std::process::id().to_string())
            .output()
            .await?;
        if !out.status.success() {
            bail!("starting moto: {}", String::from_utf8_lossy(&out.stderr));
        }
        let url = String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        if url.is_empty() {
            bail!("moto.sh start printed no URL");
        }
        Ok(Self { url })
    }

    /// Makes moto refuse every connection (as a pod sees an EC2 outage: connection
    /// refused at once) while the returned rule lives; the pods reach it on the node's
    /// address.
    pub fn refuse_connections(&self) -> Result<crate::cluster::IptablesRule> {
        let port = self
            .url
            .rsplit(':')
            .next()
            .filter(|p| p.parse::<u16>().is_ok())
            .with_context(|| format!("moto's URL {} has no port", self.url))?;
        crate::cluster::IptablesRule::insert(&[
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            port,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ])
    }

    /// The state of every instance, by id, asked through the same EC2 API (boto3 from
    /// moto's own virtualenv): its state name, then the `maestro.dev/run=` and
    /// `maestro.dev/step=` tags it carries, space-separated.
    pub async fn instance_states(&self) -> Result<Vec<(String, String)>> {
        let python = moto_python();
        let script = "import boto3,json,sys\n\
            ec2 = boto3.client('ec2', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
                aws_access_key_id='testing', aws_secret_access_key='testing')\n\
            keys = ('maestro.dev/run', 'maestro.dev/step')\n\
            said = lambda i: ' '.join([i['State']['Name']] + [t['Key'] + '=' + t['Value']\n\
                for t in i.get('Tags', []) if t['Key'] in keys])\n\
            out = [(i['InstanceId'], said(i))\n\
                   for r in ec2.describe_instances()['Reservations'] for i in r['Instances']]\n\
            print(json.dumps(out))\n";
        let out = tokio::process::Command::new(python)
            .args(["-c", script, &self.url])
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "describe-instances: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The instances that are not terminated, each as `id state`, then the run and step
    /// that made it (its `maestro.dev/run` and `maestro.dev/step` tags), when tagged.
    pub async fn live_instances(&self) -> Result<Vec<String>> {
        Ok(self
            .instance_states()
            .await?
            .into_iter()
            .filter(|(_, state)| {
                let state = state.split(' ').next().unwrap_or_default();
                state != "terminated" && state != "shutting-down"
            })
            .map(|(id, state)| format!("{id} {state}"))
            .collect())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(repo_root().join("e2e/moto/moto.sh"))
            .args(["stop", &self.url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn moto_python() -> PathBuf {
    let cache = std::env::var("MAESTRO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/maestro")
        });
    cache.join("moto-v1/venv/bin/python")
}

/// Runs a command (git, in tests) and fails with its output when it fails.
pub fn run(dir: &Path, program: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A temporary folder removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!("{prefix}-{nanos}"));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
