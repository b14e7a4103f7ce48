//! Table schemas: definitions, the registry of versions per table, and the translation of JSON
//! batches into typed rows and of rows into Arrow record batches.

pub mod actor;
pub mod arrow;
pub mod error;
pub mod evolve;
pub mod messages;
pub mod translate;
pub mod types;
mod values;

pub use error::SchemaError;
pub use translate::{BatchLimits, BodyFormat, parse_batch};
pub use types::{Evolution, Field, FieldType, PartitionBy, TableSchema, TimeUnit};
