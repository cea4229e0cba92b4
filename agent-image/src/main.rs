//! `maestro-agent`: runs inside every Maestro step pod.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Maestro's agent: runs a step's command or built-in task inside its pod and reports the
/// result to the operator through the pod's termination message.
#[derive(Parser, Debug)]
#[command(name = "maestro-agent", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the agent's version and exit.
    Version,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter =
        EnvFilter::try_from_env("MAESTRO_LOG_LEVEL").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match args.command {
        Command::Version => {
            tracing::debug!("version requested");
            println!("maestro-agent {}", env!("CARGO_PKG_VERSION"));
        }
    }
    Ok(())
}
