//! The one place where failures become HTTP answers. Every error body has one
//! shape, `{"error": "..."}`; a 5xx body says nothing about internals, and its
//! cause is logged once, here, inside the request's span.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::broker::BrokerError;
use crate::changes::github::GitHubError;
use crate::logs::LogError;
use crate::read_model::ReadError;
use crate::sign_in::SignInError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// A JSON-RPC parameter (or body field) that is missing or wrong.
    #[error("`{field}`: {message}")]
    InvalidField { field: String, message: String },
    /// A limited resource is busy (password checks); try again soon.
    #[error("{0}")]
    TooManyRequests(String),
    /// Nobody is logged in, and the action needs someone.
    #[error("{0}")]
    Unauthorized(String),
    /// Someone is, but may not do this (or the CSRF token is missing).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// It existed and was deleted on purpose (retention).
    #[error("{0}")]
    Gone(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// A dependency is down; the client may retry (HAProxy may already route
    /// it to a healthy master).
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A sign-in provider (GitHub, an OpenID Connect provider) failed;
    /// its words are the person's to see.
    #[error("{0}")]
    BadGateway(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) | ApiError::InvalidField { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The text a client may see.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error; see the master's log".into(),
            ApiError::Unavailable(_) => "a service buildmaster depends on is unavailable; try again".into(),
            other => other.to_string(),
        }
    }

    /// Logs the cause of a server-side failure; client errors are not logged.
    pub fn log(&self) {
        match self {
            ApiError::Internal(cause) => tracing::error!(error = %cause, "request failed"),
            ApiError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "request failed: dependency unavailable")
            }
            _ => {}
        }
    }
}

pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidField { field: field.to_owned(), message: message.into() }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if let Some(reason) = error.bad_input() {
            ApiError::BadRequest(format!("a value in the request is not valid: {reason}"))
        } else if error.is_transient() {
            ApiError::Unavailable(error.to_string())
        } else {
            ApiError::Internal(error.to_string())
        }
    }
}

impl From<SignInError> for ApiError {
    fn from(error: SignInError) -> Self {
        match error {
            SignInError::Store(store) => store.into(),
            SignInError::UnknownProvider(_) => ApiError::NotFound(error.to_string()),
            SignInError::UnknownState => ApiError::BadRequest(error.to_string()),
            SignInError::Refused { .. } | SignInError::InvalidToken { .. } => ApiError::Unauthorized(error.to_string()),
            SignInError::NoPublicUrl => ApiError::Internal(error.to_string()),
            SignInError::Unavailable { .. } => ApiError::BadGateway(error.to_string()),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        ApiError::Unavailable(error.to_string())
    }
}

impl From<LogError> for ApiError {
    fn from(error: LogError) -> Self {
        match error {
            LogError::Store(store) => store.into(),
            LogError::Redis { .. } => ApiError::Unavailable(error.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Store(store) => store.into(),
            ReadError::Redis(redis) => redis.into(),
        }
    }
}

impl From<GitHubError> for ApiError {
    fn from(error: GitHubError) -> Self {
        ApiError::Unavailable(error.to_string())
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(error: redis::RedisError) -> Self {
        ApiError::Unavailable(format!("redis: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let mut response = (self.status(), Json(json!({ "error": self.public_message() }))).into_response();
        add_challenge(&mut response);
        response
    }
}

/// A 401 says how to authenticate (RFC 9110): with an API token.
pub fn add_challenge(response: &mut Response) {
    if response.status() == StatusCode::UNAUTHORIZED {
        let challenge = axum::http::HeaderValue::from_static("Bearer realm=\"buildmaster\"");
        response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, challenge);
    }
}
