//! A build's page: its failed tests first, then its steps and their logs,
//! with the fragment a step's live event puts in its place.

use std::collections::HashMap;

use axum::extract::{Path, State};
use maud::{Markup, html};
use serde_json::Value;

use super::{
    AppState, Page, PageError, builder_href, duration, duration_text, fragment, int, item, not_found, page,
    result_class, result_name, text, time,
};
use crate::http::ApiError;
use crate::http::reads::api_items;
use crate::store::resources::{
    ARTIFACTS, BUILDERS, BUILDREQUESTS, BUILDS, BUILDSETS, CHANGES, LOGS, STEPS, TEST_RESULT_SETS, TEST_RESULTS,
    WORKERS,
};

/// Failed tests a build's page lists per test result set; the API has
/// the rest.
const FAILED_TESTS_SHOWN: usize = 5000;

pub(super) async fn build_page(State(master): State<AppState>, Path((name, number)): Path<(String, String)>) -> Page {
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

pub(super) async fn step_fragment(State(master): State<AppState>, Path(step_id): Path<i64>) -> Page {
    let step = item(&master, &STEPS, "stepid", step_id).await?;
    let logs = api_items(&master, &LOGS, &[("stepid", step_id.to_string())]).await?;
    Ok(fragment(step_view(&step, &logs)))
}
