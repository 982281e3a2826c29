//! The HTTP face of a master: health for HAProxy and the part of the
//! Buildbot-shaped data API (`/api/v2`) that drives a build end to end: force,
//! stop, read builds, steps and logs, download a log.
//!
//! Responses use Buildbot's envelope (`{"builds": [...], "meta": {"total": n}}`),
//! field names, epoch-second times and result codes, so scripts written for
//! Buildbot read them unchanged. Control actions are JSON-RPC 2.0 posted to
//! the resource, as in Buildbot. Authorization, when it comes, slots in as an
//! extractor on the control handlers.

mod error;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use shared::config::SchedulerConfig;
use shared::wire::ControlMessage;

pub use error::ApiError;

use crate::Master;
use crate::broker::BrokerError;
use crate::logs;
use crate::store::{BuildRequestRow, BuildRow, LogRow, NewBuildset, NewRequest, StepRow};

type AppState = Arc<Master>;
type ApiResult<T> = Result<T, ApiError>;

pub fn router(master: Arc<Master>) -> Router {
    let max_body_bytes = master.catalog().config.settings.web.max_body_bytes;
    Router::new()
        .route("/healthz", get(get_health))
        .route("/api/v2/builders", get(list_builders))
        .route("/api/v2/builders/{builder}/builds", get(list_builder_builds))
        .route("/api/v2/builders/{builder}/builds/{number}", get(get_builder_build))
        .route("/api/v2/builds", get(list_builds))
        .route("/api/v2/builds/{build_id}", get(get_build).post(control_build))
        .route("/api/v2/builds/{build_id}/steps", get(list_build_steps))
        .route("/api/v2/steps/{step_id}/logs", get(list_step_logs))
        .route("/api/v2/logs/{log_id}", get(get_log))
        .route("/api/v2/logs/{log_id}/raw", get(get_log_raw))
        .route("/api/v2/buildrequests/{buildrequest_id}", get(get_buildrequest))
        .route("/api/v2/forceschedulers/{scheduler}", post(force_scheduler))
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
        .layer(axum::middleware::from_fn(move |request, next| limit_body(max_body_bytes, request, next)))
        .layer(DefaultBodyLimit::disable())
        .with_state(master)
}

/// Bodies this many times over the limit are cut off instead of read to the
/// end; their clients may see the connection reset rather than the 413.
const DRAIN_FACTOR: usize = 16;

/// The one place request bodies are limited. An oversized body is still
/// read to its end (up to `DRAIN_FACTOR` times the limit) before the 413 is
/// sent: closing a connection with unread data makes the kernel reset it,
/// and the client would lose the answer.
async fn limit_body(max_body_bytes: usize, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
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

// --- shapes -----------------------------------------------------------------

fn epoch(time: Option<DateTime<Utc>>) -> Value {
    time.map_or(Value::Null, |t| json!(t.timestamp()))
}

fn envelope(plural: &str, items: Vec<Value>) -> Json<Value> {
    let total = items.len();
    Json(json!({ plural: items, "meta": { "total": total } }))
}

fn build_json(build: &BuildRow, with_properties: bool) -> Value {
    json!({
        "buildid": build.id,
        "number": build.number,
        "builderid": build.builder_id,
        "buildrequestid": build.buildrequest_id,
        "workerid": build.worker_id,
        "masterid": build.master_id,
        "started_at": build.started_at.timestamp(),
        "complete": build.complete_at.is_some(),
        "complete_at": epoch(build.complete_at),
        "results": build.results,
        "state_string": build.state_string,
        "properties": if with_properties { build.properties.clone() } else { json!({}) },
    })
}

fn step_json(step: &StepRow) -> Value {
    json!({
        "stepid": step.id,
        "number": step.number,
        "name": step.name,
        "buildid": step.build_id,
        "started_at": epoch(step.started_at),
        "complete": step.complete_at.is_some(),
        "complete_at": epoch(step.complete_at),
        "results": step.results,
        "state_string": step.state_string,
        "urls": step.urls,
        "hidden": step.hidden,
    })
}

fn log_json(log: &LogRow) -> Value {
    json!({
        "logid": log.id,
        "name": log.name,
        "slug": log.slug,
        "stepid": log.step_id,
        "complete": log.complete,
        "num_lines": log.num_lines,
        "type": log.log_type,
    })
}

fn buildrequest_json(request: &BuildRequestRow) -> Value {
    json!({
        "buildrequestid": request.id,
        "buildsetid": request.buildset_id,
        "builderid": request.builder_id,
        "priority": request.priority,
        "claimed": request.state == "claimed" || request.state == "complete",
        "claimed_at": epoch(request.claimed_at),
        "claimed_by_masterid": request.claimed_by_master_id,
        "complete": request.state == "complete",
        "complete_at": epoch(request.complete_at),
        "results": request.results,
        "submitted_at": request.submitted_at.timestamp(),
        "waited_for": false,
    })
}

/// `?property=name` (repeatable) or `?property=*` asks for properties.
fn wants_properties(query: &[(String, String)]) -> bool {
    query.iter().any(|(key, _)| key == "property")
}

fn parse_id<T: std::str::FromStr>(what: &str, text: &str) -> ApiResult<T> {
    text.parse().map_err(|_| ApiError::BadRequest(format!("{what} must be a number, got `{text}`")))
}

// --- reads ------------------------------------------------------------------

async fn list_builders(State(master): State<AppState>) -> ApiResult<Json<Value>> {
    let builders = master.store.builders().await?;
    let items = builders
        .iter()
        .map(|b| json!({ "builderid": b.id, "name": b.name, "description": b.description, "tags": b.tags, "masterids": [] }))
        .collect();
    Ok(envelope("builders", items))
}

/// A builder by id or by name, as Buildbot accepts both.
async fn resolve_builder(master: &Master, builder: &str) -> ApiResult<i32> {
    if let Ok(id) = builder.parse::<i32>() {
        return Ok(id);
    }
    master.store.builder_id(builder).await?.ok_or_else(|| ApiError::NotFound(format!("builder `{builder}`")))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list_builder_builds(
    State(master): State<AppState>,
    Path(builder): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let builder_id = resolve_builder(&master, &builder).await?;
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let builds = master.store.builds_of_builder(builder_id, limit).await?;
    Ok(envelope("builds", builds.iter().map(|b| build_json(b, false)).collect()))
}

async fn get_builder_build(
    State(master): State<AppState>,
    Path((builder, number)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let builder_id = resolve_builder(&master, &builder).await?;
    let number: i32 = parse_id("build number", &number)?;
    let build = master
        .store
        .build_by_number(builder_id, number)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("build {number} of builder `{builder}`")))?;
    Ok(envelope("builds", vec![build_json(&build, wants_properties(&query))]))
}

async fn list_builds(
    State(master): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let filters: HashMap<&str, &str> = query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let builds = if let Some(request) = filters.get("buildrequestid") {
        master.store.builds_of_request(parse_id("buildrequestid", request)?).await?
    } else if let Some(builder) = filters.get("builderid") {
        master.store.builds_of_builder(parse_id("builderid", builder)?, 50).await?
    } else {
        return Err(ApiError::BadRequest("filter builds by `buildrequestid` or `builderid`".into()));
    };
    let with_properties = wants_properties(&query);
    Ok(envelope("builds", builds.iter().map(|b| build_json(b, with_properties)).collect()))
}

async fn get_build(
    State(master): State<AppState>,
    Path(build_id): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let build_id: i64 = parse_id("build id", &build_id)?;
    let build = master.store.build(build_id).await?.ok_or_else(|| ApiError::NotFound(format!("build {build_id}")))?;
    Ok(envelope("builds", vec![build_json(&build, wants_properties(&query))]))
}

async fn list_build_steps(State(master): State<AppState>, Path(build_id): Path<String>) -> ApiResult<Json<Value>> {
    let build_id: i64 = parse_id("build id", &build_id)?;
    let steps = master.store.steps_of_build(build_id).await?;
    Ok(envelope("steps", steps.iter().map(step_json).collect()))
}

async fn list_step_logs(State(master): State<AppState>, Path(step_id): Path<String>) -> ApiResult<Json<Value>> {
    let step_id: i64 = parse_id("step id", &step_id)?;
    let logs = master.store.logs_of_step(step_id).await?;
    Ok(envelope("logs", logs.iter().map(log_json).collect()))
}

async fn get_log(State(master): State<AppState>, Path(log_id): Path<String>) -> ApiResult<Json<Value>> {
    let log_id: i64 = parse_id("log id", &log_id)?;
    let location =
        master.store.log_location(log_id).await?.ok_or_else(|| ApiError::NotFound(format!("log {log_id}")))?;
    Ok(envelope("logs", vec![log_json(&location.log)]))
}

/// What the step printed, byte for byte: from Postgres once archived, from
/// the live Redis stream before. Streamed, so a log of any size costs one
/// chunk of memory. With `follow=true` the answer stays open and carries the
/// step's output as it is printed, until the log is archived (`curl -N`
/// shows it like `tail -f`).
async fn get_log_raw(
    State(master): State<AppState>,
    Path(log_id): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let log_id: i64 = parse_id("log id", &log_id)?;
    let mut follow = false;
    for (name, value) in &query {
        match name.as_str() {
            "follow" => follow = parse_bool(name, value)?,
            _ => return Err(ApiError::BadRequest(format!("unknown query parameter `{name}` (known: follow)"))),
        }
    }
    let location =
        master.store.log_location(log_id).await?.ok_or_else(|| ApiError::NotFound(format!("log {log_id}")))?;
    let key = master.namespace.log_stream_key(
        &location.worker_name,
        location.build_id,
        location.step_number,
        &location.log.slug,
    );
    let pieces = if follow && !location.log.complete {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(LIVE_RESPONSE_TIMEOUT));
        let live = master.redis_client.get_multiplexed_async_connection_with_config(&config).await?;
        logs::follow(master.store.clone(), live, log_id, key)
    } else {
        logs::raw_bytes(&master.store, master.redis.clone(), log_id, location.log.complete, key)
    };
    let pieces = pieces.map(move |piece| {
        piece.map(Bytes::from).map_err(|error| {
            tracing::error!(%error, log.id = log_id, "log download failed midway");
            std::io::Error::other(error.to_string())
        })
    });
    let filename = format!("build{}_step{}_{}.log", location.build_id, location.step_number, location.log.slug);
    let disposition = if follow { "inline".to_owned() } else { format!("attachment; filename=\"{filename}\"") };
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
            // Tells proxies that buffer (nginx) to pass a live log through.
            (header::HeaderName::from_static("x-accel-buffering"), "no".to_owned()),
        ],
        Body::from_stream(pieces),
    )
        .into_response())
}

/// Longer than a follower's wait for new output, so a quiet log is not a
/// Redis timeout.
const LIVE_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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

async fn get_buildrequest(State(master): State<AppState>, Path(request_id): Path<String>) -> ApiResult<Json<Value>> {
    let request_id: i64 = parse_id("buildrequest id", &request_id)?;
    let request = master
        .store
        .buildrequest(request_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("buildrequest {request_id}")))?;
    Ok(envelope("buildrequests", vec![buildrequest_json(&request)]))
}

// --- control (JSON-RPC 2.0) ---------------------------------------------------

#[derive(Deserialize)]
struct RpcCall {
    jsonrpc: Option<String>,
    method: String,
    #[serde(default)]
    params: serde_json::Map<String, Value>,
    #[serde(default)]
    id: Value,
}

/// A JSON-RPC error answer, with the HTTP status Buildbot uses for it.
struct RpcFailure {
    id: Value,
    code: i64,
    error: ApiError,
}

impl IntoResponse for RpcFailure {
    fn into_response(self) -> Response {
        self.error.log();
        let status = self.error.status();
        let body = json!({
            "jsonrpc": "2.0",
            "id": self.id,
            "error": { "code": self.code, "message": self.error.public_message() },
        });
        (status, Json(body)).into_response()
    }
}

const RPC_PARSE_ERROR: i64 = -32700;
const RPC_INVALID_REQUEST: i64 = -32600;
const RPC_METHOD_NOT_FOUND: i64 = -32601;
const RPC_INVALID_PARAMS: i64 = -32602;
const RPC_INTERNAL_ERROR: i64 = -32603;

fn parse_call(body: Result<Json<Value>, JsonRejection>) -> Result<RpcCall, RpcFailure> {
    let Json(value) = body.map_err(|rejection| RpcFailure {
        id: Value::Null,
        code: RPC_PARSE_ERROR,
        error: ApiError::BadRequest(format!("body is not JSON: {}", rejection.body_text())),
    })?;
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    let call: RpcCall = serde_json::from_value(value).map_err(|error| RpcFailure {
        id: id.clone(),
        code: RPC_INVALID_REQUEST,
        error: ApiError::BadRequest(format!("not a JSON-RPC 2.0 request: {error}")),
    })?;
    if call.jsonrpc.as_deref().is_some_and(|v| v != "2.0") {
        return Err(RpcFailure {
            id,
            code: RPC_INVALID_REQUEST,
            error: ApiError::BadRequest("jsonrpc must be \"2.0\"".into()),
        });
    }
    Ok(call)
}

fn rpc_result(id: Value, result: Value) -> Response {
    Json(json!({ "jsonrpc": "2.0", "id": id, "result": result })).into_response()
}

fn rpc_error(id: &Value, error: ApiError) -> RpcFailure {
    let code = match error {
        ApiError::BadRequest(_) | ApiError::NotFound(_) | ApiError::Conflict(_) => RPC_INVALID_PARAMS,
        ApiError::PayloadTooLarge(_) => RPC_INVALID_REQUEST,
        ApiError::Unavailable(_) | ApiError::Internal(_) => RPC_INTERNAL_ERROR,
    };
    RpcFailure { id: id.clone(), code, error }
}

/// Parameters of `force` that are not custom properties.
const FORCE_FIELDS: [&str; 6] = ["builderNames", "builderid", "reason", "owner", "priority", "properties"];

/// `force` on a force scheduler: writes the buildset and its requests, then
/// rings the builders' doorbells. The answer comes after the commit, so an
/// acknowledged request is never lost; a doorbell that cannot be rung now is
/// rung later by the reconciler.
async fn force_scheduler(
    State(master): State<AppState>,
    Path(scheduler_name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, RpcFailure> {
    let call = parse_call(body)?;
    let id = call.id.clone();
    if call.method != "force" {
        return Err(RpcFailure {
            id,
            code: RPC_METHOD_NOT_FOUND,
            error: ApiError::BadRequest(format!("method `{}` does not exist here; use `force`", call.method)),
        });
    }
    let result = force(&master, &scheduler_name, &call.params).await.map_err(|error| rpc_error(&id, error))?;
    Ok(rpc_result(id, result))
}

async fn force(
    master: &Arc<Master>,
    scheduler_name: &str,
    params: &serde_json::Map<String, Value>,
) -> ApiResult<Value> {
    let catalog = master.catalog();
    let scheduler = catalog
        .config
        .master
        .schedulers
        .iter()
        .find(|s| s.name() == scheduler_name)
        .ok_or_else(|| ApiError::NotFound(format!("force scheduler `{scheduler_name}`")))?;
    let SchedulerConfig::Force { builders: allowed, .. } = scheduler;

    let builder_names: Vec<String> = match (params.get("builderNames"), params.get("builderid")) {
        (Some(names), _) => serde_json::from_value(names.clone())
            .map_err(|_| ApiError::BadRequest("builderNames must be a list of builder names".into()))?,
        (None, Some(id)) => {
            let id = id.as_i64().ok_or_else(|| ApiError::BadRequest("builderid must be a number".into()))?;
            let name = catalog
                .builder_ids
                .iter()
                .find_map(|(name, builder_id)| (i64::from(*builder_id) == id).then(|| name.clone()))
                .ok_or_else(|| ApiError::NotFound(format!("builder {id}")))?;
            vec![name]
        }
        (None, None) => {
            return Err(ApiError::BadRequest("give builderNames (a list) or builderid".into()));
        }
    };
    if builder_names.is_empty() {
        return Err(ApiError::BadRequest("builderNames is empty".into()));
    }
    let text_param = |name: &str| -> ApiResult<Option<String>> {
        match params.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(ApiError::BadRequest(format!("{name} must be a string"))),
        }
    };
    let reason = text_param("reason")?.unwrap_or_else(|| format!("forced by the {scheduler_name} scheduler"));
    let owner = text_param("owner")?;
    let priority = match params.get("priority") {
        None | Some(Value::Null) => 0,
        Some(value) => value
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| ApiError::BadRequest("priority must be a whole number".into()))?,
    };

    let mut requests = Vec::with_capacity(builder_names.len());
    let mut names_by_id = HashMap::with_capacity(builder_names.len());
    for name in &builder_names {
        let (_, builder_id) = catalog.builder(name).ok_or_else(|| ApiError::NotFound(format!("builder `{name}`")))?;
        if !allowed.contains(name) {
            return Err(ApiError::BadRequest(format!("scheduler `{scheduler_name}` cannot force builder `{name}`")));
        }
        requests.push(NewRequest { builder_id, priority });
        names_by_id.insert(builder_id, name.as_str());
    }

    let source = "Force Build Form";
    let mut properties: BTreeMap<String, Value> = BTreeMap::new();
    properties.insert("reason".into(), json!([reason, source]));
    properties.insert("scheduler".into(), json!([scheduler_name, "Scheduler"]));
    if let Some(owner) = &owner {
        properties.insert("owner".into(), json!([owner, source]));
    }
    match params.get("properties") {
        None | Some(Value::Null) => {}
        Some(Value::Object(custom)) => {
            for (name, value) in custom {
                properties.insert(name.clone(), json!([value, source]));
            }
        }
        Some(_) => return Err(ApiError::BadRequest("properties must be an object of name: value".into())),
    }
    for (name, value) in params {
        if !FORCE_FIELDS.contains(&name.as_str()) {
            properties.insert(name.clone(), json!([value, source]));
        }
    }
    let properties = serde_json::to_value(properties).expect("properties serialize");

    let (buildset_id, created) = master
        .store
        .create_buildset(NewBuildset {
            reason: &reason,
            owner: owner.as_deref(),
            scheduler: scheduler_name,
            properties: &properties,
            requests,
        })
        .await?;
    let announcements =
        created.iter().map(|(builder_id, request_id)| (names_by_id[builder_id].to_owned(), *request_id));
    master.announce(announcements.collect()).await;
    tracing::info!(buildset.id = buildset_id, builders = ?builder_names, "build forced");
    let requests: serde_json::Map<String, Value> =
        created.iter().map(|(builder_id, request_id)| (builder_id.to_string(), json!(request_id))).collect();
    Ok(json!([buildset_id, requests]))
}

/// `stop` on a build: asks its worker to kill it; the worker reports it
/// CANCELLED.
async fn control_build(
    State(master): State<AppState>,
    Path(build_id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, RpcFailure> {
    let call = parse_call(body)?;
    let id = call.id.clone();
    let build_id: i64 = parse_id("build id", &build_id).map_err(|error| rpc_error(&id, error))?;
    match call.method.as_str() {
        "stop" => {
            let reason = call.params.get("reason").and_then(Value::as_str).unwrap_or("stopped by a user").to_owned();
            let build = master
                .store
                .build(build_id)
                .await
                .map_err(|e| rpc_error(&id, e.into()))?
                .ok_or_else(|| rpc_error(&id, ApiError::NotFound(format!("build {build_id}"))))?;
            if build.complete_at.is_some() {
                return Err(rpc_error(&id, ApiError::Conflict(format!("build {build_id} has already finished"))));
            }
            let sent =
                master.broker.send_control(&build.worker_name, &ControlMessage::StopBuild { build_id, reason }).await;
            match sent {
                Ok(()) => {}
                Err(BrokerError::Unroutable(_)) => {
                    let message = format!(
                        "worker `{}` is not connected; build {build_id} ends as RETRY when its lease expires",
                        build.worker_name
                    );
                    return Err(rpc_error(&id, ApiError::Conflict(message)));
                }
                Err(error) => return Err(rpc_error(&id, error.into())),
            }
            tracing::info!(build.id = build_id, worker.name = %build.worker_name, "stop requested");
            Ok(rpc_result(id, Value::Null))
        }
        other => Err(RpcFailure {
            id,
            code: RPC_METHOD_NOT_FOUND,
            error: ApiError::BadRequest(format!("method `{other}` does not exist on builds; use `stop`")),
        }),
    }
}
