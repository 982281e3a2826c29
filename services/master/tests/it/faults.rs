//! Faults operators meet, done to real services and real processes, with
//! every execution counted: each step appends a line to a file outside any
//! build directory when it starts, so a test sees every run, not only the
//! ones that were reported. Each test says: nothing lost, nothing run twice.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Services, TestStack, WorkerLaunch, master_yaml};
use crate::servers::{PrivateRedis, TcpProxy, address_of};

/// The lines of a file (none when it does not exist).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Whether process `pid` (read from `pid_file`) still runs.
fn alive(pid_file: &Path) -> bool {
    let pid = std::fs::read_to_string(pid_file).unwrap_or_default();
    let pid = pid.trim();
    !pid.is_empty() && Path::new(&format!("/proc/{pid}")).exists() && {
        // A zombie is gone for this purpose.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        !status.contains("State:\tZ")
    }
}

/// Waits until `check` holds; panics with `what` after `seconds`.
async fn until(seconds: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {seconds} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The builds of a request, oldest first.
async fn builds(stack: &TestStack, request: i64) -> Vec<Value> {
    stack.get(&format!("/api/v2/builds?buildrequestid={request}&order=buildid")).await["builds"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_longer_than_its_lease_is_stopped_when_it_returns_and_its_late_events_change_nothing() {
    let outside = tempfile::tempdir().unwrap();
    let runs = outside.path().join("runs");
    let o = outside.path().display();
    // Each worker's first step waits for a release file of its own, so w1's
    // is never released: only being stopped ends it.
    let steps = format!(
        "- name: work\n  command: echo \"start %(prop:workername)s\" >> {o}/runs; echo $$ > {o}/pid-%(prop:workername)s; \
         while [ ! -e {o}/release-%(prop:workername)s ]; do sleep 0.1; done\n\
         - name: finish\n  command: echo \"finish %(prop:workername)s\" >> {o}/runs\n"
    );
    let mut stack = TestStack::new(&master_yaml(&[("partitioned", &steps)]), &["partitioned"]).await;
    stack.start_masters_behind_haproxy().await;
    let rabbitmq = TcpProxy::start(address_of(stack.amqp_url())).await;
    let redis = TcpProxy::start(address_of(stack.redis_url())).await;
    let (amqp_url, redis_url) = (rabbitmq.url_for(stack.amqp_url()), redis.url_for(stack.redis_url()));
    stack.start_worker_with(
        "w1",
        WorkerLaunch { amqp_url: Some(&amqp_url), redis_url: Some(&redis_url), ..Default::default() },
    );
    stack.wait_for_worker_connected("w1").await;
    let request = stack.force("partitioned").await;
    until(30, "w1 starts the build", || lines(&runs) == ["start w1"]).await;
    let lost = stack.wait_for_build_to_start(request).await;
    let lost_id = lost["buildid"].as_i64().unwrap();

    // A partition: w1 reaches neither RabbitMQ nor Redis for longer than
    // its lease (4 s in the test stack); w2 is there.
    rabbitmq.cut();
    redis.cut();
    stack.start_worker("w2");
    until(60, "the request runs again on w2", || lines(&runs).contains(&"start w2".to_owned())).await;
    std::fs::write(outside.path().join("release-w2"), b"").unwrap();
    let build = stack
        .eventually(60, "the request's second build succeeds", async || {
            builds(&stack, request).await.into_iter().find(|build| build["results"] == 0)
        })
        .await;
    assert_ne!(build["workerid"], lost["workerid"], "w2 ran it: {build}");

    // w1 comes back with its build still running: the masters tell it the
    // lease is gone, and it stops.
    rabbitmq.restore();
    redis.restore();
    let pid = outside.path().join("pid-w1");
    until(60, "w1's stale build is stopped once it is back", || !alive(&pid)).await;
    // Too late now: nothing of w1's build may run any more.
    std::fs::write(outside.path().join("release-w1"), b"").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(lines(&runs), ["start w1", "start w2", "finish w2"], "0 lost, 0 run twice");
    let all = builds(&stack, request).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["buildid"], lost_id);
    assert_eq!(all[0]["results"], 5, "w1's build stays RETRY whatever w1 said later: {all:?}");
    let lost_steps = stack.steps(lost_id).await;
    assert!(
        lost_steps.iter().all(|step| step["results"].is_null()),
        "w1's late events rewrote nothing: {lost_steps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_step_stays_controllable_while_redis_is_stopped_and_its_log_is_whole_afterwards() {
    let redis = PrivateRedis::start().await;
    let mut stack =
        TestStack::with_services("", &["chatty"], Services { redis_url: redis.url(), ..Services::shared() }).await;
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path().display();
    let steps = format!(
        "- name: talk\n  command: echo start >> {o}/runs; echo $$ > {o}/pid; i=0; while true; do echo \"line $i\"; i=$((i+1)); done\n\
         \x20 max_time: 3\n  kill_grace: 1\n"
    );
    std::fs::write(stack.dir.path().join("master.yaml"), master_yaml(&[("chatty", &steps)])).unwrap();
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let request = stack.force("chatty").await;
    let pid = outside.path().join("pid");
    until(30, "the step starts", || alive(&pid)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Redis goes away (not flushed: stopped) for longer than the step may run.
    redis.stop();
    let stopped = Instant::now();
    until(15, "the step is killed at its max_time although Redis is away", || !alive(&pid)).await;
    assert!(stopped.elapsed() < Duration::from_secs(10), "killed while Redis was still stopped");
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    redis.start_again().await;

    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 2, "FAILURE, killed at max_time: {build}");
    assert_eq!(lines(&outside.path().join("runs")), ["start"], "0 run twice");
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    assert!(steps[0]["state_string"].as_str().unwrap_or_default().contains("max_time"), "{steps:?}");
    let log = stack.archived_log(steps[0]["stepid"].as_i64().unwrap()).await;
    let raw = stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await;
    let text = String::from_utf8_lossy(&raw);
    let printed: Vec<&str> = text.lines().collect();
    assert!(printed.len() > 100, "{} lines", printed.len());
    // The last line may be cut by the kill; every whole one is there, in order.
    for (number, line) in printed[..printed.len() - 1].iter().enumerate() {
        assert_eq!(*line, format!("line {number}"), "0 lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_fills_the_workers_disk_fails_and_the_worker_goes_on() {
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path().display();
    let steps = format!(
        "- name: fill\n  command: echo start >> {o}/runs; head -c 8000000 /dev/zero > big; status=$?; rm -f big; exit $status\n"
    );
    let mut stack = TestStack::new(&master_yaml(&[("filling", &steps)]), &["filling"]).await;
    stack.start_masters_behind_haproxy().await;
    // The worker's directory is a 2 MB tmpfs, mounted in a mount namespace
    // of the worker's own (gone with it).
    let small = stack.dir.path().join("small-disk");
    std::fs::create_dir_all(&small).unwrap();
    let mount = format!("mount -t tmpfs -o size=2m tmpfs {} && exec \"$@\"", small.display());
    let wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount.as_str(), "sh"];
    stack.start_worker_with("w1", WorkerLaunch { wrapper: &wrapper, basedir: Some(&small), ..Default::default() });
    stack.wait_for_worker_connected("w1").await;

    let full = stack.wait_for_build(stack.force("filling").await).await;
    assert_eq!(full["results"], 2, "FAILURE: {full}\n{}", stack.worker_logs());
    let steps = stack.steps(full["buildid"].as_i64().unwrap()).await;
    let log = stack.archived_log(steps[0]["stepid"].as_i64().unwrap()).await;
    let raw =
        String::from_utf8_lossy(&stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await).into_owned();
    assert!(raw.contains("No space left on device"), "the step says why: {raw}");
    // The worker is still there, and the next build runs.
    let again = stack.wait_for_build(stack.force("filling").await).await;
    assert_eq!(again["results"], 2, "{again}");
    assert_eq!(lines(&outside.path().join("runs")), ["start", "start"], "each build ran once");
    assert!(!stack.worker_exited("w1"), "{}", stack.worker_logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_clock_is_ten_minutes_behind_has_its_builds_timed_by_the_masters_clock() {
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path().display();
    let steps = format!("- name: timed\n  command: echo start >> {o}/runs; sleep 1\n");
    let mut stack = TestStack::new(&master_yaml(&[("timed", &steps)]), &["timed"]).await;
    stack.start_masters_behind_haproxy().await;
    let wrapper = ["faketime", "-f", "-10m"];
    stack.start_worker_with("w1", WorkerLaunch { wrapper: &wrapper, ..Default::default() });
    stack.wait_for_worker_connected("w1").await;
    let before = chrono::Utc::now().timestamp();
    let build = stack.wait_for_build(stack.force("timed").await).await;
    let after = chrono::Utc::now().timestamp();
    let within = |field: &Value| field.as_i64().is_some_and(|at| (before - 5..=after + 5).contains(&at));
    assert!(within(&build["started_at"]) && within(&build["complete_at"]), "{build} vs [{before}, {after}]");
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    assert!(within(&steps[0]["started_at"]) && within(&steps[0]["complete_at"]), "{steps:?}");
    let took = steps[0]["complete_at"].as_i64().unwrap() - steps[0]["started_at"].as_i64().unwrap();
    assert!((0..=5).contains(&took), "the step took about a second, not {took} s");
    assert_eq!(lines(&outside.path().join("runs")), ["start"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_while_archiving_a_log_leaves_it_to_another_and_the_log_is_whole() {
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path().display();
    const LINES: u64 = 4_000_000;
    let steps = format!("- name: print\n  command: echo start >> {o}/runs; seq 1 {LINES}\n");
    let mut stack = TestStack::new(&master_yaml(&[("archived", &steps)]), &["archived"]).await;
    // One master takes the events at first, so it is the one archiving.
    let a = stack.start_master_process("a").await;
    stack.base_url = format!("http://{a}");
    stack.start_worker("w1");
    let request = stack.force("archived").await;
    let build = stack.wait_for_build_to_start(request).await;

    // Catch it in the middle of writing the archive, and kill it.
    let database = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let archiving: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() and query like 'insert into log_chunks%'",
        )
        .fetch_one(&database)
        .await
        .unwrap();
        if archiving > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the archive never began:\n{}", stack.worker_logs());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stack.kill_master_process("a");
    let b = stack.start_master("b").await;
    stack.base_url = format!("http://{b}");

    let build = {
        let finished = stack.wait_for_build(request).await;
        assert_eq!(finished["buildid"], build["buildid"]);
        finished
    };
    assert_eq!(build["results"], 0, "{build}");
    assert_eq!(builds(&stack, request).await.len(), 1, "0 run twice");
    assert_eq!(lines(&outside.path().join("runs")), ["start"]);
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    let log = stack.archived_log(steps[0]["stepid"].as_i64().unwrap()).await;
    stack.delete_redis_keys().await;
    let raw = stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await;
    let expected: String = (1..=LINES).map(|n| format!("{n}\n")).collect();
    assert!(
        raw == expected.as_bytes(),
        "the archive is the step's output byte for byte ({} bytes, expected {})",
        raw.len(),
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_kills_what_its_killed_predecessor_left_running_before_it_builds() {
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path().display();
    let steps = format!(
        "- name: forever\n  command: echo \"start $$\" >> {o}/runs; echo $$ > {o}/pid-$(wc -l < {o}/runs); \
         while true; do sleep 0.1; done\n"
    );
    let mut stack = TestStack::new(&master_yaml(&[("orphaned", &steps)]), &["orphaned"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let request = stack.force("orphaned").await;
    let first = outside.path().join("pid-1");
    until(30, "the step runs", || alive(&first)).await;

    stack.kill_worker("w1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(&first), "a step outlives its worker's SIGKILL (its own process group)");
    stack.start_worker("w1");
    until(30, "the restarted worker kills the orphaned step", || !alive(&first)).await;
    // The lease expires and the request runs again, on the worker's
    // directory now free.
    let second = outside.path().join("pid-2");
    until(60, "the request runs again", || alive(&second)).await;
    let runs = lines(&outside.path().join("runs"));
    assert_eq!(runs.len(), 2, "{runs:?}");
    let all = builds(&stack, request).await;
    assert_eq!(all[0]["results"], 5, "the first build ends RETRY: {all:?}");
    stack.rpc(&format!("/builds/{}", all[1]["buildid"]), "stop", serde_json::json!({})).await;
    let last = stack
        .eventually(30, "the second build stopped", async || {
            builds(&stack, request).await.into_iter().nth(1).filter(|build| build["complete"] == true)
        })
        .await;
    assert_eq!(last["results"], 6, "CANCELLED: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_force_answered_by_a_master_killed_before_its_doorbell_rang_still_runs_once() {
    let outside = tempfile::tempdir().unwrap();
    let runs = outside.path().join("runs");
    let steps = format!("- name: work\n  command: echo run >> {}\n", runs.display());
    let mut stack = TestStack::new(&master_yaml(&[("announced", &steps)]), &["announced"]).await;
    // Master b is healthy; master a reaches RabbitMQ through a proxy.
    stack.start_master("b").await;
    let rabbitmq = TcpProxy::start(address_of(stack.amqp_url())).await;
    let a = stack.start_master_process_through("a", &rabbitmq.url_for(stack.amqp_url())).await;
    stack.start_worker("w1");
    stack.wait_for_worker_connected("w1").await;

    // Master a's network to RabbitMQ goes silent: its doorbell is never
    // confirmed, nor even delivered. The force is answered all the same,
    // once committed: an answer that waited for the doorbell would not come.
    rabbitmq.freeze();
    let request = tokio::time::timeout(Duration::from_secs(10), stack.force_at(&format!("http://{a}"), "announced"))
        .await
        .expect("master a answers a committed force without waiting for its doorbell");
    stack.kill_master_process("a");
    // A killed process's connections close; the proxy would keep the
    // frozen one open, and RabbitMQ would hold what it had delivered to
    // master a (heartbeats, a claim) until its own heartbeat timeout.
    rabbitmq.cut();

    // Master b's reconciler rings for the request nobody announced.
    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 0, "{build}");
    // Longer than `redeliver_after_seconds` (2 s): no second ring makes a
    // second build.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(lines(&runs), ["run"], "run once");
    assert_eq!(builds(&stack, request).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_while_events_are_unconfirmed_sends_them_again_and_each_is_recorded_once_in_order() {
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use shared::names::{EVENTS_ROUTING_KEY, Namespace};
    use shared::wire::WorkerEvent;

    const STEPS: i64 = 12;
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path().display();
    // The first step waits for the test to silence RabbitMQ's answers.
    let mut steps = format!("- name: s1\n  command: while [ ! -e {o}/go ]; do sleep 0.05; done\n");
    steps.extend((2..STEPS).map(|n| format!("- name: s{n}\n  command: sleep 0.05; echo {n}\n")));
    steps.push_str(&format!("- name: s{STEPS}\n  command: touch {o}/last\n"));
    let mut stack = TestStack::new(&master_yaml(&[("reported", &steps)]), &["reported"]).await;
    stack.start_master("a").await;

    // A copy of every event the worker publishes, in the order RabbitMQ
    // took them.
    let connection = lapin::Connection::connect(stack.amqp_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let namespace = Namespace::new(stack.namespace.clone());
    let copy = format!("{}.test-event-copy", stack.namespace);
    let options = QueueDeclareOptions { auto_delete: true, ..Default::default() };
    channel.queue_declare(copy.as_str().into(), options, FieldTable::default()).await.unwrap();
    let exchange = namespace.events_exchange();
    let binding = QueueBindOptions::default();
    channel
        .queue_bind(copy.as_str().into(), exchange.into(), EVENTS_ROUTING_KEY.into(), binding, FieldTable::default())
        .await
        .unwrap();
    let consume = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut copies =
        channel.basic_consume(copy.as_str().into(), "".into(), consume, FieldTable::default()).await.unwrap();

    let rabbitmq = TcpProxy::start(address_of(stack.amqp_url())).await;
    let amqp_url = rabbitmq.url_for(stack.amqp_url());
    stack.start_worker_with("w1", WorkerLaunch { amqp_url: Some(&amqp_url), ..Default::default() });
    stack.wait_for_worker_connected("w1").await;
    let request = stack.force("reported").await;
    let build_id = stack.wait_for_build_to_start(request).await["buildid"].as_i64().unwrap();

    // The worker's events reach RabbitMQ but no confirm reaches the worker;
    // its steps go on meanwhile. Then its connection is cut.
    rabbitmq.freeze_replies();
    std::fs::write(outside.path().join("go"), b"").unwrap();
    until(30, "the last step runs", || outside.path().join("last").exists()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rabbitmq.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    rabbitmq.restore();

    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 0, "{build}");
    assert_eq!(builds(&stack, request).await.len(), 1);
    let recorded = stack.steps(build_id).await;
    assert_eq!(recorded.len() as i64, STEPS, "{recorded:?}");
    assert!(recorded.iter().all(|step| step["complete"] == true && step["results"] == 0), "{recorded:?}");

    // Two events per step and the build's end, each in the ledger once.
    let events = 2 * STEPS + 1;
    let database = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let ledger: Vec<i64> = sqlx::query_scalar("select seq from build_events where build_id = $1 order by seq")
        .bind(build_id)
        .fetch_all(&database)
        .await
        .unwrap();
    assert_eq!(ledger, (1..=events).collect::<Vec<_>>(), "every event recorded once");

    // What RabbitMQ took: the unconfirmed events twice, and each pass in
    // the order the worker reported them.
    // The first pass was routed before the build could be recorded
    // complete, but the second waits for the worker to reconnect, which
    // can take longer than the build: read until events have been sent
    // again and then gone quiet (heartbeats keep coming, so only this
    // build's events count).
    let mut published: Vec<i64> = Vec::new();
    let reading = Instant::now();
    while reading.elapsed() < Duration::from_secs(30) {
        let resent = published.len() as i64 > events;
        let delivery = match tokio::time::timeout(Duration::from_millis(500), copies.next()).await {
            Ok(Some(Ok(delivery))) => delivery,
            Ok(_) => break,
            Err(_) if resent => break,
            Err(_) => continue,
        };
        if let Ok(
            WorkerEvent::StepStarted { build_id: id, seq, .. }
            | WorkerEvent::StepFinished { build_id: id, seq, .. }
            | WorkerEvent::BuildFinished { build_id: id, seq, .. },
        ) = shared::wire::decode::<WorkerEvent>(&delivery.data)
            && id.0 == build_id
        {
            published.push(seq);
        }
    }
    assert!(published.len() as i64 > events, "the unconfirmed events were published again: {published:?}");
    let mut first_seen = Vec::new();
    for seq in &published {
        if !first_seen.contains(seq) {
            first_seen.push(*seq);
        }
    }
    assert_eq!(first_seen, (1..=events).collect::<Vec<_>>(), "in order: {published:?}");
    let resent = &published[events as usize..];
    assert!(resent.windows(2).all(|pair| pair[0] < pair[1]), "sent again in order: {published:?}");
}
