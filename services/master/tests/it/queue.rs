//! The fair queue: priorities decide which pending request runs next, and
//! a builder that collapses requests builds only the newest of a branch.

use serde_json::{Value, json};

use crate::harness::TestStack;

async fn force(stack: &TestStack, builder: &str, params: Value) -> i64 {
    stack.force_with(builder, params).await
}

async fn worker_rpc(stack: &TestStack, worker: &str, method: &str) {
    let answer = stack.rpc(&format!("/workers/{worker}"), method, json!({})).await;
    assert!(answer.get("error").is_none(), "{method}: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collapsing_keeps_the_newest_request_of_each_branch_and_priorities_order_the_rest() {
    let yaml = "factories:\n  quick:\n    steps:\n      - name: hi\n        command: echo hi\n\
                builders:\n  - {name: collapsing, factory: quick, workers: [w2], collapse_requests: true}\n\
                \x20 - {name: ordered, factory: quick, workers: [w2]}\n\
                schedulers:\n  - {type: force, name: force, builders: [collapsing, ordered]}\n";
    let mut stack = TestStack::new(yaml, &["collapsing", "ordered"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w2");
    stack.wait_for_worker_connected("w2").await;
    worker_rpc(&stack, "w2", "pause").await;

    let main: Vec<i64> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(force(&stack, "collapsing", json!({ "branch": "main" })).await);
        }
        ids
    };
    let other = force(&stack, "collapsing", json!({ "branch": "3.14" })).await;
    for superseded in &main[..2] {
        let request = &stack.get(&format!("/api/v2/buildrequests/{superseded}")).await["buildrequests"][0];
        assert_eq!((request["complete"].as_bool(), request["results"].as_i64()), (Some(true), Some(3)), "{request}");
    }
    let low = force(&stack, "ordered", json!({ "priority": 0 })).await;
    let high = force(&stack, "ordered", json!({ "priority": 5 })).await;
    let last = force(&stack, "ordered", json!({ "priority": 0 })).await;

    worker_rpc(&stack, "w2", "unpause").await;
    for request in [main[2], other, low, high, last] {
        assert_eq!(stack.wait_for_build(request).await["results"], 0);
    }
    for superseded in &main[..2] {
        let builds = stack.get(&format!("/api/v2/builds?buildrequestid={superseded}")).await;
        assert_eq!(builds["meta"]["total"], 0, "a superseded request never runs");
    }
    let number = |request: i64| {
        let stack = &stack;
        async move { stack.get(&format!("/api/v2/builds?buildrequestid={request}")).await["builds"][0]["number"].clone() }
    };
    assert_eq!(
        [number(high).await, number(low).await, number(last).await],
        [json!(1), json!(2), json!(3)],
        "the higher priority first, then oldest first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_schedulers_parameters_have_defaults_and_choices() {
    let yaml = "factories:\n  quick:\n    steps:\n      - name: hi\n        command: echo %(prop:compiler)s %(prop:test_options)s\n\
                builders:\n  - {name: params, factory: quick, workers: [w1]}\n\
                schedulers:\n  - type: force\n    name: force\n    builders: [params]\n    parameters:\n\
                \x20     - {name: compiler, label: Compiler, choices: [gcc, clang], default: gcc}\n\
                \x20     - {name: test_options, default: \"-j4\"}\n";
    let mut stack = TestStack::new(yaml, &["params"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let fields = stack.get("/api/v2/forceschedulers/force").await["forceschedulers"][0]["all_fields"].clone();
    let compiler = fields.as_array().unwrap().iter().find(|f| f["name"] == "compiler").unwrap().clone();
    assert_eq!((compiler["type"].as_str(), compiler["choices"].clone()), (Some("list"), json!(["gcc", "clang"])));

    let printed = async |stack: &TestStack, request: i64| {
        let build = stack.wait_for_build(request).await;
        let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
        let log = stack.archived_log(steps[0]["stepid"].as_i64().unwrap()).await;
        String::from_utf8(stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await).unwrap()
    };
    let defaults = force(&stack, "params", json!({})).await;
    assert_eq!(printed(&stack, defaults).await, "gcc -j4\n");
    let chosen = force(&stack, "params", json!({ "properties": { "compiler": "clang" } })).await;
    assert_eq!(printed(&stack, chosen).await, "clang -j4\n");
    let params = json!({ "builderNames": ["params"], "properties": { "compiler": "icc" } });
    let refused = stack.rpc("/forceschedulers/force", "force", params).await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert_eq!(refused["error"]["data"]["compiler"], "must be one of: gcc, clang");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_scheduler_builds_once_after_each_successful_upstream_buildset_only() {
    let yaml = "factories:\n  good:\n    steps:\n      - {name: ok, command: echo ok}\n  bad:\n    steps:\n      - {name: no, command: exit 1}\n\
                builders:\n  - {name: upper, factory: good, workers: [w1]}\n  - {name: failing, factory: bad, workers: [w1]}\n\
                \x20 - {name: lower, factory: good, workers: [w1]}\n\
                schedulers:\n  - {type: force, name: force, builders: [upper, failing]}\n\
                \x20 - {type: dependent, name: after, upstream: force, builders: [lower]}\n";
    let mut stack = TestStack::new(yaml, &["upper", "failing", "lower"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let followers = async || -> Vec<(i64, Option<i64>)> {
        sqlx::query_as("select id, triggered_by from buildsets where scheduler = 'after' order by id")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    let upper = force(&stack, "upper", json!({ "branch": "main" })).await;
    assert_eq!(stack.wait_for_build(upper).await["results"], 0);
    let failing = force(&stack, "failing", json!({})).await;
    assert_eq!(stack.wait_for_build(failing).await["results"], 2);
    let follower = stack
        .eventually(20, "the dependent buildset", async || {
            let found = followers().await;
            (!found.is_empty()).then_some(found)
        })
        .await;
    // Both masters look every second: still exactly one, and none for the
    // failed upstream.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(followers().await, follower);
    assert_eq!(follower.len(), 1);
    let upstream: i64 = sqlx::query_scalar("select buildset_id from buildrequests where id = $1")
        .bind(upper)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(follower[0].1, Some(upstream));
    let requests = stack.get(&format!("/api/v2/buildrequests?buildsetid={}", follower[0].0)).await;
    let lower = requests["buildrequests"][0]["buildrequestid"].as_i64().unwrap();
    let build = stack.wait_for_build(lower).await;
    assert_eq!(build["results"], 0);
    let branch = stack.get(&format!("/api/v2/builds/{}?property=branch", build["buildid"])).await;
    assert_eq!(branch["builds"][0]["properties"]["branch"][0], "main", "the upstream's properties carry over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_builder_starts_nothing_until_unpaused_and_pauses_say_why() {
    let yaml = "factories:\n  quick:\n    steps:\n      - {name: hi, command: echo hi}\n\
                builders:\n  - {name: held, factory: quick, workers: [w1]}\n\
                schedulers:\n  - {type: force, name: force, builders: [held]}\n";
    let mut stack = TestStack::new(yaml, &["held"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let rpc = async |path: &str, method: &str, params: Value| {
        let body = json!({ "jsonrpc": "2.0", "method": method, "id": 1, "params": params });
        let answer: Value = stack
            .http
            .post(format!("{}/api/v2{path}", stack.base_url))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(answer.get("error").is_none(), "{method} {path}: {answer}");
    };
    rpc("/builders/held", "pause", json!({ "reason": "the lab is being rewired" })).await;
    let builder = stack.get("/api/v2/builders/held").await["builders"][0].clone();
    assert_eq!(
        (builder["paused"].as_bool(), builder["pause_reason"].as_str()),
        (Some(true), Some("the lab is being rewired"))
    );
    let page = stack.http.get(format!("{}/builders/held", stack.base_url)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Paused: the lab is being rewired"), "the builder page says so");
    let request = force(&stack, "held", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let builds = stack.get(&format!("/api/v2/builds?buildrequestid={request}")).await;
    assert_eq!(builds["meta"]["total"], 0, "a paused builder starts nothing");
    rpc("/builders/held", "unpause", json!({})).await;
    assert_eq!(stack.wait_for_build(request).await["results"], 0, "and builds once unpaused");

    rpc("/workers/w1", "pause", json!({ "reason": "quarantined for the night" })).await;
    let worker = stack.get("/api/v2/workers/w1").await["workers"][0].clone();
    assert_eq!(worker["pause_reason"], "quarantined for the night");
    rpc("/workers/w1", "unpause", json!({})).await;
    assert!(stack.get("/api/v2/workers/w1").await["workers"][0]["pause_reason"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_its_downtime_window_takes_nothing_until_the_window_is_gone() {
    let yaml = "factories:\n  quick:\n    steps:\n      - {name: hi, command: echo hi}\n\
                builders:\n  - {name: nightly-only, factory: quick, workers: [w2]}\n\
                schedulers:\n  - {type: force, name: force, builders: [nightly-only]}\n";
    let mut stack = TestStack::new(yaml, &["nightly-only"]).await;
    let now = chrono::Utc::now();
    let window = format!(
        "    downtime: [{{from: \"{}\", until: \"{}\"}}]\n",
        (now - chrono::Duration::minutes(10)).format("%H:%M"),
        (now + chrono::Duration::minutes(10)).format("%H:%M")
    );
    let settings = std::fs::read_to_string(&stack.settings_path).unwrap();
    let marker = format!("    password: {}\n", crate::harness::OTHER_WORKER_PASSWORD);
    let with_window = settings.replacen(&marker, &format!("{marker}{window}"), 1);
    assert_ne!(with_window, settings);
    std::fs::write(&stack.settings_path, &with_window).unwrap();
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w2");
    stack.wait_for_worker_connected("w2").await;
    let request = force(&stack, "nightly-only", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let builds = stack.get(&format!("/api/v2/builds?buildrequestid={request}")).await;
    assert_eq!(builds["meta"]["total"], 0, "nothing starts in the window");
    // The window removed: the masters reload, tell the worker, and it builds.
    std::fs::write(&stack.settings_path, settings).unwrap();
    assert_eq!(stack.wait_for_build(request).await["results"], 0);
}
