//! Masters and workers of neighbouring versions talk while a rolling
//! upgrade is under way. Here the tests play a master of a newer version
//! (it answers a real worker's hello and claim itself, with a claim reply
//! carrying fields this version does not know, and the worker must run
//! the build all the same) and a worker of an earlier version (which must
//! not be given builders whose steps it would run wrongly).

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::{Value, json};
use shared::ids::{BuildId, BuilderName, WorkerName};
use shared::model::Results;
use shared::names::Namespace;
use shared::wire::{self, ControlMessage, RpcReply, RpcRequest, WorkerEvent};

use crate::harness::{TestStack, master_yaml};

/// Answers one RPC request from the worker with `reply` (raw JSON, as a
/// newer master might send it), and returns the request.
async fn answer_next(
    channel: &Channel,
    requests: &mut lapin::Consumer,
    reply: impl FnOnce(&RpcRequest) -> Value,
) -> RpcRequest {
    let delivery = tokio::time::timeout(std::time::Duration::from_secs(30), requests.next())
        .await
        .expect("the worker asks within 30 s")
        .expect("the consumer is open")
        .expect("a delivery");
    let request: RpcRequest = wire::decode(&delivery.data).expect("the worker's request reads");
    let mut body = reply(&request);
    body["v"] = json!(wire::WIRE_VERSION);
    let properties = BasicProperties::default()
        .with_correlation_id(delivery.properties.correlation_id().clone().expect("a correlation id"));
    let reply_to = delivery.properties.reply_to().clone().expect("a reply queue");
    channel
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&body).unwrap(),
            properties,
        )
        .await
        .unwrap();
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    request
}

#[tokio::test]
async fn a_worker_runs_a_claim_reply_carrying_options_it_does_not_know() {
    let mut stack = TestStack::new(&master_yaml(&[("newer", "- name: t\n  command: [\"true\"]\n")]), &["newer"]).await;
    let ns = Namespace::new(&stack.namespace);
    let builder = BuilderName::new("newer");
    // The topology every master declares; no master runs here.
    let broker = master::broker::Broker::connect(stack.amqp_url(), ns.clone(), "wire test").await.unwrap();
    broker.declare_topology(std::slice::from_ref(&builder)).await.unwrap();

    let connection = lapin::Connection::connect(stack.amqp_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let consume = |queue: String| {
        let channel = channel.clone();
        async move {
            channel
                .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
                .await
                .unwrap()
        }
    };
    let mut requests = consume(ns.rpc_queue()).await;
    let mut events = consume(ns.events_queue()).await;

    stack.start_worker("w1");
    let hello = answer_next(&channel, &mut requests, |_| {
        json!({ "type": "welcome", "builders": ["newer"], "max_builds": 1, "heartbeat_seconds": 1,
                "paused": false, "pause_version": 0, "maintenance_window": "sundays" })
    })
    .await;
    assert!(matches!(hello, RpcRequest::Hello { .. }), "{hello:?}");

    broker.ring(&builder, shared::ids::BuildRequestId(1), None).await.unwrap();
    let claim = answer_next(&channel, &mut requests, |request| {
        let RpcRequest::Claim { worker, builder, .. } = request else { panic!("a claim, got {request:?}") };
        // A claim reply as a newer master writes it, with a step option and
        // a build field this version does not know.
        json!({
            "type": "claimed",
            "build": {
                "build_id": 77, "builder": builder, "number": 1, "worker": worker,
                "steps": [{
                    "name": "print", "command": "echo from a newer master", "env": {}, "workdir": "build",
                    "timeout": 60, "max_time": null, "kill_grace": 5, "halt_on_failure": false,
                    "flunk_on_failure": true, "warn_on_failure": false, "warn_on_warnings": true,
                    "always_run": false, "decode_rc": { "0": "SUCCESS" },
                    "warning_pattern": "^warning: ",
                    "coverage": { "formats": ["lcov"], "max_bytes": 1_000_000 },
                }],
                "secrets": {}, "max_log_bytes": null,
                "artifact_upload_url": "https://example.invalid/upload",
            },
        })
    })
    .await;
    assert!(matches!(claim, RpcRequest::Claim { .. }), "{claim:?}");

    let finished = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(Ok(delivery)) = events.next().await {
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            if let Ok(WorkerEvent::BuildFinished { build_id, results, steps, .. }) = wire::decode(&delivery.data) {
                return (build_id, results, steps);
            }
        }
        panic!("the events consumer closed");
    })
    .await
    .unwrap_or_else(|_| panic!("no BuildFinished within 30 s:\n{}", stack.worker_logs()));
    let (build_id, results, steps) = finished;
    assert_eq!(build_id, BuildId(77));
    assert_eq!(results, Results::Success, "{}", stack.worker_logs());
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].results, Some(Results::Success));

    let mut redis = redis::Client::open(stack.redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = ns.log_stream_key("w1", BuildId(77), 0, shared::wire::STDIO_LOG);
    let entries: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query_async(&mut redis).await.unwrap();
    let printed: Vec<u8> = entries
        .ids
        .iter()
        .filter(|entry| entry.get::<String>(shared::names::LOG_FIELD_CHANNEL).as_deref() == Some("o"))
        .flat_map(|entry| entry.get::<Vec<u8>>(shared::names::LOG_FIELD_DATA).unwrap_or_default())
        .collect();
    assert_eq!(String::from_utf8_lossy(&printed), "from a newer master\n");
    broker.close().await;
}

/// Plays worker `worker` saying hello with `info` over its own reply and
/// control queues, as a worker process does; the masters' answer, and the
/// channel holding the control queue.
async fn hello_as(
    stack: &TestStack,
    worker: &str,
    info: &[(&str, &str)],
) -> (RpcReply, lapin::Connection, lapin::Consumer) {
    let ns = Namespace::new(&stack.namespace);
    let connection = lapin::Connection::connect(stack.amqp_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let own = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let mut consumers = Vec::new();
    for queue in [ns.worker_reply_queue(worker), ns.worker_control_queue(worker)] {
        channel.queue_declare(queue.as_str().into(), own, FieldTable::default()).await.unwrap();
        let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
        consumers.push(channel.basic_consume(queue.into(), "".into(), options, FieldTable::default()).await.unwrap());
    }
    let (mut replies, control) = (consumers.remove(0), consumers.remove(0));
    let hello = RpcRequest::Hello {
        worker: WorkerName::new(worker),
        info: info.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
    };
    let properties = BasicProperties::default()
        .with_reply_to(ns.worker_reply_queue(worker).into())
        .with_correlation_id("hello-1".into());
    channel
        .basic_publish(
            ns.rpc_exchange().into(),
            shared::names::RPC_ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            &wire::encode(&hello),
            properties,
        )
        .await
        .unwrap();
    let reply = tokio::time::timeout(std::time::Duration::from_secs(30), replies.next())
        .await
        .expect("a master answers within 30 s")
        .expect("the consumer is open")
        .expect("a delivery");
    (wire::decode(&reply.data).expect("the answer reads"), connection, control)
}

/// The builders a welcome gives, sorted.
fn welcomed(reply: &RpcReply) -> Vec<String> {
    let RpcReply::Welcome { builders, .. } = reply else { panic!("a welcome, got {reply:?}") };
    let mut names: Vec<String> = builders.iter().map(|name| name.to_string()).collect();
    names.sort();
    names
}

/// A worker of a version before `run_if` and `set_property` would run a
/// step meant to be skipped and leave a property unset: the masters do not
/// give it the builders whose steps use them, at its hello nor after a
/// reload, while a worker of this version is given them and builds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_an_earlier_version_is_not_given_builders_whose_steps_it_would_run_wrongly() {
    let yaml = "factories:\n  plain:\n    steps:\n      - {name: t, command: [\"true\"]}\n\
                \x20 probing:\n    steps:\n\
                \x20     - {name: probe, command: \"echo yes\", set_property: answer}\n\
                \x20     - {name: only-if-answered, command: \"test %(prop:answer)s = yes\", run_if: {property: answer}}\n\
                builders:\n  - {name: plain, factory: plain, workers: [w1, w2]}\n\
                \x20 - {name: probing, factory: probing, workers: [w1, w2]}\n\
                schedulers:\n  - {type: force, name: force, builders: [plain, probing]}\n";
    let mut stack = TestStack::new(yaml, &["plain", "probing"]).await;
    stack.start_master("a").await;

    let earlier = [("host", "old-box"), ("version", "0.1.0")];
    let (reply, connection, mut control) = hello_as(&stack, "w2", &earlier).await;
    assert_eq!(welcomed(&reply), ["plain"], "an earlier worker is not given `probing`");
    stack.reload_masters();
    let told = tokio::time::timeout(std::time::Duration::from_secs(30), control.next())
        .await
        .expect("the worker is told its builders after a reload")
        .expect("the consumer is open")
        .expect("a delivery");
    let ControlMessage::SetBuilders { builders } = wire::decode(&told.data).expect("a control message") else {
        panic!("builders, got {}", String::from_utf8_lossy(&told.data))
    };
    assert_eq!(builders, [BuilderName::new("plain")], "nor after a reload");
    connection.close(200, "done".into()).await.unwrap();

    let options = wire::STEP_OPTIONS.join(" ");
    let (reply, connection, _) =
        hello_as(&stack, "w2", &[("version", "0.2.0"), (wire::STEP_OPTIONS_INFO, &options)]).await;
    assert_eq!(welcomed(&reply), ["plain", "probing"], "a worker that honours them is given both");
    connection.close(200, "done".into()).await.unwrap();

    // A worker process of this version says so, and builds `probing`: the
    // property set, the conditional step run with it.
    stack.start_worker("w1");
    stack.wait_for_worker_connected("w1").await;
    let build = stack.wait_for_build(stack.force("probing").await).await;
    assert_eq!(build["results"], 0, "{build}\n{}", stack.worker_logs());
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    assert_eq!(steps[1]["results"], 0, "the conditional step ran and passed: {steps:?}");
    let worker = stack.get("/api/v2/workers/w1").await;
    assert_eq!(worker["workers"][0]["workerinfo"][wire::STEP_OPTIONS_INFO], options.as_str(), "{worker}");
}
