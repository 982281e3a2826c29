//! A buildmaster worker. It consumes doorbells from the queues of the
//! builders the masters say it serves, claims builds through the masters,
//! runs their steps, streams logs into Redis and reports events. It never
//! talks to Postgres or to a master's HTTP port.
//!
//! A master runs the same library in-process when `use_local_worker` is on.

mod build;
mod doorbells;
mod events;
mod files;
mod filter;
mod groups;
mod lines;
mod logs;
pub mod metrics;
mod rpc;
mod step;
mod summary;
mod warnings;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::FieldTable;
use lapin::uri::{AMQPUri, AMQPUserInfo};
use lapin::{Channel, Connection, ConnectionProperties};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, IntoConnectionInfo};
use shared::ids::{BuildId, BuildRequestId, BuilderName, WorkerName};
use shared::names::Namespace;
use shared::wire::{self, BuildAssignment, ControlMessage, Doorbell, RpcReply, RpcRequest, WorkerEvent};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::doorbells::Doorbells;
use crate::events::EventSender;
use crate::rpc::RpcClient;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid RabbitMQ URL (amqp_url in worker.yaml): {0}")]
    BadUrl(String),
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(
        "{service} refused the login of `{user}`: the password in worker.yaml must equal this worker's in the \
         masters' settings.yaml, whose `worker_accounts` makes the account (or, with `login: from_urls`, the \
         URLs must carry working credentials)"
    )]
    LoginRefused { service: &'static str, user: String },
    #[error("another worker named `{0}` is already connected; each worker needs its own name")]
    NameInUse(String),
    #[error("no master answered within {0:?}; are masters running with the same namespace?")]
    NoAnswer(Duration),
    #[error("the masters refused this worker: {0}")]
    Refused(String),
    #[error("an event could not be sent: {0}")]
    EventRefused(String),
    #[error("the doorbell consumer stopped; the connection to RabbitMQ was lost")]
    ConsumerEnded,
    #[error("the connection to RabbitMQ was lost")]
    ConnectionLost,
    #[error("unexpected reply from a master: {0}")]
    UnexpectedReply(String),
}

impl WorkerError {
    fn from_amqp_login(error: lapin::Error, user: &str) -> Self {
        if error.to_string().contains("ACCESS_REFUSED") {
            WorkerError::LoginRefused { service: "RabbitMQ", user: user.to_owned() }
        } else {
            WorkerError::Amqp(error)
        }
    }

    fn from_redis_login(error: redis::RedisError, user: &str) -> Self {
        if error.kind() == redis::ErrorKind::AuthenticationFailed {
            WorkerError::LoginRefused { service: "Redis", user: user.to_owned() }
        } else {
            WorkerError::Redis(error)
        }
    }

    fn from_declare(error: lapin::Error, worker: &str) -> Self {
        if error.to_string().contains("RESOURCE_LOCKED") {
            WorkerError::NameInUse(worker.to_owned())
        } else {
            WorkerError::Amqp(error)
        }
    }
}

/// What a worker needs to run. Which builders it serves comes from the masters.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub name: WorkerName,
    pub amqp_url: String,
    pub redis_url: String,
    pub namespace: String,
    pub basedir: PathBuf,
    /// Who looks after it, shown in `workerinfo`.
    pub admin: Option<String>,
    /// Log in to RabbitMQ and Redis as this account instead of with the
    /// URLs' credentials.
    pub account: Option<Account>,
    /// The environment every step starts from (see
    /// `shared::config::StepEnvironment`).
    pub step_environment: BTreeMap<String, String>,
}

/// A worker's own account: `{ns}.worker.{name}` and its password.
#[derive(Clone)]
pub struct Account {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account").field("user", &self.user).finish_non_exhaustive()
    }
}

/// What the parts of a running worker share, across connections.
struct Context {
    name: WorkerName,
    /// The environment every step starts from.
    step_environment: BTreeMap<String, String>,
    namespace: Namespace,
    /// Where and as whom to connect to RabbitMQ; the user is also every
    /// message's `user_id`, which RabbitMQ checks and masters trust.
    amqp: AMQPUri,
    basedir: PathBuf,
    redis: ConnectionManager,
    events: EventSender,
    /// Builds running now, with their builder and the token that stops
    /// each.
    running: Mutex<HashMap<BuildId, (BuilderName, CancellationToken)>>,
    /// The builders of the running builds: their doorbells are left for
    /// other workers, as a worker runs one build of a builder at a time
    /// (the builder's directory is one build's).
    busy_builders: tokio::sync::watch::Sender<BTreeSet<BuilderName>>,
    /// A claim sent without an answer (the connection died meanwhile): a
    /// master may have made it a build, so the next session asks again with
    /// the same token before anything else, and runs that build.
    unanswered_claim: Mutex<Option<(BuilderName, Uuid)>>,
    /// Cancelled by SIGTERM or by a master's `Shutdown`: no new builds, exit
    /// once the running ones have reported.
    drain: CancellationToken,
    /// Whether the masters paused this worker (from the welcome, then from
    /// `SetPaused` on the control queue).
    paused: tokio::sync::watch::Sender<bool>,
    /// The version of `paused`: older news is ignored.
    pause_version: Mutex<i64>,
    /// The builders whose doorbells it consumes: from the welcome, then
    /// from `SetBuilders` when the masters' configuration changes.
    builders: tokio::sync::watch::Sender<Vec<BuilderName>>,
}

impl Context {
    fn start_running(&self, build: BuildId, builder: &BuilderName, stop: CancellationToken) {
        let mut running = self.running.lock().expect("running lock poisoned");
        running.insert(build, (builder.clone(), stop));
        self.busy_builders.send_replace(running.values().map(|(builder, _)| builder.clone()).collect());
    }

    fn stop_running(&self, build: BuildId) {
        let mut running = self.running.lock().expect("running lock poisoned");
        running.remove(&build);
        self.busy_builders.send_replace(running.values().map(|(builder, _)| builder.clone()).collect());
    }

    fn set_paused(&self, paused: bool, version: i64) {
        let mut seen = self.pause_version.lock().expect("pause lock poisoned");
        if version >= *seen {
            *seen = version;
            self.paused.send_replace(paused);
        }
    }
}

/// How long to wait for a master's answer before asking again.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const CLAIM_ATTEMPTS: u32 = 3;

/// Runs a worker. `drain` stops it taking new builds and returns once the
/// running ones finish; `stop_builds` stops the running ones (CANCELLED).
/// A lost connection to RabbitMQ is re-established with backoff and jitter;
/// running builds keep running meanwhile and report once it is back.
pub async fn run(
    options: WorkerOptions,
    drain: CancellationToken,
    stop_builds: CancellationToken,
) -> Result<(), WorkerError> {
    let namespace = Namespace::new(&options.namespace);
    // A worker killed on this directory may have left steps running in it:
    // they must not share it with the builds this one runs.
    let orphans = groups::kill_orphans(&options.basedir);
    if orphans > 0 {
        tracing::warn!(count = orphans, basedir = %options.basedir.display(), "killed steps a killed worker left running");
    }
    // A master's `Shutdown` drains this worker only, never what `drain`
    // belongs to (a master running a local worker).
    let drain = drain.child_token();
    let drain = &drain;
    let mut amqp = shared::amqp::uri(&options.amqp_url).map_err(WorkerError::BadUrl)?;
    let mut redis_info = options.redis_url.as_str().into_connection_info()?;
    if let Some(account) = &options.account {
        amqp.authority.userinfo = AMQPUserInfo { username: account.user.clone(), password: account.password.clone() };
        let login = redis_info.redis_settings().clone().set_username(&account.user).set_password(&account.password);
        redis_info = redis_info.set_redis_settings(login);
    }
    let user = amqp.authority.userinfo.username.clone();
    let redis = ConnectionManager::new(redis::Client::open(redis_info)?)
        .await
        .map_err(|error| WorkerError::from_redis_login(error, &user))?;
    let context = Arc::new(Context {
        name: options.name.clone(),
        step_environment: options.step_environment.clone(),
        events: EventSender::new(&namespace, &user),
        namespace,
        amqp,
        basedir: options.basedir.clone(),
        redis,
        running: Mutex::new(HashMap::new()),
        busy_builders: tokio::sync::watch::Sender::new(BTreeSet::new()),
        unanswered_claim: Mutex::new(None),
        drain: drain.clone(),
        paused: tokio::sync::watch::Sender::new(false),
        pause_version: Mutex::new(0),
        builders: tokio::sync::watch::Sender::new(Vec::new()),
    });
    let mut fleet = Fleet { slots: None, builds: JoinSet::new(), heartbeat: None, welcomes: 0 };
    let mut backoff = shared::amqp::Backoff::new();
    let outcome = loop {
        let welcomes_before = fleet.welcomes;
        let error = match session(&options, &context, &mut fleet, drain, &stop_builds).await {
            Ok(()) => break Ok(()),
            Err(error) => error,
        };
        // A refusal or a bad URL is final; so are a name in use (another
        // worker has it) and a refused login, at the very start. Later, a
        // refused login is accounts being restored (a broker or Redis that
        // lost them, synced again within `sync_seconds`): try again.
        let fatal = matches!(error, WorkerError::Refused(_) | WorkerError::BadUrl(_))
            || (fleet.welcomes == 0 && matches!(error, WorkerError::NameInUse(_) | WorkerError::LoginRefused { .. }));
        if fatal {
            break Err(error);
        }
        if fleet.welcomes > welcomes_before {
            backoff.reset();
        }
        let wait = backoff.next_wait();
        tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "worker lost its connection; reconnecting");
        // A draining worker still reconnects while builds run: they report
        // through the connection.
        tokio::select! {
            _ = drain.cancelled(), if fleet.builds.is_empty() => break Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    };
    while fleet.builds.join_next().await.is_some() {}
    if let Some(heartbeat) = fleet.heartbeat {
        heartbeat.abort();
    }
    let mut redis = context.redis.clone();
    let _: Result<(), _> = redis.del(context.namespace.presence_key(&context.name)).await;
    tracing::info!(worker.name = %context.name, "worker stopped");
    outcome
}

/// What outlives a connection: build slots, running builds, heartbeats.
struct Fleet {
    /// Created at the first welcome, from the masters' `max_builds`.
    slots: Option<Arc<Semaphore>>,
    builds: JoinSet<()>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// Sessions that got as far as the masters' welcome.
    welcomes: u64,
}

/// One connection's life: hello, then doorbells until `drain` (Ok) or until
/// the connection fails (Err).
async fn session(
    options: &WorkerOptions,
    context: &Arc<Context>,
    fleet: &mut Fleet,
    drain: &CancellationToken,
    stop_builds: &CancellationToken,
) -> Result<(), WorkerError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("buildmaster-worker {} {}", options.namespace, options.name).into());
    let user = &context.amqp.authority.userinfo.username;
    let connection = Connection::connect_uri(context.amqp.clone(), properties)
        .await
        .map_err(|error| WorkerError::from_amqp_login(error, user))?;
    let rpc = RpcClient::start(&connection, &context.namespace, &context.name, user).await?;
    context.events.attach(&connection).await?;
    // Declared before the hello, so a control message sent after the
    // masters read this worker's state waits in the queue instead of being
    // lost.
    let control = declare_control_queue(&connection, context).await?;
    let hello = RpcRequest::Hello { worker: context.name.clone(), info: worker_info(options.admin.as_deref()) };
    let welcome = rpc.call(&hello, RPC_TIMEOUT).await?;
    let (builders, max_builds, heartbeat_seconds) = match welcome {
        RpcReply::Welcome { builders, max_builds, heartbeat_seconds, paused, pause_version } => {
            context.set_paused(paused, pause_version);
            (builders, max_builds, heartbeat_seconds)
        }
        RpcReply::Refused { reason } => return Err(WorkerError::Refused(reason)),
        other => return Err(WorkerError::UnexpectedReply(format!("{other:?}"))),
    };
    let paused = *context.paused.borrow();
    tracing::info!(worker.name = %context.name, builders = builders.len(), max_builds, paused, "worker connected");
    context.builders.send_replace(builders);
    metrics::METRICS.connections.inc();
    fleet.welcomes += 1;
    let slots = fleet.slots.get_or_insert_with(|| Arc::new(Semaphore::new(max_builds as usize))).clone();
    if fleet.heartbeat.is_none() {
        let period = Duration::from_secs(heartbeat_seconds.max(1));
        fleet.heartbeat = Some(tokio::spawn(send_heartbeats(context.clone(), period, drain.clone())));
    }
    let control = listen_for_control(control, context).await?;
    let mut outcome = dispatch(&connection, context, &rpc, slots, &mut fleet.builds, drain, stop_builds).await;
    if outcome.is_ok() {
        // Draining: no new builds, but the running ones still need this
        // connection for their events, heartbeats and stop requests.
        tokio::select! {
            _ = async {
                while fleet.builds.join_next().await.is_some() {}
                // What they reported must reach RabbitMQ before the
                // connection closes: a worker stopped with builds stopped
                // (`--now`) waits briefly, a draining one longer.
                let limit = if stop_builds.is_cancelled() { Duration::from_secs(5) } else { Duration::from_secs(60) };
                if !context.events.flushed(limit).await {
                    tracing::warn!("some events were not confirmed before the worker stopped; their builds are retried");
                }
            } => {}
            _ = wait_until_closed(&connection) => outcome = Err(WorkerError::ConnectionLost),
        }
    }
    control.abort();
    let _ = connection.close(200, "worker session ends".into()).await;
    outcome
}

/// Listens to the doorbells of the builders it may take a build of now
/// (none while paused or at full capacity, none of a builder it is building)
/// and claims a build for each; a doorbell it stops listening to goes back
/// to RabbitMQ, so an idle worker of the same builder gets it.
async fn dispatch(
    connection: &Connection,
    context: &Arc<Context>,
    rpc: &RpcClient,
    slots: Arc<Semaphore>,
    builds: &mut JoinSet<()>,
    drain: &CancellationToken,
    stop_builds: &CancellationToken,
) -> Result<(), WorkerError> {
    let mut doorbells = Doorbells::open(connection).await?;
    let mut paused = context.paused.subscribe();
    let mut served = context.builders.subscribe();
    let mut busy = context.busy_builders.subscribe();
    let namespace = &context.namespace;
    let outcome = loop {
        while builds.try_join_next().is_some() {}
        if *paused.borrow_and_update() {
            // Paused: hand every held doorbell back for other workers, and
            // wait to be unpaused.
            doorbells.listen_to(namespace, &[]).await?;
            tracing::info!(worker.name = %context.name, "paused: taking no new builds");
            tokio::select! {
                _ = drain.cancelled() => break Ok(()),
                _ = wait_until_closed(connection) => break Err(WorkerError::ConnectionLost),
                _ = paused.wait_for(|paused| !*paused) => {}
            }
            tracing::info!(worker.name = %context.name, "unpaused");
            continue;
        }
        // At capacity, the running builds may be waiting for a new
        // connection to report: notice a lost one here too.
        let permit = tokio::select! {
            _ = drain.cancelled() => break Ok(()),
            _ = wait_until_closed(connection) => break Err(WorkerError::ConnectionLost),
            permit = slots.clone().acquire_owned() => permit.expect("semaphore never closes"),
        };
        let unanswered = context.unanswered_claim.lock().expect("claim lock poisoned").clone();
        if let Some((builder, token)) = unanswered {
            match claim(context, rpc, &builder, token, None).await {
                Ok(RpcReply::Claimed { build }) => {
                    tracing::info!(
                        build.id = %build.build_id,
                        "a claim left unanswered by a lost connection was a build"
                    );
                    start_build(context, build, permit, builds, stop_builds);
                    continue;
                }
                Ok(_) => {}
                Err(error) => break Err(error),
            }
        }
        // The builders it may take a build of now (the configuration
        // changes, a build of one starts or ends).
        let running = busy.borrow_and_update().clone();
        let builders: Vec<BuilderName> =
            served.borrow_and_update().iter().filter(|builder| !running.contains(*builder)).cloned().collect();
        doorbells.listen_to(namespace, &builders).await?;
        if builders.is_empty() {
            tokio::select! {
                _ = drain.cancelled() => break Ok(()),
                _ = wait_until_closed(connection) => break Err(WorkerError::ConnectionLost),
                _ = served.changed() => continue,
                _ = busy.changed() => continue,
            }
        }
        let delivery = tokio::select! {
            _ = drain.cancelled() => break Ok(()),
            _ = paused.changed() => continue,
            _ = served.changed() => continue,
            _ = busy.changed() => continue,
            delivery = doorbells.next() => delivery,
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => break Err(error.into()),
            None => break Err(WorkerError::ConsumerEnded),
        };
        let (builder, rung_for) = match wire::decode::<Doorbell>(&delivery.data) {
            Ok(Doorbell::Ring { builder, buildrequest_id }) => (builder, buildrequest_id),
            Err(error) => {
                tracing::warn!(%error, "dropping an unreadable doorbell");
                delivery.ack(BasicAckOptions::default()).await?;
                continue;
            }
        };
        // The doorbell continues the trace of the request that rang it; the
        // claim is its child, on whichever master answers.
        let span = tracing::info_span!(
            "doorbell",
            otel.name = format!("process {}", context.namespace.builder_queue(&builder)),
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            builder.name = %builder,
        );
        shared::telemetry::continue_from(&span, shared::amqp::traceparent_of(&delivery.properties).as_deref());
        let answer = claim(context, rpc, &builder, Uuid::new_v4(), rung_for).instrument(span).await;
        tracing::debug!(builder.name = %builder, ?rung_for, answer = ?answer.as_ref().map(|reply| match reply {
            RpcReply::Claimed { build } => format!("build {}", build.build_id),
            other => format!("{other:?}"),
        }), "doorbell answered");
        match answer {
            Ok(RpcReply::Claimed { build }) => {
                start_build(context, build, permit, builds, stop_builds);
                // Stop listening before the ack: while this doorbell is
                // unacked, no other doorbell of the builder comes to a
                // worker that cannot take it now.
                if slots.available_permits() == 0 {
                    doorbells.listen_to(namespace, &[]).await?;
                } else {
                    doorbells.stop(&builder).await?;
                }
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Ok(RpcReply::NothingPending) => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Ok(RpcReply::Refused { reason }) => {
                tracing::warn!(builder.name = %builder, %reason, "claim refused");
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Ok(other) => {
                tracing::warn!(reply = ?other, "unexpected reply to a claim");
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Err(error) => {
                tracing::warn!(%error, builder.name = %builder, "claim failed; handing the doorbell back");
                delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    doorbells.close("worker draining").await;
    outcome
}

/// What users see of this worker as Buildbot's `workerinfo`.
fn worker_info(admin: Option<&str>) -> std::collections::BTreeMap<String, String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from).to_string();
    let admin = admin.map(|admin| ("admin", admin.to_owned()));
    [
        ("host", host),
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ("os", std::env::consts::OS.to_owned()),
        ("arch", std::env::consts::ARCH.to_owned()),
        ("cpus", cpus),
        (wire::STEP_OPTIONS_INFO, wire::STEP_OPTIONS.join(" ")),
    ]
    .into_iter()
    .chain(admin)
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

async fn wait_until_closed(connection: &Connection) {
    while connection.status().connected() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Claims a build of `builder`, asking again with the same token when no
/// master answers, so a lost answer never makes a second build.
async fn claim(
    context: &Context,
    rpc: &RpcClient,
    builder: &BuilderName,
    token: Uuid,
    rung_for: Option<BuildRequestId>,
) -> Result<RpcReply, WorkerError> {
    *context.unanswered_claim.lock().expect("claim lock poisoned") = Some((builder.clone(), token));
    let running = context.running.lock().expect("running lock poisoned").keys().copied().collect();
    let request = RpcRequest::Claim {
        worker: context.name.clone(),
        builder: builder.clone(),
        claim_token: token,
        running: Some(running),
        rung_for,
    };
    let mut attempt = 1;
    let outcome = loop {
        match rpc.call(&request, RPC_TIMEOUT).await {
            Err(WorkerError::NoAnswer(_)) if attempt < CLAIM_ATTEMPTS => attempt += 1,
            other => break other,
        }
    };
    if outcome.is_ok() {
        *context.unanswered_claim.lock().expect("claim lock poisoned") = None;
    }
    outcome
}

/// Runs a claimed build in the background, holding its slot until it ends.
fn start_build(
    context: &Arc<Context>,
    build: BuildAssignment,
    permit: OwnedSemaphorePermit,
    builds: &mut JoinSet<()>,
    stop_builds: &CancellationToken,
) {
    let stop = stop_builds.child_token();
    context.start_running(build.build_id, &build.builder, stop.clone());
    let context = context.clone();
    // The build joins the trace of its request (the force, the schedule).
    let span = tracing::info_span!(
        "build",
        otel.name = format!("build {} #{}", build.builder, build.number),
        build.id = %build.build_id,
        build.number = build.number,
        builder.name = %build.builder,
        worker.name = %build.worker,
        build.results = tracing::field::Empty,
    );
    shared::telemetry::continue_from(&span, build.traceparent.as_deref());
    builds.spawn(
        async move {
            let build_id = build.build_id;
            tracing::info!(build.id = %build_id, builder.name = %build.builder, build.number = build.number, "build starting");
            metrics::METRICS.builds_running.inc();
            let outcome = build::run_build(&context, build, stop).await;
            metrics::METRICS.builds_running.dec();
            match outcome {
                Ok(results) => {
                    tracing::Span::current().record("build.results", results.name());
                    metrics::METRICS.builds_finished.with_label_values(&[results.name()]).inc();
                }
                // Its lease expires and a master retries it.
                Err(error) => tracing::error!(%error, build.id = %build_id, "build could not report its end"),
            }
            context.stop_running(build_id);
            drop(permit);
        }
        .instrument(span),
    );
}

/// Declares this worker's control queue (exclusive: a second worker with
/// the same name is refused here). Masters publish to it by name through
/// the default exchange, so it needs no binding.
async fn declare_control_queue(connection: &Connection, context: &Arc<Context>) -> Result<Channel, WorkerError> {
    let queue = context.namespace.worker_control_queue(&context.name);
    rpc::declare_own_queue(connection, &queue, &context.name).await
}

/// Handles control messages (stop a build, pause, shut down) from the
/// masters.
async fn listen_for_control(
    channel: Channel,
    context: &Arc<Context>,
) -> Result<tokio::task::JoinHandle<()>, WorkerError> {
    let queue = context.namespace.worker_control_queue(&context.name);
    let mut messages = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let context = context.clone();
    Ok(tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = messages.next().await {
            match wire::decode::<ControlMessage>(&delivery.data) {
                Ok(ControlMessage::StopBuild { build_id, reason }) => {
                    let stop = context
                        .running
                        .lock()
                        .expect("running lock poisoned")
                        .get(&build_id)
                        .map(|(_, stop)| stop.clone());
                    match stop {
                        Some(stop) => {
                            tracing::info!(build.id = %build_id, %reason, "stopping build");
                            stop.cancel();
                        }
                        None => tracing::info!(build.id = %build_id, "stop request for a build not running here"),
                    }
                }
                Ok(ControlMessage::SetPaused { paused, version }) => context.set_paused(paused, version),
                Ok(ControlMessage::SetBuilders { builders }) => {
                    tracing::info!(
                        builders = builders.len(),
                        "the masters' configuration changed: serving its builders"
                    );
                    context.builders.send_replace(builders);
                }
                Ok(ControlMessage::Shutdown { reason }) => {
                    tracing::info!(%reason, "shutdown asked by a master: finishing the running builds, then exiting");
                    context.drain.cancel();
                }
                Err(error) => tracing::warn!(%error, "unreadable control message"),
            }
        }
    }))
}

/// Tells the masters this worker is alive and extends its builds' leases;
/// marks it online in Redis for the UI.
async fn send_heartbeats(context: Arc<Context>, period: Duration, drain: CancellationToken) {
    let presence_key = context.namespace.presence_key(&context.name);
    let mut redis = context.redis.clone();
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = drain.cancelled() => {}
        }
        let build_ids: Vec<BuildId> = context.running.lock().expect("running lock poisoned").keys().copied().collect();
        let event = WorkerEvent::Heartbeat { worker: context.name.clone(), build_ids, sent_at: chrono::Utc::now() };
        if let Err(error) = context.events.send(&event).await {
            tracing::warn!(%error, "heartbeat not sent");
        }
        let ttl = period.as_secs().max(1) * 3;
        // Redis may be away: the heartbeat above (RabbitMQ) must not wait
        // for it, or leases would expire while Redis is down.
        match tokio::time::timeout(period, redis.set_ex::<_, _, ()>(&presence_key, "online", ttl)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "presence not updated"),
            Err(_) => tracing::warn!("presence not updated: Redis did not answer in time"),
        }
        if drain.is_cancelled() {
            // Keep the leases alive while the running builds finish.
            tokio::time::sleep(period).await;
        }
    }
}
