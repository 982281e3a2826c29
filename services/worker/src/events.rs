//! Publishes what this worker reports to the masters, with publisher
//! confirms: an event counts as sent once RabbitMQ has it in the durable
//! events queue. Events of one build are sent one after the other.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use shared::names::{EVENTS_ROUTING_KEY, Namespace};
use shared::wire::{self, WorkerEvent};

use crate::WorkerError;

pub struct EventSender {
    channel: Channel,
    exchange: String,
}

const ATTEMPTS: u32 = 5;

impl EventSender {
    pub async fn start(connection: &Connection, namespace: &Namespace) -> Result<Self, WorkerError> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { channel, exchange: namespace.events_exchange() })
    }

    /// Sends an event, trying again a few times if RabbitMQ refuses it.
    pub async fn send(&self, event: &WorkerEvent) -> Result<(), WorkerError> {
        let payload = wire::encode(event);
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.publish_once(&payload).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt >= ATTEMPTS => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, attempt, "sending an event failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
            }
        }
    }

    async fn publish_once(&self, payload: &[u8]) -> Result<(), WorkerError> {
        let confirmation = self
            .channel
            .basic_publish(
                self.exchange.clone().into(),
                EVENTS_ROUTING_KEY.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                payload,
                BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into()),
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
