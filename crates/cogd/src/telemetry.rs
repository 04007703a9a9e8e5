//! The server's own logs: JSON lines on stderr by default (`LOG_FORMAT=console`
//! for people), filtered by `COG_LOG_LEVEL` or `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; later calls are no-ops.
pub fn init() {
    init_with("info", false);
}

/// [`init`] with other defaults, for commands people read in a terminal
/// (`cogd predict`: warnings only, in console form). The environment still wins.
pub fn init_with(default_level: &str, default_console: bool) {
    let directive = std::env::var("COG_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_level.to_string());
    let filter = EnvFilter::try_new(directive.to_ascii_lowercase())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let console = std::env::var("LOG_FORMAT")
        .map(|f| f.eq_ignore_ascii_case("console"))
        .unwrap_or(default_console);
    let _ = if console {
        builder.with_target(false).try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
}
