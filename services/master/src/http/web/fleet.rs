//! What runs the builds: the workers page (state, owner, tags, what each
//! runs) and the queue of pending requests.

use std::collections::HashMap;

use axum::extract::State;
use maud::{Markup, PreEscaped, html};
use serde_json::Value;

use super::{AppState, Page, build_href, builder_href, builder_name, charts, duration_text, int, page, text, time};
use crate::http::reads::api_items;
use crate::store::resources::{BUILDREQUESTS, BUILDS, WORKERS};
use crate::urls;

/// A worker online or offline (from its presence), and paused with why.
pub(super) fn worker_state(worker: &Value) -> Markup {
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

pub(super) async fn workers_page(State(master): State<AppState>) -> Page {
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

pub(super) async fn queue_page(State(master): State<AppState>) -> Page {
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
