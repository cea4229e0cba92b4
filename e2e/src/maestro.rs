//! Maestro on the test cluster: CRDs and the Task library installed from the repo, the
//! real operator binary started as a local process watching one test namespace, YAML
//! applied from examples/, runs followed to their end.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::core::v1::{Namespace, Pod},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch,
        PatchParams, PostParams,
    },
};
use maestro_api::{Composition, CompositionRun, CompositionRunSpec, RunPhase, labels};

use crate::wait_for;

/// The namespace of the standard Task library on the test cluster.
pub const LIBRARY_NAMESPACE: &str = "maestro-system";
const MANAGER: &str = "maestro-e2e";

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The folder of the workspace's binaries when a program of the harness (the bench) is
/// not a test executable in target/<profile>/deps.
static BIN_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes [`workspace_bin`] look in `dir` (MAESTRO_BIN_DIR still wins).
pub fn set_bin_dir(dir: &Path) {
    let _ = BIN_DIR.set(dir.to_path_buf());
}

/// A binary of the workspace, built next to the test executables.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("MAESTRO_BIN_DIR") {
        return Ok(PathBuf::from(dir).join(name));
    }
    if let Some(dir) = BIN_DIR.get() {
        return Ok(dir.join(name));
    }
    let exe = std::env::current_exe()?;
    // target/debug/deps/<test> -> target/debug/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target dir")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// Installs (server-side applies) the CRDs from crds/ and waits until they are served.
pub async fn install_crds(client: &Client) -> Result<()> {
    apply_crds(
        client,
        &yaml_files(&repo_root().join("crds"))?,
        MANAGER,
        Duration::from_secs(30),
    )
    .await
}

/// Server-side applies the CRDs in `files` as `manager`, then waits up to `timeout` for
/// each to be Established (served).
pub(crate) async fn apply_crds(
    client: &Client,
    files: &[std::path::PathBuf],
    manager: &str,
    timeout: Duration,
) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for path in files {
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&std::fs::read_to_string(path)?)
                .with_context(|| format!("parsing {}", path.display()))?;
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying {name}"))?;
        names.push(name);
    }
    for name in names {
        wait_for(
            &format!("CRD {name} to be established"),
            timeout,
            || async {
                let crd = api.get(&name).await.map_err(|e| e.to_string())?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    Ok(())
                } else {
                    Err("not established".into())
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// Installs the standard Task library into [`LIBRARY_NAMESPACE`], and the admission
/// policies (the approval identity check).
pub async fn install_library(client: &Client) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(LIBRARY_NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces
        .patch(
            LIBRARY_NAMESPACE,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&ns),
        )
        .await?;
    for path in yaml_files(&repo_root().join("operator/library"))? {
        apply_file(client, LIBRARY_NAMESPACE, &path).await?;
    }
    for path in yaml_files(&repo_root().join("charts/maestro/files/policies"))? {
        apply_file(client, LIBRARY_NAMESPACE, &path).await?;
    }
    Ok(())
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// The API resource of a kind the tests apply, and whether it is namespaced.
fn resource_of(kind: &str) -> Result<(ApiResource, bool)> {
    let gvk = |group: &str, version: &str| GroupVersionKind::gvk(group, version, kind);
    Ok(match kind {
        "Task" | "Composition" | "CompositionRun" | "Agent" | "Approval" => {
            let plural = format!("{}s", kind.to_lowercase());
            (
                ApiResource::from_gvk_with_plural(&gvk("maestro.dev", "v1alpha1"), &plural),
                true,
            )
        }
        "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding" => {
            // "policy" -> "policies", "binding" -> "bindings".
            let lower = kind.to_lowercase();
            let plural = match lower.strip_suffix('y') {
                Some(stem) => format!("{stem}ies"),
                None => format!("{lower}s"),
            };
            (
                ApiResource::from_gvk_with_plural(
                    &gvk("admissionregistration.k8s.io", "v1"),
                    &plural,
                ),
                false,
            )
        }
        "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding" => (
            ApiResource::from_gvk_with_plural(
                &gvk("rbac.authorization.k8s.io", "v1"),
                &format!("{}s", kind.to_lowercase()),
            ),
            kind.starts_with("Role"),
        ),
        "Pod" | "PersistentVolumeClaim" | "Secret" | "ConfigMap" | "ServiceAccount" => (
            ApiResource::from_gvk_with_plural(&gvk("", "v1"), &format!("{}s", kind.to_lowercase())),
            true,
        ),
        "ResourceQuota" => (
            ApiResource::from_gvk_with_plural(&gvk("", "v1"), "resourcequotas"),
            true,
        ),
        "Service" => (
            ApiResource::from_gvk_with_plural(&gvk("", "v1"), "services"),
            true,
        ),
        "Deployment" => (
            ApiResource::from_gvk_with_plural(&gvk("apps", "v1"), "deployments"),
            true,
        ),
        other => bail!("the e2e harness does not apply kind {other}"),
    })
}

/// Applies every object in a YAML file (several documents allowed), namespaced ones into `ns`.
/// Objects with `generateName` are created; the others are server-side applied.
pub async fn apply_file(client: &Client, ns: &str, path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    apply_yaml(client, ns, &text).await
}

/// Every object in YAML text (several documents allowed), each with the Api it goes
/// through: namespaced ones placed in `ns`. The text is parsed whole first, so a
/// malformed document fails before anything is written.
fn objects_in(
    client: &Client,
    ns: &str,
    text: &str,
) -> Result<Vec<(DynamicObject, Api<DynamicObject>)>> {
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let mut obj: DynamicObject = serde_yaml::from_value(value)?;
        let kind = obj
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        let (resource, namespaced) = resource_of(&kind)?;
        let api: Api<DynamicObject> = if namespaced {
            obj.metadata.namespace = Some(ns.into());
            Api::namespaced_with(client.clone(), ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        objects.push((obj, api));
    }
    Ok(objects)
}

/// Applies every object in YAML text, as [`apply_file`] does.
pub async fn apply_yaml(client: &Client, ns: &str, text: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for (obj, api) in objects_in(client, ns, text)? {
        let created = if obj.metadata.name.is_none() {
            api.create(&PostParams::default(), &obj).await?
        } else {
            let name = obj.name_any();
            api.patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await?
        };
        names.push(created.name_any());
    }
    Ok(names)
}

/// Creates every object in YAML text (POST, as `kubectl create` does), namespaced ones in
/// `ns`, as whoever `client` authenticates; stops at the first refusal.
pub async fn create_yaml(client: &Client, ns: &str, text: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for (obj, api) in objects_in(client, ns, text)? {
        names.push(api.create(&PostParams::default(), &obj).await?.name_any());
    }
    Ok(names)
}

/// Deletes every object in YAML text (those that exist), namespaced ones in `ns`.
pub async fn delete_yaml(client: &Client, ns: &str, text: &str) -> Result<()> {
    for (obj, api) in objects_in(client, ns, text)? {
        let _ = api.delete(&obj.name_any(), &DeleteParams::default()).await;
    }
    Ok(())
}

use serde::Deserialize as _;

/// The operator binary, running as a local process with the test's KUBECONFIG and
/// watching one namespace; killed when dropped.
pub struct Operator {
    child: tokio::process::Child,
    namespace: String,
    /// Flags added to the harness's own (kept for a restart).
    extra_args: Vec<String>,
    /// How it was started (kept for a restart).
    launch: Launch,
    pub log: PathBuf,
}

/// How the harness starts an operator process, beyond its flags.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// A replica's name: its log is then its own (the namespace's otherwise).
    pub replica: Option<String>,
    /// A user id to run as instead of the harness's root, so that a test can single its
    /// traffic out (`iptables -m owner --uid-owner`). The binary and the kubeconfig are
    /// copied where that user can read them.
    pub user: Option<u32>,
}

impl Operator {
    pub async fn start(namespace: &str) -> Result<Self> {
        Self::start_with(namespace, &[]).await
    }

    /// Starts the operator with `extra_args` after the harness's flags; a
    /// `--webhook-addr` there replaces the harness's own.
    pub async fn start_with(namespace: &str, extra_args: &[String]) -> Result<Self> {
        Self::start_launched(namespace, extra_args, Launch::default()).await
    }

    /// One more replica of a namespace's operator, with a log of its own: replicas elect
    /// their leader (identities differ by process id) unless `--leader-elect=false`.
    pub async fn start_replica(
        namespace: &str,
        extra_args: &[String],
        replica: &str,
    ) -> Result<Self> {
        let launch = Launch {
            replica: Some(replica.into()),
            user: None,
        };
        Self::start_launched(namespace, extra_args, launch).await
    }

    /// Starts the operator as `launch` says.
    pub async fn start_launched(
        namespace: &str,
        extra_args: &[String],
        launch: Launch,
    ) -> Result<Self> {
        let log_name = match &launch.replica {
            Some(replica) => format!("{namespace}-{replica}"),
            None => namespace.to_string(),
        };
        let log = std::env::temp_dir().join(format!("maestro-operator-{log_name}.log"));
        let mut command = match launch.user {
            None => tokio::process::Command::new(workspace_bin("maestro-operator")?),
            Some(uid) => as_user(uid)?,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = command
            .args([
                "--namespace",
                namespace,
                "--library-namespace",
                LIBRARY_NAMESPACE,
            ])
            // Each test's operator elects itself in its own namespace, so tests running
            // at once never wait on one another's Lease.
            .args(["--lease-namespace", namespace])
            // Tests run several operators at once: each serves its metrics on a free port.
            .args(["--metrics-addr", "127.0.0.1:0"])
            // ...and its webhook endpoint too, unless the test names one.
            .args(
                (!extra_args.iter().any(|a| a == "--webhook-addr"))
                    .then_some(["--webhook-addr", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .args(extra_args)
            // The benchmark logs less, as a production install would.
            .env(
                "MAESTRO_LOG_LEVEL",
                std::env::var("MAESTRO_E2E_OPERATOR_LOG_LEVEL")
                    .unwrap_or_else(|_| "info,maestro_operator=debug".into()),
            )
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .context("starting maestro-operator")?;
        Ok(Self {
            child,
            namespace: namespace.into(),
            extra_args: extra_args.to_vec(),
            launch,
            log,
        })
    }

    /// Kills the operator with SIGKILL, as a crash would.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Starts the operator again after a kill.
    pub async fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill().await;
        *self =
            Self::start_launched(&self.namespace, &self.extra_args, self.launch.clone()).await?;
        Ok(())
    }

    /// Starts the operator again when it has exited by itself (as a Deployment would: an
    /// operator that loses its Lease exits). True when it did.
    pub async fn restart_if_exited(&mut self) -> Result<bool> {
        if self.child.try_wait()?.is_none() {
            return Ok(false);
        }
        self.restart().await?;
        Ok(true)
    }

    /// The operator's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The operator process's resident memory in bytes, from /proc.
    pub fn resident_bytes(&self) -> Result<u64> {
        let pid = self.child.id().context("the operator has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS line")?
            .parse()?;
        Ok(kib * 1024)
    }

    /// The operator's log so far, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A command that runs a copy of the operator binary as `uid`, with a copy of the
/// cluster's kubeconfig that only that user can read.
fn as_user(uid: u32) -> Result<tokio::process::Command> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("maestro-operator-user-{uid}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let bin = dir.join("maestro-operator");
    // A fresh copy each start: a restart after a rebuild runs the new binary.
    let _ = std::fs::remove_file(&bin);
    std::fs::copy(workspace_bin("maestro-operator")?, &bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    let source = std::env::var_os("KUBECONFIG").context("KUBECONFIG is not set")?;
    let kubeconfig = dir.join("kubeconfig");
    let _ = std::fs::remove_file(&kubeconfig);
    std::fs::copy(&source, &kubeconfig)?;
    std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o600))?;
    std::os::unix::fs::chown(&kubeconfig, Some(uid), Some(uid))?;
    let mut command = tokio::process::Command::new(bin);
    command
        .uid(uid)
        .gid(uid)
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", &dir)
        .current_dir(&dir);
    Ok(command)
}

/// Removes ANSI escape sequences (the operator's log is colored).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, then one final byte in @..~.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address the operator serves /metrics on, from the line it logs at startup
/// (`serving /metrics, /healthz and /readyz addr=127.0.0.1:PORT`).
pub fn metrics_addr_from_log(log: &Path) -> Result<String, String> {
    addr_from_log(log, "serving /metrics")
}

/// The address the operator serves git push webhooks on, from its log.
pub fn webhook_addr_from_log(log: &Path) -> Result<String, String> {
    addr_from_log(log, "serving git push webhooks")
}

/// The `addr=` field of the operator's last log line that holds `marker`.
fn addr_from_log(log: &Path, marker: &str) -> Result<String, String> {
    let text = strip_ansi(&std::fs::read_to_string(log).map_err(|e| e.to_string())?);
    text.lines()
        .rev()
        .filter(|l| l.contains(marker))
        .find_map(|l| l.split_once("addr=").map(|(_, a)| a.trim()))
        .and_then(|a| a.split_whitespace().next())
        .map(str::to_string)
        .ok_or_else(|| format!("no `{marker}` line in the operator's log yet"))
}

/// Creates a run of `composition` with `params`.
pub async fn start_run(
    client: &Client,
    ns: &str,
    composition: &str,
    params: &[(&str, &str)],
) -> Result<String> {
    let api: Api<CompositionRun> = Api::namespaced(client.clone(), ns);
    let run = CompositionRun {
        metadata: ObjectMeta {
            generate_name: Some(format!("{composition}-")),
            ..ObjectMeta::default()
        },
        spec: CompositionRunSpec {
            composition: composition.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cancel: false,
            priority: 0,
            started_by: None,
            rerun_of: None,
        },
        status: None,
    };
    Ok(api.create(&PostParams::default(), &run).await?.name_any())
}

/// Waits until the run is in one of `phases`, and returns it.
pub async fn wait_phase(
    client: &Client,
    ns: &str,
    run: &str,
    phases: &[RunPhase],
    timeout: Duration,
) -> Result<CompositionRun> {
    let api: Api<CompositionRun> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("run {run} to reach {phases:?}"),
        timeout,
        || async {
            let r = api.get(run).await.map_err(|e| e.to_string())?;
            let status = r.status.clone().unwrap_or_default();
            if phases.contains(&status.phase) {
                Ok(r)
            } else {
                let steps: Vec<String> = status
                    .steps
                    .iter()
                    .map(|s| format!("{}={:?}", s.name, s.phase))
                    .collect();
                Err(format!(
                    "phase {:?}, steps {}",
                    status.phase,
                    steps.join(" ")
                ))
            }
        },
    )
    .await
}

/// Waits until the run has ended.
pub async fn wait_finished(
    client: &Client,
    ns: &str,
    run: &str,
    timeout: Duration,
) -> Result<CompositionRun> {
    let ended = [
        RunPhase::Succeeded,
        RunPhase::Failed,
        RunPhase::Cancelled,
        RunPhase::Invalid,
    ];
    wait_phase(client, ns, run, &ended, timeout).await
}

/// The run's step pods, as (step, attempt, pod name).
pub async fn step_pods(client: &Client, ns: &str, run: &str) -> Result<Vec<(String, u32, String)>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("{}={run}", labels::RUN)))
        .await?;
    let mut out: Vec<(String, u32, String)> = list
        .items
        .iter()
        .map(|p| {
            let l = p.labels();
            let step = l.get(labels::STEP).cloned().unwrap_or_default();
            let attempt = l
                .get(labels::ATTEMPT)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            (step, attempt, p.name_any())
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Runs `kubectl-maestro` with `args` and returns its standard output.
pub async fn cli(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(workspace_bin("kubectl-maestro")?)
        .args(args)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "kubectl-maestro {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One test's Maestro: a restricted namespace, CRDs and library installed, and an
/// operator watching that namespace. Dropping it stops the operator and deletes the
/// namespace.
pub struct Env {
    pub client: Client,
    pub operator: Operator,
    // Dropped last: the namespace goes after the operator has stopped.
    pub ns: crate::TestNamespace,
}

impl Drop for Env {
    /// Runs carry a finalizer that only the operator removes: delete them while it still
    /// runs (it cleans up and lets them go), and strip what is left after a while, so the
    /// test namespace does not hang in Terminating.
    fn drop(&mut self) {
        let ns = self.ns.name.clone();
        crate::cleanup_in_drop(move |client| async move { delete_runs(&client, &ns).await });
    }
}

/// Deletes every run in `ns` while an operator still runs (their finalizer is the
/// operator's to remove, after its cleanup), then strips the finalizers of what is left
/// after 15 s, so the namespace never hangs in Terminating.
pub async fn delete_runs(client: &Client, ns: &str) {
    let runs: Api<CompositionRun> = Api::namespaced(client.clone(), ns);
    let _ = runs
        .delete_collection(&DeleteParams::background(), &ListParams::default())
        .await;
    for _ in 0..30 {
        match runs.list(&ListParams::default()).await {
            Ok(list) if list.items.is_empty() => return,
            Err(_) => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let unblock = serde_json::json!({"metadata": {"finalizers": null}});
    if let Ok(list) = runs.list(&ListParams::default()).await {
        for run in list.items {
            let _ = runs
                .patch(
                    &run.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&unblock),
                )
                .await;
        }
    }
}

impl Env {
    pub async fn new(prefix: &str) -> Result<Self> {
        Self::with_options(prefix, "restricted", &[]).await
    }

    /// An Env whose namespace enforces Pod Security Standard `level`.
    pub async fn with_security(prefix: &str, level: &str) -> Result<Self> {
        Self::with_options(prefix, level, &[]).await
    }

    /// An Env whose operator gets `extra_args` too (see [`Operator::start_with`]).
    pub async fn with_operator_args(prefix: &str, extra_args: &[String]) -> Result<Self> {
        Self::with_options(prefix, "restricted", extra_args).await
    }

    /// An Env whose namespace enforces Pod Security Standard `level` and whose operator
    /// gets `extra_args` too.
    pub async fn with_options(prefix: &str, level: &str, extra_args: &[String]) -> Result<Self> {
        let client = crate::client().await?;
        install_crds(&client).await?;
        install_library(&client).await?;
        let ns = crate::TestNamespace::create_with_security(&client, prefix, level).await?;
        let operator = Operator::start_with(&ns.name, extra_args).await?;
        Ok(Self {
            client,
            operator,
            ns,
        })
    }

    /// Applies the objects of YAML text into the test namespace.
    pub async fn apply_yaml(&self, text: &str) -> Result<Vec<String>> {
        apply_yaml(&self.client, &self.ns.name, text).await
    }

    /// Applies a file of examples/ into the test namespace.
    pub async fn apply_example(&self, path: &str) -> Result<Vec<String>> {
        apply_file(
            &self.client,
            &self.ns.name,
            &repo_root().join("examples").join(path),
        )
        .await
    }

    /// Applies a file of examples/ and waits until the operator reports every Composition
    /// in it Ready (for the object's current generation), as `kubectl wait
    /// --for=condition=Ready` does: a run started before that may be judged against
    /// caches that do not hold the composition or its Tasks yet.
    pub async fn apply_example_ready(&self, path: &str) -> Result<Vec<String>> {
        let names = self.apply_example(path).await?;
        self.wait_compositions_ready(&names).await?;
        Ok(names)
    }

    /// Waits until the operator reports each named Composition Ready for its current
    /// generation.
    pub async fn wait_compositions_ready(&self, names: &[String]) -> Result<()> {
        let compositions: Api<Composition> = Api::namespaced(self.client.clone(), &self.ns.name);
        for name in names {
            wait_for(
                &format!("composition {name} to be Ready"),
                Duration::from_secs(30),
                || async {
                    let found = compositions.get(name).await.map_err(|e| e.to_string())?;
                    let generation = found.metadata.generation;
                    let ready = found
                        .status
                        .iter()
                        .flat_map(|s| &s.conditions)
                        .find(|c| c.type_ == "Ready");
                    match ready {
                        Some(c) if c.status == "True" && c.observed_generation == generation => {
                            Ok(())
                        }
                        other => Err(format!("Ready condition {other:?}")),
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    pub async fn start_run(&self, composition: &str, params: &[(&str, &str)]) -> Result<String> {
        start_run(&self.client, &self.ns.name, composition, params).await
    }

    /// Waits for the run to end; on a timeout the error carries the operator's log.
    pub async fn wait_finished(&self, run: &str, timeout: Duration) -> Result<CompositionRun> {
        wait_finished(&self.client, &self.ns.name, run, timeout)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\noperator log:\n{}", self.operator.log_tail()))
    }

    pub async fn wait_phase(
        &self,
        run: &str,
        phases: &[RunPhase],
        timeout: Duration,
    ) -> Result<CompositionRun> {
        wait_phase(&self.client, &self.ns.name, run, phases, timeout)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\noperator log:\n{}", self.operator.log_tail()))
    }

    pub async fn step_pods(&self, run: &str) -> Result<Vec<(String, u32, String)>> {
        step_pods(&self.client, &self.ns.name, run).await
    }

    /// `kubectl maestro ARGS -n <test namespace>`.
    pub async fn cli(&self, args: &[&str]) -> Result<String> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-n", self.ns.name.as_str()]);
        cli(&all).await
    }
}
