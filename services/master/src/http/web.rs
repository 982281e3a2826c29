//! The web UI: what people look at all day. Every master serves it on the
//! same port as the API. Pages are rendered here, in one round trip to
//! Postgres or a few, and read through the same checked paths as the API
//! (`reads::api_items`); `web/app.js` (plain JavaScript, embedded in the
//! binary like `web/style.css`) makes them live from `/ws`, follows running
//! logs, and sends the control actions as JSON-RPC, so the one authorization
//! check (`auth::authorize`) covers the pages too.

mod builders;
mod builds;
mod charts;
mod fleet;
mod views;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use serde_json::Value;
use shared::ids::BuilderId;
use shared::model::Results;

use super::ApiError;
use super::reads::api_items;
use crate::Master;
use crate::catalog::Catalog;
use crate::store::resources::Resource;
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

/// Builds a builder's duration chart shows.
const CHART_BUILDS: i64 = 50;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(builders::overview))
        .route("/builders/{builder}", get(builders::builder_page))
        .route("/builders/{builder}/builds/{number}", get(builds::build_page))
        .route("/workers", get(fleet::workers_page))
        .route("/queue", get(fleet::queue_page))
        .route("/tests", get(views::tests_page))
        .route("/console", get(views::console_page))
        .route("/release", get(views::release_page))
        .route("/waterfall", get(views::waterfall_page))
        .route("/charts/builders/{builder}/durations.svg", get(views::builder_chart))
        .route("/charts/workers/{worker}/builds.svg", get(views::worker_chart))
        .route("/charts/queue.svg", get(views::queue_chart))
        .route("/login", get(login_page))
        .route("/fragments/cells/{build_id}", get(builders::cell_fragment))
        .route("/fragments/build-rows/{build_id}", get(builders::build_row_fragment))
        .route("/fragments/steps/{step_id}", get(builds::step_fragment))
        .route("/fragments/pending/{request_id}", get(builders::pending_fragment))
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
