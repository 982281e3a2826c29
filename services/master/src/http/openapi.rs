//! `/api/v2/openapi.json`: the API described from the same route list and
//! resource tables that serve it, so the description is never behind the
//! code. A test checks served items against these schemas.

use serde_json::{Map, Value, json};

use super::query::MAX_PAGE;
use super::{RouteDoc, Serves};
use crate::store::resources::{Kind, RESOURCES, Resource};

pub fn document(routes: &[RouteDoc]) -> Value {
    let mut paths = Map::new();
    for route in routes {
        let mut item = Map::new();
        let parameters: Vec<Value> = path_parameters(route.path);
        if let Some(serves) = route.get {
            item.insert("get".into(), get_operation(route.path, serves, &parameters));
        }
        if !route.methods.is_empty() {
            item.insert("post".into(), post_operation(route, &parameters));
        }
        paths.insert(route.path.to_owned(), Value::Object(item));
    }
    let schemas: Map<String, Value> =
        RESOURCES.iter().map(|resource| (schema_name(resource), item_schema(resource))).collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "buildmaster API",
            "version": "2",
            "description": "Buildbot's data API v2, served by every buildmaster master. Lists take \
                `field`, `order` (`-` for descending), `limit` (at most 10000; also the page size when absent), \
                `offset`, and filters `{field}={value}` or `{field}__{eq|ne|lt|le|gt|ge|contains|in|notin}={value}`. \
                Control is JSON-RPC 2.0 posted to the resource. Live events: WebSocket at `/ws`.",
        },
        "paths": paths,
        "components": { "schemas": schemas },
    })
}

fn schema_name(resource: &Resource) -> String {
    resource.plural.trim_end_matches('s').to_owned()
}

/// One item of a resource: every field, typed; all but those served only
/// on request are always present.
pub fn item_schema(resource: &Resource) -> Value {
    let properties: Map<String, Value> =
        resource.fields.iter().map(|field| (field.name.to_owned(), kind_schema(field.kind))).collect();
    let required: Vec<&str> = resource.fields.iter().filter(|f| !f.on_request).map(|f| f.name).collect();
    json!({ "type": "object", "properties": properties, "required": required })
}

fn kind_schema(kind: Kind) -> Value {
    match kind {
        Kind::Int => json!({ "type": ["integer", "null"] }),
        Kind::Text => json!({ "type": ["string", "null"] }),
        Kind::Bool | Kind::Present => json!({ "type": "boolean" }),
        Kind::Time => json!({ "type": ["integer", "null"], "description": "seconds since the epoch" }),
        Kind::TextList => json!({ "type": "array", "items": { "type": "string" } }),
        Kind::Json => json!({}),
    }
}

fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect()
}

fn query_parameters(resource: &Resource) -> Vec<Value> {
    let mut parameters = vec![
        json!({ "name": "field", "in": "query", "schema": { "type": "string" }, "description": "fields to serve" }),
        json!({ "name": "order", "in": "query", "schema": { "type": "string" }, "description": "field, `-field` for descending" }),
        json!({ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": MAX_PAGE } }),
        json!({ "name": "offset", "in": "query", "schema": { "type": "integer", "minimum": 0 } }),
    ];
    if resource.fields.iter().any(|f| f.on_request) {
        parameters.push(json!({
            "name": "property", "in": "query", "schema": { "type": "string" },
            "description": "a property to serve, or `*` for all",
        }));
    }
    for field in resource.fields.iter().filter(|f| f.kind != Kind::Json) {
        parameters.push(json!({
            "name": field.name, "in": "query", "schema": { "type": "string" },
            "description": format!("filter; also `{}__{{op}}`", field.name),
        }));
    }
    parameters
}

fn get_operation(path: &str, serves: Serves, path_parameters: &[Value]) -> Value {
    let mut parameters = path_parameters.to_vec();
    let (summary, content) = match serves {
        Serves::Collection(resource) | Serves::Single(resource) => {
            parameters.extend(query_parameters(resource));
            let item = json!({ "$ref": format!("#/components/schemas/{}", schema_name(resource)) });
            let envelope = json!({
                "type": "object",
                "properties": {
                    resource.plural: { "type": "array", "items": item },
                    "meta": { "type": "object", "properties": { "total": { "type": "integer" } } },
                },
                "required": [resource.plural, "meta"],
            });
            let summary = match serves {
                Serves::Collection(_) => format!("list {}", resource.plural),
                _ => format!("one of {} (a list of one)", resource.plural),
            };
            (summary, json!({ "application/json": { "schema": envelope } }))
        }
        Serves::LogLines => {
            parameters.push(json!({ "name": "offset", "in": "query", "schema": { "type": "integer", "minimum": 0 } }));
            parameters.push(json!({ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 0 } }));
            let chunk = json!({
                "type": "object",
                "properties": {
                    "logid": { "type": "integer" }, "firstline": { "type": "integer" }, "content": { "type": "string" },
                },
            });
            let envelope =
                json!({ "type": "object", "properties": { "logchunks": { "type": "array", "items": chunk } } });
            (
                "lines of a log, each prefixed by its channel (o, e, h) for stdio logs".to_owned(),
                json!({ "application/json": { "schema": envelope } }),
            )
        }
        Serves::Notifications => {
            let text = || json!({ "type": "string" });
            let maybe_text = || json!({ "type": ["string", "null"] });
            let item = json!({
                "type": "object",
                "properties": {
                    "reporter": text(), "event": { "enum": ["started", "finished"] },
                    "state": { "enum": ["pending", "sent", "skipped", "failed"] },
                    "attempts": { "type": "integer" }, "created_at": text(), "done_at": maybe_text(),
                    "due_at": text(), "last_error": maybe_text(), "detail": maybe_text(),
                },
            });
            let envelope = json!({
                "type": "object",
                "properties": {
                    "notifications": { "type": "array", "items": item },
                    "meta": { "type": "object", "properties": { "total": { "type": "integer" } } },
                },
            });
            (
                "what each reporter told of a build, will tell, skipped or gave up on".to_owned(),
                json!({ "application/json": { "schema": envelope } }),
            )
        }
        Serves::FlakyTests => {
            for (name, text) in
                [("days", "days of history looked at (default 30)"), ("limit", "tests at most (default 100)")]
            {
                parameters.push(json!({
                    "name": name, "in": "query", "description": text, "schema": { "type": "integer", "minimum": 1 },
                }));
            }
            let item = json!({
                "type": "object",
                "properties": {
                    "test_name": { "type": "string" }, "builderid": { "type": "integer" },
                    "failures": { "type": "integer" }, "last_failed_at": { "type": "integer" },
                },
            });
            let envelope = json!({
                "type": "object",
                "properties": {
                    "flaky_tests": { "type": "array", "items": item },
                    "meta": { "type": "object", "properties": { "total": { "type": "integer" } } },
                },
            });
            (
                "tests that failed on a builder at a revision where another of its builds ran them without failing"
                    .to_owned(),
                json!({ "application/json": { "schema": envelope } }),
            )
        }
        Serves::FailingTests => {
            for (name, text, kind) in [
                ("branch", "the branch (default: builds of no branch)", "string"),
                ("days", "days of history looked at (default 30)", "integer"),
                ("limit", "tests at most (default 100)", "integer"),
            ] {
                parameters
                    .push(json!({ "name": name, "in": "query", "description": text, "schema": { "type": kind } }));
            }
            let int = || json!({ "type": "integer" });
            let maybe_int = || json!({ "type": ["integer", "null"] });
            let maybe_text = || json!({ "type": ["string", "null"] });
            let item = json!({
                "type": "object",
                "properties": {
                    "test_name": { "type": "string" }, "builderid": int(), "buildid": int(), "number": int(),
                    "message": maybe_text(), "failing_builds": int(),
                    "first_failed_buildid": int(), "first_failed_number": int(),
                    "first_failed_revision": maybe_text(), "first_failed_at": int(),
                    "last_passed_buildid": maybe_int(), "last_passed_number": maybe_int(),
                    "last_passed_revision": maybe_text(),
                },
            });
            let envelope = json!({
                "type": "object",
                "properties": {
                    "failing_tests": { "type": "array", "items": item },
                    "meta": { "type": "object", "properties": { "total": { "type": "integer" } } },
                },
            });
            (
                "tests failing in the newest build of a branch on each builder, with where they broke and last passed"
                    .to_owned(),
                json!({ "application/json": { "schema": envelope } }),
            )
        }
        Serves::LogBytes => {
            parameters.push(json!({ "name": "follow", "in": "query", "schema": { "type": "boolean" } }));
            (
                "what the step printed, byte for byte; `follow=true` streams a running log".to_owned(),
                json!({ "text/plain": { "schema": { "type": "string" } } }),
            )
        }
        Serves::ArtifactBytes => (
            "an artifact's bytes as its step left them, as a download".to_owned(),
            json!({ "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } }),
        ),
    };
    json!({
        "summary": summary,
        "operationId": format!("get {path}"),
        "parameters": parameters,
        "responses": {
            "200": { "description": "OK", "content": content },
            "400": { "description": "a parameter is unknown or wrong", "content": error_content() },
            "404": { "description": "not found", "content": error_content() },
        },
    })
}

fn error_content() -> Value {
    json!({ "application/json": { "schema": {
        "type": "object", "properties": { "error": { "type": "string" } }, "required": ["error"],
    } } })
}

fn post_operation(route: &RouteDoc, path_parameters: &[Value]) -> Value {
    let call = json!({
        "type": "object",
        "properties": {
            "jsonrpc": { "const": "2.0" },
            "method": { "enum": route.methods },
            "params": { "type": "object" },
            "id": {},
        },
        "required": ["method"],
    });
    let answer = json!({
        "type": "object",
        "properties": {
            "jsonrpc": { "const": "2.0" }, "id": {}, "result": {},
            "error": { "type": "object", "properties": {
                "code": { "type": "integer" }, "message": { "type": "string" }, "data": { "type": "object" },
            } },
        },
    });
    json!({
        "summary": format!("JSON-RPC: {}", route.methods.join(", ")),
        "operationId": format!("post {}", route.path),
        "parameters": path_parameters,
        "requestBody": { "required": true, "content": { "application/json": { "schema": call } } },
        "responses": {
            "200": { "description": "the result", "content": { "application/json": { "schema": answer } } },
            "400": { "description": "invalid request or parameters (codes -32700, -32600, -32601, -32602)", "content": { "application/json": { "schema": answer } } },
            "404": { "description": "no such resource", "content": { "application/json": { "schema": answer } } },
            "409": { "description": "not possible in the resource's state", "content": { "application/json": { "schema": answer } } },
            "503": { "description": "a dependency is unavailable; try again (-32603)", "content": { "application/json": { "schema": answer } } },
        },
    })
}
