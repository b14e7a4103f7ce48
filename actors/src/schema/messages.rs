//! Messages of the schema registry actor.

use std::fmt;
use std::sync::Arc;

use actix::Message;
use bytes::Bytes;

use super::TableSchema;
use super::error::SchemaError;
use super::translate::BodyFormat;
use crate::ids::{TableRef, TenantId};
use crate::row::Row;

/// A registered table: its current schema version and definition.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    /// The table.
    pub table: TableRef,
    /// Current schema version.
    pub version: u32,
    /// Current definition.
    pub schema: Arc<TableSchema>,
}

/// Registers a table. Registering the same definition again is a no-op (`created: false`); a
/// different definition for an existing table is a schema change, made as a new version when
/// the table's evolution rules allow it (see [`crate::schema::evolve`]) and refused otherwise.
#[derive(Debug, Message)]
#[rtype(result = "Result<Created, SchemaError>")]
pub struct CreateTable {
    /// The table.
    pub table: TableRef,
    /// Its definition.
    pub schema: TableSchema,
}

/// Outcome of [`CreateTable`].
#[derive(Debug, Clone)]
pub struct Created {
    /// The table as registered.
    pub info: TableInfo,
    /// False when the table already existed.
    pub created: bool,
    /// The changes a new schema version made to an existing table, in words (empty when the
    /// table was created or the definition was the same).
    pub changes: Vec<String>,
}

/// Makes `schema` the next version of an existing table, when its evolution rules allow it.
#[derive(Debug, Message)]
#[rtype(result = "Result<Evolved, SchemaError>")]
pub struct Evolve {
    /// The table.
    pub table: TableRef,
    /// The new definition.
    pub schema: TableSchema,
    /// Evolve only if the current version is still this one (a change inferred from data that
    /// another batch may already have made); otherwise answer the current table unchanged.
    pub if_version: Option<u32>,
}

/// Outcome of [`Evolve`].
#[derive(Debug, Clone)]
pub struct Evolved {
    /// The table as registered now.
    pub info: TableInfo,
    /// What changed, in words; empty when nothing did.
    pub changes: Vec<String>,
}

/// Looks up a table.
#[derive(Debug, Message)]
#[rtype(result = "Option<TableInfo>")]
pub struct GetTable {
    /// The table.
    pub table: TableRef,
}

/// Lists a tenant's tables, by name.
#[derive(Debug, Message)]
#[rtype(result = "Vec<TableInfo>")]
pub struct ListTables {
    /// The tenant.
    pub tenant: TenantId,
}

/// Validates a request body against a table's current schema (off the arbiter) and returns
/// the typed rows; the whole batch or nothing.
#[derive(Message)]
#[rtype(result = "Result<Validated, SchemaError>")]
pub struct Validate {
    /// The table.
    pub table: TableRef,
    /// The raw body.
    pub body: Bytes,
    /// JSON or NDJSON.
    pub format: BodyFormat,
}

impl fmt::Debug for Validate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validate")
            .field("table", &self.table)
            .field("bytes", &self.body.len())
            .finish()
    }
}

/// Several [`Validate`]s in one message, each checked on its own (one body's error does not
/// affect another's); the answers come in the same order.
#[derive(Debug, Message)]
#[rtype(result = "Vec<Result<Validated, SchemaError>>")]
pub struct ValidateMany(pub Vec<Validate>);

/// Rows that passed validation.
pub struct Validated {
    /// Schema they were checked against.
    pub schema: Arc<TableSchema>,
    /// Its version.
    pub schema_version: u32,
    /// The rows.
    pub rows: Vec<Row>,
}

impl fmt::Debug for Validated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validated")
            .field("schema_version", &self.schema_version)
            .field("rows", &self.rows.len())
            .finish()
    }
}

/// Brings the registry up to a catalog snapshot: tables created, and schema versions made, by
/// other nodes sharing the lake. Entries already at or past the snapshot's version are kept.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Sync {
    /// The catalog as read now.
    pub state: Arc<crate::catalog::CatalogState>,
}
