//! GitHub's webhook events as buildbot.python.org uses them: a push to a
//! branch builds that branch's revision on its `single_branch` schedulers'
//! builders; the pull-request label builds the stable builders on
//! `refs/pull/N/merge`; a comment `!buildbot REGEX` from someone who may
//! write to the repository builds the matching ones. The signature is
//! checked at the edge (`http::github`) before a payload gets here.

use serde_json::Value;
use shared::config::{Config, GitHubSettings, SchedulerConfig};

use super::{Change, Plan, PullRequest, Wanted, branch_plan};

/// GitHub's API could not answer a question a delivery needs answered.
#[derive(Debug, thiserror::Error)]
#[error("GitHub's API ({url}): {problem}")]
pub struct GitHubError {
    url: String,
    problem: String,
}

/// What a delivery of `event` asks for.
pub async fn plan(config: &Config, github: &GitHubSettings, event: &str, payload: &Value) -> Result<Plan, GitHubError> {
    Ok(match event {
        "push" => push(config, payload),
        "pull_request" => labeled(config, payload),
        "issue_comment" => comment(config, github, payload).await?,
        other => Plan::ignored(format!("event `{other}` is not used")),
    })
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
        pull_request: None,
    };
    branch_plan(config, change)
}

fn repository(payload: &Value) -> String {
    text(payload, &["repository", "clone_url"])
}

/// The change of a pull request: its merge ref, built as a branch, and its
/// head commit, where statuses go.
fn pull_request_change(payload: &Value, pull_request: PullRequest, author: String, category: &str) -> Change {
    Change {
        repository: repository(payload),
        branch: format!("refs/pull/{}/merge", pull_request.number),
        revision: String::new(),
        author,
        comments: text(payload, &["pull_request", "title"]),
        files: Vec::new(),
        category: category.into(),
        pull_request: Some(pull_request),
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
    let pull_request = PullRequest { number, head_sha: text(payload, &["pull_request", "head", "sha"]) };
    let change = pull_request_change(payload, pull_request, text(payload, &["sender", "login"]), "pull_request");
    Plan {
        change: Some(change),
        builds,
        deferred: Vec::new(),
        why: format!("label `{label}` on pull request {number}"),
    }
}

/// `!buildbot REGEX` on a pull request, from someone who may write.
async fn comment(config: &Config, github: &GitHubSettings, payload: &Value) -> Result<Plan, GitHubError> {
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
    // A comment's delivery does not name the pull request's head commit.
    let head_sha = pull_request_head(github, &repository_name, number).await?;
    let change = pull_request_change(payload, PullRequest { number, head_sha }, user, "comment");
    Ok(Plan {
        change: Some(change),
        builds,
        deferred: Vec::new(),
        why: format!("`!buildbot {pattern}` on pull request {number}"),
    })
}

/// Asks GitHub for the head commit of pull request `number`.
async fn pull_request_head(github: &GitHubSettings, repository: &str, number: i64) -> Result<String, GitHubError> {
    let url = format!("{}/repos/{repository}/pulls/{number}", github.api_url.trim_end_matches('/'));
    let answer = get_json(github, &url).await?.unwrap_or_default();
    Ok(answer["head"]["sha"].as_str().unwrap_or_default().to_owned())
}

/// Asks GitHub whether `user` may write to `repository` (`owner/name`).
async fn may_write(github: &GitHubSettings, repository: &str, user: &str) -> Result<bool, GitHubError> {
    let url = format!("{}/repos/{repository}/collaborators/{user}/permission", github.api_url.trim_end_matches('/'));
    let Some(answer) = get_json(github, &url).await? else {
        return Ok(false);
    };
    Ok(matches!(answer["permission"].as_str(), Some("admin" | "maintain" | "write")))
}

/// A GET of GitHub's API; `None` for 404.
async fn get_json(github: &GitHubSettings, url: &str) -> Result<Option<Value>, GitHubError> {
    let mut request = reqwest::Client::new()
        .get(url)
        .header("accept", "application/vnd.github+json")
        .header("user-agent", "buildmaster")
        .timeout(std::time::Duration::from_secs(10));
    if let Some(token) = &github.api_token {
        request = request.bearer_auth(token.expose());
    }
    let response = request
        .send()
        .await
        .map_err(|error| GitHubError { url: url.to_owned(), problem: error.without_url().to_string() })?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let answer: Value = response
        .error_for_status()
        .map_err(|error| GitHubError { url: url.to_owned(), problem: error.without_url().to_string() })?
        .json()
        .await
        .map_err(|error| GitHubError { url: url.to_owned(), problem: format!("no JSON in the answer: {error}") })?;
    Ok(Some(answer))
}
