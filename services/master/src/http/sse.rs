//! `/sse`: live events as Server-Sent Events, in Buildbot's protocol, for
//! scripts and dashboards that use it instead of `/ws`. `GET /sse/listen`
//! (optionally with a first path, `/sse/listen/builds/*/*`) opens the
//! stream, whose first event is `handshake` with the client's id; then
//! `GET /sse/add/{id}/{path}` and `/sse/remove/{id}/{path}`, on any master,
//! change what it hears; each event is `event: event` with
//! `{"key": [...], "message": {...}}`. The events are `/ws`'s.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::ApiError;
use super::ws::path_matches;
use crate::Master;

/// Paths one client may hear at once, as on `/ws`.
const MAX_PATHS: usize = 100;

/// `GET /sse`, `GET /sse/listen[/{path}]`.
pub async fn listen(State(master): State<Arc<Master>>, path: Option<Path<String>>) -> Response {
    let Ok(permit) = master.websockets.clone().try_acquire_owned() else {
        return ApiError::TooManyRequests(
            "this master serves as many live-event connections as it may (web.max_websockets); try again later".into(),
        )
        .into_response();
    };
    let consumer = uuid::Uuid::new_v4().to_string();
    if let Err(error) = master.sse_listening(&consumer).await {
        return ApiError::from(error).into_response();
    }
    let mut paths: Vec<String> = path.map(|Path(path)| path.trim_end_matches('/').to_owned()).into_iter().collect();
    paths.retain(|path| !path.is_empty());
    let events = master.live_events.subscribe();
    let controls = master.sse_controls.subscribe();
    let stream = stream(master, consumer, paths, events, controls, permit);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

fn stream(
    master: Arc<Master>,
    consumer: String,
    mut paths: Vec<String>,
    mut events: broadcast::Receiver<Arc<crate::live::LiveEvent>>,
    mut controls: broadcast::Receiver<Arc<crate::live::SseControl>>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream(move |sender| async move {
        let _permit = permit;
        let _gone = Gone { master: master.clone(), consumer: consumer.clone() };
        if sender.send(Event::default().event("handshake").data(consumer.clone())).await.is_err() {
            return;
        }
        let mut renew = tokio::time::interval(Duration::from_secs(crate::live::SSE_CONSUMER_SECONDS / 3));
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    let _ = master.sse_listening(&consumer).await;
                }
                control = controls.recv() => match control {
                    Ok(control) if control.sse == consumer => {
                        if control.add {
                            if !paths.contains(&control.path) && paths.len() < MAX_PATHS {
                                paths.push(control.path.clone());
                            }
                        } else {
                            paths.retain(|path| *path != control.path);
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                event = events.recv() => {
                    let event = match event {
                        Ok(event) => event,
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            let error = json!({ "error": format!("{missed} events missed; reconnect and read the API") });
                            let _ = sender.send(Event::default().event("error").data(error.to_string())).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if !paths.iter().any(|path| path_matches(path, &event.key)) {
                        continue;
                    }
                    let message = serde_json::from_str::<Value>(&event.frame).ok().and_then(|mut frame| frame.get_mut("m").map(Value::take));
                    let key: Vec<&str> = event.key.split('/').collect();
                    let data = json!({ "key": key, "message": message.unwrap_or(Value::Null) });
                    if sender.send(Event::default().event("event").data(data.to_string())).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// Forgets the client in Redis when its stream ends.
struct Gone {
    master: Arc<Master>,
    consumer: String,
}

impl Drop for Gone {
    fn drop(&mut self) {
        let (master, consumer) = (self.master.clone(), std::mem::take(&mut self.consumer));
        tokio::spawn(async move { master.sse_gone(&consumer).await });
    }
}

/// A stream fed by a task through a small channel.
fn async_stream<F, Fut>(body: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(body(sender));
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok(event), receiver))
    })
}

/// `GET /sse/add/{id}/{path}`.
pub async fn add(State(master): State<Arc<Master>>, Path((consumer, path)): Path<(String, String)>) -> Response {
    change(&master, &consumer, true, &path).await
}

/// `GET /sse/remove/{id}/{path}`.
pub async fn remove(State(master): State<Arc<Master>>, Path((consumer, path)): Path<(String, String)>) -> Response {
    change(&master, &consumer, false, &path).await
}

async fn change(master: &Master, consumer: &str, add: bool, path: &str) -> Response {
    let path = path.trim_end_matches('/');
    if path.is_empty() || path.len() > 512 {
        return (StatusCode::BAD_REQUEST, "a path of 1 to 512 characters, e.g. builds/*/*").into_response();
    }
    match master.sse_change(consumer, add, path).await {
        Ok(true) => (StatusCode::OK, "ok").into_response(),
        Ok(false) => (StatusCode::BAD_REQUEST, "unknown uuid").into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}
