//! The ingest stage's core, shared by every source: authenticate, validate, push back or make
//! durable, acknowledge.

use std::collections::BTreeSet;

use alluvium_actors::auth::{Authenticate, CreateKey, NewKey, Principal, Scope};
use alluvium_actors::ids::{TableName, TableRef, TenantId};
use alluvium_actors::memtable::messages::FlushTable;
use alluvium_actors::schema::TableSchema;
use alluvium_actors::schema::messages::{
    CreateTable, Created, GetTable, ListTables, TableInfo, Validate,
};
use alluvium_actors::schema::translate::BodyFormat;
use alluvium_actors::wal::messages::{Append, Durability};
use bytes::Bytes;
use serde::Serialize;

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
    /// (validated and sequenced, not yet on disk) when the request asked for no more.
    pub durability: &'static str,
}

impl Node {
    /// Authenticates a credential (API key or JWT).
    pub async fn authenticate(&self, credential: &str) -> Result<Principal, PipelineError> {
        Ok(self
            .auth
            .send(Authenticate {
                credential: credential.to_string(),
            })
            .await??)
    }

    fn table_ref(principal: &Principal, table: &str) -> Result<TableRef, PipelineError> {
        Ok(TableRef::new(
            principal.tenant.clone(),
            TableName::new(table)?,
        ))
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
        principal.require(Scope::Ingest)?;
        let table = Self::table_ref(principal, table)?;
        self.check_budget()?;
        let validated = self
            .schema
            .send(Validate {
                table: table.clone(),
                body,
                format,
            })
            .await??;
        let accepted = validated.rows.len();
        let durable = self
            .wal
            .send(Append {
                table,
                schema: validated.schema,
                schema_version: validated.schema_version,
                rows: validated.rows,
                durability,
            })
            .await??;
        Ok(IngestAck {
            accepted,
            first_seq: durable.first_seq,
            last_seq: durable.last_seq,
            durability: durability.as_str(),
        })
    }

    /// Creates a table of the principal's tenant (`admin` scope). Idempotent for an identical
    /// definition.
    pub async fn create_table(
        &self,
        principal: &Principal,
        table: &str,
        schema: TableSchema,
    ) -> Result<Created, PipelineError> {
        principal.require(Scope::Admin)?;
        let table = Self::table_ref(principal, table)?;
        Ok(self.schema.send(CreateTable { table, schema }).await??)
    }

    /// Looks up a table of the principal's tenant (`query` scope).
    pub async fn table(
        &self,
        principal: &Principal,
        table: &str,
    ) -> Result<TableInfo, PipelineError> {
        principal.require(Scope::Query)?;
        let table = Self::table_ref(principal, table)?;
        self.schema
            .send(GetTable {
                table: table.clone(),
            })
            .await?
            .ok_or_else(|| {
                PipelineError::Schema(alluvium_actors::schema::error::SchemaError::UnknownTable {
                    table: table.to_string(),
                })
            })
    }

    /// Lists the principal's tables (`query` scope).
    pub async fn tables(&self, principal: &Principal) -> Result<Vec<TableInfo>, PipelineError> {
        principal.require(Scope::Query)?;
        Ok(self
            .schema
            .send(ListTables {
                tenant: principal.tenant.clone(),
            })
            .await?)
    }

    /// Flushes a table's memtables to Parquet now and waits for the commit (`admin` scope).
    /// Returns the catalog version that includes them, if anything was flushed.
    pub async fn flush(
        &self,
        principal: &Principal,
        table: &str,
    ) -> Result<Option<u64>, PipelineError> {
        principal.require(Scope::Admin)?;
        let info = self.table(principal, table).await?;
        let state = self
            .memtable
            .send(FlushTable { table: info.table })
            .await??;
        Ok(state.map(|s| s.version))
    }

    /// Creates an API key. An admin may create keys for its own tenant; the admin of the
    /// operator tenant (`default`) for any tenant.
    pub async fn create_key(
        &self,
        principal: &Principal,
        tenant: TenantId,
        scopes: BTreeSet<Scope>,
        label: Option<String>,
    ) -> Result<NewKey, PipelineError> {
        principal.require_admin_of(&tenant)?;
        Ok(self
            .auth
            .send(CreateKey {
                tenant,
                scopes,
                label,
            })
            .await??)
    }
}
