//! Login sessions, shared by every master: only a token's SHA-256 is kept,
//! with the fingerprint of the password it was opened with (a changed
//! password ends it) and its CSRF token.

use super::{Store, StoreResult};

impl Store {
    /// Keeps a new login, and forgets expired ones on the way.
    pub async fn create_session(
        &self,
        token_sha256: &[u8],
        user: &str,
        password_fingerprint: &str,
        csrf_token: &str,
        lifetime_seconds: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("delete from sessions where expires_at < now()").execute(&mut *tx).await?;
        sqlx::query(
            r#"insert into sessions (token_sha256, user_name, password_fingerprint, csrf_token, expires_at)
               values ($1, $2, $3, $4, now() + make_interval(secs => $5))"#,
        )
        .bind(token_sha256)
        .bind(user)
        .bind(password_fingerprint)
        .bind(csrf_token)
        .bind(lifetime_seconds as f64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The user, password fingerprint and CSRF token of a login that has
    /// not expired.
    pub async fn find_session(&self, token_sha256: &[u8]) -> StoreResult<Option<(String, String, String)>> {
        Ok(sqlx::query_as(
            r#"select user_name, password_fingerprint, csrf_token from sessions
               where token_sha256 = $1 and expires_at > now()"#,
        )
        .bind(token_sha256)
        // Any request may carry a cookie: lookups must not take the
        // pipeline's connections.
        .fetch_optional(&self.reads)
        .await?)
    }

    pub async fn delete_session(&self, token_sha256: &[u8]) -> StoreResult<()> {
        sqlx::query("delete from sessions where token_sha256 = $1").bind(token_sha256).execute(&self.pool).await?;
        Ok(())
    }
}
