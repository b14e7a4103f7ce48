//! Logs and traces: `tracing` to stderr, filtered by `ALLUVIUM_LOG` (or `RUST_LOG`), as text or
//! JSON (`ALLUVIUM_LOG_FORMAT=json`); and, when `[telemetry] otlp_endpoint` is set, every span
//! (one per HTTP request, WAL commit group and flush) exported over OTLP/HTTP through
//! tracing-opentelemetry.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`. Default: none (no export).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans. Default: `alluvium`.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "alluvium".into(),
        }
    }
}

/// Flushes and stops the span exporter when dropped.
#[derive(Debug)]
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: trace exporter shutdown failed: {e}");
        }
    }
}

fn filter(default: &str) -> EnvFilter {
    let filter = std::env::var("ALLUVIUM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(default))
}

/// Installs the global subscriber; `default` is the log filter when no variable is set.
/// Returns a guard to keep until the process ends.
pub fn init(default: &str, config: &TelemetryConfig) -> anyhow::Result<Guard> {
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| {
                    anyhow::anyhow!("cannot build the OTLP exporter for {endpoint}: {e}")
                })?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        Resource::builder()
                            .with_service_name(config.service_name.clone())
                            .build(),
                    )
                    .build(),
            )
        }
        None => None,
    };
    type Base = Layered<EnvFilter, Registry>;
    let mut layers: Vec<Box<dyn Layer<Base> + Send + Sync>> = Vec::new();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if std::env::var("ALLUVIUM_LOG_FORMAT").is_ok_and(|f| f == "json") {
        layers.push(fmt.json().boxed());
    } else {
        layers.push(fmt.boxed());
    }
    if let Some(p) = &provider {
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("alluvium"))
                .boxed(),
        );
    }
    // A second init (several commands in one test process) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter(default))
        .with(layers)
        .try_init();
    Ok(Guard(provider))
}
