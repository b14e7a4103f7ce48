//! Ingest of a group of batches received together (small NATS messages): each is its own
//! batch, with one trip to the schema registry and one to the WAL for all of them.

use alluvium_actors::auth::Principal;
use alluvium_actors::schema::messages::{Validate, ValidateMany};
use alluvium_actors::wal::messages::AppendMany;
use tracing::Instrument as _;

use crate::ingest::{
    Admitted, IngestAck, IngestRequest, append_to_log, no_ingest_role, wal_append,
};
use crate::{Node, PipelineError};

impl Node {
    /// Ingests several batches (small NATS messages arriving together) as [`Node::ingest_batch`]
    /// would one by one, each with its own principal, checks, idempotency key, atomicity and
    /// answer (in the same order), but with one trip to the schema registry and one to the
    /// WAL for the whole group, so they share a commit group. A cluster's ingest node appends
    /// them to the replicated log one by one.
    pub async fn ingest_group(
        &self,
        batches: Vec<(Principal, IngestRequest)>,
    ) -> Vec<Result<IngestAck, PipelineError>> {
        let mut answers: Vec<Option<Result<IngestAck, PipelineError>>> = Vec::new();
        let mut admitted = Vec::new();
        let mut checks = Vec::new();
        for (i, (principal, request)) in batches.iter().enumerate() {
            answers.push(match self.admit(principal, request) {
                Ok(Admitted::Retry(ack)) => Some(Ok(ack)),
                Ok(Admitted::Go(table, key)) => {
                    checks.push(Validate {
                        table: table.clone(),
                        body: request.body.clone(),
                        format: request.format,
                    });
                    admitted.push((i, table, key));
                    None
                }
                Err(e) => Some(Err(e)),
            });
        }
        let validated = if checks.is_empty() {
            Vec::new()
        } else {
            let span = tracing::info_span!("schema_validate", batches = checks.len());
            match self
                .schema
                .send(ValidateMany(checks))
                .instrument(span)
                .await
            {
                Ok(v) => v,
                Err(e) => {
                    return answers
                        .into_iter()
                        .map(|a| a.unwrap_or_else(|| Err(e.into())))
                        .collect();
                }
            }
        };
        let mut appends = Vec::new();
        let mut appended = Vec::new();
        let span = tracing::info_span!("wal_append", batches = admitted.len());
        // The flush that lands the group links to its span once, not once per batch.
        let mut trace = span.in_scope(alluvium_actors::trace::current);
        for ((i, table, key), result) in admitted.into_iter().zip(validated) {
            let (principal, request) = &batches[i];
            let validated = match result {
                Ok(v) => v,
                Err(e) => {
                    let e = PipelineError::Schema(e);
                    self.reject(&table, request, &e);
                    answers[i] = Some(Err(e));
                    continue;
                }
            };
            if let Err(e) = self.take_events(principal, request, &validated) {
                answers[i] = Some(Err(e));
                continue;
            }
            if let Some(log) = &self.log {
                answers[i] = Some(append_to_log(log, &table, validated, key.as_ref()).await);
                continue;
            }
            appends.push(wal_append(
                table,
                validated,
                request.durability,
                key,
                trace.take(),
            ));
            appended.push((i, request.durability));
        }
        if !appends.is_empty() {
            let results = match &self.wal {
                None => Err(None),
                Some(wal) => {
                    let sent = wal.send(AppendMany(appends)).instrument(span).await;
                    sent.map_err(Some)
                }
            };
            match results {
                Ok(results) => {
                    for ((i, durability), r) in appended.into_iter().zip(results) {
                        answers[i] = Some(
                            r.map(|d| IngestAck::from_durable(d, durability))
                                .map_err(PipelineError::from),
                        );
                    }
                }
                Err(e) => {
                    for (i, _) in appended {
                        answers[i] = Some(Err(match e {
                            Some(e) => e.into(),
                            None => no_ingest_role(),
                        }));
                    }
                }
            }
        }
        answers
            .into_iter()
            // Every batch was answered above; a shorter answer from a component counts as
            // that component gone.
            .map(|a| a.unwrap_or_else(|| Err(actix::MailboxError::Closed.into())))
            .collect()
    }
}
