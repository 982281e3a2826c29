//! Following a log while its step runs: `logs/{id}/raw?follow=true` through
//! HAProxy carries the output as it is printed and ends when the log is
//! archived, with exactly the bytes of the download.

use std::time::Duration;

use futures_util::StreamExt;

use crate::harness::{TestStack, master_yaml};

const TICKS: &str = r#"- name: ticks
  command: for i in $(seq 1 20); do echo "tick $i"; sleep 0.1; done; printf 'binary \001\377 end'
"#;

fn expected_ticks() -> Vec<u8> {
    let mut expected: Vec<u8> = (1..=20).flat_map(|i| format!("tick {i}\n").into_bytes()).collect();
    expected.extend_from_slice(b"binary \x01\xff end");
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_log_arrives_while_the_step_runs_and_ends_with_the_archive() {
    let mut stack = TestStack::new(&master_yaml(&[("ticks", TICKS)]), &["ticks"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let request = stack.force("ticks").await;
    let build = stack.wait_for_build_to_start(request).await;
    let build_id = build["buildid"].as_i64().unwrap();
    let (step_id, log_id) = stack.first_step_log(build_id).await;

    let url = format!("{}/api/v2/logs/{log_id}/raw?follow=true", stack.base_url);
    let response = stack.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut pieces = response.bytes_stream();
    let mut followed = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(10), pieces.next()).await.expect("output within 10s");
    followed.extend_from_slice(&first.expect("a first piece").unwrap());
    let step = stack.get(&format!("/api/v2/steps/{step_id}/logs")).await;
    assert_eq!(step["logs"][0]["complete"], false, "the first piece came while the step still ran");
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(piece) = pieces.next().await {
            followed.extend_from_slice(&piece.unwrap());
        }
    });
    rest.await.expect("the stream ends once the log is archived");
    assert_eq!(String::from_utf8_lossy(&followed), String::from_utf8_lossy(&expected_ticks()));
    assert_eq!(followed, expected_ticks());

    // Once archived, following a log is downloading it.
    let archived = stack.get_bytes(&format!("/api/v2/logs/{log_id}/raw?follow=yes")).await;
    assert_eq!(archived, expected_ticks());

    for bad in ["follow=maybe", "tail=1"] {
        let response = stack.http.get(format!("{}/api/v2/logs/{log_id}/raw?{bad}", stack.base_url)).send().await;
        assert_eq!(response.unwrap().status(), 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_log_ends_when_its_worker_is_lost() {
    let mut stack =
        TestStack::new(&master_yaml(&[("doomed", "- name: hang\n  command: echo begin; sleep 120\n")]), &["doomed"])
            .await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let request = stack.force("doomed").await;
    let build_id = stack.wait_for_build_to_start(request).await["buildid"].as_i64().unwrap();
    let (_, log_id) = stack.first_step_log(build_id).await;
    let url = format!("{}/api/v2/logs/{log_id}/raw?follow=true", stack.base_url);
    let mut pieces = stack.http.get(&url).send().await.unwrap().bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), pieces.next()).await.expect("output within 10s");
    assert_eq!(&first.expect("a first piece").unwrap()[..], b"begin\n");

    stack.kill_worker("w1");
    // The lease (4 s in tests) expires, the build ends RETRY, and the
    // follower is told there is nothing more instead of waiting forever.
    let end = tokio::time::timeout(Duration::from_secs(30), pieces.next()).await;
    assert!(matches!(end, Ok(None)), "the stream ended: {end:?}");
    let builds = stack.builds_of_request(request).await;
    assert_eq!(builds[0]["results"], 5, "RETRY: {builds:?}");
}

/// Reads Server-Sent Events from a byte stream: (event, data) pairs.
struct SseReader<S> {
    stream: S,
    buffer: String,
}

impl<S: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin> SseReader<S> {
    /// The next event that is not a keep-alive comment, within 10 s.
    async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = name.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return (event, data.join("\n"));
            }
            let piece = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&piece));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_carry_builds_to_a_client_whose_paths_another_master_changed() {
    let mut stack = TestStack::new(&master_yaml(&[("ticks", TICKS)]), &["ticks"]).await;
    let a = format!("http://{}", stack.start_master("a").await);
    let b = format!("http://{}", stack.start_master("b").await);
    stack.start_haproxy().await;
    stack.start_worker("w1");

    // Listening on master A; the path is added through master B.
    let response = stack.http.get(format!("{a}/sse/listen")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = SseReader { stream: response.bytes_stream(), buffer: String::new() };
    let (event, consumer) = events.next().await;
    assert_eq!(event, "handshake");
    let added = stack.http.get(format!("{b}/sse/add/{consumer}/builds/*/new")).send().await.unwrap();
    assert_eq!((added.status().as_u16(), added.text().await.unwrap().as_str()), (200, "ok"));
    let unknown = stack.http.get(format!("{b}/sse/add/not-a-client/builds/*/new")).send().await.unwrap();
    assert_eq!((unknown.status().as_u16(), unknown.text().await.unwrap().as_str()), (400, "unknown uuid"));

    let request = stack.force("ticks").await;
    let build = stack.wait_for_build_to_start(request).await;
    let (event, data) = events.next().await;
    assert_eq!(event, "event");
    let data: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(data["key"], serde_json::json!(["builds", build["buildid"].to_string(), "new"]), "{data}");
    assert_eq!(data["message"]["buildid"], build["buildid"]);
    assert_eq!(data["message"]["number"], 1);

    // Removed (through A this time), the next build's event does not come;
    // a path given when listening does.
    let removed = stack.http.get(format!("{a}/sse/remove/{consumer}/builds/*/new")).send().await.unwrap();
    assert_eq!(removed.status(), 200);
    let second = stack.http.get(format!("{b}/sse/listen/builds/*/finished")).send().await.unwrap();
    let mut finished = SseReader { stream: second.bytes_stream(), buffer: String::new() };
    assert_eq!(finished.next().await.0, "handshake");
    stack.wait_for_build(request).await;
    let (event, data) = finished.next().await;
    assert_eq!(event, "event");
    assert!(data.contains("\"finished\""), "{data}");
    let next = stack.force("ticks").await;
    stack.wait_for_build_to_start(next).await;
    let quiet = tokio::time::timeout(Duration::from_millis(1_500), events.stream.next()).await;
    match quiet {
        Err(_) => {}
        Ok(Some(Ok(piece))) => {
            let text = String::from_utf8_lossy(&piece);
            assert!(!text.contains("event: event"), "an event after its path was removed: {text}");
        }
        Ok(other) => panic!("the stream ended: {other:?}"),
    }
}
