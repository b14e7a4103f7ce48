//! Logging setup: `tracing` to stderr, filtered by `ALLUVIUM_LOG` (or `RUST_LOG`), as text or
//! JSON (`ALLUVIUM_LOG_FORMAT=json`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `default` is the filter when no variable is set.
pub fn init(default: &str) {
    let filter = std::env::var("ALLUVIUM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = if std::env::var("ALLUVIUM_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = res;
}
