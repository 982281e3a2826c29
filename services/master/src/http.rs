//! The HTTP face of a master, and the edge of its layers: health for
//! HAProxy, Buildbot's data API v2 (`/api/v2`), its live events (`/ws`),
//! an OpenAPI description of it, GitHub's webhook and the web UI (`web`).
//! Handlers turn requests into calls of the domain modules below and their
//! errors into answers (`error`); nothing below imports this module.
//!
//! Responses use Buildbot's envelope (`{"builds": [...], "meta": {"total": n}}`),
//! field names, epoch-second times and result codes, so scripts written for
//! Buildbot read them unchanged. Control actions are JSON-RPC 2.0 posted to
//! the resource, as in Buildbot. Every route is declared once, in [`api`],
//! with what it serves: the router and the OpenAPI document are both made
//! from that list, so they cannot disagree.

pub mod auth;
mod control;
mod error;
mod github;
mod openapi;
pub mod query;
mod reads;
mod sse;
mod web;
mod ws;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tracing::Instrument;

pub use error::ApiError;
pub use query::MAX_PAGE;

use crate::Master;
use crate::store::resources::{
    ARTIFACTS, BUILDERS, BUILDREQUESTS, BUILDS, BUILDSETS, CHANGES, FORCESCHEDULERS, LOGS, MASTERS, Resource, STEPS,
    TEST_RESULT_SETS, TEST_RESULTS, WORKERS,
};

type AppState = Arc<Master>;

/// Where GitHub delivers its webhook.
const GITHUB_HOOK: &str = "/change_hook/github";
type ApiResult<T> = Result<T, ApiError>;

/// What a GET on a route answers.
#[derive(Debug, Clone, Copy)]
pub enum Serves {
    /// A page of a resource, filtered, ordered and paginated by the query.
    Collection(&'static Resource),
    /// One item, as a list of one.
    Single(&'static Resource),
    /// Lines of a log (`logchunks`).
    LogLines,
    /// A log's bytes, `text/plain`.
    LogBytes,
    /// What reporters told of a build, or will, or gave up on.
    Notifications,
    /// Tests that failed and passed on the same builder and revision.
    FlakyTests,
    /// Tests failing now on a branch, since when.
    FailingTests,
    /// An artifact's bytes, `application/octet-stream`.
    ArtifactBytes,
}

/// One route of the API, as the OpenAPI document describes it.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub path: &'static str,
    pub get: Option<Serves>,
    /// JSON-RPC methods accepted by POST.
    pub methods: &'static [&'static str],
}

fn reading(path: &'static str, serves: Serves) -> RouteDoc {
    RouteDoc { path, get: Some(serves), methods: &[] }
}

/// Every API route: what it serves, and its handlers.
pub fn api() -> Vec<(RouteDoc, MethodRouter<AppState>)> {
    use Serves::{ArtifactBytes, Collection, FailingTests, FlakyTests, LogBytes, LogLines, Notifications, Single};
    vec![
        (reading("/api/v2/builders", Collection(&BUILDERS)), get(reads::list_builders)),
        (
            RouteDoc {
                path: "/api/v2/builders/{builder}",
                get: Some(Single(&BUILDERS)),
                methods: &["pause", "unpause"],
            },
            get(reads::get_builder).post(control::control_builder),
        ),
        (reading("/api/v2/builders/{builder}/builds", Collection(&BUILDS)), get(reads::list_builder_builds)),
        (reading("/api/v2/builders/{builder}/builds/{number}", Single(&BUILDS)), get(reads::get_builder_build)),
        (
            reading("/api/v2/builders/{builder}/builds/{number}/steps", Collection(&STEPS)),
            get(reads::list_builder_build_steps),
        ),
        (
            reading("/api/v2/builders/{builder}/builds/{number}/steps/{step}", Single(&STEPS)),
            get(reads::get_builder_build_step),
        ),
        (
            reading("/api/v2/builders/{builder}/builds/{number}/steps/{step}/logs", Collection(&LOGS)),
            get(reads::list_builder_build_step_logs),
        ),
        (
            reading("/api/v2/builders/{builder}/builds/{number}/steps/{step}/logs/{slug}", Single(&LOGS)),
            get(reads::get_builder_build_step_log),
        ),
        (
            reading("/api/v2/builders/{builder}/buildrequests", Collection(&BUILDREQUESTS)),
            get(reads::list_builder_buildrequests),
        ),
        (reading("/api/v2/builds", Collection(&BUILDS)), get(reads::list_builds)),
        (
            RouteDoc { path: "/api/v2/builds/{build_id}", get: Some(Single(&BUILDS)), methods: &["stop", "rebuild"] },
            get(reads::get_build).post(control::control_build),
        ),
        (reading("/api/v2/builds/{build_id}/steps", Collection(&STEPS)), get(reads::list_build_steps)),
        (reading("/api/v2/builds/{build_id}/notifications", Notifications), get(reads::list_build_notifications)),
        (reading("/api/v2/builds/{build_id}/steps/{step}", Single(&STEPS)), get(reads::get_build_step)),
        (reading("/api/v2/builds/{build_id}/steps/{step}/logs", Collection(&LOGS)), get(reads::list_build_step_logs)),
        (reading("/api/v2/builds/{build_id}/steps/{step}/logs/{slug}", Single(&LOGS)), get(reads::get_build_step_log)),
        (reading("/api/v2/steps/{step_id}", Single(&STEPS)), get(reads::get_step)),
        (reading("/api/v2/steps/{step_id}/logs", Collection(&LOGS)), get(reads::list_step_logs)),
        (
            reading("/api/v2/steps/{step_id}/test_result_sets", Collection(&TEST_RESULT_SETS)),
            get(reads::list_step_test_result_sets),
        ),
        (
            reading("/api/v2/builds/{build_id}/test_result_sets", Collection(&TEST_RESULT_SETS)),
            get(reads::list_build_test_result_sets),
        ),
        (reading("/api/v2/test_result_sets/{set_id}", Single(&TEST_RESULT_SETS)), get(reads::get_test_result_set)),
        (
            reading("/api/v2/test_result_sets/{set_id}/results", Collection(&TEST_RESULTS)),
            get(reads::list_test_results),
        ),
        (reading("/api/v2/tests/flaky", FlakyTests), get(reads::list_flaky_tests)),
        (reading("/api/v2/tests/failing", FailingTests), get(reads::list_failing_tests)),
        (reading("/api/v2/builds/{build_id}/artifacts", Collection(&ARTIFACTS)), get(reads::list_build_artifacts)),
        (reading("/api/v2/artifacts/{artifact_id}", Single(&ARTIFACTS)), get(reads::get_artifact)),
        (reading("/api/v2/artifacts/{artifact_id}/download", ArtifactBytes), get(reads::download_artifact)),
        (reading("/api/v2/steps/{step_id}/logs/{slug}", Single(&LOGS)), get(reads::get_step_log)),
        (reading("/api/v2/logs/{log_id}", Single(&LOGS)), get(reads::get_log)),
        (reading("/api/v2/logs/{log_id}/contents", LogLines), get(reads::get_log_contents)),
        (reading("/api/v2/logs/{log_id}/raw", LogBytes), get(reads::get_log_raw)),
        (reading("/api/v2/logs/{log_id}/raw_inline", LogBytes), get(reads::get_log_raw_inline)),
        (reading("/api/v2/buildrequests", Collection(&BUILDREQUESTS)), get(reads::list_buildrequests)),
        (
            RouteDoc {
                path: "/api/v2/buildrequests/{buildrequest_id}",
                get: Some(Single(&BUILDREQUESTS)),
                methods: &["cancel", "set_priority"],
            },
            get(reads::get_buildrequest).post(control::control_buildrequest),
        ),
        (
            reading("/api/v2/buildrequests/{buildrequest_id}/builds", Collection(&BUILDS)),
            get(reads::list_buildrequest_builds),
        ),
        (reading("/api/v2/buildsets", Collection(&BUILDSETS)), get(reads::list_buildsets)),
        (reading("/api/v2/buildsets/{buildset_id}", Single(&BUILDSETS)), get(reads::get_buildset)),
        (reading("/api/v2/workers", Collection(&WORKERS)), get(reads::list_workers)),
        (
            RouteDoc {
                path: "/api/v2/workers/{worker}",
                get: Some(Single(&WORKERS)),
                methods: &["pause", "unpause", "stop"],
            },
            get(reads::get_worker).post(control::control_worker),
        ),
        (reading("/api/v2/masters", Collection(&MASTERS)), get(reads::list_masters)),
        (reading("/api/v2/masters/{master_id}", Single(&MASTERS)), get(reads::get_master)),
        (reading("/api/v2/forceschedulers", Collection(&FORCESCHEDULERS)), get(reads::list_forceschedulers)),
        (
            RouteDoc {
                path: "/api/v2/forceschedulers/{scheduler}",
                get: Some(Single(&FORCESCHEDULERS)),
                methods: &["force"],
            },
            get(reads::get_forcescheduler).post(control::force_scheduler),
        ),
        (reading("/api/v2/changes", Collection(&CHANGES)), get(reads::list_changes)),
        (reading("/api/v2/changes/{change_id}", Single(&CHANGES)), get(reads::get_change)),
        (reading("/api/v2/changes/{change_id}/builds", Collection(&BUILDS)), get(reads::list_change_builds)),
        (reading("/api/v2/builds/{build_id}/changes", Collection(&CHANGES)), get(reads::list_build_changes)),
    ]
}

pub fn router(master: Arc<Master>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(get_health))
        .route("/metrics", get(get_metrics))
        .route("/ws", get(ws::websocket))
        .route("/sse", get(sse::listen))
        .route("/sse/listen", get(sse::listen))
        .route("/sse/listen/{*path}", get(sse::listen))
        .route("/sse/add/{consumer}/{*path}", get(sse::add))
        .route("/sse/remove/{consumer}/{*path}", get(sse::remove))
        .route("/api/v2/openapi.json", get(get_openapi))
        .route("/auth/login", axum::routing::post(auth::login))
        .route("/auth/logout", axum::routing::post(auth::logout))
        .route("/auth/me", get(auth::me))
        .route("/auth/github/login", get(auth::github_login))
        .route("/auth/github/callback", get(auth::github_callback))
        .route("/auth/oidc/{name}/login", get(auth::oidc_login))
        .route("/auth/oidc/{name}/callback", get(auth::oidc_callback))
        .route(GITHUB_HOOK, axum::routing::post(github::hook))
        .merge(web::routes());
    for (doc, handlers) in api() {
        // Also under `/all`, where buildbot.python.org serves its API, so
        // scripts written for it need only another host.
        router = router.route(&format!("/all{}", doc.path), handlers.clone()).route(doc.path, handlers);
    }
    router
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
        .layer(axum::middleware::from_fn_with_state(master.clone(), limit_body))
        .layer(axum::middleware::from_fn_with_state(master.clone(), observe))
        .layer(DefaultBodyLimit::disable())
        .with_state(master)
}

/// One span per request, continuing the caller's trace (`traceparent`) and
/// named by OpenTelemetry's HTTP conventions, and the request's metrics.
async fn observe(
    State(master): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |path| path.as_str()).to_owned();
    // Any other method is one label, so clients cannot grow the metrics.
    let method = match request.method().as_str() {
        known @ ("GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH") => known,
        _ => "_OTHER",
    }
    .to_owned();
    let span = tracing::info_span!(
        "http",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let traceparent = request.headers().get(shared::telemetry::TRACEPARENT).and_then(|v| v.to_str().ok());
    shared::telemetry::continue_from(&span, traceparent);
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    master.metrics.http(&route, &method, status, started.elapsed());
    response
}

/// Prometheus' text format.
async fn get_metrics(State(master): State<AppState>) -> Response {
    let text = crate::metrics::render(&master).await;
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn get_openapi() -> Json<Value> {
    let docs: Vec<RouteDoc> = api().into_iter().map(|(doc, _)| doc).collect();
    Json(openapi::document(&docs))
}

/// Bodies this many times over the limit are cut off instead of read to the
/// end; their clients may see the connection reset rather than the 413.
const DRAIN_FACTOR: usize = 16;

/// The one place request bodies are limited. An oversized body is still
/// read to its end (up to `DRAIN_FACTOR` times the limit) before the 413 is
/// sent: closing a connection with unread data makes the kernel reset it,
/// and the client would lose the answer.
///
/// GitHub's deliveries may be larger than anything else (a push of many
/// commits; GitHub sends up to 25 MB): their route has its own limit.
async fn limit_body(
    State(master): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let max_body_bytes = {
        let catalog = master.catalog();
        let settings = &catalog.config.settings;
        match &settings.github {
            Some(github) if request.uri().path() == GITHUB_HOOK => github.max_delivery_bytes,
            _ => settings.web.max_body_bytes,
        }
    };
    let (parts, body) = request.into_parts();
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else {
            return ApiError::BadRequest("the request body could not be read".into()).into_response();
        };
        seen += chunk.len();
        if seen <= max_body_bytes {
            kept.extend_from_slice(&chunk);
        } else if seen > max_body_bytes.saturating_mul(DRAIN_FACTOR) {
            break;
        }
    }
    if seen > max_body_bytes {
        return ApiError::PayloadTooLarge(max_body_bytes).into_response();
    }
    next.run(axum::extract::Request::from_parts(parts, Body::from(kept))).await
}

// --- health -----------------------------------------------------------------

/// 200 only when this master reaches Postgres, RabbitMQ and Redis: HAProxy
/// sends no request to a master that would fail it.
async fn get_health(State(master): State<AppState>) -> Response {
    let postgres = master.store.ping().await.is_ok();
    let rabbitmq = master.broker.is_connected();
    let mut redis = master.redis.clone();
    let redis_ok = redis::cmd("PING").query_async::<String>(&mut redis).await.is_ok();
    let body = json!({ "master": master.name, "postgres": postgres, "rabbitmq": rabbitmq, "redis": redis_ok });
    let status = if postgres && rabbitmq && redis_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

// --- shared by the handlers -------------------------------------------------

fn parse_id<T: std::str::FromStr>(what: &str, text: &str) -> ApiResult<T> {
    text.parse().map_err(|_| ApiError::BadRequest(format!("{what} must be a number, got `{text}`")))
}

/// Booleans in query strings as Buildbot accepts them.
fn parse_bool(name: &str, value: &str) -> ApiResult<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "`{name}={value}` is not a boolean (use true/false, yes/no, on/off or 1/0)"
        ))),
    }
}
