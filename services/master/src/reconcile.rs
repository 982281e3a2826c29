//! Makes the delivery channels agree with Postgres again after something was
//! lost: doorbells (a publish that failed after its commit, a broker that lost
//! its queues) and workers (a build whose worker stopped sending heartbeats).
//! It runs on every master at once with no leader: each row it acts on is
//! taken with `for update skip locked`, so exactly one master acts on it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shared::config::BuildSettings;
use shared::ids::BuilderId;
use shared::model::Results;
use tokio_util::sync::CancellationToken;

use crate::live::Change;
use crate::store::DueRequest;
use crate::{Master, MasterError};

/// Rows handled per pass, so one pass never holds many locks for long.
const BATCH: i64 = 500;

pub async fn reconcile(master: Arc<Master>, shutdown: CancellationToken) -> Result<(), MasterError> {
    loop {
        let builds = master.catalog().config.settings.builds.clone();
        let period = Duration::from_secs((builds.heartbeat_seconds).clamp(1, 5));
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(period) => {}
        }
        if let Err(error) = reconcile_once(&master, &builds).await {
            tracing::warn!(%error, "reconciliation pass failed; will try again");
        }
    }
}

async fn reconcile_once(master: &Master, builds: &BuildSettings) -> Result<(), MasterError> {
    master.store.touch_master(master.id).await?;
    // Heartbeats reach masters through RabbitMQ. A master that has not been
    // connected for a whole lease cannot tell a lost worker from one that is
    // still reconnecting after the same outage, so it judges no lease.
    let lease = Duration::from_secs(builds.lease_seconds);
    if master.broker.connected_for().is_some_and(|up| up >= lease) {
        let expired = master.store.expire_leases(BATCH, builds.max_retries).await?;
        master.metrics.reconciled("lease_expired", expired.builds.len() as u64);
        let catalog = master.catalog();
        for (build_id, builder_id) in &expired.builds {
            master.live.send(Change::Build(*build_id, "finished"));
            if let Some(builder) = catalog.builder_name(*builder_id) {
                master.metrics.build_finished(builder.as_str(), Results::Retry.name());
            }
        }
        let requeued = expired.requeued;
        if !requeued.is_empty() {
            tracing::warn!(count = requeued.len(), "builds lost their worker; their requests are pending again");
            ring(master, requeued, true).await;
        }
    }
    let due = master.store.take_due_requests(builds.redeliver_after_seconds, BATCH).await?;
    if !due.is_empty() {
        ring(master, due, false).await;
    }
    Ok(())
}

/// Rings doorbells for requests. Unless `always`, a builder whose queue
/// still holds doorbells is skipped: its workers are busy or absent, and more
/// doorbells would only pile up.
async fn ring(master: &Master, requests: Vec<DueRequest>, always: bool) {
    let catalog = master.catalog();
    let mut by_builder: BTreeMap<BuilderId, Vec<DueRequest>> = BTreeMap::new();
    for request in requests {
        by_builder.entry(request.builder_id).or_default().push(request);
    }
    for (builder_id, requests) in by_builder {
        // A builder no longer configured has no worker to ring for.
        let Some(builder) = catalog.builder_name(builder_id) else {
            continue;
        };
        if !always {
            let waiting = master.broker.doorbells_waiting(builder).await;
            if let Err(error) = &waiting {
                tracing::warn!(%error, builder.name = %builder, "cannot inspect the builder's queue");
            }
            if !matches!(waiting, Ok(0)) {
                // Not rung now, so not announced: the waiting doorbells may
                // be fewer than the requests, and the next pass looks again
                // instead of after `redeliver_after_seconds`.
                let ids: Vec<_> = requests.iter().map(|request| request.id).collect();
                let _ = master.store.mark_unannounced(&ids).await;
                continue;
            }
        }
        for DueRequest { id: request_id, traceparent, .. } in requests {
            match master.broker.ring(builder, request_id, traceparent.as_deref()).await {
                Ok(()) => {
                    master.metrics.reconciled("doorbell_rung", 1);
                    tracing::info!(buildrequest.id = %request_id, builder.name = %builder, "doorbell rung again")
                }
                Err(error) => {
                    tracing::warn!(%error, buildrequest.id = %request_id, builder.name = %builder, "cannot ring the doorbell");
                    let _ = master.store.mark_unannounced(&[request_id]).await;
                }
            }
        }
    }
}
