//! Links from background work to the requests it serves.
//!
//! A flush lands the rows of many requests, long after each was answered, so its span cannot
//! be the child of any one of them. Each request's span context travels with its rows instead
//! (WAL append, memtable insert), and the flush span links to the requests whose rows it
//! writes: a trace viewer goes from an ingest request to the flush that landed it. Without an
//! exporter configured, no span has a context and nothing is recorded.

use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The span context of a request, kept to link later work to it.
pub type TraceLink = SpanContext;

/// Links kept per memtable at most: a flush of a large memtable links to the first requests
/// it holds, which is enough to find it, without unbounded memory per memtable.
pub const MAX_LINKS: usize = 32;

/// The exported span context of the current span, if spans are exported.
pub fn current() -> Option<TraceLink> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.clone())
}

/// Adds each of `links` to `span`.
pub fn link(span: &tracing::Span, links: impl IntoIterator<Item = TraceLink>) {
    for l in links {
        span.add_link(l);
    }
}
