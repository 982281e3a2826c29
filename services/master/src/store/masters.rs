//! Masters: each registers under its name, touches its row while it runs
//! (so the API can say which are active), and records why its last
//! configuration reload was refused.

use shared::ids::MasterId;

use super::{Store, StoreResult};

impl Store {
    pub async fn register_master(&self, name: &str) -> StoreResult<MasterId> {
        Ok(sqlx::query_scalar(
            r#"insert into masters (name) values ($1)
               on conflict (name) do update set started_at = now(), last_seen_at = now()
               returning id"#,
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn touch_master(&self, id: MasterId) -> StoreResult<()> {
        sqlx::query("update masters set last_seen_at = now() where id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Records why this master's last reload was refused, or that the
    /// files on disk are applied (`None`).
    pub async fn set_config_error(&self, master_id: MasterId, error: Option<&str>) -> StoreResult<()> {
        sqlx::query("update masters set config_error = $2 where id = $1")
            .bind(master_id)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Masters seen lately whose last reload was refused, with why.
    pub async fn config_errors(&self) -> StoreResult<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            r#"select name, config_error from masters
               where config_error is not null and last_seen_at > now() - interval '1 minute'
               order by name"#,
        )
        .fetch_all(&self.reads)
        .await?)
    }
}
