//! The HTTP API (actix-web): routes, credential extraction, body limits, response formats.
//!
//! Handlers are thin: they extract the credential and body, call the [`Node`], and render the
//! result; errors become problem+json in [`error`].

mod body;
pub mod error;
mod events;
mod handlers;
mod hooks;
mod openapi;

use actix_web::web;

pub use body::BodyLimits;

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
    /// Inbound webhook sources, by name (`POST /v1/hooks/{name}`).
    pub hooks: std::sync::Arc<
        std::collections::BTreeMap<String, alluvium_pipelines::sources::webhook::Hook>,
    >,
    /// Bounds on reading request bodies.
    pub body: BodyLimits,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Durability of ingest requests that do not ask for one.
    pub default_durability: alluvium_actors::wal::messages::Durability,
}

/// Declares the routes once: [`routes`] registers them and [`ROUTES`] lists them, so the list
/// cannot drift from what is served (the OpenAPI test checks the document against it).
macro_rules! api_routes {
    ($($method:ident $path:literal => $handler:path),+ $(,)?) => {
        /// Every registered route as (method, full path template), in registration order.
        pub const ROUTES: &[(&str, &str)] = &[$((api_routes!(@name $method), $path)),+];

        /// Registers every route; anything else is answered 404 `not_found`.
        pub fn routes(cfg: &mut web::ServiceConfig) {
            $(cfg.route($path, web::$method().to($handler));)+
            cfg.default_service(web::to(handlers::not_found));
        }
    };
    (@name get) => { "GET" };
    (@name put) => { "PUT" };
    (@name post) => { "POST" };
    (@name delete) => { "DELETE" };
}

api_routes! {
    get "/healthz" => handlers::healthz,
    get "/readyz" => handlers::readyz,
    get "/metrics" => handlers::metrics,
    get "/v1/openapi.json" => openapi::document,
    post "/v1/keys" => handlers::create_key,
    get "/v1/keys" => handlers::list_keys,
    delete "/v1/keys/{id}" => handlers::revoke_key,
    get "/v1/events" => events::events,
    get "/v1/tables" => handlers::list_tables,
    put "/v1/tables/{table}" => handlers::create_table,
    get "/v1/tables/{table}" => handlers::get_table,
    post "/v1/tables/{table}/events" => handlers::ingest,
    post "/v1/tables/{table}/query" => handlers::query,
    post "/v1/tables/{table}/flush" => handlers::flush,
    post "/v1/tables/{table}/compact" => handlers::compact,
    get "/v1/tables/{table}/files" => handlers::files,
    delete "/v1/tables/{table}/rows/{key}" => handlers::delete_row,
    get "/v1/tables/{table}/rows/{key}" => handlers::get_row,
    post "/v1/hooks/{source}" => hooks::receive,
}
