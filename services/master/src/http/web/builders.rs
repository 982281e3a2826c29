//! The overview (every builder as a row of its newest builds) and a
//! builder's page, with the fragments live events put in their place.

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Path, Query, State};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::Value;
use shared::config::{ForceParameter, SchedulerConfig};
use shared::model::Results;

use super::fleet::worker_state;
use super::{
    AppState, CHART_BUILDS, Page, build_href, builder_href, builder_name, charts, duration, fragment, int, item,
    not_found, page, result_class, result_name, text, time,
};
use crate::http::reads::api_items;
use crate::store::resources::{BUILDERS, BUILDREQUESTS, BUILDS, WORKERS};
use crate::urls;

/// Builds shown per builder on the overview.
const GRID_CELLS: i64 = 12;
/// Builds per page on a builder's page.
const BUILDS_PER_PAGE: i64 = 50;

#[derive(Deserialize)]
pub(super) struct OverviewQuery {
    tag: Option<String>,
    branch: Option<String>,
}

/// Every builder as a row of its newest builds; filter by tag and branch.
pub(super) async fn overview(State(master): State<AppState>, Query(query): Query<OverviewQuery>) -> Page {
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

#[derive(Deserialize)]
pub(super) struct BuilderQuery {
    /// Keyset pagination: builds numbered below this.
    before: Option<i64>,
}

pub(super) async fn builder_page(
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

pub(super) async fn cell_fragment(State(master): State<AppState>, Path(build_id): Path<i64>) -> Page {
    let build = item(&master, &BUILDS, "buildid", build_id).await?;
    let builder = builder_name(&master.catalog(), int(&build, "builderid")).to_owned();
    let results = build.get("results").and_then(Value::as_i64).and_then(|code| i16::try_from(code).ok());
    Ok(fragment(grid_cell(&builder, build_id, int(&build, "number"), results)))
}

pub(super) async fn build_row_fragment(State(master): State<AppState>, Path(build_id): Path<i64>) -> Page {
    let build = item(&master, &BUILDS, "buildid", build_id).await?;
    let builder = builder_name(&master.catalog(), int(&build, "builderid")).to_owned();
    Ok(fragment(build_row(&builder, &build)))
}

pub(super) async fn pending_fragment(State(master): State<AppState>, Path(request_id): Path<i64>) -> Page {
    let request = item(&master, &BUILDREQUESTS, "buildrequestid", request_id).await?;
    Ok(fragment(pending_request(&request)))
}
