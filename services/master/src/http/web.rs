//! The web UI: what people look at all day. Every master serves it on the
//! same port as the API. Pages are rendered here, in one round trip to
//! Postgres or a few, and read through the same checked paths as the API
//! (`reads::api_items`); `web/app.js` (plain JavaScript, embedded in the
//! binary like `web/style.css`) makes them live from `/ws`, follows running
//! logs, and sends the control actions as JSON-RPC, so the one authorization
//! check (`auth::authorize`) covers the pages too.

mod charts;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::Value;
use shared::config::{ForceParameter, SchedulerConfig};
use shared::ids::BuilderId;
use shared::model::Results;

use super::ApiError;
use super::reads::api_items;
use crate::Master;
use crate::catalog::Catalog;
use crate::store::resources::{
    ARTIFACTS, BUILDERS, BUILDREQUESTS, BUILDS, BUILDSETS, CHANGES, LOGS, Resource, STEPS, TEST_RESULT_SETS,
    TEST_RESULTS, WORKERS,
};
use crate::urls;

type AppState = Arc<Master>;
type Page = Result<Response, PageError>;

/// An API error shown to a person: the same status and message, as a page.
pub(super) struct PageError(pub(super) ApiError);

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(error: E) -> Self {
        PageError(error.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        self.0.log();
        let status = self.0.status();
        let body = html! {
            h1 { (status.canonical_reason().unwrap_or("Error")) }
            p { (self.0.public_message()) }
            p { a href="/" { "All builders" } }
        };
        let mut response = page("Error", "error", &[], body);
        *response.status_mut() = status;
        response
    }
}

/// Builds shown per builder on the overview.
const GRID_CELLS: i64 = 12;
/// Builds per page on a builder's page.
const BUILDS_PER_PAGE: i64 = 50;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/builders/{builder}", get(builder_page))
        .route("/builders/{builder}/builds/{number}", get(build_page))
        .route("/workers", get(workers_page))
        .route("/queue", get(queue_page))
        .route("/tests", get(tests_page))
        .route("/console", get(console_page))
        .route("/release", get(release_page))
        .route("/waterfall", get(waterfall_page))
        .route("/charts/builders/{builder}/durations.svg", get(builder_chart))
        .route("/charts/workers/{worker}/builds.svg", get(worker_chart))
        .route("/charts/queue.svg", get(queue_chart))
        .route("/login", get(login_page))
        .route("/fragments/cells/{build_id}", get(cell_fragment))
        .route("/fragments/build-rows/{build_id}", get(build_row_fragment))
        .route("/fragments/steps/{step_id}", get(step_fragment))
        .route("/fragments/pending/{request_id}", get(pending_fragment))
        .route("/static/app.js", get(|| asset(include_str!("web/app.js"), "text/javascript; charset=utf-8")))
        .route("/static/style.css", get(|| asset(include_str!("web/style.css"), "text/css; charset=utf-8")))
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300")),
        ],
        body,
    )
        .into_response()
}

fn page(title: &str, kind: &str, data: &[(&str, String)], body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · buildmaster" }
                link rel="stylesheet" href="/static/style.css";
                script src="/static/app.js" defer {}
            }
            body data-page=(kind) {
                header.top {
                    nav {
                        a.brand href="/" { "buildmaster" }
                        a href="/" { "Builders" }
                        a href="/queue" { "Queue" }
                        a href="/console" { "Console" }
                        a href="/waterfall" { "Waterfall" }
                        a href="/release" { "Release" }
                        a href="/tests" { "Tests" }
                        a href="/workers" { "Workers" }
                    }
                    span #who {}
                }
                main #main {
                    @for (name, value) in data { span hidden data-name=(name) data-value=(value) {} }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// The name of a builder the API gave by id (`?` once it left the
/// configuration).
fn builder_name(catalog: &Catalog, id: i64) -> &str {
    i32::try_from(id).ok().and_then(|id| catalog.builder_name(BuilderId(id))).map_or("?", |name| name.as_str())
}

fn not_found(what: String) -> PageError {
    PageError(ApiError::NotFound(what))
}

// --- small views ----------------------------------------------------------------

fn result_class(build: &Value) -> String {
    match build.get("results").and_then(Value::as_i64) {
        Some(code) => format!("r{code}"),
        None => "running".into(),
    }
}

fn result_name(build: &Value) -> &'static str {
    match build.get("results").and_then(Value::as_i64) {
        Some(code) => Results::from_code(code as i16).map_or("UNKNOWN", Results::name),
        None => "running",
    }
}

fn int(value: &Value, field: &str) -> i64 {
    value.get(field).and_then(Value::as_i64).unwrap_or_default()
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// Epoch seconds as UTC; the page script shows them in the reader's zone.
fn time(value: &Value, field: &str) -> Markup {
    match value.get(field).and_then(Value::as_i64) {
        Some(seconds) => {
            let shown = chrono::DateTime::from_timestamp(seconds, 0)
                .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
            html! { time datetime=(seconds) { (shown) } }
        }
        None => html! { "–" },
    }
}

fn duration_text(seconds: i64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

fn duration(item: &Value) -> Markup {
    let started = item.get("started_at").and_then(Value::as_i64);
    let ended = item.get("complete_at").and_then(Value::as_i64);
    match (started, ended) {
        (Some(start), Some(end)) => html! { (duration_text(end - start)) },
        (Some(start), None) => html! { span.elapsed data-since=(start) { "running" } },
        _ => html! { "–" },
    }
}

fn build_href(builder: &str, number: i64) -> String {
    urls::build_page(builder, number)
}

fn builder_href(builder: &str) -> String {
    urls::builder_page(builder)
}

// --- overview -----------------------------------------------------------------

#[derive(Deserialize)]
struct OverviewQuery {
    tag: Option<String>,
    branch: Option<String>,
}

/// Every builder as a row of its newest builds; filter by tag and branch.
async fn overview(State(master): State<AppState>, Query(query): Query<OverviewQuery>) -> Page {
    let catalog = master.catalog();
    let tag = query.tag.filter(|tag| !tag.is_empty());
    let branch = query.branch.filter(|branch| !branch.is_empty());
    let mut builders: Vec<_> =
        catalog.builders().filter(|(builder, _)| tag.as_ref().is_none_or(|tag| builder.tags.contains(tag))).collect();
    builders.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let ids: Vec<_> = builders.iter().map(|(_, id)| *id).collect();
    let cells = master.store.recent_builds(&ids, GRID_CELLS, branch.as_deref()).await?;
    let (pending, busy_workers) = master.store.queue_summary().await?;
    let refused = master.store.config_errors().await?;
    let mut by_builder: HashMap<_, Vec<_>> = HashMap::new();
    for cell in cells {
        by_builder.entry(cell.builder_id).or_default().push(cell);
    }
    let tags: BTreeSet<&str> =
        catalog.config.master.builders.iter().flat_map(|b| b.tags.iter().map(String::as_str)).collect();
    let pending_total: i64 = pending.values().sum();
    let body = html! {
        @for (name, error) in &refused {
            div.alert role="alert" {
                "Master " strong { (name) } " refused its last configuration reload and runs the one before:"
                pre { (error) }
            }
        }
        h1 { "Builders" }
        form.filters method="get" action="/" {
            label { "Tag "
                select name="tag" {
                    option value="" { "all" }
                    @for known in &tags { option value=(known) selected[tag.as_deref() == Some(*known)] { (known) } }
                }
            }
            label { "Branch " input name="branch" value=(branch.as_deref().unwrap_or_default()) placeholder="any"; }
            button type="submit" { "Filter" }
        }
        p.summary {
            span #builders-shown { (builders.len()) } " builders · "
            span #pending-total { (pending_total) } " pending requests · "
            span #busy-workers { (busy_workers) } " busy workers"
        }
        table.grid {
            thead { tr { th { "Builder" } th { "Pending" } th { "Recent builds (newest first)" } } }
            tbody {
                @for (builder, id) in &builders {
                    tr data-builderid=(id) data-builder=(builder.name) {
                        th.name {
                            a href=(builder_href(&builder.name)) { (builder.name) }
                            @for t in &builder.tags { " " span.tag { (t) } }
                        }
                        td.pending { (pending.get(id).copied().unwrap_or_default()) }
                        td.cells {
                            @for cell in by_builder.get(id).map(Vec::as_slice).unwrap_or_default() {
                                (grid_cell(&builder.name, cell.id.0, i64::from(cell.number), cell.results.filter(|_| cell.complete)))
                            }
                        }
                    }
                }
            }
        }
    };
    let data = [("cells", GRID_CELLS.to_string()), ("branch", branch.unwrap_or_default())];
    Ok(page("Builders", "overview", &data, body))
}

// --- builder ------------------------------------------------------------------

#[derive(Deserialize)]
struct BuilderQuery {
    /// Keyset pagination: builds numbered below this.
    before: Option<i64>,
}

async fn builder_page(
    State(master): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<BuilderQuery>,
) -> Page {
    let catalog = master.catalog();
    let (builder, builder_id) = catalog.builder(&name).ok_or_else(|| not_found(format!("builder `{name}`")))?;
    let mut params = vec![("builderid", builder_id.to_string()), ("order", "-number".into())];
    params.push(("limit", BUILDS_PER_PAGE.to_string()));
    if let Some(before) = query.before {
        params.push(("number__lt", before.to_string()));
    }
    let builds = api_items(&master, &BUILDS, &params).await?;
    let points = master.store.builder_points(builder_id, CHART_BUILDS).await?;
    let pending = api_items(
        &master,
        &BUILDREQUESTS,
        &[
            ("builderid", builder_id.to_string()),
            ("claimed", "false".into()),
            ("order", "-priority".into()),
            ("order", "submitted_at".into()),
            ("limit", "500".into()),
        ],
    )
    .await?;
    let workers = api_items(&master, &WORKERS, &[("order", "name".into()), ("limit", "10000".into())]).await?;
    // Each master's local worker (`local-<master>`) serves the builders
    // that list `local`.
    let workers: Vec<&Value> = workers
        .iter()
        .filter(|w| {
            let name = text(w, "name");
            catalog.config.may_run(builder, name, catalog.is_local_worker(name))
        })
        .collect();
    let schedulers: Vec<(&str, &[ForceParameter])> = catalog
        .config
        .master
        .schedulers
        .iter()
        .filter_map(|scheduler| match scheduler {
            SchedulerConfig::Force { name, builders, parameters, .. } if builders.contains(&builder.name) => {
                Some((name.as_str(), parameters.as_slice()))
            }
            _ => None,
        })
        .collect();
    let oldest_shown = builds.last().map(|b| int(b, "number"));
    let state = api_items(&master, &BUILDERS, &[("builderid", builder_id.to_string())]).await?;
    let paused = state.first().and_then(|b| b.get("paused")).and_then(Value::as_bool).unwrap_or_default();
    let pause_reason = state.first().map(|b| text(b, "pause_reason").to_owned()).unwrap_or_default();
    let body = html! {
        h1 { "Builder " (builder.name) }
        p.actions {
            @if paused {
                span.alert { "Paused: " (pause_reason) } " "
                button.action data-method="unpause" data-path=(format!("/builders/{builder_id}")) { "Unpause" }
            } @else {
                button.action data-method="pause" data-path=(format!("/builders/{builder_id}")) { "Pause" }
            }
            span.error role="alert" {}
        }
        @if let Some(description) = &builder.description { p.description { (description) } }
        p { @for t in &builder.tags { span.tag { (t) } " " } }
        section.columns {
            div {
                h2 { "Recent builds" }
                table.builds #builds {
                    thead { tr { th { "#" } th { "Result" } th { "Started" } th { "Duration" } th { "State" } } }
                    tbody {
                        @for build in &builds { (build_row(&builder.name, build)) }
                    }
                }
                @if let Some(oldest) = oldest_shown.filter(|_| builds.len() as i64 == BUILDS_PER_PAGE) {
                    p { a href=(format!("{}?before={oldest}", builder_href(&builder.name))) { "Older builds →" } }
                }
                @if query.before.is_some() { p { a href=(builder_href(&builder.name)) { "← Newest builds" } } }
                figure.chart {
                    (PreEscaped(charts::builder_durations(builder.name.as_str(), &points)))
                    figcaption { a href=(format!("/charts/builders/{}/durations.svg", urls::path_segment(builder.name.as_str()))) { "Duration of the last builds" } }
                }
            }
            div {
                h2 { "Force a build" }
                @if let Some((scheduler, parameters)) = schedulers.first() {
                    form #force data-scheduler=(scheduler) data-builder=(builder.name) {
                        label { "Reason" input name="reason" value="forced from the web"; }
                        label { "Branch" input name="branch" placeholder="default"; }
                        label { "Revision" input name="revision" placeholder="latest"; }
                        @for parameter in *parameters {
                            @let field = format!("parameter:{}", parameter.name);
                            label {
                                (parameter.label.as_deref().unwrap_or(&parameter.name))
                                @if parameter.choices.is_empty() {
                                    input name=(field) value=(parameter.default);
                                } @else {
                                    select name=(field) {
                                        @for choice in &parameter.choices {
                                            option value=(choice) selected[*choice == parameter.default] { (choice) }
                                        }
                                    }
                                }
                            }
                        }
                        label { "Properties (name=value, one per line)" textarea name="properties" rows="3" {} }
                        button type="submit" { "Force" }
                        p.error role="alert" {}
                    }
                } @else {
                    p { "No force scheduler lists this builder." }
                }
                h2 { "Pending requests (" span #pending-count { (pending.len()) } ")" }
                ul.pending #pending {
                    @for request in &pending { (pending_request(request)) }
                }
                h2 { "Workers" }
                ul.workers {
                    @for worker in &workers { li { (worker_state(worker)) } }
                    @if workers.is_empty() { li { "none connected yet" } }
                }
            }
        }
    };
    let data = [("builderid", builder_id.to_string()), ("builder", builder.name.to_string())];
    Ok(page(&format!("Builder {}", builder.name), "builder", &data, body))
}

/// One build in the overview grid: its number, coloured by its result
/// (`None` while it runs).
fn grid_cell(builder: &str, build_id: i64, number: i64, results: Option<i16>) -> Markup {
    let class = results.map_or_else(|| "cell running".to_owned(), |code| format!("cell r{code}"));
    let result = results.and_then(Results::from_code).map_or("running", Results::name);
    html! {
        a class=(class) data-buildid=(build_id) href=(build_href(builder, number)) title=(format!("#{number} {result}")) {
            (number)
        }
    }
}

fn pending_request(request: &Value) -> Markup {
    let id = int(request, "buildrequestid");
    html! {
        li data-requestid=(id) {
            "request " (id) ", priority " (int(request, "priority")) ", submitted " (time(request, "submitted_at")) " "
            button.action data-method="cancel" data-path=(format!("/buildrequests/{id}")) { "Cancel" }
        }
    }
}

fn build_row(builder: &str, build: &Value) -> Markup {
    let number = int(build, "number");
    html! {
        tr data-buildid=(int(build, "buildid")) class=(result_class(build)) {
            td { a href=(build_href(builder, number)) { "#" (number) } }
            td.result { (result_name(build)) }
            td { (time(build, "started_at")) }
            td { (duration(build)) }
            td.state { (text(build, "state_string")) }
        }
    }
}

fn worker_state(worker: &Value) -> Markup {
    let online = worker.get("connected_to").and_then(Value::as_array).is_some_and(|c| !c.is_empty());
    let paused = worker.get("paused").and_then(Value::as_bool).unwrap_or_default();
    html! {
        span class=(if online { "online" } else { "offline" }) { (text(worker, "name")) }
        " " (if online { "online" } else { "offline" })
        @if paused {
            " · paused"
            @let reason = text(worker, "pause_reason");
            @if !reason.is_empty() { ": " (reason) }
        }
    }
}

// --- build --------------------------------------------------------------------

/// Failed tests a build's page lists per test result set; the API has
/// the rest.
const FAILED_TESTS_SHOWN: usize = 5000;

async fn build_page(State(master): State<AppState>, Path((name, number)): Path<(String, String)>) -> Page {
    let catalog = master.catalog();
    // A build's address stays good after its builder left the
    // configuration: builders keep their rows, and so their history.
    let builder_id = match catalog.builder(&name) {
        Some((_, id)) => i64::from(id.0),
        None => {
            let found = api_items(&master, &BUILDERS, &[("name", name.clone())]).await?;
            found
                .first()
                .map(|builder| int(builder, "builderid"))
                .ok_or_else(|| not_found(format!("builder `{name}`")))?
        }
    };
    let number: i64 =
        number.parse().map_err(|_| PageError(ApiError::BadRequest(format!("`{number}` is not a build number"))))?;
    let builds = api_items(
        &master,
        &BUILDS,
        &[("builderid", builder_id.to_string()), ("number", number.to_string()), ("property", "*".into())],
    )
    .await?;
    let build = builds.into_iter().next().ok_or_else(|| not_found(format!("build {name} #{number}")))?;
    let build_id = int(&build, "buildid");
    let steps = api_items(&master, &STEPS, &[("buildid", build_id.to_string()), ("order", "number".into())]).await?;
    let mut logs_by_step: HashMap<i64, Vec<Value>> = HashMap::new();
    for step in &steps {
        let step_id = int(step, "stepid");
        let logs = api_items(&master, &LOGS, &[("stepid", step_id.to_string())]).await?;
        logs_by_step.insert(step_id, logs);
    }
    let workers = api_items(&master, &WORKERS, &[("workerid", int(&build, "workerid").to_string())]).await?;
    let worker = workers.first().map(|w| text(w, "name").to_owned()).unwrap_or_default();
    let requests =
        api_items(&master, &BUILDREQUESTS, &[("buildrequestid", int(&build, "buildrequestid").to_string())]).await?;
    let buildset_id = requests.first().map(|r| int(r, "buildsetid")).unwrap_or_default();
    let buildsets = api_items(&master, &BUILDSETS, &[("bsid", buildset_id.to_string())]).await?;
    let reason = buildsets.first().map(|s| text(s, "reason").to_owned()).unwrap_or_default();
    let complete = build.get("complete").and_then(Value::as_bool).unwrap_or_default();
    let properties = build.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    // What failed comes first: a person opening a red build wants it
    // before the steps and their logs.
    let mut test_sets = Vec::new();
    for set in api_items(&master, &TEST_RESULT_SETS, &[("buildid", build_id.to_string())]).await? {
        let params = [
            ("test_result_setid", int(&set, "test_result_setid").to_string()),
            ("value__in", "fail,error".into()),
            ("limit", FAILED_TESTS_SHOWN.to_string()),
        ];
        let failed = api_items(&master, &TEST_RESULTS, &params).await?;
        let step_id = int(&set, "stepid");
        let step = steps.iter().find(|step| int(step, "stepid") == step_id);
        // Where in the step's log each failed test first appears.
        let stdio = logs_by_step.get(&step_id).and_then(|logs| logs.iter().find(|log| text(log, "slug") == "stdio"));
        let log_id = stdio.map(|log| int(log, "logid"));
        test_sets.push((set, failed, step.map(|step| text(step, "name").to_owned()).unwrap_or_default(), log_id));
    }
    let artifacts = api_items(&master, &ARTIFACTS, &[("buildid", build_id.to_string())]).await?;
    let blamelist = master.store.blamelist(shared::ids::BuildId(build_id)).await?;
    let changes = if blamelist.is_empty() {
        Vec::new()
    } else {
        let ids: Vec<String> = blamelist.iter().map(|id| id.to_string()).collect();
        let mut params: Vec<(&str, String)> = ids.into_iter().map(|id| ("changeid", id)).collect();
        params.push(("order", "-changeid".into()));
        api_items(&master, &CHANGES, &params).await?
    };
    let told = master.store.notifications_of_build(shared::ids::BuildId(build_id)).await?;
    let body = html! {
        p.crumbs { a href=(builder_href(&name)) { (name) } " / build #" (number) }
        h1 {
            (name) " #" (number) " "
            span #result class=(format!("badge {}", result_class(&build))) { (result_name(&build)) }
        }
        p.actions {
            button.action #stop data-method="stop" data-path=(format!("/builds/{build_id}")) hidden[complete] { "Stop" }
            button.action #rebuild data-method="rebuild" data-path=(format!("/builds/{build_id}")) hidden[!complete] { "Rebuild" }
            span.error role="alert" {}
        }
        table.info {
            tr { th { "Worker" } td { (worker) } }
            tr { th { "Reason" } td { (reason) } }
            tr { th { "Started" } td { (time(&build, "started_at")) } }
            tr { th { "Finished" } td #finished { (time(&build, "complete_at")) } }
            tr { th { "Duration" } td #duration { (duration(&build)) } }
            tr { th { "State" } td #state { (text(&build, "state_string")) } }
        }
        @if !changes.is_empty() {
            h2 { "Changes" }
            ul.changes #changes {
                @for change in &changes {
                    li {
                        code.revision { (text(change, "revision").chars().take(10).collect::<String>()) }
                        " " span.author { (text(change, "author")) } " "
                        span.comment { (text(change, "comments").lines().next().unwrap_or_default()) }
                    }
                }
            }
        }
        details.properties {
            summary { "Properties (" (properties.len()) ")" }
            table {
                @for (key, value) in &properties {
                    tr {
                        th { (key) }
                        td { (value.get(0).map_or_else(String::new, |v| match v { Value::String(s) => s.clone(), other => other.to_string() })) }
                        td.source { (value.get(1).and_then(Value::as_str).unwrap_or_default()) }
                    }
                }
            }
        }
        @if !test_sets.is_empty() {
            h2 { "Tests" }
            @for (set, failed, step, log_id) in &test_sets {
                p.tests {
                    (int(set, "tests_failed")) " failed"
                    @if let Some(passed) = set.get("tests_passed").and_then(Value::as_i64) { ", " (passed) " passed" }
                    @if let Some(skipped) = set.get("tests_skipped").and_then(Value::as_i64) { ", " (skipped) " skipped" }
                    @if let Some(ns) = set.get("duration_ns").and_then(Value::as_i64) { ", " (duration_text((ns + 500_000_000) / 1_000_000_000)) " in all" }
                    " (" (text(set, "description")) " of step " (step) ")"
                }
                @if !failed.is_empty() {
                    ul.failed-tests {
                        @for test in failed { (failed_test(test, *log_id)) }
                    }
                    @if int(set, "tests_failed") > failed.len() as i64 {
                        p.more { "and " (int(set, "tests_failed") - failed.len() as i64) " more, in the API" }
                    }
                }
            }
        }
        @if !artifacts.is_empty() {
            h2 { "Artifacts" }
            ul.artifacts {
                @for artifact in &artifacts {
                    li {
                        @if artifact.get("deleted_at").is_some_and(|at| !at.is_null()) {
                            code { (text(artifact, "name")) } " (deleted by retention)"
                        } @else {
                            a href=(format!("/api/v2/artifacts/{}/download", int(artifact, "artifactid"))) download {
                                code { (text(artifact, "name")) }
                            }
                            " " span.size { (shared::model::human_bytes(int(artifact, "bytes").max(0) as u64)) }
                        }
                    }
                }
            }
        }
        h2 { "Steps" }
        ol.steps #steps {
            @for step in &steps { (step_view(step, logs_by_step.get(&int(step, "stepid")).map(Vec::as_slice).unwrap_or_default())) }
        }
        @if !told.is_empty() {
            h2 { "Told" }
            table.told {
                tr { th { "Reporter" } th { "Of" } th { "State" } th { "Attempts" } th { "What" } }
                @for row in &told {
                    tr class=(row.state) {
                        td { (row.reporter) }
                        td { (row.event) }
                        td { (row.state) }
                        td { (row.attempts) }
                        td {
                            @if let Some(detail) = &row.detail { (detail) }
                            @if row.state == "pending" { "next try at " (row.due_at.format("%H:%M:%S UTC")) }
                            @if let Some(error) = &row.last_error { " " span.error { (error) } }
                        }
                    }
                }
            }
        }
    };
    let data = [("buildid", build_id.to_string()), ("builder", name.clone()), ("number", number.to_string())];
    Ok(page(&format!("{name} #{number}"), "build", &data, body))
}

/// A failed test: its name, linked to its first line in the step's log
/// when it appears there, and its message.
fn failed_test(test: &Value, log_id: Option<i64>) -> Markup {
    let name = text(test, "test_name");
    let line = test.get("log_line").and_then(Value::as_i64);
    let path = text(test, "test_code_path");
    html! {
        li class=(text(test, "value")) {
            @match (log_id, line) {
                (Some(log_id), Some(line)) => a href=(format!("#log{log_id}-L{}", line + 1)) { code { (name) } },
                _ => code { (name) },
            }
            @if !path.is_empty() { " " span.path { (path) } }
            @if text(test, "value") == "error" { " " span.error { "error" } }
            @if let Some(message) = test.get("message").and_then(Value::as_str) {
                pre.message { (message) }
            }
        }
    }
}

fn step_view(step: &Value, logs: &[Value]) -> Markup {
    // A skipped step never ran, so never completed; it has a result all the same.
    let complete = step.get("complete").and_then(Value::as_bool).unwrap_or_default()
        || step.get("results").is_some_and(|results| !results.is_null());
    let class = if complete {
        result_class(step)
    } else if step.get("started_at").is_some_and(|v| !v.is_null()) {
        "running".into()
    } else {
        "pending".into()
    };
    html! {
        li.step data-stepid=(int(step, "stepid")) class=(class) {
            details open[!complete || step.get("results").and_then(Value::as_i64).is_some_and(|r| r >= 2)] {
                summary {
                    span.name { (text(step, "name")) }
                    " "
                    span.result { (if complete { result_name(step) } else { "running" }) }
                    " "
                    span.duration { (duration(step)) }
                    " "
                    span.state { (text(step, "state_string")) }
                }
                @for log in logs { (log_view(log)) }
            }
        }
    }
}

fn log_view(log: &Value) -> Markup {
    let id = int(log, "logid");
    let complete = log.get("complete").and_then(Value::as_bool).unwrap_or_default();
    html! {
        div.log data-logid=(id) data-complete=(complete) data-lines=(int(log, "num_lines")) {
            div.log-bar {
                span.log-name { (text(log, "name")) }
                " "
                a href=(format!("/api/v2/logs/{id}/raw")) { "raw" }
                " "
                a href=(format!("/api/v2/logs/{id}/raw_inline")) { "view" }
                " "
                // Only a running log has more to follow.
                @if !complete { label { input.follow type="checkbox" checked; " follow" } }
            }
            button.earlier hidden { "Load earlier lines" }
            pre.lines {}
            button.later hidden { "Load later lines" }
        }
    }
}

// --- fragments ----------------------------------------------------------------------

// What live events change on a page, rendered by the same functions as the
// page itself, so the script never builds markup of its own: it fetches the
// fragment of the item an event names and puts it in place.

fn fragment(markup: Markup) -> Response {
    ([(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Html(markup.into_string())).into_response()
}

/// The API's item of `resource` whose `id_field` is `id`, or 404.
async fn item(master: &Master, resource: &'static Resource, id_field: &str, id: i64) -> Result<Value, PageError> {
    api_items(master, resource, &[(id_field, id.to_string())])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| not_found(format!("{} {id}", resource.plural.trim_end_matches('s'))))
}

async fn cell_fragment(State(master): State<AppState>, Path(build_id): Path<i64>) -> Page {
    let build = item(&master, &BUILDS, "buildid", build_id).await?;
    let builder = builder_name(&master.catalog(), int(&build, "builderid")).to_owned();
    let results = build.get("results").and_then(Value::as_i64).and_then(|code| i16::try_from(code).ok());
    Ok(fragment(grid_cell(&builder, build_id, int(&build, "number"), results)))
}

async fn build_row_fragment(State(master): State<AppState>, Path(build_id): Path<i64>) -> Page {
    let build = item(&master, &BUILDS, "buildid", build_id).await?;
    let builder = builder_name(&master.catalog(), int(&build, "builderid")).to_owned();
    Ok(fragment(build_row(&builder, &build)))
}

async fn step_fragment(State(master): State<AppState>, Path(step_id): Path<i64>) -> Page {
    let step = item(&master, &STEPS, "stepid", step_id).await?;
    let logs = api_items(&master, &LOGS, &[("stepid", step_id.to_string())]).await?;
    Ok(fragment(step_view(&step, &logs)))
}

async fn pending_fragment(State(master): State<AppState>, Path(request_id): Path<i64>) -> Page {
    let request = item(&master, &BUILDREQUESTS, "buildrequestid", request_id).await?;
    Ok(fragment(pending_request(&request)))
}

// --- workers and queue --------------------------------------------------------

async fn workers_page(State(master): State<AppState>) -> Page {
    let catalog = master.catalog();
    let workers = api_items(&master, &WORKERS, &[("order", "name".into()), ("limit", "10000".into())]).await?;
    let running = api_items(&master, &BUILDS, &[("complete", "false".into()), ("limit", "10000".into())]).await?;
    let mut current: HashMap<i64, Vec<&Value>> = HashMap::new();
    for build in &running {
        current.entry(int(build, "workerid")).or_default().push(build);
    }
    let body = html! {
        h1 { "Workers" }
        table.workers {
            thead { tr { th { "Worker" } th { "State" } th { "Running" } th { "Last seen" } th { "Builders" } th { "Owner" } th { "Tags" } th { "History" } th {} } }
            tbody {
                @for worker in &workers {
                    @let id = int(worker, "workerid");
                    @let paused = worker.get("paused").and_then(Value::as_bool).unwrap_or_default();
                    @let served = catalog.builders_for_worker(text(worker, "name"));
                    tr data-workerid=(id) {
                        th { (text(worker, "name")) }
                        td { (worker_state(worker)) }
                        td {
                            @for build in current.get(&id).map(Vec::as_slice).unwrap_or_default() {
                                @let builder = builder_name(&catalog, int(build, "builderid"));
                                a href=(build_href(builder, int(build, "number"))) { (builder) " #" (int(build, "number")) } " "
                            }
                        }
                        td { (time(worker, "last_connection")) }
                        td { (served.len()) }
                        td { (worker_owner(&catalog.config, text(worker, "name"))) }
                        td.tags { @for tag in catalog.config.worker(text(worker, "name")).map(|w| w.tags.as_slice()).unwrap_or_default() { span.tag { (tag) } " " } }
                        td { a href=(format!("/charts/workers/{}/builds.svg", urls::path_segment(text(worker, "name")))) { "builds per day" } }
                        td {
                            button.action data-method=(if paused { "unpause" } else { "pause" }) data-path=(format!("/workers/{id}")) {
                                (if paused { "Unpause" } else { "Pause" })
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Workers", "workers", &[], body))
}

/// Who runs `worker`, as people read it: its owner's name under `owners:`,
/// else the owner's key; nothing for a worker without one.
fn worker_owner<'a>(config: &'a shared::config::Config, worker: &str) -> &'a str {
    let Some(owner) = config.worker(worker).and_then(|settings| settings.owner.as_deref()) else { return "" };
    config.settings.owners.get(owner).and_then(|known| known.name.as_deref()).unwrap_or(owner)
}

async fn queue_page(State(master): State<AppState>) -> Page {
    let catalog = master.catalog();
    let pending = api_items(
        &master,
        &BUILDREQUESTS,
        &[("claimed", "false".into()), ("order", "submitted_at".into()), ("limit", "10000".into())],
    )
    .await?;
    let mut by_builder: Vec<(i64, Vec<&Value>)> = Vec::new();
    for request in &pending {
        let builder = int(request, "builderid");
        match by_builder.iter_mut().find(|(id, _)| *id == builder) {
            Some((_, requests)) => requests.push(request),
            None => by_builder.push((builder, vec![request])),
        }
    }
    let now = chrono::Utc::now().timestamp();
    let history = master.store.queue_history(24, 15).await?;
    let body = html! {
        h1 { "Queue" }
        figure.chart { (PreEscaped(charts::queue(&history))) }
        p.summary { (pending.len()) " pending requests on " (by_builder.len()) " builders, oldest first" }
        @for (builder, requests) in &by_builder {
            @let name = builder_name(&catalog, *builder);
            section.queue {
                h2 { a href=(builder_href(name)) { (name) } " (" (requests.len()) ")" }
                ul {
                    @for request in requests {
                        li {
                            "request " (int(request, "buildrequestid")) ", priority " (int(request, "priority"))
                            ", waiting " (duration_text(now - int(request, "submitted_at")))
                        }
                    }
                }
            }
        }
    };
    Ok(page("Queue", "queue", &[], body))
}

// --- tests ----------------------------------------------------------------------------

/// Days of builds the Tests page looks at.
const TESTS_PAGE_DAYS: u32 = 30;

#[derive(Deserialize)]
struct TestsQuery {
    branch: Option<String>,
}

/// Across builders: the tests failing now on a branch, where each broke and
/// last passed; then the flaky ones.
async fn tests_page(State(master): State<AppState>, Query(query): Query<TestsQuery>) -> Page {
    let catalog = master.catalog();
    let branches = master.store.tested_branches(TESTS_PAGE_DAYS).await?;
    let branch = query.branch.or_else(|| branches.first().cloned()).unwrap_or_default();
    let failing = master.store.failing_tests(&branch, TESTS_PAGE_DAYS, 1000).await?;
    let flaky = master.store.flaky_tests(TESTS_PAGE_DAYS, 200, None).await?;
    let builders: std::collections::BTreeSet<_> = failing.iter().map(|test| test.builder_id).collect();
    let revision = |revision: &Option<String>| revision.as_deref().map(|r| r.chars().take(10).collect::<String>());
    let body = html! {
        h1 { "Tests" }
        form.filter method="get" action="/tests" {
            label {
                "Branch "
                select name="branch" {
                    @for name in &branches {
                        option value=(name) selected[*name == branch] { (if name.is_empty() { "(none)" } else { name }) }
                    }
                }
            }
            " " button type="submit" { "Show" }
        }
        h2 { "Failing on " (if branch.is_empty() { "builds of no branch" } else { &branch }) }
        p.summary #failing-summary {
            (failing.len()) " failing " (if failing.len() == 1 { "test" } else { "tests" })
            " on " (builders.len()) " " (if builders.len() == 1 { "builder" } else { "builders" })
            ", in the newest build of each (last " (TESTS_PAGE_DAYS) " days)"
        }
        @if !failing.is_empty() {
            table.failing {
                thead { tr { th { "Test" } th { "Builder" } th { "Broke in" } th { "Last passed" } th { "Builds failed" } } }
                tbody {
                    @for test in &failing {
                        @let builder = builder_name(&catalog, i64::from(test.builder_id.0));
                        tr {
                            td {
                                a href=(build_href(builder, i64::from(test.number))) { code { (test.test_name) } }
                                @if let Some(message) = &test.message { div.message { (message.lines().next().unwrap_or_default()) } }
                            }
                            td { a href=(builder_href(builder)) { (builder) } }
                            td {
                                a href=(build_href(builder, i64::from(test.first_failed_number))) { "#" (test.first_failed_number) }
                                @if let Some(revision) = revision(&test.first_failed_revision) { " " code { (revision) } }
                                " " time datetime=(test.first_failed_at) {
                                    (chrono::DateTime::from_timestamp(test.first_failed_at, 0)
                                        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M UTC").to_string()))
                                }
                            }
                            td {
                                @match test.last_passed_number {
                                    Some(number) => {
                                        a href=(build_href(builder, i64::from(number))) { "#" (number) }
                                        @if let Some(revision) = revision(&test.last_passed_revision) { " " code { (revision) } }
                                    }
                                    None => { "not in the last " (TESTS_PAGE_DAYS) " days" }
                                }
                            }
                            td.count { (test.failing_builds) }
                        }
                    }
                }
            }
        }
        h2 { "Flaky" }
        p.summary {
            "Tests that failed on a builder at a revision where another of its builds ran them without failing (last "
            (TESTS_PAGE_DAYS) " days)"
        }
        @if !flaky.is_empty() {
            table.flaky {
                thead { tr { th { "Test" } th { "Builder" } th { "Flaky failures" } th { "Last failed" } } }
                tbody {
                    @for test in &flaky {
                        @let builder = builder_name(&catalog, i64::from(test.builder_id.0));
                        tr {
                            td { code { (test.test_name) } }
                            td { a href=(builder_href(builder)) { (builder) } }
                            td.count { (test.failures) }
                            td { (time(&serde_json::json!({ "at": test.last_failed_at }), "at")) }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Tests", "tests", &[], body))
}

/// Every tag of the configured builders.
fn all_tags(catalog: &Catalog) -> BTreeSet<&str> {
    catalog.builders().flat_map(|(builder, _)| builder.tags.iter().map(String::as_str)).collect()
}

/// A filter's choice of one tag, or every builder.
fn tag_select(tags: &BTreeSet<&str>, chosen: Option<&str>) -> Markup {
    html! {
        label {
            "Tag "
            select name="tag" {
                option value="" { "every builder" }
                @for name in tags { option value=(name) selected[Some(*name) == chosen] { (name) } }
            }
        }
    }
}

/// Builds a builder's duration chart shows.
const CHART_BUILDS: i64 = 50;
/// Days a worker's chart shows.
const CHART_DAYS: i32 = 14;

/// An SVG answer.
fn svg(body: String) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml; charset=utf-8"))], body).into_response()
}

async fn builder_chart(State(master): State<AppState>, Path(name): Path<String>) -> Page {
    let catalog = master.catalog();
    let (builder, builder_id) = catalog.builder(&name).ok_or_else(|| not_found(format!("builder `{name}`")))?;
    let points = master.store.builder_points(builder_id, CHART_BUILDS).await?;
    Ok(svg(charts::builder_durations(builder.name.as_str(), &points)))
}

async fn worker_chart(State(master): State<AppState>, Path(name): Path<String>) -> Page {
    let worker = master.store.worker_id_by_name(&name).await?;
    let worker = worker.ok_or_else(|| not_found(format!("worker `{name}`")))?;
    let days = master.store.worker_days(worker, CHART_DAYS).await?;
    Ok(svg(charts::worker_days(&name, &days)))
}

async fn queue_chart(State(master): State<AppState>) -> Page {
    let history = master.store.queue_history(24, 15).await?;
    Ok(svg(charts::queue(&history)))
}

#[derive(Deserialize)]
struct WaterfallQuery {
    hours: Option<u32>,
    tag: Option<String>,
}

/// Builds over time per builder, newest at the top, for a window of hours.
async fn waterfall_page(State(master): State<AppState>, Query(query): Query<WaterfallQuery>) -> Page {
    let hours = query.hours.unwrap_or(6).clamp(1, 7 * 24);
    let tag = query.tag.filter(|tag| !tag.is_empty());
    let catalog = master.catalog();
    let tags = all_tags(&catalog);
    let mut columns: Vec<(BuilderId, &str)> = Vec::new();
    for (builder, id) in catalog.builders() {
        if tag.as_ref().is_none_or(|tag| builder.tags.contains(tag)) {
            columns.push((id, builder.name.as_str()));
        }
    }
    columns.sort_by_key(|(_, name)| *name);
    let now = chrono::Utc::now();
    let ids: Vec<BuilderId> = columns.iter().map(|(id, _)| *id).collect();
    let since = now - chrono::Duration::hours(i64::from(hours));
    let builds = master.store.builds_since(&ids, since).await?;
    let body = html! {
        h1 { "Waterfall" }
        form.filter method="get" action="/waterfall" {
            label {
                "Last "
                select name="hours" {
                    @for choice in [1u32, 3, 6, 12, 24, 48, 168] {
                        option value=(choice) selected[choice == hours] { (choice) " hours" }
                    }
                }
            }
            " "
            (tag_select(&tags, tag.as_deref()))
            " " button type="submit" { "Show" }
        }
        p.muted { (builds.len()) " builds on " (columns.len()) " builders; hover a bar for its build, click to open it." }
        div.scroll { (PreEscaped(charts::waterfall(&columns, &builds, now, hours))) }
    };
    Ok(page("Waterfall", "waterfall", &[], body))
}

#[derive(Deserialize)]
struct ConsoleQuery {
    branch: Option<String>,
    tag: Option<String>,
}

/// Changes as rows, builders as columns grouped by tag, each cell the
/// first build that included the change; the cell where a builder turned
/// red is outlined.
async fn console_page(State(master): State<AppState>, Query(query): Query<ConsoleQuery>) -> Page {
    let branch = query.branch.filter(|branch| !branch.is_empty());
    let tag = query.tag.filter(|tag| !tag.is_empty());
    let console = master.console(branch.as_deref(), tag.as_deref()).await?;
    let catalog = master.catalog();
    let tags = all_tags(&catalog);
    // Runs of columns of one group, for the header row above the names.
    let mut groups: Vec<(&str, usize)> = Vec::new();
    for column in &console.columns {
        match groups.last_mut() {
            Some((group, span)) if *group == column.group => *span += 1,
            _ => groups.push((column.group.as_str(), 1)),
        }
    }
    let body = html! {
        h1 { "Console" }
        form.filter method="get" action="/console" {
            label { "Branch " input name="branch" value=(branch.as_deref().unwrap_or_default()) placeholder="every branch"; }
            " "
            (tag_select(&tags, tag.as_deref()))
            " " button type="submit" { "Show" }
        }
        @if console.changes.is_empty() {
            p { "No changes yet" (branch.as_deref().map(|b| format!(" on {b}")).unwrap_or_default()) "." }
        } @else {
            div.scroll {
                table.console {
                    thead {
                        tr.groups {
                            th {}
                            @for (group, span) in &groups { th colspan=(span) { (group) } }
                        }
                        tr.names {
                            th { "Change" }
                            @for column in &console.columns {
                                th.builder { a href=(builder_href(column.name.as_str())) { span { (column.name) } } }
                            }
                        }
                    }
                    tbody {
                        @for change in &console.changes {
                            tr.change #(format!("change-{}", change.id)) {
                                th.change {
                                    code.revision { (change.revision.chars().take(10).collect::<String>()) }
                                    " " span.author { (change.author) }
                                    " " span.branch { (change.branch) }
                                    div.comment { (change.comments.lines().next().unwrap_or_default()) }
                                }
                                @for column in &console.columns {
                                    @match console.cells.get(&(change.id, column.id)) {
                                        Some(cell) => {
                                            @let class = cell.results.map_or_else(|| "running".to_owned(), |code| format!("r{code}"));
                                            td.cell.(class).broke[cell.broke] {
                                                a href=(build_href(column.name.as_str(), i64::from(cell.number)))
                                                    title=(format!("{} #{}{}", column.name, cell.number, if cell.broke { ": broke here" } else { "" })) {
                                                    (cell.number)
                                                }
                                            }
                                        }
                                        None => { td.cell.none {} }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Console", "console", &[], body))
}

/// Per configured branch, the builders of the configured tags: green or
/// red, since when, and what failed; a line to act on above each.
async fn release_page(State(master): State<AppState>) -> Page {
    let Some((board, branches)) = master.release_board().await? else {
        let body = html! {
            h1 { "Release status" }
            p { "No release board is configured: add "
                code { "release_board: {branches: [main], tags: [stable]}" } " to master.yaml." }
        };
        return Ok(page("Release status", "release", &[], body));
    };
    let at = |at: chrono::DateTime<chrono::Utc>| {
        html! {
            time datetime=(at.timestamp()) { (at.format("%Y-%m-%d %H:%M UTC")) }
        }
    };
    let body = html! {
        h1 { "Release status" }
        p.muted { "Builders tagged " (board.tags.join(", ")) ", newest finished build of each branch." }
        @for status in &branches {
            section.branch id=(format!("branch-{}", status.branch)) {
                h2 {
                    (status.branch) " "
                    @if status.red() > 0 { span.badge.r2 { "red" } } @else if status.builders.is_empty() { span.badge { "unknown" } } @else { span.badge.r0 { "green" } }
                }
                p.summary { (status.summary()) }
                @if !status.builders.is_empty() {
                    table.release {
                        thead { tr { th { "Builder" } th { "Newest build" } th { "Red since" } th { "Failed" } } }
                        tbody {
                            @for builder in &status.builders {
                                @let standing = &builder.standing;
                                @let class = standing.results.map_or_else(|| "running".to_owned(), |code| format!("r{code}"));
                                tr.(class).red[builder.red()] {
                                    td { a href=(builder_href(builder.name.as_str())) { (builder.name) } }
                                    td.result {
                                        a href=(build_href(builder.name.as_str(), i64::from(standing.number))) {
                                            "#" (standing.number) " "
                                            (standing.results.and_then(Results::from_code).map_or("running", |r| r.name()))
                                        }
                                        @if let Some(revision) = &standing.revision {
                                            " " code { (revision.chars().take(10).collect::<String>()) }
                                        }
                                    }
                                    td {
                                        @if let (Some(number), Some(since)) = (standing.red_since_number, standing.red_since) {
                                            a href=(build_href(builder.name.as_str(), i64::from(number))) { "#" (number) } ", " (at(since))
                                        }
                                    }
                                    td.failed {
                                        @if !builder.failed_steps.is_empty() {
                                            span.steps { "steps: " (builder.failed_steps.join(", ")) }
                                        }
                                        @if !builder.failing_tests.is_empty() {
                                            ul.tests { @for test in &builder.failing_tests { li { code { (test.test_name) } } } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if !status.unbuilt.is_empty() {
                    p.muted { "No recent build of " (status.branch) ": "
                        @for (i, name) in status.unbuilt.iter().enumerate() {
                            @if i > 0 { ", " }
                            a href=(builder_href(name.as_str())) { (name) }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Release status", "release", &[], body))
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// Each configured way to sign in: a button per provider, and the
/// password form when settings.yaml has local users.
async fn login_page(State(master): State<AppState>, Query(query): Query<LoginQuery>) -> Response {
    let catalog = master.catalog();
    let settings = &catalog.config.settings;
    // Only a page of this site is returned to; the providers' links carry it.
    let next = query.next.filter(|next| crate::sign_in::is_local_path(next)).unwrap_or_else(|| "/".into());
    let return_to: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
    let mut providers: Vec<(String, String)> = Vec::new();
    if settings.sign_in.github.is_some() {
        providers.push(("GitHub".into(), format!("/auth/github/login?return_to={return_to}")));
    }
    for provider in &settings.sign_in.oidc {
        providers
            .push((provider.title().to_owned(), format!("/auth/oidc/{}/login?return_to={return_to}", provider.name)));
    }
    let body = html! {
        h1 { "Log in" }
        @if !providers.is_empty() {
            ul.providers {
                @for (title, href) in &providers {
                    li { a.button.sign-in href=(href) { "Sign in with " (title) } }
                }
            }
        }
        @if !settings.users.is_empty() {
            form #login {
                label { "User name" input name="username" autocomplete="username" required; }
                label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
                p.error role="alert" {}
            }
        }
        @if providers.is_empty() && settings.users.is_empty() {
            p { "This installation has no accounts: anyone who reaches it may force and stop builds." }
        }
    };
    page("Log in", "login", &[], body)
}
