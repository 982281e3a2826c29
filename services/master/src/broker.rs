//! The master's side of RabbitMQ: the topology it declares, and the few
//! things it publishes (doorbells, RPC replies, control messages).
//!
//! Masters own the topology: they declare every exchange and durable queue
//! (workers only use them), so a worker with narrow permissions never needs
//! to configure anything but its own reply and control queues. The broker
//! may go away at any time: `Broker::supervise` reconnects and declares the
//! topology again, and `Broker::consume` starts consuming again on the new
//! connection; what was published meanwhile is made good by the reconciler.

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use serde::Serialize;
use shared::ids::{BuildRequestId, BuilderName, WorkerName};
use shared::names::{EVENTS_ROUTING_KEY, Namespace, RPC_ROUTING_KEY};
use shared::wire::{self, ControlMessage, Doorbell};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid RabbitMQ URL (amqp_url in settings.yaml): {0}")]
    BadUrl(String),
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
    url: String,
    namespace: Namespace,
    connection_name: String,
    /// The current connection and its publishing channels, replaced whole
    /// when the connection is lost.
    link: RwLock<Arc<Link>>,
    /// Bumped after each reconnection, so consumers know to consume again.
    generation: watch::Sender<u64>,
    /// The builders whose queues must exist, declared again after a reconnection
    /// (the broker may have lost them).
    builders: Mutex<Vec<BuilderName>>,
}

struct Link {
    connection: Connection,
    /// Publishes that need a confirm (doorbells, control messages).
    confirmed: Channel,
    /// Publishes whose loss is covered by a retry on the other side (replies).
    unconfirmed: Channel,
    opened_at: std::time::Instant,
}

impl Link {
    async fn open(url: &str, connection_name: &str) -> Result<Link, BrokerError> {
        let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
        let uri = shared::amqp::uri(url).map_err(BrokerError::BadUrl)?;
        let connection = Connection::connect_uri(uri, properties).await?;
        let confirmed = connection.create_channel().await?;
        confirmed.confirm_select(ConfirmSelectOptions::default()).await?;
        let unconfirmed = connection.create_channel().await?;
        Ok(Link { connection, confirmed, unconfirmed, opened_at: std::time::Instant::now() })
    }

    fn is_usable(&self) -> bool {
        self.connection.status().connected()
            && self.confirmed.status().connected()
            && self.unconfirmed.status().connected()
    }
}

/// How often the link is checked.
const LINK_CHECK: Duration = Duration::from_millis(250);

impl Broker {
    pub async fn connect(url: &str, namespace: Namespace, connection_name: &str) -> Result<Broker, BrokerError> {
        let link = Link::open(url, connection_name).await?;
        Ok(Broker {
            url: url.to_owned(),
            namespace,
            connection_name: connection_name.to_owned(),
            link: RwLock::new(Arc::new(link)),
            generation: watch::Sender::new(0),
            builders: Mutex::new(Vec::new()),
        })
    }

    fn link(&self) -> Arc<Link> {
        self.link.read().expect("broker link lock poisoned").clone()
    }

    pub fn is_connected(&self) -> bool {
        self.link().is_usable()
    }

    /// How long the current connection has been up; `None` while there is
    /// none.
    pub fn connected_for(&self) -> Option<std::time::Duration> {
        let link = self.link();
        link.is_usable().then(|| link.opened_at.elapsed())
    }

    /// Watches the connection; when it breaks, reconnects with backoff and
    /// jitter, declares the topology again, and lets consumers start over.
    /// Meanwhile `/healthz` fails, so HAProxy sends requests elsewhere.
    pub async fn supervise(&self, shutdown: CancellationToken) {
        let mut backoff = shared::amqp::Backoff::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(LINK_CHECK) => {}
            }
            if self.is_connected() {
                backoff.reset();
                continue;
            }
            tracing::warn!("connection to RabbitMQ lost; reconnecting");
            loop {
                match self.reconnect().await {
                    Ok(()) => break,
                    Err(error) => {
                        let wait = backoff.next_wait();
                        tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "cannot reconnect to RabbitMQ");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
            tracing::info!("reconnected to RabbitMQ");
        }
    }

    async fn reconnect(&self) -> Result<(), BrokerError> {
        let link = Arc::new(Link::open(&self.url, &self.connection_name).await?);
        let builders = self.builders.lock().expect("builders lock poisoned").clone();
        declare(&link.connection, &self.namespace, &builders).await?;
        *self.link.write().expect("broker link lock poisoned") = link;
        self.generation.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// Consumes `queue` on every connection the broker has, one after the
    /// other, until `shutdown`; each delivery is handled in its own task, at
    /// most `concurrency` at once. Returns after the handlers in flight end.
    pub async fn consume<F, Fut>(&self, queue: &str, concurrency: usize, shutdown: &CancellationToken, handle: F)
    where
        F: Fn(Delivery) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let limit = Arc::new(Semaphore::new(concurrency));
        let mut generations = self.generation.subscribe();
        while !shutdown.is_cancelled() {
            generations.mark_unchanged();
            match self.open_consumer(queue, concurrency).await {
                Ok(mut deliveries) => loop {
                    let delivery = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        delivery = deliveries.next() => delivery,
                    };
                    let Some(Ok(delivery)) = delivery else {
                        tracing::warn!(queue, "consumer stopped; waiting for the connection to come back");
                        break;
                    };
                    let permit = limit.clone().acquire_owned().await.expect("semaphore never closes");
                    let handling = handle(delivery);
                    tokio::spawn(async move {
                        handling.await;
                        drop(permit);
                    });
                },
                Err(error) => tracing::warn!(%error, queue, "cannot consume; waiting for the connection to come back"),
            }
            // A new connection, or a second try on the same one when only
            // this consumer's channel was closed.
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = generations.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let _ = limit.acquire_many(concurrency as u32).await;
    }

    async fn open_consumer(&self, queue: &str, prefetch: usize) -> Result<Consumer, BrokerError> {
        let channel = self.link().connection.create_channel().await?;
        channel.basic_qos(prefetch.min(u16::MAX as usize) as u16, BasicQosOptions::default()).await?;
        Ok(channel
            .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?)
    }

    /// Declares every exchange and queue, including one durable queue per
    /// builder, and remembers them for reconnections. Idempotent; run at
    /// start and whenever builders change.
    pub async fn declare_topology(&self, builders: &[BuilderName]) -> Result<(), BrokerError> {
        *self.builders.lock().expect("builders lock poisoned") = builders.to_vec();
        declare(&self.link().connection, &self.namespace, builders).await
    }

    /// Tells the workers of `builder` that it has work, and waits until
    /// RabbitMQ has the doorbell safely in the builder's queue. The doorbell
    /// continues the request's trace (`traceparent`, else the current span).
    pub async fn ring(
        &self,
        builder: &BuilderName,
        buildrequest_id: BuildRequestId,
        traceparent: Option<&str>,
    ) -> Result<(), BrokerError> {
        let exchange = self.namespace.doorbell_exchange();
        let span = tracing::info_span!(
            "publish",
            otel.name = format!("publish {exchange}"),
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.destination.name = %exchange,
            messaging.rabbitmq.destination.routing_key = %builder,
            buildrequest.id = %buildrequest_id,
        );
        shared::telemetry::continue_from(&span, traceparent);
        let doorbell = Doorbell::Ring { builder: builder.clone(), buildrequest_id: Some(buildrequest_id) };
        self.publish_confirmed(&exchange, builder.as_str(), &doorbell).instrument(span).await
    }

    /// Sends a control message (e.g. stop a build) to one worker, through
    /// the default exchange into its control queue; a worker not connected
    /// has none, and the message is unroutable.
    pub async fn send_control(&self, worker: &WorkerName, message: &ControlMessage) -> Result<(), BrokerError> {
        self.publish_confirmed("", &self.namespace.worker_control_queue(worker.as_str()), message).await
    }

    async fn publish_confirmed<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &T,
    ) -> Result<(), BrokerError> {
        let confirmation = self
            .link()
            .confirmed
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &wire::encode(body),
                shared::amqp::traced(
                    BasicProperties::default()
                        .with_delivery_mode(PERSISTENT)
                        .with_content_type("application/json".into()),
                ),
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
        self.link()
            .unconfirmed
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
    pub async fn doorbells_waiting(&self, builder: &BuilderName) -> Result<u32, BrokerError> {
        let channel = self.link().connection.create_channel().await?;
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
        let _ = self.link().connection.close(200, "master shutting down".into()).await;
    }
}

/// Declares the whole topology on `connection`.
async fn declare(connection: &Connection, ns: &Namespace, builders: &[BuilderName]) -> Result<(), BrokerError> {
    let channel = connection.create_channel().await?;
    let durable_exchange = ExchangeDeclareOptions { durable: true, ..Default::default() };
    for exchange in [ns.doorbell_exchange(), ns.rpc_exchange(), ns.events_exchange()] {
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
    dead_lettered
        .insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from(ns.dead_letter_exchange())));
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
