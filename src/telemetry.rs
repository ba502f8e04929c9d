//! Structured logs: JSON lines in production, readable lines on a terminal. `RUST_LOG` filters.
use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber (once per process; later calls are no-ops, which tests rely on).
pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty = match format {
        "pretty" => true,
        "json" => false,
        _ => std::io::stdout().is_terminal(),
    };
    let builder = fmt().with_env_filter(filter).with_target(false);
    let _ = if pretty {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
}
