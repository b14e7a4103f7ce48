//! The schema registry actor: current definition of every table, creation through the
//! catalog, and validation of request bodies.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, AtomicResponse, Context, Handler, ResponseActFuture,
    ResponseFuture, Supervised, WrapFuture,
};

use super::error::SchemaError;
use super::evolve;
use super::messages::{
    CreateTable, Created, Evolve, Evolved, GetTable, ListTables, Sync, TableInfo, Validate,
    ValidateMany, Validated,
};
use super::translate::{BatchLimits, parse_batch};
use super::types::{Evolution, TableSchema};
use crate::catalog::messages::{Commit, Snapshot};
use crate::catalog::{Action, CatalogActor, CatalogError, CatalogState};
use crate::ids::TableRef;

/// Every ingest request passes here to get its schema: room for a burst of requests from many
/// connections while validation itself runs on the blocking pool.
const MAILBOX_CAPACITY: usize = 4096;

/// Most tables one tenant may have unless configured otherwise.
pub const DEFAULT_MAX_TABLES_PER_TENANT: usize = 1000;

/// Holds the registry, rebuilt from the catalog, and validates batches.
#[derive(Debug)]
pub struct SchemaActor {
    tables: BTreeMap<TableRef, TableInfo>,
    catalog: Addr<CatalogActor>,
    limits: Arc<BatchLimits>,
    infer_new_tables: bool,
    max_tables_per_tenant: usize,
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
            infer_new_tables: false,
            max_tables_per_tenant: DEFAULT_MAX_TABLES_PER_TENANT,
        }
    }

    /// Creates unknown tables from the first batch sent to them, in `infer` mode, instead of
    /// refusing the batch.
    pub fn infer_new_tables(mut self, on: bool) -> Self {
        self.infer_new_tables = on;
        self
    }

    /// Refuses to create a tenant's table beyond `max` of them (by definition or inference).
    pub fn max_tables_per_tenant(mut self, max: usize) -> Self {
        self.max_tables_per_tenant = max;
        self
    }
}

impl Actor for SchemaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Supervised for SchemaActor {}

impl SchemaActor {
    /// Records `schema` as the next version of `table` in the catalog, if the table's
    /// evolution rules allow it, and then in the registry.
    fn evolve(
        &mut self,
        table: TableRef,
        schema: TableSchema,
        if_version: Option<u32>,
    ) -> ResponseActFuture<Self, Result<Evolved, SchemaError>> {
        let ready = |r| -> ResponseActFuture<Self, Result<Evolved, SchemaError>> {
            Box::pin(actix::fut::ready(r))
        };
        let Some(info) = self.tables.get(&table).cloned() else {
            return ready(Err(SchemaError::UnknownTable {
                table: table.to_string(),
            }));
        };
        let unchanged = Evolved {
            info: info.clone(),
            changes: Vec::new(),
        };
        if if_version.is_some_and(|v| v != info.version) || *info.schema == schema {
            return ready(Ok(unchanged));
        }
        let refused = |reason: String| SchemaError::SchemaChange {
            table: table.to_string(),
            reason,
        };
        let changes = match evolve::check_mode(&info.schema, &schema)
            .and_then(|()| evolve::check_change(&info.schema, &schema))
        {
            Ok(c) => c,
            Err(reason) => return ready(Err(refused(reason))),
        };
        let version = info.version + 1;
        let commit = Commit {
            operation: "evolve_schema",
            actions: vec![Action::EvolveSchema {
                table: table.clone(),
                version,
                schema: schema.clone(),
            }],
        };
        let catalog = self.catalog.clone();
        let t = table.clone();
        Box::pin(
            async move {
                let res = match catalog.send(commit).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(CatalogError::Conflict(reason))) => Err(SchemaError::SchemaChange {
                        table: t.to_string(),
                        reason,
                    }),
                    Ok(Err(e)) => Err(SchemaError::Catalog(e.to_string())),
                    Err(e) => Err(SchemaError::Catalog(e.to_string())),
                };
                // The commit may have landed although it reported an error, or the registry
                // may be behind the catalog: take the catalog's word for the table.
                let now = catalog.send(Snapshot).await.ok().and_then(|state| {
                    state
                        .table(&t)
                        .map(|e| (e.schema_version, e.schema.clone()))
                });
                res.map_err(|e| (e, now))
            }
            .into_actor(self)
            .map(move |res, act, _| {
                if let Err((e, now)) = res {
                    if let Some((version, schema)) = now {
                        let synced = TableInfo {
                            table: table.clone(),
                            version,
                            schema,
                        };
                        act.tables.insert(table, synced);
                    }
                    return Err(e);
                }
                let info = TableInfo {
                    table: table.clone(),
                    version,
                    schema: Arc::new(schema),
                };
                act.tables.insert(table, info.clone());
                tracing::info!(table = %info.table, version, ?changes, "schema evolved");
                Ok(Evolved { info, changes })
            }),
        )
    }
}

impl Handler<Evolve> for SchemaActor {
    type Result = AtomicResponse<Self, Result<Evolved, SchemaError>>;

    fn handle(&mut self, msg: Evolve, _ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = msg.schema.validate() {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(
                SchemaError::InvalidDefinition(e),
            ))));
        }
        AtomicResponse::new(self.evolve(msg.table, msg.schema, msg.if_version))
    }
}

impl Handler<CreateTable> for SchemaActor {
    type Result = AtomicResponse<Self, Result<Created, SchemaError>>;

    fn handle(&mut self, msg: CreateTable, _ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = msg.schema.validate() {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(
                SchemaError::InvalidDefinition(e),
            ))));
        }
        if self.tables.contains_key(&msg.table) {
            let fut = self.evolve(msg.table, msg.schema, None);
            return AtomicResponse::new(Box::pin(fut.map(|res, _, _| {
                res.map(|e| Created {
                    info: e.info,
                    created: false,
                    changes: e.changes,
                })
            })));
        }
        let tenant = &msg.table.tenant;
        let owned = self.tables.keys().filter(|t| t.tenant == *tenant).count();
        if owned >= self.max_tables_per_tenant {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(
                SchemaError::TooManyTables {
                    tenant: tenant.to_string(),
                    limit: self.max_tables_per_tenant,
                },
            ))));
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
                Ok(Created {
                    info,
                    created,
                    changes: Vec::new(),
                })
            }),
        ))
    }
}

impl Handler<Sync> for SchemaActor {
    type Result = ();

    fn handle(&mut self, msg: Sync, _ctx: &mut Self::Context) -> Self::Result {
        for (table, entry) in &msg.state.tables {
            let behind = self
                .tables
                .get(table)
                .is_none_or(|i| i.version < entry.schema_version);
            if behind {
                self.tables.insert(
                    table.clone(),
                    TableInfo {
                        table: table.clone(),
                        version: entry.schema_version,
                        schema: entry.schema.clone(),
                    },
                );
            }
        }
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

/// Whether a batch refused with `e` might pass once its table's schema is inferred again.
fn inference_may_help(e: &SchemaError) -> bool {
    matches!(
        e,
        SchemaError::UnknownField { .. }
            | SchemaError::TypeMismatch(_)
            | SchemaError::ValueOutOfRange(_)
    )
}

/// Bodies up to this size are parsed where they arrive: a few microseconds of work, cheaper
/// than a hop to the blocking pool, and many small concurrent batches (NATS messages) would
/// otherwise grow the pool to hundreds of threads.
const INLINE_PARSE_BYTES: usize = 16 << 10;

/// Runs `f` on the blocking pool, or at once for a body of `len` bytes or less than
/// [`INLINE_PARSE_BYTES`].
async fn blocking<T: Send + 'static>(
    len: usize,
    f: impl FnOnce() -> Result<T, SchemaError> + Send + 'static,
) -> Result<T, SchemaError> {
    if len <= INLINE_PARSE_BYTES {
        return f();
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SchemaError::Arrow(format!("validation task failed: {e}")))?
}

fn mailbox(e: actix::MailboxError) -> SchemaError {
    SchemaError::Catalog(format!("the schema registry is unavailable: {e}"))
}

impl Handler<Validate> for SchemaActor {
    type Result = ResponseFuture<Result<Validated, SchemaError>>;

    fn handle(&mut self, msg: Validate, ctx: &mut Self::Context) -> Self::Result {
        Box::pin(self.validate(msg, ctx.address()))
    }
}

impl Handler<ValidateMany> for SchemaActor {
    type Result = ResponseFuture<Vec<Result<Validated, SchemaError>>>;

    fn handle(&mut self, msg: ValidateMany, ctx: &mut Self::Context) -> Self::Result {
        let checks: Vec<_> = msg
            .0
            .into_iter()
            .map(|v| self.validate(v, ctx.address()))
            .collect();
        // One after the other: each is small (a group is made of small messages), and a
        // later one may need the table an earlier one created.
        Box::pin(async move {
            let mut out = Vec::with_capacity(checks.len());
            for check in checks {
                out.push(check.await);
            }
            out
        })
    }
}

impl SchemaActor {
    /// The validation of one body, to run after the handler returns.
    fn validate(
        &self,
        msg: Validate,
        me: Addr<Self>,
    ) -> impl Future<Output = Result<Validated, SchemaError>> + 'static {
        let known = self.tables.get(&msg.table).cloned();
        let infer_new = self.infer_new_tables;
        let limits = self.limits.clone();
        async move {
            let Validate {
                table,
                body,
                format,
            } = msg;
            let mut info = match known {
                Some(info) => info,
                None if infer_new => {
                    let (b, l) = (body.clone(), limits.clone());
                    let Some(schema) =
                        blocking(body.len(), move || evolve::infer(None, &b, format, &l)).await?
                    else {
                        return Err(SchemaError::InvalidDefinition(format!(
                            "table {table} does not exist and cannot be inferred from this batch: no event has a non-null field"
                        )));
                    };
                    let created = me
                        .send(CreateTable {
                            table: table.clone(),
                            schema,
                        })
                        .await
                        .map_err(mailbox)?;
                    match created {
                        Ok(c) => c.info,
                        // Another first batch created the table meanwhile: evolve it below.
                        Err(e) => me
                            .send(GetTable {
                                table: table.clone(),
                            })
                            .await
                            .map_err(mailbox)?
                            .ok_or(e)?,
                    }
                }
                None => {
                    return Err(SchemaError::UnknownTable {
                        table: table.to_string(),
                    });
                }
            };
            // A table in `infer` mode evolves when the batch needs it; another batch may
            // evolve it at the same time, hence a few rounds.
            let mut rounds = 0;
            loop {
                let (b, l, s) = (body.clone(), limits.clone(), info.schema.clone());
                let err = match blocking(body.len(), move || parse_batch(&b, format, &s, &l)).await
                {
                    Ok(rows) => {
                        return Ok(Validated {
                            schema: info.schema,
                            schema_version: info.version,
                            rows,
                        });
                    }
                    Err(e) => e,
                };
                rounds += 1;
                if info.schema.evolution != Evolution::Infer
                    || !inference_may_help(&err)
                    || rounds > 3
                {
                    return Err(err);
                }
                let (b, l, s) = (body.clone(), limits.clone(), info.schema.clone());
                let Some(next) =
                    blocking(body.len(), move || evolve::infer(Some(&s), &b, format, &l)).await?
                else {
                    return Err(err);
                };
                let evolved = me
                    .send(Evolve {
                        table: table.clone(),
                        schema: next,
                        if_version: Some(info.version),
                    })
                    .await
                    .map_err(mailbox)??;
                info = evolved.info;
            }
        }
    }
}
