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
