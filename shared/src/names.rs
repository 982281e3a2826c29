//! The one place where queue, exchange and Redis key names are made, so
//! masters and workers agree on them by construction. Every name starts with
//! the installation's namespace, so several installations or test runs share
//! one RabbitMQ and one Redis without seeing each other.
//!
//! RabbitMQ topology (masters declare it; workers only use it):
//!
//! - `{ns}.doorbells` (direct): "builder X has work", routed by builder name
//!   to the durable queue `{ns}.builder.{builder}`.
//! - `{ns}.rpc` (direct) → durable queue `{ns}.rpc`: workers' hello and claim
//!   requests, answered by any master into the worker's reply queue
//!   `{ns}.worker.{worker}.replies`.
//! - `{ns}.events` (direct) → durable queue `{ns}.events`: what workers report.
//! - `{ns}.control` (direct): control messages (stop a build, pause,
//!   shut down), routed by worker name to the
//!   worker's queue `{ns}.worker.{worker}.control`.
//! - `{ns}.dead-letter` (fanout) → `{ns}.dead-letter`: messages masters could
//!   not read, kept for people to look at.
//!
//! Redis keys: `{ns}:worker:{worker}:log:{build}:{step}:{log}` (one stream per
//! log), `{ns}:worker:{worker}:presence`, and the pub/sub channel
//! `{ns}:live` (changes, for live clients); everything a worker writes sits
//! under its own prefix, so a per-worker ACL can be one key pattern.

/// A validated namespace prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(String);

impl Namespace {
    /// `prefix` must already be valid (settings validation checks it).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self(prefix.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn doorbell_exchange(&self) -> String {
        format!("{}.doorbells", self.0)
    }

    pub fn builder_queue(&self, builder: &str) -> String {
        format!("{}.builder.{builder}", self.0)
    }

    pub fn rpc_exchange(&self) -> String {
        format!("{}.rpc", self.0)
    }

    pub fn rpc_queue(&self) -> String {
        format!("{}.rpc", self.0)
    }

    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.0)
    }

    pub fn events_queue(&self) -> String {
        format!("{}.events", self.0)
    }

    pub fn control_exchange(&self) -> String {
        format!("{}.control", self.0)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead-letter", self.0)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.0)
    }

    pub fn worker_control_queue(&self, worker: &str) -> String {
        format!("{}.worker.{worker}.control", self.0)
    }

    pub fn worker_reply_queue(&self, worker: &str) -> String {
        format!("{}.worker.{worker}.replies", self.0)
    }

    /// The Redis stream holding one log of one step while it is written.
    pub fn log_stream_key(&self, worker: &str, build_id: i64, step_number: i32, log_slug: &str) -> String {
        format!("{}:worker:{worker}:log:{build_id}:{step_number}:{log_slug}", self.0)
    }

    /// The Redis key that exists while a worker is online.
    pub fn presence_key(&self, worker: &str) -> String {
        format!("{}:worker:{worker}:presence", self.0)
    }

    /// The Redis pub/sub channel through which masters share what changed,
    /// for the clients of `/ws` on every master.
    pub fn live_channel(&self) -> String {
        format!("{}:live", self.0)
    }

    /// The Redis key pattern of everything one worker may write.
    pub fn worker_key_pattern(&self, worker: &str) -> String {
        format!("{}:worker:{worker}:*", self.0)
    }
}

/// Routing keys on the RPC and events exchanges.
pub const RPC_ROUTING_KEY: &str = "rpc";
pub const EVENTS_ROUTING_KEY: &str = "events";

/// Field names of the entries of a log stream.
pub const LOG_FIELD_CHANNEL: &str = "c";
pub const LOG_FIELD_DATA: &str = "d";
