//! Submitting work: the one way builds are asked for. Forces, rebuilds,
//! schedulers and changes all commit their buildset first (the store), then
//! come here to collapse the queue behind it, ring the builders' doorbells
//! and tell live clients. Everything after the commit may fail without
//! losing the request: the reconciler rings for what nobody claimed.

use std::sync::Arc;

use shared::ids::{BuildRequestId, BuilderName};
use tracing::Instrument;

use crate::live::Change;
use crate::node::Master;
use crate::store::{CreatedBuildset, NewBuildset, StoreError};

impl Master {
    /// Commits a buildset and supersedes what it collapses, then returns;
    /// announcing it (see `announce_buildset`) goes on in a task of its own,
    /// so a client does not wait for RabbitMQ. A master that dies before
    /// announcing loses nothing: the reconciler rings for requests nobody
    /// claimed. A tick already fired, or an upstream buildset already
    /// followed, creates nothing (`None`).
    pub async fn submit(self: &Arc<Self>, buildset: NewBuildset<'_>) -> Result<Option<CreatedBuildset>, StoreError> {
        let created = self.store.create_buildset(buildset).await?;
        if let Some(created) = &created {
            self.collapse_older(created).await;
            self.announce_later(created.clone());
        }
        Ok(created)
    }

    /// Announces a committed buildset in a task of its own, in the current
    /// trace: nothing that answers a client waits for it.
    pub fn announce_later(self: &Arc<Self>, buildset: CreatedBuildset) {
        let master = self.clone();
        tokio::spawn(async move { master.announce_buildset(&buildset).await }.instrument(tracing::Span::current()));
    }

    /// Older pending requests of builders with `collapse_requests` are
    /// superseded by a buildset just committed, before anyone is told of
    /// it: a client that reads the queue after its answer sees them gone.
    pub async fn collapse_older(&self, buildset: &CreatedBuildset) {
        let catalog = self.catalog();
        let collapsing: Vec<_> = buildset
            .requests
            .iter()
            .map(|(builder_id, _)| *builder_id)
            .filter(|id| catalog.builder_by_id(*id).is_some_and(|builder| builder.collapse_requests))
            .collect();
        if collapsing.is_empty() {
            return;
        }
        // The new requests are committed either way; collapsing tidies.
        match self.store.collapse_older(buildset.id, &collapsing).await {
            Ok(skipped) => {
                for request_id in skipped {
                    tracing::info!(buildrequest.id = %request_id, buildset.id = %buildset.id, "request superseded: SKIPPED");
                    self.live.send(Change::Request(request_id, "complete"));
                }
            }
            Err(error) => tracing::warn!(%error, buildset.id = %buildset.id, "older requests not collapsed"),
        }
    }

    /// What follows the commit of a buildset's requests: doorbells rung,
    /// live clients told.
    pub async fn announce_buildset(self: &Arc<Self>, buildset: &CreatedBuildset) {
        let catalog = self.catalog();
        let announcements = buildset
            .requests
            .iter()
            .filter_map(|(builder_id, request_id)| Some((catalog.builder_name(*builder_id)?.clone(), *request_id)))
            .collect();
        self.announce(announcements).await;
        tracing::info!(buildset.id = %buildset.id, "buildset submitted");
        self.live.send(Change::Buildset(buildset.id, "new"));
        for (_, request_id) in &buildset.requests {
            self.live.send(Change::Request(*request_id, "new"));
        }
    }

    /// Rings the doorbells of requests just committed, all at once so their
    /// confirms arrive together. A request whose doorbell cannot be rung is
    /// marked for the reconciler.
    pub async fn announce(self: &Arc<Self>, requests: Vec<(BuilderName, BuildRequestId)>) {
        let master = self.clone();
        let ringing = tokio::spawn(
            async move {
                let rings =
                    requests.iter().map(|(builder, request_id)| master.broker.ring(builder, *request_id, None));
                let mut unannounced = Vec::new();
                for ((_, request_id), rung) in requests.iter().zip(futures_util::future::join_all(rings).await) {
                    if let Err(error) = rung {
                        tracing::warn!(%error, buildrequest.id = %request_id, "doorbell not rung; the reconciler will ring it");
                        unannounced.push(*request_id);
                    }
                }
                if !unannounced.is_empty() {
                    // Best effort: if even this fails, the request is rung
                    // again once `redeliver_after_seconds` have passed.
                    let _ = master.store.mark_unannounced(&unannounced).await;
                }
            }
            // The doorbells belong to the trace of the request that rang them.
            .instrument(tracing::Span::current()),
        );
        let _ = ringing.await;
    }
}
