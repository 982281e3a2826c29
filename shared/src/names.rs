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
//! - control messages (stop a build, pause, shut down) go through the
//!   default exchange straight to the worker's exclusive queue
//!   `{ns}.worker.{worker}.control`, so a worker binds nothing and may read
//!   no exchange.
//! - `{ns}.dead-letter` (fanout) → `{ns}.dead-letter`: messages masters could
//!   not read, kept for people to look at.
//!
//! Redis keys: `{ns}:worker:{worker}:log:{build}:{step}:{log}` (one stream per
//! log), `{ns}:worker:{worker}:presence`, and the pub/sub channel
//! `{ns}:live` (changes, for live clients); everything a worker writes sits
//! under its own prefix, so a per-worker ACL can be one key pattern.
//!
//! Accounts: a worker's own RabbitMQ user and Redis ACL user are both
//! `{ns}.worker.{worker}`; `worker_permissions` says what it may touch.

use crate::ids::BuildId;

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
    pub fn log_stream_key(&self, worker: &str, build_id: BuildId, step_number: i32, log_slug: &str) -> String {
        format!("{}:worker:{worker}:log:{build_id}:{step_number}:{log_slug}", self.0)
    }

    /// The Redis stream carrying one file a step sent (test results, an
    /// artifact) from its worker to the masters; `index` is the file's
    /// position among the step's files.
    pub fn file_stream_key(&self, worker: &str, build_id: BuildId, step_number: i32, index: u32) -> String {
        format!("{}:worker:{worker}:file:{build_id}:{step_number}:{index}", self.0)
    }

    /// The Redis key holding how many lines the log stream `stream_key`
    /// holds (a last line not yet ended counts), written by the worker with
    /// each batch: the last lines of a running log are found without
    /// reading it all.
    pub fn log_lines_key(stream_key: &str) -> String {
        format!("{stream_key}:lines")
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

    /// The Redis key that exists while a `/sse` client is listening (any
    /// master may be asked to add a path to it).
    pub fn sse_consumer_key(&self, consumer: &str) -> String {
        format!("{}:sse:{consumer}", self.0)
    }

    /// The Redis key pattern of everything one worker may write.
    pub fn worker_key_pattern(&self, worker: &str) -> String {
        format!("{}:worker:{worker}:*", self.0)
    }

    /// The RabbitMQ and Redis user a worker logs in as.
    pub fn worker_account(&self, worker: &str) -> String {
        format!("{}{worker}", self.worker_account_prefix())
    }

    /// What every worker account of this namespace starts with (namespaces
    /// hold no `.`, so no other namespace's accounts share it).
    pub fn worker_account_prefix(&self) -> String {
        format!("{}.worker.", self.0)
    }

    /// A worker account's RabbitMQ permissions (regular expressions over
    /// resource names): it may declare its own reply and control queues,
    /// publish to the RPC and events exchanges, and read its own queues and
    /// the doorbell queues of the builders it serves. Nothing else.
    pub fn worker_permissions(&self, worker: &str, builders: &[&str]) -> WorkerPermissions {
        let own_queues = format!(
            "{}|{}",
            regex_literal(&self.worker_reply_queue(worker)),
            regex_literal(&self.worker_control_queue(worker))
        );
        let exchanges = format!("{}|{}", regex_literal(&self.rpc_exchange()), regex_literal(&self.events_exchange()));
        let doorbells: Vec<String> =
            builders.iter().map(|builder| regex_literal(&self.builder_queue(builder))).collect();
        let readable =
            if doorbells.is_empty() { own_queues.clone() } else { format!("{own_queues}|{}", doorbells.join("|")) };
        WorkerPermissions {
            configure: format!("^({own_queues})$"),
            write: format!("^({exchanges})$"),
            read: format!("^({readable})$"),
        }
    }
}

/// RabbitMQ permissions of one user in one virtual host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPermissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// `text` as a regular expression matching exactly it: every character
/// but letters and digits escaped (builder names may hold `.`, `(`, spaces).
fn regex_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() && c.is_ascii() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Routing keys on the RPC and events exchanges.
pub const RPC_ROUTING_KEY: &str = "rpc";
pub const EVENTS_ROUTING_KEY: &str = "events";

/// Field names of the entries of a log stream.
pub const LOG_FIELD_CHANNEL: &str = "c";
pub const LOG_FIELD_DATA: &str = "d";
