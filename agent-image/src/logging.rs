//! The agent's own log lines. The pod log is the user's log, so agent lines are few (info and
//! up by default, MAESTRO_LOG_LEVEL for more) and marked as the agent's: `maestro-agent:
//! warning: ...`, with no timestamps (the kubelet adds those) and no colours.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub const LOG_LEVEL_VAR: &str = "MAESTRO_LOG_LEVEL";

pub fn init_logging() {
    let filter = EnvFilter::try_from_env(LOG_LEVEL_VAR).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(AgentLineFormat)
        .init();
}

/// Formats an event as `maestro-agent: <level>: <message> <fields>`.
struct AgentLineFormat;

impl<S, N> FormatEvent<S, N> for AgentLineFormat
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        write!(writer, "maestro-agent: {level}: ")?;
        context
            .field_format()
            .format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
