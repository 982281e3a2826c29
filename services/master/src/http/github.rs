//! GitHub's webhook, `POST /change_hook/github`, as buildbot.python.org
//! uses it: a push to a branch builds that branch's revision on its
//! `single_branch` schedulers' builders; the pull-request label builds the
//! stable builders on `refs/pull/N/merge`; a comment `!buildbot REGEX` from
//! someone who may write to the repository builds the matching ones.
//!
//! Every delivery must carry a valid `X-Hub-Signature-256` (HMAC-SHA256 of
//! the body with the webhook secret); anything else gets 401 and changes
//! nothing. A change and the buildsets it causes are written in one
//! transaction before the answer, so a delivery GitHub saw acknowledged is
//! never lost; the same delivery sent again changes nothing.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use shared::config::{Config, GitHubSettings, SchedulerConfig, path_matches};

use super::{ApiError, ApiResult};
use crate::store::{NewChange, NewRequest, OwnedBuildset};
use crate::{Catalog, Master};

pub async fn hook(State(master): State<Arc<Master>>, headers: HeaderMap, body: Bytes) -> ApiResult<Json<Value>> {
    let catalog = master.catalog();
    let Some(github) = &catalog.config.settings.github else {
        return Err(ApiError::NotFound("the GitHub webhook (it is off: no `github` in settings.yaml)".into()));
    };
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default();
    if !signature_matches(github.webhook_secret.expose().as_bytes(), &body, header("x-hub-signature-256")) {
        return Err(ApiError::Unauthorized(
            "X-Hub-Signature-256 is missing or wrong; the webhook's secret must equal github.webhook_secret".into(),
        ));
    }
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::BadRequest(format!("the delivery is not JSON: {error}")))?;
    // Each delivery is recorded once, by its id: one without is refused,
    // or a resent body would build again.
    let Some(delivery) = headers.get("x-github-delivery").and_then(|value| value.to_str().ok()) else {
        return Err(ApiError::BadRequest("X-GitHub-Delivery is missing".into()));
    };
    let delivery = Some(delivery);
    let plan = match header("x-github-event") {
        "ping" => return Ok(Json(json!({ "ok": "pong" }))),
        "push" => push(&catalog.config, &payload),
        "pull_request" => labeled(&catalog.config, &payload),
        "issue_comment" => comment(&catalog.config, github, &payload).await?,
        other => Plan::ignored(format!("event `{other}` is not used")),
    };
    match record(&master, &catalog, "github", delivery, &plan).await? {
        Recorded::Ignored => Ok(Json(json!({ "ignored": plan.why }))),
        Recorded::Before => Ok(Json(json!({ "ignored": "this delivery was recorded before" }))),
        Recorded::New { change, buildsets } => {
            Ok(Json(json!({ "change": change, "buildsets": buildsets, "why": plan.why })))
        }
    }
}

/// What became of a plan.
pub(crate) enum Recorded {
    /// It asked for nothing to be recorded.
    Ignored,
    /// Its delivery was recorded before: nothing changed.
    Before,
    New {
        change: i64,
        buildsets: Vec<i64>,
    },
}

/// Records a plan's change and its buildsets in one transaction, then rings
/// their doorbells. `delivery` makes it happen once.
pub(crate) async fn record(
    master: &Arc<Master>,
    catalog: &Catalog,
    source: &str,
    delivery: Option<&str>,
    plan: &Plan,
) -> ApiResult<Recorded> {
    let Some(change) = &plan.change else {
        return Ok(Recorded::Ignored);
    };
    let new_change = NewChange {
        delivery,
        source,
        repository: &change.repository,
        branch: &change.branch,
        revision: &change.revision,
        author: &change.author,
        comments: &change.comments,
        files: &change.files,
        category: &change.category,
    };
    let prepared: Vec<OwnedBuildset> = plan.builds.iter().map(|build| build.prepare(catalog, change)).collect();
    let traceparent = shared::telemetry::traceparent();
    let buildsets = prepared
        .iter()
        .filter(|buildset| !buildset.requests.is_empty())
        .map(|buildset| buildset.as_new(traceparent.clone()))
        .collect();
    let Some((change_id, created)) = master.store.record_change(&new_change, buildsets, &plan.deferred).await? else {
        return Ok(Recorded::Before);
    };
    let mut buildset_ids = Vec::new();
    for (buildset_id, requests) in &created {
        master.announce_buildset(*buildset_id, requests).await;
        buildset_ids.push(*buildset_id);
    }
    tracing::info!(change.id = change_id, %source, category = %change.category, buildsets = ?buildset_ids, "change recorded");
    Ok(Recorded::New { change: change_id, buildsets: buildset_ids })
}

/// HMAC-SHA256 of `body`, compared in constant time with `sha256=<hex>`.
fn signature_matches(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// What a delivery asks for: the change to record and the builds to start.
pub(crate) struct Plan {
    change: Option<Change>,
    builds: Vec<Wanted>,
    /// Schedulers that build once the branch is quiet: (name, seconds).
    deferred: Vec<(String, u64)>,
    why: String,
}

impl Plan {
    fn ignored(why: String) -> Plan {
        Plan { change: None, builds: Vec::new(), deferred: Vec::new(), why }
    }

    /// A change to record that builds nothing.
    pub(crate) fn record_only(change: Change, why: &str) -> Plan {
        Plan { change: Some(change), builds: Vec::new(), deferred: Vec::new(), why: why.to_owned() }
    }
}

pub(crate) struct Change {
    pub repository: String,
    pub branch: String,
    pub revision: String,
    pub author: String,
    pub comments: String,
    pub files: Vec<String>,
    pub category: String,
}

/// One buildset: a scheduler and the builders it starts.
struct Wanted {
    scheduler: String,
    builders: Vec<String>,
}

impl Wanted {
    fn prepare(&self, catalog: &Catalog, change: &Change) -> OwnedBuildset {
        let facts = ChangeFacts {
            repository: &change.repository,
            branch: &change.branch,
            revision: &change.revision,
            author: &change.author,
            category: &change.category,
        };
        change_buildset(catalog, &self.scheduler, &self.builders, facts)
    }
}

/// What a buildset started by a change knows of it.
pub(crate) struct ChangeFacts<'a> {
    pub repository: &'a str,
    pub branch: &'a str,
    pub revision: &'a str,
    pub author: &'a str,
    pub category: &'a str,
}

/// The buildset a scheduler starts for a change: its builders, with the
/// change's branch, revision and repository as properties (for the git
/// step).
pub(crate) fn change_buildset(
    catalog: &Catalog,
    scheduler: &str,
    builders: &[String],
    change: ChangeFacts<'_>,
) -> OwnedBuildset {
    let source = "GitHub";
    OwnedBuildset {
        reason: format!("GitHub {} of {} by {}", change.category, change.branch, change.author),
        owner: change.author.to_owned(),
        scheduler: scheduler.to_owned(),
        properties: json!({
            "branch": [change.branch, source],
            "revision": [change.revision, source],
            "repository": [change.repository, source],
            "event": [change.category, source],
            "scheduler": [scheduler, "Scheduler"],
            "owner": [change.author, source],
        }),
        requests: builders
            .iter()
            .filter_map(|name| catalog.builder(name))
            .map(|(_, builder_id)| NewRequest { builder_id, priority: 0 })
            .collect(),
    }
}

fn text(value: &Value, path: &[&str]) -> String {
    path.iter().fold(value, |value, key| &value[*key]).as_str().unwrap_or_default().to_owned()
}

/// A push: its branch's `single_branch` schedulers build its head revision,
/// unless every file it touches is ignored.
fn push(config: &Config, payload: &Value) -> Plan {
    let reference = text(payload, &["ref"]);
    let Some(branch) = reference.strip_prefix("refs/heads/") else {
        return Plan::ignored(format!("`{reference}` is not a branch"));
    };
    if payload["deleted"].as_bool() == Some(true) {
        return Plan::ignored(format!("branch `{branch}` was deleted"));
    }
    let mut files: Vec<String> = Vec::new();
    for commit in payload["commits"].as_array().into_iter().flatten() {
        for kind in ["added", "modified", "removed"] {
            for file in commit[kind].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !files.iter().any(|known| known == file) {
                    files.push(file.to_owned());
                }
            }
        }
    }
    let change = Change {
        repository: repository(payload),
        branch: branch.to_owned(),
        revision: text(payload, &["after"]),
        author: text(payload, &["pusher", "name"]),
        comments: text(payload, &["head_commit", "message"]),
        files,
        category: "push".into(),
    };
    branch_plan(config, change)
}

/// What a new commit on a branch starts (from a push or a poller): the
/// `single_branch` schedulers of its branch and the `any_branch` ones, now
/// or once the branch is quiet, unless every file it touches is ignored.
pub(crate) fn branch_plan(config: &Config, change: Change) -> Plan {
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
    Plan { change: Some(change), builds, deferred, why }
}

fn repository(payload: &Value) -> String {
    text(payload, &["repository", "clone_url"])
}

/// The change of a pull request: its merge ref, built as a branch.
fn pull_request_change(payload: &Value, number: i64, author: String, category: &str) -> Change {
    Change {
        repository: repository(payload),
        branch: format!("refs/pull/{number}/merge"),
        revision: String::new(),
        author,
        comments: text(payload, &["pull_request", "title"]),
        files: Vec::new(),
        category: category.into(),
    }
}

/// The label: the stable builders of each `pull_request` scheduler.
fn labeled(config: &Config, payload: &Value) -> Plan {
    if text(payload, &["action"]) != "labeled" {
        return Plan::ignored(format!("pull request action `{}` is not used", text(payload, &["action"])));
    }
    let label = text(payload, &["label", "name"]);
    let builds: Vec<Wanted> = config
        .master
        .schedulers
        .iter()
        .filter_map(|scheduler| match scheduler {
            SchedulerConfig::PullRequest { name, builders, label: wanted, label_tag } if *wanted == label => {
                let tagged = builders
                    .iter()
                    .filter(|builder| config.builder(builder).is_some_and(|b| b.tags.contains(label_tag)))
                    .cloned()
                    .collect();
                Some(Wanted { scheduler: name.clone(), builders: tagged })
            }
            _ => None,
        })
        .collect();
    if builds.is_empty() {
        return Plan::ignored(format!("label `{label}` builds nothing"));
    }
    let number = payload["pull_request"]["number"].as_i64().unwrap_or_default();
    let change = pull_request_change(payload, number, text(payload, &["sender", "login"]), "pull_request");
    Plan {
        change: Some(change),
        builds,
        deferred: Vec::new(),
        why: format!("label `{label}` on pull request {number}"),
    }
}

/// `!buildbot REGEX` on a pull request, from someone who may write.
async fn comment(config: &Config, github: &GitHubSettings, payload: &Value) -> ApiResult<Plan> {
    if text(payload, &["action"]) != "created" || payload["issue"]["pull_request"].is_null() {
        return Ok(Plan::ignored("not a new comment on a pull request".into()));
    }
    let body = text(payload, &["comment", "body"]);
    let Some(pattern) = body.lines().next().and_then(|line| line.trim().strip_prefix("!buildbot ")) else {
        return Ok(Plan::ignored("not a `!buildbot` command".into()));
    };
    let pattern = pattern.trim();
    let matcher = match regex::Regex::new(pattern) {
        Ok(matcher) => matcher,
        Err(error) => return Ok(Plan::ignored(format!("`{pattern}` is not a regular expression: {error}"))),
    };
    let user = text(payload, &["comment", "user", "login"]);
    let repository_name = text(payload, &["repository", "full_name"]);
    if !may_write(github, &repository_name, &user).await? {
        return Ok(Plan::ignored(format!("`{user}` may not write to {repository_name}, so may not start builds")));
    }
    let builds: Vec<Wanted> = config
        .master
        .schedulers
        .iter()
        .filter_map(|scheduler| match scheduler {
            SchedulerConfig::PullRequest { name, builders, .. } => {
                let matching = builders.iter().filter(|builder| matcher.is_match(builder)).cloned().collect();
                Some(Wanted { scheduler: name.clone(), builders: matching })
            }
            _ => None,
        })
        .filter(|wanted| !wanted.builders.is_empty())
        .collect();
    if builds.is_empty() {
        return Ok(Plan::ignored(format!("no pull request builder matches `{pattern}`")));
    }
    let number = payload["issue"]["number"].as_i64().unwrap_or_default();
    let change = pull_request_change(payload, number, user, "comment");
    Ok(Plan {
        change: Some(change),
        builds,
        deferred: Vec::new(),
        why: format!("`!buildbot {pattern}` on pull request {number}"),
    })
}

/// Asks GitHub whether `user` may write to `repository` (`owner/name`).
async fn may_write(github: &GitHubSettings, repository: &str, user: &str) -> ApiResult<bool> {
    let url = format!("{}/repos/{repository}/collaborators/{user}/permission", github.api_url.trim_end_matches('/'));
    let mut request = reqwest::Client::new()
        .get(&url)
        .header("accept", "application/vnd.github+json")
        .header("user-agent", "buildmaster")
        .timeout(std::time::Duration::from_secs(10));
    if let Some(token) = &github.api_token {
        request = request.bearer_auth(token.expose());
    }
    let response = request
        .send()
        .await
        .map_err(|error| ApiError::Unavailable(format!("GitHub's API ({url}): {}", error.without_url())))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(false);
    }
    let answer: Value = response
        .error_for_status()
        .map_err(|error| ApiError::Unavailable(format!("GitHub's API ({url}): {}", error.without_url())))?
        .json()
        .await
        .map_err(|error| ApiError::Unavailable(format!("GitHub's API ({url}) answered no JSON: {error}")))?;
    Ok(matches!(answer["permission"].as_str(), Some("admin" | "maintain" | "write")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_checked_against_the_body() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"{}");
        let good: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(signature_matches(b"s3cret", b"{}", &format!("sha256={good}")));
        assert!(!signature_matches(b"s3cret", b"{ }", &format!("sha256={good}")));
        assert!(!signature_matches(b"other", b"{}", &format!("sha256={good}")));
        assert!(!signature_matches(b"s3cret", b"{}", ""));
    }
}
