//! Signing in as people already are: with GitHub (roles from organisation
//! teams) or an OpenID Connect provider (roles from a claim). Both are the
//! authorization code flow: `start` remembers the sign-in under a random
//! `state` in Postgres (with the PKCE verifier and, for OpenID Connect, the
//! `nonce`), so any master can take the provider's callback; `finish` uses
//! that record once, trades the code for the person's identity and roles,
//! and the edge opens a session with them.
//!
//! A GitHub session's roles are read again with the person's own token
//! once `roles_refresh_seconds` have passed (`refresh_github_roles`), so
//! someone removed from a team loses its roles within that time on every
//! master. The token is kept sealed under a key derived from the OAuth
//! App's secret, so a copy of the database holds no usable token.

mod github;
mod oidc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use shared::config::Settings;

use crate::Master;
use crate::auth::random_token;
use crate::store::{SignInAttempt, StoreError};

/// How long a sign-in may take between leaving for the provider and coming
/// back.
pub const SIGN_IN_SECONDS: i64 = 10 * 60;

/// Why a sign-in failed.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("there is no sign-in provider `{0}` (sign_in in settings.yaml)")]
    UnknownProvider(String),
    #[error("signing in with a provider needs `web.url` in settings.yaml")]
    NoPublicUrl,
    #[error("this sign-in has expired or was already used; sign in again")]
    UnknownState,
    #[error("{provider} refused the sign-in: {reason}")]
    Refused { provider: String, reason: String },
    #[error("{provider} sent an ID token that is not valid: {reason}")]
    InvalidToken { provider: String, reason: String },
    #[error("{provider} could not be reached or answered unexpectedly: {reason}; try again later")]
    Unavailable { provider: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where to send the browser to sign in.
pub struct Started {
    pub authorize_url: String,
    /// Also set as a cookie, so the callback comes from the browser that
    /// left.
    pub state: String,
}

/// Who came back from the provider.
pub struct SignedIn {
    pub user: String,
    /// `github` or `oidc:<name>`.
    pub provider: String,
    pub roles: Vec<String>,
    /// Sealed credentials to read the roles again with (GitHub).
    pub provider_token: Option<Vec<u8>>,
    pub return_to: String,
}

/// What the providers' discovery documents and keys are, kept between
/// sign-ins.
#[derive(Default)]
pub struct Providers {
    oidc: tokio::sync::Mutex<HashMap<String, Arc<oidc::Discovered>>>,
}

/// The HTTP client for providers: short timeouts, since a person waits.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("buildmaster")
        .build()
        .expect("the HTTP client builds")
}

/// Whether `return_to` is a path on this site: anything else (another
/// site, `//host`, a scheme) would make the sign-in an open redirect.
pub fn is_local_path(return_to: &str) -> bool {
    return_to.starts_with('/')
        && !return_to.starts_with("//")
        && !return_to.starts_with("/\\")
        && !return_to.chars().any(|c| c.is_control() || c == '\\')
}

/// A session provider's name for an OpenID Connect provider.
pub fn oidc_provider(name: &str) -> String {
    format!("oidc:{name}")
}

fn callback_url(settings: &Settings, path: &str) -> Result<String, SignInError> {
    let url = settings.web.url.as_deref().ok_or(SignInError::NoPublicUrl)?;
    Ok(format!("{}{path}", url.trim_end_matches('/')))
}

fn github_callback(settings: &Settings) -> Result<String, SignInError> {
    callback_url(settings, "/auth/github/callback")
}

fn oidc_callback(settings: &Settings, name: &str) -> Result<String, SignInError> {
    callback_url(settings, &format!("/auth/oidc/{name}/callback"))
}

/// A PKCE verifier and its S256 challenge.
fn pkce() -> (String, String) {
    let verifier = random_token();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

impl Master {
    /// Begins signing in with `provider` (`github`, or an OpenID Connect
    /// provider's name); the person comes back to `return_to`, a local path.
    pub async fn start_sign_in(&self, provider: &str, return_to: &str) -> Result<Started, SignInError> {
        let catalog = self.catalog();
        let settings = &catalog.config.settings;
        let state = random_token();
        let nonce = random_token();
        let (verifier, challenge) = pkce();
        let (provider_key, authorize_url) = if provider == "github" {
            let github =
                settings.sign_in.github.as_ref().ok_or_else(|| SignInError::UnknownProvider("github".into()))?;
            ("github".to_owned(), github::authorize_url(github, &github_callback(settings)?, &state, &challenge))
        } else {
            let config =
                settings.sign_in.oidc(provider).ok_or_else(|| SignInError::UnknownProvider(provider.to_owned()))?;
            let discovered = self.discovered(config).await?;
            let redirect = oidc_callback(settings, provider)?;
            (oidc_provider(provider), discovered.authorize_url(config, &redirect, &state, &nonce, &challenge))
        };
        let attempt =
            SignInAttempt { provider: provider_key, nonce, pkce_verifier: verifier, return_to: return_to.to_owned() };
        self.store.create_sign_in_attempt(&Sha256::digest(state.as_bytes()), &attempt, SIGN_IN_SECONDS).await?;
        Ok(Started { authorize_url, state })
    }

    /// Ends a sign-in at its callback: the `state` must be a sign-in under
    /// way with this provider (it is used up either way); the code is
    /// traded for who the person is and their roles.
    pub async fn finish_sign_in(&self, provider: &str, state: &str, code: &str) -> Result<SignedIn, SignInError> {
        let attempt = self
            .store
            .take_sign_in_attempt(&Sha256::digest(state.as_bytes()))
            .await?
            .ok_or(SignInError::UnknownState)?;
        let catalog = self.catalog();
        let settings = &catalog.config.settings;
        let http = http_client();
        if provider == "github" && attempt.provider == "github" {
            let github =
                settings.sign_in.github.as_ref().ok_or_else(|| SignInError::UnknownProvider("github".into()))?;
            let token =
                github::exchange(&http, github, code, &github_callback(settings)?, &attempt.pkce_verifier).await?;
            let (user, roles) = match github::identify(&http, github, &token).await? {
                Some(found) => found,
                None => {
                    return Err(SignInError::Refused {
                        provider: "GitHub".into(),
                        reason: "the token it just gave was refused".into(),
                    });
                }
            };
            tracing::info!(user = %user, ?roles, "signed in with GitHub");
            return Ok(SignedIn {
                user,
                provider: "github".into(),
                roles,
                provider_token: Some(github::seal(github, &token)),
                return_to: attempt.return_to,
            });
        }
        let config = settings.sign_in.oidc(provider).filter(|_| attempt.provider == oidc_provider(provider));
        let config = config.ok_or(SignInError::UnknownState)?;
        let discovered = self.discovered(config).await?;
        let redirect = oidc_callback(settings, provider)?;
        let (user, roles) = discovered.sign_in(&http, config, code, &redirect, &attempt).await?;
        tracing::info!(user = %user, provider, ?roles, "signed in with OpenID Connect");
        Ok(SignedIn {
            user,
            provider: oidc_provider(provider),
            roles,
            provider_token: None,
            return_to: attempt.return_to,
        })
    }

    /// A GitHub session's roles read again with its sealed token: `None`
    /// when the token no longer works (revoked, or the App's secret
    /// changed), which ends the session.
    pub async fn refresh_github_roles(&self, sealed_token: &[u8]) -> Result<Option<Vec<String>>, SignInError> {
        let catalog = self.catalog();
        let Some(github) = catalog.config.settings.sign_in.github.as_ref() else {
            return Ok(None);
        };
        let Some(token) = github::open(github, sealed_token) else {
            return Ok(None);
        };
        Ok(github::identify(&http_client(), github, &token).await?.map(|(_, roles)| roles))
    }

    /// An OpenID Connect provider's discovery document and keys, read once
    /// and kept (the keys are read again when a token names one not seen).
    async fn discovered(&self, config: &shared::config::OidcProvider) -> Result<Arc<oidc::Discovered>, SignInError> {
        let mut known = self.sign_in.oidc.lock().await;
        if let Some(discovered) = known.get(&config.name).filter(|discovered| discovered.issuer_is(&config.issuer)) {
            return Ok(discovered.clone());
        }
        let discovered = Arc::new(oidc::Discovered::read(&http_client(), config).await?);
        known.insert(config.name.clone(), discovered.clone());
        Ok(discovered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_on_this_site_are_returned_to() {
        for local in ["/", "/builders/3", "/builders?x=1#y"] {
            assert!(is_local_path(local), "{local}");
        }
        for elsewhere in ["https://evil.example/", "//evil.example/", "/\\evil.example", "evil", "", "/a\nb"] {
            assert!(!is_local_path(elsewhere), "{elsewhere:?}");
        }
    }

    #[test]
    fn a_pkce_challenge_is_the_verifiers_sha256() {
        let (verifier, challenge) = pkce();
        assert_eq!(challenge, URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())));
        assert_eq!(challenge.len(), 43);
    }
}
