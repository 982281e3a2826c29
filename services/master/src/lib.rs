//! A buildmaster master node. Every master is identical and keeps no state
//! between requests beyond caches: any of them serves any HTTP request,
//! answers any worker's claim and records any worker's event, and any of them
//! can be killed at any moment. `run` is the whole node; `main` only parses
//! the command line, and tests call `run` on port 0.

pub mod accounts;
pub mod broker;
mod dispatch;
mod downtime;
mod events;
pub mod http;
pub mod live;
pub mod logs;
pub mod metrics;
mod pollers;
mod reconcile;
mod retention;
mod schedulers;
pub mod store;
pub mod web;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use shared::config::{BuilderConfig, Config};
use shared::names::Namespace;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broker::{Broker, BrokerError};
use crate::store::{NewBuildset, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("HTTP server error: {0}")]
    Http(#[from] std::io::Error),
    #[error("local worker failed: {0}")]
    LocalWorker(#[from] worker::WorkerError),
}

/// The configuration a master runs with, and the database ids of its builders.
/// Replaced whole on reload; readers hold an `Arc` to a consistent snapshot.
pub struct Catalog {
    pub config: Config,
    pub builder_ids: HashMap<String, i32>,
}

impl Catalog {
    pub fn builder(&self, name: &str) -> Option<(&BuilderConfig, i32)> {
        let builder = self.config.builder(name)?;
        Some((builder, *self.builder_ids.get(name)?))
    }
}

/// What every part of a master shares. Caches only: the truth is in Postgres.
pub struct Master {
    pub name: String,
    pub id: i32,
    pub store: Store,
    pub broker: Broker,
    pub redis: ConnectionManager,
    /// For connections of their own, which live-log followers hold while
    /// they wait for output.
    pub redis_client: redis::Client,
    pub namespace: Namespace,
    pub metrics: metrics::Metrics,
    /// Live events for this master's `/ws` clients, relayed from Redis.
    pub live: tokio::sync::broadcast::Sender<Arc<live::LiveEvent>>,
    /// The RabbitMQ user masters log in as (from `amqp_url`); messages it
    /// published come from a master's own local worker.
    amqp_user: String,
    catalog: RwLock<Arc<Catalog>>,
    worker_ids: Mutex<HashMap<String, i32>>,
}

/// A message that speaks for a worker was published by an account that may
/// not.
#[derive(Debug, thiserror::Error)]
#[error(
    "a message for worker `{worker}` was published by {}; only the account `{expected}` may speak for it",
    published_by.as_deref().map_or("no stated user".to_owned(), |user| format!("`{user}`"))
)]
pub struct ImpersonationError {
    worker: String,
    published_by: Option<String>,
    expected: String,
}

impl Master {
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog lock poisoned").clone()
    }

    /// The name the local worker of this master uses.
    pub fn local_worker_name(&self) -> String {
        let settings = &self.catalog().config.settings;
        format!("{}-{}", settings.local_worker.name, self.name)
    }

    /// Whether `worker` is some master's local worker.
    pub(crate) fn is_local_worker(catalog: &Catalog, worker: &str) -> bool {
        let settings = &catalog.config.settings;
        settings.use_local_worker
            && worker.starts_with(&format!("{}-", settings.local_worker.name))
            && catalog.config.worker(worker).is_none()
    }

    /// Whether a message speaking for `worker` may be believed, from the
    /// `user_id` RabbitMQ validated against the publisher's login. With
    /// `worker_accounts`, only the worker's own account (or the masters',
    /// for their local workers) may speak for it. Without, workers share
    /// credentials and cannot be told apart: every message is believed.
    pub(crate) fn check_sender(&self, user_id: Option<&str>, worker: &str) -> Result<(), ImpersonationError> {
        if self.catalog().config.settings.worker_accounts.is_none() {
            return Ok(());
        }
        let expected = self.namespace.worker_account(worker);
        match user_id {
            Some(user) if user == expected || user == self.amqp_user => Ok(()),
            _ => Err(ImpersonationError {
                worker: worker.to_owned(),
                published_by: user_id.map(str::to_owned),
                expected,
            }),
        }
    }

    /// Applies a new configuration: builders synced to Postgres, their queues
    /// declared, then the catalog swapped whole. Requests and builds in
    /// flight are untouched; a removed builder keeps its history. Service
    /// URLs and the namespace take effect only on restart.
    pub async fn apply(&self, config: Config) -> Result<(), MasterError> {
        let builder_names: Vec<String> = config.master.builders.iter().map(|b| b.name.clone()).collect();
        let builder_ids = self.store.sync_builders(&config.master.builders).await?;
        self.broker.declare_topology(&builder_names).await?;
        let summary = config.summary();
        *self.catalog.write().expect("catalog lock poisoned") = Arc::new(Catalog { config, builder_ids });
        tracing::info!(master.name = %self.name, %summary, "configuration applied");
        if let Err(error) = accounts::sync(self).await {
            tracing::error!(%error, "worker accounts not synced; retrying every sync_seconds");
        }
        self.announce_builders().await;
        Ok(())
    }

    /// Tells each connected worker which builders it serves now (after its
    /// account may read their queues); one not connected learns it at its
    /// hello.
    async fn announce_builders(&self) {
        let catalog = self.catalog();
        let config = &catalog.config;
        let mut workers: Vec<(String, bool)> =
            config.settings.workers.iter().map(|w| (w.name.clone(), false)).collect();
        if config.settings.use_local_worker {
            workers.push((self.local_worker_name(), true));
        }
        for (worker, is_local) in workers {
            let builders = config.builders_for_worker(&worker, is_local).into_iter().map(|b| b.name.clone()).collect();
            match self.broker.send_control(&worker, &shared::wire::ControlMessage::SetBuilders { builders }).await {
                Ok(()) | Err(BrokerError::Unroutable(_)) => {}
                Err(error) => tracing::warn!(%error, worker.name = %worker, "could not tell a worker its builders"),
            }
        }
    }

    /// Reloads both files from disk; a configuration with errors is not
    /// applied, and the errors are logged and recorded for the API and the
    /// web UI (`masters.config_error`) until a reload succeeds.
    async fn reload(&self) -> bool {
        let path = self.catalog().config.settings_path.clone();
        let refused = match Config::load(&path) {
            Ok(config) => match self.apply(config).await {
                Ok(()) => None,
                Err(error) => {
                    tracing::error!(%error, "configuration valid but not applied; will apply on the next reload");
                    Some(format!("valid but not applied: {error}"))
                }
            },
            Err(errors) => {
                tracing::error!(errors = %errors, "configuration has errors; keeping the current one");
                Some(errors.to_string())
            }
        };
        if let Err(error) = self.store.set_config_error(self.id, refused.as_deref()).await {
            tracing::warn!(%error, "could not record the outcome of the reload");
        }
        // Applied, or refused for the files' own errors (retrying cannot
        // help until they change); `false` when applying failed for a
        // passing reason (a service down), which is worth retrying.
        !refused.as_deref().is_some_and(|why| why.starts_with("valid but not applied"))
    }

    /// Reloads when settings.yaml or master.yaml changes on disk, as SIGHUP
    /// and `make update-master` do: an edit reaches every master within
    /// seconds, with no restart.
    async fn watch_config(&self, shutdown: CancellationToken) {
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

    /// Commits a buildset, then collapses the queue behind it (builders
    /// with `collapse_requests`), rings the builders' doorbells and tells
    /// live clients. The one way builds are asked for: forces, rebuilds and
    /// schedulers all come here. A tick already fired creates nothing.
    pub async fn submit(self: &Arc<Self>, buildset: NewBuildset<'_>) -> Result<(i64, Vec<(i32, i64)>), StoreError> {
        let (buildset_id, created) = self.store.create_buildset(buildset).await?;
        self.announce_buildset(buildset_id, &created).await;
        Ok((buildset_id, created))
    }

    /// What follows the commit of a buildset's requests (see `submit`).
    pub async fn announce_buildset(self: &Arc<Self>, buildset_id: i64, created: &[(i32, i64)]) {
        if created.is_empty() {
            return;
        }
        let catalog = self.catalog();
        let name_of =
            |id: i32| catalog.builder_ids.iter().find(|(_, known)| **known == id).map(|(name, _)| name.as_str());
        let collapsing: Vec<i32> = created
            .iter()
            .map(|(builder_id, _)| *builder_id)
            .filter(|id| {
                name_of(*id).and_then(|name| catalog.config.builder(name)).is_some_and(|b| b.collapse_requests)
            })
            .collect();
        if !collapsing.is_empty() {
            // The new requests are committed either way; collapsing tidies.
            match self.store.collapse_older(buildset_id, &collapsing).await {
                Ok(skipped) => {
                    for request_id in skipped {
                        tracing::info!(
                            buildrequest.id = request_id,
                            buildset.id = buildset_id,
                            "request superseded: SKIPPED"
                        );
                        live::publish_request(self, request_id, "complete").await;
                    }
                }
                Err(error) => tracing::warn!(%error, buildset.id = buildset_id, "older requests not collapsed"),
            }
        }
        let announcements = created
            .iter()
            .filter_map(|(builder_id, request_id)| Some((name_of(*builder_id)?.to_owned(), *request_id)))
            .collect();
        self.announce(announcements).await;
        tracing::info!(buildset.id = buildset_id, "buildset submitted");
        live::publish_buildset(self, buildset_id, "new").await;
        for (_, request_id) in created {
            live::publish_request(self, *request_id, "new").await;
        }
    }

    /// Rings the doorbells of requests just committed, all at once so their
    /// confirms arrive together. It runs as a task of its own: a client that
    /// hangs up must not cancel it half-way, or the requests would wait for
    /// the reconciler (`redeliver_after_seconds`) instead of running now.
    pub async fn announce(self: &Arc<Self>, requests: Vec<(String, i64)>) {
        let master = self.clone();
        let ringing = tokio::spawn(
            async move {
            let rings = requests.iter().map(|(builder, request_id)| master.broker.ring(builder, *request_id, None));
            let mut unannounced = Vec::new();
            for ((_, request_id), rung) in requests.iter().zip(futures_util::future::join_all(rings).await) {
                if let Err(error) = rung {
                    tracing::warn!(%error, buildrequest.id = request_id, "doorbell not rung; the reconciler will ring it");
                    unannounced.push(*request_id);
                }
            }
            if !unannounced.is_empty() {
                // Best effort: if even this fails, the request is rung again
                // once `redeliver_after_seconds` have passed.
                let _ = master.store.mark_unannounced(&unannounced).await;
            }
        }
            // The doorbells belong to the trace of the request that rang them.
            .instrument(tracing::Span::current()),
        );
        let _ = ringing.await;
    }

    /// The configured name of the builder of an item the API served (a
    /// build, a request), from the catalog.
    pub(crate) fn builder_name_of(&self, item: &serde_json::Value) -> Option<String> {
        let id = item.get("builderid")?.as_i64()?;
        let catalog = self.catalog();
        catalog.builder_ids.iter().find(|(_, builder_id)| i64::from(**builder_id) == id).map(|(name, _)| name.clone())
    }

    fn remember_worker(&self, worker: &str, id: i32) {
        self.worker_ids.lock().expect("worker id lock poisoned").insert(worker.to_owned(), id);
    }

    async fn worker_id(&self, worker: &str) -> Result<i32, StoreError> {
        if let Some(id) = self.worker_ids.lock().expect("worker id lock poisoned").get(worker) {
            return Ok(*id);
        }
        let id = self.store.ensure_worker(worker).await?;
        self.remember_worker(worker, id);
        Ok(id)
    }
}

/// Postgres connections of one master for triggers, claims and events.
const PIPELINE_CONNECTIONS: u32 = 8;
/// Postgres connections of one master for API reads. Few on purpose: reads
/// are short and CPU-bound in Postgres, so more of them at once only queue
/// inside the database, in front of the claims and events that keep builds
/// moving (bench/PROFILE.md has the figures).
const READ_CONNECTIONS: u32 = 2;

/// Connects to Postgres, RabbitMQ and Redis, checks the schema, and prepares
/// the topology for the configured builders.
pub async fn connect(config: Config, master_name: &str) -> Result<Arc<Master>, MasterError> {
    let settings = &config.settings;
    let namespace = Namespace::new(&settings.namespace);
    let store = Store::connect(settings.database_url.expose(), PIPELINE_CONNECTIONS, READ_CONNECTIONS).await?;
    store.check_schema().await?;
    let broker =
        Broker::connect(settings.amqp_url.expose(), namespace.clone(), &format!("buildmaster {master_name}")).await?;
    let amqp_user =
        shared::amqp::uri(settings.amqp_url.expose()).map_err(BrokerError::BadUrl)?.authority.userinfo.username;
    let redis_client = redis::Client::open(settings.redis_url.expose())?;
    let redis = ConnectionManager::new(redis_client.clone()).await?;
    let id = store.register_master(master_name).await?;
    let builder_ids = store.sync_builders(&config.master.builders).await?;
    let builder_names: Vec<String> = config.master.builders.iter().map(|b| b.name.clone()).collect();
    broker.declare_topology(&builder_names).await?;
    Ok(Arc::new(Master {
        name: master_name.to_owned(),
        id,
        store,
        broker,
        redis,
        redis_client,
        namespace,
        live: live::channel(),
        metrics: metrics::Metrics::new(),
        amqp_user,
        catalog: RwLock::new(Arc::new(Catalog { config, builder_ids })),
        worker_ids: Mutex::new(HashMap::new()),
    }))
}

/// Runs a master until `shutdown` is cancelled or a part of it fails. Each
/// notification of `reload` reloads the configuration files.
pub async fn run(
    config: Config,
    master_name: String,
    listener: TcpListener,
    shutdown: CancellationToken,
    reload: Arc<Notify>,
) -> Result<(), MasterError> {
    let master = connect(config, &master_name).await?;
    // Started from the files on disk: whatever an earlier run refused is over.
    master.store.set_config_error(master.id, None).await?;
    // Workers cannot log in before their accounts exist; a master that
    // cannot make them still serves (and retries every sync_seconds).
    if let Err(error) = accounts::sync(&master).await {
        tracing::error!(%error, "worker accounts not synced; retrying every sync_seconds");
    }
    let local_worker = {
        let settings = &master.catalog().config.settings;
        settings.use_local_worker.then(|| worker::WorkerOptions {
            name: master.local_worker_name(),
            amqp_url: settings.amqp_url.expose().to_owned(),
            redis_url: settings.redis_url.expose().to_owned(),
            namespace: settings.namespace.clone(),
            basedir: settings.local_worker.basedir.join(&master.name),
            admin: None,
            // The local worker logs in as the master does, and is trusted.
            account: None,
        })
    };
    tracing::info!(master.name = %master.name, master.id = master.id, address = %listener.local_addr()?, "master started");
    if master.catalog().config.settings.users.is_empty() {
        tracing::warn!("no users in settings.yaml: anyone who reaches the masters may force, stop and cancel builds");
    }

    let stopping = shutdown.child_token();
    let mut tasks: JoinSet<Result<(), MasterError>> = JoinSet::new();
    tasks.spawn({
        let master = master.clone();
        let stopping = stopping.clone();
        async move {
            master.broker.supervise(stopping).await;
            Ok(())
        }
    });
    tasks.spawn(dispatch::serve_rpc(master.clone(), stopping.clone()));
    tasks.spawn(events::record_events(master.clone(), stopping.clone()));
    tasks.spawn(reconcile::reconcile(master.clone(), stopping.clone()));
    tasks.spawn(live::relay(master.clone(), stopping.clone()));
    tasks.spawn(retention::retain(master.clone(), stopping.clone()));
    tasks.spawn(accounts::keep_in_sync(master.clone(), stopping.clone()));
    tasks.spawn(schedulers::run(master.clone(), stopping.clone()));
    tasks.spawn(pollers::run(master.clone(), stopping.clone()));
    tasks.spawn(downtime::watch(master.clone(), stopping.clone()));
    tasks.spawn({
        let master = master.clone();
        let stopping = stopping.clone();
        async move {
            master.watch_config(stopping).await;
            Ok(())
        }
    });
    tasks.spawn({
        let master = master.clone();
        let stopping = stopping.clone();
        async move {
            loop {
                tokio::select! {
                    _ = stopping.cancelled() => return Ok(()),
                    _ = reload.notified() => {
                        master.reload().await;
                    }
                }
            }
        }
    });
    tasks.spawn({
        let master = master.clone();
        let stopping = stopping.clone();
        async move {
            let serving = axum::serve(listener, http::router(master))
                .with_graceful_shutdown({
                    let stopping = stopping.clone();
                    async move { stopping.cancelled().await }
                })
                .into_future();
            // Requests in flight get a grace period to finish; a live log
            // followed for hours must not hold the master up, so what is
            // still open then is cut (its client reconnects elsewhere).
            tokio::select! {
                served = serving => served?,
                _ = async { stopping.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                    tracing::warn!(grace_seconds = SHUTDOWN_GRACE.as_secs(), "connections still open after the grace period are closed");
                }
            }
            Ok(())
        }
    });
    if let Some(options) = local_worker {
        let stopping = stopping.clone();
        tasks.spawn(async move { Ok(worker::run(options, stopping.clone(), stopping).await?) });
    }

    let mut outcome = Ok(());
    while let Some(finished) = tasks.join_next().await {
        let result = finished.unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()));
        if let Err(error) = result
            && outcome.is_ok()
        {
            outcome = Err(error);
        }
        // Whatever ended first, the rest of the node goes down with it: a
        // master without one of its parts must not look healthy.
        stopping.cancel();
    }
    master.broker.close().await;
    tracing::info!(master.name = %master.name, "master stopped");
    outcome
}

/// How often a master looks at its configuration files for edits.
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// How long HTTP requests in flight may take to finish once a master is
/// told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long to wait before retrying after a failure that may pass.
pub(crate) const RETRY_DELAY: Duration = Duration::from_millis(500);
