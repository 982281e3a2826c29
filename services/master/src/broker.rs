//! The master's side of RabbitMQ: the topology it declares, and the few
//! things it publishes (doorbells, RPC replies, control messages).
//!
//! Masters own the topology: they declare every exchange and durable queue
//! (workers only use them), so a worker with narrow permissions never needs
//! to configure anything but its own reply and control queues.

use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Serialize;
use shared::names::{EVENTS_ROUTING_KEY, Namespace, RPC_ROUTING_KEY};
use shared::wire::{self, ControlMessage, Doorbell};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not accept the message for `{0}` (negative confirm)")]
    Nacked(String),
    #[error("no queue is bound for `{0}`: the message was returned unroutable")]
    Unroutable(String),
}

/// Persistent delivery: the message survives a broker restart with its queue.
const PERSISTENT: u8 = 2;

pub struct Broker {
    connection: Connection,
    /// Publishes that need a confirm (doorbells, control messages).
    confirmed: Channel,
    /// Publishes whose loss is covered by a retry on the other side (replies).
    unconfirmed: Channel,
    namespace: Namespace,
}

impl Broker {
    pub async fn connect(url: &str, namespace: Namespace, connection_name: &str) -> Result<Broker, BrokerError> {
        let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
        let connection = Connection::connect(url, properties).await?;
        let confirmed = connection.create_channel().await?;
        confirmed.confirm_select(ConfirmSelectOptions::default()).await?;
        let unconfirmed = connection.create_channel().await?;
        Ok(Broker { connection, confirmed, unconfirmed, namespace })
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// A fresh channel for a consumer, with its prefetch.
    pub async fn consumer_channel(&self, prefetch: u16) -> Result<Channel, BrokerError> {
        let channel = self.connection.create_channel().await?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        Ok(channel)
    }

    /// Declares every exchange and queue, including one durable queue per
    /// builder. Idempotent; run at start and whenever builders change.
    pub async fn declare_topology(&self, builders: &[String]) -> Result<(), BrokerError> {
        let ns = &self.namespace;
        let channel = self.connection.create_channel().await?;
        let durable_exchange = ExchangeDeclareOptions { durable: true, ..Default::default() };
        for exchange in [ns.doorbell_exchange(), ns.rpc_exchange(), ns.events_exchange(), ns.control_exchange()] {
            channel
                .exchange_declare(exchange.into(), ExchangeKind::Direct, durable_exchange, FieldTable::default())
                .await?;
        }
        channel
            .exchange_declare(
                ns.dead_letter_exchange().into(),
                ExchangeKind::Fanout,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        let durable_queue = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(ns.dead_letter_queue().into(), durable_queue, FieldTable::default()).await?;
        channel
            .queue_bind(
                ns.dead_letter_queue().into(),
                ns.dead_letter_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut dead_lettered = FieldTable::default();
        dead_lettered.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(ns.dead_letter_exchange())),
        );
        for (queue, exchange, routing_key) in [
            (ns.rpc_queue(), ns.rpc_exchange(), RPC_ROUTING_KEY),
            (ns.events_queue(), ns.events_exchange(), EVENTS_ROUTING_KEY),
        ] {
            channel.queue_declare(queue.clone().into(), durable_queue, dead_lettered.clone()).await?;
            channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        for builder in builders {
            let queue = ns.builder_queue(builder);
            channel.queue_declare(queue.clone().into(), durable_queue, FieldTable::default()).await?;
            channel
                .queue_bind(
                    queue.into(),
                    ns.doorbell_exchange().into(),
                    builder.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        channel.close(200, "topology declared".into()).await?;
        Ok(())
    }

    /// Tells the workers of `builder` that it has work, and waits until
    /// RabbitMQ has the doorbell safely in the builder's queue.
    pub async fn ring(&self, builder: &str, buildrequest_id: i64) -> Result<(), BrokerError> {
        let doorbell = Doorbell::Ring { builder: builder.to_owned(), buildrequest_id };
        self.publish_confirmed(&self.namespace.doorbell_exchange(), builder, &doorbell).await
    }

    /// Sends a control message (e.g. stop a build) to one worker.
    pub async fn send_control(&self, worker: &str, message: &ControlMessage) -> Result<(), BrokerError> {
        self.publish_confirmed(&self.namespace.control_exchange(), worker, message).await
    }

    async fn publish_confirmed<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &T,
    ) -> Result<(), BrokerError> {
        let confirmation = self
            .confirmed
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &wire::encode(body),
                BasicProperties::default().with_delivery_mode(PERSISTENT).with_content_type("application/json".into()),
            )
            .await?
            .await?;
        let target = format!("{exchange}/{routing_key}");
        if !confirmation.is_ack() {
            return Err(BrokerError::Nacked(target));
        }
        if confirmation.take_message().is_some() {
            return Err(BrokerError::Unroutable(target));
        }
        Ok(())
    }

    /// Answers a worker's RPC request into its reply queue.
    pub async fn reply<T: Serialize>(&self, reply_to: &str, correlation_id: &str, body: &T) -> Result<(), BrokerError> {
        self.unconfirmed
            .basic_publish(
                "".into(),
                reply_to.into(),
                BasicPublishOptions::default(),
                &wire::encode(body),
                BasicProperties::default()
                    .with_correlation_id(correlation_id.into())
                    .with_content_type("application/json".into()),
            )
            .await?;
        Ok(())
    }

    /// How many doorbells wait in a builder's queue.
    pub async fn doorbells_waiting(&self, builder: &str) -> Result<u32, BrokerError> {
        let channel = self.connection.create_channel().await?;
        let queue = channel
            .queue_declare(
                self.namespace.builder_queue(builder).into(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        let waiting = queue.message_count();
        let _ = channel.close(200, "done".into()).await;
        Ok(waiting)
    }

    pub async fn close(&self) {
        let _ = self.connection.close(200, "master shutting down".into()).await;
    }
}
