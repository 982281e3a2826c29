//! Changes and the builds they start: a push or a pull request (GitHub's
//! webhook, `github`), or a new commit a poller found (`pollers`), becomes
//! a `Plan`: the change to record and the buildsets its schedulers start,
//! now or once the branch is quiet. `record` writes a plan in one
//! transaction, once per delivery, and then announces its buildsets.
//!
//! Nothing here knows HTTP: the webhook's handler (`http::github`) checks
//! the signature and hands the payload over.

pub mod github;
pub mod pollers;

use std::sync::Arc;

use serde_json::json;
use shared::config::{Config, SchedulerConfig, path_matches};
use shared::ids::{BuilderName, BuildsetId, ChangeId};

use crate::catalog::Catalog;
use crate::node::Master;
use crate::store::{NewChange, NewRequest, OwnedBuildset, StoreError};

/// A change as a change source reports it.
#[derive(Debug, Clone)]
pub struct Change {
    pub repository: String,
    pub branch: String,
    pub revision: String,
    pub author: String,
    pub comments: String,
    pub files: Vec<String>,
    /// `push`, `pull_request`, `comment`, `poll`, `poll-start`.
    pub category: String,
    /// The pull request a change is of (its builds are of its merge ref).
    pub pull_request: Option<PullRequest>,
}

/// A pull request: its number, and its head commit, where its builds'
/// commit statuses go.
#[derive(Debug, Clone)]
pub struct PullRequest {
    pub number: i64,
    pub head_sha: String,
}

/// What a change asks for: the change to record, the builds to start, and
/// what to do on the pull request that asked.
pub struct Plan {
    change: Option<Change>,
    builds: Vec<Wanted>,
    /// Schedulers that build once the branch is quiet: (name, seconds).
    deferred: Vec<(String, u64)>,
    /// Entered in the outbox with the change (or alone when there is
    /// none), once per delivery.
    actions: Vec<PullRequestAction>,
    /// Why, for the source's answer and the log.
    pub why: String,
}

impl Plan {
    /// Nothing to record.
    pub fn ignored(why: String) -> Plan {
        Plan { change: None, builds: Vec::new(), deferred: Vec::new(), actions: Vec::new(), why }
    }

    /// A change to record that builds nothing.
    pub fn record_only(change: Change, why: &str) -> Plan {
        Plan {
            change: Some(change),
            builds: Vec::new(),
            deferred: Vec::new(),
            actions: Vec::new(),
            why: why.to_owned(),
        }
    }

    /// Also does `action` on the pull request.
    pub fn and(mut self, action: PullRequestAction) -> Plan {
        self.actions.push(action);
        self
    }
}

/// What the pull-request loop does on GitHub, through the outbox, so that
/// it happens once whichever master takes the delivery or dies after it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum PullRequestAction {
    /// Takes the label that scheduled builds off the pull request, so
    /// adding it again schedules them again.
    RemoveLabel { repository: String, number: i64, label: String },
    /// Answers a `!buildbot` command.
    AnswerCommand { repository: String, number: i64, body: String },
}

impl PullRequestAction {
    /// The outbox's name for it.
    pub fn event(&self) -> &'static str {
        match self {
            PullRequestAction::RemoveLabel { .. } => "remove_label",
            PullRequestAction::AnswerCommand { .. } => "answer_command",
        }
    }
}

/// One buildset: a scheduler and the builders it starts.
struct Wanted {
    scheduler: String,
    builders: Vec<BuilderName>,
}

/// What a change source delivered, as it is recorded once: by the id it
/// gave, and by the SHA-256 of a signed body.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub id: &'a str,
    pub payload_sha256: Option<&'a [u8]>,
}

/// What became of a plan.
pub enum Recorded {
    /// It asked for nothing to be recorded.
    Ignored,
    /// Its delivery was recorded before: nothing changed.
    Before,
    New {
        change: ChangeId,
        buildsets: Vec<BuildsetId>,
    },
}

/// Records a plan's change and its buildsets in one transaction, then rings
/// their doorbells. `delivery` (the source's id of what it sent) makes it
/// happen once.
pub async fn record(
    master: &Arc<Master>,
    source: &str,
    delivery: Delivery<'_>,
    plan: &Plan,
) -> Result<Recorded, StoreError> {
    let actions: Vec<(&str, serde_json::Value)> =
        plan.actions.iter().map(|action| (action.event(), json!(action))).collect();
    let Some(change) = &plan.change else {
        if !actions.is_empty() {
            master.store.enter_actions(delivery.id, &actions).await?;
            master.reports.notify_waiters();
        }
        return Ok(Recorded::Ignored);
    };
    let catalog = master.catalog();
    let new_change = NewChange {
        delivery: Some(delivery.id),
        payload_sha256: delivery.payload_sha256,
        source,
        repository: &change.repository,
        branch: &change.branch,
        revision: &change.revision,
        author: &change.author,
        comments: &change.comments,
        files: &change.files,
        category: &change.category,
    };
    let prepared: Vec<OwnedBuildset> =
        plan.builds.iter().map(|wanted| buildset_for(&catalog, &wanted.scheduler, &wanted.builders, change)).collect();
    let traceparent = shared::telemetry::traceparent();
    let buildsets = prepared
        .iter()
        .filter(|buildset| !buildset.requests.is_empty())
        .map(|buildset| buildset.as_new(traceparent.clone()))
        .collect();
    let recorded = master.store.record_change(&new_change, buildsets, &plan.deferred, &actions).await?;
    let Some((change_id, created)) = recorded else {
        return Ok(Recorded::Before);
    };
    if !actions.is_empty() {
        master.reports.notify_waiters();
    }
    for buildset in &created {
        master.collapse_older(buildset).await;
        master.announce_later(buildset.clone());
    }
    let buildsets: Vec<BuildsetId> = created.iter().map(|buildset| buildset.id).collect();
    tracing::info!(change.id = %change_id, %source, category = %change.category, ?buildsets, "change recorded");
    Ok(Recorded::New { change: change_id, buildsets })
}

/// The buildset a scheduler starts for a change: its builders, with the
/// change's branch, revision and repository as properties (for the git
/// step).
pub fn buildset_for(catalog: &Catalog, scheduler: &str, builders: &[BuilderName], change: &Change) -> OwnedBuildset {
    let source = "GitHub";
    OwnedBuildset {
        reason: format!("GitHub {} of {} by {}", change.category, change.branch, change.author),
        owner: change.author.clone(),
        // Whoever labelled or commented on a pull request asked for its
        // builds, and may act on them as their owner.
        owned_by: change.pull_request.as_ref().map(|_| crate::auth::identity("github", &change.author)),
        scheduler: scheduler.to_owned(),
        properties: {
            let mut properties = json!({
                "branch": [change.branch, source],
                "revision": [change.revision, source],
                "repository": [change.repository, source],
                "event": [change.category, source],
                "scheduler": [scheduler, "Scheduler"],
                "owner": [change.author, source],
            });
            if let Some(pull_request) = &change.pull_request {
                properties["pull_request"] = json!([pull_request.number, source]);
                properties["head_sha"] = json!([pull_request.head_sha, source]);
            }
            properties
        },
        requests: catalog
            .builder_ids(builders)
            .into_iter()
            .map(|builder_id| NewRequest { builder_id, priority: 0 })
            .collect(),
    }
}

/// What a new commit on a branch starts (from a push or a poller): the
/// `single_branch` schedulers of its branch and the `any_branch` ones, now
/// or once the branch is quiet, unless every file it touches is ignored.
pub fn branch_plan(config: &Config, change: Change) -> Plan {
    let branch = change.branch.as_str();
    let mut builds = Vec::new();
    let mut deferred = Vec::new();
    let mut skipped = Vec::new();
    for scheduler in &config.master.schedulers {
        let (name, builders, ignore_files, stable) = match scheduler {
            SchedulerConfig::SingleBranch { name, branch: wanted, builders, ignore_files, tree_stable_seconds }
                if wanted == branch =>
            {
                (name, builders, ignore_files, *tree_stable_seconds)
            }
            SchedulerConfig::AnyBranch { name, builders, ignore_files, tree_stable_seconds } => {
                (name, builders, ignore_files, *tree_stable_seconds)
            }
            _ => continue,
        };
        let all_ignored = !change.files.is_empty()
            && change.files.iter().all(|file| ignore_files.iter().any(|pattern| path_matches(pattern, file)));
        if all_ignored {
            skipped.push(name.clone());
            continue;
        }
        if stable > 0 {
            deferred.push((name.clone(), stable));
            continue;
        }
        builds.push(Wanted { scheduler: name.clone(), builders: builders.clone() });
    }
    let why = match (builds.is_empty() && deferred.is_empty(), skipped.is_empty()) {
        (false, _) => format!("a new commit on {branch}"),
        (true, false) => format!("only ignored files changed (schedulers {})", skipped.join(", ")),
        (true, true) => format!("no scheduler builds branch `{branch}`"),
    };
    Plan { change: Some(change), builds, deferred, actions: Vec::new(), why }
}
