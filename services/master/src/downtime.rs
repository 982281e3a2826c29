//! Planned downtime: a worker's daily windows (settings.yaml `downtime`) in
//! which it takes no new builds, as buildbot.python.org quarantines some
//! workers at night. Every master watches the windows and, when one begins
//! or ends, tells the worker its pause (its manual pause, or the window)
//! with a new pause version, so the worker hands its doorbells back to
//! other workers at once. Several masters sending the same news is
//! harmless: the worker keeps the newest version.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shared::ids::WorkerName;
use shared::wire::ControlMessage;
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerError;
use crate::{Master, MasterError};

pub async fn watch(master: Arc<Master>, shutdown: CancellationToken) -> Result<(), MasterError> {
    // What each worker's windows said at the last look.
    let mut down: HashMap<WorkerName, bool> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = chrono::Utc::now();
        let catalog = master.catalog();
        for worker in &catalog.config.settings.workers {
            let now_down = worker.in_downtime(now);
            let before = down.insert(worker.name.clone(), now_down);
            // At a master's first look only a window in force is news.
            if before.unwrap_or(false) == now_down {
                continue;
            }
            if let Err(error) = tell(&master, &worker.name, now_down).await {
                tracing::warn!(%error, worker.name = %worker.name, "downtime change not sent; retrying");
                down.remove(&worker.name);
            }
        }
    }
}

async fn tell(master: &Master, worker: &WorkerName, down: bool) -> Result<(), MasterError> {
    let Some((paused, version)) = master.store.bump_pause_version(worker).await? else {
        // Never connected: it learns its state at its hello.
        return Ok(());
    };
    match master.broker.send_control(worker, &ControlMessage::SetPaused { paused: paused || down, version }).await {
        Ok(()) | Err(BrokerError::Unroutable(_)) => {}
        Err(error) => return Err(error.into()),
    }
    tracing::info!(worker.name = %worker, down, "downtime window {}", if down { "began" } else { "ended" });
    Ok(())
}
