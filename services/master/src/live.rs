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

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::http::reads;
use crate::store::resources::{BUILDREQUESTS, BUILDS, BUILDSETS, LOGS, Resource, STEPS, Scalar, WORKERS};
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

// --- publishing -----------------------------------------------------------------

/// Publishes the current state of one item of `resource` under each of the
/// keys `keys(item)` gives, and returns the item. Best effort: a failure is
/// logged, never returned, because the change it announces is already
/// committed.
async fn publish(
    master: &Master,
    resource: &'static Resource,
    id_field: &str,
    id: i64,
    keys: impl Fn(&Value) -> Vec<String>,
) -> Option<Value> {
    let scope = vec![reads::by(resource, id_field, Scalar::Int(id))];
    // Shaped by the API's own lookup, so an event's item is what a GET serves.
    let item = match reads::lookup(master, resource, &[], scope).await {
        Ok(Some(item)) => item,
        Ok(None) => return None,
        Err(error) => {
            tracing::debug!(%error, resource = resource.plural, id, "live event not published");
            return None;
        }
    };
    let channel = master.namespace.live_channel();
    let mut pipe = redis::pipe();
    for key in keys(&item) {
        pipe.publish(&channel, json!({ "k": key, "m": &item }).to_string()).ignore();
    }
    if let Err(error) = pipe.query_async::<()>(&mut master.redis.clone()).await {
        tracing::debug!(%error, resource = resource.plural, id, "live event not published");
    }
    Some(item)
}

fn number(item: &Value, field: &str) -> i64 {
    item.get(field).and_then(Value::as_i64).unwrap_or_default()
}

/// `builds/{id}/{event}` and `builders/{builderid}/builds/{id}/{event}`.
pub async fn publish_build(master: &Master, build_id: i64, event: &str) -> Option<Value> {
    publish(master, &BUILDS, "buildid", build_id, |build| {
        vec![
            format!("builds/{build_id}/{event}"),
            format!("builders/{}/builds/{build_id}/{event}", number(build, "builderid")),
        ]
    })
    .await
}

/// `steps/{id}/{event}` and `builds/{buildid}/steps/{id}/{event}`.
pub async fn publish_step(master: &Master, step_id: i64, event: &str) -> Option<Value> {
    publish(master, &STEPS, "stepid", step_id, |step| {
        vec![format!("steps/{step_id}/{event}"), format!("builds/{}/steps/{step_id}/{event}", number(step, "buildid"))]
    })
    .await
}

/// `logs/{id}/{event}` and `steps/{stepid}/logs/{id}/{event}`.
pub async fn publish_log(master: &Master, log_id: i64, event: &str) -> Option<Value> {
    publish(master, &LOGS, "logid", log_id, |log| {
        vec![format!("logs/{log_id}/{event}"), format!("steps/{}/logs/{log_id}/{event}", number(log, "stepid"))]
    })
    .await
}

/// `buildrequests/{id}/{event}` and `builders/{builderid}/buildrequests/{id}/{event}`.
pub async fn publish_request(master: &Master, request_id: i64, event: &str) -> Option<Value> {
    publish(master, &BUILDREQUESTS, "buildrequestid", request_id, |request| {
        vec![
            format!("buildrequests/{request_id}/{event}"),
            format!("builders/{}/buildrequests/{request_id}/{event}", number(request, "builderid")),
        ]
    })
    .await
}

pub async fn publish_buildset(master: &Master, buildset_id: i64, event: &str) -> Option<Value> {
    publish(master, &BUILDSETS, "bsid", buildset_id, |_| vec![format!("buildsets/{buildset_id}/{event}")]).await
}

pub async fn publish_worker(master: &Master, worker_id: i32, event: &str) -> Option<Value> {
    let id = i64::from(worker_id);
    publish(master, &WORKERS, "workerid", id, |_| vec![format!("workers/{id}/{event}")]).await
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
                    let key = serde_json::from_str::<Value>(&frame)
                        .ok()
                        .and_then(|event| event.get("k").and_then(Value::as_str).map(str::to_owned));
                    if let Some(key) = key {
                        // No receivers is fine: nobody is watching here.
                        let _ = master.live.send(Arc::new(LiveEvent { key, frame }));
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

// --- the WebSocket ---------------------------------------------------------------

/// `GET /ws`: Buildbot's protocol. The client sends
/// `{"cmd": "startConsuming", "path": "builds/*/*", "_id": 1}` (or
/// `stopConsuming`, or `ping`) and is answered `{"_id": 1, "code": 200}`;
/// then every event whose key matches one of its paths arrives as
/// `{"k": "builds/7/new", "m": {...}}`. `*` matches one segment.
pub async fn websocket(State(master): State<Arc<Master>>, upgrade: WebSocketUpgrade) -> Response {
    let events = master.live.subscribe();
    upgrade.on_upgrade(move |socket| serve_socket(socket, events))
}

async fn serve_socket(mut socket: WebSocket, mut events: broadcast::Receiver<Arc<LiveEvent>>) {
    let mut paths: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            frame = socket.recv() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                let answer = answer_command(&text, &mut paths);
                if socket.send(Message::Text(answer.to_string().into())).await.is_err() {
                    return;
                }
            }
            event = events.recv() => {
                let event = match event {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        // The client cannot keep up: say so and close, so it
                        // reconnects and reads the current state.
                        let error = json!({ "error": format!("{missed} events missed; reconnect and read the API") });
                        let _ = socket.send(Message::Text(error.to_string().into())).await;
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if paths.iter().any(|path| path_matches(path, &event.key))
                    && socket.send(Message::Text(event.frame.clone().into())).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

fn answer_command(text: &str, paths: &mut Vec<String>) -> Value {
    let Ok(command) = serde_json::from_str::<Value>(text) else {
        return json!({ "_id": null, "code": 400, "error": "a command is a JSON object" });
    };
    let id = command.get("_id").cloned().unwrap_or(Value::Null);
    let path = command.get("path").and_then(Value::as_str);
    match (command.get("cmd").and_then(Value::as_str), path) {
        (Some("startConsuming"), Some(path)) => {
            if !paths.iter().any(|p| p == path) {
                paths.push(path.to_owned());
            }
            json!({ "_id": id, "code": 200 })
        }
        (Some("stopConsuming"), Some(path)) => {
            paths.retain(|p| p != path);
            json!({ "_id": id, "code": 200 })
        }
        (Some("ping"), _) => json!({ "_id": id, "code": 200 }),
        (Some("startConsuming" | "stopConsuming"), None) => {
            json!({ "_id": id, "code": 400, "error": "`path` is missing" })
        }
        (other, _) => json!({
            "_id": id,
            "code": 404,
            "error": format!("unknown command {other:?}; use startConsuming, stopConsuming or ping"),
        }),
    }
}

/// `builds/*/*` matches `builds/7/new`; segments must be as many.
fn path_matches(path: &str, key: &str) -> bool {
    let mut wanted = path.split('/');
    let mut actual = key.split('/');
    loop {
        match (wanted.next(), actual.next()) {
            (None, None) => return true,
            (Some(w), Some(a)) if w == "*" || w == a => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_segment_by_segment() {
        assert!(path_matches("builds/*/*", "builds/7/new"));
        assert!(path_matches("builders/3/builds/*/finished", "builders/3/builds/9/finished"));
        assert!(!path_matches("builders/3/builds/*/finished", "builders/4/builds/9/finished"));
        assert!(!path_matches("builds/*", "builds/7/new"), "segment counts differ");
        assert!(!path_matches("builds/*/*/*", "builds/7/new"));
    }

    #[test]
    fn commands_are_answered_with_their_id() {
        let mut paths = Vec::new();
        let start = answer_command(r#"{"cmd": "startConsuming", "path": "builds/*/*", "_id": 1}"#, &mut paths);
        assert_eq!(start, json!({ "_id": 1, "code": 200 }));
        assert_eq!(paths, ["builds/*/*"]);
        answer_command(r#"{"cmd": "stopConsuming", "path": "builds/*/*", "_id": 2}"#, &mut paths);
        assert!(paths.is_empty());
        assert_eq!(answer_command(r#"{"cmd": "nope", "_id": 3}"#, &mut paths)["code"], 404);
        assert_eq!(answer_command("not json", &mut paths)["code"], 400);
    }
}
