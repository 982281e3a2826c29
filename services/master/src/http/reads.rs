//! The read side of `/api/v2`: every Buildbot resource, as a collection and
//! one by one, under the paths Buildbot serves them. A handler turns its path
//! into filters (`builders/3/builds` is builds with `builderid=3`), lets
//! [`query::parse`] add the client's own, and asks the store for one page.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use shared::config::SchedulerConfig;
use shared::ids::{BuildId, ChangeId, LogId};

use super::query::{self, Parsed};
use super::{ApiError, ApiResult, parse_bool, parse_id};
use crate::Master;
use crate::logs;
use crate::read_model::{self, by};
use crate::store::resources::{
    ARTIFACTS, BUILDERS, BUILDREQUESTS, BUILDS, BUILDSETS, CHANGES, FORCESCHEDULERS, Filter, LOGS, MASTERS, Op,
    Resource, STEPS, Scalar, TEST_RESULT_SETS, TEST_RESULTS, WORKERS,
};

type AppState = Arc<Master>;
type Params = Query<Vec<(String, String)>>;

/// `{"<plural>": [...], "meta": {"total": n}}`, Buildbot's envelope.
fn envelope(plural: &str, items: Vec<Value>, total: i64) -> Json<Value> {
    Json(json!({ plural: items, "meta": { "total": total } }))
}

/// One page of `resource` within `scope`, shaped for the client; `count`
/// says whether `total` must count every match or may be the page's length.
async fn page(
    master: &Master,
    resource: &'static Resource,
    params: &[(String, String)],
    scope: Vec<Filter>,
    count: bool,
) -> ApiResult<(Vec<Value>, i64)> {
    let Parsed { mut spec, properties } = query::parse(resource, params, scope)?;
    spec.count = count;
    let page = read_model::list(master, resource, &spec).await?;
    let mut items = page.items;
    if let Some(wanted) = properties.filter(|wanted| !wanted.is_empty()) {
        for item in &mut items {
            if let Some(Value::Object(all)) = item.get_mut("properties") {
                all.retain(|name, _| wanted.contains(name));
            }
        }
    }
    Ok((items, page.total))
}

/// Items of `resource` for Buildbot query parameters, as the API serves
/// them: the web pages read through the same checked path as clients do
/// (without counting every match, which pages do not show).
pub(super) async fn api_items(
    master: &Master,
    resource: &'static Resource,
    params: &[(&str, String)],
) -> ApiResult<Vec<Value>> {
    let params: Vec<(String, String)> =
        params.iter().map(|(name, value)| ((*name).to_owned(), value.clone())).collect();
    Ok(page(master, resource, &params, Vec::new(), false).await?.0)
}

async fn collection(
    master: &Master,
    resource: &'static Resource,
    params: &[(String, String)],
    scope: Vec<Filter>,
) -> ApiResult<Json<Value>> {
    let (items, total) = page(master, resource, params, scope, true).await?;
    Ok(envelope(resource.plural, items, total))
}

/// A single resource: a list of one, or 404 naming what was asked for.
async fn single(
    master: &Master,
    resource: &'static Resource,
    params: &[(String, String)],
    scope: Vec<Filter>,
    what: impl FnOnce() -> String,
) -> ApiResult<Json<Value>> {
    let (items, _) = page(master, resource, params, scope, true).await?;
    if items.is_empty() {
        return Err(ApiError::NotFound(what()));
    }
    let total = items.len() as i64;
    Ok(envelope(resource.plural, items, total))
}

/// One item by its numeric id (`builds/{build_id}`).
async fn by_id(
    master: &Master,
    resource: &'static Resource,
    id_field: &str,
    text: &str,
    params: &[(String, String)],
) -> ApiResult<Json<Value>> {
    let what = resource.plural.trim_end_matches('s');
    let id: i64 = parse_id(&format!("{what} id"), text)?;
    single(master, resource, params, vec![by(resource, id_field, Scalar::Int(id))], || format!("{what} {id}")).await
}

/// The items of `resource` under a parent given by its numeric id
/// (`builds/{build_id}/steps`).
async fn children(
    master: &Master,
    resource: &'static Resource,
    parent_field: &str,
    parent: &str,
    text: &str,
    params: &[(String, String)],
) -> ApiResult<Json<Value>> {
    let id: i64 = parse_id(&format!("{parent} id"), text)?;
    collection(master, resource, params, vec![by(resource, parent_field, Scalar::Int(id))]).await
}

/// The id of the first item matching `scope`, if any.
async fn find_id(
    master: &Master,
    resource: &'static Resource,
    id_field: &str,
    scope: Vec<Filter>,
) -> ApiResult<Option<i64>> {
    let item = read_model::lookup(master, resource, &[id_field], scope).await?;
    Ok(item.and_then(|item| item.get(id_field).and_then(Value::as_i64)))
}

/// A number is an id, anything else a name, as Buildbot accepts both.
fn id_or_name(resource: &'static Resource, id_field: &str, text: &str) -> Filter {
    match text.parse::<i64>() {
        Ok(id) => by(resource, id_field, Scalar::Int(id)),
        Err(_) => by(resource, "name", Scalar::Text(text.to_owned())),
    }
}

async fn builder_id(master: &Master, builder: &str) -> ApiResult<i64> {
    find_id(master, &BUILDERS, "builderid", vec![id_or_name(&BUILDERS, "builderid", builder)])
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("builder `{builder}`")))
}

async fn build_id_by_number(master: &Master, builder: &str, number: &str) -> ApiResult<i64> {
    let builder_id = builder_id(master, builder).await?;
    let number: i64 = parse_id("build number", number)?;
    let scope = vec![by(&BUILDS, "builderid", Scalar::Int(builder_id)), by(&BUILDS, "number", Scalar::Int(number))];
    find_id(master, &BUILDS, "buildid", scope)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("build {number} of builder `{builder}`")))
}

/// A step of a build by number or by name.
async fn step_id(master: &Master, build_id: i64, step: &str) -> ApiResult<i64> {
    let which = match step.parse::<i64>() {
        Ok(number) => by(&STEPS, "number", Scalar::Int(number)),
        Err(_) => by(&STEPS, "name", Scalar::Text(step.to_owned())),
    };
    find_id(master, &STEPS, "stepid", vec![by(&STEPS, "buildid", Scalar::Int(build_id)), which])
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("step `{step}` of build {build_id}")))
}

fn log_scope(step_id: i64, slug: &str) -> Vec<Filter> {
    vec![by(&LOGS, "stepid", Scalar::Int(step_id)), by(&LOGS, "slug", Scalar::Text(slug.to_owned()))]
}

// --- builders -----------------------------------------------------------------

pub async fn list_builders(State(master): State<AppState>, Query(params): Params) -> ApiResult<Json<Value>> {
    collection(&master, &BUILDERS, &params, vec![]).await
}

pub async fn get_builder(
    State(master): State<AppState>,
    Path(builder): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let scope = vec![id_or_name(&BUILDERS, "builderid", &builder)];
    single(&master, &BUILDERS, &params, scope, || format!("builder `{builder}`")).await
}

pub async fn list_builder_builds(
    State(master): State<AppState>,
    Path(builder): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let builder_id = builder_id(&master, &builder).await?;
    collection(&master, &BUILDS, &params, vec![by(&BUILDS, "builderid", Scalar::Int(builder_id))]).await
}

pub async fn list_builder_buildrequests(
    State(master): State<AppState>,
    Path(builder): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let builder_id = builder_id(&master, &builder).await?;
    collection(&master, &BUILDREQUESTS, &params, vec![by(&BUILDREQUESTS, "builderid", Scalar::Int(builder_id))]).await
}

pub async fn get_builder_build(
    State(master): State<AppState>,
    Path((builder, number)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let build_id = build_id_by_number(&master, &builder, &number).await?;
    single(&master, &BUILDS, &params, vec![by(&BUILDS, "buildid", Scalar::Int(build_id))], || {
        format!("build {build_id}")
    })
    .await
}

pub async fn list_builder_build_steps(
    State(master): State<AppState>,
    Path((builder, number)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let build_id = build_id_by_number(&master, &builder, &number).await?;
    collection(&master, &STEPS, &params, vec![by(&STEPS, "buildid", Scalar::Int(build_id))]).await
}

pub async fn get_builder_build_step(
    State(master): State<AppState>,
    Path((builder, number, step)): Path<(String, String, String)>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let build_id = build_id_by_number(&master, &builder, &number).await?;
    let step_id = step_id(&master, build_id, &step).await?;
    single(&master, &STEPS, &params, vec![by(&STEPS, "stepid", Scalar::Int(step_id))], || format!("step {step_id}"))
        .await
}

pub async fn list_builder_build_step_logs(
    State(master): State<AppState>,
    Path((builder, number, step)): Path<(String, String, String)>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let build_id = build_id_by_number(&master, &builder, &number).await?;
    let step_id = step_id(&master, build_id, &step).await?;
    collection(&master, &LOGS, &params, vec![by(&LOGS, "stepid", Scalar::Int(step_id))]).await
}

pub async fn get_builder_build_step_log(
    State(master): State<AppState>,
    Path((builder, number, step, slug)): Path<(String, String, String, String)>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let build_id = build_id_by_number(&master, &builder, &number).await?;
    let step_id = step_id(&master, build_id, &step).await?;
    single(&master, &LOGS, &params, log_scope(step_id, &slug), || format!("log `{slug}` of step {step_id}")).await
}

// --- builds -------------------------------------------------------------------

pub async fn list_builds(State(master): State<AppState>, Query(params): Params) -> ApiResult<Json<Value>> {
    collection(&master, &BUILDS, &params, vec![]).await
}

pub async fn get_build(
    State(master): State<AppState>,
    Path(build_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    by_id(&master, &BUILDS, "buildid", &build_id, &params).await
}

/// What each reporter told of a build: sent, pending (with its next
/// attempt and last error), skipped and why, or given up.
pub async fn list_build_notifications(
    State(master): State<AppState>,
    Path(build_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let build_id = shared::ids::BuildId(parse_id("build id", &build_id)?);
    let rows = master.store.notifications_of_build(build_id).await?;
    let total = rows.len();
    Ok(Json(json!({ "notifications": rows, "meta": { "total": total } })))
}

/// A whole-number query parameter from 1 to `most`, `default` when absent.
fn bounded(params: &[(String, String)], name: &str, default: i64, most: i64) -> ApiResult<i64> {
    match params.iter().find(|(key, _)| key == name) {
        None => Ok(default),
        Some((_, value)) => value
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=most).contains(n))
            .ok_or_else(|| ApiError::BadRequest(format!("`{name}` must be a whole number from 1 to {most}"))),
    }
}

/// Refuses query parameters other than `known`.
fn only(params: &[(String, String)], known: &[&str]) -> ApiResult<()> {
    match params.iter().find(|(key, _)| !known.contains(&key.as_str())) {
        Some((key, _)) => {
            Err(ApiError::BadRequest(format!("unknown query parameter `{key}` (known: {})", known.join(", "))))
        }
        None => Ok(()),
    }
}

/// `?days=` (default 30, at most 365) of history looked at; `?limit=`
/// (default 100) tests at most.
pub async fn list_flaky_tests(State(master): State<AppState>, Query(params): Params) -> ApiResult<Json<Value>> {
    only(&params, &["days", "limit"])?;
    let days = bounded(&params, "days", 30, 365)?;
    let limit = bounded(&params, "limit", 100, 10_000)?;
    let flaky = master.store.flaky_tests(days as u32, limit, None).await?;
    let total = flaky.len();
    Ok(Json(json!({ "flaky_tests": flaky, "meta": { "total": total } })))
}

/// Tests failing in the newest build of `?branch=` (default: no branch)
/// on each builder, with the build where they broke and the last one
/// where they passed; `?days=` and `?limit=` as for flaky tests.
pub async fn list_failing_tests(State(master): State<AppState>, Query(params): Params) -> ApiResult<Json<Value>> {
    only(&params, &["branch", "days", "limit"])?;
    let branch = params.iter().find(|(key, _)| key == "branch").map_or("", |(_, value)| value.as_str());
    let days = bounded(&params, "days", 30, 365)?;
    let limit = bounded(&params, "limit", 100, 10_000)?;
    let failing = master.store.failing_tests(branch, days as u32, limit).await?;
    let total = failing.len();
    Ok(Json(json!({ "failing_tests": failing, "meta": { "total": total } })))
}

pub async fn list_build_test_result_sets(
    State(master): State<AppState>,
    Path(build_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    children(&master, &TEST_RESULT_SETS, "buildid", "build", &build_id, &params).await
}

pub async fn list_step_test_result_sets(
    State(master): State<AppState>,
    Path(step_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    children(&master, &TEST_RESULT_SETS, "stepid", "step", &step_id, &params).await
}

pub async fn get_test_result_set(
    State(master): State<AppState>,
    Path(set_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    by_id(&master, &TEST_RESULT_SETS, "test_result_setid", &set_id, &params).await
}

pub async fn list_test_results(
    State(master): State<AppState>,
    Path(set_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    children(&master, &TEST_RESULTS, "test_result_setid", "test result set", &set_id, &params).await
}

pub async fn list_build_artifacts(
    State(master): State<AppState>,
    Path(build_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    children(&master, &ARTIFACTS, "buildid", "build", &build_id, &params).await
}

pub async fn get_artifact(
    State(master): State<AppState>,
    Path(artifact_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    by_id(&master, &ARTIFACTS, "artifactid", &artifact_id, &params).await
}

/// An artifact's bytes as its step left them, streamed a page of chunks at
/// a time. Always a download, never shown by the browser: what a build
/// made is not the site's to run.
pub async fn download_artifact(State(master): State<AppState>, Path(artifact_id): Path<String>) -> ApiResult<Response> {
    let id: i64 = parse_id("artifact id", &artifact_id)?;
    let artifact = master.store.artifact(id).await?.ok_or_else(|| ApiError::NotFound(format!("artifact {id}")))?;
    if let Some(deleted_at) = artifact.deleted_at {
        return Err(ApiError::Gone(format!(
            "artifact {id} was deleted on {} by the retention policy (retention.logs_days)",
            deleted_at.format("%Y-%m-%d %H:%M UTC")
        )));
    }
    let pieces = crate::files::artifact_bytes(master.store.clone(), id).map(move |piece| {
        piece.map_err(|error| {
            tracing::error!(%error, artifact.id = id, "artifact download failed midway");
            std::io::Error::other(error.to_string())
        })
    });
    // Only the last part of its path, and nothing that ends the quoted name.
    let base = artifact.name.rsplit('/').next().unwrap_or("artifact");
    let filename: String =
        base.chars().map(|c| if c.is_control() || c == '"' || c == '\\' { '_' } else { c }).collect();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
            (header::CONTENT_LENGTH, artifact.bytes.to_string()),
            (header::ETAG, format!("\"{}\"", artifact.sha256)),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        ],
        Body::from_stream(pieces),
    )
        .into_response())
}

pub async fn list_build_steps(
    State(master): State<AppState>,
    Path(build_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    children(&master, &STEPS, "buildid", "build", &build_id, &params).await
}

pub async fn get_build_step(
    State(master): State<AppState>,
    Path((build_id, step)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let build_id: i64 = parse_id("build id", &build_id)?;
    let step_id = step_id(&master, build_id, &step).await?;
    single(&master, &STEPS, &params, vec![by(&STEPS, "stepid", Scalar::Int(step_id))], || format!("step {step_id}"))
        .await
}

pub async fn list_build_step_logs(
    State(master): State<AppState>,
    Path((build_id, step)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let build_id: i64 = parse_id("build id", &build_id)?;
    let step_id = step_id(&master, build_id, &step).await?;
    collection(&master, &LOGS, &params, vec![by(&LOGS, "stepid", Scalar::Int(step_id))]).await
}

pub async fn get_build_step_log(
    State(master): State<AppState>,
    Path((build_id, step, slug)): Path<(String, String, String)>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let build_id: i64 = parse_id("build id", &build_id)?;
    let step_id = step_id(&master, build_id, &step).await?;
    single(&master, &LOGS, &params, log_scope(step_id, &slug), || format!("log `{slug}` of step {step_id}")).await
}

// --- steps and logs -----------------------------------------------------------

pub async fn get_step(
    State(master): State<AppState>,
    Path(step_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    by_id(&master, &STEPS, "stepid", &step_id, &params).await
}

pub async fn list_step_logs(
    State(master): State<AppState>,
    Path(step_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    children(&master, &LOGS, "stepid", "step", &step_id, &params).await
}

pub async fn get_step_log(
    State(master): State<AppState>,
    Path((step_id, slug)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let step_id: i64 = parse_id("step id", &step_id)?;
    single(&master, &LOGS, &params, log_scope(step_id, &slug), || format!("log `{slug}` of step {step_id}")).await
}

pub async fn get_log(
    State(master): State<AppState>,
    Path(log_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    by_id(&master, &LOGS, "logid", &log_id, &params).await
}

/// The most lines one `contents` answer holds.
const MAX_LINES: i64 = 10_000;

/// Lines of a log as Buildbot's `logchunks`, each prefixed with its channel
/// (`o`, `e`, `h`) for stdio logs: `offset` and `limit`, or `tail` (the last
/// lines so far). With `follow=true` the answer is `text/plain` instead, the
/// same prefixed lines from `offset` (or the tail) on, kept open while the
/// step prints, as the web UI shows a running log; `X-First-Line` says which
/// line comes first.
pub async fn get_log_contents(
    State(master): State<AppState>,
    Path(log_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Response> {
    let log_id = LogId(parse_id("log id", &log_id)?);
    let mut offset = 0i64;
    let mut limit = 1000i64;
    let mut tail = None;
    let mut follow = false;
    for (name, value) in &params {
        let number = || {
            value.parse::<i64>().map_err(|_| ApiError::BadRequest(format!("`{name}={value}` is not a whole number")))
        };
        match name.as_str() {
            "offset" => offset = number()?,
            "limit" => limit = number()?,
            "tail" => tail = Some(number()?),
            "follow" => follow = parse_bool(name, value)?,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter `{name}` (known: offset, limit, tail, follow)"
                )));
            }
        }
    }
    if offset < 0 || !(0..=MAX_LINES).contains(&limit) || tail.is_some_and(|tail| !(0..=MAX_LINES).contains(&tail)) {
        return Err(ApiError::BadRequest(format!(
            "offset must be at least 0, and limit and tail between 0 and {MAX_LINES}"
        )));
    }
    let location = log_with_contents(&master, log_id).await?;
    let key = master.namespace.log_stream_key(
        &location.worker_name,
        location.build_id,
        location.step_number,
        &location.log.slug,
    );
    if let Some(tail) = tail {
        let count = if location.log.complete {
            location.log.num_lines
        } else {
            logs::live_line_count(&mut master.redis.clone(), &key).await?
        };
        offset = (count - tail).max(0);
        limit = tail;
    }
    let with_channels = location.log.log_type == "s";
    if follow {
        let (permit, live) = follower_connection(&master).await?;
        let lines =
            logs::follow_lines(master.store.clone(), live, log_id, key, offset, with_channels).map(move |text| {
                let _held = &permit;
                text.map(Bytes::from).map_err(|error| {
                    tracing::error!(%error, log.id = %log_id, "following a log's lines failed midway");
                    std::io::Error::other(error.to_string())
                })
            });
        return Ok((
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
                (header::HeaderName::from_static("x-first-line"), offset.to_string()),
                (header::HeaderName::from_static("x-accel-buffering"), "no".to_owned()),
            ],
            Body::from_stream(lines),
        )
            .into_response());
    }
    let lines =
        logs::lines(&master.store, master.redis.clone(), log_id, location.log.complete, key, offset, limit).await?;
    let mut content = String::new();
    for line in &lines {
        if with_channels {
            content.push(char::from(line.channel.code()));
        }
        content.push_str(&String::from_utf8_lossy(&line.text));
        content.push('\n');
    }
    let chunks = if lines.is_empty() {
        vec![]
    } else {
        vec![json!({ "logid": log_id, "firstline": offset, "content": content })]
    };
    let total = chunks.len() as i64;
    Ok(envelope("logchunks", chunks, total).into_response())
}

/// What the step printed, byte for byte: from Postgres once archived, from
/// the live Redis stream before. Streamed, so a log of any size costs one
/// chunk of memory. With `follow=true` the answer stays open and carries the
/// step's output as it is printed, until the log is archived (`curl -N`
/// shows it like `tail -f`).
pub async fn get_log_raw(
    State(master): State<AppState>,
    Path(log_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Response> {
    raw(master, log_id, params, true).await
}

/// The same bytes, shown by the browser instead of saved.
pub async fn get_log_raw_inline(
    State(master): State<AppState>,
    Path(log_id): Path<String>,
    Query(params): Params,
) -> ApiResult<Response> {
    raw(master, log_id, params, false).await
}

async fn raw(
    master: Arc<Master>,
    log_id: String,
    params: Vec<(String, String)>,
    attachment: bool,
) -> ApiResult<Response> {
    let log_id = LogId(parse_id("log id", &log_id)?);
    let mut follow = false;
    for (name, value) in &params {
        match name.as_str() {
            "follow" => follow = parse_bool(name, value)?,
            _ => return Err(ApiError::BadRequest(format!("unknown query parameter `{name}` (known: follow)"))),
        }
    }
    let location = log_with_contents(&master, log_id).await?;
    let key = master.namespace.log_stream_key(
        &location.worker_name,
        location.build_id,
        location.step_number,
        &location.log.slug,
    );
    let pieces = if follow && !location.log.complete {
        let (permit, live) = follower_connection(&master).await?;
        logs::follow(master.store.clone(), live, log_id, key)
            .map(move |piece| {
                let _held = &permit;
                piece
            })
            .boxed()
    } else {
        logs::raw_bytes(&master.store, master.redis.clone(), log_id, location.log.complete, key)
    };
    let pieces = pieces.map(move |piece| {
        piece.map(Bytes::from).map_err(|error| {
            tracing::error!(%error, log.id = %log_id, "log download failed midway");
            std::io::Error::other(error.to_string())
        })
    });
    let filename = format!("build{}_step{}_{}.log", location.build_id, location.step_number, location.log.slug);
    let disposition =
        if attachment && !follow { format!("attachment; filename=\"{filename}\"") } else { "inline".to_owned() };
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

/// A log whose contents are still kept: 404 when there is no such log, 410
/// when retention deleted its contents (the log's record is still served).
async fn log_with_contents(master: &Master, log_id: LogId) -> ApiResult<crate::store::LogLocation> {
    let location =
        master.store.log_location(log_id).await?.ok_or_else(|| ApiError::NotFound(format!("log {log_id}")))?;
    if let Some(deleted_at) = location.log.deleted_at {
        return Err(ApiError::Gone(format!(
            "the contents of log {log_id} were deleted on {} by the retention policy (retention.logs_days)",
            deleted_at.format("%Y-%m-%d %H:%M UTC")
        )));
    }
    Ok(location)
}

/// A Redis connection of a log follower's own, and its room among
/// `web.max_log_followers` (held as long as the answer streams); 503 when
/// there is none.
async fn follower_connection(
    master: &Master,
) -> ApiResult<(tokio::sync::OwnedSemaphorePermit, redis::aio::MultiplexedConnection)> {
    let permit = master.log_followers.clone().try_acquire_owned().map_err(|_| {
        ApiError::TooManyRequests(
            "this master follows as many running logs as it may (web.max_log_followers); try again later".into(),
        )
    })?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(LIVE_RESPONSE_TIMEOUT));
    let live = master.redis_client.get_multiplexed_async_connection_with_config(&config).await?;
    Ok((permit, live))
}

/// Longer than a follower's wait for new output, so a quiet log is not a
/// Redis timeout.
const LIVE_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

// --- requests, buildsets ------------------------------------------------------

pub async fn list_buildrequests(State(master): State<AppState>, Query(params): Params) -> ApiResult<Json<Value>> {
    collection(&master, &BUILDREQUESTS, &params, vec![]).await
}

pub async fn get_buildrequest(
    State(master): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    by_id(&master, &BUILDREQUESTS, "buildrequestid", &id, &params).await
}

pub async fn list_buildrequest_builds(
    State(master): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    children(&master, &BUILDS, "buildrequestid", "buildrequest", &id, &params).await
}

pub async fn list_buildsets(State(master): State<AppState>, Query(params): Params) -> ApiResult<Json<Value>> {
    collection(&master, &BUILDSETS, &params, vec![]).await
}

pub async fn get_buildset(
    State(master): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    by_id(&master, &BUILDSETS, "bsid", &id, &params).await
}

// --- workers, masters ---------------------------------------------------------

pub async fn list_workers(State(master): State<AppState>, Query(params): Params) -> ApiResult<Json<Value>> {
    collection(&master, &WORKERS, &params, vec![]).await
}

pub async fn get_worker(
    State(master): State<AppState>,
    Path(worker): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let scope = vec![id_or_name(&WORKERS, "workerid", &worker)];
    single(&master, &WORKERS, &params, scope, || format!("worker `{worker}`")).await
}

pub async fn list_masters(State(master): State<AppState>, Query(params): Params) -> ApiResult<Json<Value>> {
    collection(&master, &MASTERS, &params, vec![]).await
}

pub async fn get_master(
    State(master): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    by_id(&master, &MASTERS, "masterid", &id, &params).await
}

// --- from the configuration ---------------------------------------------------

fn force_schedulers(master: &Master) -> Vec<Value> {
    let catalog = master.catalog();
    catalog
        .config
        .master
        .schedulers
        .iter()
        .filter_map(|scheduler| match scheduler {
            SchedulerConfig::Force { name, builders, parameters, .. } => Some((name, builders, parameters)),
            _ => None,
        })
        .map(|(name, builders, parameters)| {
            let mut fields = vec![
                json!({ "name": "reason", "fullName": "reason", "type": "text", "label": "reason", "default": "force build" }),
                json!({ "name": "owner", "fullName": "owner", "type": "text", "label": "your name", "default": "" }),
                json!({ "name": "priority", "fullName": "priority", "type": "int", "label": "priority", "default": 0 }),
                json!({ "name": "branch", "fullName": "branch", "type": "text", "label": "branch", "default": "" }),
                json!({ "name": "revision", "fullName": "revision", "type": "text", "label": "revision", "default": "" }),
            ];
            for parameter in parameters {
                let label = parameter.label.clone().unwrap_or_else(|| parameter.name.clone());
                let kind = if parameter.choices.is_empty() { "text" } else { "list" };
                fields.push(json!({
                    "name": parameter.name, "fullName": parameter.name, "type": kind, "label": label,
                    "default": parameter.default, "choices": parameter.choices,
                }));
            }
            json!({
                "name": name,
                "label": name,
                "button_name": name,
                "builder_names": builders,
                "enabled": true,
                "all_fields": fields,
            })
        })
        .collect()
}

pub async fn list_forceschedulers(State(master): State<AppState>, Query(params): Params) -> ApiResult<Json<Value>> {
    let Parsed { spec, .. } = query::parse(&FORCESCHEDULERS, &params, vec![])?;
    let (items, total) = query::apply_in_memory(force_schedulers(&master), &spec);
    Ok(envelope(FORCESCHEDULERS.plural, items, total))
}

pub async fn get_forcescheduler(
    State(master): State<AppState>,
    Path(name): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let scope = vec![by(&FORCESCHEDULERS, "name", Scalar::Text(name.clone()))];
    let Parsed { spec, .. } = query::parse(&FORCESCHEDULERS, &params, scope)?;
    let (items, total) = query::apply_in_memory(force_schedulers(&master), &spec);
    if items.is_empty() {
        return Err(ApiError::NotFound(format!("force scheduler `{name}`")));
    }
    Ok(envelope(FORCESCHEDULERS.plural, items, total))
}

/// Changes come with change sources; until then the collection is empty,
/// but its parameters are still checked.
pub async fn list_changes(State(master): State<AppState>, Query(params): Params) -> ApiResult<Json<Value>> {
    collection(&master, &CHANGES, &params, vec![]).await
}

pub async fn get_change(
    State(master): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    by_id(&master, &CHANGES, "changeid", &id, &params).await
}

/// `resource`'s items whose `id_field` is one of `ids`.
fn any_of(resource: &'static Resource, id_field: &str, ids: impl Iterator<Item = i64>) -> Filter {
    let field = resource.field(id_field).expect("the resource has its id field");
    Filter { field, op: Op::Eq, values: ids.map(Scalar::Int).collect() }
}

/// `GET /api/v2/builds/{id}/changes`: the build's blamelist, the changes
/// of its branch since its builder's previous build of it.
pub async fn list_build_changes(
    State(master): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let build = BuildId(parse_id("build id", &id)?);
    let changes = master.store.blamelist(build).await?;
    collection(&master, &CHANGES, &params, vec![any_of(&CHANGES, "changeid", changes.iter().map(|id| id.0))]).await
}

/// `GET /api/v2/changes/{id}/builds`: the builds the change started.
pub async fn list_change_builds(
    State(master): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<Json<Value>> {
    let change = ChangeId(parse_id("change id", &id)?);
    let builds = master.store.builds_of_change(change).await?;
    collection(&master, &BUILDS, &params, vec![any_of(&BUILDS, "buildid", builds.iter().map(|id| id.0))]).await
}
