//! `/ws`: live events for browsers and scripts, in Buildbot's protocol. The
//! events come from `live` (relayed from Redis, so a client of any master
//! sees every master's changes); this module only speaks the protocol.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::ApiError;
use crate::Master;
use crate::live::LiveEvent;

/// `GET /ws`: Buildbot's protocol. The client sends
/// `{"cmd": "startConsuming", "path": "builds/*/*", "_id": 1}` (or
/// `stopConsuming`, or `ping`) and is answered `{"_id": 1, "code": 200}`;
/// then every event whose key matches one of its paths arrives as
/// `{"k": "builds/7/new", "m": {...}}`. `*` matches one segment.
pub async fn websocket(State(master): State<Arc<Master>>, upgrade: WebSocketUpgrade) -> Response {
    let Ok(permit) = master.websockets.clone().try_acquire_owned() else {
        return ApiError::TooManyRequests(
            "this master serves as many live-event connections as it may (web.max_websockets); try again later".into(),
        )
        .into_response();
    };
    let events = master.live_events.subscribe();
    upgrade.on_upgrade(move |socket| async move {
        serve_socket(socket, events).await;
        drop(permit);
    })
}

/// Paths one connection may consume at once.
const MAX_PATHS: usize = 100;

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
        (Some("startConsuming"), Some(path)) if path.len() > 512 => {
            json!({ "_id": id, "code": 400, "error": "a path has at most 512 characters" })
        }
        (Some("startConsuming"), Some(path)) => {
            if paths.iter().any(|p| p == path) {
                return json!({ "_id": id, "code": 200 });
            }
            if paths.len() >= MAX_PATHS {
                return json!({ "_id": id, "code": 400, "error": format!("at most {MAX_PATHS} paths per connection; stopConsuming one first") });
            }
            paths.push(path.to_owned());
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
pub(super) fn path_matches(path: &str, key: &str) -> bool {
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
