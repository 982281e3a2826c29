//! Masters and workers of neighbouring versions talk while a rolling
//! upgrade is under way. Here the test plays a master of a newer version:
//! it answers a real worker's hello and claim itself, with a claim reply
//! carrying fields this version does not know, and the worker must run
//! the build all the same.

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::{Value, json};
use shared::ids::{BuildId, BuilderName};
use shared::model::Results;
use shared::names::Namespace;
use shared::wire::{self, RpcRequest, WorkerEvent};

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
