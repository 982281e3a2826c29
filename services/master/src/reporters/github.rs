//! Commit statuses through GitHub's REST API: `pending` when a build
//! starts, its result when it ends, one context per builder, on the commit
//! built (a pull request's head). Setting the same status twice is
//! harmless: GitHub keeps the latest per context.

use std::time::Duration;

use serde_json::{Value, json};
use shared::config::GitHubSettings;
use shared::config::reporters::{BuildReport, GitHubStatusConfig};

use super::{Delivery, SendError, refusal, unreachable};
use crate::github_app::{GitHubAuthError, GitHubCredentials};

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
    let url = format!("{}/repos/{repository}/statuses/{sha}", github.api_url.trim_end_matches('/'));
    let mut request = http
        .post(&url)
        .header("accept", "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
        .header("user-agent", "buildmaster")
        .json(&json!({
            "state": state,
            "target_url": report.url,
            "description": description,
            "context": context,
        }));
    let token = credentials.token(http, github).await.map_err(|error| match error {
        GitHubAuthError::Refused(problem) => SendError::Refused { problem },
        GitHubAuthError::Unavailable(problem) => SendError::Retry { problem, after: None },
    })?;
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|error| unreachable("GitHub", error))?;
    if !response.status().is_success() {
        return Err(refusal("GitHub", response).await);
    }
    let short: String = sha.chars().take(12).collect();
    Ok(Delivery::Told(format!("{context}: {state} on {repository}@{short}")))
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
    fn a_repository_url_names_its_owner_and_name() {
        assert_eq!(repository_path("https://github.com/python/cpython").as_deref(), Some("python/cpython"));
        assert_eq!(repository_path("https://github.com/python/cpython.git").as_deref(), Some("python/cpython"));
        assert_eq!(repository_path("git@github.com:python/cpython.git").as_deref(), Some("python/cpython"));
        assert_eq!(repository_path("https://ghe.example.com/org/repo/").as_deref(), Some("org/repo"));
        assert_eq!(repository_path("https://github.com/"), None);
        assert_eq!(repository_path(""), None);
    }
}
