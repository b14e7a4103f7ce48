//! Fresh rows across nodes: a query on a node that does not own the table's shard reads the
//! committed files itself and asks the owner for its memtable rows above them.
//!
//! A reader finds the owner in the shard's lease (KV bucket `alluvium_shards`, key
//! `shard.{tenant}.{table}`), which names the subject the owner answers on,
//! `{prefix}.query.{node}`. The request is `{"tenant": .., "table": ..}` with a reply inbox;
//! the owner takes its memtables, then its catalog snapshot (the order of a local read, so no
//! row falls between the two), and answers with one or more chunks to the inbox, each within
//! the server's `max_payload`:
//! - headers `Alluvium-Catalog-Version` and `Alluvium-Committed` (the snapshot's version and
//!   committed sequence), `Alluvium-Fresh-Last: true` on the last chunk, or
//!   `Alluvium-Fresh-Error` when it cannot answer (it does not own the shard);
//! - a payload of `[u32 length][log message]...`: the rows above the committed sequence as
//!   [`WalRecord`] log messages, each a run of consecutive sequences.
//!
//! The reader brings its catalog up to the owner's version first, then keeps the rows above
//! its own committed sequence. When no node owns the shard (the owner died and no successor
//! has claimed it yet) or the owner does not answer in time, the read holds the committed rows
//! only, and says so ([`Freshness::CommittedOnly`]).

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use alluvium_actors::catalog::messages::Snapshot;
use alluvium_actors::catalog::{CatalogActor, Fences};
use alluvium_actors::ids::{Seq, TableName, TableRef, TenantId};
use alluvium_actors::memtable::MemtableActor;
use alluvium_actors::memtable::messages::Read;
use alluvium_actors::row::Row;
use alluvium_actors::wal::WalRecord;
use alluvium_nats::async_nats::{self, HeaderMap};
use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

/// Where a read's memtable rows came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// This node's memtables (a standalone node, or the shard's owner).
    Local,
    /// The memtables of the shard's owner, this node.
    Owner(String),
    /// Committed rows only: the reason says why the owner's rows are missing.
    CommittedOnly(String),
}

impl Freshness {
    /// The value of the `Alluvium-Fresh-Rows` response header.
    pub fn header(&self) -> String {
        match self {
            Freshness::Local => "local".into(),
            Freshness::Owner(node) => format!("owner={node}"),
            Freshness::CommittedOnly(_) => "committed-only".into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct FreshRequest {
    tenant: String,
    table: String,
}

/// What an owner answered.
#[derive(Debug, Default)]
pub struct FreshRows {
    /// The owner's catalog version when it read its memtables.
    pub catalog_version: u64,
    /// Its committed sequence of the table then.
    pub committed: Seq,
    /// Rows above it, in runs of consecutive sequences.
    pub records: Vec<WalRecord>,
}

const VERSION_HEADER: &str = "Alluvium-Catalog-Version";
const COMMITTED_HEADER: &str = "Alluvium-Committed";
const LAST_HEADER: &str = "Alluvium-Fresh-Last";
const ERROR_HEADER: &str = "Alluvium-Fresh-Error";

/// Answers fresh-row requests on `subject` until the subscription ends.
pub async fn serve(
    client: async_nats::Client,
    subject: String,
    subjects: alluvium_nats::Subjects,
    memtable: Addr<MemtableActor>,
    catalog: Addr<CatalogActor>,
    fences: Fences,
) {
    let mut sub = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(subject, error = %e, "cannot answer fresh-row requests");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let (client, memtable, catalog, fences, subjects) = (
            client.clone(),
            memtable.clone(),
            catalog.clone(),
            fences.clone(),
            subjects.clone(),
        );
        actix::spawn(async move {
            let chunks = match answer(
                &msg.payload,
                &memtable,
                &catalog,
                &fences,
                &client,
                &subjects,
            )
            .await
            {
                Ok(chunks) => chunks,
                Err(e) => {
                    let mut h = HeaderMap::new();
                    h.insert(ERROR_HEADER, e.as_str());
                    h.insert(LAST_HEADER, "true");
                    vec![(h, Bytes::new())]
                }
            };
            for (headers, payload) in chunks {
                if let Err(e) = client
                    .publish_with_headers(reply.clone(), headers, payload)
                    .await
                {
                    tracing::warn!(error = %e, "cannot answer a fresh-row request");
                    return;
                }
            }
            let _ = client.flush().await;
        });
    }
}

/// How long an owner waits for its memtables to reach the end of the shard's log.
const CATCH_UP: Duration = Duration::from_secs(3);

/// The owner's memtables, then its catalog snapshot (the order of a local read, so no row
/// falls between the two), once they hold every message the shard's log had when asked: a
/// batch acknowledged before the read is in the answer (read your writes), unless the owner is
/// more than [`CATCH_UP`] behind.
pub async fn caught_up(
    client: &async_nats::Client,
    subjects: &alluvium_nats::Subjects,
    table: &TableRef,
    memtable: &Addr<MemtableActor>,
    catalog: &Addr<CatalogActor>,
) -> Result<
    (
        alluvium_actors::memtable::messages::MemSnapshot,
        Arc<alluvium_actors::catalog::CatalogState>,
    ),
    String,
> {
    let target = match subjects.log(table.tenant.as_str(), table.table.as_str()) {
        Ok(subject) => {
            let js = alluvium_nats::async_nats::jetstream::new(client.clone());
            match js
                .get_stream_no_info(alluvium_nats::jetstream::INGEST_STREAM)
                .await
            {
                Ok(stream) => stream
                    .direct_get_last_for_subject(subject)
                    .await
                    .ok()
                    .map(|m| alluvium_actors::ids::cluster_seq(m.sequence, 0)),
                Err(_) => None,
            }
        }
        Err(_) => None,
    };
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let mem = memtable
            .send(Read {
                table: table.clone(),
            })
            .await
            .map_err(|e| e.to_string())?;
        let state = catalog.send(Snapshot).await.map_err(|e| e.to_string())?;
        let committed = state.table(table).map_or(0, |e| e.committed_seq);
        let reached = target.is_none_or(|t| mem.upto.max(committed) >= t);
        if reached || tokio::time::Instant::now() >= deadline {
            return Ok((mem, state));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn answer(
    payload: &[u8],
    memtable: &Addr<MemtableActor>,
    catalog: &Addr<CatalogActor>,
    fences: &Fences,
    client: &async_nats::Client,
    subjects: &alluvium_nats::Subjects,
) -> Result<Vec<(HeaderMap, Bytes)>, String> {
    let req: FreshRequest =
        serde_json::from_slice(payload).map_err(|e| format!("bad request: {e}"))?;
    let table = TableRef::new(
        TenantId::new(&req.tenant).map_err(|e| e.to_string())?,
        TableName::new(&req.table).map_err(|e| e.to_string())?,
    );
    fences
        .epoch(&table)
        .map_err(|_| format!("this node does not own the shard of {table}"))?;
    let (mem, state) = caught_up(client, subjects, &table, memtable, catalog).await?;
    let committed = state.table(&table).map_or(0, |e| e.committed_seq);
    let mut records = Vec::new();
    for m in &mem.memtables {
        let mut rows: Vec<(Seq, i64, Row)> = Vec::new();
        m.for_each(committed, mem.upto, |seq, r| {
            rows.push((seq, r.ingested_at_us, r.row.clone()))
        });
        rows.sort_by_key(|(seq, _, _)| *seq);
        let mut run: Option<WalRecord> = None;
        for (seq, at, row) in rows {
            let joins = run
                .as_ref()
                .is_some_and(|r| r.last_seq() + 1 == seq && r.ingested_at_us == at);
            if !joins {
                records.extend(run.take());
                run = Some(WalRecord {
                    table: table.clone(),
                    schema_version: m.schema_version(),
                    first_seq: seq,
                    ingested_at_us: at,
                    rows: Vec::new(),
                    idempotency_key: None,
                });
            }
            if let Some(r) = run.as_mut() {
                r.rows.push(row);
            }
        }
        records.extend(run);
    }
    // Chunks within the server's limit (a record larger than it goes alone and may be refused;
    // memtable runs are at most one log message, which fit).
    let limit = client
        .server_info()
        .max_payload
        .saturating_sub(4096)
        .max(1024);
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    for r in &records {
        let msg = r.encode_message();
        if !current.is_empty() && current.len() + msg.len() + 4 > limit {
            chunks.push(std::mem::take(&mut current));
        }
        current.extend_from_slice(&(msg.len() as u32).to_le_bytes());
        current.extend_from_slice(&msg);
    }
    chunks.push(current);
    let n = chunks.len();
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            let mut h = HeaderMap::new();
            h.insert(VERSION_HEADER, state.version.to_string().as_str());
            h.insert(COMMITTED_HEADER, committed.to_string().as_str());
            if i + 1 == n {
                h.insert(LAST_HEADER, "true");
            }
            (h, Bytes::from(payload))
        })
        .collect())
}

/// Asks the owner answering on `subject` for its rows of `table`.
pub async fn fetch(
    client: &async_nats::Client,
    subject: &str,
    table: &TableRef,
    timeout: Duration,
) -> Result<FreshRows, String> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    let req = serde_json::to_vec(&FreshRequest {
        tenant: table.tenant.to_string(),
        table: table.table.to_string(),
    })
    .map_err(|e| e.to_string())?;
    client
        .publish_with_reply(subject.to_string(), inbox, Bytes::from(req))
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = FreshRows::default();
    loop {
        let msg = tokio::time::timeout_at(deadline, sub.next())
            .await
            .map_err(|_| format!("the owner did not answer within {timeout:?}"))?
            .ok_or("the reply subscription ended")?;
        let headers = msg.headers.unwrap_or_default();
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        if let Some(e) = get(ERROR_HEADER) {
            return Err(e);
        }
        out.catalog_version = get(VERSION_HEADER)
            .and_then(|v| v.parse().ok())
            .ok_or("an answer without catalog version")?;
        out.committed = get(COMMITTED_HEADER)
            .and_then(|v| v.parse().ok())
            .ok_or("an answer without committed sequence")?;
        let mut buf: &[u8] = &msg.payload;
        while buf.len() >= 4 {
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            let body = buf.get(4..4 + len).ok_or("a truncated answer")?;
            out.records.push(WalRecord::decode_message(body)?);
            buf = &buf[4 + len..];
        }
        if get(LAST_HEADER).is_some() {
            return Ok(out);
        }
    }
}

/// The records' rows above `committed` as memtables of their schema versions, for a snapshot.
pub fn memtables(
    records: Vec<WalRecord>,
    committed: Seq,
    schema_at: impl Fn(u32) -> Option<Arc<alluvium_actors::schema::TableSchema>>,
) -> Result<(Vec<Arc<alluvium_actors::memtable::Memtable>>, Seq), String> {
    use std::collections::BTreeMap;
    let mut by_version: BTreeMap<u32, Arc<alluvium_actors::memtable::Memtable>> = BTreeMap::new();
    let mut upto = 0;
    for r in records {
        let schema = schema_at(r.schema_version)
            .ok_or_else(|| format!("schema version {} is not in the catalog", r.schema_version))?;
        let m = by_version.entry(r.schema_version).or_insert_with(|| {
            Arc::new(alluvium_actors::memtable::Memtable::new(
                u64::MAX - u64::from(r.schema_version),
                schema,
                r.schema_version,
            ))
        });
        for (i, row) in r.rows.into_iter().enumerate() {
            let seq = r.first_seq + i as u64;
            if seq > committed {
                m.insert(seq, r.ingested_at_us, row);
                upto = upto.max(seq);
            }
        }
    }
    Ok((by_version.into_values().collect(), upto))
}
