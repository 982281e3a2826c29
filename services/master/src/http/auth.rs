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

use std::sync::Arc;

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
use shared::config::Settings;

use super::ApiError;
use crate::Master;
pub use crate::auth::Action;
use crate::auth::{self, Denied, PASSWORD_CHECKS, password_fingerprint, random_token, sha256_hex, verify_password};

/// The login cookie.
const COOKIE_NAME: &str = "buildmaster_session";
/// The header a cookie-authenticated action carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login lasts.
const SESSION_SECONDS: i64 = 7 * 24 * 3600;

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
    auth::check_roles(settings, user, action).map_err(|denied| match denied {
        Denied::UnknownUser(_) => ApiError::Unauthorized(denied.to_string()),
        Denied::MissingRole { .. } => ApiError::Forbidden(denied.to_string()),
    })
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
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("theme=dark; buildmaster_session=abc123; other=1"));
        assert_eq!(session_token(&headers).as_deref(), Some("abc123"));
        headers.insert(COOKIE, HeaderValue::from_static("buildmaster_session="));
        assert_eq!(session_token(&headers), None);
    }
}
