//! Who is calling, and whether they may. Reading pages and the API is
//! public. Control actions (force, stop, rebuild, cancel, set a priority,
//! manage workers) need, once settings.yaml lists `users`, a caller with a
//! role that `authorization` allows for the action; with no users, they are
//! open, as on a private network.
//!
//! People log in with a password (argon2) and get a session cookie. The
//! session lives in Postgres, so every master knows it; only the SHA-256 of
//! its token is stored. Scripts send an API token instead
//! (`Authorization: Bearer`), whose SHA-256 settings.yaml lists. A request
//! made with the cookie must also carry the session's CSRF token in
//! `X-CSRF-Token`, which another site's page cannot read. Roles are read from
//! the configuration on every request, so a reload applies at once.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use shared::config::{AuthorizationSettings, Settings, UserSettings};

use super::ApiError;
use crate::Master;

/// The login cookie.
const COOKIE_NAME: &str = "buildmaster_session";
/// The header a cookie-authenticated action carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login lasts.
const SESSION_SECONDS: i64 = 7 * 24 * 3600;

/// What a control request asks to do.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    Force,
    StopBuild,
    Rebuild,
    Cancel,
    SetPriority,
    ManageWorkers,
    ManageBuilders,
}

impl Action {
    fn allowed_roles(self, authorization: &AuthorizationSettings) -> &[String] {
        match self {
            Action::Force => &authorization.force,
            Action::StopBuild => &authorization.stop_build,
            Action::Rebuild => &authorization.rebuild,
            Action::Cancel => &authorization.cancel,
            Action::SetPriority => &authorization.set_priority,
            Action::ManageWorkers => &authorization.manage_workers,
            Action::ManageBuilders => &authorization.manage_builders,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Action::Force => "force builds",
            Action::StopBuild => "stop builds",
            Action::Rebuild => "rebuild builds",
            Action::Cancel => "cancel build requests",
            Action::SetPriority => "change priorities",
            Action::ManageWorkers => "pause, unpause or stop workers",
            Action::ManageBuilders => "pause or unpause builders",
        }
    }
}

/// Who sent a request.
#[derive(Debug)]
pub enum Caller {
    Anonymous,
    /// Logged in with a password; `csrf_ok` says whether the request carried
    /// the session's CSRF token.
    Session {
        user: String,
        csrf_token: String,
        csrf_ok: bool,
    },
    /// A script with an API token.
    Token {
        user: String,
    },
    /// Credentials were sent but are not valid; why.
    Invalid(String),
}

impl Caller {
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::Session { user, .. } | Caller::Token { user } => Some(user),
            Caller::Anonymous | Caller::Invalid(_) => None,
        }
    }
}

impl FromRequestParts<Arc<Master>> for Caller {
    /// Only when the session cannot be looked up (Postgres is down).
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, master: &Arc<Master>) -> Result<Self, ApiError> {
        if let Some(value) = parts.headers.get(AUTHORIZATION) {
            let Some(token) = value.to_str().ok().and_then(|value| value.strip_prefix("Bearer ")) else {
                return Ok(Caller::Invalid("the Authorization header must be `Bearer <API token>`".into()));
            };
            let catalog = master.catalog();
            return Ok(match catalog.config.settings.user_of_token_sha256(&sha256_hex(token.trim())) {
                Some(user) => Caller::Token { user: user.name.clone() },
                None => Caller::Invalid("this API token is not configured (token_sha256 in settings.yaml)".into()),
            });
        }
        let Some(token) = session_token(&parts.headers) else {
            return Ok(Caller::Anonymous);
        };
        let session = master.store.find_session(&Sha256::digest(token.as_bytes())).await?;
        let Some((user, fingerprint, csrf_token)) = session else {
            // Expired or logged out: as if no cookie came.
            return Ok(Caller::Anonymous);
        };
        // A password changed since the login ends the session.
        let current = master.catalog().config.settings.user(&user).and_then(password_fingerprint);
        if current.as_deref() != Some(fingerprint.as_str()) {
            return Ok(Caller::Anonymous);
        }
        let sent = parts.headers.get(CSRF_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
        let csrf_ok = same_bytes(sent, csrf_token.as_bytes());
        Ok(Caller::Session { user, csrf_token, csrf_ok })
    }
}

/// Whether `caller` may do `action`: the one place control actions are
/// authorized.
pub fn authorize(settings: &Settings, caller: &Caller, action: Action) -> Result<(), ApiError> {
    if settings.users.is_empty() {
        return Ok(());
    }
    let user = match caller {
        Caller::Anonymous => {
            return Err(ApiError::Unauthorized(format!(
                "log in to {} (POST /auth/login), or send an API token as `Authorization: Bearer <token>`",
                action.describe()
            )));
        }
        Caller::Invalid(reason) => return Err(ApiError::Unauthorized(reason.clone())),
        Caller::Session { csrf_ok: false, .. } => {
            return Err(ApiError::Forbidden(format!(
                "a request made with the login cookie must carry the session's CSRF token in the {CSRF_HEADER} \
                 header (GET /auth/me gives it)"
            )));
        }
        Caller::Session { user, .. } | Caller::Token { user } => user,
    };
    let Some(configured) = settings.user(user) else {
        return Err(ApiError::Unauthorized(format!("user `{user}` is no longer configured; log in again")));
    };
    let allowed = action.allowed_roles(&settings.authorization);
    if configured.roles.iter().any(|role| allowed.contains(role)) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "user `{user}` may not {}: that needs one of the roles {} (authorization in settings.yaml)",
            action.describe(),
            allowed.iter().map(|role| format!("`{role}`")).collect::<Vec<_>>().join(", ")
        )))
    }
}

#[derive(Deserialize)]
pub struct Login {
    username: String,
    password: String,
}

/// `POST /auth/login` with `{"username", "password"}`: sets the session
/// cookie and answers who is logged in, with the CSRF token.
pub async fn login(State(master): State<Arc<Master>>, body: Result<Json<Login>, JsonRejection>) -> Response {
    match log_in(&master, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn log_in(master: &Master, body: Result<Json<Login>, JsonRejection>) -> Result<Response, ApiError> {
    let Json(login) = body.map_err(|rejection| {
        ApiError::BadRequest(format!("expected {{\"username\": ..., \"password\": ...}}: {}", rejection.body_text()))
    })?;
    let catalog = master.catalog();
    let settings = &catalog.config.settings;
    let user = settings.user(&login.username);
    let hash = user.and_then(|user| user.password_hash.as_ref()).map(|hash| hash.expose().to_owned());
    // argon2 is slow and takes memory on purpose: off the async threads,
    // and only a few at once, so a flood of logins cannot exhaust a master.
    let Ok(_checking) = PASSWORD_CHECKS.try_acquire() else {
        return Err(ApiError::TooManyRequests("too many logins at once; try again in a moment".into()));
    };
    let verified = tokio::task::spawn_blocking(move || verify_password(hash.as_deref(), &login.password))
        .await
        .map_err(|error| ApiError::Internal(format!("password check failed: {error}")))?;
    let Some(user) = user.filter(|_| verified) else {
        return Err(ApiError::Unauthorized("wrong user name or password".into()));
    };
    let token = random_token();
    let csrf_token = random_token();
    let fingerprint = password_fingerprint(user).unwrap_or_default();
    let token_sha256 = Sha256::digest(token.as_bytes());
    master.store.create_session(&token_sha256, &user.name, &fingerprint, &csrf_token, SESSION_SECONDS).await?;
    tracing::info!(user = %user.name, "logged in");
    let secure = if settings.web.secure_cookies { "; Secure" } else { "" };
    let cookie = format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={SESSION_SECONDS}{secure}");
    let body = json!({ "user": user.name, "roles": user.roles, "csrf_token": csrf_token });
    Ok(([(SET_COOKIE, cookie)], Json(body)).into_response())
}

/// `POST /auth/logout`: ends the session and clears the cookie.
pub async fn logout(State(master): State<Arc<Master>>, headers: HeaderMap) -> Response {
    if let Some(token) = session_token(&headers)
        && let Err(error) = master.store.delete_session(&Sha256::digest(token.as_bytes())).await
    {
        return ApiError::from(error).into_response();
    }
    let cookie = format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    ([(SET_COOKIE, cookie)], Json(json!({ "user": null }))).into_response()
}

/// `GET /auth/me`: who the request's cookie or token belongs to, with their
/// roles and the session's CSRF token; `{"user": null}` for nobody.
pub async fn me(State(master): State<Arc<Master>>, caller: Caller) -> Response {
    let catalog = master.catalog();
    let roles = caller.user().and_then(|user| catalog.config.settings.user(user)).map(|user| user.roles.clone());
    let body = match (&caller, roles) {
        (Caller::Session { user, csrf_token, .. }, Some(roles)) => {
            json!({ "user": user, "roles": roles, "csrf_token": csrf_token })
        }
        (Caller::Token { user }, Some(roles)) => json!({ "user": user, "roles": roles }),
        _ => json!({ "user": null, "login_required": !catalog.config.settings.users.is_empty() }),
    };
    Json(body).into_response()
}

/// Password checks running at once on one master.
static PASSWORD_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// What a session remembers of the password hash it was opened with.
fn password_fingerprint(user: &UserSettings) -> Option<String> {
    user.password_hash.as_ref().map(|hash| sha256_hex(hash.expose())[..16].to_owned())
}

/// An argon2id hash of `password`, for settings.yaml's `password_hash`.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the operating system gives random bytes");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a salt");
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 hashes a password").to_string()
}

/// Checks `password` against `hash`; without a hash (an unknown user), a
/// hash of nothing is checked instead, so the answer takes as long either
/// way and does not tell which user names exist.
fn verify_password(hash: Option<&str>, password: &str) -> bool {
    static NOBODY: OnceLock<String> = OnceLock::new();
    let nobody = NOBODY.get_or_init(|| hash_password("no user has this password"));
    let Ok(parsed) = PasswordHash::new(hash.unwrap_or(nobody)) else {
        tracing::error!("a password_hash in settings.yaml is not a valid argon2 hash; that user cannot log in");
        return false;
    };
    argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok() && hash.is_some()
}

/// A new API token and the SHA-256 settings.yaml lists for it.
pub fn new_token() -> (String, String) {
    let token = format!("bm_{}", random_token());
    let hash = sha256_hex(&token);
    (token, hash)
}

/// 32 random bytes, hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system gives random bytes");
    hex(&bytes)
}

fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The session token from the `Cookie` header, if any.
fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, token)| token.to_owned())
        .filter(|token| !token.is_empty())
}

/// Compares in time that does not depend on where the bytes differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |differ, (x, y)| differ | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_own_hash_only() {
        let hash = hash_password("correct horse battery staple");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(Some(&hash), "correct horse battery staple"));
        assert!(!verify_password(Some(&hash), "correct horse battery stapler"));
        assert!(!verify_password(None, "no user has this password"), "an unknown user never logs in");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("theme=dark; buildmaster_session=abc123; other=1"));
        assert_eq!(session_token(&headers).as_deref(), Some("abc123"));
        headers.insert(COOKIE, HeaderValue::from_static("buildmaster_session="));
        assert_eq!(session_token(&headers), None);
    }
}
