//! Answers workers' requests: "which builders do I serve?" and "give me the
//! next build of builder X". Any master answers any request; the claim itself
//! is one statement in Postgres, so two masters answering two workers at once
//! never hand out the same request.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};

use shared::config::interpolate;
use shared::config::{BuilderConfig, StepCommand, StepSpec, WorkerSettings};
use shared::ids::WorkerName;
use shared::wire::{self, BuildAssignment, RpcReply, RpcRequest, SecretValues};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::live::Change;
use crate::store::{Claim, StoreError};
use crate::{Master, MasterError, RETRY_DELAY};

/// RPC requests handled at once by one master.
const CONCURRENT_REQUESTS: usize = 32;

pub async fn serve_rpc(master: Arc<Master>, shutdown: CancellationToken) -> Result<(), MasterError> {
    let queue = master.namespace.rpc_queue();
    let handler = master.clone();
    master
        .broker
        .consume(&queue, CONCURRENT_REQUESTS, &shutdown, move |delivery| {
            let master = handler.clone();
            async move { handle_request(&master, delivery).await }
        })
        .await;
    Ok(())
}

async fn handle_request(master: &Master, delivery: Delivery) {
    let reply_to = delivery.properties.reply_to().as_ref().map(|s| s.as_str().to_owned());
    let correlation_id = delivery.properties.correlation_id().as_ref().map(|s| s.as_str().to_owned());
    let request = match (reply_to, correlation_id, wire::decode::<RpcRequest>(&delivery.data)) {
        (Some(reply_to), Some(correlation_id), Ok(request)) => (reply_to, correlation_id, request),
        (_, _, Err(error)) => {
            tracing::warn!(%error, "dead-lettering an unreadable RPC request");
            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
        _ => {
            tracing::warn!("dead-lettering an RPC request without reply_to or correlation_id");
            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
    };
    let (reply_to, correlation_id, request) = request;
    let user_id = delivery.properties.user_id().as_ref().map(|user| user.as_str());
    // Replies go only to the asking worker's own reply queue: a worker must
    // not make masters publish into queues it may not write itself.
    let worker = request_worker(&request);
    if reply_to != master.namespace.worker_reply_queue(worker.as_str()) {
        tracing::warn!(worker.name = %worker, %reply_to, "dead-lettering an RPC request whose reply_to is not its worker's");
        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
        return;
    }
    if let Err(error) = master.check_sender(user_id, worker) {
        tracing::warn!(%error, "refusing an RPC request");
        let refused = RpcReply::Refused { reason: error.to_string() };
        let _ = master.broker.reply(&reply_to, &correlation_id, &refused).await;
        let _ = delivery.ack(BasicAckOptions::default()).await;
        return;
    }
    let span = tracing::info_span!(
        "rpc",
        otel.name = format!("process {}", master.namespace.rpc_queue()),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        worker.name = %request_worker(&request),
        rpc.kind = request_kind(&request),
    );
    shared::telemetry::continue_from(&span, shared::amqp::traceparent_of(&delivery.properties).as_deref());
    async {
        match answer(master, request).await {
            Ok(reply) => {
                if let Err(error) = master.broker.reply(&reply_to, &correlation_id, &reply).await {
                    // The worker retries with the same claim token and gets the
                    // same build, so a lost reply loses nothing.
                    tracing::warn!(%error, "could not send the reply");
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            Err(error) => {
                tracing::warn!(%error, "could not answer now; handing the request back");
                tokio::time::sleep(RETRY_DELAY).await;
                let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
            }
        }
    }
    .instrument(span)
    .await
}

fn request_worker(request: &RpcRequest) -> &WorkerName {
    match request {
        RpcRequest::Hello { worker, .. } | RpcRequest::Claim { worker, .. } => worker,
    }
}

fn request_kind(request: &RpcRequest) -> &'static str {
    match request {
        RpcRequest::Hello { .. } => "hello",
        RpcRequest::Claim { .. } => "claim",
    }
}

/// The reply to one request. Errors are only those worth retrying.
async fn answer(master: &Master, request: RpcRequest) -> Result<RpcReply, StoreError> {
    let catalog = master.catalog();
    let config = &catalog.config;
    match request {
        RpcRequest::Hello { worker, info } => {
            let max_builds = match config.worker(worker.as_str()) {
                Some(settings) => settings.max_builds,
                None if catalog.is_local_worker(worker.as_str()) => config.settings.local_worker.max_builds,
                None => {
                    return Ok(RpcReply::Refused {
                        reason: format!(
                            "worker `{worker}` is not configured; add it to settings.yaml `workers:` on the masters"
                        ),
                    });
                }
            };
            let builders = catalog.builders_runnable_by(worker.as_str(), &wire::honoured_step_options(&info));
            let info = serde_json::to_value(&info).expect("strings serialize");
            let (worker_id, paused, pause_version) = master.store.worker_hello(worker.as_str(), &info).await?;
            // A downtime window pauses it too (see `downtime.rs`).
            let paused = paused || config.worker(worker.as_str()).is_some_and(|w| w.in_downtime(chrono::Utc::now()));
            master.remember_worker(&worker, worker_id);
            tracing::info!(worker.name = %worker, "worker said hello");
            let heartbeat_seconds = config.settings.builds.heartbeat_seconds;
            master.live.send(Change::Worker(worker_id, "connected"));
            Ok(RpcReply::Welcome { builders, max_builds, heartbeat_seconds, paused, pause_version })
        }
        RpcRequest::Claim { worker, builder, claim_token, running, rung_for } => {
            let Some((builder_config, builder_id)) = catalog.builder(builder.as_str()) else {
                return Ok(RpcReply::Refused { reason: format!("builder `{builder}` is not configured any more") });
            };
            if !config.may_run(builder_config, worker.as_str(), catalog.is_local_worker(worker.as_str())) {
                return Ok(RpcReply::Refused { reason: format!("worker `{worker}` may not run builder `{builder}`") });
            }
            let worker_settings = config.worker(worker.as_str());
            if worker_settings.is_some_and(|w| w.in_downtime(chrono::Utc::now())) {
                return Ok(RpcReply::NothingPending);
            }
            let worker_id = master.worker_id(&worker).await?;
            let claim = Claim {
                builder_id,
                builder_name: builder.as_str(),
                worker_id,
                worker_name: worker.as_str(),
                master_id: master.id,
                claim_token,
                running_builds: running.as_deref(),
                rung_for,
                lease_seconds: config.settings.builds.lease_seconds,
                configured_properties: &configured_properties(builder_config, worker_settings),
            };
            let Some(claimed) = master.store.claim(&claim).await? else {
                return Ok(RpcReply::NothingPending);
            };
            tracing::info!(build.id = %claimed.id, build.number = claimed.number, builder.name = %builder, worker.name = %worker, "build claimed");
            let waited = (chrono::Utc::now() - claimed.submitted_at).to_std().unwrap_or_default();
            master.metrics.build_started(builder.as_str(), waited);
            master.live.send(Change::Build(claimed.id, "new"));
            master.live.send(Change::Request(claimed.buildrequest_id, "claimed"));
            let template = &builder_config.steps;
            // Only the secrets this build's steps use travel to the worker
            // (to be masked in its logs), as the configuration names them.
            let secrets: BTreeMap<String, String> = template
                .iter()
                .flat_map(|step| step.env.values())
                .flat_map(|value| interpolate::secret_names(value))
                .filter_map(|name| Some((name.to_owned(), config.settings.secrets.get(name)?.expose().to_owned())))
                .collect();
            let steps = steps_for_build(template, &claimed.properties, &secrets);
            Ok(RpcReply::Claimed {
                build: BuildAssignment {
                    build_id: claimed.id,
                    builder,
                    number: claimed.number,
                    worker,
                    steps,
                    traceparent: claimed.traceparent,
                    secrets: SecretValues(secrets),
                    max_log_bytes: config.settings.builds.max_log_bytes,
                    file_limits: config.settings.builds.file_limits(),
                    // For workers of the previous version, which require them.
                    buildrequest_id: Some(claimed.buildrequest_id),
                    properties: bare_values(&claimed.properties),
                },
            })
        }
    }
}

/// The builder's and worker's configured properties, in Buildbot's shape
/// (`{"name": [value, source]}`); the worker's win.
fn configured_properties(builder: &BuilderConfig, worker: Option<&WorkerSettings>) -> serde_json::Value {
    let mut properties = serde_json::Map::new();
    let worker = worker.map(|worker| &worker.properties);
    for (source, values) in [("Builder", Some(&builder.properties)), ("Worker", worker)] {
        for (name, value) in values.into_iter().flatten() {
            let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
            properties.insert(name.clone(), serde_json::json!([value, source]));
        }
    }
    serde_json::Value::Object(properties)
}

/// Properties without their sources (`{"name": value}`).
fn bare_values(properties: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    let Some(properties) = properties.as_object() else { return BTreeMap::new() };
    properties
        .iter()
        .map(|(name, value)| match value {
            serde_json::Value::Array(pair) if pair.len() == 2 => (name.clone(), pair[0].clone()),
            other => (name.clone(), other.clone()),
        })
        .collect()
}

/// The steps as this build runs them, as the wire carries them: its
/// properties put into commands, environments and working directories
/// (`%(prop:NAME)s`), and its secrets into env values (`%(secret:NAME)s`).
/// Env values travel escaped (see `interpolate::with_late_properties`),
/// so what a property holds reaches the step as text, whatever it says;
/// properties earlier steps set are put in by the worker.
fn steps_for_build(
    steps: &[StepSpec],
    properties: &serde_json::Value,
    secrets: &BTreeMap<String, String>,
) -> Vec<wire::Step> {
    let empty = serde_json::Map::new();
    let properties = properties.as_object().unwrap_or(&empty);
    // Properties set by earlier steps are put in by the worker.
    let mut late: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        let mut texts: Vec<&str> = vec![&step.workdir];
        texts.extend(step.env.values().map(String::as_str));
        match &step.command {
            StepCommand::Argv(argv) => texts.extend(argv.iter().map(String::as_str)),
            StepCommand::Shell(script) => texts.push(script),
        }
        let uses_late = texts.iter().any(|text| interpolate::property_names(text).iter().any(|n| late.contains(*n)));
        // `checkconfig` made sure every secret named is defined.
        let text = |text: &str| {
            interpolate::with_late_properties(text, properties, secrets, &late).unwrap_or_else(|_| text.to_owned())
        };
        let mut env: BTreeMap<String, String> = step
            .env
            .iter()
            .filter_map(|(name, value)| {
                Some((name.clone(), interpolate::with_late_properties(value, properties, secrets, &late).ok()?))
            })
            .collect();
        let command = match &step.command {
            StepCommand::Argv(argv) if uses_late => wire::Command::Argv(argv.iter().map(|word| text(word)).collect()),
            StepCommand::Argv(argv) => {
                wire::Command::Argv(argv.iter().map(|word| interpolate::properties(word, properties)).collect())
            }
            StepCommand::Shell(script) => {
                let (script, variables) = interpolate::shell(script, properties, &late);
                env.extend(variables);
                wire::Command::Shell(script)
            }
        };
        let workdir = match uses_late {
            true => text(&step.workdir),
            false => interpolate::properties(&step.workdir, properties),
        };
        out.push(wire::Step {
            name: step.name.clone(),
            command,
            env,
            workdir,
            timeout: step.timeout,
            max_time: step.max_time,
            kill_grace: step.kill_grace,
            halt_on_failure: step.halt_on_failure,
            flunk_on_failure: step.flunk_on_failure,
            warn_on_failure: step.warn_on_failure,
            warn_on_warnings: step.warn_on_warnings,
            always_run: step.always_run,
            decode_rc: step.decode_rc.clone(),
            // Checked when the configuration loaded.
            warnings: step.warnings.as_ref().and_then(|warnings| warnings.resolve().ok()),
            test_summary: step.test_summary.as_ref().and_then(|summary| summary.resolve().ok()),
            test_results: step.test_results.clone(),
            artifacts: step.artifacts.clone(),
            set_property: step.set_property.clone(),
            run_if: step.run_if.clone(),
            late_properties: uses_late,
        });
        late.extend(step.set_property.clone());
    }
    out
}
