//! `maestro-operator`: reconciles Maestro's custom resources.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use maestro_api::parse_duration;
use maestro_operator::{
    controller::{
        self, PodSettings, Settings,
        leader::{self, LeaseSettings},
        pods::WorkspaceClaim,
    },
    library::{self, LibraryImages, LibraryInstall},
    metrics::{self, Metrics},
    telemetry::{self, LogFormat},
    webhook,
};

/// Maestro's operator: reconciles Compositions and CompositionRuns and runs each step as
/// a pod.
#[derive(Parser, Debug)]
#[command(name = "maestro-operator", version, about)]
struct Args {
    /// Log level, as an EnvFilter directive (RUST_LOG overrides it).
    #[arg(long, env = "MAESTRO_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "MAESTRO_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// The agent image: built-in tasks run in it, and it installs maestro-agent into
    /// every step pod.
    #[arg(
        long,
        env = "MAESTRO_AGENT_IMAGE",
        default_value = "localhost/maestro/agent:dev"
    )]
    agent_image: String,
    /// Pull policy of the agent image.
    #[arg(
        long,
        env = "MAESTRO_AGENT_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    agent_pull_policy: String,
    /// The image of the library's `maven` Task (Debian's Maven and a JDK,
    /// operator/library/images/maven), in the Tasks this operator installs.
    #[arg(
        long,
        env = "MAESTRO_MAVEN_IMAGE",
        default_value = library::SHIPPED_MAVEN_IMAGE
    )]
    maven_image: String,
    /// Pull policy of the `maven` Task's image.
    #[arg(
        long,
        env = "MAESTRO_MAVEN_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    maven_pull_policy: String,
    /// The namespace of the standard Task library, searched after a run's own namespace.
    #[arg(
        long,
        env = "MAESTRO_LIBRARY_NAMESPACE",
        default_value = "maestro-system"
    )]
    library_namespace: String,
    /// Install the standard Task library (shell, git, http, ...) into the library
    /// namespace and keep it at this operator's version (the leader does it).
    #[arg(long, env = "MAESTRO_INSTALL_LIBRARY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    install_library: bool,
    /// A Deployment in the library namespace that owns the installed library, so the
    /// library goes when it goes (the chart names the operator's own Deployment).
    #[arg(long, env = "MAESTRO_LIBRARY_OWNER_DEPLOYMENT")]
    library_owner_deployment: Option<String>,
    /// Let Agents keep their caches in hostPath volumes (`spec.cache.hostPath`). Off by
    /// default: a hostPath reaches the node's disk, more than an author may otherwise ask
    /// for, so an Agent with one stays NotReady and gets no runs.
    #[arg(long, env = "MAESTRO_ALLOW_HOST_PATH_CACHES", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    allow_host_path_caches: bool,
    /// Also record a step's routine progress (StepStarted, StepSucceeded) as Events. Off by
    /// default: the run's status holds each step's start and finish with their times, and
    /// two Events per step were most of the operator's writes to the API server. Runs,
    /// failures, retries, approvals and cleanups are always recorded.
    #[arg(long, env = "MAESTRO_STEP_EVENTS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    step_events: bool,
    /// How long finished runs are kept before they (and their pods) are deleted.
    #[arg(long, env = "MAESTRO_FINISHED_RUN_TTL", default_value = "24h", value_parser = ttl)]
    finished_run_ttl: Duration,
    /// Where a run's workspace lives: `claim` (a PersistentVolumeClaim per run, shared by
    /// its steps) or `emptyDir` (one per pod, for clusters without a volume provisioner).
    #[arg(long, env = "MAESTRO_WORKSPACE", default_value = "claim", value_parser = ["claim", "emptyDir"])]
    workspace: String,
    /// StorageClass of workspace claims (default: the cluster's default class).
    #[arg(long, env = "MAESTRO_WORKSPACE_STORAGE_CLASS")]
    workspace_storage_class: Option<String>,
    /// Size of each run's workspace claim.
    #[arg(long, env = "MAESTRO_WORKSPACE_SIZE", default_value = "1Gi")]
    workspace_size: String,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "MAESTRO_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: String,
    /// Where the git push webhook endpoint (/hooks/github, /hooks/gitlab, /hooks/gitea)
    /// is served; every replica serves it. Empty turns it off.
    #[arg(long, env = "MAESTRO_WEBHOOK_ADDR", default_value = "0.0.0.0:8081")]
    webhook_addr: String,
    /// Watch only this namespace instead of the whole cluster.
    #[arg(long, env = "MAESTRO_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Elect a leader through a Lease, so several replicas can run and only one
    /// reconciles. Turn it off (`--leader-elect=false`) for a single local process.
    #[arg(long, env = "MAESTRO_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// The name of the leader election Lease.
    #[arg(long, env = "MAESTRO_LEASE_NAME", default_value = "maestro-operator")]
    lease_name: String,
    /// The namespace of the leader election Lease (default: the watched namespace if
    /// --namespace is set, else maestro-system).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
}

fn ttl(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

/// jemalloc gives freed memory back to the system (glibc's malloc kept what the first list
/// of a large history took: bench W5).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(&args.log_level, args.log_format)?;
    maestro_operator::tls::install_crypto_provider();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), agent_image = %args.agent_image, "maestro-operator starting");
    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API (in-cluster or kubeconfig)")?;
    let client =
        kube::Client::try_from(config.clone()).context("connecting to the Kubernetes API")?;
    let settings = Settings {
        pods: PodSettings {
            agent_image: args.agent_image.clone(),
            agent_pull_policy: args.agent_pull_policy.clone(),
            workspace: (args.workspace == "claim").then_some(WorkspaceClaim {
                storage_class: args.workspace_storage_class,
                size: args.workspace_size,
            }),
        },
        library: args.install_library.then(|| LibraryInstall {
            namespace: args.library_namespace.clone(),
            owner_deployment: args.library_owner_deployment.clone(),
            // Tasks that run maestro-agent in a container get the agent image built-ins
            // run in.
            images: LibraryImages {
                agent: args.agent_image.clone(),
                agent_pull_policy: args.agent_pull_policy.clone(),
                maven: args.maven_image.clone(),
                maven_pull_policy: args.maven_pull_policy.clone(),
            },
        }),
        library_namespace: args.library_namespace,
        finished_run_ttl: args.finished_run_ttl,
        watch_namespace: args.namespace.clone(),
        allow_host_path_caches: args.allow_host_path_caches,
        step_events: args.step_events,
    };
    let leader = args.leader_elect.then(|| LeaseSettings {
        name: args.lease_name.clone(),
        namespace: args
            .lease_namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .or_else(|| args.namespace.clone())
            .unwrap_or_else(|| "maestro-system".into()),
        identity: leader::default_identity(),
    });
    let metrics = Metrics::new()?;
    let ready = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(metrics::serve(
        args.metrics_addr.clone(),
        metrics.clone(),
        ready.clone(),
    ));
    let (webhook, compositions_for_webhook) = if args.webhook_addr.is_empty() {
        (tokio::spawn(std::future::pending()), None)
    } else {
        let (cache_tx, cache_rx) = tokio::sync::oneshot::channel();
        let serving = tokio::spawn(webhook::serve(
            args.webhook_addr.clone(),
            client.clone(),
            cache_rx,
            metrics.clone(),
        ));
        (serving, Some(cache_tx))
    };
    tokio::select! {
        result = controller::run(config, client, settings, metrics, ready, leader, compositions_for_webhook) => result?,
        result = server => {
            result??;
        }
        result = webhook => {
            result?.context("serving the webhook endpoint")?;
        }
    }
    tracing::info!("maestro-operator stopped");
    Ok(())
}
