//! Nobody runs what they were not given: what someone allowed to force a
//! build, send a webhook or read the API can make buildmaster do, and what
//! must stay out of their reach.

use serde_json::{Value, json};

use crate::harness::{TestStack, master_yaml};

/// The stdout of a build's step `number`, from its archived log.
async fn step_output(stack: &TestStack, build: &Value, number: usize) -> String {
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    let log = stack.archived_log(steps[number]["stepid"].as_i64().unwrap()).await;
    String::from_utf8_lossy(&stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_builds_of_one_builder_never_share_a_workers_directory() {
    // The harness's w1 runs two builds at once (max_builds: 2). Each build
    // writes its shell's pid into the builder's directory and reads it
    // back a second later: a second build there at the same time breaks it.
    let step = "- name: owns-the-directory\n  command: echo $$ > owner; sleep 1; test \"$(cat owner)\" = \"$$\"\n";
    let mut stack = TestStack::new(&master_yaml(&[("exclusive", step)]), &["exclusive"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let mut requests = Vec::new();
    for _ in 0..4 {
        requests.push(stack.force("exclusive").await);
    }
    let mut spans = Vec::new();
    for request in requests {
        let build = stack.wait_for_build(request).await;
        assert_eq!(build["results"], 0, "{build}\n{}", stack.worker_logs());
        spans.push((build["started_at"].as_i64().unwrap(), build["complete_at"].as_i64().unwrap()));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "builds of one builder overlapped on one worker: {spans:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_property_naming_a_secret_stays_text() {
    let steps = "- name: deploy\n  command: test -n \"$TOKEN\"\n  env: {TOKEN: \"%(secret:deploy_token)s\"}\n\
                 - name: target\n  command: printf '%s' \"%(prop:target:-none)s\"\n";
    let mut stack = TestStack::new(&master_yaml(&[("deploys", steps)]), &["deploys"]).await;
    stack.append_settings("secrets:\n  deploy_token: s3cr3t-deploy-token\n");
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let request = stack.force_with("deploys", json!({ "properties": { "target": "%(secret:deploy_token)s" } })).await;
    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 0, "{build}");
    let printed = step_output(&stack, &build, 1).await;
    assert_eq!(printed, "%(secret:deploy_token)s", "the property's text, never the secret (masked or not)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_property_is_one_word_in_a_shell_command_and_cannot_replace_a_configured_one() {
    let proof = tempfile::tempdir().unwrap();
    let pwned = proof.path().join("pwned");
    // python.org's shape: make's job count from a property in a shell string.
    let steps = "- name: words\n  command: printf '[%s]' -j%(prop:jobs:-4)s %(prop:branch)s\n";
    let yaml = master_yaml(&[("quoted", steps)])
        .replace("    factory: quoted\n", "    factory: quoted\n    properties: {arch: x86-64}\n");
    let mut stack = TestStack::new(&yaml, &["quoted"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let injection = format!("4 CC=id>{};", pwned.display());
    let request = stack.force_with("quoted", json!({ "properties": { "jobs": injection, "branch": "a b  c" } })).await;
    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 0, "{build}");
    assert_eq!(step_output(&stack, &build, 0).await, format!("[-j{injection}][a b  c]"), "each reference one word");
    assert!(!pwned.exists(), "nothing the forcer sent ran");

    // The builder's configured `arch` is not the forcer's to change.
    let answer = stack
        .rpc("/forceschedulers/force", "force", json!({ "builderNames": ["quoted"], "properties": { "arch": "evil" } }))
        .await;
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("arch") && message.contains("configuration"), "{message}");
}

const WEBHOOK_SECRET: &str = "a-webhook-secret-of-length";

/// Sends a signed delivery with `body` as it is; (status, answer).
async fn deliver_raw(stack: &TestStack, event: &str, delivery: &str, body: Vec<u8>) -> (u16, Value) {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let digest: String = mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
    let response = stack
        .http
        .post(format!("{}/change_hook/github", stack.base_url))
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", format!("sha256={digest}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

fn push(repository: &str, after: &str, files: usize) -> Vec<u8> {
    // A push of many commits is large: GitHub sends up to 25 MB.
    let commits: Vec<Value> = (0..files)
        .map(|i| json!({ "id": format!("{i:040}"), "added": [format!("Lib/test/file_{i:06}.py")], "modified": [], "removed": [] }))
        .collect();
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "after": after, "deleted": false, "commits": commits,
        "pusher": { "name": "core-dev" }, "head_commit": { "message": "a change" },
        "repository": { "clone_url": format!("https://github.com/{repository}.git"), "full_name": repository },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_webhook_builds_nothing_a_stranger_repository_builds_nothing_and_a_large_push_is_taken() {
    let yaml = master_yaml(&[("pushed", "- name: t\n  command: [\"true\"]\n")])
        + "  - {type: single_branch, name: main, branch: main, builders: [pushed]}\n";
    let mut stack = TestStack::new(&yaml, &["pushed"]).await;
    stack.append_settings(&format!("github:\n  webhook_secret: {WEBHOOK_SECRET}\n  repositories: [python/cpython]\n"));
    stack.start_masters_behind_haproxy().await;
    let requests = async || stack.get("/api/v2/buildrequests").await["meta"]["total"].as_i64().unwrap();

    let body = push("python/cpython", &"a".repeat(40), 3);
    let (status, answer) = deliver_raw(&stack, "push", "delivery-1", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(requests().await, 1);
    // Someone who captured the body and its signature sends it again with a
    // new delivery id.
    let (status, answer) = deliver_raw(&stack, "push", "delivery-1-replayed", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ignored"], "this delivery was recorded before", "{answer}");
    assert_eq!(requests().await, 1, "a replay builds nothing");

    // Another repository whose webhook shares the secret.
    let (status, answer) = deliver_raw(&stack, "push", "delivery-2", push("someone/fork", &"b".repeat(40), 1)).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap_or_default().contains("github.repositories"), "{answer}");
    assert_eq!(requests().await, 1);

    // A push of 2 MB (more than web.max_body_bytes, less than GitHub's 25 MB).
    let large = push("python/cpython", &"c".repeat(40), 20_000);
    assert!(large.len() > 2_000_000, "{}", large.len());
    let (status, answer) = deliver_raw(&stack, "push", "delivery-3", large).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(requests().await, 2, "the large push builds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_shows_no_value_from_settings_yaml() {
    let mut stack = TestStack::new(&master_yaml(&[("any", "- name: t\n  command: [\"true\"]\n")]), &["any"]).await;
    stack.start_masters_behind_haproxy().await;
    // A value put where it does not belong: a password pasted as a port.
    stack.append_settings("retention:\n  batch: hunter2-the-database-password\n");
    stack.reload_masters();
    let shown = stack
        .eventually(20, "the refused reload in /api/v2/masters", async || {
            let masters = stack.get("/api/v2/masters").await;
            let errors: Vec<String> = masters["masters"]
                .as_array()?
                .iter()
                .filter_map(|m| m["config_error"].as_str().map(str::to_owned))
                .collect();
            (!errors.is_empty()).then_some(errors)
        })
        .await;
    for error in &shown {
        assert!(error.contains("settings.yaml"), "it says where: {error}");
        assert!(!error.contains("hunter2"), "it quotes no value of settings.yaml: {error}");
    }
    let page = String::from_utf8_lossy(&stack.get_bytes("/").await).into_owned();
    assert!(page.contains("refused its last configuration reload") && !page.contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_sees_a_defined_environment_not_its_workers() {
    let steps = "- name: environment\n  command: env | sort\n  env: {GIVEN: by-the-step}\n";
    let mut stack = TestStack::new(&master_yaml(&[("environ", steps)]), &["environ"]).await;
    stack.worker_yaml_extra = "step_environment:\n  pass: [KEPT_FOR_STEPS]\n".into();
    stack.process_env = vec![
        ("BUILDMASTER_SETTINGS".into(), "/etc/buildmaster/settings.yaml".into()),
        ("WORKER_ONLY_TOKEN".into(), "not-for-steps".into()),
        ("KEPT_FOR_STEPS".into(), "passed-on".into()),
    ];
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let build = stack.wait_for_build(stack.force("environ").await).await;
    assert_eq!(build["results"], 0, "{build}");
    let printed = step_output(&stack, &build, 0).await;
    assert!(printed.contains("GIVEN=by-the-step\n"), "{printed}");
    assert!(printed.contains("KEPT_FOR_STEPS=passed-on\n"), "{printed}");
    assert!(printed.contains("\nPATH="), "{printed}");
    assert!(!printed.contains("WORKER_ONLY_TOKEN") && !printed.contains("BUILDMASTER_SETTINGS"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_open_to_anyone_starts_only_on_loopback_unless_told_so() {
    let stack = TestStack::new(&master_yaml(&[("any", "- name: t\n  command: [\"true\"]\n")]), &["any"]).await;
    // 0.0.0.0 takes connections from anywhere; the test sends none.
    let listen = format!("0.0.0.0:{}", crate::harness::free_port());
    let log = stack.dir.path().join("open.log");
    let mut master = std::process::Command::new(crate::harness::binary("buildmaster"))
        .args(["--settings", stack.settings_path.to_str().unwrap(), "start", "--name", "open", "--listen", &listen])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(stack.dir.path().join("open.err")).unwrap())
        .spawn()
        .expect("buildmaster runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = master.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = master.kill();
            break None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let said = std::fs::read_to_string(stack.dir.path().join("open.err")).unwrap_or_default();
    assert!(status.is_some_and(|status| !status.success()), "it must refuse to start, not serve: {said}");
    assert!(said.contains("users") && said.contains("hash-password") && said.contains("anonymous_control"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_crowd_of_readers_gets_bounded_answers_and_builds_go_on() {
    use futures_util::StreamExt;
    // One huge line, then lines for as long as the test needs.
    let talking = "- name: talk\n  command: head -c 1000000 /dev/zero | tr '\\\\0' x; echo; i=0; \
                   while true; do echo \"line $i\"; i=$((i+1)); sleep 0.01; done\n";
    let quick = "- name: hi\n  command: echo hi\n";
    let mut stack =
        TestStack::new(&master_yaml(&[("talking", talking), ("quick", quick)]), &["talking", "quick"]).await;
    let settings = std::fs::read_to_string(&stack.settings_path).unwrap();
    let settings = settings.replace("web:\n", "web:\n  max_log_followers: 2\n  max_websockets: 3\n");
    std::fs::write(&stack.settings_path, settings).unwrap();
    let master = stack.start_master("a").await;
    stack.base_url = format!("http://{master}");
    stack.start_worker("w1");
    let request = stack.force("talking").await;
    let build = stack.wait_for_build_to_start(request).await;
    let (_, log_id) = stack.first_step_log(build["buildid"].as_i64().unwrap()).await;
    let contents = |query: String| {
        let url = format!("{}/api/v2/logs/{log_id}/contents?{query}", stack.base_url);
        let http = stack.http.clone();
        async move { http.get(url).send().await.unwrap() }
    };
    stack
        .eventually(30, "some lines", async || {
            let body: Value = contents("tail=3".into()).await.json().await.ok()?;
            let text = body["logchunks"][0]["content"].as_str()?.to_owned();
            text.contains("line 2").then_some(())
        })
        .await;

    // The huge line comes cut, with a note; the raw log has it whole.
    let first: Value = contents("offset=0&limit=5".into()).await.json().await.unwrap();
    let text = first["logchunks"][0]["content"].as_str().unwrap().to_owned();
    assert!(text.len() < 200_000, "one answer holds no line of a megabyte: {} bytes", text.len());
    assert!(text.contains("[line cut at 65536 bytes; the raw log has it whole]"), "{}", &text[..200]);
    // The tail of a running log is its last lines, however long the log.
    let tail: Value = contents("tail=2".into()).await.json().await.unwrap();
    let firstline = tail["logchunks"][0]["firstline"].as_i64().unwrap();
    assert!(firstline > 3, "{tail}");

    // Followers: two at once, the third is told to come back later.
    let mut followers = Vec::new();
    for _ in 0..2 {
        let follower = contents("follow=true&tail=1".into()).await;
        assert_eq!(follower.status(), 200);
        followers.push(follower.bytes_stream());
    }
    let third = contents("follow=true&tail=1".into()).await;
    assert_eq!(third.status(), 429, "{:?}", third.text().await);
    // Live-event connections likewise.
    let ws = format!("ws://{master}/ws");
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(tokio_tungstenite::connect_async(&ws).await.expect("a websocket").0);
    }
    let refused = tokio_tungstenite::connect_async(&ws).await;
    assert!(refused.is_err(), "a fourth live-event connection is refused");
    // And one connection consumes at most 100 paths.
    use futures_util::SinkExt;
    let socket = &mut sockets[0];
    let mut last = Value::Null;
    for i in 0..101 {
        let command = json!({ "cmd": "startConsuming", "path": format!("builds/{i}/*"), "_id": i });
        socket.send(tokio_tungstenite::tungstenite::Message::Text(command.to_string().into())).await.unwrap();
        last = loop {
            let frame = socket.next().await.unwrap().unwrap();
            let answer: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
            if answer["_id"] == i {
                break answer;
            }
        };
    }
    assert_eq!(last["code"], 400, "{last}");
    // A page deeper than any crawler needs is refused with how to go on.
    let deep = stack.http.get(format!("{}/api/v2/builds?offset=1000000", stack.base_url)).send().await.unwrap();
    assert_eq!(deep.status(), 400);

    // Meanwhile builds go on.
    let quick = stack.wait_for_build(stack.force("quick").await).await;
    assert_eq!(quick["results"], 0, "{quick}");
    // A follower that ends makes room for the next.
    drop(followers.pop());
    stack
        .eventually(10, "room for a follower again", async || {
            (contents("follow=true&tail=1".into()).await.status() == 200).then_some(())
        })
        .await;
    stack.rpc(&format!("/builds/{}", build["buildid"]), "stop", json!({})).await;
}
