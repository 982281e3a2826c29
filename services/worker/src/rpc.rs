//! Requests to the masters over RabbitMQ (hello, claim), answered into this
//! worker's own reply queue. Any master answers; the worker never learns or
//! cares which.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use shared::names::{Namespace, RPC_ROUTING_KEY};
use shared::wire::{self, RpcReply, RpcRequest};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::WorkerError;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<RpcReply>>>>;

pub struct RpcClient {
    channel: Channel,
    exchange: String,
    reply_queue: String,
    /// The RabbitMQ user this worker logs in as, stated on every request.
    user: String,
    pending: Pending,
}

/// Opens a channel and declares one of the worker's own queues on it:
/// exclusive, so a second worker with the same name is refused here, and
/// gone with the connection.
pub(crate) async fn declare_own_queue(
    connection: &Connection,
    queue: &str,
    worker: &str,
) -> Result<lapin::Channel, WorkerError> {
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(|error| WorkerError::from_declare(error, worker))?;
    Ok(channel)
}

impl RpcClient {
    /// Declares the worker's reply queue (exclusive: a second worker with the
    /// same name is refused here) and starts routing replies.
    pub async fn start(
        connection: &Connection,
        namespace: &Namespace,
        worker: &str,
        user: &str,
    ) -> Result<Self, WorkerError> {
        let reply_queue = namespace.worker_reply_queue(worker);
        let channel = declare_own_queue(connection, &reply_queue, worker).await?;
        let mut replies = channel
            .basic_consume(
                reply_queue.clone().into(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        let pending: Pending = Arc::default();
        let routes = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                let Some(id) = delivery.properties.correlation_id().as_ref().map(|id| id.as_str().to_owned()) else {
                    continue;
                };
                let waiter = routes.lock().expect("rpc routes lock poisoned").remove(&id);
                match (waiter, wire::decode::<RpcReply>(&delivery.data)) {
                    (Some(waiter), Ok(reply)) => {
                        let _ = waiter.send(reply);
                    }
                    (None, _) => tracing::debug!(correlation_id = %id, "late reply ignored"),
                    (Some(_), Err(error)) => {
                        tracing::warn!(%error, "unreadable reply from a master")
                    }
                }
            }
        });
        Ok(Self { channel, exchange: namespace.rpc_exchange(), reply_queue, user: user.to_owned(), pending })
    }

    /// Sends a request and waits for its answer, up to `timeout`.
    pub async fn call(&self, request: &RpcRequest, timeout: Duration) -> Result<RpcReply, WorkerError> {
        let id = Uuid::new_v4().to_string();
        let (sender, receiver) = oneshot::channel();
        self.pending.lock().expect("rpc routes lock poisoned").insert(id.clone(), sender);
        let published = self
            .channel
            .basic_publish(
                self.exchange.clone().into(),
                RPC_ROUTING_KEY.into(),
                BasicPublishOptions::default(),
                &wire::encode(request),
                shared::amqp::traced(
                    BasicProperties::default()
                        .with_reply_to(self.reply_queue.clone().into())
                        .with_correlation_id(id.clone().into())
                        .with_content_type("application/json".into())
                        .with_user_id(self.user.clone().into()),
                ),
            )
            .await;
        if let Err(error) = published {
            self.pending.lock().expect("rpc routes lock poisoned").remove(&id);
            return Err(error.into());
        }
        // A reply cannot come over a lost connection: say so at once rather
        // than after the timeout, so the caller can ask again on a new one.
        let lost = async {
            while self.channel.status().connected() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let answer = tokio::select! {
            answer = tokio::time::timeout(timeout, receiver) => answer,
            _ = lost => {
                self.pending.lock().expect("rpc routes lock poisoned").remove(&id);
                return Err(WorkerError::ConnectionLost);
            }
        };
        match answer {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => {
                Err(WorkerError::UnexpectedReply("a master's reply could not be read (see the warning above)".into()))
            }
            Err(_) => {
                self.pending.lock().expect("rpc routes lock poisoned").remove(&id);
                Err(WorkerError::NoAnswer(timeout))
            }
        }
    }
}
