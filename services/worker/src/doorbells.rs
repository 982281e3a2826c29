//! The doorbells a worker listens to: one consumer per builder it may take a
//! build of now, all on one channel that lives as long as the connection.
//!
//! Which builders those are changes with every build (a worker runs one
//! build of a builder at a time) and whenever it is at capacity. Starting
//! and stopping a consumer costs RabbitMQ little; a channel opened and
//! closed for each build cost it more CPU than the build itself.
//!
//! Each consumer holds at most one doorbell (a prefetch of one per
//! consumer), so a worker never keeps doorbells it cannot act on from
//! other workers, and a stopped consumer hands back what it was sent.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use shared::ids::BuilderName;
use shared::names::Namespace;

use crate::WorkerError;

pub struct Doorbells {
    channel: Channel,
    consumers: BTreeMap<BuilderName, Consumer>,
}

impl Doorbells {
    pub async fn open(connection: &Connection) -> Result<Self, WorkerError> {
        let channel = connection.create_channel().await?;
        channel.basic_qos(1, BasicQosOptions { global: false }).await?;
        Ok(Self { channel, consumers: BTreeMap::new() })
    }

    /// Listens to exactly `wanted`: stops the other consumers and starts
    /// the missing ones.
    pub async fn listen_to(&mut self, namespace: &Namespace, wanted: &[BuilderName]) -> Result<(), WorkerError> {
        let unwanted: Vec<BuilderName> =
            self.consumers.keys().filter(|builder| !wanted.contains(builder)).cloned().collect();
        for builder in &unwanted {
            self.stop(builder).await?;
        }
        for builder in wanted {
            if !self.consumers.contains_key(builder) {
                let consumer = self
                    .channel
                    .basic_consume(
                        namespace.builder_queue(builder).into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                self.consumers.insert(builder.clone(), consumer);
            }
        }
        Ok(())
    }

    /// Stops listening to one builder, handing back a doorbell it was sent
    /// meanwhile: RabbitMQ sends what it sent before the cancel first, then
    /// the end of the consumer.
    pub async fn stop(&mut self, builder: &BuilderName) -> Result<(), WorkerError> {
        let Some(mut consumer) = self.consumers.remove(builder) else {
            return Ok(());
        };
        self.channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await?;
        while let Some(delivery) = consumer.next().await {
            delivery?.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
        }
        Ok(())
    }

    /// The next doorbell of any builder listened to (pending while there
    /// is none); `None` when RabbitMQ ended a consumer (its queue is gone).
    pub async fn next(&mut self) -> Option<Result<Delivery, lapin::Error>> {
        if self.consumers.is_empty() {
            return std::future::pending().await;
        }
        let next = self.consumers.values_mut().map(|consumer| consumer.next());
        futures_util::future::select_all(next).await.0
    }

    /// Closes the channel: RabbitMQ hands back whatever was not acked.
    pub async fn close(self, reason: &str) {
        let _ = self.channel.close(200, reason.into()).await;
    }
}
