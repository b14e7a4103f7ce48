//! `alluvium serve`: recover, start the node's actors, serve HTTP until stopped.

use actix_web::dev::Service as _;
use actix_web::{App, HttpServer, web};
use alluvium_actors::auth::Bootstrap;
use alluvium_actors::compaction::CompactionConfig;
use alluvium_actors::memtable::MemtableConfig;
use alluvium_actors::schema::translate::BatchLimits;
use alluvium_actors::storage::{S3Settings, Storage, StoreUrl};
use alluvium_actors::wal::{DedupeConfig, WalConfig};
use alluvium_nats::NatsConfig;
use alluvium_nats::jetstream::LogSettings;
use alluvium_nats::jetstream::StreamSettings;
use alluvium_pipelines::cluster::{ClusterConfig, Roles};
use alluvium_pipelines::link::{LinkConfig, NatsLink};
use alluvium_pipelines::sources::nats::NatsIngestConfig;
use alluvium_pipelines::{Node, NodeConfig};
use anyhow::{Context as _, bail};
use tracing::Instrument as _;

use crate::config::Config;
use crate::http::{AppState, routes};
use crate::metrics::Metrics;

/// The node configuration a [`Config`] describes.
pub fn node_config(config: &Config) -> NodeConfig {
    let mut wal = WalConfig::new(config.data_dir.join("wal"));
    wal.segment_size = config.wal.segment_size.0;
    wal.max_record_size = u32::try_from(config.wal.max_record_size.0).unwrap_or(u32::MAX);
    NodeConfig {
        data_dir: config.data_dir.clone(),
        wal,
        memtable: MemtableConfig {
            freeze_bytes: config.memtable.freeze_size.0 as usize,
            freeze_age: config.memtable.freeze_age.0,
            retry_backoff: config.memtable.flush_retry.0,
        },
        memory_budget: config.memtable.budget.0 as usize,
        compaction: CompactionConfig {
            target_file_bytes: config.compaction.target_file_size.0,
            min_input_files: config.compaction.min_files.max(2),
            max_input_files: config.compaction.max_files.max(2),
            max_input_bytes: config.compaction.max_input_size.0,
            interval: config.compaction.interval.0,
            grace: config.compaction.grace.0,
            max_concurrent: config.compaction.max_concurrent.max(1),
        },
        batch_limits: BatchLimits {
            max_rows: config.ingest.max_batch_rows,
            max_depth: config.ingest.max_depth,
        },
        infer_new_tables: config.ingest.infer_new_tables,
        max_tables_per_tenant: config.ingest.max_tables_per_tenant,
        dedupe: DedupeConfig {
            window: config.ingest.idempotency_window.0,
            max_keys: config.ingest.idempotency_max_keys.max(1),
        },
        jwt: config.auth.jwt.clone(),
        bootstrap_key: std::env::var("ALLUVIUM_BOOTSTRAP_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
        storage: None,
        cluster: None,
    }
}

/// What `[node]`, `[store]`, `[nats]` and `[cluster]` make of this node: the roles (`None`:
/// standalone), checked before anything starts.
pub fn cluster_roles(config: &Config) -> anyhow::Result<Option<Roles>> {
    let role = config.node.role.as_deref().unwrap_or("all");
    let roles = Roles::parse(role)
        .map_err(|e| anyhow::anyhow!("invalid role ([node] role, --role): {e}"))?;
    let Some(roles) = roles else {
        return Ok(None);
    };
    let has_nats = config
        .nats
        .url
        .as_deref()
        .is_some_and(|u| !u.trim().is_empty());
    if !has_nats {
        bail!(
            "role {} needs NATS: set --nats-url or [nats] url (ALLUVIUM_NATS__URL)",
            roles.names()
        );
    }
    if config.store.url.is_none() {
        bail!(
            "role {} needs a store every node shares: set --store s3://bucket/prefix or \
             file:///shared/path ([store] url, ALLUVIUM_STORE__URL)",
            roles.names()
        );
    }
    if config.nats.ingest_mode == crate::config::IngestMode::Jetstream {
        bail!(
            "[nats] ingest_mode = \"jetstream\" is for standalone nodes; cluster ingest nodes \
             take requests on the ingest subjects and write the replicated log themselves"
        );
    }
    Ok(Some(roles))
}

/// The object store `[store]` names, `None` for the local `data_dir`.
pub fn storage(config: &Config) -> anyhow::Result<Option<Storage>> {
    let Some(url) = config.store.url.as_deref() else {
        return Ok(None);
    };
    let parsed =
        StoreUrl::parse(url).with_context(|| format!("invalid [store] url (--store) {url:?}"))?;
    let storage = match parsed {
        StoreUrl::Local(path) => Storage::local(&path)
            .with_context(|| format!("cannot open the store {url} ([store] url, --store)"))?,
        StoreUrl::S3 { bucket, prefix } => {
            let s = &config.store;
            let mut settings = S3Settings::new(bucket, prefix);
            settings.endpoint = s.endpoint.clone();
            if let Some(region) = &s.region {
                settings.region = region.clone();
            }
            settings.access_key_id = s.access_key_id.clone();
            settings.secret_access_key = s.secret_access_key.clone();
            settings.allow_http = s.allow_http;
            Storage::s3(&settings)
                .with_context(|| format!("cannot open the store {url} ([store] url, --store)"))?
        }
    };
    Ok(Some(storage))
}

/// The node's name: `[node] id`, or the host name and the HTTP port.
pub fn node_id(config: &Config) -> anyhow::Result<String> {
    if let Some(id) = &config.node.id {
        alluvium_nats::validate_token(id)
            .map_err(|e| anyhow::anyhow!("invalid [node] id (--node-id) {id:?}: {e}"))?;
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("invalid [node] id (--node-id) {id:?}: use letters, digits, '-' and '_'");
        }
        return Ok(id.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let host = if host.is_empty() {
        "node".to_string()
    } else {
        host
    };
    Ok(format!("{host}-{}", config.server.listen.port()))
}

/// The cluster part of the node configuration, for a node with cluster roles.
pub fn cluster_config(config: &Config, roles: Roles) -> anyhow::Result<ClusterConfig> {
    let n = &config.nats;
    Ok(ClusterConfig {
        roles,
        node_id: node_id(config)?,
        nats: NatsConfig {
            url: n.url.clone().unwrap_or_default(),
            name: "alluvium-cluster".into(),
            token: n.token.clone(),
            ..NatsConfig::default()
        },
        prefix: n.prefix.clone(),
        log: LogSettings {
            replicas: n.stream_replicas.max(1),
            max_bytes: config.cluster.log_max_bytes.0,
            duplicate_window: config.ingest.idempotency_window.0,
        },
        lease_ttl: config.cluster.lease_ttl.0,
        lease_replicas: n.stream_replicas.max(1),
        catalog_refresh: config.cluster.catalog_refresh.0,
    })
}

/// The NATS link a [`Config`] describes, if it names a NATS URL.
pub fn link_config(config: &Config) -> Option<LinkConfig> {
    let n = &config.nats;
    let url = n.url.clone().filter(|u| !u.trim().is_empty())?;
    // Standalone, or the cluster roles: ingest subscribes, notification publishes events.
    let roles = cluster_roles(config).ok().flatten();
    Some(LinkConfig {
        connection: NatsConfig {
            url,
            name: "alluvium".into(),
            token: n.token.clone(),
            ..NatsConfig::default()
        },
        prefix: n.prefix.clone(),
        streams: StreamSettings {
            replicas: n.stream_replicas.max(1),
            events_max_age: n.retention.0,
            rejects_max_age: n.retention.0,
            duplicate_window: n.duplicate_window.0,
        },
        ingest: (n.ingest && roles.is_none_or(|r| r.ingest)).then(|| NatsIngestConfig {
            queue_group: n.queue_group.clone(),
            max_in_flight: n.max_in_flight.max(1),
            default_durability: config.ingest.durability,
            jetstream: n.ingest_mode == crate::config::IngestMode::Jetstream,
        }),
        publish_events: (n.publish_events && roles.is_none_or(|r| r.notification))
            .then(|| config.data_dir.join("notify").join("nats.cursor")),
        rejects_capacity: 10_000,
    })
}

/// Runs a standalone node until SIGINT/SIGTERM.
pub fn serve(config: Config) -> anyhow::Result<()> {
    // Before anything touches the disk, so a failpoint can fire at the first write.
    alluvium_actors::failpoint::init_from_env()
        .with_context(|| format!("bad {}", alluvium_actors::failpoint::ENV_VAR))?;
    // Checked before the node starts: a bad webhook refuses the start, before any recovery.
    let webhooks: Vec<_> = config.webhooks.iter().map(|w| w.webhook_config()).collect();
    alluvium_pipelines::notification::webhooks::validate_all(&webhooks)
        .map_err(|e| anyhow::anyhow!("invalid [[webhooks]] configuration: {e}"))?;
    let hooks = config
        .sources
        .webhook
        .iter()
        .map(|h| h.hook_config())
        .collect::<Result<Vec<_>, _>>()?;
    let hooks = std::sync::Arc::new(
        alluvium_pipelines::sources::webhook::hooks(hooks)
            .map_err(|e| anyhow::anyhow!("invalid [[sources.webhook]] configuration: {e}"))?,
    );
    let roles = cluster_roles(&config)?;
    let mut node_config = node_config(&config);
    node_config.storage = storage(&config)?;
    node_config.cluster = roles.map(|r| cluster_config(&config, r)).transpose()?;
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let node = Node::start(node_config)
            .await
            .context("cannot start the node")?;
        match &*node.bootstrap {
            Bootstrap::Generated { key, path, .. } => {
                // Printed once, on the first start: the only way to learn the key besides the file.
                println!(
                    "bootstrap admin key for tenant \"default\" (also written to {}):\n{key}",
                    path.display()
                );
            }
            Bootstrap::FromEnv { id } => {
                tracing::info!(key_id = %id, "bootstrap admin key installed from ALLUVIUM_BOOTSTRAP_KEY");
            }
            Bootstrap::AlreadyHasKeys => {}
        }
        let nats = match link_config(&config) {
            Some(link) => {
                let url = alluvium_nats::connection::redact(&link.connection.url);
                Some(
                    NatsLink::start_on_own_thread(&node, link)
                        .await
                        .with_context(|| format!("cannot start the NATS link to {url}"))?,
                )
            }
            None => None,
        };
        let mut webhook_stats = Vec::new();
        // In a cluster, notification nodes deliver webhooks (each from its own cursor).
        let delivers = roles.is_none_or(|r| r.notification);
        if !delivers && !webhooks.is_empty() {
            tracing::warn!("[[webhooks]] are delivered by notification nodes only; ignored on this node");
        }
        for webhook in webhooks.into_iter().filter(|_| delivers) {
            let stats = std::sync::Arc::new(Default::default());
            webhook_stats.push((webhook.name.clone(), std::sync::Arc::clone(&stats)));
            actix::spawn(alluvium_pipelines::notification::webhooks::deliver(
                node.commit_events().clone(),
                webhook,
                config.data_dir.clone(),
                stats,
            ));
        }
        let nats_link = nats.clone();
        let node_handle = node.clone();
        let state = AppState {
            node,
            nats,
            webhooks: webhook_stats,
            hooks,
            body: crate::http::BodyLimits {
                max_bytes: config.server.body_limit.0 as usize,
                read_timeout: config.server.body_timeout.0,
                max_ratio: config.server.max_compression_ratio.max(1),
            },
            metrics: Metrics::default(),
            default_durability: config.ingest.durability,
        };
        let mut server = HttpServer::new(move || {
            let metrics = state.metrics.clone();
            App::new()
                .app_data(web::Data::new(state.clone()))
                .configure(routes)
                .wrap_fn(move |req, srv| {
                    // One span per request; its outcome is counted by route pattern.
                    let span = tracing::info_span!("http", method = %req.method(), path = %req.path());
                    let started = std::time::Instant::now();
                    let metrics = metrics.clone();
                    let fut = srv.call(req);
                    async move {
                        let res = fut.await;
                        if let Ok(r) = &res {
                            let took = started.elapsed();
                            let route = r.request().match_pattern();
                            let status = r.status().as_u16();
                            metrics.request(route.as_deref().unwrap_or("unmatched"), status, took);
                            tracing::debug!(status, micros = took.as_micros() as u64, "request done");
                        }
                        res
                    }
                    .instrument(span)
                })
        });
        if config.server.workers > 0 {
            server = server.workers(config.server.workers);
        }
        let grace = config.server.shutdown_timeout.0;
        let server = server
            .client_request_timeout(config.server.header_timeout.0)
            .keep_alive(config.server.keep_alive.0)
            .disable_signals()
            .shutdown_timeout(grace.as_secs().max(1))
            .bind(config.server.listen)
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        for addr in server.addrs() {
            tracing::info!(%addr, data_dir = %config.data_dir.display(), "alluvium listening");
            // A line for scripts and tests that start the server on port 0.
            println!("listening on http://{addr}");
        }
        let server = server.run();
        let handle = server.handle();
        let running = actix::spawn(server);
        let signal = stop_signal().await?;
        let started = std::time::Instant::now();
        tracing::info!(
            signal,
            grace_ms = millis(grace),
            flush = config.server.flush_on_exit,
            "shutting down: no new requests; the ones in flight finish"
        );
        actix::spawn(async {
            if let Ok(signal) = stop_signal().await {
                // Nothing acknowledged is lost: the log has it and the next start replays it.
                tracing::warn!(signal, "second signal: exiting now");
                std::process::exit(1);
            }
        });
        // Stop taking work on both sources at once; each answers what it already took.
        let nats_stopped = async {
            if let Some(nats) = &nats_link
                && !nats.stop_ingest(grace).await
            {
                tracing::warn!(
                    "NATS ingest did not finish its messages in time; they will be delivered again"
                );
            }
        };
        tokio::join!(handle.stop(true), nats_stopped);
        running
            .await
            .context("http server task failed")?
            .context("http server failed")?;
        let (flushed, unflushed) = node_handle
            .shutdown(
                config.server.flush_on_exit,
                config.server.flush_on_exit_timeout.0,
            )
            .await
            .context("shutdown failed")?;
        if let Some(nats) = &nats_link {
            nats.close(NATS_CLOSE_TIMEOUT).await;
        }
        tracing::info!(
            elapsed_ms = millis(started.elapsed()),
            flushed,
            unflushed,
            "alluvium stopped"
        );
        Ok(())
    })
}

/// How long the NATS client gets to send what it buffers when the node stops.
const NATS_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Waits for SIGTERM or SIGINT; returns its name.
async fn stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
