//! The HTTP API (actix-web): routes, credential extraction, body limits, response formats.
//!
//! Handlers are thin: they extract the credential and body, call the [`Node`], and render the
//! result; errors become problem+json in [`error`].

pub mod error;
mod events;
mod handlers;

use actix_web::web;

use crate::metrics::Metrics;
use alluvium_pipelines::Node;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The pipeline.
    pub node: Node,
    /// The NATS link, when NATS is configured.
    pub nats: Option<alluvium_pipelines::link::NatsLink>,
    /// Counters of each configured webhook, by name.
    pub webhooks: Vec<(
        String,
        std::sync::Arc<alluvium_pipelines::notification::webhooks::WebhookStats>,
    )>,
    /// Largest request body.
    pub body_limit: usize,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Durability of ingest requests that do not ask for one.
    pub default_durability: alluvium_actors::wal::messages::Durability,
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(handlers::healthz))
        .route("/readyz", web::get().to(handlers::readyz))
        .route("/metrics", web::get().to(handlers::metrics))
        .service(
            web::scope("/v1")
                .route("/keys", web::post().to(handlers::create_key))
                .route("/events", web::get().to(events::events))
                .route("/tables", web::get().to(handlers::list_tables))
                .route("/tables/{table}", web::put().to(handlers::create_table))
                .route("/tables/{table}", web::get().to(handlers::get_table))
                .route("/tables/{table}/events", web::post().to(handlers::ingest))
                .route("/tables/{table}/query", web::post().to(handlers::query))
                .route("/tables/{table}/flush", web::post().to(handlers::flush))
                .route("/tables/{table}/compact", web::post().to(handlers::compact))
                .route("/tables/{table}/files", web::get().to(handlers::files))
                .route(
                    "/tables/{table}/rows/{key}",
                    web::delete().to(handlers::delete_row),
                )
                .route(
                    "/tables/{table}/rows/{key}",
                    web::get().to(handlers::get_row),
                ),
        )
        .default_service(web::to(handlers::not_found));
}
