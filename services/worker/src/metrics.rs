//! Prometheus metrics of one worker process, served at
//! `http://{metrics_listen}/metrics` when worker.yaml sets `metrics_listen`.
//! What only the worker sees: builds running here, log bytes and lines
//! written to Redis, events published, connections made.

use std::sync::LazyLock;

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub builds_running: IntGauge,
    pub builds_finished: IntCounterVec,
    pub log_bytes: IntCounter,
    pub log_lines: IntCounter,
    pub events_published: IntCounter,
    pub connections: IntCounter,
}

/// One set per process: a worker process runs one worker.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new_custom(Some("buildmaster_worker".into()), None).expect("valid prefix");
    let counter = |name: &str, help: &str| {
        let metric = IntCounter::new(name, help).expect("valid counter");
        registry.register(Box::new(metric.clone())).expect("registered once");
        metric
    };
    let builds_running = IntGauge::new("builds_running", "Builds running on this worker").expect("valid gauge");
    registry.register(Box::new(builds_running.clone())).expect("registered once");
    let builds_finished =
        IntCounterVec::new(Opts::new("builds_finished_total", "Builds this worker finished, by result"), &["result"])
            .expect("valid counter");
    registry.register(Box::new(builds_finished.clone())).expect("registered once");
    Metrics {
        builds_running,
        builds_finished,
        log_bytes: counter("log_bytes_total", "Bytes steps printed, written to Redis"),
        log_lines: counter("log_lines_total", "Newlines steps printed"),
        events_published: counter("events_published_total", "Events published to the masters (confirmed)"),
        connections: counter("connections_total", "Connections made to RabbitMQ (more than one: reconnections)"),
        registry,
    }
});

fn render() -> String {
    let mut text = Vec::new();
    TextEncoder::new().encode(&METRICS.registry.gather(), &mut text).expect("text encoding cannot fail");
    String::from_utf8(text).expect("the text format is UTF-8")
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "serving metrics at /metrics");
    let app = axum::Router::new().route("/metrics", axum::routing::get(|| async { render() }));
    axum::serve(listener, app).await
}
