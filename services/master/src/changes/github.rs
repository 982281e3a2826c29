//! GitHub's webhook events as buildbot.python.org uses them: a push to a
//! branch builds that branch's revision on its `single_branch` schedulers'
//! builders, unless its head commit asks to skip CI; the pull-request label
//! builds the stable builders on `refs/pull/N/merge` and is taken off
//! again; a comment `!buildbot REGEX` (matched without regard to case) from
//! someone who may write to the repository builds the matching ones, and
//! every such comment is answered with what was scheduled or why nothing
//! was. The signature is checked at the edge (`http::github`) before a
//! payload gets here; GitHub's API is asked with the installation's
//! credentials (a token, or the GitHub App).

use serde_json::Value;
use shared::config::{Config, GitHubSettings, SchedulerConfig};

use super::{Change, Plan, PullRequest, PullRequestAction, Wanted, branch_plan};
use crate::github_app::GitHubCredentials;

/// GitHub's API could not answer a question a delivery needs answered.
#[derive(Debug, thiserror::Error)]
#[error("GitHub's API ({url}): {problem}")]
pub struct GitHubError {
    url: String,
    problem: String,
}

/// GitHub's API, as the installation.
pub struct Api<'a> {
    pub github: &'a GitHubSettings,
    pub credentials: &'a GitHubCredentials,
}

/// What a delivery of `event` asks for.
pub async fn plan(config: &Config, api: &Api<'_>, event: &str, payload: &Value) -> Result<Plan, GitHubError> {
    Ok(match event {
        "push" => push(config, payload),
        "pull_request" => labeled(config, payload),
        "issue_comment" => comment(config, api, payload).await?,
        other => Plan::ignored(format!("event `{other}` is not used")),
    })
}

/// Whether a commit message asks CI to leave it alone, in the words
/// GitHub's own CI takes: `[skip ci]`, `[ci skip]`, `[no ci]`, or a
/// `skip-checks: true` trailer.
pub fn asks_to_skip_ci(message: &str) -> bool {
    let lower = message.to_lowercase();
    ["[skip ci]", "[ci skip]", "[no ci]"].iter().any(|words| lower.contains(words))
        || lower.lines().any(|line| line.trim() == "skip-checks: true" || line.trim() == "skip-checks:true")
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
    let message = text(payload, &["head_commit", "message"]);
    if asks_to_skip_ci(&message) {
        return Plan::ignored(format!("the head commit of `{branch}` asks to skip CI"));
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
    let remove = PullRequestAction::RemoveLabel {
        repository: text(payload, &["repository", "full_name"]),
        number,
        label: label.clone(),
    };
    Plan {
        change: Some(change),
        builds,
        deferred: Vec::new(),
        actions: Vec::new(),
        why: format!("label `{label}` on pull request {number}"),
    }
    .and(remove)
}

/// `!buildbot REGEX` on a pull request, from someone who may write; every
/// such command is answered.
async fn comment(config: &Config, api: &Api<'_>, payload: &Value) -> Result<Plan, GitHubError> {
    if text(payload, &["action"]) != "created" || payload["issue"]["pull_request"].is_null() {
        return Ok(Plan::ignored("not a new comment on a pull request".into()));
    }
    let body = text(payload, &["comment", "body"]);
    let first_line = body.lines().next().unwrap_or_default().trim();
    let Some(pattern) = first_line.strip_prefix("!buildbot").filter(|rest| rest.is_empty() || rest.starts_with(' '))
    else {
        return Ok(Plan::ignored("not a `!buildbot` command".into()));
    };
    let pattern = pattern.trim();
    let user = text(payload, &["comment", "user", "login"]);
    let repository_name = text(payload, &["repository", "full_name"]);
    let number = payload["issue"]["number"].as_i64().unwrap_or_default();
    let answer = |body: String| PullRequestAction::AnswerCommand {
        repository: repository_name.clone(),
        number,
        body: format!("@{user}: {body}"),
    };
    let refuse = |why: String, body: String| Plan::ignored(why).and(answer(body));
    if pattern.is_empty() {
        let body =
            "`!buildbot` needs a pattern of builder names, e.g. `!buildbot AMD64 Debian`; nothing was scheduled.";
        return Ok(refuse("`!buildbot` without a pattern".into(), body.into()));
    }
    let matcher = match regex::RegexBuilder::new(pattern).case_insensitive(true).size_limit(1 << 20).build() {
        Ok(matcher) => matcher,
        Err(error) => {
            let problem = error.to_string().lines().last().unwrap_or_default().trim().to_owned();
            return Ok(refuse(
                format!("`{pattern}` is not a regular expression: {problem}"),
                format!("`{pattern}` is not a pattern I can read ({problem}); nothing was scheduled."),
            ));
        }
    };
    if !may_write(api, &repository_name, &user).await? {
        return Ok(refuse(
            format!("`{user}` may not write to {repository_name}, so may not start builds"),
            format!("only people who may write to {repository_name} may start builds; nothing was scheduled."),
        ));
    }
    let pull_request_builders: Vec<&shared::ids::BuilderName> = config
        .master
        .schedulers
        .iter()
        .filter_map(|scheduler| match scheduler {
            SchedulerConfig::PullRequest { builders, .. } => Some(builders),
            _ => None,
        })
        .flatten()
        .collect();
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
        return Ok(refuse(
            format!("no pull request builder matches `{pattern}`"),
            format!(
                "`{pattern}` matches none of the builders that build pull requests; nothing was scheduled. They are: {}.",
                listed(pull_request_builders.iter().map(|name| name.as_str()))
            ),
        ));
    }
    // A comment's delivery does not name the pull request's head commit.
    let head_sha = pull_request_head(api, &repository_name, number).await?;
    let short: String = head_sha.chars().take(12).collect();
    let names = listed(builds.iter().flat_map(|wanted| wanted.builders.iter().map(|name| name.as_str())));
    let scheduled = format!("scheduled builds of {short} on {names}.");
    let change = pull_request_change(payload, PullRequest { number, head_sha }, user.clone(), "comment");
    Ok(Plan {
        change: Some(change),
        builds,
        deferred: Vec::new(),
        actions: Vec::new(),
        why: format!("`!buildbot {pattern}` on pull request {number}"),
    }
    .and(answer(scheduled)))
}

/// Names for a comment: quoted, the first 30, and how many more.
fn listed<'a>(names: impl Iterator<Item = &'a str>) -> String {
    const SHOWN: usize = 30;
    let names: Vec<&str> = names.collect();
    let mut text: Vec<String> = names.iter().take(SHOWN).map(|name| format!("`{name}`")).collect();
    if names.len() > SHOWN {
        text.push(format!("and {} more", names.len() - SHOWN));
    }
    if text.is_empty() { "none".into() } else { text.join(", ") }
}

/// Asks GitHub for the head commit of pull request `number`.
async fn pull_request_head(api: &Api<'_>, repository: &str, number: i64) -> Result<String, GitHubError> {
    let answer = get_json(api, &format!("/repos/{repository}/pulls/{number}")).await?.unwrap_or_default();
    Ok(answer["head"]["sha"].as_str().unwrap_or_default().to_owned())
}

/// Asks GitHub whether `user` may write to `repository` (`owner/name`).
async fn may_write(api: &Api<'_>, repository: &str, user: &str) -> Result<bool, GitHubError> {
    let Some(answer) = get_json(api, &format!("/repos/{repository}/collaborators/{user}/permission")).await? else {
        return Ok(false);
    };
    Ok(matches!(answer["permission"].as_str(), Some("admin" | "maintain" | "write")))
}

/// A GET of GitHub's API; `None` for 404.
async fn get_json(api: &Api<'_>, path: &str) -> Result<Option<Value>, GitHubError> {
    let http = reqwest::Client::new();
    let url = format!("{}{path}", api.github.api_url.trim_end_matches('/'));
    let mut request = crate::github_app::request(&http, &api.github.api_url, reqwest::Method::GET, path)
        .timeout(std::time::Duration::from_secs(10));
    let token = api
        .credentials
        .token(&http, api.github)
        .await
        .map_err(|error| GitHubError { url: url.to_owned(), problem: error.to_string() })?;
    if let Some(token) = token {
        request = request.bearer_auth(token);
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
