//! What every part of a master shares: its connections, its configuration
//! (`Catalog`) and small caches. Caches only: the truth is in Postgres, so
//! any master can be killed at any moment and another serves in its place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use redis::aio::ConnectionManager;
use shared::ids::{MasterId, WorkerId, WorkerName};
use shared::names::Namespace;

use crate::broker::Broker;
use crate::catalog::Catalog;
use crate::clocks::WorkerClocks;
use crate::live::{LiveEvent, Publisher};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

pub struct Master {
    pub name: String,
    pub id: MasterId,
    pub store: Store,
    pub broker: Broker,
    pub redis: ConnectionManager,
    /// For connections of their own, which live-log followers hold while
    /// they wait for output.
    pub redis_client: redis::Client,
    pub namespace: Namespace,
    pub metrics: Metrics,
    /// How far each worker's clock is from this master's.
    pub clocks: WorkerClocks,
    /// Room for running logs followed for clients (`web.max_log_followers`;
    /// each holds a Redis connection while it waits).
    pub log_followers: Arc<tokio::sync::Semaphore>,
    /// Room for `/ws` connections (`web.max_websockets`).
    pub websockets: Arc<tokio::sync::Semaphore>,
    /// Changes to announce to live clients; the publisher task reads and
    /// sends them, so no answer waits for it.
    pub live: Publisher,
    /// Live events for this master's `/ws` clients, relayed from Redis.
    pub live_events: tokio::sync::broadcast::Sender<Arc<LiveEvent>>,
    /// Changes to `/sse` clients' paths, relayed from Redis like events.
    pub sse_controls: tokio::sync::broadcast::Sender<Arc<crate::live::SseControl>>,
    /// Rung when this master entered something for reporters to tell, so
    /// its deliverers need not wait for their next look.
    pub reports: tokio::sync::Notify,
    /// This master's credentials at GitHub's API (a GitHub App's token).
    pub github: crate::github_app::GitHubCredentials,
    /// The sign-in providers' discovery documents and keys.
    pub sign_in: crate::sign_in::Providers,
    /// The RabbitMQ user masters log in as (from `amqp_url`); messages it
    /// published come from a master's own local worker.
    pub(crate) amqp_user: String,
    pub(crate) catalog: RwLock<Arc<Catalog>>,
    worker_ids: Mutex<HashMap<WorkerName, WorkerId>>,
}

impl Master {
    #[expect(clippy::too_many_arguments, reason = "called once, by `connect`, with what it made")]
    pub(crate) fn new(
        name: &str,
        id: MasterId,
        store: Store,
        broker: Broker,
        redis: ConnectionManager,
        redis_client: redis::Client,
        namespace: Namespace,
        live: Publisher,
        amqp_user: String,
        catalog: Catalog,
    ) -> Master {
        Master {
            name: name.to_owned(),
            id,
            store,
            broker,
            redis,
            redis_client,
            namespace,
            metrics: Metrics::new(),
            clocks: WorkerClocks::default(),
            log_followers: Arc::new(tokio::sync::Semaphore::new(catalog.config.settings.web.max_log_followers)),
            websockets: Arc::new(tokio::sync::Semaphore::new(catalog.config.settings.web.max_websockets)),
            live,
            live_events: crate::live::channel(),
            sse_controls: crate::live::sse_channel(),
            reports: tokio::sync::Notify::new(),
            github: Default::default(),
            sign_in: Default::default(),
            amqp_user,
            catalog: RwLock::new(Arc::new(catalog)),
            worker_ids: Mutex::new(HashMap::new()),
        }
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog lock poisoned").clone()
    }

    /// The name the local worker of this master uses.
    pub fn local_worker_name(&self) -> WorkerName {
        self.catalog().local_worker_name(&self.name)
    }

    pub(crate) fn remember_worker(&self, worker: &WorkerName, id: WorkerId) {
        self.worker_ids.lock().expect("worker id lock poisoned").insert(worker.clone(), id);
    }

    pub(crate) async fn worker_id(&self, worker: &WorkerName) -> Result<WorkerId, StoreError> {
        if let Some(id) = self.worker_ids.lock().expect("worker id lock poisoned").get(worker) {
            return Ok(*id);
        }
        let id = self.store.ensure_worker(worker.as_str()).await?;
        self.remember_worker(worker, id);
        Ok(id)
    }
}
