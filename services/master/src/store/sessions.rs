//! Login sessions, shared by every master: only a token's SHA-256 is kept,
//! with the provider that vouched for the user, the fingerprint of the
//! password a local session was opened with (a changed password ends it),
//! a provider's roles and when they were last checked, and the CSRF token.
//! Also sign-ins under way (`state`, `nonce`, PKCE verifier), each usable
//! once.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Store, StoreResult};

/// A session to keep.
pub struct NewSession<'a> {
    pub token_sha256: &'a [u8],
    pub user: &'a str,
    /// `local`, `github` or `oidc:<name>`.
    pub provider: &'a str,
    pub password_fingerprint: &'a str,
    pub csrf_token: &'a str,
    /// A provider's roles; `None` for local users (read from settings.yaml).
    pub roles: Option<&'a [String]>,
    /// Sealed credentials to check the roles again with.
    pub provider_token: Option<&'a [u8]>,
    pub lifetime_seconds: i64,
}

#[derive(Debug, FromRow)]
pub struct SessionRow {
    pub user_name: String,
    pub provider: String,
    pub password_fingerprint: String,
    pub csrf_token: String,
    pub roles: Option<Vec<String>>,
    pub roles_checked_at: Option<DateTime<Utc>>,
    pub provider_token: Option<Vec<u8>>,
}

/// What a sign-in's callback must match.
#[derive(Debug)]
pub struct SignInAttempt {
    pub provider: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub return_to: String,
}

impl Store {
    /// Keeps a new login, and forgets expired ones on the way.
    pub async fn create_session(&self, new: &NewSession<'_>) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("delete from sessions where expires_at < now()").execute(&mut *tx).await?;
        sqlx::query(
            r#"insert into sessions (token_sha256, user_name, provider, password_fingerprint, csrf_token, roles,
                                     roles_checked_at, provider_token, expires_at)
               values ($1, $2, $3, $4, $5, $6, now(), $7, now() + make_interval(secs => $8))"#,
        )
        .bind(new.token_sha256)
        .bind(new.user)
        .bind(new.provider)
        .bind(new.password_fingerprint)
        .bind(new.csrf_token)
        .bind(new.roles)
        .bind(new.provider_token)
        .bind(new.lifetime_seconds as f64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A login that has not expired.
    pub async fn find_session(&self, token_sha256: &[u8]) -> StoreResult<Option<SessionRow>> {
        Ok(sqlx::query_as(
            r#"select user_name, provider, password_fingerprint, csrf_token, roles, roles_checked_at, provider_token
               from sessions where token_sha256 = $1 and expires_at > now()"#,
        )
        .bind(token_sha256)
        // Any request may carry a cookie: lookups must not take the
        // pipeline's connections.
        .fetch_optional(&self.reads)
        .await?)
    }

    /// A provider's roles, checked again just now.
    pub async fn update_session_roles(&self, token_sha256: &[u8], roles: &[String]) -> StoreResult<()> {
        sqlx::query("update sessions set roles = $2, roles_checked_at = now() where token_sha256 = $1")
            .bind(token_sha256)
            .bind(roles)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete_session(&self, token_sha256: &[u8]) -> StoreResult<()> {
        sqlx::query("delete from sessions where token_sha256 = $1").bind(token_sha256).execute(&self.pool).await?;
        Ok(())
    }

    /// Keeps a sign-in under way for `lifetime_seconds`, and forgets stale
    /// ones on the way.
    pub async fn create_sign_in_attempt(
        &self,
        state_sha256: &[u8],
        attempt: &SignInAttempt,
        lifetime_seconds: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("delete from sign_in_attempts where expires_at < now()").execute(&mut *tx).await?;
        sqlx::query(
            r#"insert into sign_in_attempts (state_sha256, provider, nonce, pkce_verifier, return_to, expires_at)
               values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))"#,
        )
        .bind(state_sha256)
        .bind(&attempt.provider)
        .bind(&attempt.nonce)
        .bind(&attempt.pkce_verifier)
        .bind(&attempt.return_to)
        .bind(lifetime_seconds as f64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The sign-in a `state` belongs to, if it has not expired; it is gone
    /// once read, so a replayed callback finds nothing.
    pub async fn take_sign_in_attempt(&self, state_sha256: &[u8]) -> StoreResult<Option<SignInAttempt>> {
        let attempt: Option<(String, String, String, String, bool)> = sqlx::query_as(
            r#"delete from sign_in_attempts where state_sha256 = $1
               returning provider, nonce, pkce_verifier, return_to, expires_at > now()"#,
        )
        .bind(state_sha256)
        .fetch_optional(&self.pool)
        .await?;
        Ok(attempt.filter(|attempt| attempt.4).map(|(provider, nonce, pkce_verifier, return_to, _)| SignInAttempt {
            provider,
            nonce,
            pkce_verifier,
            return_to,
        }))
    }
}
