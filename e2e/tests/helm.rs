//! The Helm chart (charts/maestro) end to end: it lints; its RBAC has no wildcard and no
//! Secret; its kustomize bases equal a fresh render; and on the real cluster, with Helm 4
//! and with Helm 3 alike, it lints, `helm install` installs it, the in-cluster operator
//! (reaching the API through the kubernetes Service) runs examples/hello and answers a
//! push through the webhook Service, `helm upgrade`
//! rolls the operator, the leader's pod killed mid-run hands over to the other replica
//! within 15 s and the run finishes, the ServiceAccount and the user roles can do what
//! they need and nothing more, and `helm uninstall` removes the operator and its Task
//! library but keeps the CRDs.
//!
//! helm (Helm 4), helm3 (Helm 3) and kubectl come from PATH (`source
//! /var/lib/maestro-cluster/env`) or from the local cluster's tools folder
//! (e2e/cluster/build.sh). Without helm3 the Helm 3 test is skipped, except under CI
//! (the variable CI set), where it fails.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{Namespace, Pod, Service},
        events::v1::Event,
        rbac::v1::ClusterRole,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use maestro_api::{CompositionRun, RunPhase, StepPhase, Task};
use maestro_e2e::{
    TestNamespace, client, lease_holder,
    maestro::{apply_file, repo_root, start_run, wait_finished},
    wait_all_gone, wait_for,
};
use serde::Deserialize as _;

const CHART: &str = "charts/maestro";
const CRDS: [&str; 5] = [
    "agents.maestro.dev",
    "approvals.maestro.dev",
    "compositionruns.maestro.dev",
    "compositions.maestro.dev",
    "tasks.maestro.dev",
];
const LIBRARY: [&str; 9] = [
    "container",
    "ec2-deprovision",
    "ec2-provision",
    "git",
    "http",
    "maven",
    "notify",
    "shell",
    "tomcat-deploy",
];
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Held by a release from its `helm install` to its `helm upgrade`, the span in which it
/// owns the cluster's one set of CRDs and expects to find them as it left them. Without
/// it the Helm 4 and Helm 3 tests, run side by side, take the CRDs from each other, and
/// Helm 4's server-side apply refuses to upgrade CRDs whose release-name annotation and
/// instance label Helm 3 (client-side, field manager `helm`, operation Update) last set
/// to its own release ("Apply failed with 3 conflicts"). A single release never meets
/// this: its values are the same in every revision.
static CRD_OWNER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------
// Helpers: tools, commands, rendered YAML.

/// A tool from PATH, else from the local cluster's tools folder
/// ($MAESTRO_CACHE/cluster-*/bin, e2e/cluster/versions.sh).
fn tool(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
    {
        return Ok(found);
    }
    let cache = std::env::var_os("MAESTRO_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/maestro")))
        .context("neither MAESTRO_CACHE nor HOME is set")?;
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("cluster-"))
        })
        .map(|p| p.join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    candidates.sort();
    candidates.pop().with_context(|| {
        format!("{name} is not on PATH: source /var/lib/maestro-cluster/env (make cluster-up)")
    })
}

/// What a command printed and whether it succeeded.
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `program` (a tool name, see [`tool`]) in the repository root.
async fn exec(program: &str, args: &[&str]) -> Result<Output> {
    exec_bin(&tool(program)?, args).await
}

/// Runs the binary at `program` in the repository root.
async fn exec_bin(program: &Path, args: &[&str]) -> Result<Output> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    Ok(Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs a command that must succeed, and returns its standard output.
async fn run(program: &str, args: &[&str]) -> Result<String> {
    run_bin(&tool(program)?, args).await
}

/// Runs the binary at `program`, which must succeed, and returns its standard output.
async fn run_bin(program: &Path, args: &[&str]) -> Result<String> {
    let out = exec_bin(program, args).await?;
    if !out.ok {
        let name = program
            .file_name()
            .unwrap_or(OsStr::new("?"))
            .to_string_lossy();
        bail!(
            "{name} {} failed:\n{}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
    }
    Ok(out.stdout)
}

/// The documents of a multi-document YAML text, empty ones left out.
fn documents(text: &str) -> Result<Vec<serde_yaml::Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn kind_of(doc: &serde_yaml::Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name_of(doc: &serde_yaml::Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn strings(value: &serde_yaml::Value) -> Vec<&str> {
    value
        .as_sequence()
        .map(|s| s.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default()
}

/// `helm template` of the chart with `args` (values, flags), as documents.
async fn render(release: &str, args: &[&str]) -> Result<Vec<serde_yaml::Value>> {
    let mut all = vec!["template", release, CHART, "--namespace", "maestro-system"];
    all.extend_from_slice(args);
    documents(&run("helm", &all).await?)
}

// ---------------------------------------------------------------------------------------
// Without a cluster: lint, rendering, RBAC shape, kustomize freshness.

#[tokio::test]
async fn chart_lints_and_renders_least_privilege_rbac() -> Result<()> {
    let started = Instant::now();
    run("helm", &["lint", "--strict", CHART]).await?;
    run(
        "helm",
        &[
            "lint",
            "--strict",
            CHART,
            "--set",
            "watchNamespace=team-a,serviceMonitor.enabled=true,replicas=1",
            "--set",
            "workspace.storageClass=fast,image.tag=",
        ],
    )
    .await?;

    // Defaults: the objects a release named maestro creates.
    let docs = render("maestro", &[]).await?;
    let names = |kind: &str| -> Vec<String> {
        let mut v: Vec<String> = docs
            .iter()
            .filter(|d| kind_of(d) == kind)
            .map(|d| name_of(d).to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("CustomResourceDefinition"), CRDS.to_vec());
    assert_eq!(
        names("ClusterRole"),
        [
            "maestro-approver",
            "maestro-operator",
            "maestro-operator-tasks",
            "maestro-runner",
            "maestro-viewer"
        ]
    );
    assert_eq!(
        names("ClusterRoleBinding"),
        ["maestro-operator", "maestro-operator-tasks"]
    );
    assert_eq!(
        names("Role"),
        ["maestro-leader-election", "maestro-library"]
    );
    assert_eq!(names("Service"), ["maestro-metrics", "maestro-webhook"]);
    assert_eq!(
        names("ValidatingAdmissionPolicy"),
        [
            "maestro-approval-identity",
            "maestro-author-rights",
            "maestro-author-secrets",
            "maestro-reserved-labels",
            "maestro-run-identity"
        ]
    );
    assert!(names("ServiceMonitor").is_empty());
    // The chart renders no Task: Helm cannot create Tasks in the install that creates
    // their CRD, so the operator's leader installs the library.
    assert!(names("Task").is_empty(), "the chart rendered Tasks");

    // Every CRD is kept on uninstall.
    for crd in docs
        .iter()
        .filter(|d| kind_of(d) == "CustomResourceDefinition")
    {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"].as_str(),
            Some("keep"),
            "{}",
            name_of(crd)
        );
    }

    // No role grants a wildcard, anything outside the list of the README, or Secrets
    // beyond the operator's `get` (the webhook reads the one Secret a git trigger names).
    for role in docs
        .iter()
        .filter(|d| matches!(kind_of(d), "ClusterRole" | "Role"))
    {
        for rule in role["rules"].as_sequence().context("rules")? {
            for field in ["apiGroups", "resources", "verbs"] {
                assert!(
                    !strings(&rule[field]).contains(&"*"),
                    "{} grants * in {field}",
                    name_of(role)
                );
            }
            if strings(&rule["resources"])
                .iter()
                .any(|r| r.contains("secret"))
            {
                assert_eq!(
                    name_of(role),
                    "maestro-operator",
                    "grants access to Secrets"
                );
                assert_eq!(strings(&rule["resources"]), ["secrets"]);
                assert_eq!(
                    strings(&rule["verbs"]),
                    ["get"],
                    "the operator may only get Secrets"
                );
            }
        }
    }
    let rules = |role: &str| -> Vec<(String, String, String)> {
        let doc = docs
            .iter()
            .find(|d| matches!(kind_of(d), "ClusterRole" | "Role") && name_of(d) == role)
            .unwrap_or_else(|| panic!("no role {role}"));
        let mut out = Vec::new();
        for rule in doc["rules"].as_sequence().into_iter().flatten() {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        out.push((group.to_string(), resource.to_string(), verb.to_string()));
                    }
                }
            }
        }
        out.sort();
        out
    };
    let expect = |list: &[(&str, &str, &str)]| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = list
            .iter()
            .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        rules("maestro-operator"),
        expect(&[
            ("", "persistentvolumeclaims", "create"),
            ("", "persistentvolumeclaims", "get"),
            ("", "persistentvolumeclaims", "list"),
            ("", "persistentvolumeclaims", "patch"),
            ("", "persistentvolumeclaims", "watch"),
            ("", "pods", "create"),
            ("", "pods", "delete"),
            ("", "pods", "get"),
            ("", "pods", "list"),
            ("", "pods", "watch"),
            ("", "secrets", "get"),
            ("events.k8s.io", "events", "create"),
            ("events.k8s.io", "events", "patch"),
            ("maestro.dev", "agents", "get"),
            ("maestro.dev", "agents", "list"),
            ("maestro.dev", "agents", "watch"),
            ("maestro.dev", "agents/status", "patch"),
            ("maestro.dev", "approvals", "get"),
            ("maestro.dev", "approvals", "list"),
            ("maestro.dev", "approvals", "watch"),
            ("maestro.dev", "compositionruns", "create"),
            ("maestro.dev", "compositionruns", "delete"),
            ("maestro.dev", "compositionruns", "get"),
            ("maestro.dev", "compositionruns", "list"),
            ("maestro.dev", "compositionruns", "patch"),
            ("maestro.dev", "compositionruns", "watch"),
            ("maestro.dev", "compositionruns/finalizers", "update"),
            ("maestro.dev", "compositionruns/status", "patch"),
            ("maestro.dev", "compositions", "get"),
            ("maestro.dev", "compositions", "list"),
            ("maestro.dev", "compositions", "watch"),
            ("maestro.dev", "compositions/status", "patch"),
        ])
    );
    assert_eq!(
        rules("maestro-operator-tasks"),
        expect(&[
            ("maestro.dev", "tasks", "get"),
            ("maestro.dev", "tasks", "list"),
            ("maestro.dev", "tasks", "watch"),
        ])
    );
    assert_eq!(
        rules("maestro-leader-election"),
        expect(&[
            ("coordination.k8s.io", "leases", "create"),
            ("coordination.k8s.io", "leases", "get"),
            ("coordination.k8s.io", "leases", "update"),
        ])
    );

    // The operator's pod: restricted security context, probes, the downward API.
    let deployment = docs
        .iter()
        .find(|d| kind_of(d) == "Deployment")
        .context("no Deployment")?;
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(2));
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    let env: BTreeMap<&str, &serde_yaml::Value> = container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?, e)))
        .collect();
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("MAESTRO_LIBRARY_NAMESPACE", "metadata.namespace"),
    ] {
        assert_eq!(
            env.get(name)
                .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str()),
            Some(field),
            "{name}"
        );
    }
    assert!(!env.contains_key("MAESTRO_WATCH_NAMESPACE"));

    // With watchNamespace: the operator's rights on runs and pods bound in that namespace
    // only; the library still goes into the release namespace (the library Role).
    let docs = render("maestro", &["--set", "watchNamespace=team-a"]).await?;
    let library_role = docs
        .iter()
        .find(|d| kind_of(d) == "Role" && name_of(d) == "maestro-library")
        .context("no Role maestro-library")?;
    assert_eq!(
        library_role["metadata"]["namespace"].as_str(),
        Some("maestro-system")
    );
    // Without library.install, neither the Role nor the operator's setting.
    let docs = render("maestro", &["--set", "library.install=false"]).await?;
    assert!(
        !docs
            .iter()
            .any(|d| kind_of(d) == "Role" && name_of(d) == "maestro-library")
    );
    assert!(
        !serde_yaml::to_string(&docs)?.contains("MAESTRO_INSTALL_LIBRARY"),
        "library.install=false still installs the library"
    );
    let docs = render("maestro", &["--set", "watchNamespace=team-a"]).await?;
    let binding = docs
        .iter()
        .find(|d| kind_of(d) == "RoleBinding" && name_of(d) == "maestro-operator")
        .context("no RoleBinding maestro-operator with watchNamespace")?;
    assert_eq!(binding["metadata"]["namespace"].as_str(), Some("team-a"));
    assert!(
        !docs
            .iter()
            .any(|d| kind_of(d) == "ClusterRoleBinding" && name_of(d) == "maestro-operator")
    );

    // Another release's cluster-scoped objects never collide with these.
    let docs = render("other", &[]).await?;
    assert!(
        docs.iter()
            .any(|d| kind_of(d) == "ClusterRole" && name_of(d) == "other-maestro-viewer")
    );
    assert!(
        docs.iter()
            .any(|d| kind_of(d) == "ValidatingAdmissionPolicyBinding"
                && d["spec"]["policyName"].as_str() == Some("other-maestro-approval-identity"))
    );
    eprintln!("[helm] lint and render checks: {:?}", started.elapsed());
    Ok(())
}

/// Every file of `dir`, by name.
fn files(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.insert(name, std::fs::read_to_string(&path)?);
    }
    Ok(out)
}

/// The operator's metrics port serves every run's figures: its NetworkPolicy lets only the
/// release's own namespace, and the peers an administrator names, reach it, while git hosts
/// reach the webhook port from anywhere. (The local cluster's bridge network plugin does not
/// enforce NetworkPolicy, so the render is what can be checked; the install tests have the
/// API server admit it.)
/// The chart's UI (ui.enabled): off by default; when on, a restricted pod with a
/// read-only root filesystem whose ServiceAccount has no token mounted and no rights;
/// the read-only mode adds only a Role that reads, in its one namespace, and mounts the
/// token that Role is bound to.
#[tokio::test]
async fn the_ui_has_no_rights_of_its_own_beyond_the_read_only_viewer() -> Result<()> {
    run(
        "helm",
        &["lint", "--strict", CHART, "--set", "ui.enabled=true"],
    )
    .await?;
    let defaults = render("maestro", &[]).await?;
    assert!(
        !defaults
            .iter()
            .any(|d| name_of(d).starts_with("maestro-ui")),
        "the UI is off by default"
    );

    let docs = render(
        "maestro",
        &["--set", "ui.enabled=true,ui.grafanaUrl=http://grafana"],
    )
    .await?;
    let ui: Vec<&serde_yaml::Value> = docs.iter().filter(|d| name_of(d) == "maestro-ui").collect();
    let mut kinds: Vec<&str> = ui.iter().map(|d| kind_of(d)).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["Deployment", "NetworkPolicy", "Service", "ServiceAccount"]
    );
    let account = ui
        .iter()
        .find(|d| kind_of(d) == "ServiceAccount")
        .context("no UI ServiceAccount")?;
    assert_eq!(
        account["automountServiceAccountToken"].as_bool(),
        Some(false)
    );
    let deployment = ui
        .iter()
        .find(|d| kind_of(d) == "Deployment")
        .context("no UI Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(65532));
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"].as_str(),
        Some("localhost/maestro/ui:dev")
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    let projected = serde_yaml::to_string(&pod["volumes"])?;
    assert!(!projected.contains("serviceAccountToken"), "{projected}");
    let env = serde_yaml::to_string(&container["env"])?;
    assert!(env.contains("http://grafana"), "{env}");
    assert!(!env.contains("READ_ONLY"), "{env}");
    assert!(
        !docs.iter().any(|d| {
            matches!(kind_of(d), "RoleBinding" | "ClusterRoleBinding")
                && serde_yaml::to_string(&d["subjects"])
                    .unwrap_or_default()
                    .contains("maestro-ui")
        }),
        "the UI's ServiceAccount is bound to a role"
    );

    let docs = render(
        "maestro",
        &["--set", "ui.enabled=true,ui.readOnly.namespace=public"],
    )
    .await?;
    let role = docs
        .iter()
        .find(|d| kind_of(d) == "Role" && name_of(d) == "maestro-ui-viewer")
        .context("no viewer Role")?;
    assert_eq!(role["metadata"]["namespace"].as_str(), Some("public"));
    for rule in role["rules"].as_sequence().context("rules")? {
        for verb in strings(&rule["verbs"]) {
            assert!(
                matches!(verb, "get" | "list" | "watch"),
                "the viewer may {verb}"
            );
        }
    }
    let binding = docs
        .iter()
        .find(|d| kind_of(d) == "RoleBinding" && name_of(d) == "maestro-ui-viewer")
        .context("no viewer RoleBinding")?;
    assert_eq!(binding["metadata"]["namespace"].as_str(), Some("public"));
    assert_eq!(binding["subjects"][0]["name"].as_str(), Some("maestro-ui"));
    assert!(
        !docs.iter().any(|d| kind_of(d) == "ClusterRoleBinding"
            && serde_yaml::to_string(&d["subjects"])
                .unwrap_or_default()
                .contains("maestro-ui")),
        "the viewer is bound cluster-wide"
    );
    let deployment = docs
        .iter()
        .find(|d| kind_of(d) == "Deployment" && name_of(d) == "maestro-ui")
        .context("no UI Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    assert!(serde_yaml::to_string(&pod["volumes"])?.contains("serviceAccountToken"));
    let env = serde_yaml::to_string(&pod["containers"][0]["env"])?;
    assert!(env.contains("MAESTRO_UI_READ_ONLY_NAMESPACE"), "{env}");
    Ok(())
}

#[tokio::test]
async fn network_policy_opens_metrics_to_the_release_namespace_only() -> Result<()> {
    let docs = render("maestro", &[]).await?;
    let policies: Vec<&serde_yaml::Value> = docs
        .iter()
        .filter(|d| kind_of(d) == "NetworkPolicy")
        .collect();
    assert_eq!(policies.len(), 1, "one NetworkPolicy by default");
    let policy = &policies[0]["spec"];
    let deployment = docs
        .iter()
        .find(|d| kind_of(d) == "Deployment")
        .context("no Deployment")?;
    assert_eq!(
        policy["podSelector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"],
        "the policy selects the operator's pods"
    );
    assert_eq!(strings(&policy["policyTypes"]), ["Ingress"]);
    // The ports it names are the container's named ports.
    let ports: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let ingress = policy["ingress"]
        .as_sequence()
        .context("no ingress rules")?;
    assert_eq!(ingress.len(), 2, "{ingress:?}");
    let port_of = |rule: &serde_yaml::Value| -> Vec<String> {
        rule["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(port_of(&ingress[0]), ["http-metrics"]);
    assert_eq!(port_of(&ingress[1]), ["http-webhook"]);
    for rule in ingress {
        for port in port_of(rule) {
            assert!(
                ports.contains(&port.as_str()),
                "{port} is not a container port: {ports:?}"
            );
        }
    }
    // Metrics: pods of the policy's own namespace only (a podSelector without a
    // namespaceSelector), so another tenant's pod cannot scrape it.
    let from = ingress[0]["from"]
        .as_sequence()
        .context("metrics rule has no from")?;
    assert_eq!(from.len(), 1, "{from:?}");
    assert!(from[0]["namespaceSelector"].is_null(), "{from:?}");
    assert_eq!(
        from[0]["podSelector"],
        serde_yaml::Value::Mapping(Default::default())
    );
    // Webhook: anyone (no from); every delivery is verified by its signature.
    assert!(ingress[1]["from"].is_null(), "{:?}", ingress[1]);

    // The administrator's Prometheus namespace is added, nothing else opens.
    let docs = render(
        "maestro",
        &[
            "--set",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
        ],
    )
    .await?;
    let policy = docs
        .iter()
        .find(|d| kind_of(d) == "NetworkPolicy")
        .context("no NetworkPolicy with metricsFrom")?;
    let from = &policy["spec"]["ingress"][0]["from"];
    assert_eq!(from.as_sequence().map(Vec::len), Some(2), "{from:?}");
    assert_eq!(
        from[1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str(),
        Some("monitoring")
    );
    // Without the webhook, its port is not opened either.
    let docs = render("maestro", &["--set", "webhook.enabled=false"]).await?;
    let policy = docs
        .iter()
        .find(|d| kind_of(d) == "NetworkPolicy")
        .context("no NetworkPolicy without the webhook")?;
    assert_eq!(
        policy["spec"]["ingress"].as_sequence().map(Vec::len),
        Some(1)
    );
    let docs = render("maestro", &["--set", "networkPolicy.enabled=false"]).await?;
    assert!(!docs.iter().any(|d| kind_of(d) == "NetworkPolicy"));
    Ok(())
}

#[tokio::test]
async fn kustomize_bases_equal_a_fresh_render() -> Result<()> {
    let started = Instant::now();
    let kustomize = repo_root().join(CHART).join("kustomize");
    let fresh = std::env::temp_dir().join(format!("maestro-kustomize-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fresh);
    // The script finds helm on PATH: put this test's helm first.
    let helm_dir = tool("helm")?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut path = vec![helm_dir];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let generated = tokio::process::Command::new("bash")
        .arg(kustomize.join("generate.sh"))
        .arg(&fresh)
        .env("PATH", std::env::join_paths(path)?)
        .output()
        .await?;
    if !generated.status.success() {
        bail!(
            "generate.sh failed: {}",
            String::from_utf8_lossy(&generated.stderr)
        );
    }
    let mut stale = Vec::new();
    for dir in ["crds", "base"] {
        let want = files(&fresh.join(dir))?;
        let have = files(&kustomize.join(dir))?;
        for name in want.keys().chain(have.keys()) {
            if want.get(name) != have.get(name) {
                stale.push(format!("{dir}/{name}"));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&fresh);
    stale.dedup();
    assert!(
        stale.is_empty(),
        "charts/maestro/kustomize is stale in {stale:?}: run `make chart` and commit it"
    );

    // kustomize builds it, and every object is valid for the API server (a server-side
    // dry run: nothing is stored).
    let base = kustomize.join("base");
    let base = base.to_string_lossy();
    let built = documents(&run("kubectl", &["kustomize", &base]).await?)?;
    let kinds = |kind: &str| built.iter().filter(|d| kind_of(d) == kind).count();
    assert_eq!(kinds("CustomResourceDefinition"), CRDS.len());
    assert_eq!(
        kinds("Task"),
        0,
        "the operator installs the library, not the base"
    );
    assert_eq!(kinds("Deployment"), 1);
    assert_eq!(kinds("Namespace"), 1);
    assert!(
        built
            .iter()
            .all(|d| d["metadata"]["labels"]["helm.sh/chart"].is_null()),
        "Helm's bookkeeping labels in the kustomize base"
    );
    let crds = kustomize.join("crds");
    run(
        "kubectl",
        &["apply", "--dry-run=server", "-k", &crds.to_string_lossy()],
    )
    .await?;
    // The whole base needs the namespace there (a dry run creates nothing); the other
    // tests create it on a shared cluster.
    let client = client().await?;
    let ready = Api::<Namespace>::all(client)
        .get_opt("maestro-system")
        .await?
        .is_some();
    if ready {
        let applied = run("kubectl", &["apply", "--dry-run=server", "-k", &base]).await?;
        assert!(applied.contains("deployment.apps/maestro"), "{applied}");
    } else {
        eprintln!("[helm] no maestro-system namespace yet: base dry run skipped");
    }
    eprintln!(
        "[helm] kustomize freshness and dry run: {:?}",
        started.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// On the cluster: install, run, upgrade, RBAC, uninstall.

/// A Helm release of the chart, uninstalled when dropped (also when the test fails), with
/// its runs released first so the test namespace never hangs on their finalizers.
struct Release {
    /// The helm binary that manages this release (Helm 4 or Helm 3).
    helm: PathBuf,
    name: String,
    namespace: String,
    runs_namespace: String,
}

impl Release {
    /// `helm ARGS -n <release namespace>`.
    async fn helm(&self, args: &[&str]) -> Result<String> {
        let mut all = args.to_vec();
        all.extend(["--namespace", self.namespace.as_str()]);
        run_bin(&self.helm, &all).await
    }

    /// The operator pods' last log lines, for failure messages.
    async fn operator_log(&self) -> String {
        let deployment = format!("deployment/{}", self.name);
        match exec(
            "kubectl",
            &[
                "logs",
                &deployment,
                "-n",
                &self.namespace,
                "--tail=60",
                "--all-containers",
            ],
        )
        .await
        {
            Ok(out) => format!("{}{}", out.stdout, out.stderr),
            Err(e) => e.to_string(),
        }
    }

    /// `kubectl auth can-i` as `user`: true for yes, false for no.
    async fn can_i(&self, user: &str, args: &[&str]) -> Result<bool> {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        all.extend(["--as", user]);
        let out = exec("kubectl", &all).await?;
        match out.stdout.trim() {
            "yes" => Ok(true),
            "no" => Ok(false),
            other => bail!("kubectl {}: {other} {}", all.join(" "), out.stderr),
        }
    }
}

/// Removes what Helm wrote on the CRDs it adopted (they outlive the release, kept by
/// helm.sh/resource-policy), when they still name `release`: the shared cluster's CRDs
/// end as the other tests install them.
async fn release_crds(client: &Client, release: &str) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        let Ok(crd) = api.get(name).await else {
            continue;
        };
        if crd
            .annotations()
            .get("meta.helm.sh/release-name")
            .map(String::as_str)
            != Some(release)
        {
            continue;
        }
        // A merge patch removes a key set to null.
        let mut annotations = serde_json::Map::new();
        for key in crd.annotations().keys() {
            if key.starts_with("meta.helm.sh/") {
                annotations.insert(key.clone(), serde_json::Value::Null);
            }
        }
        let mut labels = serde_json::Map::new();
        for key in crd.labels().keys() {
            if key.starts_with("app.kubernetes.io/") || key.starts_with("helm.sh/") {
                labels.insert(key.clone(), serde_json::Value::Null);
            }
        }
        let patch = serde_json::json!({"metadata": {"annotations": annotations, "labels": labels}});
        let _ = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let (helm, name, namespace, runs_namespace) = (
            self.helm.clone(),
            self.name.clone(),
            self.namespace.clone(),
            self.runs_namespace.clone(),
        );
        maestro_e2e::cleanup_in_drop(move |client| async move {
            // Runs hold a finalizer only the operator removes: delete them while it still
            // runs, then strip what is left.
            maestro_e2e::maestro::delete_runs(&client, &runs_namespace).await;
            let _ = exec_bin(
                &helm,
                &[
                    "uninstall",
                    &name,
                    "--namespace",
                    &namespace,
                    "--ignore-not-found",
                ],
            )
            .await;
            release_crds(&client, &name).await;
        });
    }
}

/// Waits until the Deployment has rolled out: every replica updated and available, no
/// old pod left. Returns the names of its pods.
async fn rolled_out(client: &Client, release: &Release) -> Result<Vec<String>> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release.namespace);
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component=operator",
        release.name
    );
    let result = wait_for(
        "the operator Deployment to roll out",
        Duration::from_secs(150),
        || async {
            let d = deployments
                .get(&release.name)
                .await
                .map_err(|e| e.to_string())?;
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let status = d.status.clone().unwrap_or_default();
            let current = status.observed_generation >= d.metadata.generation
                && status.updated_replicas == Some(want)
                && status.available_replicas == Some(want)
                && status.replicas == Some(want);
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?;
            let states: Vec<String> = list
                .items
                .iter()
                .map(|p| {
                    let s = p.status.clone().unwrap_or_default();
                    let waiting = s
                        .container_statuses
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                        .collect::<Vec<_>>()
                        .join(",");
                    format!("{} {} {waiting}", p.name_any(), s.phase.unwrap_or_default())
                })
                .collect();
            let all_running = list.items.iter().all(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            });
            if current && all_running && list.items.len() == usize::try_from(want).unwrap_or(0) {
                Ok(list.items.iter().map(|p| p.name_any()).collect())
            } else {
                Err(format!("status {status:?}; pods {states:?}"))
            }
        },
    )
    .await;
    match result {
        Ok(pods) => Ok(pods),
        Err(e) => bail!("{e}\noperator log:\n{}", release.operator_log().await),
    }
}

/// The chart's two replicas: while examples/leader-takeover runs, the leader's pod is
/// deleted without grace (as when its node fails). The other replica holds the Lease
/// within 15 s and finishes the run, with exactly one pod per step.
async fn leader_pod_killed_mid_run(
    client: &Client,
    release: &Release,
    replicas: &[String],
    major: &str,
) -> Result<()> {
    const TAKEOVER_LIMIT: Duration = Duration::from_secs(20); // the 15 s lease, a 2 s retry, margin
    let runs = release.runs_namespace.as_str();
    apply_file(
        client,
        runs,
        &repo_root().join("examples/leader-takeover/four-sleeps.yaml"),
    )
    .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release.namespace);
    let leader = wait_for("a replica to lead", Duration::from_secs(30), || async {
        match lease_holder(&leases, "maestro-operator").await? {
            Some(h) if replicas.contains(&h) => Ok(h),
            other => Err(format!("holder {other:?}, replicas {replicas:?}")),
        }
    })
    .await?;
    let run = start_run(client, runs, "four-sleeps", &[]).await?;
    let runs_api: Api<CompositionRun> = Api::namespaced(client.clone(), runs);
    wait_for(
        "step two of the run to be running",
        Duration::from_secs(90),
        || async {
            let r = runs_api.get(&run).await.map_err(|e| e.to_string())?;
            let steps = r.status.map(|s| s.steps).unwrap_or_default();
            let two = steps.iter().find(|s| s.name == "two").map(|s| s.phase);
            if two == Some(StepPhase::Running) {
                Ok(())
            } else {
                Err(format!("step two {two:?}"))
            }
        },
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release.namespace);
    pods.delete(
        &leader,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await?;
    let killed = Instant::now();
    // The standby replica, or the pod the ReplicaSet starts in the killed one's place,
    // whichever is first to find the Lease free.
    let survivor = wait_for(
        "another replica to take the Lease",
        TAKEOVER_LIMIT + Duration::from_secs(10),
        || async {
            match lease_holder(&leases, "maestro-operator").await? {
                Some(h) if h != leader => Ok(h),
                other => Err(format!(
                    "holder {other:?} (killed {leader}, replicas {replicas:?})"
                )),
            }
        },
    )
    .await?;
    assert!(
        pods.get_opt(&survivor).await?.is_some(),
        "the Lease holder {survivor} is no pod of the release"
    );
    let took = killed.elapsed();
    eprintln!("[{major}] leader {leader} deleted; {survivor} took the Lease after {took:?}");
    assert!(
        took <= TAKEOVER_LIMIT,
        "takeover took {took:?}, more than {TAKEOVER_LIMIT:?}"
    );
    let finished = match wait_finished(client, runs, &run, RUN_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => bail!("{e}\noperator log:\n{}", release.operator_log().await),
    };
    let status = finished.status.unwrap_or_default();
    assert_eq!(status.phase, RunPhase::Succeeded, "{status:#?}");
    let mut per_step: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (step, attempt, _) in maestro_e2e::maestro::step_pods(client, runs, &run).await? {
        per_step.entry(step).or_default().push(attempt);
    }
    let expected: BTreeMap<String, Vec<u32>> = ["one", "two", "three", "four"]
        .iter()
        .map(|s| (s.to_string(), vec![1]))
        .collect();
    assert_eq!(per_step, expected, "one pod per step across the takeover");
    Ok(())
}

/// Runs examples/hello in the runs namespace through the in-cluster operator.
async fn run_hello(client: &Client, release: &Release) -> Result<()> {
    let name = start_run(client, &release.runs_namespace, "hello", &[("who", "helm")]).await?;
    let run = match wait_finished(client, &release.runs_namespace, &name, RUN_TIMEOUT).await {
        Ok(run) => run,
        Err(e) => bail!("{e}\noperator log:\n{}", release.operator_log().await),
    };
    let status = run.status.unwrap_or_default();
    assert_eq!(
        status.phase,
        RunPhase::Succeeded,
        "run {name}: {status:#?}\noperator log:\n{}",
        release.operator_log().await
    );
    let loud = status
        .steps
        .iter()
        .find(|s| s.name == "shout")
        .and_then(|s| s.outputs.get("loud").cloned());
    assert_eq!(loud.as_deref(), Some("HELLO HELM"));
    Ok(())
}

#[tokio::test]
async fn helm4_installs_runs_upgrades_and_uninstalls_maestro() -> Result<()> {
    installs_runs_upgrades_and_uninstalls(&tool("helm")?, "helm4").await
}

/// Helm 3 (3.17+ for `--take-ownership`), `helm3` from e2e/cluster/build.sh. Skipped
/// when it is missing, unless under CI.
#[tokio::test]
async fn helm3_installs_runs_upgrades_and_uninstalls_maestro() -> Result<()> {
    let helm3 = match tool("helm3") {
        Ok(path) => path,
        Err(e) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
            return Err(e.context("helm3 is required under CI: e2e/cluster/build.sh builds it"));
        }
        Err(e) => {
            eprintln!(
                "[helm3] SKIPPED: no helm3 ({e}); e2e/cluster/build.sh builds it (under CI this fails)"
            );
            return Ok(());
        }
    };
    installs_runs_upgrades_and_uninstalls(&helm3, "helm3").await
}

/// The whole life of a release with the helm binary `helm`; `major` ("helm4", "helm3")
/// names its namespaces and release, so the majors run side by side on one cluster, and
/// prefixes its log lines.
async fn installs_runs_upgrades_and_uninstalls(helm: &Path, major: &str) -> Result<()> {
    let total = Instant::now();
    let version = run_bin(helm, &["version", "--short"]).await?;
    eprintln!("[{major}] {} is {}", helm.display(), version.trim());
    let want = if major == "helm3" { "v3." } else { "v4." };
    assert!(
        version.starts_with(want),
        "{major}: {} is {version}",
        helm.display()
    );

    // Lint with this Helm too (strict: warnings fail).
    run_bin(helm, &["lint", "--strict", CHART]).await?;
    run_bin(
        helm,
        &[
            "lint",
            "--strict",
            CHART,
            "--set",
            "watchNamespace=team-a,serviceMonitor.enabled=true,replicas=1",
        ],
    )
    .await?;

    let client = client().await?;
    // The release namespace and the namespace the operator watches, both enforcing the
    // restricted Pod Security Standard (the operator's pod and the step pods meet it).
    let ns = TestNamespace::create(&client, major).await?;
    let runs_ns = TestNamespace::create(&client, &format!("{major}-runs")).await?;
    let suffix = ns.name.rsplit('-').next().unwrap_or("0").to_string();
    // Declared after the namespaces, so dropped (uninstalled) before they are deleted.
    let release = Release {
        helm: helm.to_path_buf(),
        name: format!("maestro-{major}-{suffix}"),
        namespace: ns.name.clone(),
        runs_namespace: runs_ns.name.clone(),
    };
    let sa = format!(
        "system:serviceaccount:{}:{}",
        release.namespace, release.name
    );

    let wait = Instant::now();
    let crd_owner = CRD_OWNER.lock().await;
    eprintln!("[{major}] waited {:?} for the CRDs", wait.elapsed());

    // Install with the default two replicas (one leads, one stands by). watchNamespace:
    // only one operator may watch a namespace, and other tests run their own operators in
    // their own namespaces on this cluster at the same time, so this one watches only its
    // test namespace. --take-ownership: the CRDs may already exist on a shared cluster
    // (other tests apply them); the chart adopts them. One `helm install` is enough also
    // when the CRDs do not exist yet: the operator, not Helm, installs the Task library.
    let step = Instant::now();
    let watch = format!("watchNamespace={}", release.runs_namespace);
    let installed = release
        .helm(&[
            "install",
            &release.name,
            CHART,
            "--take-ownership",
            "--set",
            &watch,
            "--set",
            "logLevel=info",
        ])
        .await?;
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    let first_pods = rolled_out(&client, &release).await?;
    eprintln!(
        "[{major}] install until the operator is available: {:?}",
        step.elapsed()
    );

    // What the install put in place: the library in the release namespace (applied by the
    // leader, owned by the operator's Deployment), CRDs adopted.
    let tasks: Api<Task> = Api::namespaced(client.clone(), &release.namespace);
    let library = wait_for(
        "the operator's leader to install the Task library",
        Duration::from_secs(60),
        || async {
            let list = tasks
                .list(&ListParams::default().labels("maestro.dev/library=standard"))
                .await
                .map_err(|e| e.to_string())?;
            let mut names: Vec<String> = list.items.iter().map(ResourceExt::name_any).collect();
            names.sort();
            if names == LIBRARY {
                Ok(list.items)
            } else {
                Err(format!("library Tasks {names:?}"))
            }
        },
    )
    .await?;
    for task in &library {
        let owners = task.owner_references();
        assert!(
            owners
                .iter()
                .any(|o| o.kind == "Deployment" && o.name == release.name),
            "{} is not owned by the operator's Deployment: {owners:?}",
            task.name_any()
        );
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        let crd = crds.get(name).await?;
        assert_eq!(
            crd.annotations()
                .get("helm.sh/resource-policy")
                .map(String::as_str),
            Some("keep"),
            "{name}"
        );
    }

    // A run through the in-cluster operator; its Tasks come from the chart's library.
    let step = Instant::now();
    apply_file(
        &client,
        &release.runs_namespace,
        &repo_root().join("examples/hello/composition.yaml"),
    )
    .await?;
    run_hello(&client, &release).await?;
    // Events name the operator pod that recorded them (POD_NAME, the downward API).
    let events: Api<Event> = Api::namespaced(client.clone(), &release.runs_namespace);
    let reporters: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|e| e.reporting_instance.clone())
        .collect();
    assert!(
        reporters.iter().any(|r| first_pods.contains(r)),
        "no event reported by {first_pods:?}: {reporters:?}"
    );
    eprintln!("[{major}] hello run: {:?}", step.elapsed());

    // The webhook Service reaches the operator's webhook endpoint: an unsigned push is
    // answered 401, and nothing starts.
    let step = Instant::now();
    let services: Api<Service> = Api::namespaced(client.clone(), &release.namespace);
    let webhook = services.get(&format!("{}-webhook", release.name)).await?;
    let cluster_ip = webhook
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .context("the webhook Service has no cluster IP")?;
    let url = format!("http://{cluster_ip}/hooks/github");
    let answer = wait_for(
        "the webhook Service to answer",
        Duration::from_secs(30),
        || async {
            let out = exec_bin(
                Path::new("curl"),
                &[
                    "-sS", "-m", "5", "-w", "\n%{http_code}", "-X", "POST", "-H",
                    "Content-Type: application/json", "-H", "X-GitHub-Event: push", "-H",
                    "X-GitHub-Delivery: helm-e2e-1", "--data-binary",
                    r#"{"ref":"refs/heads/main","after":"0000000000000000000000000000000000000001","repository":{"clone_url":"https://git.example.invalid/nobody/none.git","html_url":"https://git.example.invalid/nobody/none"}}"#,
                    &url,
                ],
            )
            .await
            .map_err(|e| e.to_string())?;
            if out.ok {
                Ok(out.stdout)
            } else {
                Err(out.stderr)
            }
        },
    )
    .await?;
    assert!(
        answer.trim_end().ends_with("401") && answer.contains("missing signature"),
        "webhook answer through the Service: {answer}"
    );
    eprintln!(
        "[{major}] webhook through its Service: {:?}",
        step.elapsed()
    );

    // Upgrade with a changed value: the pod rolls and the new one has the new setting.
    // The CRDs are release objects, applied again by every upgrade: a label removed from
    // one behind Helm's back comes back (the CRDs' content itself is shared by the other
    // tests on this cluster, so it is left alone).
    let step = Instant::now();
    let part_of = "app.kubernetes.io/part-of";
    crds.patch(
        "tasks.maestro.dev",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {part_of: null}}})),
    )
    .await?;
    let upgraded = release
        .helm(&[
            "upgrade",
            &release.name,
            CHART,
            "--reuse-values",
            "--set",
            "logLevel=debug",
        ])
        .await?;
    assert!(upgraded.contains("REVISION: 2"), "{upgraded}");
    let tasks_crd = crds.get("tasks.maestro.dev").await?;
    assert_eq!(
        tasks_crd.labels().get(part_of).map(String::as_str),
        Some("maestro"),
        "helm upgrade did not apply the CRDs"
    );
    // The other major may adopt the CRDs now: this release writes them no more.
    drop(crd_owner);
    let second_pods = rolled_out(&client, &release).await?;
    assert!(
        second_pods.iter().all(|p| !first_pods.contains(p)),
        "the operator pod did not roll: {first_pods:?} -> {second_pods:?}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &release.namespace);
    let pod = pods.get(&second_pods[0]).await?;
    let level = pod
        .spec
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.env)
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "MAESTRO_LOG_LEVEL")
        .and_then(|e| e.value);
    assert_eq!(level.as_deref(), Some("debug"));
    eprintln!(
        "[{major}] upgrade until the new pod is available: {:?}",
        step.elapsed()
    );
    let step = Instant::now();
    run_hello(&client, &release).await?;
    eprintln!(
        "[{major}] hello run after the upgrade: {:?}",
        step.elapsed()
    );
    let step = Instant::now();
    leader_pod_killed_mid_run(&client, &release, &second_pods, major).await?;
    eprintln!(
        "[{major}] leader pod killed mid-run, run finished: {:?}",
        step.elapsed()
    );

    // The operator's ServiceAccount: what it needs, and nothing else.
    let step = Instant::now();
    let (runs, own) = (release.runs_namespace.as_str(), release.namespace.as_str());
    let library_owner = format!("deployments.apps/{}", release.name);
    let allowed: &[&[&str]] = &[
        &["create", "pods", "-n", runs],
        // The webhook secret a Composition's git trigger names, by name only.
        &["get", "secrets", "-n", runs],
        &["delete", "pods", "-n", runs],
        &[
            "patch",
            "compositionruns.maestro.dev",
            "--subresource=status",
            "-n",
            runs,
        ],
        &[
            "patch",
            "compositions.maestro.dev",
            "--subresource=status",
            "-n",
            runs,
        ],
        &["create", "compositionruns.maestro.dev", "-n", runs],
        &["create", "events.events.k8s.io", "-n", runs],
        &["create", "persistentvolumeclaims", "-n", runs],
        // A claim found there already, read to check its owner before it is mounted.
        &["get", "persistentvolumeclaims", "-n", runs],
        &["watch", "agents.maestro.dev", "-n", runs],
        &[
            "patch",
            "agents.maestro.dev",
            "--subresource=status",
            "-n",
            runs,
        ],
        &["list", "tasks.maestro.dev", "--all-namespaces"],
        &["update", "leases.coordination.k8s.io", "-n", own],
        &["create", "leases.coordination.k8s.io", "-n", own],
        // The library, in its own namespace only.
        &["create", "tasks.maestro.dev", "-n", own],
        &["patch", "tasks.maestro.dev", "-n", own],
        &["get", &library_owner, "-n", own],
    ];
    let denied: &[&[&str]] = &[
        &["list", "secrets", "-n", runs],
        &["watch", "secrets", "-n", runs],
        &["create", "secrets", "-n", runs],
        &["get", "secrets", "-n", own],
        &["list", "secrets", "--all-namespaces"],
        &["delete", "namespaces"],
        &["create", "clusterrolebindings"],
        &["create", "rolebindings", "-n", runs],
        &["update", "compositions.maestro.dev", "-n", runs],
        &["create", "tasks.maestro.dev", "-n", runs],
        &["get", "deployments.apps", "-n", own],
        &["update", "deployments.apps", "-n", own],
        &["create", "approvals.maestro.dev", "-n", runs],
        &["update", "agents.maestro.dev", "-n", runs],
        // Watching one namespace, it is granted pods there only.
        &["create", "pods", "-n", "default"],
        &["delete", "leases.coordination.k8s.io", "-n", own],
        &["*", "*"],
    ];
    for args in allowed {
        assert!(
            release.can_i(&sa, args).await?,
            "the operator cannot {args:?}"
        );
    }
    for args in denied {
        assert!(
            !release.can_i(&sa, args).await?,
            "the operator can {args:?}"
        );
    }

    // The user roles, bound in the runs namespace: alice views, bob runs, carol approves.
    for (user, role) in [
        ("alice", "viewer"),
        ("bob", "runner"),
        ("carol", "approver"),
    ] {
        let clusterrole = format!("--clusterrole={}-{role}", release.name);
        let who = format!("--user={user}");
        run(
            "kubectl",
            &[
                "create",
                "rolebinding",
                user,
                &clusterrole,
                &who,
                "-n",
                runs,
            ],
        )
        .await?;
    }
    let expectations: [(&str, bool, &[&str]); 17] = [
        ("alice", true, &["list", "compositionruns.maestro.dev"]),
        ("alice", true, &["watch", "compositions.maestro.dev"]),
        ("alice", true, &["get", "tasks.maestro.dev"]),
        ("alice", true, &["get", "pods", "--subresource=log"]),
        ("alice", false, &["create", "compositionruns.maestro.dev"]),
        ("alice", false, &["create", "approvals.maestro.dev"]),
        ("alice", false, &["get", "secrets"]),
        ("alice", false, &["delete", "pods"]),
        ("bob", true, &["create", "compositionruns.maestro.dev"]),
        ("bob", true, &["patch", "compositionruns.maestro.dev"]),
        ("bob", true, &["delete", "compositionruns.maestro.dev"]),
        ("bob", false, &["create", "approvals.maestro.dev"]),
        (
            "bob",
            false,
            &[
                "patch",
                "compositionruns.maestro.dev",
                "--subresource=status",
            ],
        ),
        ("carol", true, &["create", "approvals.maestro.dev"]),
        ("carol", true, &["get", "compositionruns.maestro.dev"]),
        ("carol", false, &["create", "compositionruns.maestro.dev"]),
        ("carol", false, &["delete", "approvals.maestro.dev"]),
    ];
    for (user, want, args) in expectations {
        let mut all = args.to_vec();
        all.extend(["-n", runs]);
        // A new RoleBinding reaches the authorizer's cache within moments.
        wait_for(
            &format!("{user} can-i {all:?} to be {want}"),
            Duration::from_secs(10),
            || async {
                let got = release.can_i(user, &all).await.map_err(|e| e.to_string())?;
                if got == want {
                    Ok(())
                } else {
                    Err(format!("got {got}"))
                }
            },
        )
        .await?;
    }
    // RoleBindings grant nothing outside their namespace.
    assert!(
        !release
            .can_i("alice", &["list", "compositionruns.maestro.dev", "-n", own])
            .await?
    );
    eprintln!("[{major}] can-i checks: {:?}", step.elapsed());

    // Uninstall: runs are deleted first (while the operator can release their
    // finalizers); the operator goes, the CRDs stay.
    let step = Instant::now();
    let runs_api: Api<CompositionRun> = Api::namespaced(client.clone(), runs);
    runs_api
        .delete_collection(&DeleteParams::background(), &ListParams::default())
        .await?;
    wait_all_gone(
        "the runs to be deleted by the operator",
        Duration::from_secs(60),
        &runs_api,
    )
    .await?;
    let uninstalled = release
        .helm(&["uninstall", &release.name, "--wait"])
        .await?;
    assert!(uninstalled.contains("uninstalled"), "{uninstalled}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), own);
    assert!(deployments.get_opt(&release.name).await?.is_none());
    let roles: Api<ClusterRole> = Api::all(client.clone());
    for suffix in ["operator", "operator-tasks", "viewer", "runner", "approver"] {
        let role = format!("{}-{suffix}", release.name);
        assert!(roles.get_opt(&role).await?.is_none(), "{role} left behind");
    }
    // The garbage collector removes the library with the Deployment that owned it.
    wait_all_gone(
        "the library Tasks to go with the operator's Deployment",
        Duration::from_secs(60),
        &tasks,
    )
    .await?;
    for name in CRDS {
        let crd = crds.get_opt(name).await?;
        assert!(
            crd.is_some_and(|c| c.metadata.deletion_timestamp.is_none()),
            "CRD {name} was deleted by helm uninstall"
        );
    }
    eprintln!("[{major}] uninstall: {:?}", step.elapsed());
    release_crds(&client, &release.name).await;
    eprintln!(
        "[{major}] whole install/run/upgrade/rbac/uninstall test: {:?}",
        total.elapsed()
    );
    Ok(())
}
