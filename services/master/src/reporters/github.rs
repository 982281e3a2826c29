//! GitHub's REST API: commit statuses (`pending` when a build starts, its
//! result when it ends, one context per builder, on the commit built, a
//! pull request's head; setting the same status twice is harmless, GitHub
//! keeps the latest per context) and comments on pull requests whose builds
//! fail (one per pull request and builder, edited, or one per failure; each carries a
//! hidden marker, so a comment made by a master that died before recording
//! it is found instead of made twice).

use std::time::Duration;

use serde_json::{Value, json};
use shared::config::GitHubSettings;
use shared::config::reporters::{BuildReport, GitHubCommentConfig, GitHubStatusConfig, LaterFailures};

use super::{Delivery, SendError, refusal, unreachable};
use crate::changes::PullRequestAction;
use crate::github_app::{GitHubAuthError, GitHubCredentials};
use crate::store::KeptComment;

/// GitHub keeps this much of a status's description.
const DESCRIPTION_CHARS: usize = 140;

/// A commit status's state for a report: GitHub knows `pending`,
/// `success`, `failure` and `error`.
fn state(report: &BuildReport) -> &'static str {
    match (report.event.as_str(), report.results.as_str()) {
        ("started", _) | (_, "retry" | "running") => "pending",
        (_, "success" | "warnings" | "skipped") => "success",
        (_, "failure") => "failure",
        _ => "error",
    }
}

/// `owner/name` of a repository URL on GitHub or GitHub Enterprise:
/// `https://github.com/python/cpython.git`, `git@github.com:python/cpython`.
pub fn repository_path(url: &str) -> Option<String> {
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/')?.1,
        None => url.split_once(':')?.1,
    };
    let path = path.trim_end_matches('/').trim_end_matches(".git");
    let mut parts = path.rsplit('/');
    let (name, owner) = (parts.next()?, parts.next()?);
    (!name.is_empty() && !owner.is_empty()).then(|| format!("{owner}/{name}"))
}

/// Sets the status of the build's commit.
pub async fn set_status(
    http: &reqwest::Client,
    github: &GitHubSettings,
    credentials: &GitHubCredentials,
    config: &GitHubStatusConfig,
    report: &BuildReport,
    properties: &Value,
) -> Result<Delivery, SendError> {
    let sha = super::property(properties, "head_sha").unwrap_or_else(|| report.revision.clone());
    if sha.is_empty() {
        return Ok(Delivery::NothingToTell("the build has no revision to set a status on".into()));
    }
    let Some(repository) = repository_path(&report.repository) else {
        return Ok(Delivery::NothingToTell(format!("`{}` is not a repository on GitHub", report.repository)));
    };
    let render = |template: &shared::config::reporters::Template| {
        template.render(report).map_err(|error| SendError::Refused { problem: format!("a template failed: {error}") })
    };
    let context = render(&config.context)?;
    let description: String = render(&config.description)?.chars().take(DESCRIPTION_CHARS).collect();
    let state = state(report);
    let api = Api { http, github, credentials };
    let body = json!({
        "state": state,
        "target_url": report.url,
        "description": description,
        "context": context,
    });
    api.call(reqwest::Method::POST, &format!("/repos/{repository}/statuses/{sha}"), Some(body)).await?;
    let short: String = sha.chars().take(12).collect();
    Ok(Delivery::Told(format!("{context}: {state} on {repository}@{short}")))
}

/// Calls to GitHub's REST API with the installation's credentials.
struct Api<'a> {
    http: &'a reqwest::Client,
    github: &'a GitHubSettings,
    credentials: &'a GitHubCredentials,
}

impl Api<'_> {
    /// A call whose answer is a success (its JSON body, `null` when
    /// empty), or the error it was.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, SendError> {
        let response = self.send(method, path, body).await?;
        if !response.status().is_success() {
            return Err(refusal("GitHub", response).await);
        }
        let text = response.text().await.map_err(|error| unreachable("GitHub", error))?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A call, whatever GitHub answered.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<reqwest::Response, SendError> {
        let mut request = crate::github_app::request(self.http, &self.github.api_url, method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let token = self.credentials.token(self.http, self.github).await.map_err(|error| match error {
            GitHubAuthError::Refused(problem) => SendError::Refused { problem },
            GitHubAuthError::Unavailable(problem) => SendError::Retry { problem, after: None },
        })?;
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.map_err(|error| unreachable("GitHub", error))
    }

    /// The id of the pull request's comment that carries `marker`, looking
    /// through its comments a hundred at a time.
    async fn find_comment(&self, repository: &str, number: i64, marker: &str) -> Result<Option<i64>, SendError> {
        for page in 1..=MARKER_PAGES {
            let path = format!("/repos/{repository}/issues/{number}/comments?per_page=100&page={page}");
            let comments = self.call(reqwest::Method::GET, &path, None).await?;
            let comments = comments.as_array().cloned().unwrap_or_default();
            let found =
                comments.iter().find(|comment| comment["body"].as_str().is_some_and(|body| body.contains(marker)));
            if let Some(comment) = found {
                return Ok(comment["id"].as_i64());
            }
            if comments.len() < 100 {
                break;
            }
        }
        Ok(None)
    }
}

/// GitHub keeps 65,536 characters of a comment; room is left for the
/// marker.
const COMMENT_CHARS: usize = 65_000;
/// Pages of a pull request's comments looked through for a marker: a
/// thousand comments.
const MARKER_PAGES: u32 = 10;

/// What a comment is about, beyond the report.
pub struct CommentOf<'a> {
    pub reporter: &'a str,
    pub notification_id: i64,
    /// A first attempt cannot have made the comment already.
    pub first_attempt: bool,
}

/// Comments on the pull request of a build that failed, or edits the
/// reporter's comment there.
pub async fn comment(
    master: &crate::node::Master,
    http: &reqwest::Client,
    github: &GitHubSettings,
    config: &GitHubCommentConfig,
    report: &BuildReport,
    of: CommentOf<'_>,
) -> Result<Delivery, SendError> {
    if report.event != "finished" || !matches!(report.results.as_str(), "failure" | "exception") {
        return Ok(Delivery::NothingToTell("pull requests are told of failures only".into()));
    }
    let Some(number) = report.pull_request else {
        return Ok(Delivery::NothingToTell("not a pull request's build".into()));
    };
    let Some(repository) = repository_path(&report.repository) else {
        return Ok(Delivery::NothingToTell(format!("`{}` is not a repository on GitHub", report.repository)));
    };
    let rendered = config
        .body
        .render(report)
        .map_err(|error| SendError::Refused { problem: format!("a template failed: {error}") })?;
    let edit = config.later_failures == LaterFailures::Edit;
    // The reporter's comment on this pull request for this builder (edit),
    // or this notification's (add). A builder's name cannot end it.
    let builder = report.builder.replace("--", "- -");
    let marker = match edit {
        true => format!("<!-- buildmaster reporter={} builder={builder} -->", of.reporter),
        false => format!("<!-- buildmaster reporter={} notification={} -->", of.reporter, of.notification_id),
    };
    let kept =
        KeptComment { reporter: of.reporter, repository: &repository, pull_request: number, builder: &report.builder };
    let body: String = rendered.chars().take(COMMENT_CHARS).collect();
    let body = json!({ "body": format!("{body}\n\n{marker}") });
    let api = Api { http, github, credentials: &master.github };
    let store = |error: crate::store::StoreError| SendError::Retry { problem: error.to_string(), after: None };
    let mut known = match edit {
        true => master.store.pull_request_comment(&kept).await.map_err(store)?,
        false => None,
    };
    if known.is_none() && (edit || !of.first_attempt) {
        known = api.find_comment(&repository, number, &marker).await?;
    }
    if let Some(id) = known {
        if !edit {
            return Ok(Delivery::Told(format!("comment {id} on {repository}#{number} (made by an earlier attempt)")));
        }
        let path = format!("/repos/{repository}/issues/comments/{id}");
        let response = api.send(reqwest::Method::PATCH, &path, Some(body.clone())).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            // Deleted by someone: a new one is made below.
            master.store.keep_pull_request_comment(&kept, None).await.map_err(store)?;
        } else if !response.status().is_success() {
            return Err(refusal("GitHub", response).await);
        } else {
            master.store.keep_pull_request_comment(&kept, Some(id)).await.map_err(store)?;
            return Ok(Delivery::Told(format!("comment {id} on {repository}#{number} edited")));
        }
    }
    let made =
        api.call(reqwest::Method::POST, &format!("/repos/{repository}/issues/{number}/comments"), Some(body)).await?;
    let id = made["id"].as_i64().ok_or_else(|| SendError::Retry {
        problem: format!("GitHub made a comment but did not say its id: {made}"),
        after: None,
    })?;
    if edit {
        master.store.keep_pull_request_comment(&kept, Some(id)).await.map_err(store)?;
    }
    Ok(Delivery::Told(format!("comment {id} on {repository}#{number}")))
}

/// Does one of the pull-request loop's actions: takes a label off (gone
/// already is done), or answers a command (found by its marker if an
/// earlier attempt made it).
pub async fn act(
    master: &crate::node::Master,
    http: &reqwest::Client,
    github: &GitHubSettings,
    action: &PullRequestAction,
    notification_id: i64,
    first_attempt: bool,
) -> Result<Delivery, SendError> {
    let api = Api { http, github, credentials: &master.github };
    match action {
        PullRequestAction::RemoveLabel { repository, number, label } => {
            let path = format!("/repos/{repository}/issues/{number}/labels/{}", path_segment(label));
            let response = api.send(reqwest::Method::DELETE, &path, None).await?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(Delivery::Told(format!("label `{label}` was already off {repository}#{number}")));
            }
            if !response.status().is_success() {
                return Err(refusal("GitHub", response).await);
            }
            Ok(Delivery::Told(format!("label `{label}` taken off {repository}#{number}")))
        }
        PullRequestAction::AnswerCommand { repository, number, body } => {
            let marker = format!("<!-- buildmaster notification={notification_id} -->");
            if !first_attempt && let Some(id) = api.find_comment(repository, *number, &marker).await? {
                return Ok(Delivery::Told(format!("answered in comment {id} (made by an earlier attempt)")));
            }
            let body = json!({ "body": format!("{body}\n\n{marker}") });
            let path = format!("/repos/{repository}/issues/{number}/comments");
            let made = api.call(reqwest::Method::POST, &path, Some(body)).await?;
            Ok(Delivery::Told(format!("answered in comment {} on {repository}#{number}", made["id"])))
        }
    }
}

/// `text` as one segment of a URL's path: a label may hold spaces, `/`,
/// `:` or emoji.
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// How long until GitHub's primary rate limit resets, from an answer that
/// says none is left (`x-ratelimit-remaining: 0`, `x-ratelimit-reset` in
/// seconds since the epoch).
pub fn rate_limit_reset(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<i64>().ok();
    if header("x-ratelimit-remaining")? != 0 {
        return None;
    }
    let wait = header("x-ratelimit-reset")? - chrono::Utc::now().timestamp();
    Some(Duration::from_secs(wait.clamp(1, 3600) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_is_one_path_segment() {
        assert_eq!(path_segment(":hammer: test-with-buildbots"), "%3Ahammer%3A%20test-with-buildbots");
        assert_eq!(path_segment("a/b"), "a%2Fb");
        assert_eq!(path_segment("🔨"), "%F0%9F%94%A8");
    }

    #[test]
    fn a_repository_url_names_its_owner_and_name() {
        assert_eq!(repository_path("https://github.com/python/cpython").as_deref(), Some("python/cpython"));
        assert_eq!(repository_path("https://github.com/python/cpython.git").as_deref(), Some("python/cpython"));
        assert_eq!(repository_path("git@github.com:python/cpython.git").as_deref(), Some("python/cpython"));
        assert_eq!(repository_path("https://ghe.example.com/org/repo/").as_deref(), Some("org/repo"));
        assert_eq!(repository_path("https://github.com/"), None);
        assert_eq!(repository_path(""), None);
    }
}
