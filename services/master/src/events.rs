//! Records what workers report. Each event is applied in one transaction
//! together with its entry in the `build_events` ledger, and acknowledged only
//! after the commit: a master killed mid-way leaves the event in the queue
//! for another master, and an event delivered twice is recognised and
//! changes nothing. Events are snapshots, so their order does not matter.

use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use redis::AsyncCommands;
use shared::ids::{BuildId, WorkerName};
use shared::wire::{self, ControlMessage, StepRecord, WorkerEvent};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::files::{self, FileError, StepFiles};
use crate::live::Change;
use crate::logs::{self, Additions, LogError};
use crate::store::{EventRejected, RecordError, Recorded, ReportEvent, Store, StoreError};
use crate::{Master, MasterError, RETRY_DELAY};

/// Events recorded at once by one master.
const CONCURRENT_EVENTS: usize = 32;
/// A step's failed tests whose first line in its log is looked for, as
/// many as its build's page shows.
const FAILED_TESTS_LINKED: i64 = 5000;

pub async fn record_events(master: Arc<Master>, shutdown: CancellationToken) -> Result<(), MasterError> {
    let queue = master.namespace.events_queue();
    let handler = master.clone();
    // Events being recorded finish before this returns and the connection closes.
    master
        .broker
        .consume(&queue, CONCURRENT_EVENTS, &shutdown, move |delivery| {
            let master = handler.clone();
            async move { handle_event(&master, delivery).await }
        })
        .await;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum EventError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    File(#[from] FileError),
}

impl From<StoreError> for EventError {
    fn from(error: StoreError) -> Self {
        EventError::Record(RecordError::Store(error))
    }
}

impl From<sqlx::Error> for EventError {
    fn from(error: sqlx::Error) -> Self {
        EventError::Record(RecordError::Store(StoreError::Database(error)))
    }
}

async fn handle_event(master: &Master, delivery: Delivery) {
    let event = match wire::decode::<WorkerEvent>(&delivery.data) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(%error, "dead-lettering an unreadable event");
            master.metrics.event("dead_lettered");
            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
    };
    let user_id = delivery.properties.user_id().as_ref().map(|user| user.as_str());
    if let Err(error) = master.check_sender(user_id, event.worker()) {
        tracing::warn!(%error, event.kind = event.kind(), "dead-lettering an event from the wrong account");
        master.metrics.event("dead_lettered");
        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        return;
    }
    let span = tracing::info_span!(
        "event",
        otel.name = format!("process {}", master.namespace.events_queue()),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        worker.name = %event.worker(),
        build.id = event.build_id().map(|id| id.0),
        event.kind = event.kind(),
    );
    shared::telemetry::continue_from(&span, shared::amqp::traceparent_of(&delivery.properties).as_deref());
    match record(master, &event).instrument(span).await {
        Ok(recorded) => {
            master.metrics.event(if recorded == Recorded::Duplicate { "duplicate" } else { "recorded" });
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Err(EventError::Record(RecordError::Rejected(EventRejected::LeaseLost(build_id)))) => {
            // Expected after a partition: acknowledged and dropped, and the
            // worker told to stop what it still runs of it.
            master.metrics.event("stale");
            tracing::info!(build.id = %build_id, worker.name = %event.worker(), "an event of a build whose lease was lost changes nothing");
            stop_lost_builds(master, event.worker(), &[build_id]).await;
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Err(EventError::Record(RecordError::Rejected(error))) => {
            master.metrics.event("dead_lettered");
            tracing::warn!(%error, worker.name = %event.worker(), "dead-lettering an event that cannot be recorded");
            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        }
        Err(error) => {
            master.metrics.event("retried");
            tracing::warn!(%error, worker.name = %event.worker(), "could not record an event now; it will be retried");
            tokio::time::sleep(RETRY_DELAY).await;
            let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
        }
    }
}

/// Tells a worker to stop builds whose lease the masters ended while it was
/// away: their requests run elsewhere now. Best effort: its next heartbeat
/// asks again.
async fn stop_lost_builds(master: &Master, worker: &WorkerName, builds: &[BuildId]) {
    for build_id in builds {
        let stop = ControlMessage::StopBuild {
            build_id: *build_id,
            reason: "its lease was lost while this worker was away; the build was retried elsewhere".into(),
        };
        match master.broker.send_control(worker, &stop).await {
            Ok(()) => {
                tracing::info!(build.id = %build_id, worker.name = %worker, "told a worker back from away to stop a retried build")
            }
            Err(error) => {
                tracing::warn!(%error, build.id = %build_id, worker.name = %worker, "cannot tell a worker to stop a retried build")
            }
        }
    }
}

/// A step as its worker knows it, its times put on this master's clock.
fn on_our_clock(step: &StepRecord, offset: chrono::Duration) -> StepRecord {
    StepRecord {
        started_at: step.started_at.map(|at| at + offset),
        finished_at: step.finished_at.map(|at| at + offset),
        ..step.clone()
    }
}

async fn record(master: &Master, event: &WorkerEvent) -> Result<Recorded, EventError> {
    let lease_seconds = master.catalog().config.settings.builds.lease_seconds;
    let offset = master.clocks.offset(event.worker(), event.sent_at());
    match event {
        WorkerEvent::Heartbeat { worker, build_ids, .. } => {
            let lost = master.store.heartbeat(worker.as_str(), build_ids, lease_seconds).await?;
            stop_lost_builds(master, worker, &lost).await;
            Ok(Recorded::Applied)
        }
        WorkerEvent::StepStarted { worker, build_id, seq, step, .. } => {
            let step = &on_our_clock(step, offset);
            let Some((mut tx, builder_id)) = master.store.begin_event(*build_id, *seq, worker).await? else {
                return Ok(Recorded::Duplicate);
            };
            let (step_id, log_rows) = Store::upsert_step(&mut tx, *build_id, step).await?;
            Store::set_build_properties(&mut tx, *build_id, &step.properties).await?;
            if let Some(summary) = &step.test_summary {
                Store::record_test_summary(&mut tx, *build_id, step_id, summary).await?;
            }
            Store::set_build_state(&mut tx, *build_id, &step.name).await?;
            let reporters = if step.number == 0 {
                master.catalog().reporters_of(builder_id, ReportEvent::Started).to_vec()
            } else {
                Vec::new()
            };
            Store::add_notifications(&mut tx, *build_id, ReportEvent::Started, &reporters).await?;
            tx.commit().await?;
            if !reporters.is_empty() {
                master.reports.notify_waiters();
            }
            if step.number == 0 {
                // The first step runs: the request is dispatched. For the
                // metrics only: a failure here must not undo the event.
                if let Ok(Some((builder_id, accepted))) = master.store.build_origin(*build_id).await
                    && let Some(builder) = master.catalog().builder_name(builder_id)
                {
                    let since = (chrono::Utc::now() - accepted).to_std().unwrap_or_default();
                    master.metrics.first_step_running(builder.as_str(), since);
                }
            }
            master.live.send(Change::Step(step_id, "started"));
            for log in log_rows {
                master.live.send(Change::Log(log.id, "new"));
            }
            Ok(Recorded::Applied)
        }
        WorkerEvent::StepFinished { worker, build_id, seq, step, .. } => {
            let step = &on_our_clock(step, offset);
            let Some((mut tx, _)) = master.store.begin_event(*build_id, *seq, worker).await? else {
                return Ok(Recorded::Duplicate);
            };
            let (step_id, log_rows) = Store::upsert_step(&mut tx, *build_id, step).await?;
            Store::set_build_properties(&mut tx, *build_id, &step.properties).await?;
            if let Some(summary) = &step.test_summary {
                Store::record_test_summary(&mut tx, *build_id, step_id, summary).await?;
            }
            let mut redis = master.redis.clone();
            let sent = StepFiles {
                namespace: &master.namespace,
                worker: worker.as_str(),
                build_id: *build_id,
                step_number: step.number,
                step_id,
            };
            let received = files::receive(&mut redis, &mut tx, sent, &step.files).await?;
            // Failed tests link to the first line of the log naming them.
            let has_tests =
                step.test_summary.is_some() || step.files.iter().any(|file| file.kind == wire::FileKind::TestResults);
            let failed = match has_tests {
                true => Store::failed_tests_of_step(&mut tx, step_id, FAILED_TESTS_LINKED).await?,
                false => Vec::new(),
            };
            let names: Vec<String> = failed.iter().map(|test| test.test_name.clone()).collect();
            let mut archived_keys = Vec::new();
            let mut archived_logs = Vec::new();
            let mut archived_sizes = Vec::new();
            for (record, row) in step.logs.iter().zip(&log_rows) {
                if row.complete {
                    continue;
                }
                let key = master.namespace.log_stream_key(worker.as_str(), *build_id, step.number, &record.slug);
                let additions = match record.slug == wire::STDIO_LOG {
                    true => Additions { notes: &received.notes, find: &names },
                    false => Additions::default(),
                };
                let archived = logs::archive(&mut redis, &mut tx, row.id, &key, record.chunks, additions).await?;
                if record.slug == wire::STDIO_LOG {
                    let lines: Vec<(i64, i64)> = failed
                        .iter()
                        .zip(&archived.found)
                        .filter_map(|(test, line)| Some((test.id, (*line)?)))
                        .collect();
                    Store::set_test_log_lines(&mut tx, &lines).await?;
                }
                archived_sizes.push((archived.bytes, archived.lines));
                archived_keys.push(key);
                archived_logs.push(row.id);
            }
            tx.commit().await?;
            for (bytes, lines) in archived_sizes {
                master.metrics.log_archived(bytes, lines);
            }
            if !received.keys.is_empty() {
                // Read and committed: nobody needs them again.
                let deleted: Result<u64, _> = redis.del(&received.keys).await;
                if let Err(error) = deleted {
                    tracing::warn!(%error, "could not delete the streams of a step's files; they expire in a day");
                }
            }
            let linger = master.catalog().config.settings.builds.log_linger_seconds as i64;
            for key in archived_keys {
                // People watching live still see the end; afterwards the copy
                // in Postgres is the only one.
                let _: Result<bool, _> = redis.expire(shared::names::Namespace::log_lines_key(&key), linger).await;
                let expired: Result<bool, _> = redis.expire(&key, linger).await;
                if let Err(error) = expired {
                    tracing::warn!(%error, redis.key = %key, "could not set the expiry of an archived log stream");
                }
            }
            tracing::debug!(build.id = %build_id, step.number = step.number, "step finished and archived");
            master.live.send(Change::Step(step_id, "finished"));
            for log_id in archived_logs {
                master.live.send(Change::Log(log_id, "finished"));
            }
            Ok(Recorded::Applied)
        }
        WorkerEvent::BuildFinished { worker, build_id, seq, results, state_string, finished_at, steps, .. } => {
            let finished_at = &(*finished_at + offset);
            let Some((mut tx, builder_id)) = master.store.begin_event(*build_id, *seq, worker).await? else {
                return Ok(Recorded::Duplicate);
            };
            for step in steps {
                Store::upsert_step(&mut tx, *build_id, &on_our_clock(step, offset)).await?;
            }
            let finished = Store::finish_build(&mut tx, *build_id, *results, state_string, *finished_at).await?;
            let reporters = match finished {
                Some(_) => master.catalog().reporters_of(builder_id, ReportEvent::Finished).to_vec(),
                None => Vec::new(),
            };
            Store::add_notifications(&mut tx, *build_id, ReportEvent::Finished, &reporters).await?;
            tx.commit().await?;
            if !reporters.is_empty() {
                master.reports.notify_waiters();
            }
            tracing::info!(build.id = %build_id, worker.name = %worker, build.results = %results, "build finished");
            if let Some(finished) = finished {
                if let Some(builder) = master.catalog().builder_name(finished.builder_id) {
                    master.metrics.build_finished(builder.as_str(), results.name());
                }
                master.live.send(Change::Build(*build_id, "finished"));
                master.live.send(Change::Request(finished.buildrequest_id, "complete"));
            }
            Ok(Recorded::Applied)
        }
    }
}
