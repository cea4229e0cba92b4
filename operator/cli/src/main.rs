//! `kubectl-maestro`: the kubectl plugin for Maestro (`kubectl maestro ...`). It starts,
//! inspects, approves, cancels and tails CompositionRuns through the Kubernetes API, as
//! the user kubectl is configured for.

mod commands;
mod connection;
mod identity;
mod loglines;
mod lookup;
mod params;
mod table;
mod timefmt;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::Client;

/// Start, watch, approve and cancel Maestro composition runs.
#[derive(Parser, Debug)]
#[command(name = "kubectl-maestro", bin_name = "kubectl maestro", version)]
struct Cli {
    /// The namespace to work in (default: the kubeconfig context's namespace, else
    /// "default").
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,

    #[command(flatten)]
    kube: connection::KubeFlags,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a run of a composition.
    Run(commands::run::RunArgs),
    /// Rerun an ended run from its failed step (or --from a step), reusing the rest.
    Rerun(commands::rerun::RerunArgs),
    /// List runs, or show one run, as a table.
    Get(commands::get::GetArgs),
    /// Show a run in detail: params, conditions, steps, outputs and its resource ledger.
    Describe(commands::describe::DescribeArgs),
    /// Approve a step that waits for approval.
    Approve(commands::decide::DecideArgs),
    /// Reject a step that waits for approval (the step fails).
    Reject(commands::decide::DecideArgs),
    /// Ask the operator to cancel a run.
    Cancel(commands::cancel::CancelArgs),
    /// Print the logs of a run's step pods, in execution order.
    Logs(commands::logs::LogsArgs),
    /// Serve the web UI on 127.0.0.1 (runs, their graphs and logs, approvals) and print
    /// its URL.
    Ui(commands::ui::UiArgs),
}

/// Where a command works: the API client and the namespace.
pub struct Target {
    pub client: Client,
    pub namespace: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    // kube links rustls with the aws-lc-rs provider; rustls wants it chosen once, before the
    // first connection (an error means it already is).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) if is_broken_pipe(&error) => {
            // The reader went away (`kubectl maestro logs RUN | head`): not a failure.
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = cli.kube.client().await.map_err(|error| {
        anyhow::anyhow!("cannot reach Kubernetes (check KUBECONFIG or your context): {error:#}")
    })?;
    let namespace = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    let target = Target { client, namespace };
    match cli.command {
        Command::Run(args) => commands::run::run(&target, args).await,
        Command::Rerun(args) => commands::rerun::run(&target, args).await,
        Command::Get(args) => commands::get::run(&target, args).await,
        Command::Describe(args) => commands::describe::run(&target, args).await,
        Command::Approve(args) => {
            commands::decide::run(&target, args, maestro_api::Decision::Approve).await
        }
        Command::Reject(args) => {
            commands::decide::run(&target, args, maestro_api::Decision::Reject).await
        }
        Command::Cancel(args) => commands::cancel::run(&target, args).await,
        Command::Logs(args) => commands::logs::run(&target, args).await,
        Command::Ui(args) => commands::ui::run(&target, args).await,
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn namespace_flag_works_after_the_subcommand() {
        let cli = Cli::try_parse_from(["kubectl-maestro", "get", "-n", "ci"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.namespace.as_deref(), Some("ci"));
    }

    #[test]
    fn params_are_parsed_into_pairs() {
        let cli = Cli::try_parse_from([
            "kubectl-maestro",
            "run",
            "acceptance-tests",
            "-p",
            "version=1.4.3",
            "-p",
            "url=http://x/?a=b",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(
            args.params,
            vec![
                ("version".to_string(), "1.4.3".to_string()),
                ("url".to_string(), "http://x/?a=b".to_string())
            ]
        );
    }

    #[test]
    fn ui_takes_a_port_and_no_open() {
        let cli = Cli::try_parse_from(["kubectl-maestro", "ui", "--port", "0", "--no-open"])
            .unwrap_or_else(|e| panic!("{e}"));
        let Command::Ui(args) = cli.command else {
            panic!("expected ui");
        };
        assert_eq!(args.port, 0);
        assert!(args.no_open);
        let cli = Cli::try_parse_from(["kubectl-maestro", "ui"]).unwrap_or_else(|e| panic!("{e}"));
        let Command::Ui(args) = cli.command else {
            panic!("expected ui");
        };
        assert_eq!(args.port, commands::ui::DEFAULT_PORT);
        assert!(!args.no_open);
    }

    #[test]
    fn a_param_without_equals_is_refused() {
        let error = Cli::try_parse_from(["kubectl-maestro", "run", "c", "-p", "version"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("expected key=value"), "{error}");
    }
}
