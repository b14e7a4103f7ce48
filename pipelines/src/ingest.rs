//! The ingest stage's core, shared by every source: authenticate, validate, push back or make
//! durable, acknowledge.

use alluvium_actors::auth::{
    Authenticate, CreateKey, KeyInfo, KeySpec, ListKeys, NewKey, Principal, RevokeKey, Scope,
};
use alluvium_actors::catalog::TableEntry;
use alluvium_actors::catalog::messages::Snapshot;
use alluvium_actors::compaction::messages::{Compact, CompactionReport};
use alluvium_actors::ids::{TableName, TableRef, TenantId};
use alluvium_actors::memtable::messages::FlushTable;
use alluvium_actors::schema::messages::{
    CreateTable, Created, GetTable, ListTables, TableInfo, Validate, Validated,
};
use alluvium_actors::schema::translate::BodyFormat;
use alluvium_actors::schema::{FieldType, TableSchema};
use alluvium_actors::wal::actor::answer_retry;
use alluvium_actors::wal::dedupe::{IdempotencyKey, body_hash};
use alluvium_actors::wal::messages::{Append, Durability, Durable};
use bytes::Bytes;
use serde::Serialize;
use tracing::Instrument as _;

use crate::quota::Limit;
use crate::{Node, PipelineError};

/// The answer to an accepted batch: every event is durable at the stated level.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IngestAck {
    /// Number of events accepted.
    pub accepted: usize,
    /// Sequence of the first event.
    pub first_seq: u64,
    /// Sequence of the last event.
    pub last_seq: u64,
    /// Durability reached: `wal` (in the write-ahead log, fdatasync returned) or `received`
    /// (validated and sequenced, not yet on disk) when the request asked for no more; on an
    /// ingest node of a cluster, `replicated` (in the replicated log, acknowledged by a
    /// majority of its replicas).
    pub durability: &'static str,
    /// Present (and `true`) when this answers a retry: an earlier batch with the same
    /// idempotency key was stored, and this one was not stored again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

impl IngestAck {
    pub(crate) fn from_durable(d: Durable, durability: Durability) -> IngestAck {
        IngestAck {
            accepted: (d.last_seq + 1).saturating_sub(d.first_seq) as usize,
            first_seq: d.first_seq,
            last_seq: d.last_seq,
            // A duplicate's first batch was answered only once durable (or is durable by now:
            // the index remembers keys only after their group's fsync).
            durability: if d.duplicate {
                Durability::Wal.as_str()
            } else {
                durability.as_str()
            },
            duplicate: d.duplicate,
        }
    }
}

/// Appends a validated batch to a cluster's replicated log (an ingest node's durability).
pub(crate) async fn append_to_log(
    log: &crate::cluster::log::ReplicatedLog,
    table: &TableRef,
    validated: Validated,
    key: Option<&IdempotencyKey>,
) -> Result<IngestAck, PipelineError> {
    let appended = log
        .append(table, validated.schema_version, validated.rows, key)
        .instrument(tracing::info_span!("log_append", table = %table))
        .await?;
    Ok(IngestAck::replicated(&appended))
}

/// The WAL append of a validated batch.
pub(crate) fn wal_append(
    table: TableRef,
    validated: Validated,
    durability: Durability,
    key: Option<IdempotencyKey>,
    trace: Option<alluvium_actors::trace::TraceLink>,
) -> Append {
    Append {
        table,
        schema: validated.schema,
        schema_version: validated.schema_version,
        rows: validated.rows,
        durability,
        idempotency_key: key,
        trace,
    }
}

pub(crate) fn no_ingest_role() -> PipelineError {
    PipelineError::WrongRole("this node has no ingest role: send batches to an ingest node".into())
}

/// What [`Node::admit`] decided.
pub(crate) enum Admitted {
    /// A retry of a stored batch: its first answer.
    Retry(IngestAck),
    /// To validate and append, with its idempotency key.
    Go(TableRef, Option<IdempotencyKey>),
}

impl IngestAck {
    /// The answer of an ingest node of a cluster: the batch is in the replicated log.
    fn replicated(a: &crate::cluster::log::Appended) -> IngestAck {
        IngestAck {
            accepted: (a.last_seq + 1 - a.first_seq) as usize,
            first_seq: a.first_seq,
            last_seq: a.last_seq,
            durability: REPLICATED,
            duplicate: a.duplicate,
        }
    }
}

/// The durability of a batch acknowledged by an ingest node of a cluster: stored by a majority
/// of the replicated log's replicas.
pub const REPLICATED: &str = "replicated";

/// Where a batch came from (for rejects and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /v1/tables/{table}/events`.
    Http,
    /// A NATS ingest subject.
    Nats,
    /// `alluvium rejects replay`.
    Replay,
    /// The `ALLUVIUM_INGEST` stream (JetStream ingest mode), which publishes its own rejects.
    JetStream,
    /// A signed inbound webhook, `POST /v1/hooks/{name}`.
    Webhook,
}

impl Source {
    /// Its name in rejects.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Nats => "nats",
            Source::Replay => "replay",
            Source::JetStream => "jetstream",
            Source::Webhook => "webhook",
        }
    }
}

/// One batch to ingest, with everything that shapes its handling.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    /// The table, a name within the principal's tenant.
    pub table: String,
    /// The events.
    pub body: Bytes,
    /// How the body is framed.
    pub format: BodyFormat,
    /// When to answer.
    pub durability: Durability,
    /// A producer's idempotency key (already checked for length and characters).
    pub idempotency_key: Option<String>,
    /// What the key's body hash is taken over when not `body`: a webhook's signed bytes, so
    /// that request headers mapped into columns cannot make a redelivery look different.
    pub idempotency_body: Option<Bytes>,
    /// Where it came from.
    pub source: Source,
}

impl Node {
    /// Authenticates a credential (API key or JWT).
    pub async fn authenticate(&self, credential: &str) -> Result<Principal, PipelineError> {
        Ok(self
            .auth
            .send(Authenticate {
                credential: credential.to_string(),
            })
            .instrument(tracing::info_span!("auth"))
            .await??)
    }

    pub(crate) fn table_ref(principal: &Principal, table: &str) -> Result<TableRef, PipelineError> {
        Ok(TableRef::new(
            principal.tenant.clone(),
            TableName::new(table)?,
        ))
    }

    /// The table `table` of the principal's tenant, if a grant allows `scope` on it (a bad name
    /// is 400 `invalid_name`, a missing grant 403 `forbidden`).
    pub(crate) fn authorized(
        principal: &Principal,
        scope: Scope,
        table: &str,
    ) -> Result<TableRef, PipelineError> {
        let table = Self::table_ref(principal, table)?;
        principal.require_on(scope, &table.table)?;
        Ok(table)
    }

    /// Validates a batch against the table's schema and makes it durable; the whole batch or
    /// nothing. Answers once `durability` is reached. Needs the `ingest` scope.
    pub async fn ingest(
        &self,
        principal: &Principal,
        table: &str,
        body: Bytes,
        format: BodyFormat,
        durability: Durability,
    ) -> Result<IngestAck, PipelineError> {
        let request = IngestRequest {
            table: table.to_string(),
            body,
            format,
            durability,
            idempotency_key: None,
            idempotency_body: None,
            source: Source::Http,
        };
        self.ingest_batch(principal, request).await
    }

    /// [`Node::ingest`] with every option: a batch with an idempotency key seen within the
    /// window is answered with the first batch's sequences (`duplicate: true`) and not stored
    /// again. A batch that fails validation is also handed to the rejects sink, if one is set.
    pub async fn ingest_batch(
        &self,
        principal: &Principal,
        request: IngestRequest,
    ) -> Result<IngestAck, PipelineError> {
        let (table, key) = match self.admit(principal, &request)? {
            Admitted::Retry(ack) => return Ok(ack),
            Admitted::Go(table, key) => (table, key),
        };
        let validated = match self
            .schema
            .send(Validate {
                table: table.clone(),
                body: request.body.clone(),
                format: request.format,
            })
            .instrument(tracing::info_span!("schema_validate", table = %table))
            .await?
        {
            Ok(v) => v,
            Err(e) => {
                let e = PipelineError::Schema(e);
                self.reject(&table, &request, &e);
                return Err(e);
            }
        };
        self.take_events(principal, &request, &validated)?;
        if let Some(log) = &self.log {
            return append_to_log(log, &table, validated, key.as_ref()).await;
        }
        let Some(wal) = &self.wal else {
            return Err(no_ingest_role());
        };
        let rows = validated.rows.len();
        let span = tracing::info_span!("wal_append", table = %table, rows);
        let durable = wal
            .send(wal_append(
                table,
                validated,
                request.durability,
                key,
                span.in_scope(alluvium_actors::trace::current),
            ))
            .instrument(span)
            .await??;
        Ok(IngestAck::from_durable(durable, request.durability))
    }

    /// The checks of a batch before its validation: the grant, a retry of a stored batch
    /// (answered at once, before validation, which the schema might not pass any more; the
    /// WAL checks again, atomically, at append time), the memory budget and the byte quota
    /// (counted before the batch costs anything; events once they are known).
    pub(crate) fn admit(
        &self,
        principal: &Principal,
        request: &IngestRequest,
    ) -> Result<Admitted, PipelineError> {
        let table = Self::authorized(principal, Scope::Ingest, &request.table)?;
        let key = request.idempotency_key.clone().map(|key| IdempotencyKey {
            key,
            body_hash: body_hash(request.idempotency_body.as_ref().unwrap_or(&request.body)),
        });
        if let Some(key) = &key
            && let Some(durable) = answer_retry(&self.dedupe, &self.wal_stats, &table, key)?
        {
            return Ok(Admitted::Retry(IngestAck::from_durable(
                durable,
                request.durability,
            )));
        }
        self.check_budget()?;
        self.quotas
            .take(principal, Limit::Bytes, request.body.len() as u64)?;
        Ok(Admitted::Go(table, key))
    }

    /// Charges a validated batch's events to the quota; a refused batch costs nothing.
    pub(crate) fn take_events(
        &self,
        principal: &Principal,
        request: &IngestRequest,
        validated: &Validated,
    ) -> Result<(), PipelineError> {
        let taken = self
            .quotas
            .take(principal, Limit::Events, validated.rows.len() as u64);
        if taken.is_err() {
            self.quotas
                .give_back(principal, Limit::Bytes, request.body.len() as u64);
        }
        taken
    }

    /// Deletes a key of an upsert table (`ingest` scope): appends a tombstone, which hides every
    /// older version. `key` is the key's value as written in a URL path segment (a number, or
    /// text taken literally), or, for a composite key, a JSON array of its values in key order.
    pub async fn delete_key(
        &self,
        principal: &Principal,
        table: &str,
        key: &str,
        durability: Durability,
    ) -> Result<IngestAck, PipelineError> {
        let info = self
            .table_info(Self::authorized(principal, Scope::Ingest, table)?)
            .await?;
        let event = delete_event(&info.schema, key)?;
        let body = Bytes::from(
            serde_json::to_vec(&event).map_err(|e| PipelineError::InvalidKey(e.to_string()))?,
        );
        self.ingest(principal, table, body, BodyFormat::Json, durability)
            .await
    }

    /// Creates a table of the principal's tenant (`admin` scope). Idempotent for an identical
    /// definition.
    pub async fn create_table(
        &self,
        principal: &Principal,
        table: &str,
        schema: TableSchema,
    ) -> Result<Created, PipelineError> {
        let table = Self::authorized(principal, Scope::Admin, table)?;
        Ok(self.schema.send(CreateTable { table, schema }).await??)
    }

    /// Looks up a table of the principal's tenant (`query` scope).
    pub async fn table(
        &self,
        principal: &Principal,
        table: &str,
    ) -> Result<TableInfo, PipelineError> {
        self.table_info(Self::authorized(principal, Scope::Query, table)?)
            .await
    }

    pub(crate) async fn table_info(&self, table: TableRef) -> Result<TableInfo, PipelineError> {
        let missing = table.to_string();
        self.schema.send(GetTable { table }).await?.ok_or_else(|| {
            PipelineError::Schema(alluvium_actors::schema::error::SchemaError::UnknownTable {
                table: missing,
            })
        })
    }

    /// Lists the principal's tables that it may query (`query` scope on at least one).
    pub async fn tables(&self, principal: &Principal) -> Result<Vec<TableInfo>, PipelineError> {
        principal.require_some(Scope::Query)?;
        let mut tables = self
            .schema
            .send(ListTables {
                tenant: principal.tenant.clone(),
            })
            .await?;
        tables.retain(|t| principal.may(Scope::Query, &t.table.table));
        Ok(tables)
    }

    /// Flushes a table's memtables to Parquet now and waits for the commit (`admin` scope).
    /// Returns the catalog version that includes them, if anything was flushed.
    pub async fn flush(
        &self,
        principal: &Principal,
        table: &str,
    ) -> Result<Option<u64>, PipelineError> {
        Self::authorized(principal, Scope::Admin, table)?;
        let info = self.table(principal, table).await?;
        let state = self
            .memtable
            .send(FlushTable { table: info.table })
            .await??;
        Ok(state.map(|s| s.version))
    }

    /// The table's catalog entry now (`query` scope): live files with their statistics, files
    /// replaced by compactions and awaiting deletion, and the catalog version read.
    pub async fn files(
        &self,
        principal: &Principal,
        table: &str,
    ) -> Result<(u64, std::sync::Arc<TableEntry>), PipelineError> {
        let info = self.table(principal, table).await?;
        let state = self.catalog.send(Snapshot).await?;
        let entry = state.table(&info.table).cloned().ok_or_else(|| {
            PipelineError::Schema(alluvium_actors::schema::error::SchemaError::UnknownTable {
                table: info.table.to_string(),
            })
        })?;
        Ok((state.version, entry))
    }

    /// Compacts a table now (`admin` scope): every partition's small files are merged, and the
    /// report says what was replaced and written.
    pub async fn compact(
        &self,
        principal: &Principal,
        table: &str,
    ) -> Result<CompactionReport, PipelineError> {
        Self::authorized(principal, Scope::Admin, table)?;
        let info = self.table(principal, table).await?;
        Ok(self
            .compaction
            .send(Compact {
                table: info.table,
                force: true,
            })
            .await??)
    }

    /// Creates an API key. An admin may create keys for its own tenant; the admin of the
    /// operator tenant (`default`) for any tenant.
    pub async fn create_key(
        &self,
        principal: &Principal,
        spec: KeySpec,
    ) -> Result<NewKey, PipelineError> {
        principal.require_admin_of(&spec.tenant)?;
        Ok(self.auth.send(CreateKey { spec }).await??)
    }

    /// Lists the API keys (never their secrets) of `tenant` (default: the principal's); the
    /// operator tenant's admin may list any tenant's, or every key with `all`.
    pub async fn keys(
        &self,
        principal: &Principal,
        tenant: Option<TenantId>,
        all: bool,
    ) -> Result<Vec<KeyInfo>, PipelineError> {
        let tenant = match (all, tenant) {
            (true, _) => {
                principal.require(Scope::Admin)?;
                if principal.tenant.as_str() != alluvium_actors::auth::OPERATOR_TENANT {
                    return Err(alluvium_actors::auth::AuthError::Forbidden {
                        tenant: principal.tenant.to_string(),
                        needed: Scope::Admin,
                        table: None,
                    }
                    .into());
                }
                None
            }
            (false, t) => {
                let t = t.unwrap_or_else(|| principal.tenant.clone());
                principal.require_admin_of(&t)?;
                Some(t)
            }
        };
        Ok(self.auth.send(ListKeys { tenant }).await?)
    }

    /// Revokes the API key `id` (admin of its tenant, or of the operator tenant); `None` when
    /// no such key is visible to the principal. Once answered, the key is refused by this node.
    pub async fn revoke_key(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<Option<KeyInfo>, PipelineError> {
        Ok(self
            .auth
            .send(RevokeKey {
                id: id.to_string(),
                by: principal.clone(),
            })
            .await??)
    }
}

impl Node {
    /// Hands a batch that failed validation to the rejects sink, if one is set. Only errors
    /// about the batch itself (4xx schema errors) are rejects; nothing is sent for failed
    /// authentication, overload or internal errors.
    pub(crate) fn reject(&self, table: &TableRef, request: &IngestRequest, error: &PipelineError) {
        if matches!(request.source, Source::Replay | Source::JetStream) {
            return;
        }
        let (status, code) = error.status_and_code();
        if (400..500).contains(&status) {
            let (tenant, table) = (table.tenant.as_str(), table.table.as_str());
            self.publish_reject(tenant, table, request, status, code, &error.to_string());
        }
    }

    /// Hands a refused batch to the rejects sink, if one is set. The payload is kept up to
    /// [`MAX_REJECT_PAYLOAD`] bytes; a larger one is left out (the reject still says why and
    /// how large it was), so a flood of large bad batches cannot fill memory.
    pub fn publish_reject(
        &self,
        tenant: &str,
        table: &str,
        request: &IngestRequest,
        status: u16,
        code: &str,
        reason: &str,
    ) {
        let Some(sink) = self.rejects.get() else {
            return;
        };
        let omitted = request.body.len() > MAX_REJECT_PAYLOAD;
        let (payload, payload_encoding) = if omitted {
            (String::new(), "omitted".to_string())
        } else {
            alluvium_nats::Reject::encode_payload(&request.body)
        };
        let reject = alluvium_nats::Reject {
            tenant: tenant.to_string(),
            table: table.to_string(),
            code: code.to_string(),
            status,
            reason: reason.to_string(),
            rejected_at: chrono_now(),
            source: request.source.as_str().to_string(),
            idempotency_key: request.idempotency_key.clone(),
            format: match request.format {
                BodyFormat::Json => "json",
                BodyFormat::Ndjson => "ndjson",
            }
            .to_string(),
            payload,
            payload_encoding,
            payload_bytes: request.body.len(),
        };
        sink.send(reject);
    }
}

/// Largest payload a reject carries: a larger one could not be published anyway (NATS's
/// default `max_payload` is 1 MiB, and the reject's JSON adds to it).
pub const MAX_REJECT_PAYLOAD: usize = 512 << 10;

fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The delete event for `key` of a table with this schema.
pub(crate) fn delete_event(
    schema: &TableSchema,
    key: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, PipelineError> {
    use serde_json::Value as J;
    let cols = &schema.primary_key;
    if cols.is_empty() {
        return Err(PipelineError::InvalidKey(
            "the table has no primary key; only upsert tables can delete rows".into(),
        ));
    }
    let values: Vec<J> = if cols.len() == 1 {
        let ty = schema.field(&cols[0]).map(|f| &f.ty);
        // A key of a numeric, timestamp or date column may be written as a number; anything
        // else (and any text that is not a number) is the value itself.
        let numeric = matches!(
            ty,
            Some(
                FieldType::Int32
                    | FieldType::Int64
                    | FieldType::UInt64
                    | FieldType::Timestamp(_)
                    | FieldType::Date
            )
        );
        let value = match serde_json::from_str::<J>(key) {
            Ok(n @ J::Number(_)) if numeric => n,
            Ok(b @ J::Bool(_)) if ty == Some(&FieldType::Bool) => b,
            _ => J::String(key.to_string()),
        };
        vec![value]
    } else {
        match serde_json::from_str::<J>(key) {
            Ok(J::Array(items)) if items.len() == cols.len() => items,
            _ => {
                return Err(PipelineError::InvalidKey(format!(
                    "the key has {} columns ({}); write it as a JSON array of their values, e.g. [1,\"a\"]",
                    cols.len(),
                    cols.join(", ")
                )));
            }
        }
    };
    let mut event: serde_json::Map<String, J> = cols.iter().cloned().zip(values).collect();
    event.insert("_op".into(), J::String("delete".into()));
    Ok(event)
}
