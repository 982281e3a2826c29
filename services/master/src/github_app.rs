//! Who buildmaster is at GitHub's API when it sets commit statuses: the
//! token of settings.yaml, or better a GitHub App. As an App, a JWT signed
//! with the App's private key buys an installation token, which expires
//! within the hour; each master keeps the one it bought and buys the next
//! five minutes before it expires, so no call goes out with a stale one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::config::{GitHubAppSettings, GitHubSettings};

/// Renew an installation token this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// Why no credentials could be had.
#[derive(Debug, thiserror::Error)]
pub enum GitHubAuthError {
    /// The App's key or id is wrong, or it is not installed: the
    /// configuration needs a change.
    #[error("{0}")]
    Refused(String),
    /// GitHub could not be reached or failed; trying later may work.
    #[error("{0}")]
    Unavailable(String),
}

/// An installation token and when it expires.
struct InstallationToken {
    app: (u64, u64),
    token: String,
    expires_at: DateTime<Utc>,
}

/// A master's credentials at GitHub's API.
#[derive(Default)]
pub struct GitHubCredentials {
    installation: tokio::sync::Mutex<Option<InstallationToken>>,
}

#[derive(Serialize)]
struct AppClaims {
    iat: i64,
    exp: i64,
    iss: String,
}

#[derive(Deserialize)]
struct AccessToken {
    token: String,
    expires_at: DateTime<Utc>,
}

impl GitHubCredentials {
    /// The bearer token for GitHub's API, if any credentials are
    /// configured.
    pub async fn token(
        &self,
        http: &reqwest::Client,
        github: &GitHubSettings,
    ) -> Result<Option<String>, GitHubAuthError> {
        let Some(app) = &github.app else {
            return Ok(github.api_token.as_ref().map(|token| token.expose().to_owned()));
        };
        let mut installation = self.installation.lock().await;
        let fresh = installation.as_ref().is_some_and(|held| {
            held.app == (app.id, app.installation_id)
                && held.expires_at - Utc::now() > chrono::Duration::from_std(RENEW_BEFORE).unwrap_or_default()
        });
        if !fresh {
            let bought = buy(http, &github.api_url, app).await?;
            tracing::info!(github.app = app.id, expires_at = %bought.expires_at, "bought a GitHub App installation token");
            *installation = Some(InstallationToken {
                app: (app.id, app.installation_id),
                token: bought.token,
                expires_at: bought.expires_at,
            });
        }
        Ok(installation.as_ref().map(|held| held.token.clone()))
    }
}

/// A request to GitHub's REST API at `path` (`/repos/...`) with the
/// headers GitHub asks every client for; credentials are the caller's.
pub fn request(http: &reqwest::Client, api_url: &str, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    http.request(method, format!("{}{path}", api_url.trim_end_matches('/')))
        .header("accept", "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
        .header("user-agent", "buildmaster")
}

/// An installation token, paid for with a JWT of the App's.
async fn buy(http: &reqwest::Client, api_url: &str, app: &GitHubAppSettings) -> Result<AccessToken, GitHubAuthError> {
    let pem = std::fs::read(&app.private_key_file).map_err(|error| {
        GitHubAuthError::Refused(format!(
            "cannot read the GitHub App's private key {}: {error}",
            app.private_key_file.display()
        ))
    })?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|error| {
        GitHubAuthError::Refused(format!("{} is not an RSA private key: {error}", app.private_key_file.display()))
    })?;
    // GitHub takes a JWT issued up to a minute in the past (clocks drift)
    // and living at most ten minutes.
    let now = Utc::now().timestamp();
    let claims = AppClaims { iat: now - 60, exp: now + 9 * 60, iss: app.id.to_string() };
    let jwt = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key)
        .map_err(|error| GitHubAuthError::Refused(format!("cannot sign the GitHub App's JWT: {error}")))?;
    let path = format!("/app/installations/{}/access_tokens", app.installation_id);
    let response =
        request(http, api_url, reqwest::Method::POST, &path).bearer_auth(jwt).send().await.map_err(|error| {
            GitHubAuthError::Unavailable(format!("GitHub could not be reached: {}", error.without_url()))
        })?;
    let status = response.status();
    if !status.is_success() {
        let body: String = response.text().await.unwrap_or_default().chars().take(300).collect();
        let problem = format!("GitHub refused an installation token for App {} ({status}): {body}", app.id);
        return Err(if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            GitHubAuthError::Unavailable(problem)
        } else {
            GitHubAuthError::Refused(problem)
        });
    }
    response
        .json()
        .await
        .map_err(|error| GitHubAuthError::Unavailable(format!("GitHub's installation token is unreadable: {error}")))
}
