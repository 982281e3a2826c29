//! Who is calling, and whether they may. Reading pages and the API is
//! public. Control actions (force, stop, rebuild, cancel, set a priority,
//! manage workers) need, once settings.yaml lists `users` or a `sign_in`
//! provider, a caller with a role that `authorization` allows for the
//! action (or the `owner` role, for what they forced); with neither, they
//! are open, as on a private network.
//!
//! People sign in with a password (argon2), with GitHub or with an OpenID
//! Connect provider (`crate::sign_in`), and get a session cookie. The
//! session lives in Postgres, so every master knows it, and logging out
//! ends it on all of them; only the SHA-256 of its token is stored.
//! Scripts send an API token instead (`Authorization: Bearer`), whose
//! SHA-256 settings.yaml lists. A request made with the cookie must also
//! carry the session's CSRF token in `X-CSRF-Token`, which another site's
//! page cannot read. Local users' roles are read from the configuration on
//! every request, so a reload applies at once; a provider's are kept in
//! the session (GitHub's read again every `roles_refresh_seconds`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header::{AUTHORIZATION, COOKIE, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::ApiError;
use super::web::PageError;
use crate::Master;
pub use crate::auth::{Action, Target};
use crate::auth::{Denied, PASSWORD_CHECKS, Person, password_fingerprint, random_token, sha256_hex, verify_password};
use crate::sign_in::{self, SIGN_IN_SECONDS, SignedIn};
use crate::store::{NewSession, SessionRow};

/// The login cookie.
const COOKIE_NAME: &str = "buildmaster_session";
/// The cookie that ties a provider's callback to the browser that left
/// for it (its value is the sign-in's `state`).
const SIGN_IN_COOKIE: &str = "buildmaster_sign_in";
/// The header a cookie-authenticated action carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login lasts.
const SESSION_SECONDS: i64 = 7 * 24 * 3600;

/// Who sent a request.
#[derive(Debug)]
pub enum Caller {
    Anonymous,
    /// Logged in; `csrf_ok` says whether the request carried the session's
    /// CSRF token.
    Session {
        person: Person,
        csrf_token: String,
        csrf_ok: bool,
    },
    /// A script with an API token.
    Token {
        person: Person,
    },
    /// Credentials were sent but are not valid; why.
    Invalid(String),
}

impl Caller {
    pub fn person(&self) -> Option<&Person> {
        match self {
            Caller::Session { person, .. } | Caller::Token { person } => Some(person),
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
                Some(user) => Caller::Token {
                    person: Person { user: user.name.clone(), provider: "local".into(), roles: user.roles.clone() },
                },
                None => Caller::Invalid("this API token is not configured (token_sha256 in settings.yaml)".into()),
            });
        }
        let Some(token) = cookie(&parts.headers, COOKIE_NAME) else {
            return Ok(Caller::Anonymous);
        };
        let token_sha256 = Sha256::digest(token.as_bytes());
        let Some(session) = master.store.find_session(&token_sha256).await? else {
            // Expired or logged out: as if no cookie came.
            return Ok(Caller::Anonymous);
        };
        let csrf_token = session.csrf_token.clone();
        let Some(person) = session_person(master, &token_sha256, session).await? else {
            return Ok(Caller::Anonymous);
        };
        let sent = parts.headers.get(CSRF_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
        let csrf_ok = same_bytes(sent, csrf_token.as_bytes());
        Ok(Caller::Session { person, csrf_token, csrf_ok })
    }
}

/// Who a session is for now: `None` once it no longer holds (a local
/// user's password changed or the user is gone, the provider is no longer
/// configured, GitHub no longer takes the person's token).
async fn session_person(master: &Master, token_sha256: &[u8], session: SessionRow) -> Result<Option<Person>, ApiError> {
    let catalog = master.catalog();
    let settings = &catalog.config.settings;
    let SessionRow { user_name: user, provider, password_fingerprint: fingerprint, .. } = &session;
    if provider == "local" {
        let Some(configured) = settings.user(user) else { return Ok(None) };
        // A password changed since the login ends the session.
        if password_fingerprint(configured).as_deref() != Some(fingerprint.as_str()) {
            return Ok(None);
        }
        let roles = configured.roles.clone();
        return Ok(Some(Person { user: user.clone(), provider: provider.clone(), roles }));
    }
    let mut roles = session.roles.clone().unwrap_or_default();
    if provider == "github" {
        let Some(github) = &settings.sign_in.github else { return Ok(None) };
        let checked = session.roles_checked_at.unwrap_or_default();
        let due = Utc::now() - checked >= chrono::Duration::seconds(i64::from(github.roles_refresh_seconds));
        if due {
            let sealed = session.provider_token.as_deref().unwrap_or_default();
            match master.refresh_github_roles(sealed).await {
                Ok(Some(fresh)) => {
                    if fresh != roles {
                        tracing::info!(user = %user, before = ?roles, after = ?fresh, "GitHub roles changed");
                    }
                    master.store.update_session_roles(token_sha256, &fresh).await?;
                    roles = fresh;
                }
                Ok(None) => {
                    tracing::info!(user = %user, "GitHub no longer takes this person's token; their session ends");
                    master.store.delete_session(token_sha256).await?;
                    return Ok(None);
                }
                Err(error) => {
                    // Roles that cannot be checked are not given.
                    tracing::warn!(user = %user, %error, "could not read GitHub roles again; none given for now");
                    roles.clear();
                }
            }
        }
    } else {
        let name = provider.strip_prefix("oidc:").unwrap_or_default();
        if settings.sign_in.oidc(name).is_none() {
            return Ok(None);
        }
    }
    Ok(Some(Person { user: user.clone(), provider: provider.clone(), roles }))
}

/// Whether `caller` may do `action` to `target`: the one place control
/// actions are authorized.
pub async fn authorize(master: &Master, caller: &Caller, action: Action, target: Target) -> Result<(), ApiError> {
    if !master.catalog().config.settings.has_accounts() {
        return Ok(());
    }
    let person = match caller {
        Caller::Anonymous => {
            return Err(ApiError::Unauthorized(format!(
                "log in to {} (/login), or send an API token as `Authorization: Bearer <token>`",
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
        Caller::Session { person, .. } | Caller::Token { person } => person,
    };
    master.may(person, action, target).await.map_err(|denied| match denied {
        Denied::MissingRole { .. } => ApiError::Forbidden(denied.to_string()),
        Denied::Store(error) => error.into(),
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
    master
        .store
        .create_session(&NewSession {
            token_sha256: &token_sha256,
            user: &user.name,
            provider: "local",
            password_fingerprint: &fingerprint,
            csrf_token: &csrf_token,
            roles: None,
            provider_token: None,
            lifetime_seconds: SESSION_SECONDS,
        })
        .await?;
    tracing::info!(user = %user.name, "logged in");
    let cookie = session_cookie(settings, &token);
    let body = json!({ "user": user.name, "provider": "local", "roles": user.roles, "csrf_token": csrf_token });
    Ok(([(SET_COOKIE, cookie)], Json(body)).into_response())
}

/// `POST /auth/logout`: ends the session and clears the cookie.
pub async fn logout(State(master): State<Arc<Master>>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, COOKIE_NAME)
        && let Err(error) = master.store.delete_session(&Sha256::digest(token.as_bytes())).await
    {
        return ApiError::from(error).into_response();
    }
    let cookie = format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    ([(SET_COOKIE, cookie)], Json(json!({ "user": null }))).into_response()
}

/// `GET /auth/me`: who the request's cookie or token belongs to, with
/// their provider, roles and the session's CSRF token; `{"user": null}` for
/// nobody, with the ways to sign in.
pub async fn me(State(master): State<Arc<Master>>, caller: Caller) -> Response {
    let catalog = master.catalog();
    let settings = &catalog.config.settings;
    let body = match &caller {
        Caller::Session { person, csrf_token, .. } => {
            json!({ "user": person.user, "provider": person.provider, "roles": person.roles, "csrf_token": csrf_token })
        }
        Caller::Token { person } => json!({ "user": person.user, "provider": person.provider, "roles": person.roles }),
        Caller::Anonymous | Caller::Invalid(_) => {
            let mut providers = Vec::new();
            if settings.sign_in.github.is_some() {
                providers.push(json!({ "name": "github", "title": "GitHub", "login": "/auth/github/login" }));
            }
            for provider in &settings.sign_in.oidc {
                let login = format!("/auth/oidc/{}/login", provider.name);
                providers.push(json!({ "name": provider.name, "title": provider.title(), "login": login }));
            }
            json!({
                "user": null,
                "login_required": settings.has_accounts(),
                "passwords": !settings.users.is_empty(),
                "providers": providers,
            })
        }
    };
    Json(body).into_response()
}

#[derive(Deserialize)]
pub struct SignInStart {
    return_to: Option<String>,
}

/// `GET /auth/github/login?return_to=/path`: off to GitHub.
pub async fn github_login(State(master): State<Arc<Master>>, Query(query): Query<SignInStart>) -> Response {
    start_sign_in(&master, "github", query).await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /auth/oidc/{name}/login?return_to=/path`: off to the provider.
pub async fn oidc_login(
    State(master): State<Arc<Master>>,
    Path(name): Path<String>,
    Query(query): Query<SignInStart>,
) -> Response {
    start_sign_in(&master, &name, query).await.unwrap_or_else(IntoResponse::into_response)
}

async fn start_sign_in(master: &Master, provider: &str, query: SignInStart) -> Result<Response, PageError> {
    let return_to = query.return_to.unwrap_or_else(|| "/".into());
    if !sign_in::is_local_path(&return_to) {
        return Err(PageError(ApiError::BadRequest(format!(
            "return_to `{return_to}` is not a path on this site; after signing in, people only go back to pages here"
        ))));
    }
    let started = master.start_sign_in(provider, &return_to).await?;
    let settings = &master.catalog().config.settings;
    let cookie = format!(
        "{SIGN_IN_COOKIE}={}; Path=/auth; HttpOnly; SameSite=Lax; Max-Age={SIGN_IN_SECONDS}{}",
        started.state,
        secure(settings)
    );
    Ok(redirect(&started.authorize_url, &[cookie]))
}

#[derive(Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /auth/github/callback`: back from GitHub.
pub async fn github_callback(
    State(master): State<Arc<Master>>,
    headers: HeaderMap,
    Query(callback): Query<Callback>,
) -> Response {
    finish_sign_in(&master, "github", &headers, callback).await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /auth/oidc/{name}/callback`: back from an OpenID Connect provider.
pub async fn oidc_callback(
    State(master): State<Arc<Master>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(callback): Query<Callback>,
) -> Response {
    finish_sign_in(&master, &name, &headers, callback).await.unwrap_or_else(IntoResponse::into_response)
}

async fn finish_sign_in(
    master: &Master,
    provider: &str,
    headers: &HeaderMap,
    callback: Callback,
) -> Result<Response, PageError> {
    if let Some(error) = callback.error {
        let description = callback.error_description.unwrap_or_default();
        return Err(PageError(ApiError::Unauthorized(format!(
            "the provider did not sign you in: {error} {description}"
        ))));
    }
    let (Some(code), Some(state)) = (callback.code, callback.state) else {
        return Err(PageError(ApiError::BadRequest("the provider's answer has no `code` and `state`".into())));
    };
    // The state must be the one this browser left with: another's callback
    // (a link someone sent) would sign this browser in as them.
    let left_with = cookie(headers, SIGN_IN_COOKIE).unwrap_or_default();
    if !same_bytes(left_with.as_bytes(), state.as_bytes()) {
        return Err(PageError(ApiError::BadRequest(
            "this sign-in did not start in this browser (or took too long); sign in again".into(),
        )));
    }
    let signed_in = master.finish_sign_in(provider, &state, &code).await?;
    let SignedIn { user, provider, roles, provider_token, return_to } = signed_in;
    let token = random_token();
    let csrf_token = random_token();
    master
        .store
        .create_session(&NewSession {
            token_sha256: &Sha256::digest(token.as_bytes()),
            user: &user,
            provider: &provider,
            password_fingerprint: "",
            csrf_token: &csrf_token,
            roles: Some(&roles),
            provider_token: provider_token.as_deref(),
            lifetime_seconds: SESSION_SECONDS,
        })
        .await
        .map_err(ApiError::from)?;
    let settings = &master.catalog().config.settings;
    let session = session_cookie(settings, &token);
    let spent = format!("{SIGN_IN_COOKIE}=; Path=/auth; HttpOnly; SameSite=Lax; Max-Age=0");
    Ok(redirect(&return_to, &[session, spent]))
}

fn secure(settings: &shared::config::Settings) -> &'static str {
    if settings.web.secure_cookies { "; Secure" } else { "" }
}

fn session_cookie(settings: &shared::config::Settings, token: &str) -> String {
    format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={SESSION_SECONDS}{}", secure(settings))
}

/// 303 See Other to `location`, setting `cookies`.
fn redirect(location: &str, cookies: &[String]) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(location) {
        headers.insert(LOCATION, location);
    }
    for cookie in cookies {
        if let Ok(cookie) = HeaderValue::from_str(cookie) {
            headers.append(SET_COOKIE, cookie);
        }
    }
    response
}

/// A cookie's value from the `Cookie` header, if any.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(found, _)| *found == name)
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
        assert_eq!(cookie(&headers, COOKIE_NAME).as_deref(), Some("abc123"));
        headers.insert(COOKIE, HeaderValue::from_static("buildmaster_session="));
        assert_eq!(cookie(&headers, COOKIE_NAME), None);
    }
}
