//! Logging set-up shared by every binary.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetrySettings};

/// Install the global tracing subscriber: human-readable text or JSON lines on stderr, filtered
/// by `RUST_LOG` when it is set and by `settings.filter` otherwise. `json` forces JSON output.
///
/// Calling it twice is harmless: the second call leaves the first subscriber in place.
pub fn init(settings: &TelemetrySettings, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if json || settings.format == LogFormat::Json {
        builder.json().with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.with_target(false).try_init()
    };
    // An error here only means a subscriber is already installed, as in tests.
    drop(result);
}
