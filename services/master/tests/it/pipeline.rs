//! A build's whole life: forced through HAProxy, claimed by a worker
//! process, run, recorded by whichever master gets the events, archived.

use serde_json::Value;

use crate::harness::{TestStack, master_yaml};

const PRINTS: &str = r#"- name: stdout
  command: ["printf", "line one\\nline two\\n\\tunicode: \\342\\234\\223\\nbinary: \\001\\377\\n"]
- name: stderr
  command: |
    printf 'to stderr\n' >&2; printf 'more stderr\n' >&2
- name: no-newline
  command: ["printf", "no trailing newline"]
- name: mixed
  command: |
    echo out; sleep 0.2; echo err >&2; sleep 0.2; printf end
"#;

const HALTS: &str = r#"- name: ok
  command: ["true"]
- name: fails
  command: echo failing; exit 3
  halt_on_failure: true
- name: skipped
  command: ["echo", "must not run"]
- name: cleanup
  command: ["echo", "cleaning"]
  always_run: true
"#;

const SILENT: &str = r#"- name: hangs
  command: sleep 300 & echo $! > sleeper.pid; echo started; wait
  timeout: 1
  kill_grace: 1
"#;

pub(crate) async fn two_masters_haproxy_and_a_worker(factories: &[(&str, &str)]) -> TestStack {
    let names: Vec<&str> = factories.iter().map(|(name, _)| *name).collect();
    let mut stack = TestStack::new(&master_yaml(factories), &names).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    stack
}

pub(crate) fn ids(steps: &[Value], field: &str) -> Vec<Value> {
    steps.iter().map(|s| s[field].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_build_completes_on_a_worker_and_its_log_is_what_the_steps_printed() {
    let stack = two_masters_haproxy_and_a_worker(&[("prints", PRINTS)]).await;
    let request = stack.force("prints").await;
    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 0, "SUCCESS: {build}");
    assert_eq!(build["number"], 1);
    let by_name = stack.get("/api/v2/builders/prints/builds/1").await;
    assert_eq!(by_name["builds"][0]["buildid"], build["buildid"], "a build by builder name and number");
    let unknown = stack.http.get(format!("{}/api/v2/builders/nope/builds/1", stack.base_url)).send().await.unwrap();
    assert_eq!(unknown.status(), 404);

    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    assert_eq!(ids(&steps, "name"), ["stdout", "stderr", "no-newline", "mixed"]);
    assert!(steps.iter().all(|s| s["results"] == 0 && s["complete"] == true), "{steps:?}");
    let mut logs = Vec::new();
    for step in &steps {
        logs.push(stack.archived_log(step["stepid"].as_i64().unwrap()).await);
    }
    let deleted = stack.delete_redis_keys().await;
    assert!(deleted >= 1, "the live copies were still in Redis before this");

    let expected: [&[u8]; 4] = [
        b"line one\nline two\n\tunicode: \xe2\x9c\x93\nbinary: \x01\xff\n",
        b"to stderr\nmore stderr\n",
        b"no trailing newline",
        b"out\nerr\nend",
    ];
    for (log, expected) in logs.iter().zip(expected) {
        let raw = stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await;
        assert_eq!(raw, expected, "log {} of step {}", log["logid"], log["stepid"]);
    }
    assert_eq!(logs[0]["num_lines"], 8, "2 header lines (command, directory), 4 printed, 2 footer (exit code, time)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_halts_the_build_but_always_run_steps_still_run() {
    let stack = two_masters_haproxy_and_a_worker(&[("halts", HALTS)]).await;
    let request = stack.force("halts").await;
    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 2, "FAILURE: {build}");
    assert_eq!(build["state_string"], "failure: fails");
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    assert_eq!(ids(&steps, "name"), ["ok", "fails", "skipped", "cleanup"]);
    assert_eq!(ids(&steps, "results"), [0, 2, 3, 0], "SUCCESS, FAILURE, SKIPPED, SUCCESS");
    assert_eq!(steps[1]["state_string"], "exit code 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_step_is_killed_after_its_timeout_together_with_its_children() {
    let stack = two_masters_haproxy_and_a_worker(&[("silent", SILENT)]).await;
    let request = stack.force("silent").await;
    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 2, "FAILURE: {build}");
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    assert_eq!(steps[0]["state_string"], "timed out after 1s without output");

    let pid_file = stack.dir.path().join("worker-w1/silent/build/sleeper.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file).expect("the step wrote its child's pid").trim().parse().unwrap();
    // The forked `sleep 300` got the group's signal: gone, or at most a zombie
    // waiting to be reaped.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("gone");
    assert!(state == "gone" || state == "Z", "sleep {pid} still runs (state {state})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_build_is_killed_and_ends_cancelled() {
    let stack = two_masters_haproxy_and_a_worker(&[("long", "- name: long\n  command: echo begin; sleep 300\n")]).await;
    let request = stack.force("long").await;
    // Wait until the step runs, then stop the build through the API.
    let build = stack.wait_for_build_to_start(request).await;
    let build_id = build["buildid"].as_i64().unwrap();
    stack.eventually(30, "the step running", async || (!stack.steps(build_id).await.is_empty()).then_some(())).await;
    let stop = serde_json::json!({"jsonrpc": "2.0", "method": "stop", "id": 7, "params": {"reason": "test"}});
    let response =
        stack.http.post(format!("{}/api/v2/builds/{build_id}", stack.base_url)).json(&stop).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 6, "CANCELLED: {build}");
    let steps = stack.steps(build_id).await;
    assert_eq!(steps[0]["results"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_hands_doorbells_back_so_an_idle_worker_runs_them() {
    let mut stack = TestStack::new("", &["blocking"]).await;
    let release = stack.dir.path().join("release");
    let step = format!("- name: wait\n  command: while [ ! -e {} ]; do sleep 0.05; done\n", release.display());
    std::fs::write(stack.dir.path().join("master.yaml"), master_yaml(&[("blocking", &step)])).unwrap();
    stack.start_masters_behind_haproxy().await;
    // w2 runs one build at a time (max_builds 1).
    stack.start_worker("w2");
    let first = stack.force("blocking").await;
    let first_build = stack.wait_for_build_to_start(first).await;
    let second = stack.force("blocking").await;
    // The second doorbell reached w2 while it was full, or waits in the
    // queue; either way it must go to w1 as soon as w1 exists.
    stack.start_worker("w1");
    let second_build = stack.wait_for_build_to_start(second).await;
    assert_ne!(first_build["workerid"], second_build["workerid"], "the second build ran on the idle worker");
    std::fs::write(&release, b"").unwrap();
    assert_eq!(stack.wait_for_build(first).await["results"], 0);
    assert_eq!(stack.wait_for_build(second).await["results"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_whose_worker_dies_ends_retry_and_runs_again_on_another_worker() {
    let mut stack = TestStack::new(
        &master_yaml(&[("sturdy", "- name: work\n  command: echo begin; sleep 1; echo end\n")]),
        &["sturdy"],
    )
    .await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w2");
    let request = stack.force("sturdy").await;
    let lost = stack.wait_for_build_to_start(request).await;
    stack.kill_worker("w2");
    stack.start_worker("w1");

    let builds = stack
        .eventually(30, "a successful rerun", async || {
            let builds = stack.builds_of_request(request).await;
            builds.iter().any(|b| b["results"] == 0).then_some(builds)
        })
        .await;
    assert_eq!(builds.len(), 2, "one lost build, one rerun: {builds:?}");
    assert_eq!(builds[0]["buildid"], lost["buildid"]);
    assert_eq!(builds[0]["results"], 5, "RETRY");
    assert_eq!(builds[0]["state_string"], "worker lost: no heartbeat before the lease expired");
    assert_eq!(builds[1]["results"], 0);
    assert_ne!(builds[1]["workerid"], builds[0]["workerid"]);
    assert_eq!(builds[1]["number"], 2, "the rerun is a new build of the same request");
    let request = stack.get(&format!("/api/v2/buildrequests/{request}")).await;
    assert_eq!(request["buildrequests"][0]["complete"], true);
    assert_eq!(request["buildrequests"][0]["results"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_loses_its_worker_more_often_than_max_retries_ends_as_exception() {
    let mut stack =
        TestStack::new(&master_yaml(&[("deadly", "- name: work\n  command: echo begin; sleep 60\n")]), &["deadly"])
            .await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w2");
    let request = stack.force("deadly").await;
    stack.wait_for_build_to_start(request).await;
    stack.kill_worker("w2");
    // The test settings allow one retry: the rerun may lose its worker too...
    stack.start_worker("w1");
    stack.eventually(30, "the rerun", async || (stack.builds_of_request(request).await.len() == 2).then_some(())).await;
    stack.kill_worker("w1");
    // ...and then the request ends, instead of taking the next worker down.
    let ended = stack
        .eventually(30, "the request to end", async || {
            let request = stack.get(&format!("/api/v2/buildrequests/{request}")).await;
            let request = request["buildrequests"][0].clone();
            (request["complete"] == true).then_some(request)
        })
        .await;
    assert_eq!(ended["results"], 4, "EXCEPTION: {ended}");
    stack.start_worker("w2");
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let builds = stack.builds_of_request(request).await;
    let results: Vec<_> = builds.iter().map(|b| b["results"].clone()).collect();
    assert_eq!(results, [5, 5], "two lost builds (RETRY), no third: {builds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_force_requests_get_clear_errors_and_create_nothing() {
    let mut stack =
        TestStack::new(&master_yaml(&[("guarded", "- name: t\n  command: [\"true\"]\n")]), &["guarded"]).await;
    stack.start_masters_behind_haproxy().await;
    let url = format!("{}/api/v2/forceschedulers/force", stack.base_url);
    let cases = [
        (
            r#"{"jsonrpc": "2.0", "method": "force", "id": 1, "params": {"builderNames": ["nope"]}}"#,
            404,
            -32602,
            "builder `nope`",
        ),
        (r#"{"jsonrpc": "2.0", "method": "force", "id": 2, "params": {}}"#, 400, -32602, "builderNames"),
        (r#"{"jsonrpc": "2.0", "method": "explode", "id": 3, "params": {}}"#, 400, -32601, "explode"),
        (
            r#"{"jsonrpc": "2.0", "method": "force", "id": 4, "params": {"builderNames": ["guarded"], "priority": "high"}}"#,
            400,
            -32602,
            "priority",
        ),
        (r#"{"jsonrpc": "2.0", "method": "force", "#, 400, -32700, "not JSON"),
    ];
    for (body, status, code, mentions) in cases {
        let response =
            stack.http.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(mentions), "{answer}");
    }
    let huge = format!(
        r#"{{"jsonrpc": "2.0", "method": "force", "id": 5, "params": {{"reason": "{}"}}}}"#,
        // Over the test's 64 KiB limit: answered 413 after the body is read,
        // not with a reset connection.
        "x".repeat(512 * 1024)
    );
    let response = stack.http.post(&url).header("content-type", "application/json").body(huge).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let missing = stack.http.get(format!("{}/api/v2/builds/999999", stack.base_url)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<serde_json::Value>().await.unwrap()["error"], "build 999999 not found");
    let store = master::store::Store::connect(&stack.database_url, 1, 1).await.unwrap();
    let buildsets: i64 = sqlx::query_scalar("select count(*) from buildsets").fetch_one(store.pool()).await.unwrap();
    assert_eq!(buildsets, 0, "no bad request created anything");
}

const SECRETIVE: &str = r#"- name: use
  env: {TOKEN: "%(secret:deploy_token)s"}
  command: printf 'token=%s\n' "$TOKEN"; printf '%s' "$TOKEN" | head -c 5; sleep 0.3; printf '%s\n' "$TOKEN" | tail -c +6; echo done
- name: flood
  command: head -c 100000 /dev/zero | tr '\0' x; echo; echo after
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_a_steps_env_is_masked_in_its_log_and_a_log_is_cut_at_its_cap() {
    let mut stack = TestStack::new(&master_yaml(&[("secretive", SECRETIVE)]), &["secretive"]).await;
    // settings.yaml ends with its `builds:` block: the cap joins it.
    stack.append_settings("  max_log_bytes: 4096\nsecrets:\n  deploy_token: tok-3f9a8b7c6d5e\n");
    stack.start_master("a").await;
    stack.start_worker("w1");
    let request = stack.force("secretive").await;
    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 0, "{build}");
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;

    let used = stack.archived_log(steps[0]["stepid"].as_i64().unwrap()).await;
    let raw = stack.get_bytes(&format!("/api/v2/logs/{}/raw", used["logid"])).await;
    assert_eq!(String::from_utf8_lossy(&raw), "token=***\n***\ndone\n", "masked, also when split across reads");
    assert!(!stack.worker_logs().contains("tok-3f9a8b7c6d5e"), "nor in the worker's own log");

    let flood = stack.archived_log(steps[1]["stepid"].as_i64().unwrap()).await;
    let raw = stack.get_bytes(&format!("/api/v2/logs/{}/raw", flood["logid"])).await;
    assert_eq!(raw.len(), 4096, "cut at the cap");
    assert!(raw.iter().all(|b| *b == b'x'));
    let lines = stack.get(&format!("/api/v2/logs/{}/contents", flood["logid"])).await;
    let content = lines["logchunks"][0]["content"].as_str().unwrap();
    assert!(content.contains("h[buildmaster: this log was cut at 4096 bytes (builds.max_log_bytes)"), "{content}");
    assert_eq!(steps[1]["results"], 0, "the step itself went on and succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_printing_one_line_of_ten_megabytes_is_stored_exactly() {
    // The numbers 1 to 1,600,000 written one after the other: one line, in
    // an order any reshuffled or lost piece would break.
    let stack =
        two_masters_haproxy_and_a_worker(&[("long-line", "- name: line\n  command: seq 1 1600000 | tr -d '\\n'\n")])
            .await;
    let request = stack.force("long-line").await;
    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 0, "{build}");
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    let log = stack.archived_log(steps[0]["stepid"].as_i64().unwrap()).await;
    let raw = stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await;
    let expected: String = (1..=1_600_000).map(|n: u32| n.to_string()).collect();
    assert!(expected.len() > 10_000_000);
    assert_eq!(raw.len(), expected.len());
    assert!(raw == expected.as_bytes(), "the archived line differs from what the step printed");
}
