//! Deletes history past the configured horizons: log contents after
//! `retention.logs_days`, whole builds (with steps, logs, requests and
//! buildsets) after `retention.builds_days`. It runs on every master, but
//! each batch takes a Postgres advisory lock, so one master prunes at a
//! time; a batch is a few hundred builds in one short transaction, so
//! nothing else waits on it for long.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::store::StoreError;
use crate::{Master, MasterError};

const DAY: u64 = 24 * 60 * 60;

pub async fn retain(master: Arc<Master>, shutdown: CancellationToken) -> Result<(), MasterError> {
    loop {
        let retention = master.catalog().config.settings.retention.clone();
        if retention.logs_days.is_some() || retention.builds_days.is_some() {
            let pass = prune(&master, &retention, &shutdown);
            if let Err(error) = pass.await {
                tracing::warn!(%error, "retention pass failed; will try again");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(retention.interval_seconds.max(1))) => {}
        }
    }
}

/// One pass: batches until nothing is past a horizon, another master is
/// pruning, or the master stops.
async fn prune(
    master: &Master,
    retention: &shared::config::RetentionSettings,
    shutdown: &CancellationToken,
) -> Result<(), StoreError> {
    let batch = i64::from(retention.batch);
    let (mut logs, mut chunks, mut buildsets, mut longest) = (0u64, 0u64, 0u64, Duration::ZERO);
    // Log contents go first, also when only builds have a horizon, so that
    // deleting a build never deletes its log chunks in the same (then long)
    // transaction. checkconfig keeps logs_days ≤ builds_days.
    if let Some(days) = retention.logs_days.or(retention.builds_days) {
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let Some((builds, deleted)) = master.store.prune_logs(u64::from(days) * DAY, batch).await? else { break };
            longest = longest.max(master.metrics.retention_batch(started.elapsed()));
            master.metrics.retained("log_chunks", deleted);
            (logs, chunks) = (logs + builds, chunks + deleted);
            if builds < batch as u64 {
                break;
            }
        }
    }
    if let Some(days) = retention.builds_days {
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let Some(deleted) = master.store.prune_builds(u64::from(days) * DAY, batch).await? else { break };
            longest = longest.max(master.metrics.retention_batch(started.elapsed()));
            master.metrics.retained("buildsets", deleted);
            buildsets += deleted;
            if deleted < batch as u64 {
                break;
            }
        }
    }
    if logs + buildsets > 0 {
        tracing::info!(
            builds.logs_pruned = logs,
            log_chunks.deleted = chunks,
            buildsets.deleted = buildsets,
            longest_batch_ms = longest.as_millis() as u64,
            "retention pass"
        );
    }
    Ok(())
}
