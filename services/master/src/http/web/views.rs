//! Views across builders and builds: the console, the waterfall, the
//! release board, the tests failing now, and the charts drawn as SVG.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use maud::{PreEscaped, html};
use serde::Deserialize;
use shared::ids::BuilderId;
use shared::model::Results;

use super::{
    AppState, CHART_BUILDS, Page, all_tags, build_href, builder_href, builder_name, charts, not_found, page,
    tag_select, time,
};

/// Days of builds the Tests page looks at.
const TESTS_PAGE_DAYS: u32 = 30;

#[derive(Deserialize)]
pub(super) struct TestsQuery {
    branch: Option<String>,
}

/// Across builders: the tests failing now on a branch, where each broke and
/// last passed; then the flaky ones.
pub(super) async fn tests_page(State(master): State<AppState>, Query(query): Query<TestsQuery>) -> Page {
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

/// Days a worker's chart shows.
const CHART_DAYS: i32 = 14;

/// An SVG answer.
fn svg(body: String) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml; charset=utf-8"))], body).into_response()
}

pub(super) async fn builder_chart(State(master): State<AppState>, Path(name): Path<String>) -> Page {
    let catalog = master.catalog();
    let (builder, builder_id) = catalog.builder(&name).ok_or_else(|| not_found(format!("builder `{name}`")))?;
    let points = master.store.builder_points(builder_id, CHART_BUILDS).await?;
    Ok(svg(charts::builder_durations(builder.name.as_str(), &points)))
}

pub(super) async fn worker_chart(State(master): State<AppState>, Path(name): Path<String>) -> Page {
    let worker = master.store.worker_id_by_name(&name).await?;
    let worker = worker.ok_or_else(|| not_found(format!("worker `{name}`")))?;
    let days = master.store.worker_days(worker, CHART_DAYS).await?;
    Ok(svg(charts::worker_days(&name, &days)))
}

pub(super) async fn queue_chart(State(master): State<AppState>) -> Page {
    let history = master.store.queue_history(24, 15).await?;
    Ok(svg(charts::queue(&history)))
}

#[derive(Deserialize)]
pub(super) struct WaterfallQuery {
    hours: Option<u32>,
    tag: Option<String>,
}

/// Builds over time per builder, newest at the top, for a window of hours.
pub(super) async fn waterfall_page(State(master): State<AppState>, Query(query): Query<WaterfallQuery>) -> Page {
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
pub(super) struct ConsoleQuery {
    branch: Option<String>,
    tag: Option<String>,
}

/// Changes as rows, builders as columns grouped by tag, each cell the
/// first build that included the change; the cell where a builder turned
/// red is outlined.
pub(super) async fn console_page(State(master): State<AppState>, Query(query): Query<ConsoleQuery>) -> Page {
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
pub(super) async fn release_page(State(master): State<AppState>) -> Page {
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
