//! `maestro-operator`: reconciles Maestro's custom resources.

use clap::Parser;
use maestro_operator::telemetry::{self, LogFormat};

/// Maestro's operator: reconciles Compositions, CompositionRuns, Tasks and Agents and
/// schedules each step as a pod.
#[derive(Parser, Debug)]
#[command(name = "maestro-operator", version, about)]
struct Args {
    /// Log level, as an EnvFilter directive (RUST_LOG overrides it).
    #[arg(long, env = "MAESTRO_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "MAESTRO_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(&args.log_level, args.log_format)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "maestro-operator starting"
    );
    tokio::signal::ctrl_c().await?;
    tracing::info!("maestro-operator stopping");
    Ok(())
}
