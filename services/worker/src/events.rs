//! Publishes what this worker reports to the masters, with publisher
//! confirms: an event counts as sent once RabbitMQ has it in the durable
//! events queue. Events of one build are sent one after the other. The
//! sender outlives connections: while RabbitMQ is away, `send` waits and
//! tries again on the next connection, so running builds keep running.

use std::sync::RwLock;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use shared::names::{EVENTS_ROUTING_KEY, Namespace};
use shared::wire::{self, WorkerEvent};
use tokio_util::sync::CancellationToken;

use crate::WorkerError;

pub struct EventSender {
    channel: RwLock<Option<Channel>>,
    exchange: String,
    /// The RabbitMQ user this worker logs in as, stated on every event.
    user: String,
    /// Once cancelled (the worker is stopping its builds), a send that keeps
    /// failing gives up after `ATTEMPTS_WHEN_STOPPING`; the build's lease then
    /// expires and a master retries it.
    give_up: CancellationToken,
}

const ATTEMPTS_WHEN_STOPPING: u32 = 3;
const LONGEST_WAIT: Duration = Duration::from_secs(5);

impl EventSender {
    pub fn new(namespace: &Namespace, user: &str, give_up: CancellationToken) -> Self {
        Self { channel: RwLock::new(None), exchange: namespace.events_exchange(), user: user.to_owned(), give_up }
    }

    /// Publishes on a new connection from now on.
    pub async fn attach(&self, connection: &Connection) -> Result<(), WorkerError> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        *self.channel.write().expect("event channel lock poisoned") = Some(channel);
        Ok(())
    }

    /// Sends an event, waiting through broker outages.
    pub async fn send(&self, event: &WorkerEvent) -> Result<(), WorkerError> {
        let payload = wire::encode(event);
        let mut delay = Duration::from_millis(100);
        let mut attempts_when_stopping = 0;
        loop {
            let error = match self.publish_once(&payload).await {
                Ok(()) => {
                    crate::metrics::METRICS.events_published.inc();
                    return Ok(());
                }
                Err(error) => error,
            };
            if self.give_up.is_cancelled() {
                attempts_when_stopping += 1;
                if attempts_when_stopping >= ATTEMPTS_WHEN_STOPPING {
                    return Err(error);
                }
            }
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "sending an event failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(LONGEST_WAIT);
        }
    }

    async fn publish_once(&self, payload: &[u8]) -> Result<(), WorkerError> {
        let channel = self.channel.read().expect("event channel lock poisoned").clone();
        let channel = channel.ok_or_else(|| WorkerError::EventRefused("not connected to RabbitMQ".into()))?;
        let confirmation = channel
            .basic_publish(
                self.exchange.clone().into(),
                EVENTS_ROUTING_KEY.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                payload,
                shared::amqp::traced(
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into())
                        .with_user_id(self.user.clone().into()),
                ),
            )
            .await?
            .await?;
        if !confirmation.is_ack() {
            return Err(WorkerError::EventRefused("RabbitMQ answered with a negative confirm".into()));
        }
        if confirmation.take_message().is_some() {
            return Err(WorkerError::EventRefused(
                "no events queue is bound; are the masters running with the same namespace?".into(),
            ));
        }
        Ok(())
    }
}
