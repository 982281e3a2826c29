//! Logging and tracing set up once, the same way for every binary.
//!
//! `RUST_LOG` filters (default `info`); `BUILDMASTER_LOG_FORMAT=json` switches
//! to one JSON object per line for log collectors.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("BUILDMASTER_LOG_FORMAT").is_ok_and(|v| v == "json");
    let colours = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
