//! Seeing inside: one trace per build across masters, RabbitMQ and the
//! worker, received by an OTLP/HTTP receiver speaking the real protocol
//! (protobuf `ExportTraceServiceRequest`, as a collector gets it); and
//! Prometheus counters that move when a build runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

use crate::harness::{TestStack, free_port, master_yaml};

const TWO_STEPS: &str = r#"- name: compile
  command: echo compiling
- name: test
  command: echo testing
"#;

/// A span as received, with what the test looks at.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_id: Vec<u8>,
    attributes: HashMap<String, String>,
    duration_ms: f64,
}

type Spans = Arc<Mutex<Vec<Received>>>;

async fn receive(State(spans): State<Spans>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export request");
    let mut received = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                AnyValue::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            let attributes = span
                .attributes
                .iter()
                .filter_map(|a| {
                    let value = match a.value.as_ref()?.value.as_ref()? {
                        AnyValue::StringValue(s) => s.clone(),
                        AnyValue::IntValue(i) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    Some((a.key.clone(), value))
                })
                .collect();
            received.push(Received {
                service: service.clone(),
                name: span.name,
                trace_id: span.trace_id,
                span_id: span.span_id,
                parent_id: span.parent_span_id,
                attributes,
                duration_ms: (span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano)) as f64 / 1e6,
            });
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// Starts an OTLP/HTTP receiver on a free port; its base URL and its spans.
async fn otlp_receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let app = axum::Router::new().route("/v1/traces", post(receive)).with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The trace as a tree, with durations, for failure messages and notes.
fn tree(spans: &[Received]) -> String {
    fn walk(spans: &[Received], parent: &[u8], depth: usize, out: &mut String) {
        for span in spans.iter().filter(|s| s.parent_id == parent) {
            out.push_str(&format!(
                "{}{} [{}] {:.1} ms\n",
                "  ".repeat(depth),
                span.name,
                span.service,
                span.duration_ms
            ));
            walk(spans, &span.span_id, depth + 1, out);
        }
    }
    let mut out = String::new();
    let ids: Vec<&Vec<u8>> = spans.iter().map(|s| &s.span_id).collect();
    for root in spans.iter().filter(|s| !ids.contains(&&s.parent_id)) {
        out.push_str(&format!("{} [{}] {:.1} ms\n", root.name, root.service, root.duration_ms));
        walk(spans, &root.span_id, 1, &mut out);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_build_from_the_force_through_the_masters_and_the_worker() {
    let (receiver, spans) = otlp_receiver().await;
    let mut stack = TestStack::new(&master_yaml(&[("traced", TWO_STEPS)]), &["traced"]).await;
    let telemetry = format!("telemetry:\n  otlp_endpoint: {receiver}\n");
    stack.append_settings(&telemetry);
    stack.worker_yaml_extra = telemetry;
    stack.process_env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    stack.start_master_process("a").await;
    stack.start_master_process("b").await;
    stack.start_haproxy().await;
    stack.start_worker("w1");

    let request = stack.force("traced").await;
    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 0);

    let force_route = "POST /api/v2/forceschedulers/{scheduler}";
    let trace = stack
        .eventually(30, "the build's spans at the receiver", async || {
            let spans = spans.lock().unwrap().clone();
            let force = spans.iter().find(|s| s.name == force_route)?;
            let trace: Vec<Received> = spans.iter().filter(|s| s.trace_id == force.trace_id).cloned().collect();
            let archived = trace.iter().filter(|s| s.name == "archive log").count();
            let steps = trace.iter().filter(|s| s.name.starts_with("step ")).count();
            let recorded = trace.iter().filter(|s| s.name.ends_with(".events")).count();
            let built = trace.iter().any(|s| s.name.starts_with("build "));
            (archived == 2 && steps == 2 && recorded >= 5 && built).then_some(trace)
        })
        .await;
    let shown = tree(&trace);
    println!("{shown}");
    let one = |name: &str| -> Received {
        let found: Vec<&Received> = trace.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one `{name}` span in\n{shown}");
        found[0].clone()
    };
    let parent_of = |span: &Received| trace.iter().find(|s| s.span_id == span.parent_id).cloned();
    let ns = &stack.namespace;

    let http = one(force_route);
    assert_eq!(http.service, "buildmaster-master");
    assert!(http.parent_id.is_empty(), "the force starts the trace:\n{shown}");
    assert_eq!(http.attributes.get("http.route").map(String::as_str), Some("/api/v2/forceschedulers/{scheduler}"));
    assert_eq!(http.attributes.get("http.response.status_code").map(String::as_str), Some("200"));
    let insert = one("INSERT buildsets, buildrequests");
    assert_eq!(insert.parent_id, http.span_id, "the commit is part of the request:\n{shown}");
    assert_eq!(insert.attributes.get("db.system.name").map(String::as_str), Some("postgresql"));
    let publish = one(&format!("publish {ns}.doorbells"));
    assert_eq!(publish.parent_id, http.span_id, "the doorbell is rung by the request:\n{shown}");
    let doorbell = one(&format!("process {ns}.builder.traced"));
    assert_eq!((doorbell.service.as_str(), &doorbell.parent_id), ("buildmaster-worker", &publish.span_id), "{shown}");
    let claim = trace
        .iter()
        .find(|s| s.name == format!("process {ns}.rpc") && s.parent_id == doorbell.span_id)
        .unwrap_or_else(|| panic!("the claim, answered by a master, is the doorbell's child:\n{shown}"));
    assert_eq!(claim.service, "buildmaster-master");
    let build_span = one("build traced #1");
    assert_eq!(build_span.service, "buildmaster-worker");
    assert_eq!(build_span.parent_id, http.span_id, "the build continues the request's trace:\n{shown}");
    assert_eq!(build_span.attributes.get("build.results").map(String::as_str), Some("success"));
    for step in ["step compile", "step test"] {
        let step = one(step);
        assert_eq!(step.parent_id, build_span.span_id, "{shown}");
        assert_eq!(step.attributes.get("step.results").map(String::as_str), Some("success"), "{shown}");
    }
    let recorded: Vec<&Received> = trace.iter().filter(|s| s.name == format!("process {ns}.events")).collect();
    assert!(recorded.len() >= 5, "2 starts, 2 ends, the build's end recorded:\n{shown}");
    for event in &recorded {
        let parent = parent_of(event).unwrap_or_else(|| panic!("an event without its parent:\n{shown}"));
        assert!(parent.name.starts_with("step ") || parent.name.starts_with("build "), "{shown}");
        assert_eq!(event.service, "buildmaster-master");
    }
    for archive in trace.iter().filter(|s| s.name == "archive log") {
        let parent = parent_of(archive).expect("archive's parent");
        assert_eq!(parent.name, format!("process {ns}.events"), "archived while recording a step's end:\n{shown}");
    }
    let trace_id = hex(&http.trace_id);
    assert!(trace.iter().all(|s| hex(&s.trace_id) == trace_id));
}

/// Sums one metric's samples whose labels include `labels`, over masters.
fn sample(texts: &[String], name: &str, labels: &[(&str, &str)]) -> f64 {
    texts
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_when_a_build_runs() {
    let mut stack = TestStack::new(&master_yaml(&[("counted", TWO_STEPS)]), &["counted"]).await;
    let a = stack.start_master("a").await;
    let b = stack.start_master("b").await;
    stack.start_haproxy().await;
    let scrape = async |stack: &TestStack| -> Vec<String> {
        let mut texts = Vec::new();
        for master in [a, b] {
            let response = stack.http.get(format!("http://{master}/metrics")).send().await.unwrap();
            assert_eq!(response.status(), 200);
            texts.push(response.text().await.unwrap());
        }
        texts
    };
    let before = scrape(&stack).await;
    assert_eq!(sample(&before, "buildmaster_builds_started_total", &[("builder", "counted")]), 0.0);

    // Queued while no worker runs: pending, and its doorbell waits.
    let request = stack.force("counted").await;
    // The doorbell is rung just after the force is answered.
    let queued = stack
        .eventually(10, "the doorbell waiting", async || {
            let queued = scrape(&stack).await;
            let rung = sample(&queued[..1], "buildmaster_doorbells_waiting", &[("builder", "counted")]) == 1.0;
            rung.then_some(queued)
        })
        .await;
    assert_eq!(sample(&queued[..1], "buildmaster_pending_requests", &[("builder", "counted")]), 1.0);
    assert_eq!(sample(&queued[..1], "buildmaster_workers_online", &[]), 0.0);

    let worker_metrics = format!("127.0.0.1:{}", free_port());
    stack.worker_yaml_extra = format!("metrics_listen: {worker_metrics}\n");
    stack.start_worker("w1");
    assert_eq!(stack.wait_for_build(request).await["results"], 0);
    let texts = stack
        .eventually(10, "the build's end and its logs counted", async || {
            // Each master counts what it recorded once committed, so the
            // master that recorded the last step may count it a moment after
            // the other recorded the build's end.
            let texts = scrape(&stack).await;
            let finished = sample(&texts, "buildmaster_builds_finished_total", &[("builder", "counted")]) == 1.0;
            let archived = sample(&texts, "buildmaster_log_bytes_archived_total", &[]) >= 18.0;
            (finished && archived).then_some(texts)
        })
        .await;
    let finished = [("builder", "counted"), ("result", "success")];
    assert_eq!(sample(&texts, "buildmaster_builds_finished_total", &finished), 1.0);
    assert_eq!(sample(&texts, "buildmaster_builds_started_total", &[("builder", "counted")]), 1.0);
    assert_eq!(sample(&texts, "buildmaster_queue_wait_seconds_count", &[("builder", "counted")]), 1.0);
    assert_eq!(sample(&texts, "buildmaster_dispatch_latency_seconds_count", &[("builder", "counted")]), 1.0);
    assert_eq!(sample(&texts[..1], "buildmaster_pending_requests", &[("builder", "counted")]), 0.0);
    assert_eq!(sample(&texts[..1], "buildmaster_workers_online", &[]), 1.0);
    assert_eq!(sample(&texts, "buildmaster_log_bytes_archived_total", &[]), 18.0, "`compiling\\n` and `testing\\n`");
    assert!(sample(&texts, "buildmaster_log_lines_archived_total", &[]) >= 2.0, "a line printed by each step");
    assert!(sample(&texts, "buildmaster_events_total", &[("outcome", "recorded")]) >= 5.0);
    let forces = [("route", "/api/v2/forceschedulers/{scheduler}"), ("method", "POST"), ("status", "200")];
    assert_eq!(sample(&texts, "buildmaster_http_requests_total", &forces), 1.0);
    assert!(!texts.concat().contains("build_id"), "no build ids as labels");

    // The worker's own.
    let worker = stack.http.get(format!("http://{worker_metrics}/metrics")).send().await.unwrap();
    let worker = vec![worker.text().await.unwrap()];
    assert_eq!(sample(&worker, "buildmaster_worker_builds_finished_total", &[("result", "success")]), 1.0);
    assert_eq!(sample(&worker, "buildmaster_worker_builds_running", &[]), 0.0);
    assert_eq!(sample(&worker, "buildmaster_worker_log_bytes_total", &[]), 18.0);
    assert_eq!(sample(&worker, "buildmaster_worker_log_lines_total", &[]), 2.0);
    assert!(sample(&worker, "buildmaster_worker_events_published_total", &[]) >= 5.0);
    assert_eq!(sample(&worker, "buildmaster_worker_connections_total", &[]), 1.0);
}
