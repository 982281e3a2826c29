//! The control side of `/api/v2`: JSON-RPC 2.0 posted to a resource, as
//! Buildbot does it. `force` on a force scheduler; `stop` and `rebuild` on a
//! build; `cancel` and `set_priority` on a build request; `pause`, `unpause`
//! and `stop` on a worker. Every action that creates work commits before it
//! answers, so an acknowledged request is never lost. Each handler takes the
//! `Caller` and asks `auth::authorize` before anything else.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::config::SchedulerConfig;
use shared::wire::ControlMessage;

use super::auth::{self, Action, Caller, Target};
use super::error::invalid;
use super::{ApiError, ApiResult, parse_id};
use crate::auth::Person;
use shared::ids::{BuildId, BuildRequestId, BuilderId, BuilderName, WorkerId};

use crate::Master;
use crate::broker::BrokerError;
use crate::live::Change;
use crate::store::{CancelOutcome, NewBuildset, NewRequest};

type AppState = Arc<Master>;

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
pub struct RpcFailure {
    id: Value,
    code: i64,
    error: ApiError,
}

impl IntoResponse for RpcFailure {
    fn into_response(self) -> Response {
        self.error.log();
        let status = self.error.status();
        let mut error = json!({ "code": self.code, "message": self.error.public_message() });
        if let ApiError::InvalidField { field, message } = &self.error {
            error["data"] = json!({ field: message });
        }
        let body = json!({ "jsonrpc": "2.0", "id": self.id, "error": error });
        let mut response = (status, Json(body)).into_response();
        super::error::add_challenge(&mut response);
        response
    }
}

const RPC_PARSE_ERROR: i64 = -32700;
const RPC_INVALID_REQUEST: i64 = -32600;
const RPC_METHOD_NOT_FOUND: i64 = -32601;
const RPC_INVALID_PARAMS: i64 = -32602;
const RPC_INTERNAL_ERROR: i64 = -32603;
/// A server-defined code: not logged in, or not allowed (HTTP 401 or 403 says which).
const RPC_NOT_ALLOWED: i64 = -32001;

/// Parses a call and checks its method is one of `methods` (of `what`).
fn parse_call(body: Result<Json<Value>, JsonRejection>, methods: &[&str], what: &str) -> Result<RpcCall, RpcFailure> {
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
    if !methods.contains(&call.method.as_str()) {
        return Err(RpcFailure {
            id,
            code: RPC_METHOD_NOT_FOUND,
            error: ApiError::BadRequest(format!(
                "method `{}` does not exist on {what}; use {}",
                call.method,
                methods.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
            )),
        });
    }
    Ok(call)
}

/// Whether `caller` may make `call` on `target`, as a JSON-RPC error if
/// not.
async fn authorize(
    master: &Master,
    caller: &Caller,
    call: &RpcCall,
    action: Action,
    target: Target,
) -> Result<(), RpcFailure> {
    auth::authorize(master, caller, action, target).await.map_err(|error| rpc_error(&call.id, error))
}

/// The JSON-RPC answer to a call's outcome.
fn answer(id: Value, outcome: ApiResult<Value>) -> Result<Response, RpcFailure> {
    match outcome {
        Ok(result) => Ok(rpc_result(id, result)),
        Err(error) => Err(rpc_error(&id, error)),
    }
}

fn rpc_result(id: Value, result: Value) -> Response {
    Json(json!({ "jsonrpc": "2.0", "id": id, "result": result })).into_response()
}

fn rpc_error(id: &Value, error: ApiError) -> RpcFailure {
    let code = match error {
        ApiError::BadRequest(_)
        | ApiError::InvalidField { .. }
        | ApiError::NotFound(_)
        | ApiError::Conflict(_)
        | ApiError::Gone(_) => RPC_INVALID_PARAMS,
        ApiError::PayloadTooLarge(_) | ApiError::TooManyRequests(_) => RPC_INVALID_REQUEST,
        ApiError::Unauthorized(_) | ApiError::Forbidden(_) => RPC_NOT_ALLOWED,
        ApiError::Unavailable(_) | ApiError::BadGateway(_) | ApiError::Internal(_) => RPC_INTERNAL_ERROR,
    };
    RpcFailure { id: id.clone(), code, error }
}

/// Parameters of `force` that are not custom properties.
const FORCE_FIELDS: [&str; 6] = ["builderNames", "builderid", "reason", "owner", "priority", "properties"];

/// Properties every forced build has, from the form's own fields and the
/// scheduler, which the checks of forced properties leave alone.
const BUILD_FIELDS: [&str; 5] = ["reason", "scheduler", "owner", "branch", "revision"];

/// `force` on a force scheduler: writes the buildset and its requests, then
/// rings the builders' doorbells. The answer comes after the commit, so an
/// acknowledged request is never lost; a doorbell that cannot be rung now is
/// rung later by the reconciler.
pub async fn force_scheduler(
    State(master): State<AppState>,
    Path(scheduler_name): Path<String>,
    caller: Caller,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, RpcFailure> {
    let mut call = parse_call(body, &["force"], "force schedulers")?;
    authorize(&master, &caller, &call, Action::Force, Target::Nothing).await?;
    // A logged-in user owns what they force: they may act on it as its
    // `owner`. The `owner` shown is theirs too, unless they name someone.
    let owned_by = caller.person().map(Person::identity);
    if let Some(person) = caller.person()
        && !call.params.contains_key("owner")
    {
        call.params.insert("owner".into(), Value::String(person.user.clone()));
    }
    let result = force(&master, &scheduler_name, &call.params, owned_by.as_deref()).await;
    answer(call.id, result)
}

async fn force(
    master: &Arc<Master>,
    scheduler_name: &str,
    params: &serde_json::Map<String, Value>,
    owned_by: Option<&str>,
) -> ApiResult<Value> {
    let catalog = master.catalog();
    let scheduler = catalog
        .config
        .master
        .schedulers
        .iter()
        .find_map(|scheduler| match scheduler {
            SchedulerConfig::Force { name, builders, parameters, other_properties } if name == scheduler_name => {
                Some((builders, parameters, *other_properties))
            }
            _ => None,
        })
        .ok_or_else(|| ApiError::NotFound(format!("force scheduler `{scheduler_name}`")))?;
    let (allowed, parameters, other_properties) = scheduler;

    let builder_names: Vec<BuilderName> = match (params.get("builderNames"), params.get("builderid")) {
        (Some(names), _) => serde_json::from_value(names.clone())
            .map_err(|_| invalid("builderNames", "must be a list of builder names"))?,
        (None, Some(id)) => {
            // Buildbot's web UI sends it as a string ("12"), scripts as a number.
            let id = id
                .as_i64()
                .or_else(|| id.as_str().and_then(|text| text.trim().parse().ok()))
                .and_then(|id| i32::try_from(id).ok())
                .ok_or_else(|| invalid("builderid", "must be a builder's id (a number, or a string of one)"))?;
            let name =
                catalog.builder_name(BuilderId(id)).ok_or_else(|| ApiError::NotFound(format!("builder {id}")))?;
            vec![name.clone()]
        }
        (None, None) => {
            return Err(invalid("builderNames", "give builderNames (a list) or builderid"));
        }
    };
    if builder_names.is_empty() {
        return Err(invalid("builderNames", "is empty"));
    }
    let mut builder_names = builder_names;
    builder_names.sort();
    builder_names.dedup();
    let text_param = |name: &str| -> ApiResult<Option<String>> {
        match params.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(invalid(name, "must be a string")),
        }
    };
    let reason = text_param("reason")?.unwrap_or_else(|| format!("forced by the {scheduler_name} scheduler"));
    let owner = text_param("owner")?;
    let priority = match params.get("priority") {
        None | Some(Value::Null) => 0,
        Some(value) => value
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| invalid("priority", "must be a whole number"))?,
    };

    let mut requests = Vec::with_capacity(builder_names.len());
    let mut builders = Vec::with_capacity(builder_names.len());
    for name in &builder_names {
        let (builder, builder_id) =
            catalog.builder(name.as_str()).ok_or_else(|| ApiError::NotFound(format!("builder `{name}`")))?;
        if !allowed.contains(name) {
            return Err(invalid("builderNames", format!("scheduler `{scheduler_name}` cannot force builder `{name}`")));
        }
        requests.push(NewRequest { builder_id, priority });
        builders.push(builder);
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
        Some(_) => return Err(invalid("properties", "must be an object of name: value")),
    }
    for (name, value) in params {
        if !FORCE_FIELDS.contains(&name.as_str()) {
            properties.insert(name.clone(), json!([value, source]));
        }
    }
    // What was forced is data, but not every name is the forcer's to set:
    // a builder's configured properties stay as configured (a worker's are
    // kept at the claim), and a scheduler may allow only its parameters.
    let forced: Vec<String> =
        properties.keys().filter(|name| !BUILD_FIELDS.contains(&name.as_str())).cloned().collect();
    for name in &forced {
        if let Some(builder) = builders.iter().find(|builder| builder.properties.contains_key(name)) {
            return Err(invalid(
                name,
                format!("is set by the configuration of builder `{}` and cannot be forced", builder.name),
            ));
        }
        if !other_properties && !parameters.iter().any(|parameter| parameter.name == *name) {
            let known: Vec<&str> = parameters.iter().map(|parameter| parameter.name.as_str()).collect();
            return Err(invalid(
                name,
                format!(
                    "is not a parameter of scheduler `{scheduler_name}`, which takes only its own (`{}`)",
                    known.join("`, `")
                ),
            ));
        }
    }
    // The scheduler's own parameters: their defaults, choices and patterns.
    for parameter in parameters {
        let given = properties.get(&parameter.name).map(|pair| pair[0].clone());
        let value = match given {
            None | Some(Value::Null) => Value::String(parameter.default.clone()),
            Some(value) => value,
        };
        let text = match &value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        if !parameter.allows(&text) {
            let what = match (&parameter.pattern, parameter.choices.is_empty()) {
                (_, false) => format!("must be one of: {}", parameter.choices.join(", ")),
                (Some(pattern), true) => format!("must match `{pattern}`"),
                (None, true) => "is not allowed".to_owned(),
            };
            return Err(invalid(&parameter.name, what));
        }
        properties.insert(parameter.name.clone(), json!([value, source]));
    }
    let properties = serde_json::to_value(properties).expect("properties serialize");

    let buildset = NewBuildset {
        reason: &reason,
        owner: owner.as_deref(),
        owned_by,
        scheduler: scheduler_name,
        properties: &properties,
        requests,
        traceparent: shared::telemetry::traceparent(),
        tick: None,
        triggered_by: None,
    };
    let submitted = submit(master, buildset).await?;
    tracing::info!(builders = ?builder_names, "build forced");
    Ok(submitted)
}

/// Submits a buildset; answers Buildbot's `[bsid, {"<builderid>": brid}]`.
async fn submit(master: &Arc<Master>, buildset: NewBuildset<'_>) -> ApiResult<Value> {
    let created = master
        .submit(buildset)
        .await?
        .ok_or_else(|| ApiError::Internal("a buildset with neither tick nor upstream created nothing".into()))?;
    let requests: serde_json::Map<String, Value> =
        created.requests.iter().map(|(builder_id, request_id)| (builder_id.to_string(), json!(request_id))).collect();
    Ok(json!([created.id, requests]))
}

fn reason_param(params: &serde_json::Map<String, Value>, default: &str) -> ApiResult<String> {
    match params.get("reason") {
        None | Some(Value::Null) => Ok(default.to_owned()),
        Some(Value::String(reason)) => Ok(reason.clone()),
        Some(_) => Err(invalid("reason", "must be a string")),
    }
}

// --- builds -------------------------------------------------------------------

/// `stop` (a running build: its worker kills it and reports CANCELLED) and
/// `rebuild` (a new request of the same builder, with the build's reason,
/// owner, priority and properties).
pub async fn control_build(
    State(master): State<AppState>,
    Path(build_id): Path<String>,
    caller: Caller,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, RpcFailure> {
    let call = parse_call(body, &["stop", "rebuild"], "builds")?;
    let action = if call.method == "stop" { Action::StopBuild } else { Action::Rebuild };
    let target = parse_id("build id", &build_id).map_or(Target::Nothing, |id| Target::Build(BuildId(id)));
    authorize(&master, &caller, &call, action, target).await?;
    let outcome = async {
        let build_id = BuildId(parse_id("build id", &build_id)?);
        match call.method.as_str() {
            "stop" => {
                let reason = reason_param(&call.params, "stopped by a user")?;
                stop_build(&master, build_id, reason).await.map(|()| Value::Null)
            }
            _ => rebuild(&master, build_id, caller.person()).await,
        }
    };
    let outcome = outcome.await;
    answer(call.id, outcome)
}

async fn stop_build(master: &Master, build_id: BuildId, reason: String) -> ApiResult<()> {
    let build = master.store.build(build_id).await?.ok_or_else(|| ApiError::NotFound(format!("build {build_id}")))?;
    if build.complete_at.is_some() {
        return Err(ApiError::Conflict(format!("build {build_id} has already finished")));
    }
    match master.broker.send_control(&build.worker_name, &ControlMessage::StopBuild { build_id, reason }).await {
        Ok(()) => {}
        Err(BrokerError::Unroutable(_)) => {
            return Err(ApiError::Conflict(format!(
                "worker `{}` is not connected; build {build_id} ends as RETRY when its lease expires",
                build.worker_name
            )));
        }
        Err(error) => return Err(error.into()),
    }
    tracing::info!(build.id = %build_id, worker.name = %build.worker_name, "stop requested");
    Ok(())
}

/// A rebuild is owned by whoever asked for it.
async fn rebuild(master: &Arc<Master>, build_id: BuildId, asked_by: Option<&Person>) -> ApiResult<Value> {
    let source =
        master.store.rebuild_source(build_id).await?.ok_or_else(|| ApiError::NotFound(format!("build {build_id}")))?;
    if master.catalog().builder_by_id(source.builder_id).is_none() {
        return Err(ApiError::Conflict(format!("the builder of build {build_id} is no longer configured")));
    }
    let reason = format!("rebuild of build {} ({})", source.number, source.reason);
    let owned_by = asked_by.map(Person::identity);
    let buildset = NewBuildset {
        reason: &reason,
        owner: source.owner.as_deref(),
        owned_by: owned_by.as_deref(),
        scheduler: &source.scheduler,
        properties: &source.properties,
        requests: vec![NewRequest { builder_id: source.builder_id, priority: source.priority }],
        traceparent: shared::telemetry::traceparent(),
        tick: None,
        triggered_by: None,
    };
    let submitted = submit(master, buildset).await?;
    tracing::info!(build.id = %build_id, "rebuild requested");
    Ok(submitted)
}

// --- build requests -------------------------------------------------------------

/// `cancel` (a pending request ends CANCELLED; a claimed one has its build
/// stopped) and `set_priority` (`priority`: a whole number, higher first).
pub async fn control_buildrequest(
    State(master): State<AppState>,
    Path(request_id): Path<String>,
    caller: Caller,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, RpcFailure> {
    let call = parse_call(body, &["cancel", "set_priority"], "build requests")?;
    let action = if call.method == "cancel" { Action::Cancel } else { Action::SetPriority };
    let target =
        parse_id("buildrequest id", &request_id).map_or(Target::Nothing, |id| Target::Request(BuildRequestId(id)));
    authorize(&master, &caller, &call, action, target).await?;
    let outcome = async {
        let request_id = BuildRequestId(parse_id("buildrequest id", &request_id)?);
        match call.method.as_str() {
            "cancel" => {
                let reason = reason_param(&call.params, "cancelled by a user")?;
                match master.store.cancel_request(request_id).await? {
                    CancelOutcome::Cancelled => {
                        tracing::info!(buildrequest.id = %request_id, %reason, "request cancelled");
                        master.live.send(Change::Request(request_id, "cancelled"));
                        Ok(Value::Null)
                    }
                    CancelOutcome::Running { build_id, .. } => {
                        stop_build(&master, build_id, reason).await.map(|()| Value::Null)
                    }
                    CancelOutcome::AlreadyComplete => {
                        Err(ApiError::Conflict(format!("buildrequest {request_id} is already complete")))
                    }
                    CancelOutcome::NotFound => Err(ApiError::NotFound(format!("buildrequest {request_id}"))),
                }
            }
            _ => {
                let priority = call
                    .params
                    .get("priority")
                    .and_then(Value::as_i64)
                    .and_then(|p| i32::try_from(p).ok())
                    .ok_or_else(|| invalid("priority", "must be a whole number"))?;
                match master.store.set_priority(request_id, priority).await?.as_deref() {
                    None => return Err(ApiError::NotFound(format!("buildrequest {request_id}"))),
                    Some("complete") => {
                        return Err(ApiError::Conflict(format!("buildrequest {request_id} is already complete")));
                    }
                    Some(_) => {}
                }
                master.live.send(Change::Request(request_id, "update"));
                Ok(Value::Null)
            }
        }
    };
    let outcome = outcome.await;
    answer(call.id, outcome)
}

// --- workers --------------------------------------------------------------------

/// `pause` (no new builds; running ones go on), `unpause`, and `stop` (the
/// worker finishes its running builds and exits, as on SIGTERM), on a worker
/// by id or name. A worker that is not connected learns its paused state
/// when it says hello.
pub async fn control_worker(
    State(master): State<AppState>,
    Path(worker): Path<String>,
    caller: Caller,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, RpcFailure> {
    let call = parse_call(body, &["pause", "unpause", "stop"], "workers")?;
    authorize(&master, &caller, &call, Action::ManageWorkers, Target::Nothing).await?;
    let outcome = async {
        let worker_id = match worker.parse::<i32>() {
            Ok(id) => WorkerId(id),
            Err(_) => master
                .store
                .worker_id_by_name(&worker)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("worker `{worker}`")))?,
        };
        let not_found = || ApiError::NotFound(format!("worker {worker_id}"));
        let (name, message, event) = match call.method.as_str() {
            "pause" | "unpause" => {
                let paused = call.method == "pause";
                let reason = reason_param(&call.params, "paused by a user")?;
                let (name, version) =
                    master.store.set_worker_paused(worker_id, paused, Some(&reason)).await?.ok_or_else(not_found)?;
                // Unpaused inside a downtime window, it still takes nothing.
                let catalog = master.catalog();
                let down = catalog.config.worker(name.as_str()).is_some_and(|w| w.in_downtime(chrono::Utc::now()));
                let message = ControlMessage::SetPaused { paused: paused || down, version };
                (name, message, if paused { "paused" } else { "unpaused" })
            }
            _ => {
                let reason = reason_param(&call.params, "stopped by a user")?;
                let name = master.store.set_worker_graceful(worker_id).await?.ok_or_else(not_found)?;
                (name, ControlMessage::Shutdown { reason }, "stopping")
            }
        };
        match master.broker.send_control(&name, &message).await {
            // Not connected: the state is in Postgres for its next hello.
            Ok(()) | Err(BrokerError::Unroutable(_)) => {}
            Err(error) => return Err(error.into()),
        }
        tracing::info!(worker.name = %name, action = %call.method, "worker control");
        master.live.send(Change::Worker(worker_id, event));
        Ok(Value::Null)
    };
    let outcome = outcome.await;
    answer(call.id, outcome)
}

// --- builders -----------------------------------------------------------------

/// `pause` (its pending requests wait; running builds go on; `reason` is
/// shown) and `unpause` (they are announced again), on a builder by id or
/// name.
pub async fn control_builder(
    State(master): State<AppState>,
    Path(builder): Path<String>,
    caller: Caller,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, RpcFailure> {
    let call = parse_call(body, &["pause", "unpause"], "builders")?;
    authorize(&master, &caller, &call, Action::ManageBuilders, Target::Nothing).await?;
    let outcome = async {
        let catalog = master.catalog();
        let builder_id = match builder.parse::<i32>() {
            Ok(id) => BuilderId(id),
            Err(_) => catalog.builder_id(&builder).ok_or_else(|| ApiError::NotFound(format!("builder `{builder}`")))?,
        };
        let paused = call.method == "pause";
        let reason = reason_param(&call.params, "paused by a user")?;
        let (name, pending) = master
            .store
            .set_builder_paused(builder_id, paused, Some(&reason))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("builder {builder_id}")))?;
        tracing::info!(builder.name = %name, action = %call.method, %reason, "builder control");
        if !pending.is_empty() {
            let master = master.clone();
            let requests = pending.into_iter().map(|request| (name.clone(), request)).collect();
            tokio::spawn(async move { master.announce(requests).await });
        }
        Ok(Value::Null)
    };
    let outcome = outcome.await;
    answer(call.id, outcome)
}
