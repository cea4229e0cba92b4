//! Step pods: how one attempt of a step becomes a Pod. Pure, so the shape every step pod
//! has (restricted Pod Security Standard, labels, the agent copied in by an init
//! container) is unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, HostPathVolumeSource,
        PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod,
        PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, SecretEnvSource,
        SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::OwnerReference},
};
use kube::api::ObjectMeta;

use maestro_api::labels;
use maestro_api::{AgentTemplate, CacheClaim};
use maestro_engine::{StepPod, TaskRuns};
use maestro_protocol::env;

/// The Agent slot a run's pods go to: the pool's pod settings and the slot's cache volume,
/// mounted as the run's /workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub agent: String,
    pub slot: u32,
    pub template: AgentTemplate,
    pub cache: SlotCache,
}

/// Where a slot's cache lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotCache {
    /// A PersistentVolumeClaim of this name.
    Claim(String),
    /// A directory on the node.
    HostPath(String),
}

/// The name of an Agent slot's cache claim: `<agent>-cache-<slot>`, shortened with a hash
/// when too long, so two long names never share a claim.
pub fn slot_claim_name(agent: &str, slot: u32) -> String {
    labels::bounded_name_with_suffix(agent, &format!("-cache-{slot}"))
}

/// The directory of an Agent slot's hostPath cache: `<path>/<slot>`.
pub fn slot_host_path(path: &str, slot: u32) -> String {
    format!("{}/{slot}", path.trim_end_matches('/'))
}

/// The PersistentVolumeClaim holding an Agent slot's cache, owned by the Agent (the cache
/// outlives runs, not its pool).
pub fn slot_claim(
    agent: &str,
    slot: u32,
    namespace: &str,
    owner: OwnerReference,
    claim: &CacheClaim,
) -> PersistentVolumeClaim {
    owned_claim(
        ObjectMeta {
            name: Some(slot_claim_name(agent, slot)),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
                (labels::AGENT.to_string(), agent.to_string()),
                (labels::SLOT.to_string(), slot.to_string()),
            ])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        claim.storage_class_name.clone(),
        &claim.size,
    )
}

/// A ReadWriteOnce claim of `size` from `storage_class` (`None`: the default class).
fn owned_claim(
    metadata: ObjectMeta,
    storage_class: Option<String>,
    size: &str,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage_class,
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.to_string()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// Where step pods take the agent from, and their defaults.
#[derive(Debug, Clone)]
pub struct PodSettings {
    /// The agent image: built-in tasks run in it, and its init container installs
    /// `maestro-agent` into every step pod.
    pub agent_image: String,
    /// Pull policy of the agent image.
    pub agent_pull_policy: String,
    /// The run's workspace: a PersistentVolumeClaim per run that all its steps mount
    /// (so a checkout or a download is there for later steps), or `None` for a
    /// per-pod emptyDir on clusters without a volume provisioner.
    pub workspace: Option<WorkspaceClaim>,
}

/// How each run's workspace claim is made.
#[derive(Debug, Clone)]
pub struct WorkspaceClaim {
    /// The StorageClass (`None`: the cluster's default class).
    pub storage_class: Option<String>,
    /// The claim's size, like `1Gi`.
    pub size: String,
}

/// The name of a run's workspace claim: `<run>-workspace`, shortened with a hash when too
/// long, so two runs whose names share a long prefix never share a workspace.
pub fn workspace_claim_name(run: &str) -> String {
    labels::bounded_name_with_suffix(run, "-workspace")
}

/// The PersistentVolumeClaim holding a run's workspace, owned by the run.
pub fn workspace_claim(
    run_name: &str,
    namespace: &str,
    owner: OwnerReference,
    claim: &WorkspaceClaim,
) -> PersistentVolumeClaim {
    owned_claim(
        ObjectMeta {
            name: Some(workspace_claim_name(run_name)),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
                (labels::RUN.to_string(), run_name.to_string()),
            ])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        claim.storage_class.clone(),
        &claim.size,
    )
}

/// The user and group step pods run as (the agent image's `maestro` user).
pub const STEP_UID: i64 = 65532;
const BIN_DIR: &str = "/maestro/bin";
// Where the step's volumes are mounted: the paths the agent falls back to by default.
const OUTPUTS_DIR: &str = env::DEFAULT_OUTPUTS_DIR;
const WORKSPACE_DIR: &str = env::DEFAULT_WORKSPACE_DIR;

/// Builds the pod for one attempt of a step of `run`.
pub fn step_pod(
    pod: &StepPod,
    run_name: &str,
    namespace: &str,
    composition: &str,
    owner: OwnerReference,
    settings: &PodSettings,
    placement: Option<&Placement>,
) -> Pod {
    let template = placement.map(|p| &p.template);
    let agent_image = template
        .and_then(|t| t.image.clone())
        .unwrap_or_else(|| settings.agent_image.clone());
    let (image, pull_policy, command) = match &pod.runs {
        TaskRuns::Builtin(b) => (
            agent_image.clone(),
            settings.agent_pull_policy.clone(),
            vec![
                format!("{BIN_DIR}/maestro-agent"),
                "builtin".into(),
                b.as_str().into(),
            ],
        ),
        TaskRuns::Container {
            image,
            command,
            pull_policy,
        } => {
            let mut cmd = vec![
                format!("{BIN_DIR}/maestro-agent"),
                "exec".into(),
                "--".into(),
            ];
            cmd.extend(command.iter().cloned());
            (
                image.clone(),
                pull_policy.clone().unwrap_or_else(|| "IfNotPresent".into()),
                cmd,
            )
        }
    };
    let mut pod_labels = BTreeMap::from([
        (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
        (labels::RUN.to_string(), run_name.to_string()),
        (labels::STEP.to_string(), pod.step.clone()),
        (labels::ATTEMPT.to_string(), pod.attempt.to_string()),
    ]);
    if composition.len() <= 63 {
        pod_labels.insert(labels::COMPOSITION.to_string(), composition.to_string());
    }
    if let Some(placement) = placement {
        pod_labels.insert(labels::AGENT.to_string(), placement.agent.clone());
        pod_labels.insert(labels::SLOT.to_string(), placement.slot.to_string());
    }
    let mounts = |read_only_bin: bool| {
        vec![
            VolumeMount {
                name: "maestro-bin".into(),
                mount_path: BIN_DIR.into(),
                read_only: Some(read_only_bin),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "maestro-outputs".into(),
                mount_path: OUTPUTS_DIR.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "workspace".into(),
                mount_path: WORKSPACE_DIR.into(),
                ..VolumeMount::default()
            },
        ]
    };
    let install = Container {
        name: "maestro-install".into(),
        image: Some(agent_image.clone()),
        image_pull_policy: Some(settings.agent_pull_policy.clone()),
        command: Some(vec![
            "maestro-agent".into(),
            "install".into(),
            BIN_DIR.into(),
        ]),
        volume_mounts: Some(mounts(false)[..1].to_vec()),
        security_context: Some(restricted()),
        resources: Some(small_resources()),
        ..Container::default()
    };
    let step = Container {
        name: labels::STEP_CONTAINER.into(),
        image: Some(image),
        image_pull_policy: Some(pull_policy),
        command: Some(command),
        env: Some(step_env(pod, run_name, template)),
        resources: template.and_then(|t| t.resources.clone()),
        // Secrets by reference: the kubelet resolves them, so their values never pass
        // through the operator, the run's status or its logs.
        env_from: (!pod.secret_env.is_empty()).then(|| {
            pod.secret_env
                .iter()
                .map(|name| EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: name.clone(),
                        optional: Some(false),
                    }),
                    ..EnvFromSource::default()
                })
                .collect()
        }),
        working_dir: Some(WORKSPACE_DIR.into()),
        volume_mounts: Some(mounts(true)),
        security_context: Some(restricted()),
        termination_message_policy: Some("File".into()),
        ..Container::default()
    };
    let empty = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    let mut init_containers = vec![install];
    let workspace = match (placement.map(|p| &p.cache), &settings.workspace) {
        (Some(SlotCache::Claim(claim)), _) => Volume {
            name: "workspace".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: None,
            }),
            ..Volume::default()
        },
        (Some(SlotCache::HostPath(path)), _) => {
            // The one container that runs as root gets the operator's own agent image,
            // never the image an Agent's author chose.
            init_containers.push(host_cache_owner(
                &settings.agent_image,
                &settings.agent_pull_policy,
            ));
            Volume {
                name: "workspace".into(),
                host_path: Some(HostPathVolumeSource {
                    path: path.clone(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..Volume::default()
            }
        }
        (None, Some(_)) => Volume {
            name: "workspace".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                // A rerun works in the workspace of the run it reruns.
                claim_name: workspace_claim_name(pod.workspace_of.as_deref().unwrap_or(run_name)),
                read_only: None,
            }),
            ..Volume::default()
        },
        (None, None) => empty("workspace"),
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(pod_labels),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            // The composition's own ServiceAccount wins over the pool's.
            service_account_name: pod
                .service_account
                .clone()
                .or_else(|| template.and_then(|t| t.service_account_name.clone())),
            // The pool's, then the composition's (which wins on a shared label).
            node_selector: Some(
                template
                    .map(|t| t.node_selector.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .chain(pod.node_selector.clone())
                    .collect::<BTreeMap<_, _>>(),
            )
            .filter(|s| !s.is_empty()),
            tolerations: Some(
                template
                    .map(|t| t.tolerations.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .chain(pod.tolerations.clone())
                    .collect::<Vec<_>>(),
            )
            .filter(|t| !t.is_empty()),
            // Steps talk to the outside world, not to the Kubernetes API.
            automount_service_account_token: Some(false),
            active_deadline_seconds: pod
                .timeout
                .map(|t| i64::try_from(t.as_secs().max(1)).unwrap_or(i64::MAX)),
            termination_grace_period_seconds: Some(10),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(STEP_UID),
                run_as_group: Some(STEP_UID),
                fs_group: Some(STEP_UID),
                seccomp_profile: Some(runtime_default()),
                ..PodSecurityContext::default()
            }),
            init_containers: Some(init_containers),
            containers: vec![step],
            volumes: Some(vec![
                empty("maestro-bin"),
                empty("maestro-outputs"),
                workspace,
            ]),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The kubelet creates a missing hostPath directory owned by root; steps run as
/// [`STEP_UID`] and fsGroup does not apply to hostPath volumes. This init container (root,
/// with only CAP_CHOWN) hands the slot's directory to the step user. hostPath caches are
/// for privileged development namespaces only, so a root container is acceptable there.
fn host_cache_owner(image: &str, pull_policy: &str) -> Container {
    Container {
        name: "maestro-cache-owner".into(),
        image: Some(image.into()),
        image_pull_policy: Some(pull_policy.into()),
        command: Some(vec![
            "chown".into(),
            format!("{STEP_UID}:{STEP_UID}"),
            WORKSPACE_DIR.into(),
        ]),
        volume_mounts: Some(vec![VolumeMount {
            name: "workspace".into(),
            mount_path: WORKSPACE_DIR.into(),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["CHOWN".into()]),
            }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        resources: Some(small_resources()),
        ..Container::default()
    }
}

fn step_env(pod: &StepPod, run_name: &str, template: Option<&AgentTemplate>) -> Vec<EnvVar> {
    let var = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    let mut vars = vec![
        var(env::RUN, run_name.into()),
        // Always set, even empty: an Agent's env must not name a run to take over.
        var(env::LEDGER_RUNS, pod.ledger_runs.join(",")),
        var(env::STEP, pod.step.clone()),
        var(env::ATTEMPT, pod.attempt.to_string()),
        var(env::TASK, pod.task.clone()),
        var(env::OUTPUTS_DIR, OUTPUTS_DIR.into()),
        var(env::WORKSPACE_DIR, WORKSPACE_DIR.into()),
        var(env::RESULT_PATH, env::DEFAULT_RESULT_PATH.into()),
        var(
            env::INPUTS,
            serde_json::Value::Object(pod.inputs.clone()).to_string(),
        ),
        var(
            env::CONTEXT,
            serde_json::to_string(&pod.context).unwrap_or_else(|_| "{}".into()),
        ),
        // The workspace's root belongs to its volume, not to the step's user, so git in
        // any step would refuse a clone there as "dubious ownership". Configuration from
        // these variables is command-line configuration, which git honours for this.
        var("GIT_CONFIG_COUNT", "1".into()),
        var("GIT_CONFIG_KEY_0", "safe.directory".into()),
        var("GIT_CONFIG_VALUE_0", WORKSPACE_DIR.into()),
    ];
    for (name, value) in &pod.inputs {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        vars.push(var(&env::input_var(name), text));
    }
    // Maestro's own variables, set above, win over the pool's of the same name.
    for (name, value) in template.iter().flat_map(|t| &t.env) {
        if !vars.iter().any(|e| &e.name == name) {
            vars.push(var(name, value.clone()));
        }
    }
    vars
}

/// The container security context the restricted Pod Security Standard asks for.
fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

fn small_resources() -> ResourceRequirements {
    let q = |cpu: &str, mem: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(mem.into())),
        ])
    };
    ResourceRequirements {
        requests: Some(q("10m", "16Mi")),
        limits: Some(q("500m", "64Mi")),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_sharing_a_prefix_get_claims_of_their_own() {
        let prefix = "acceptance-tests-for-the-payments-service-nightly-eu-west";
        let (a, b) = (format!("{prefix}-1a2b3"), format!("{prefix}-9z8y7"));
        let (claim_a, claim_b) = (workspace_claim_name(&a), workspace_claim_name(&b));
        assert_ne!(claim_a, claim_b);
        assert!(
            claim_a.len() <= 63 && claim_b.len() <= 63,
            "{claim_a} {claim_b}"
        );
        assert_eq!(workspace_claim_name("hello-x7k2p"), "hello-x7k2p-workspace");
        let agent = "a-pool-of-build-agents-for-the-payments-service-in-eu-west-one";
        assert_ne!(
            slot_claim_name(agent, 1),
            slot_claim_name(&format!("{agent}x"), 1)
        );
        assert_ne!(slot_claim_name(agent, 1), slot_claim_name(agent, 2));
        assert_eq!(slot_claim_name("pool", 0), "pool-cache-0");
    }
    use maestro_api::BuiltinTask;

    fn settings() -> PodSettings {
        PodSettings {
            agent_image: "localhost/maestro/agent:dev".into(),
            agent_pull_policy: "IfNotPresent".into(),
            workspace: None,
        }
    }

    fn step(runs: TaskRuns) -> StepPod {
        StepPod {
            name: "hello-abc-greet-1".into(),
            step: "greet".into(),
            attempt: 1,
            task: "shell".into(),
            runs,
            inputs: serde_json::json!({"script": "echo hi", "count": 3})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            context: BTreeMap::new(),
            service_account: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            secret_env: vec!["aws-credentials".into()],
            timeout: Some(std::time::Duration::from_secs(90)),
            workspace_of: None,
            ledger_runs: Vec::new(),
        }
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "maestro.dev/v1alpha1".into(),
            kind: "CompositionRun".into(),
            name: "hello-abc".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn builtin_step_runs_the_agent_with_inputs_in_env() {
        let pod = step_pod(
            &step(TaskRuns::Builtin(BuiltinTask::Shell)),
            "hello-abc",
            "ns",
            "hello",
            owner(),
            &settings(),
            None,
        );
        let spec = pod.spec.unwrap();
        let main = &spec.containers[0];
        assert_eq!(main.name, "step");
        assert_eq!(
            main.command.as_ref().unwrap(),
            &vec!["/maestro/bin/maestro-agent", "builtin", "shell"]
        );
        let env: BTreeMap<_, _> = main
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap()))
            .collect();
        assert_eq!(env["MAESTRO_INPUT_SCRIPT"], "echo hi");
        assert_eq!(env["MAESTRO_INPUT_COUNT"], "3");
        assert_eq!(env["MAESTRO_INPUTS"], r#"{"count":3,"script":"echo hi"}"#);
        assert_eq!(env["GIT_CONFIG_KEY_0"], "safe.directory");
        assert_eq!(env["GIT_CONFIG_VALUE_0"], "/workspace");
        assert_eq!(spec.active_deadline_seconds, Some(90));
        let from = main.env_from.as_ref().unwrap();
        assert_eq!(from[0].secret_ref.as_ref().unwrap().name, "aws-credentials");
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels[labels::RUN], "hello-abc");
        assert_eq!(labels[labels::STEP], "greet");
        assert_eq!(labels[labels::ATTEMPT], "1");
    }

    #[test]
    fn plugin_step_runs_under_agent_exec() {
        let runs = TaskRuns::Container {
            image: "python:3".into(),
            command: vec!["python3".into(), "/p.py".into()],
            pull_policy: None,
        };
        let pod = step_pod(
            &step(runs),
            "hello-abc",
            "ns",
            "hello",
            owner(),
            &settings(),
            None,
        );
        let main = &pod.spec.unwrap().containers[0];
        assert_eq!(main.image.as_deref(), Some("python:3"));
        assert_eq!(
            main.command.as_ref().unwrap(),
            &vec![
                "/maestro/bin/maestro-agent",
                "exec",
                "--",
                "python3",
                "/p.py"
            ]
        );
    }

    #[test]
    fn every_container_meets_the_restricted_standard() {
        let pod = step_pod(
            &step(TaskRuns::Builtin(BuiltinTask::Shell)),
            "r",
            "ns",
            "c",
            owner(),
            &settings(),
            None,
        );
        let spec = pod.spec.unwrap();
        let psc = spec.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
                &vec!["ALL".to_string()]
            );
            assert_eq!(sc.run_as_non_root, Some(true));
        }
        for v in spec.volumes.unwrap() {
            assert!(v.empty_dir.is_some(), "only emptyDir volumes: {}", v.name);
        }
    }

    fn placement(cache: SlotCache) -> Placement {
        let template: AgentTemplate = serde_json::from_value(serde_json::json!({
            "image": "registry.example/agent:7",
            "serviceAccountName": "builder",
            "nodeSelector": {"pool": "maven"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"}],
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}},
            "env": {"MAVEN_OPTS": "-Xmx2g", "MAESTRO_RUN": "spoofed"}
        }))
        .unwrap();
        Placement {
            agent: "maven-pool".into(),
            slot: 1,
            template,
            cache,
        }
    }

    #[test]
    fn placement_applies_the_pool_template_and_mounts_the_slot_claim() {
        let placement = placement(SlotCache::Claim(slot_claim_name("maven-pool", 1)));
        let mut with_workspace = settings();
        with_workspace.workspace = Some(WorkspaceClaim {
            storage_class: None,
            size: "1Gi".into(),
        });
        let pod = step_pod(
            &step(TaskRuns::Builtin(BuiltinTask::Shell)),
            "r",
            "ns",
            "c",
            owner(),
            &with_workspace,
            Some(&placement),
        );
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels[labels::AGENT], "maven-pool");
        assert_eq!(labels[labels::SLOT], "1");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("builder"));
        assert_eq!(spec.node_selector.unwrap()["pool"], "maven");
        assert_eq!(
            spec.tolerations.unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        let main = &spec.containers[0];
        assert_eq!(main.image.as_deref(), Some("registry.example/agent:7"));
        assert_eq!(
            spec.init_containers.unwrap()[0].image.as_deref(),
            Some("registry.example/agent:7")
        );
        let requests = main.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["cpu"], Quantity("2".into()));
        let env: BTreeMap<_, _> = main
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap()))
            .collect();
        assert_eq!(env["MAVEN_OPTS"], "-Xmx2g");
        assert_eq!(
            env["MAESTRO_RUN"], "r",
            "the pool cannot override Maestro's variables"
        );
        let workspace = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "workspace")
            .unwrap();
        assert_eq!(
            workspace.persistent_volume_claim.unwrap().claim_name,
            "maven-pool-cache-1",
            "the slot's cache, not the run's own claim"
        );
    }

    #[test]
    fn composition_service_account_wins_over_the_pool() {
        let placement = placement(SlotCache::Claim("c".into()));
        let mut pod = step(TaskRuns::Builtin(BuiltinTask::Shell));
        pod.service_account = Some("deployer".into());
        let pod = step_pod(&pod, "r", "ns", "c", owner(), &settings(), Some(&placement));
        assert_eq!(
            pod.spec.unwrap().service_account_name.as_deref(),
            Some("deployer")
        );
    }

    #[test]
    fn the_compositions_node_selector_and_tolerations_join_the_pools() {
        let placement = placement(SlotCache::Claim("c".into()));
        let mut pod = step(TaskRuns::Builtin(BuiltinTask::Shell));
        pod.node_selector = [
            ("pool".to_string(), "fast".to_string()),
            ("zone".into(), "a".into()),
        ]
        .into();
        pod.tolerations = vec![
            serde_json::from_value(serde_json::json!(
                {"key": "spot", "operator": "Exists", "effect": "NoSchedule"}
            ))
            .unwrap(),
        ];
        let spec = step_pod(&pod, "r", "ns", "c", owner(), &settings(), Some(&placement))
            .spec
            .unwrap();
        let selector = spec.node_selector.unwrap();
        assert_eq!(
            selector["pool"], "fast",
            "the composition wins on a shared label"
        );
        assert_eq!(selector["zone"], "a");
        let keys: Vec<String> = spec
            .tolerations
            .unwrap()
            .into_iter()
            .filter_map(|t| t.key)
            .collect();
        assert_eq!(keys, ["dedicated", "spot"]);
        // Without an Agent, only the composition's.
        let alone = step_pod(&pod, "r", "ns", "c", owner(), &settings(), None)
            .spec
            .unwrap();
        assert_eq!(alone.node_selector.unwrap().len(), 2);
        assert_eq!(alone.tolerations.unwrap().len(), 1);
    }

    #[test]
    fn host_path_cache_is_handed_to_the_step_user() {
        let mut placement = placement(SlotCache::HostPath(slot_host_path(
            "/var/cache/maestro/",
            1,
        )));
        // An Agent's own image runs the steps, never the root chown.
        placement.template.image = Some("registry.example/authors-agent:1".into());
        let pod = step_pod(
            &step(TaskRuns::Builtin(BuiltinTask::Shell)),
            "r",
            "ns",
            "c",
            owner(),
            &settings(),
            Some(&placement),
        );
        let spec = pod.spec.unwrap();
        let workspace = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "workspace")
            .unwrap();
        let host = workspace.host_path.unwrap();
        assert_eq!(host.path, "/var/cache/maestro/1");
        assert_eq!(host.type_.as_deref(), Some("DirectoryOrCreate"));
        let owner_fix = &spec.init_containers.unwrap()[1];
        assert_eq!(
            owner_fix.image.as_deref(),
            Some("localhost/maestro/agent:dev")
        );
        assert_eq!(
            owner_fix.command.as_ref().unwrap(),
            &vec!["chown", "65532:65532", "/workspace"]
        );
        let sc = owner_fix.security_context.as_ref().unwrap();
        assert_eq!(
            sc.capabilities.as_ref().unwrap().add.as_ref().unwrap(),
            &vec!["CHOWN".to_string()]
        );
    }

    #[test]
    fn slot_claim_names_stay_within_63_characters() {
        assert_eq!(slot_claim_name("pool", 0), "pool-cache-0");
        let long = "a".repeat(70);
        let name = slot_claim_name(&long, 12);
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("-cache-12"));
    }
}
