//! Per-worker accounts (failure test 6): each worker logs in to RabbitMQ and
//! Redis as an account of its own, made by the masters, and can use neither
//! another worker's password, nor another builder's doorbells, nor another
//! worker's keys, nor speak for another worker. On a private RabbitMQ (with
//! its management API) and a private Redis, so no account outlives the test.

use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::{BasicProperties, Connection};
use shared::names::Namespace;
use shared::wire::WorkerEvent;

use crate::harness::{OTHER_WORKER_PASSWORD, Services, TestStack, WORKER_PASSWORD, without_credentials};
use crate::servers::{PrivateRabbitMq, PrivateRedis};

const MASTER_YAML: &str = "factories:\n  slow:\n    steps:\n      - name: work\n        command: echo begin; sleep 3; echo end\n\
    builders:\n  - name: one\n    factory: slow\n    workers: [w1]\n  - name: two\n    factory: slow\n    workers: [w2]\n\
    schedulers:\n  - type: force\n    name: force\n    builders: [one, two]\n";

/// `amqp://user:password@host...` for a worker's own account.
fn login_url(url: &str, user: &str, password: &str) -> String {
    let bare = without_credentials(url);
    let (scheme, rest) = bare.split_once("://").expect("a URL");
    format!("{scheme}://{user}:{password}@{rest}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_logs_in_as_its_own_account_and_cannot_act_as_another() {
    let rabbitmq = PrivateRabbitMq::start_with_management().await;
    let redis = PrivateRedis::start().await;
    let services = Services { amqp_url: rabbitmq.url(), redis_url: redis.url(), ..Services::shared() };
    let mut stack = TestStack::with_services(MASTER_YAML, &["one", "two"], services).await;
    let management = rabbitmq.management_url().expect("management is on");
    stack.append_settings(&format!("worker_accounts:\n  rabbitmq_management_url: {management}\n  sync_seconds: 1\n"));
    stack.worker_own_accounts = true;
    stack.start_masters_behind_haproxy().await;
    let ns = Namespace::new(&stack.namespace);
    let (w1, w2) = (ns.worker_account("w1"), ns.worker_account("w2"));

    // A worker with another worker's password is refused, and says why.
    stack.start_worker_with_password("w2", WORKER_PASSWORD);
    stack.wait_for_worker_exit("w2").await;
    let said = stack.worker_logs();
    assert!(said.contains(&format!("refused the login of `{w2}`")), "{said}");
    let wrong = Connection::connect(&login_url(&rabbitmq.url(), &w2, WORKER_PASSWORD), Default::default()).await;
    let refusal = wrong.expect_err("RabbitMQ refuses a wrong password").to_string();
    assert!(refusal.contains("ACCESS_REFUSED"), "{refusal}");
    stack.kill_worker("w2");

    // With their own passwords, both build, logs included.
    stack.start_worker("w1");
    stack.start_worker("w2");
    let first = stack.force("one").await;
    let second = stack.force("two").await;
    for request in [first, second] {
        let build = stack.wait_for_build(request).await;
        assert_eq!(build["results"], 0, "{build}\n{}", stack.worker_logs());
        let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
        let log = stack.archived_log(steps[0]["stepid"].as_i64().unwrap()).await;
        assert_eq!(stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await, b"begin\nend\n");
    }

    // w1's account cannot read builder two's doorbells.
    let as_w1 =
        Connection::connect(&login_url(&rabbitmq.url(), &w1, WORKER_PASSWORD), Default::default()).await.unwrap();
    let channel = as_w1.create_channel().await.unwrap();
    let stolen = channel
        .basic_consume(ns.builder_queue("two").into(), "".into(), BasicConsumeOptions::default(), Default::default())
        .await;
    let refusal = stolen.expect_err("another builder's queue is not readable").to_string();
    assert!(refusal.contains("ACCESS_REFUSED"), "{refusal}");

    // Nor write w2's keys in Redis, while its own are writable.
    let redis_as_w1 = redis::Client::open(login_url(&redis.url(), &w1, WORKER_PASSWORD)).unwrap();
    let mut redis_as_w1 = redis_as_w1.get_multiplexed_async_connection().await.unwrap();
    let own: Result<(), _> =
        redis::cmd("SET").arg(ns.presence_key("w1")).arg("test").arg("EX").arg(1).query_async(&mut redis_as_w1).await;
    own.expect("a worker writes its own keys");
    let other: Result<(), _> =
        redis::cmd("SET").arg(ns.presence_key("w2")).arg("x").query_async(&mut redis_as_w1).await;
    let refusal = other.expect_err("another worker's keys are not writable").to_string();
    assert!(refusal.to_lowercase().contains("noperm"), "{refusal}");
    let bad_redis_login = redis::Client::open(login_url(&redis.url(), &w2, WORKER_PASSWORD)).unwrap();
    assert!(bad_redis_login.get_multiplexed_async_connection().await.is_err(), "Redis refuses a wrong password");

    // Nor speak for w2: while w2 runs a build, w1's account says it failed,
    // once stating its own user and once none. Both are dead-lettered and
    // the build ends as w2 reports it. Stating w2's user is refused by
    // RabbitMQ itself.
    let running = stack.force("two").await;
    let build = stack.wait_for_build_to_start(running).await;
    let forged = WorkerEvent::BuildFinished {
        worker: "w2".into(),
        build_id: shared::ids::BuildId(build["buildid"].as_i64().unwrap()),
        seq: 1_000,
        results: shared::model::Results::Failure,
        state_string: "forged".into(),
        finished_at: chrono::Utc::now(),
        steps: Vec::new(),
        sent_at: None,
    };
    let publisher = as_w1.create_channel().await.unwrap();
    publisher.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    for user_id in [Some(w1.clone()), None] {
        let mut properties = BasicProperties::default();
        if let Some(user_id) = user_id {
            properties = properties.with_user_id(user_id.into());
        }
        let confirm = publisher
            .basic_publish(
                ns.events_exchange().into(),
                shared::names::EVENTS_ROUTING_KEY.into(),
                BasicPublishOptions::default(),
                &shared::wire::encode(&forged),
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "RabbitMQ takes it; the masters judge it");
    }
    let impostor = as_w1.create_channel().await.unwrap();
    impostor.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let claimed = impostor
        .basic_publish(
            ns.events_exchange().into(),
            shared::names::EVENTS_ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            &shared::wire::encode(&forged),
            BasicProperties::default().with_user_id(w2.clone().into()),
        )
        .await;
    let refused = match claimed {
        Ok(confirm) => confirm.await.map(|_| ()),
        Err(error) => Err(error),
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(refused.is_err() || !impostor.status().connected(), "RabbitMQ refuses a user_id that is not the login");

    let guest = Connection::connect(&rabbitmq.url(), Default::default()).await.unwrap();
    let guest = guest.create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    stack
        .eventually(30, "two dead letters", async || {
            let queue = guest.queue_declare(ns.dead_letter_queue().into(), passive, Default::default()).await.ok()?;
            (queue.message_count() == 2).then_some(())
        })
        .await;
    let build = stack.wait_for_build(running).await;
    assert_eq!(build["results"], 0, "the forged failure changed nothing: {build}");
    assert_ne!(build["state_string"], "forged", "{build}");

    // A password changed in settings.yaml is applied on reload: the old one
    // stops working, the new one works.
    let settings = std::fs::read_to_string(&stack.settings_path).unwrap();
    let changed = "a-brand-new-password-for-w2";
    std::fs::write(&stack.settings_path, settings.replace(OTHER_WORKER_PASSWORD, changed)).unwrap();
    stack.reload_masters();
    stack
        .eventually(30, "w2's new password to open RabbitMQ", async || {
            let url = login_url(&rabbitmq.url(), &w2, changed);
            Connection::connect(&url, Default::default()).await.ok().map(drop)
        })
        .await;
    let old = Connection::connect(&login_url(&rabbitmq.url(), &w2, OTHER_WORKER_PASSWORD), Default::default()).await;
    assert!(old.is_err(), "the old password no longer opens RabbitMQ");
    let _ = as_w1.close(200, "test done".into()).await;
}

/// Volunteers' workers reach RabbitMQ across the internet: through a broker
/// that speaks only TLS, with their own accounts, builds run; and a worker
/// refuses to send its password in clear to another machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_builds_through_a_rabbitmq_that_speaks_only_tls_and_refuses_plain_text_beyond_this_machine() {
    let rabbitmq = PrivateRabbitMq::start_tls_with_management().await;
    let services = Services { amqp_url: rabbitmq.url(), ..Services::shared() };
    let mut stack = TestStack::with_services(MASTER_YAML, &["one", "two"], services).await;
    let management = rabbitmq.management_url().expect("management is on");
    stack.append_settings(&format!("worker_accounts:\n  rabbitmq_management_url: {management}\n  sync_seconds: 1\n"));
    stack.worker_own_accounts = true;
    let ca = rabbitmq.ca_file().expect("a TLS broker has a CA").display().to_string();
    stack.process_env.push(("SSL_CERT_FILE".into(), ca));
    stack.start_master_process("a").await;
    stack.start_master_process("b").await;
    stack.start_haproxy().await;
    stack.start_worker("w1");
    let build = stack.wait_for_build(stack.force("one").await).await;
    assert_eq!(build["results"], 0, "{build}\n{}", stack.worker_logs());
    let plain = Connection::connect(&rabbitmq.url().replace("amqps://", "amqp://"), Default::default()).await;
    assert!(plain.is_err(), "the broker takes no plain-text connection");

    // The same worker pointed at another machine without TLS does not start.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.yaml");
    std::fs::write(
        &config,
        "name: w1\npassword: a-test-password-long-enough\namqp_url: amqp://buildbot.example.org:5672/%2f\n\
         redis_url: rediss://buildbot.example.org:6380/\n",
    )
    .unwrap();
    let refused = std::process::Command::new(crate::harness::binary("buildmaster-worker"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("amqp_url is not encrypted") && said.contains("allow_plaintext"), "{said}");
    assert!(!said.contains("redis_url"), "rediss:// is encrypted: {said}");
}
