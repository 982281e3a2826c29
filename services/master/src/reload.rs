//! Live configuration: every master reloads master.yaml and settings.yaml
//! when they change on disk (polled), on SIGHUP, and on `make
//! update-master`, with no restart. A configuration with errors is not
//! applied; why is recorded for the API and the web UI until a good one
//! replaces it. Builds in flight are untouched by a reload.

use std::sync::Arc;
use std::time::Duration;

use shared::config::Config;
use shared::wire::{self, ControlMessage};
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerError;
use crate::catalog::Catalog;
use crate::node::Master;
use crate::{MasterError, accounts};

/// How often a master looks at its configuration files for edits.
const CONFIG_POLL: Duration = Duration::from_secs(2);

impl Master {
    /// Applies a new configuration: builders synced to Postgres, their queues
    /// declared, then the catalog swapped whole. Requests and builds in
    /// flight are untouched; a removed builder keeps its history. Service
    /// URLs and the namespace take effect only on restart.
    pub async fn apply(&self, config: Config) -> Result<(), MasterError> {
        let builder_ids = self.store.sync_builders(&config.master.builders).await?;
        let builder_names: Vec<_> = config.master.builders.iter().map(|b| b.name.clone()).collect();
        self.broker.declare_topology(&builder_names).await?;
        let summary = config.summary();
        *self.catalog.write().expect("catalog lock poisoned") = Arc::new(Catalog::new(config, builder_ids));
        tracing::info!(master.name = %self.name, %summary, "configuration applied");
        if let Err(error) = accounts::sync(self).await {
            tracing::error!(%error, "worker accounts not synced; retrying every sync_seconds");
        }
        self.announce_builders().await;
        Ok(())
    }

    /// Tells each connected worker which builders it serves now (after its
    /// account may read their queues), of those it can run (what it said
    /// at its last hello); one not connected learns it at its hello.
    async fn announce_builders(&self) {
        let catalog = self.catalog();
        let config = &catalog.config;
        let infos = match self.store.worker_infos().await {
            Ok(infos) => infos,
            Err(error) => {
                tracing::warn!(%error, "workers not told their builders: what they said at hello cannot be read");
                return;
            }
        };
        let mut workers: Vec<_> = config.settings.workers.iter().map(|w| w.name.clone()).collect();
        if config.settings.use_local_worker {
            workers.push(self.local_worker_name());
        }
        for worker in workers {
            // A worker that never said hello learns its builders when it does.
            let Some(info) = infos.get(worker.as_str()) else { continue };
            let builders = catalog.builders_runnable_by(worker.as_str(), &wire::honoured_step_options(info));
            match self.broker.send_control(&worker, &ControlMessage::SetBuilders { builders }).await {
                Ok(()) | Err(BrokerError::Unroutable(_)) => {}
                Err(error) => tracing::warn!(%error, worker.name = %worker, "could not tell a worker its builders"),
            }
        }
    }

    /// Reloads both files from disk. Returns `false` when applying failed
    /// for a passing reason (a service down), which is worth retrying;
    /// `true` when applied, or refused for the files' own errors (retrying
    /// cannot help until they change).
    pub(crate) async fn reload(&self) -> bool {
        let path = self.catalog().config.settings_path.clone();
        // What is recorded is shown to anyone: no text of settings.yaml,
        // and no service's error (it may hold a URL); the log has both.
        let (refused, retry) = match Config::load(&path) {
            Ok(config) => match self.apply(config).await {
                Ok(()) => (None, false),
                Err(error) => {
                    tracing::error!(%error, "configuration valid but not applied; will apply on the next reload");
                    let why = "valid but not applied: a service it needs did not answer (the master's log says which); \
                               it is applied again at the next look";
                    (Some(why.to_owned()), true)
                }
            },
            Err(errors) => {
                tracing::error!(errors = %errors, "configuration has errors; keeping the current one");
                (Some(errors.public_text(&path)), false)
            }
        };
        if let Err(error) = self.store.set_config_error(self.id, refused.as_deref()).await {
            tracing::warn!(%error, "could not record the outcome of the reload");
        }
        !retry
    }

    /// Reloads when settings.yaml or master.yaml changes on disk, as SIGHUP
    /// and `make update-master` do: an edit reaches every master within
    /// seconds, with no restart.
    pub(crate) async fn watch_config(&self, shutdown: CancellationToken) {
        let mut seen = self.config_stamps();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CONFIG_POLL) => {}
            }
            let now = self.config_stamps();
            if now != seen {
                tracing::info!("configuration files changed on disk: reloading");
                // Not marked seen until applied: a failure to apply (a
                // service down) is tried again at the next look.
                if self.reload().await {
                    seen = now;
                }
            }
        }
    }

    /// When and how big the configuration files are, to notice edits.
    fn config_stamps(&self) -> Vec<Option<(std::time::SystemTime, u64)>> {
        let catalog = self.catalog();
        [&catalog.config.settings_path, &catalog.config.master_config_path]
            .iter()
            .map(|path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect()
    }
}
