//! Publishes what this worker reports to the masters, in order, with
//! publisher confirms: an event counts as sent once RabbitMQ has it in the
//! durable events queue.
//!
//! Nothing waits for a confirm before going on: `send` puts the event in an
//! outbox and returns, and one task publishes the outbox in order, many
//! events in flight at once, taking each off once RabbitMQ confirms it. The
//! outbox outlives connections: what was not confirmed when a connection
//! died is published again, in order, on the next one (masters record an
//! event twice as once). `flushed` waits until everything sent is
//! confirmed, as a worker does before it closes its connection.

use std::collections::VecDeque;
use std::time::Duration;

use lapin::PublisherConfirm;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use shared::names::{EVENTS_ROUTING_KEY, Namespace};
use shared::wire::{self, WorkerEvent};
use tokio::sync::{mpsc, watch};

use crate::WorkerError;

/// Events waiting in the outbox beyond this many make `send` wait: a worker
/// whose broker is gone for long stops its builds' reporting, not its
/// memory.
const OUTBOX: usize = 10_000;
/// Events published and not yet confirmed, at most.
const IN_FLIGHT: usize = 256;
const LONGEST_WAIT: Duration = Duration::from_secs(5);

/// An event as it will be published: its body, and its properties made when
/// it was sent, so it carries the trace of the step or build that sent it.
struct Outgoing {
    payload: Vec<u8>,
    properties: BasicProperties,
}

pub struct EventSender {
    outbox: mpsc::Sender<Outgoing>,
    /// The RabbitMQ user this worker logs in as, stated on every event.
    user: String,
    /// The channel to publish on, replaced on each new connection.
    channel: watch::Sender<Option<Channel>>,
    /// Events sent so far, and confirmed so far.
    sent: watch::Sender<u64>,
    confirmed: watch::Sender<u64>,
}

impl EventSender {
    pub fn new(namespace: &Namespace, user: &str) -> Self {
        let (outbox, receiver) = mpsc::channel(OUTBOX);
        let channel = watch::Sender::new(None);
        let confirmed = watch::Sender::new(0);
        let publisher = Publisher {
            exchange: namespace.events_exchange(),
            channel: channel.subscribe(),
            confirmed: confirmed.clone(),
        };
        tokio::spawn(publisher.run(receiver));
        Self { outbox, user: user.to_owned(), channel, sent: watch::Sender::new(0), confirmed }
    }

    /// Publishes on a new connection from now on.
    pub async fn attach(&self, connection: &Connection) -> Result<(), WorkerError> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        self.channel.send_replace(Some(channel));
        Ok(())
    }

    /// Puts an event in the outbox, behind those sent before it; waits only
    /// when the outbox is full.
    pub async fn send(&self, event: &WorkerEvent) -> Result<(), WorkerError> {
        let properties = shared::amqp::traced(
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_user_id(self.user.clone().into()),
        );
        self.outbox
            .send(Outgoing { payload: wire::encode(event), properties })
            .await
            .map_err(|_| WorkerError::EventRefused("the event publisher has stopped".into()))?;
        self.sent.send_modify(|sent| *sent += 1);
        Ok(())
    }

    /// Waits until every event sent so far is confirmed, or `limit` passed
    /// (then `false`: the rest is lost with this process, and the masters
    /// retry what it concerned once its lease expires).
    pub async fn flushed(&self, limit: Duration) -> bool {
        let sent = *self.sent.borrow();
        let mut confirmed = self.confirmed.subscribe();
        tokio::time::timeout(limit, confirmed.wait_for(|confirmed| *confirmed >= sent)).await.is_ok_and(|r| r.is_ok())
    }
}

/// The task that publishes the outbox.
struct Publisher {
    exchange: String,
    channel: watch::Receiver<Option<Channel>>,
    confirmed: watch::Sender<u64>,
}

impl Publisher {
    async fn run(mut self, mut outbox: mpsc::Receiver<Outgoing>) {
        // Taken from the outbox and not yet confirmed, oldest first.
        let mut unconfirmed: VecDeque<Outgoing> = VecDeque::new();
        let mut delay = Duration::from_millis(100);
        let mut outbox_open = true;
        loop {
            let channel = self.channel.borrow_and_update().clone().filter(|channel| channel.status().connected());
            let Some(channel) = channel else {
                if !outbox_open && unconfirmed.is_empty() {
                    return;
                }
                let _ = self.channel.changed().await;
                continue;
            };
            match self.publish_on(&channel, &mut unconfirmed, &mut outbox, &mut outbox_open).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, unconfirmed = unconfirmed.len(), retry_in_ms = delay.as_millis() as u64, "publishing events failed; they are sent again, in order");
                    tokio::select! {
                        _ = self.channel.changed() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(LONGEST_WAIT);
                }
            }
        }
    }

    /// Publishes what was not confirmed, then the outbox as it fills, until
    /// the outbox is closed and empty (`Ok`) or the channel fails.
    async fn publish_on(
        &mut self,
        channel: &Channel,
        unconfirmed: &mut VecDeque<Outgoing>,
        outbox: &mut mpsc::Receiver<Outgoing>,
        outbox_open: &mut bool,
    ) -> Result<(), WorkerError> {
        let mut confirms: VecDeque<PublisherConfirm> = VecDeque::new();
        for event in unconfirmed.iter() {
            confirms.push_back(self.publish(channel, event).await?);
        }
        loop {
            if !*outbox_open && confirms.is_empty() {
                return Ok(());
            }
            tokio::select! {
                biased;
                confirmation = async { confirms.front_mut().expect("guarded").await }, if !confirms.is_empty() => {
                    confirms.pop_front();
                    check(confirmation?)?;
                    unconfirmed.pop_front();
                    crate::metrics::METRICS.events_published.inc();
                    self.confirmed.send_modify(|confirmed| *confirmed += 1);
                }
                payload = outbox.recv(), if *outbox_open && confirms.len() < IN_FLIGHT => match payload {
                    Some(event) => {
                        unconfirmed.push_back(event);
                        let event = unconfirmed.back().expect("just pushed");
                        confirms.push_back(self.publish(channel, event).await?);
                    }
                    None => *outbox_open = false,
                },
                _ = self.channel.changed() => {
                    return Err(WorkerError::EventRefused("a new connection: publishing what is unconfirmed again".into()));
                }
            }
        }
    }

    async fn publish(&self, channel: &Channel, event: &Outgoing) -> Result<PublisherConfirm, WorkerError> {
        Ok(channel
            .basic_publish(
                self.exchange.clone().into(),
                EVENTS_ROUTING_KEY.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &event.payload,
                event.properties.clone(),
            )
            .await?)
    }
}

/// Whether RabbitMQ took an event into the events queue.
fn check(confirmation: lapin::Confirmation) -> Result<(), WorkerError> {
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
