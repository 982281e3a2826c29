//! Workers as Postgres knows them: a row per name (made at the first hello
//! or claim), what each said about itself, and the pause and shutdown the
//! masters asked of it, with a version so that newer news wins.

use std::collections::{BTreeMap, HashMap};

use shared::ids::{WorkerId, WorkerName};

use super::{Store, StoreResult};

impl Store {
    pub async fn ensure_worker(&self, name: &str) -> StoreResult<WorkerId> {
        Ok(sqlx::query_scalar(
            r#"insert into workers (name, last_seen_at) values ($1, now())
               on conflict (name) do update set last_seen_at = now()
               returning id"#,
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await?)
    }

    /// A worker said hello: what it tells about itself is kept, a shutdown
    /// it was asked for is over, and whether it is paused (with the pause's
    /// version) is returned.
    pub async fn worker_hello(&self, name: &str, info: &serde_json::Value) -> StoreResult<(WorkerId, bool, i64)> {
        Ok(sqlx::query_as(
            r#"insert into workers (name, info, last_seen_at) values ($1, $2, now())
               on conflict (name) do update set info = excluded.info, graceful = false, last_seen_at = now()
               returning id, paused, pause_version"#,
        )
        .bind(name)
        .bind(info)
        .fetch_one(&self.pool)
        .await?)
    }

    /// What each worker said about itself at its last hello, by name.
    pub async fn worker_infos(&self) -> StoreResult<HashMap<String, BTreeMap<String, String>>> {
        let rows: Vec<(String, sqlx::types::Json<BTreeMap<String, String>>)> =
            sqlx::query_as("select name, info from workers where jsonb_typeof(info) = 'object'")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(name, info)| (name, info.0)).collect())
    }

    /// A worker's id by name.
    pub async fn worker_id_by_name(&self, name: &str) -> StoreResult<Option<WorkerId>> {
        Ok(sqlx::query_scalar("select id from workers where name = $1").bind(name).fetch_optional(&self.reads).await?)
    }

    /// Pauses or unpauses a worker, returning its name and the change's
    /// version (workers apply only newer versions).
    pub async fn set_worker_paused(
        &self,
        worker_id: WorkerId,
        paused: bool,
        reason: Option<&str>,
    ) -> StoreResult<Option<(WorkerName, i64)>> {
        Ok(sqlx::query_as(
            r#"update workers set paused = $2, pause_reason = case when $2 then $3 end, pause_version = pause_version + 1
               where id = $1 returning name, pause_version"#,
        )
        .bind(worker_id)
        .bind(paused)
        .bind(reason)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A new pause version for a worker whose downtime window began or
    /// ended: its manual pause and the version to send with it.
    pub async fn bump_pause_version(&self, worker: &str) -> StoreResult<Option<(bool, i64)>> {
        Ok(sqlx::query_as(
            "update workers set pause_version = pause_version + 1 where name = $1 returning paused, pause_version",
        )
        .bind(worker)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Marks a worker as shutting down (until its next hello), returning its
    /// name.
    pub async fn set_worker_graceful(&self, worker_id: WorkerId) -> StoreResult<Option<WorkerName>> {
        Ok(sqlx::query_scalar("update workers set graceful = true where id = $1 returning name")
            .bind(worker_id)
            .fetch_optional(&self.pool)
            .await?)
    }
}
