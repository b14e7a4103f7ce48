//! The schema registry actor: current definition of every table, creation through the
//! catalog, and validation of request bodies.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::{
    Actor, ActorFutureExt, Addr, AtomicResponse, Context, Handler, ResponseFuture, Supervised,
    WrapFuture,
};

use super::error::SchemaError;
use super::messages::{CreateTable, Created, GetTable, ListTables, TableInfo, Validate, Validated};
use super::translate::{BatchLimits, parse_batch};
use crate::catalog::messages::{Commit, Snapshot};
use crate::catalog::{Action, CatalogActor, CatalogError, CatalogState};
use crate::ids::TableRef;

/// Every ingest request passes here to get its schema: room for a burst of requests from many
/// connections while validation itself runs on the blocking pool.
const MAILBOX_CAPACITY: usize = 4096;

/// Holds the registry, rebuilt from the catalog, and validates batches.
#[derive(Debug)]
pub struct SchemaActor {
    tables: BTreeMap<TableRef, TableInfo>,
    catalog: Addr<CatalogActor>,
    limits: Arc<BatchLimits>,
}

impl SchemaActor {
    /// A registry holding every table of `state`.
    pub fn new(state: &CatalogState, catalog: Addr<CatalogActor>, limits: BatchLimits) -> Self {
        let tables = state
            .tables
            .iter()
            .map(|(t, e)| {
                (
                    t.clone(),
                    TableInfo {
                        table: t.clone(),
                        version: e.schema_version,
                        schema: e.schema.clone(),
                    },
                )
            })
            .collect();
        Self {
            tables,
            catalog,
            limits: Arc::new(limits),
        }
    }
}

impl Actor for SchemaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Supervised for SchemaActor {}

impl Handler<CreateTable> for SchemaActor {
    type Result = AtomicResponse<Self, Result<Created, SchemaError>>;

    fn handle(&mut self, msg: CreateTable, _ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = msg.schema.validate() {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(
                SchemaError::InvalidDefinition(e),
            ))));
        }
        if let Some(info) = self.tables.get(&msg.table) {
            let res = if *info.schema == msg.schema {
                Ok(Created {
                    info: info.clone(),
                    created: false,
                })
            } else {
                Err(SchemaError::TableExists {
                    table: msg.table.to_string(),
                })
            };
            return AtomicResponse::new(Box::pin(actix::fut::ready(res)));
        }
        let catalog = self.catalog.clone();
        let table = msg.table.clone();
        let msg_table = msg.table.clone();
        let schema = Arc::new(msg.schema.clone());
        let commit = Commit {
            operation: "create_table",
            actions: vec![Action::CreateTable {
                table: msg.table,
                schema: msg.schema,
            }],
        };
        AtomicResponse::new(Box::pin(
            async move {
                match catalog.send(commit).await {
                    Ok(Ok(_)) => Ok((1, schema, true)),
                    // The catalog has the table although the registry did not: an earlier
                    // attempt committed and reported an error. Identical means done.
                    Ok(Err(CatalogError::TableExists(t))) => {
                        let state = catalog
                            .send(Snapshot)
                            .await
                            .map_err(|e| SchemaError::Catalog(e.to_string()))?;
                        match state.table(&table) {
                            Some(e) if *e.schema == *schema => {
                                Ok((e.schema_version, e.schema.clone(), false))
                            }
                            _ => Err(SchemaError::TableExists { table: t }),
                        }
                    }
                    Ok(Err(e)) => Err(SchemaError::Catalog(e.to_string())),
                    Err(e) => Err(SchemaError::Catalog(e.to_string())),
                }
            }
            .into_actor(self)
            .map(move |res, act, _| {
                let (version, schema, created) = res?;
                let info = TableInfo {
                    table: msg_table.clone(),
                    version,
                    schema,
                };
                act.tables.insert(msg_table, info.clone());
                tracing::info!(table = %info.table, "table created");
                Ok(Created { info, created })
            }),
        ))
    }
}

impl Handler<GetTable> for SchemaActor {
    type Result = Option<TableInfo>;

    fn handle(&mut self, msg: GetTable, _ctx: &mut Self::Context) -> Self::Result {
        self.tables.get(&msg.table).cloned()
    }
}

impl Handler<ListTables> for SchemaActor {
    type Result = Vec<TableInfo>;

    fn handle(&mut self, msg: ListTables, _ctx: &mut Self::Context) -> Self::Result {
        self.tables
            .values()
            .filter(|i| i.table.tenant == msg.tenant)
            .cloned()
            .collect()
    }
}

impl Handler<Validate> for SchemaActor {
    type Result = ResponseFuture<Result<Validated, SchemaError>>;

    fn handle(&mut self, msg: Validate, _ctx: &mut Self::Context) -> Self::Result {
        let Some(info) = self.tables.get(&msg.table).cloned() else {
            return Box::pin(async move {
                Err(SchemaError::UnknownTable {
                    table: msg.table.to_string(),
                })
            });
        };
        let limits = self.limits.clone();
        Box::pin(async move {
            let schema = info.schema.clone();
            let rows = tokio::task::spawn_blocking(move || {
                parse_batch(&msg.body, msg.format, &schema, &limits)
            })
            .await
            .map_err(|e| SchemaError::Arrow(format!("validation task failed: {e}")))??;
            Ok(Validated {
                schema: info.schema,
                schema_version: info.version,
                rows,
            })
        })
    }
}
