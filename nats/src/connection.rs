//! The connection to NATS: one client per process, reconnecting with capped exponential backoff
//! forever once the first connection succeeded, and a health view of its state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};

use crate::NatsError;

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URLs, comma separated (`nats://127.0.0.1:4222,nats://10.0.0.2:4222`).
    pub url: String,
    /// Connection name shown by the server's monitoring.
    pub name: String,
    /// Time allowed for the first connection (per attempt).
    pub connect_timeout: Duration,
    /// Attempts at the first connection before start-up fails.
    pub connect_attempts: usize,
    /// Optional token for servers that require one (a user and password go in the URL).
    pub token: Option<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            name: "alluvium".into(),
            connect_timeout: Duration::from_secs(5),
            connect_attempts: 3,
            token: None,
        }
    }
}

/// Counters of connection events, for metrics and health.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections established (the first one and every reconnect).
    pub connects: AtomicU64,
    /// Connections lost.
    pub disconnects: AtomicU64,
    /// Times the server reported this client as a slow consumer.
    pub slow_consumers: AtomicU64,
}

/// A connected client and its health.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The client; cheap to clone.
    pub client: Client,
    /// Connection events so far.
    pub stats: Arc<ConnectionStats>,
}

/// `url` (one or several, comma separated) with any `user:password@` replaced by `***@`, for
/// logs and errors.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &u[..scheme + 3], &u[at..])
            }
            (None, Some(at)) => format!("***{}", &u[at..]),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The delay before reconnect attempt `attempt`: 25 ms doubling up to 2 s.
pub fn backoff(attempt: usize) -> Duration {
    let exp = attempt.min(16) as u32;
    Duration::from_millis(25u64.saturating_mul(1 << exp)).min(Duration::from_secs(2))
}

impl Connection {
    /// Connects, retrying the first connection `connect_attempts` times; later losses are
    /// retried forever in the background (published messages are buffered meanwhile).
    pub async fn connect(config: &NatsConfig) -> Result<Connection, NatsError> {
        let servers = config
            .url
            .split(',')
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ServerAddr>()
                    .map_err(|e| NatsError::Config(format!("invalid NATS url {s:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err(NatsError::Config("no NATS url given".into()));
        }
        let stats = Arc::new(ConnectionStats::default());
        let mut last = String::new();
        for attempt in 0..config.connect_attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt + 4)).await;
            }
            let events = stats.clone();
            let mut options = ConnectOptions::new()
                .name(&config.name)
                .connection_timeout(config.connect_timeout)
                .max_reconnects(None)
                .reconnect_delay_callback(backoff)
                // Messages buffered per subscription before the server drops them as a slow
                // consumer; ingest answers 503 at once when its in-flight limit is reached,
                // so the buffer drains quickly.
                .subscription_capacity(8192)
                .event_callback(move |event| {
                    let stats = events.clone();
                    async move { on_event(&stats, event) }
                });
            if let Some(token) = &config.token {
                options = options.token(token.clone());
            }
            match options.connect(servers.clone()).await {
                Ok(client) => {
                    stats.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(url = %redact(&config.url), "connected to NATS");
                    return Ok(Connection { client, stats });
                }
                Err(e) => {
                    tracing::warn!(url = %redact(&config.url), attempt, error = %e, "NATS connection failed");
                    last = e.to_string();
                }
            }
        }
        Err(NatsError::Connect(format!(
            "cannot connect to NATS at {} after {} attempts: {last}",
            redact(&config.url),
            config.connect_attempts.max(1)
        )))
    }

    /// `Ok` while connected; `Err` says what state the connection is in otherwise.
    pub fn health(&self) -> Result<(), String> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            async_nats::connection::State::Disconnected => {
                Err("NATS is disconnected; reconnecting".into())
            }
            async_nats::connection::State::Pending => Err("NATS connection pending".into()),
        }
    }
}

fn on_event(stats: &ConnectionStats, event: Event) {
    match event {
        Event::Connected => {
            stats.connects.fetch_add(1, Ordering::Relaxed);
            tracing::info!("NATS reconnected");
        }
        Event::Disconnected => {
            stats.disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("NATS connection lost; reconnecting");
        }
        Event::SlowConsumer(sid) => {
            stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                sid,
                "NATS reports this client as a slow consumer: messages were dropped (producers waiting for a reply retry)"
            );
        }
        other => tracing::info!(event = %other, "NATS event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("nats://u:secret@10.0.0.1:4222,nats://10.0.0.2:4222"),
            "nats://***@10.0.0.1:4222,nats://10.0.0.2:4222"
        );
        assert_eq!(redact("tok@host:4222"), "***@host:4222");
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(25));
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(10), Duration::from_secs(2));
        assert_eq!(backoff(usize::MAX), Duration::from_secs(2));
    }
}
