//! Bad input to the API gets a 4xx that says what is wrong, never a 5xx:
//! random query strings on the listings (which become SQL), and random
//! JSON-RPC bodies on every control endpoint.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::harness::{TestStack, master_yaml};

const FIELDS: &[&str] = &[
    "buildid",
    "number",
    "builderid",
    "complete",
    "complete_at",
    "started_at",
    "results",
    "state_string",
    "properties",
    "name",
    "tags",
    "claimed",
    "priority",
    "field",
    "order",
    "limit",
    "offset",
    "property",
    "nope",
];
const OPS: &[&str] = &["", "__eq", "__ne", "__lt", "__le", "__gt", "__ge", "__contains", "__in", "__notin", "__x"];

fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec!["true", "off", "yes", "-number", "*", "1e300", "inf", "NaN", "1,2,3", ""])
            .prop_map(str::to_owned),
        any::<String>(),
        "[ -~]{0,12}",
    ]
}

fn query() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = (prop::sample::select(FIELDS), prop::sample::select(OPS)).prop_map(|(f, o)| format!("{f}{o}"));
    prop::collection::vec((key, query_value()), 0..5)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        prop::sample::select(vec!["fuzzed", "builderNames", "builderid", "priority", "reason"]).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "builderNames",
                    "builderid",
                    "reason",
                    "owner",
                    "priority",
                    "properties",
                    "x"
                ])
                .prop_map(str::to_owned),
                inner,
                0..4,
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn rpc_body() -> impl Strategy<Value = String> {
    let method =
        prop::sample::select(vec!["force", "stop", "rebuild", "cancel", "set_priority", "pause", "unpause", "x"]);
    prop_oneof![
        (method, json_value(), json_value()).prop_map(|(method, params, id)| {
            json!({ "jsonrpc": "2.0", "method": method, "params": params, "id": id }).to_string()
        }),
        json_value().prop_map(|value| value.to_string()),
        any::<String>(),
    ]
}

/// Percent-encodes every byte but the unreserved ones.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn random_queries_and_bodies_get_4xx_answers_never_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (stack, _) = runtime.block_on(async {
        let mut stack =
            TestStack::new(&master_yaml(&[("fuzzed", "- name: s\n  command: \"true\"\n")]), &["fuzzed"]).await;
        stack.start_master("a").await;
        let request = stack.force("fuzzed").await;
        (stack, request)
    });
    let check = |status: reqwest::StatusCode, body: &str, what: &str| -> Result<(), TestCaseError> {
        prop_assert!(!status.is_server_error(), "{what} answered {status}: {body}");
        if status.is_client_error() {
            let answer: Value = serde_json::from_str(body).map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
            let message = answer["error"].as_str().or_else(|| answer["error"]["message"].as_str());
            prop_assert!(message.is_some_and(|m| !m.is_empty()), "{what}: no error text in {body}");
        }
        Ok(())
    };

    let mut runner = TestRunner::new(Config { cases: 300, ..Config::default() });
    runner
        .run(
            &(prop::sample::select(vec!["builds", "builders", "buildrequests", "steps/1/logs", "workers"]), query()),
            |(path, query)| {
                runtime.block_on(async {
                    let encoded: Vec<String> =
                        query.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
                    let url = format!("{}/api/v2/{path}?{}", stack.base_url, encoded.join("&"));
                    let response = stack.http.get(&url).send().await.unwrap();
                    let status = response.status();
                    let body = response.text().await.unwrap();
                    check(status, &body, &format!("GET {path}?{query:?}"))
                })
            },
        )
        .unwrap();

    let mut runner = TestRunner::new(Config { cases: 300, ..Config::default() });
    let resources = prop::sample::select(vec!["forceschedulers/force", "builds/1", "buildrequests/1", "workers/1"]);
    runner
        .run(&(resources, rpc_body()), |(path, body)| {
            runtime.block_on(async {
                let url = format!("{}/api/v2/{path}", stack.base_url);
                let response = stack
                    .http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let text = response.text().await.unwrap();
                check(status, &text, &format!("POST {path} {body}"))
            })
        })
        .unwrap();
    drop(stack);
}
