//! A buildmaster master node. Every master is identical and keeps no state
//! between requests beyond caches: any of them serves any HTTP request,
//! answers any worker's claim and records any worker's event, and any of them
//! can be killed at any moment. `run` is the whole node; `main` only parses
//! the command line, and tests call `run` on port 0.
//!
//! Domain modules (submitting, changes and schedulers, the read model, live
//! events, accounts, recording) sit below; `http` (the API, webhooks and
//! the web UI) is the edge and calls them. No module outside `http` imports
//! it (`make lint` checks).

pub mod accounts;
pub mod auth;
pub mod broker;
pub mod catalog;
pub mod changes;
mod clocks;
pub mod console;
mod dispatch;
mod downtime;
mod events;
mod files;
pub mod github_app;
pub mod http;
mod junit;
pub mod live;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod read_model;
mod reconcile;
pub mod release;
mod reload;
mod reporters;
mod retention;
mod schedulers;
pub mod sign_in;
pub mod store;
mod submit;
pub mod urls;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use shared::config::Config;
use shared::names::Namespace;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError};
use crate::catalog::Catalog;
pub use crate::node::Master;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(
        "settings.yaml lists no users, so anyone who reaches this master could force, stop and cancel builds, and \
         it would be reachable beyond this machine ({reachable}). Add a user: run `buildmaster hash-password`, and \
         put `users: [{{name: you, password_hash: '<its output>', roles: [admins]}}]` in settings.yaml. Or, on a \
         network where everyone may, set `web: {{anonymous_control: true}}`."
    )]
    OpenControl { reachable: String },
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

/// Postgres connections of one master for triggers, claims and events.
const PIPELINE_CONNECTIONS: u32 = 8;
/// Postgres connections of one master for API reads. Few on purpose: reads
/// are short and CPU-bound in Postgres, so more of them at once only queue
/// inside the database, in front of the claims and events that keep builds
/// moving (bench/PROFILE.md has the figures).
const READ_CONNECTIONS: u32 = 2;

/// Connects to Postgres, RabbitMQ and Redis, checks the schema, and prepares
/// the topology for the configured builders. The live events' inbox is for
/// the publisher task `run` starts.
async fn connect(config: Config, master_name: &str) -> Result<(Arc<Master>, live::Inbox), MasterError> {
    let settings = &config.settings;
    let namespace = Namespace::new(&settings.namespace);
    let read_timeout = Duration::from_secs(settings.web.read_timeout_seconds);
    let store = Store::connect_with_read_timeout(
        settings.database_url.expose(),
        PIPELINE_CONNECTIONS,
        READ_CONNECTIONS,
        read_timeout,
    )
    .await?;
    store.check_schema().await?;
    let broker =
        Broker::connect(settings.amqp_url.expose(), namespace.clone(), &format!("buildmaster {master_name}")).await?;
    let amqp_user =
        shared::amqp::uri(settings.amqp_url.expose()).map_err(BrokerError::BadUrl)?.authority.userinfo.username;
    let redis_client = redis::Client::open(settings.redis_url.expose())?;
    let redis = ConnectionManager::new(redis_client.clone()).await?;
    let id = store.register_master(master_name).await?;
    let builder_ids = store.sync_builders(&config.master.builders).await?;
    let builder_names: Vec<_> = config.master.builders.iter().map(|b| b.name.clone()).collect();
    broker.declare_topology(&builder_names).await?;
    let (publisher, inbox) = live::Publisher::new();
    let catalog = Catalog::new(config, builder_ids);
    let master =
        Master::new(master_name, id, store, broker, redis, redis_client, namespace, publisher, amqp_user, catalog);
    Ok((Arc::new(master), inbox))
}

/// Refuses to serve control actions to anyone beyond this machine unless
/// settings.yaml says so: with no users, only a master on a loopback
/// address (with a loopback `web.url`, if any) starts.
fn refuse_open_control(config: &Config, listening: std::net::SocketAddr) -> Result<(), MasterError> {
    let web = &config.settings.web;
    if config.settings.has_accounts() || web.anonymous_control {
        return Ok(());
    }
    if !listening.ip().is_loopback() {
        return Err(MasterError::OpenControl { reachable: format!("it listens on {listening}") });
    }
    if let Some(url) = &web.url
        && !urls::is_loopback(url)
    {
        return Err(MasterError::OpenControl { reachable: format!("web.url is {url}") });
    }
    Ok(())
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
    refuse_open_control(&config, listener.local_addr()?)?;
    let (master, live_inbox) = connect(config, &master_name).await?;
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
            // Its steps get what any worker's get, not the master's
            // environment (which names settings.yaml).
            step_environment: settings.local_worker.step_environment.resolve(std::env::vars()),
        })
    };
    tracing::info!(master.name = %master.name, master.id = %master.id, address = %listener.local_addr()?, "master started");
    if !master.catalog().config.settings.has_accounts() {
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
    tasks.spawn(live::publish(master.clone(), live_inbox, stopping.clone()));
    tasks.spawn(retention::retain(master.clone(), stopping.clone()));
    tasks.spawn(accounts::keep_in_sync(master.clone(), stopping.clone()));
    tasks.spawn(schedulers::run(master.clone(), stopping.clone()));
    tasks.spawn(changes::pollers::run(master.clone(), stopping.clone()));
    tasks.spawn(downtime::watch(master.clone(), stopping.clone()));
    tasks.spawn(reporters::deliver(master.clone(), stopping.clone()));
    tasks.spawn(reporters::watch_workers(master.clone(), stopping.clone()));
    tasks.spawn(reporters::irc::hold(master.clone(), stopping.clone()));
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

/// How long HTTP requests in flight may take to finish once a master is
/// told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long to wait before retrying after a failure that may pass.
pub(crate) const RETRY_DELAY: Duration = Duration::from_millis(500);
