//! `maestro-ui`: the web UI as a server in the cluster, behind an auth proxy that passes
//! each user's token (`X-Forwarded-Access-Token` or `Authorization: Bearer`), or with its
//! token login page. It calls the Kubernetes API with that token only: it drops whatever
//! credentials its own config holds, so RBAC decides what each user sees and does. In the
//! read-only mode (`--read-only-namespace`), visitors without a token are served that
//! namespace with a viewer ServiceAccount's token, and cannot act. (On a workstation,
//! `kubectl maestro ui` serves the same UI with the caller's kubeconfig.)

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use maestro_ui::{Access, Settings};

#[derive(Parser, Debug)]
#[command(name = "maestro-ui", version)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080", env = "MAESTRO_UI_LISTEN")]
    listen: SocketAddr,
    /// The namespace the UI shows first.
    #[arg(long, default_value = "default", env = "MAESTRO_UI_NAMESPACE")]
    namespace: String,
    /// A Host header value the server answers to (repeat it; default: any).
    #[arg(long = "host", value_name = "HOST[:PORT]")]
    hosts: Vec<String>,
    /// Grafana's address: the page links to Maestro's dashboard there.
    #[arg(long, value_name = "URL", env = "MAESTRO_UI_GRAFANA_URL")]
    grafana_url: Option<String>,
    /// The read-only mode: serve this namespace to visitors without a token, with the
    /// token in --read-only-token-file (a viewer ServiceAccount's); they cannot act.
    #[arg(long, value_name = "NAMESPACE", env = "MAESTRO_UI_READ_ONLY_NAMESPACE")]
    read_only_namespace: Option<String>,
    /// The viewer's token, re-read as it rotates (the read-only mode only).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token",
        env = "MAESTRO_UI_READ_ONLY_TOKEN_FILE"
    )]
    read_only_token_file: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    // Only the cluster's address and CA are used from this config (the pod's, or
    // KUBECONFIG's).
    let cluster = kube::Config::infer()
        .await
        .map_err(|error| anyhow::anyhow!("cannot find the cluster: {error}"))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", args.listen))?;
    let access = match args.read_only_namespace.filter(|ns| !ns.is_empty()) {
        Some(namespace) => {
            Access::bearer_token_or_viewer(cluster, namespace, args.read_only_token_file.clone())
                .map_err(|error| {
                    anyhow::anyhow!(
                        "read-only mode: cannot use the viewer's token {}: {error}",
                        args.read_only_token_file
                    )
                })?
        }
        None => Access::bearer_token(cluster),
    };
    println!("Maestro UI: http://{}/", listener.local_addr()?);
    maestro_ui::serve(
        listener,
        Settings {
            access,
            default_namespace: args.namespace,
            allowed_hosts: args.hosts,
            grafana_url: args.grafana_url,
        },
    )
    .await?;
    Ok(())
}
