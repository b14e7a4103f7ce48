//! `GET /v1/openapi.json`: the OpenAPI 3.1 description of this API.
//!
//! The document is hand-written in `openapi.json` next to this file and compiled into the
//! binary, so what is served is exactly what the repository holds. It is served without a
//! credential: it describes the API, not any tenant's data. `tests/openapi.rs` keeps it
//! complete (every route in [`super::ROUTES`] and nothing else) and its examples true.

use actix_web::HttpResponse;

/// The document, as kept in the repository.
const DOCUMENT: &str = include_str!("openapi.json");

/// Answers the document as `application/json`.
pub async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT)
}
