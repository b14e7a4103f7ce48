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
/// different definition for an existing table is refused.
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
    /// False when the identical table already existed.
    pub created: bool,
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
