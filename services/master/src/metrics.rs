//! Prometheus metrics of a master, served at `/metrics`. Counters and
//! histograms count what this master did since it started (Prometheus sums
//! masters); gauges of shared state (pending requests, doorbells waiting,
//! workers online) are read from Postgres, RabbitMQ and Redis when scraped,
//! so every master reports the same truth. Labels are bounded: builders,
//! results, routes, never build ids.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, exponential_buckets,
};

use crate::Master;

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    builds_started: IntCounterVec,
    builds_finished: IntCounterVec,
    queue_wait: HistogramVec,
    dispatch_latency: HistogramVec,
    log_bytes_archived: IntCounter,
    log_lines_archived: IntCounter,
    reconciler_actions: IntCounterVec,
    events: IntCounterVec,
    notifications: IntCounterVec,
    pending_requests: IntGaugeVec,
    doorbells_waiting: IntGaugeVec,
    workers_online: IntGauge,
    retention_deleted: IntCounterVec,
    retention_batch: HistogramVec,
    retention_longest_batch: prometheus::Gauge,
}

/// Seconds from 1 ms to about 70 minutes.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 23).expect("valid buckets")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("buildmaster".into()), None).expect("valid prefix");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry.register(Box::new(metric.clone())).expect("registered once");
            metric
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry.register(Box::new(metric.clone())).expect("registered once");
            metric
        };
        let plain_counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid counter");
            registry.register(Box::new(metric.clone())).expect("registered once");
            metric
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid");
            registry.register(Box::new(metric.clone())).expect("registered once");
            metric
        };
        Metrics {
            http_requests: counter(
                "http_requests_total",
                "HTTP requests answered, by route template, method and status",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                "http_request_duration_seconds",
                "Time to answer an HTTP request (to the start of its body)",
                &["route", "method"],
                exponential_buckets(0.0005, 2.0, 16).expect("valid buckets"),
            ),
            builds_started: counter("builds_started_total", "Builds claimed by a worker", &["builder"]),
            builds_finished: counter(
                "builds_finished_total",
                "Builds finished, by result (lost workers count as retry)",
                &["builder", "result"],
            ),
            queue_wait: histogram(
                "queue_wait_seconds",
                "From a request accepted to its build claimed",
                &["builder"],
                latency_buckets(),
            ),
            dispatch_latency: histogram(
                "dispatch_latency_seconds",
                "From a request accepted to its first step running",
                &["builder"],
                latency_buckets(),
            ),
            log_bytes_archived: plain_counter("log_bytes_archived_total", "Log bytes archived in Postgres"),
            log_lines_archived: plain_counter("log_lines_archived_total", "Log lines archived in Postgres"),
            reconciler_actions: counter(
                "reconciler_actions_total",
                "What the reconciler did: lease_expired (a build lost its worker), doorbell_rung (again)",
                &["action"],
            ),
            events: counter(
                "events_total",
                "Worker events handled, by outcome: recorded, duplicate, dead_lettered, retried",
                &["outcome"],
            ),
            notifications: counter(
                "notifications_total",
                "Reporters' deliveries by this master, by reporter and outcome: sent, skipped, retried, failed",
                &["reporter", "outcome"],
            ),
            pending_requests: gauge("pending_requests", "Build requests waiting for a worker", &["builder"]),
            doorbells_waiting: gauge(
                "doorbells_waiting",
                "Doorbells in a builder's queue that no worker has taken",
                &["builder"],
            ),
            workers_online: {
                let metric =
                    IntGauge::new("workers_online", "Workers whose presence is fresh in Redis").expect("valid");
                registry.register(Box::new(metric.clone())).expect("registered once");
                metric
            },
            retention_deleted: counter(
                "retention_deleted_total",
                "What retention deleted: log_chunks (log contents), buildsets (with their builds)",
                &["what"],
            ),
            retention_batch: histogram(
                "retention_batch_seconds",
                "Duration of one retention delete transaction",
                &[],
                exponential_buckets(0.001, 2.0, 16).expect("valid buckets"),
            ),
            retention_longest_batch: {
                let metric = prometheus::Gauge::new(
                    "retention_longest_batch_seconds",
                    "The longest retention delete transaction since this master started",
                )
                .expect("valid gauge");
                registry.register(Box::new(metric.clone())).expect("registered once");
                metric
            },
            registry,
        }
    }

    pub fn http(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.http_requests.with_label_values(&[route, method, &status.to_string()]).inc();
        self.http_duration.with_label_values(&[route, method]).observe(took.as_secs_f64());
    }

    pub fn build_started(&self, builder: &str, queue_wait: Duration) {
        self.builds_started.with_label_values(&[builder]).inc();
        self.queue_wait.with_label_values(&[builder]).observe(queue_wait.as_secs_f64());
    }

    pub fn build_finished(&self, builder: &str, result: &str) {
        self.builds_finished.with_label_values(&[builder, result]).inc();
    }

    pub fn first_step_running(&self, builder: &str, since_accepted: Duration) {
        self.dispatch_latency.with_label_values(&[builder]).observe(since_accepted.as_secs_f64());
    }

    pub fn log_archived(&self, bytes: u64, lines: u64) {
        self.log_bytes_archived.inc_by(bytes);
        self.log_lines_archived.inc_by(lines);
    }

    pub fn reconciled(&self, action: &str, count: u64) {
        self.reconciler_actions.with_label_values(&[action]).inc_by(count);
    }

    pub fn retained(&self, what: &str, count: u64) {
        self.retention_deleted.with_label_values(&[what]).inc_by(count);
    }

    /// Records one retention batch's duration; returns it.
    pub fn retention_batch(&self, took: Duration) -> Duration {
        self.retention_batch.with_label_values(&[] as &[&str]).observe(took.as_secs_f64());
        if took.as_secs_f64() > self.retention_longest_batch.get() {
            self.retention_longest_batch.set(took.as_secs_f64());
        }
        took
    }

    pub fn event(&self, outcome: &str) {
        self.events.with_label_values(&[outcome]).inc();
    }

    pub fn notification(&self, reporter: &str, outcome: &str) {
        self.notifications.with_label_values(&[reporter, outcome]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The text exposition, after reading the shared gauges.
pub async fn render(master: &Master) -> String {
    let metrics = &master.metrics;
    let catalog = master.catalog();
    match master.store.pending_by_builder().await {
        Ok(pending) => {
            // Reset and set with no await between: a scrape running at the
            // same time never sees the series gone.
            metrics.pending_requests.reset();
            for (builder, count) in pending {
                metrics.pending_requests.with_label_values(&[builder.as_str()]).set(count);
            }
        }
        Err(error) => tracing::warn!(%error, "metrics: cannot count pending requests"),
    }
    let builders = &catalog.config.master.builders;
    let depths =
        futures_util::future::join_all(builders.iter().map(|b| master.broker.doorbells_waiting(&b.name))).await;
    metrics.doorbells_waiting.reset();
    for (builder, depth) in builders.iter().zip(depths) {
        if let Ok(depth) = depth {
            metrics.doorbells_waiting.with_label_values(&[builder.name.as_str()]).set(i64::from(depth));
        }
    }
    let workers: Vec<_> = catalog.config.settings.workers.iter().map(|w| w.name.clone()).collect();
    if !workers.is_empty() {
        let mut pipe = redis::pipe();
        for worker in &workers {
            pipe.exists(master.namespace.presence_key(worker));
        }
        match pipe.query_async::<Vec<bool>>(&mut master.redis.clone()).await {
            Ok(online) => {
                let count = online.iter().filter(|o| **o).count() as i64;
                metrics.workers_online.set(count);
            }
            Err(error) => tracing::warn!(%error, "metrics: cannot read worker presence"),
        }
    }
    let mut text = Vec::new();
    TextEncoder::new().encode(&metrics.registry.gather(), &mut text).expect("text encoding cannot fail");
    String::from_utf8(text).expect("the text format is UTF-8")
}
