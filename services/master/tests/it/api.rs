//! The Buildbot-shaped API as a client sees it through HAProxy with two
//! masters: every endpoint of the OpenAPI description answers, every item
//! has exactly the fields its schema names, filters, order and pagination
//! select what they say, errors have their shapes, and each control action
//! does what it says to real builds.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::TestStack;

const YAML: &str = r#"
factories:
  hello:
    steps:
      - name: greet
        command: printf 'one\ntwo\n'; printf 'oops\n' >&2
      - name: bye
        command: echo bye
  slow:
    steps:
      - name: nap
        command: sleep 30
builders:
  - name: hello
    description: says hello
    tags: [stable, tier-1]
    factory: hello
    workers: [w1, w2]
  - name: slow
    tags: [tier-2]
    factory: slow
    workers: [w1, w2]
schedulers:
  - type: force
    name: force
    builders: [hello, slow]
"#;

/// POSTs a JSON-RPC call; the status and the answer.
async fn rpc(stack: &TestStack, path: &str, method: &str, params: Value) -> (StatusCode, Value) {
    let body = json!({ "jsonrpc": "2.0", "method": method, "params": params, "id": 7 });
    post_raw(stack, path, body.to_string()).await
}

async fn post_raw(stack: &TestStack, path: &str, body: String) -> (StatusCode, Value) {
    let response = stack
        .http
        .post(format!("{}{path}", stack.base_url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST reaches the stack");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get_status(stack: &TestStack, path: &str) -> (StatusCode, Value) {
    let response = stack.http.get(format!("{}{path}", stack.base_url)).send().await.expect("GET reaches the stack");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A 400 whose `{"error": ...}` mentions `needle`.
async fn bad_request(stack: &TestStack, path: &str, needle: &str) {
    let (status, body) = get_status(stack, path).await;
    assert_eq!(status, 400, "GET {path}: {body}");
    let error = body["error"].as_str().unwrap_or_else(|| panic!("GET {path}: no error text in {body}"));
    assert!(error.contains(needle), "GET {path}: `{error}` should mention `{needle}`");
}

fn list<'a>(body: &'a Value, plural: &str) -> &'a Vec<Value> {
    body[plural].as_array().unwrap_or_else(|| panic!("no `{plural}` list in {body}"))
}

fn ids(body: &Value, plural: &str, field: &str) -> Vec<i64> {
    list(body, plural).iter().map(|item| item[field].as_i64().expect("an id")).collect()
}

/// Checks an item against its OpenAPI schema: exactly the required fields
/// (plus `extra`), each of the type the schema gives.
fn conforms(openapi: &Value, schema: &str, item: &Value, extra: &[&str]) {
    let schema = &openapi["components"]["schemas"][schema];
    let required: BTreeSet<&str> =
        schema["required"].as_array().expect("required").iter().filter_map(Value::as_str).collect();
    let mut expected = required.clone();
    expected.extend(extra.iter().copied());
    let served: BTreeSet<&str> = item.as_object().expect("an object").keys().map(String::as_str).collect();
    assert_eq!(served, expected, "fields of {item}");
    for (name, value) in item.as_object().unwrap() {
        let types: Vec<&str> = match &schema["properties"][name]["type"] {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        assert!(types.contains(&actual), "`{name}` is {actual} in {item}, the schema says {types:?}");
    }
}

fn schema_of(openapi: &Value, path: &str) -> (String, String) {
    let envelope = &openapi["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    let plural = envelope["required"][0].as_str().unwrap_or_default().to_owned();
    let reference = envelope["properties"][&plural]["items"]["$ref"].as_str().unwrap_or_default();
    (plural, reference.rsplit('/').next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_endpoint_serves_buildbot_shapes_filters_and_errors() {
    let mut stack = TestStack::new(YAML, &["hello", "slow"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let openapi = stack.get("/api/v2/openapi.json").await;
    assert_eq!(openapi["openapi"], "3.1.0");

    // Two builds of `hello`, forced as a Buildbot script does.
    let params = json!({
        "builderNames": ["hello"], "reason": "api test", "owner": "alice", "priority": 3,
        "branch": "main", "revision": "abc123", "properties": { "parallel": 4 },
    });
    let (status, answer) = rpc(&stack, "/api/v2/forceschedulers/force", "force", params.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], 7);
    let buildset_id = answer["result"][0].as_i64().expect("[bsid, ...]");
    let (builder_key, request) = answer["result"][1].as_object().unwrap().iter().next().unwrap();
    let builder_id: i64 = builder_key.parse().expect("keyed by builder id");
    let request_id = request.as_i64().unwrap();
    let first = stack.wait_for_build(request_id).await;
    let (_, answer) = rpc(&stack, "/api/v2/forceschedulers/force", "force", params).await;
    let second = stack.wait_for_build(answer["result"][1][builder_key].as_i64().unwrap()).await;
    assert_eq!((first["number"].as_i64(), second["number"].as_i64()), (Some(1), Some(2)));
    assert_eq!(first["results"], 0, "{first}");
    let build_id = first["buildid"].as_i64().unwrap();

    // Builders, by id and by name.
    let builders = stack.get("/api/v2/builders").await;
    assert_eq!(builders["meta"]["total"], 2);
    let hello = list(&builders, "builders").iter().find(|b| b["name"] == "hello").expect("hello").clone();
    conforms(&openapi, "builder", &hello, &[]);
    assert_eq!(hello["builderid"], builder_id);
    assert_eq!(hello["tags"], json!(["stable", "tier-1"]));
    assert_eq!(hello["description"], "says hello");
    assert_eq!(hello["masterids"].as_array().map(Vec::len), Some(2), "both masters serve it: {hello}");
    assert_eq!(stack.get("/api/v2/builders/hello").await["builders"][0], hello);
    assert_eq!(stack.get(&format!("/api/v2/builders/{builder_id}")).await["builders"][0]["name"], "hello");
    assert_eq!(ids(&stack.get("/api/v2/builders?tags__contains=tier-2").await, "builders", "builderid").len(), 1);
    assert_eq!(list(&stack.get("/api/v2/builders?name__contains=ell").await, "builders")[0]["name"], "hello");

    // Builds: envelope, properties on request, order, pagination, filters.
    let build = stack.get(&format!("/api/v2/builds/{build_id}")).await;
    assert_eq!(build["meta"]["total"], 1);
    conforms(&openapi, "build", &build["builds"][0], &[]);
    assert_eq!(build["builds"][0]["complete"], true);
    assert!(build["builds"][0]["started_at"].as_i64().unwrap() > 1_700_000_000, "epoch seconds");
    let with_all = stack.get(&format!("/api/v2/builds/{build_id}?property=*")).await;
    let properties = &with_all["builds"][0]["properties"];
    conforms(&openapi, "build", &with_all["builds"][0], &["properties"]);
    assert_eq!(properties["owner"], json!(["alice", "Force Build Form"]));
    assert_eq!(properties["branch"], json!(["main", "Force Build Form"]));
    assert_eq!(properties["parallel"], json!([4, "Force Build Form"]));
    assert_eq!(properties["buildnumber"], json!([1, "Build"]));
    assert_eq!(properties["workername"], json!(["w1", "Worker"]));
    let some = stack.get(&format!("/api/v2/builds/{build_id}?property=owner&property=revision")).await;
    let names: BTreeSet<&String> = some["builds"][0]["properties"].as_object().unwrap().keys().collect();
    assert_eq!(names.into_iter().cloned().collect::<Vec<_>>(), ["owner", "revision"]);
    let of_builder = stack.get("/api/v2/builders/hello/builds?order=-number&limit=1").await;
    assert_eq!(ids(&of_builder, "builds", "number"), [2]);
    assert_eq!(of_builder["meta"]["total"], 2, "total counts every match, not the page");
    assert_eq!(
        ids(&stack.get("/api/v2/builders/hello/builds?order=-number&limit=1&offset=1").await, "builds", "number"),
        [1]
    );
    assert_eq!(ids(&stack.get("/api/v2/builders/hello/builds?order=number").await, "builds", "number"), [1, 2]);
    let by_number = stack.get("/api/v2/builders/hello/builds/2").await;
    assert_eq!(by_number["builds"][0]["buildid"], second["buildid"]);
    let picked = stack.get(&format!("/api/v2/builds?buildrequestid={request_id}&field=buildid&field=results")).await;
    assert_eq!(picked["builds"], json!([{ "buildid": build_id, "results": 0 }]));
    assert_eq!(ids(&stack.get("/api/v2/builds?number__gt=1").await, "builds", "number"), [2]);
    assert_eq!(ids(&stack.get("/api/v2/builds?number__in=1,2&order=-buildid").await, "builds", "number"), [2, 1]);
    assert_eq!(ids(&stack.get("/api/v2/builds?number=1&number=2").await, "builds", "number").len(), 2);
    assert_eq!(ids(&stack.get("/api/v2/builds?number__ne=1").await, "builds", "number"), [2]);
    assert_eq!(ids(&stack.get("/api/v2/builds?complete=yes").await, "builds", "number").len(), 2);
    assert!(ids(&stack.get("/api/v2/builds?complete=off").await, "builds", "number").is_empty());
    assert_eq!(ids(&stack.get("/api/v2/builds?state_string__contains=success").await, "builds", "buildid").len(), 2);
    let other_builder = builder_id + 1;
    let widened = stack.get(&format!("/api/v2/builders/hello/builds?builderid={other_builder}")).await;
    assert!(list(&widened, "builds").is_empty(), "a query filter narrows the path, never widens it: {widened}");
    let since = first["started_at"].as_i64().unwrap();
    let same_second = stack.get(&format!("/api/v2/builds?started_at={since}&buildid={build_id}")).await;
    assert_eq!(ids(&same_second, "builds", "buildid"), [build_id], "times compare in the whole seconds served");
    let up_to = stack.get(&format!("/api/v2/builds?started_at__le={since}&buildid={build_id}")).await;
    assert_eq!(ids(&up_to, "builds", "buildid"), [build_id]);
    assert_eq!(ids(&stack.get(&format!("/api/v2/builds?started_at__ge={since}")).await, "builds", "buildid").len(), 2);
    assert!(ids(&stack.get(&format!("/api/v2/builds?started_at__lt={since}")).await, "builds", "buildid").is_empty());
    assert_eq!(
        ids(&stack.get(&format!("/api/v2/buildrequests/{request_id}/builds")).await, "builds", "buildid"),
        [build_id]
    );

    // Steps by build, by number, by name; through the builder too.
    let steps = stack.get(&format!("/api/v2/builds/{build_id}/steps")).await;
    assert_eq!(list(&steps, "steps").iter().map(|s| s["name"].as_str().unwrap()).collect::<Vec<_>>(), ["greet", "bye"]);
    for step in list(&steps, "steps") {
        conforms(&openapi, "step", step, &[]);
    }
    let greet = steps["steps"][0].clone();
    let step_id = greet["stepid"].as_i64().unwrap();
    assert_eq!(stack.get(&format!("/api/v2/builds/{build_id}/steps/0")).await["steps"][0], greet);
    assert_eq!(stack.get(&format!("/api/v2/builds/{build_id}/steps/greet")).await["steps"][0], greet);
    assert_eq!(stack.get(&format!("/api/v2/steps/{step_id}")).await["steps"][0], greet);
    assert_eq!(stack.get("/api/v2/builders/hello/builds/1/steps/greet").await["steps"][0], greet);
    assert_eq!(list(&stack.get("/api/v2/builders/hello/builds/1/steps").await, "steps").len(), 2);

    // Logs, their lines and their bytes.
    let logs = stack.get(&format!("/api/v2/steps/{step_id}/logs")).await;
    let log = logs["logs"][0].clone();
    conforms(&openapi, "log", &log, &[]);
    assert_eq!(
        (log["slug"].as_str(), log["type"].as_str(), log["complete"].as_bool()),
        (Some("stdio"), Some("s"), Some(true))
    );
    let log_id = log["logid"].as_i64().unwrap();
    assert_eq!(stack.get(&format!("/api/v2/steps/{step_id}/logs/stdio")).await["logs"][0], log);
    assert_eq!(stack.get(&format!("/api/v2/logs/{log_id}")).await["logs"][0], log);
    assert_eq!(stack.get(&format!("/api/v2/builds/{build_id}/steps/greet/logs/stdio")).await["logs"][0], log);
    assert_eq!(stack.get("/api/v2/builders/hello/builds/1/steps/0/logs/stdio").await["logs"][0], log);
    assert_eq!(stack.get("/api/v2/builders/hello/builds/1/steps/0/logs").await["logs"][0], log);
    let contents = stack.get(&format!("/api/v2/logs/{log_id}/contents")).await;
    let chunk = &contents["logchunks"][0];
    assert_eq!(chunk["firstline"], 0);
    let content = chunk["content"].as_str().unwrap();
    for line in ["oone\n", "otwo\n", "eoops\n"] {
        assert!(content.contains(line), "stdout and stderr lines keep their channel: {content:?}");
    }
    let all_lines = content.lines().count() as i64;
    let tail = stack.get(&format!("/api/v2/logs/{log_id}/contents?offset={}&limit=1", all_lines - 1)).await;
    assert_eq!(tail["logchunks"][0]["firstline"], all_lines - 1);
    assert_eq!(tail["logchunks"][0]["content"].as_str().unwrap().lines().count(), 1);
    assert_eq!(stack.get(&format!("/api/v2/logs/{log_id}/contents?offset=1000")).await["logchunks"], json!([]));
    let raw = stack.http.get(format!("{}/api/v2/logs/{log_id}/raw", stack.base_url)).send().await.unwrap();
    assert!(raw.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));
    let bytes = raw.bytes().await.unwrap();
    assert_eq!(&bytes[..], b"one\ntwo\noops\n", "the raw log is what the step printed");
    let inline = stack.http.get(format!("{}/api/v2/logs/{log_id}/raw_inline", stack.base_url)).send().await.unwrap();
    assert_eq!(inline.headers()["content-disposition"], "inline");
    assert_eq!(inline.bytes().await.unwrap(), bytes);

    // Requests and buildsets.
    let requests = stack.get(&format!("/api/v2/buildrequests?builderid={builder_id}&order=buildrequestid")).await;
    assert_eq!(requests["meta"]["total"], 2);
    let first_request = requests["buildrequests"][0].clone();
    conforms(&openapi, "buildrequest", &first_request, &[]);
    assert_eq!(
        (first_request["claimed"].as_bool(), first_request["complete"].as_bool(), first_request["results"].as_i64()),
        (Some(true), Some(true), Some(0))
    );
    assert_eq!(first_request["priority"], 3);
    assert_eq!(stack.get(&format!("/api/v2/buildrequests/{request_id}")).await["buildrequests"][0], first_request);
    assert!(ids(&stack.get("/api/v2/buildrequests?claimed=false").await, "buildrequests", "buildrequestid").is_empty());
    assert_eq!(
        ids(&stack.get("/api/v2/buildrequests?complete=true").await, "buildrequests", "buildrequestid").len(),
        2
    );
    assert_eq!(
        ids(&stack.get("/api/v2/builders/hello/buildrequests").await, "buildrequests", "buildrequestid").len(),
        2
    );
    let buildset = stack.get(&format!("/api/v2/buildsets/{buildset_id}")).await["buildsets"][0].clone();
    conforms(&openapi, "buildset", &buildset, &[]);
    assert_eq!((buildset["reason"].as_str(), buildset["complete"].as_bool()), (Some("api test"), Some(true)));
    assert_eq!(stack.get("/api/v2/buildsets?order=-bsid").await["meta"]["total"], 2);

    // Workers, masters, schedulers, changes.
    let worker = stack.get("/api/v2/workers/w1").await["workers"][0].clone();
    conforms(&openapi, "worker", &worker, &[]);
    assert_eq!(worker["connected_to"].as_array().map(Vec::len), Some(1), "w1 is online: {worker}");
    assert_eq!(worker["configured_on"].as_array().map(Vec::len), Some(2), "w1 serves both builders: {worker}");
    assert_eq!(worker["workerinfo"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(worker["paused"], false);
    let worker_id = worker["workerid"].as_i64().unwrap();
    assert_eq!(stack.get(&format!("/api/v2/workers/{worker_id}")).await["workers"][0]["name"], "w1");
    let masters = stack.get("/api/v2/masters?active=true").await;
    assert_eq!(masters["meta"]["total"], 2);
    conforms(&openapi, "master", &masters["masters"][0], &[]);
    let master_id = masters["masters"][0]["masterid"].as_i64().unwrap();
    let scheduler = stack.get("/api/v2/forceschedulers/force").await["forceschedulers"][0].clone();
    conforms(&openapi, "forcescheduler", &scheduler, &[]);
    assert_eq!(scheduler["builder_names"], json!(["hello", "slow"]));
    assert_eq!(stack.get("/api/v2/forceschedulers?builder_names__contains=slow").await["meta"]["total"], 1);
    assert_eq!(stack.get("/api/v2/changes").await, json!({ "changes": [], "meta": { "total": 0 } }));

    // Every GET path of the description answers, with items of its schema.
    let values = [
        ("builder", "hello".to_owned()),
        ("number", "1".to_owned()),
        ("build_id", build_id.to_string()),
        ("step", "greet".to_owned()),
        ("slug", "stdio".to_owned()),
        ("step_id", step_id.to_string()),
        ("log_id", log_id.to_string()),
        ("buildrequest_id", request_id.to_string()),
        ("buildset_id", buildset_id.to_string()),
        ("worker", "w1".to_owned()),
        ("master_id", master_id.to_string()),
        ("scheduler", "force".to_owned()),
        ("change_id", "1".to_owned()),
        ("set_id", "1".to_owned()),
        ("artifact_id", "1".to_owned()),
    ];
    let paths = openapi["paths"].as_object().unwrap();
    assert!(paths.len() >= 35, "{} paths described", paths.len());
    for (template, item) in paths {
        if item.get("get").is_none() {
            continue;
        }
        let mut path = template.clone();
        for (name, value) in &values {
            path = path.replace(&format!("{{{name}}}"), value);
        }
        assert!(!path.contains('{'), "no value for a parameter of {template}");
        let response = stack.http.get(format!("{}{path}", stack.base_url)).send().await.unwrap();
        if template.ends_with("{change_id}") || template.ends_with("{set_id}") || template.contains("{artifact_id}") {
            assert_eq!(response.status(), 404, "{path}: there are no changes, test results or artifacts yet");
            continue;
        }
        assert_eq!(response.status(), 200, "GET {path}");
        let (plural, schema) = schema_of(&openapi, template);
        if schema.is_empty() {
            continue;
        }
        let body: Value = response.json().await.unwrap();
        assert!(body["meta"]["total"].is_i64(), "{path}: {body}");
        for item in list(&body, &plural) {
            conforms(&openapi, &schema, item, &[]);
        }
    }

    // Errors: what is wrong, as `{"error": ...}` with the right status.
    bad_request(&stack, "/api/v2/builds?colour=red", "colour").await;
    bad_request(&stack, "/api/v2/builds?number__near=1", "near").await;
    bad_request(&stack, "/api/v2/builds?field=nope", "nope").await;
    bad_request(&stack, "/api/v2/builds?order=-nope", "nope").await;
    bad_request(&stack, "/api/v2/builds?limit=many", "limit").await;
    bad_request(&stack, "/api/v2/builds?limit=1000000", "limit").await;
    bad_request(&stack, "/api/v2/builds?complete=maybe", "complete").await;
    bad_request(&stack, "/api/v2/builds?number=one", "number").await;
    bad_request(&stack, "/api/v2/builds?properties=x", "properties").await;
    bad_request(&stack, "/api/v2/builders?tags__gt=a", "tags").await;
    bad_request(&stack, "/api/v2/builds/abc", "build id").await;
    bad_request(&stack, "/api/v2/builds?started_at__gt=inf", "started_at").await;
    bad_request(&stack, "/api/v2/builds?started_at__gt=1e300", "started_at").await;
    bad_request(&stack, "/api/v2/builds?state_string=a%00b", "NUL").await;
    bad_request(&stack, "/api/v2/builders/a%00b", "not valid").await;
    bad_request(&stack, &format!("/api/v2/logs/{log_id}/raw?tail=1"), "tail").await;
    for missing in
        ["/api/v2/builds/999999", "/api/v2/builders/nope", "/api/v2/builders/hello/builds/99", "/api/v2/nothing"]
    {
        let (status, body) = get_status(&stack, missing).await;
        assert_eq!(status, 404, "{missing}: {body}");
        assert!(body["error"].is_string(), "{missing}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_actions_stop_rebuild_cancel_prioritize_pause_and_stop_workers() {
    let mut stack = TestStack::new(YAML, &["hello", "slow"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let worker = stack
        .eventually(30, "w1 online", async || {
            let (_, body) = get_status(&stack, "/api/v2/workers/w1").await;
            let worker = body["workers"][0].clone();
            worker["connected_to"].as_array().is_some_and(|c| !c.is_empty()).then_some(worker)
        })
        .await;
    let worker_id = worker["workerid"].as_i64().unwrap();
    let worker_path = format!("/api/v2/workers/{worker_id}");
    let (status, answer) = rpc(&stack, "/api/v2/workers/w1", "unpause", json!({})).await;
    assert_eq!(status, 200, "a worker by name: {answer}");

    // stop: a running build ends CANCELLED.
    let slow = stack.force("slow").await;
    let running = stack.wait_for_build_to_start(slow).await;
    let build_path = format!("/api/v2/builds/{}", running["buildid"]);
    stack.first_step_log(running["buildid"].as_i64().unwrap()).await;
    let (status, answer) = rpc(&stack, &build_path, "stop", json!({ "reason": "enough" })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({ "jsonrpc": "2.0", "id": 7, "result": null }));
    let stopped = stack.wait_for_build(slow).await;
    assert_eq!(stopped["results"], 6, "CANCELLED: {stopped}");
    let (status, answer) = rpc(&stack, &build_path, "stop", json!({})).await;
    assert_eq!((status, answer["error"]["code"].as_i64()), (StatusCode::CONFLICT, Some(-32602)), "{answer}");

    // rebuild: a new request of the same builder with the same properties.
    let hello = stack.force("hello").await;
    let built = stack.wait_for_build(hello).await;
    let (status, answer) = rpc(&stack, &format!("/api/v2/builds/{}", built["buildid"]), "rebuild", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let rebuilt_request = answer["result"][1].as_object().unwrap().values().next().unwrap().as_i64().unwrap();
    assert_ne!(rebuilt_request, hello);
    let rebuilt = stack.wait_for_build(rebuilt_request).await;
    assert_eq!((rebuilt["number"].as_i64(), rebuilt["results"].as_i64()), (Some(2), Some(0)));
    let properties = stack.get(&format!("/api/v2/builds/{}?property=owner", rebuilt["buildid"])).await;
    assert_eq!(properties["builds"][0]["properties"]["owner"], json!(["tests", "Force Build Form"]));
    let buildset = stack.get(&format!("/api/v2/buildsets/{}", answer["result"][0])).await;
    assert!(buildset["buildsets"][0]["reason"].as_str().unwrap().starts_with("rebuild of build 1"), "{buildset}");

    // pause: the worker takes nothing new; requests wait, and can be
    // reprioritized or cancelled meanwhile.
    let (status, answer) = rpc(&stack, &worker_path, "pause", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(stack.get(&worker_path).await["workers"][0]["paused"], true);
    let waiting = stack.force("hello").await;
    let cancelled = stack.force("hello").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pending = stack.get("/api/v2/buildrequests?claimed=false&order=buildrequestid").await;
    assert_eq!(
        ids(&pending, "buildrequests", "buildrequestid"),
        [waiting, cancelled],
        "a paused worker claims nothing"
    );
    let request_path = format!("/api/v2/buildrequests/{waiting}");
    let (status, answer) = rpc(&stack, &request_path, "set_priority", json!({ "priority": 9 })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(stack.get(&request_path).await["buildrequests"][0]["priority"], 9);
    let (status, answer) = rpc(&stack, &request_path, "set_priority", json!({ "priority": "high" })).await;
    assert_eq!((status, answer["error"]["code"].as_i64()), (StatusCode::BAD_REQUEST, Some(-32602)));
    assert!(answer["error"]["data"]["priority"].is_string(), "the field is named: {answer}");
    let (status, answer) = rpc(&stack, &format!("/api/v2/buildrequests/{cancelled}"), "cancel", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let gone = stack.get(&format!("/api/v2/buildrequests/{cancelled}")).await["buildrequests"][0].clone();
    assert_eq!((gone["complete"].as_bool(), gone["results"].as_i64()), (Some(true), Some(6)), "{gone}");
    let (status, _) = rpc(&stack, &format!("/api/v2/buildrequests/{cancelled}"), "cancel", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "a complete request cannot be cancelled again");

    // unpause: the waiting request runs; the cancelled one never does.
    let (status, answer) = rpc(&stack, &worker_path, "unpause", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(stack.wait_for_build(waiting).await["results"], 0);
    assert!(stack.builds_of_request(cancelled).await.is_empty());

    // stop on a worker: it finishes and exits, marked graceful meanwhile.
    let (status, answer) = rpc(&stack, &worker_path, "stop", json!({ "reason": "maintenance" })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(stack.get(&worker_path).await["workers"][0]["graceful"], true);
    stack.wait_for_worker_exit("w1").await;

    // Buildbot's web UI sends a builder's id as a string.
    let force = "/api/v2/forceschedulers/force";
    let hello = stack.get("/api/v2/builders/hello").await["builders"][0]["builderid"].to_string();
    let (status, answer) = rpc(&stack, force, "force", json!({ "builderid": hello })).await;
    assert_eq!(status, 200, "builderid \"{hello}\" as a string: {answer}");

    // JSON-RPC errors.
    let (status, answer) = post_raw(&stack, force, "{not json".into()).await;
    assert_eq!((status, answer["error"]["code"].as_i64()), (StatusCode::BAD_REQUEST, Some(-32700)), "{answer}");
    let (status, answer) = post_raw(&stack, force, json!({ "params": {} }).to_string()).await;
    assert_eq!((status, answer["error"]["code"].as_i64()), (StatusCode::BAD_REQUEST, Some(-32600)), "{answer}");
    let (status, answer) = rpc(&stack, force, "explode", json!({})).await;
    assert_eq!((status, answer["error"]["code"].as_i64()), (StatusCode::BAD_REQUEST, Some(-32601)), "{answer}");
    let (status, answer) = rpc(&stack, force, "force", json!({ "builderid": "x" })).await;
    assert_eq!((status, answer["error"]["code"].as_i64()), (StatusCode::BAD_REQUEST, Some(-32602)), "{answer}");
    assert!(answer["error"]["data"]["builderid"].is_string(), "{answer}");
    let (status, answer) =
        rpc(&stack, "/api/v2/forceschedulers/nope", "force", json!({ "builderNames": ["hello"] })).await;
    assert_eq!((status, answer["error"]["code"].as_i64()), (StatusCode::NOT_FOUND, Some(-32602)), "{answer}");
    let (status, _) = rpc(&stack, "/api/v2/builds/999999", "rebuild", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = rpc(&stack, "/api/v2/workers/999999", "pause", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = rpc(&stack, "/api/v2/buildrequests/999999", "set_priority", json!({ "priority": 1 })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_through_haproxy_sees_what_happens_on_either_master() {
    let mut stack = TestStack::new(YAML, &["hello", "slow"]).await;
    let master_a = stack.start_master("a").await;
    let master_b = stack.start_master("b").await;
    stack.start_haproxy().await;
    stack.start_worker("w1");
    // The socket lands on one master; one force goes to each, so one of
    // them reaches it only through the other master and Redis.
    let url = stack.base_url.replace("http://", "ws://");
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{url}/ws")).await.expect("WebSocket");
    use tokio_tungstenite::tungstenite::Message;
    for (id, path) in [(1, "builds/*/*"), (2, "buildrequests/*/*"), (3, "steps/*/*"), (4, "workers/*/paused")] {
        let command = json!({ "cmd": "startConsuming", "path": path, "_id": id });
        socket.send(Message::Text(command.to_string().into())).await.unwrap();
        let answer = socket.next().await.unwrap().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(answer.to_text().unwrap()).unwrap(),
            json!({ "_id": id, "code": 200 })
        );
    }
    let requests = [
        stack.force_at(&format!("http://{master_a}"), "hello").await,
        stack.force_at(&format!("http://{master_b}"), "hello").await,
    ];

    let mut keys = Vec::new();
    let mut finished = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(message)) = socket.next().await {
            let Ok(text) = message.to_text() else { continue };
            let event: Value = serde_json::from_str(text).unwrap();
            let key = event["k"].as_str().unwrap().to_owned();
            keys.push(key.clone());
            if key.starts_with("builds/") && key.ends_with("/finished") {
                finished.push(event);
                if finished.len() == requests.len() {
                    return;
                }
            }
        }
        panic!("the socket closed; events so far: {keys:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("not both builds/*/finished within 30s; events: {keys:?}"));
    for request in requests {
        let event =
            finished.iter().find(|e| e["m"]["buildrequestid"] == request).expect("each request's build finished");
        assert_eq!(event["m"]["results"], 0, "{event}");
        let build_id = event["m"]["buildid"].as_i64().unwrap();
        for wanted in [format!("buildrequests/{request}/new"), format!("builds/{build_id}/new")] {
            assert!(keys.contains(&wanted), "{wanted} in {keys:?}");
        }
    }
    assert!(keys.iter().any(|k| k.starts_with("steps/") && k.ends_with("/finished")), "{keys:?}");
    assert!(!keys.iter().any(|k| k.starts_with("logs/")), "logs/* was not asked for: {keys:?}");

    // A worker's event carries the worker as the API serves it.
    let (status, answer) = rpc(&stack, "/api/v2/workers/w1", "pause", json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let paused = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = socket.next().await {
            let event: Value = serde_json::from_str(message.to_text().unwrap_or("{}")).unwrap_or_default();
            if event["k"].as_str().is_some_and(|k| k.starts_with("workers/")) {
                return event;
            }
        }
        panic!("the socket closed");
    })
    .await
    .expect("workers/*/paused within 10s");
    assert_eq!(paused["m"]["name"], "w1", "{paused}");
    assert_eq!(paused["m"]["paused"], true, "{paused}");
    assert_eq!(paused["m"]["connected_to"].as_array().map(Vec::len), Some(1), "{paused}");
}

/// The README's script, run as a user would: force through HAProxy with
/// Buildbot's body, poll `builds?buildrequestid=` until complete, read `raw`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buildbot_style_script_forces_waits_and_reads_the_log() {
    let mut stack = TestStack::new(YAML, &["hello", "slow"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w2");
    let script = crate::harness::repository_root().join("deploy/example/force-and-wait.py");
    let base_url = stack.base_url.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args([base_url.as_str(), "hello", "--reason", "from the script", "--timeout", "60"])
            .output()
            .expect("python3 runs (deploy/services.sh ensure installs it)")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the script failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "one\ntwo\noops\nbye\n", "both steps' logs, byte for byte");
    assert!(stderr.contains("build 1 of hello: SUCCESS"), "{stderr}");
    let buildsets = stack.get("/api/v2/buildsets").await;
    assert_eq!(buildsets["buildsets"][0]["reason"], "from the script");
}
