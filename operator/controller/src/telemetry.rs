//! Logging set-up shared by Maestro's binaries.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global tracing subscriber. `level` is an `EnvFilter` directive such as
/// `info` or `maestro_operator=debug,kube=info`; `RUST_LOG` overrides it when set.
pub fn init(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(level))?;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        // Colour only on a terminal: `kubectl logs` of the operator's pod shows plain text.
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(std::io::stdout().is_terminal()))
            .try_init()?,
        LogFormat::Json => registry.with(fmt::layer().json()).try_init()?,
    }
    Ok(())
}
