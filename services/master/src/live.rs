//! Live events: what changed (a build started, a step finished, a request
//! was cancelled), pushed to clients of `/ws` on every master. The master
//! where a change happens publishes it on one Redis pub/sub channel; every
//! master relays that channel to its own clients, so a client connected to
//! master A sees what a worker reported through master B.
//!
//! Events are Buildbot's: a key such as `builds/123/finished` and the
//! resource as the REST API serves it. They are a notification channel, not
//! the truth: one lost while Redis restarts is not sent again, and a client
//! that reconnects reads the API for the current state.
//!
//! Whoever changes something only names it ([`Publisher::send`], which
//! never waits); one task per master reads each named item through the read
//! model and publishes it. No HTTP answer, RPC reply or event
//! acknowledgement waits for a live event, and claims and event recording
//! never touch the read pool for one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use shared::ids::{BuildId, BuildRequestId, BuildsetId, LogId, StepId, WorkerId};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::read_model;
use crate::store::resources::{BUILDREQUESTS, BUILDS, BUILDSETS, LOGS, Resource, STEPS, WORKERS};
use crate::{Master, MasterError};

/// One event, as received from the channel.
#[derive(Debug)]
pub struct LiveEvent {
    pub key: String,
    /// `{"k": key, "m": resource}`, ready to send.
    pub frame: String,
}

/// Events a slow client may fall behind by before it is told so and
/// disconnected.
pub const BACKLOG: usize = 1024;

pub fn channel() -> broadcast::Sender<Arc<LiveEvent>> {
    broadcast::Sender::new(BACKLOG)
}

/// A `/sse` client's paths changed, asked on any master: sent on the live
/// channel (after every event published before it), for the master that
/// holds the client's stream.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SseControl {
    pub sse: String,
    pub add: bool,
    pub path: String,
}

pub fn sse_channel() -> broadcast::Sender<Arc<SseControl>> {
    broadcast::Sender::new(BACKLOG)
}

/// How long a `/sse` client is known without its master saying it still
/// listens.
pub const SSE_CONSUMER_SECONDS: u64 = 60;

impl Master {
    /// Notes that `/sse` client `consumer` listens here (again).
    pub async fn sse_listening(&self, consumer: &str) -> redis::RedisResult<()> {
        let key = self.namespace.sse_consumer_key(consumer);
        redis::cmd("SET")
            .arg(&key)
            .arg(&self.name)
            .arg("EX")
            .arg(SSE_CONSUMER_SECONDS)
            .query_async(&mut self.redis.clone())
            .await
    }

    pub async fn sse_gone(&self, consumer: &str) -> redis::RedisResult<()> {
        redis::cmd("DEL").arg(self.namespace.sse_consumer_key(consumer)).query_async(&mut self.redis.clone()).await
    }

    /// Adds or removes a path of `/sse` client `consumer`, wherever it
    /// listens; `false` when no master has it.
    pub async fn sse_change(&self, consumer: &str, add: bool, path: &str) -> redis::RedisResult<bool> {
        let mut redis = self.redis.clone();
        let known: bool =
            redis::cmd("EXISTS").arg(self.namespace.sse_consumer_key(consumer)).query_async(&mut redis).await?;
        if known {
            let control = SseControl { sse: consumer.to_owned(), add, path: path.to_owned() };
            let payload = serde_json::to_string(&control).expect("a control message serializes");
            redis::cmd("PUBLISH").arg(self.namespace.live_channel()).arg(payload).query_async::<()>(&mut redis).await?;
        }
        Ok(known)
    }
}

// --- publishing -----------------------------------------------------------------

/// Something that changed, named by its id and the event (`new`,
/// `finished`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Build(BuildId, &'static str),
    Step(StepId, &'static str),
    Log(LogId, &'static str),
    Request(BuildRequestId, &'static str),
    Buildset(BuildsetId, &'static str),
    Worker(WorkerId, &'static str),
}

/// Changes waiting for the publisher beyond this many are dropped (and
/// counted): live events are best effort, the API is the record.
const WAITING: usize = 4096;

/// Where changes are sent for publishing.
#[derive(Clone)]
pub struct Publisher {
    sender: mpsc::Sender<Change>,
}

/// What the publisher task reads.
pub struct Inbox(mpsc::Receiver<Change>);

impl Publisher {
    pub fn new() -> (Publisher, Inbox) {
        let (sender, receiver) = mpsc::channel(WAITING);
        (Publisher { sender }, Inbox(receiver))
    }

    /// Names a change for live clients; never waits.
    pub fn send(&self, change: Change) {
        if let Err(mpsc::error::TrySendError::Full(change)) = self.sender.try_send(change) {
            tracing::debug!(?change, "live event dropped: the publisher is behind");
        }
    }
}

/// Changes published together at most: what waited while the previous
/// batch was read and published.
const BATCH: usize = 256;

/// Publishes the changes sent until `shutdown`: each item as the API serves
/// it now, under its keys. What waited meanwhile is read in one query per
/// resource and published in one round trip, so under load the cost per
/// change falls instead of the backlog growing.
pub async fn publish(master: Arc<Master>, mut inbox: Inbox, shutdown: CancellationToken) -> Result<(), MasterError> {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            received = inbox.0.recv_many(&mut batch, BATCH) => received,
        };
        if received == 0 {
            return Ok(());
        }
        publish_batch(&master, &batch).await;
        batch.clear();
    }
}

/// The resource a change is about, its id field and the id.
fn item_of(change: Change) -> (&'static Resource, &'static str, i64) {
    match change {
        Change::Build(id, _) => (&BUILDS, "buildid", id.0),
        Change::Step(id, _) => (&STEPS, "stepid", id.0),
        Change::Log(id, _) => (&LOGS, "logid", id.0),
        Change::Request(id, _) => (&BUILDREQUESTS, "buildrequestid", id.0),
        Change::Buildset(id, _) => (&BUILDSETS, "bsid", id.0),
        Change::Worker(id, _) => (&WORKERS, "workerid", i64::from(id.0)),
    }
}

/// The keys a change is published under, given its item.
fn keys_of(change: Change, item: &Value) -> Vec<String> {
    let (_, _, id) = item_of(change);
    match change {
        Change::Build(_, event) => {
            vec![format!("builds/{id}/{event}"), format!("builders/{}/builds/{id}/{event}", number(item, "builderid"))]
        }
        Change::Step(_, event) => {
            vec![format!("steps/{id}/{event}"), format!("builds/{}/steps/{id}/{event}", number(item, "buildid"))]
        }
        Change::Log(_, event) => {
            vec![format!("logs/{id}/{event}"), format!("steps/{}/logs/{id}/{event}", number(item, "stepid"))]
        }
        Change::Request(_, event) => vec![
            format!("buildrequests/{id}/{event}"),
            format!("builders/{}/buildrequests/{id}/{event}", number(item, "builderid")),
        ],
        Change::Buildset(_, event) => vec![format!("buildsets/{id}/{event}")],
        Change::Worker(_, event) => vec![format!("workers/{id}/{event}")],
    }
}

async fn publish_batch(master: &Master, changes: &[Change]) {
    // The items of each resource, read once for the batch (an item named
    // twice is read once: its current state serves both events).
    let mut items: HashMap<(&'static str, i64), Value> = HashMap::new();
    for resource in [&BUILDS, &STEPS, &LOGS, &BUILDREQUESTS, &BUILDSETS, &WORKERS] {
        let mut ids: Vec<i64> = changes
            .iter()
            .map(|change| item_of(*change))
            .filter(|(of, _, _)| std::ptr::eq(*of, resource))
            .map(|(_, _, id)| id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        ids.sort_unstable();
        ids.dedup();
        let (_, id_field, _) = changes
            .iter()
            .map(|change| item_of(*change))
            .find(|(of, _, _)| std::ptr::eq(*of, resource))
            .expect("ids came from a change");
        // Shaped by the API's own listing, so an event's item is what a GET serves.
        match read_model::items(master, resource, id_field, &ids).await {
            Ok(found) => {
                for item in found {
                    items.insert((resource.plural, number(&item, id_field)), item);
                }
            }
            Err(error) => tracing::debug!(%error, resource = resource.plural, "live events not published"),
        }
    }
    let channel = master.namespace.live_channel();
    let mut pipe = redis::pipe();
    for change in changes {
        let (resource, _, id) = item_of(*change);
        let Some(item) = items.get(&(resource.plural, id)) else { continue };
        for key in keys_of(*change, item) {
            pipe.publish(&channel, json!({ "k": key, "m": item }).to_string()).ignore();
        }
    }
    if let Err(error) = pipe.query_async::<()>(&mut master.redis.clone()).await {
        tracing::debug!(%error, changes = changes.len(), "live events not published");
    }
}

fn number(item: &Value, field: &str) -> i64 {
    item.get(field).and_then(Value::as_i64).unwrap_or_default()
}

// --- relaying ------------------------------------------------------------------

/// Relays the channel to this master's clients until `shutdown`,
/// subscribing again (with a pause) whenever the Redis connection drops.
pub async fn relay(master: Arc<Master>, shutdown: CancellationToken) -> Result<(), MasterError> {
    let channel = master.namespace.live_channel();
    loop {
        let subscribed = async {
            let mut pubsub = master.redis_client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            subscribed = subscribed => subscribed,
        };
        match pubsub {
            Ok(mut pubsub) => {
                let mut messages = pubsub.on_message();
                loop {
                    let message = tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        message = messages.next() => message,
                    };
                    let Some(message) = message else { break };
                    let Ok(frame) = message.get_payload::<String>() else { continue };
                    let Ok(event) = serde_json::from_str::<Value>(&frame) else { continue };
                    // No receivers is fine: nobody is watching here.
                    if let Some(key) = event.get("k").and_then(Value::as_str) {
                        let _ = master.live_events.send(Arc::new(LiveEvent { key: key.to_owned(), frame }));
                    } else if let Ok(control) = serde_json::from_value::<SseControl>(event) {
                        let _ = master.sse_controls.send(Arc::new(control));
                    }
                }
                tracing::warn!("live events: Redis subscription ended; subscribing again");
            }
            Err(error) => tracing::warn!(%error, "live events: cannot subscribe to Redis; trying again"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
