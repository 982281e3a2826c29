//! Schedulers that fire by themselves run on every master at once, with no
//! leader. Timed ones (`nightly` with a cron expression and a time zone,
//! `periodic`): each master looks at the recent ticks of each every second
//! and submits a buildset for each; the tick is written with its buildset in
//! one statement under a unique key (`scheduler_ticks`), so exactly one
//! master fires each tick, and ticks keep firing while any master is up.
//! `dependent` ones: each master looks every second for buildsets of the
//! upstream scheduler that finished well and are not followed yet; the
//! follower is made once per upstream buildset (a unique key again), so a
//! master that dies between the upstream's end and the follower loses
//! nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use shared::config::SchedulerConfig;
use shared::ids::BuilderName;
use tokio_util::sync::CancellationToken;

use crate::changes::{self, Change};
use crate::store::{NewBuildset, NewRequest};
use crate::{Master, MasterError};

/// How often each master looks for due ticks.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How far back a master looks: a tick missed for longer than this (every
/// master down, or a reload that removed the scheduler) is not fired late.
const CATCH_UP: chrono::Duration = chrono::Duration::seconds(10);

pub async fn run(master: Arc<Master>, shutdown: CancellationToken) -> Result<(), MasterError> {
    // The last tick of each scheduler this master has seen through (fired
    // by it or by another): later looks start after it.
    let mut done: HashMap<String, DateTime<Utc>> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
        if let Err(error) = build_stable_changes(&master).await {
            tracing::warn!(%error, "changes of quiet branches not built now; retrying");
        }
        let now = Utc::now();
        let catalog = master.catalog();
        for scheduler in &catalog.config.master.schedulers {
            if let SchedulerConfig::Dependent { name, upstream, builders } = scheduler
                && let Err(error) = follow(&master, name, upstream, builders).await
            {
                tracing::warn!(%error, scheduler = %name, "dependent builds not started now; retrying");
            }
            let since = done.get(scheduler.name()).copied().unwrap_or(now - CATCH_UP).max(now - CATCH_UP);
            for tick in scheduler.ticks(since, now) {
                match fire(&master, scheduler, tick).await {
                    Ok(()) => {
                        done.insert(scheduler.name().to_owned(), tick);
                    }
                    Err(error) => {
                        tracing::warn!(%error, scheduler = scheduler.name(), %tick, "tick not fired now; retrying");
                        break;
                    }
                }
            }
        }
    }
}

/// Builds the newest change of each branch that has been quiet for its
/// scheduler's `tree_stable_seconds`.
async fn build_stable_changes(master: &Arc<Master>) -> Result<(), MasterError> {
    let catalog = master.catalog();
    let created = master
        .store
        .build_stable_changes(|change| {
            let builders = catalog.config.master.schedulers.iter().find_map(|scheduler| match scheduler {
                SchedulerConfig::SingleBranch { name, builders, .. }
                | SchedulerConfig::AnyBranch { name, builders, .. }
                    if *name == change.scheduler =>
                {
                    Some(builders)
                }
                _ => None,
            })?;
            let held = Change {
                repository: change.repository.clone(),
                branch: change.branch.clone(),
                revision: change.revision.clone(),
                author: change.author.clone(),
                comments: change.comments.clone(),
                files: Vec::new(),
                category: change.category.clone(),
                pull_request: None,
            };
            let buildset = changes::buildset_for(&catalog, &change.scheduler, builders, &held);
            (!buildset.requests.is_empty()).then_some(buildset)
        })
        .await?;
    for buildset in created {
        tracing::info!(buildset.id = %buildset.id, "a quiet branch's newest change is built");
        master.collapse_older(&buildset).await;
        master.announce_buildset(&buildset).await;
    }
    Ok(())
}

/// Starts a buildset after each finished, unfollowed upstream one.
async fn follow(master: &Arc<Master>, name: &str, upstream: &str, builders: &[BuilderName]) -> Result<(), MasterError> {
    let catalog = master.catalog();
    for (upstream_id, upstream_properties) in master.store.unfollowed_buildsets(upstream, name).await? {
        let mut properties = upstream_properties.as_object().cloned().unwrap_or_default();
        properties.insert("scheduler".into(), json!([name, "Scheduler"]));
        let properties = serde_json::Value::Object(properties);
        let reason = format!("The {name} scheduler follows buildset {upstream_id} of {upstream}");
        let buildset = NewBuildset {
            reason: &reason,
            owner: None,
            owned_by: None,
            scheduler: name,
            properties: &properties,
            requests: catalog
                .builder_ids(builders)
                .into_iter()
                .map(|builder_id| NewRequest { builder_id, priority: 0 })
                .collect(),
            traceparent: None,
            tick: None,
            triggered_by: Some(upstream_id),
        };
        if let Some(created) = master.submit(buildset).await? {
            tracing::info!(scheduler = %name, upstream.buildset = %upstream_id, buildset.id = %created.id, "dependent builds started");
        }
    }
    Ok(())
}

/// Submits the buildset of one tick, unless a master already did.
async fn fire(master: &Arc<Master>, scheduler: &SchedulerConfig, tick: DateTime<Utc>) -> Result<(), MasterError> {
    let catalog = master.catalog();
    let (branch, configured) = match scheduler {
        SchedulerConfig::Nightly { branch, properties, .. } | SchedulerConfig::Periodic { branch, properties, .. } => {
            (branch, properties)
        }
        _ => return Ok(()),
    };
    let requests: Vec<NewRequest> = catalog
        .builder_ids(scheduler.builders())
        .into_iter()
        .map(|builder_id| NewRequest { builder_id, priority: 0 })
        .collect();
    let source = format!("Scheduler {}", scheduler.name());
    let mut properties: BTreeMap<String, serde_json::Value> = configured
        .iter()
        .map(|(name, value)| (name.clone(), json!([serde_json::to_value(value).unwrap_or_default(), source])))
        .collect();
    properties.insert("scheduler".into(), json!([scheduler.name(), "Scheduler"]));
    properties.insert("scheduled_for".into(), json!([tick.to_rfc3339(), source]));
    if let Some(branch) = branch {
        properties.insert("branch".into(), json!([branch, source]));
    }
    let properties = serde_json::to_value(properties).expect("properties serialize");
    let reason = format!("The {} scheduler fired for {}", scheduler.name(), tick.format("%Y-%m-%d %H:%M:%S UTC"));
    let buildset = NewBuildset {
        reason: &reason,
        owner: None,
        owned_by: None,
        scheduler: scheduler.name(),
        properties: &properties,
        requests,
        traceparent: None,
        tick: Some(tick),
        triggered_by: None,
    };
    if let Some(created) = master.submit(buildset).await? {
        tracing::info!(scheduler = scheduler.name(), %tick, buildset.id = %created.id, "scheduler fired");
    }
    Ok(())
}
