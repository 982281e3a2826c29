//! One build, as the control actions need it: who runs it (to stop it),
//! what it was asked with (to rebuild it), and when its request was
//! accepted (for the dispatch metric), and who owns it.

use chrono::{DateTime, Utc};
use shared::ids::{BuildId, BuildRequestId, BuilderId, WorkerName};
use sqlx::FromRow;

use super::{Store, StoreResult};

#[derive(Debug, FromRow, Clone)]
pub struct BuildRow {
    pub id: BuildId,
    pub builder_id: BuilderId,
    pub number: i32,
    pub buildrequest_id: BuildRequestId,
    pub worker_name: WorkerName,
    pub started_at: DateTime<Utc>,
    pub complete_at: Option<DateTime<Utc>>,
    pub results: Option<i16>,
}

/// What a rebuild of a build needs.
#[derive(Debug, FromRow)]
pub struct RebuildSource {
    pub builder_id: BuilderId,
    pub reason: String,
    pub owner: Option<String>,
    pub scheduler: String,
    pub properties: serde_json::Value,
    pub priority: i32,
    pub number: i32,
}

impl Store {
    pub async fn build(&self, id: BuildId) -> StoreResult<Option<BuildRow>> {
        Ok(sqlx::query_as(
            r#"select b.id, b.builder_id, b.number, b.buildrequest_id, w.name as worker_name,
                      b.started_at, b.complete_at, b.results
               from builds b join workers w on w.id = b.worker_id
               where b.id = $1"#,
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A build's builder and when its request was accepted.
    pub async fn build_origin(&self, build_id: BuildId) -> StoreResult<Option<(BuilderId, DateTime<Utc>)>> {
        Ok(sqlx::query_as(
            r#"select b.builder_id, r.submitted_at
               from builds b join buildrequests r on r.id = b.buildrequest_id
               where b.id = $1"#,
        )
        .bind(build_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// What a rebuild of a build needs: its builder and its buildset's
    /// reason, owner, properties and the request's priority.
    pub async fn rebuild_source(&self, build_id: BuildId) -> StoreResult<Option<RebuildSource>> {
        Ok(sqlx::query_as(
            r#"select b.builder_id, s.reason, s.owner, s.scheduler, s.properties, r.priority, b.number
               from builds b join buildrequests r on r.id = b.buildrequest_id join buildsets s on s.id = r.buildset_id
               where b.id = $1"#,
        )
        .bind(build_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Who may act as the owner of a build (`authorization`'s `owner`).
    pub async fn build_owned_by(&self, id: BuildId) -> StoreResult<Option<String>> {
        let owned_by: Option<(Option<String>,)> = sqlx::query_as(
            r#"select s.owned_by
               from builds b join buildrequests r on r.id = b.buildrequest_id join buildsets s on s.id = r.buildset_id
               where b.id = $1"#,
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(owned_by.and_then(|(owned_by,)| owned_by))
    }

    /// Who may act as the owner of a build request.
    pub async fn request_owned_by(&self, id: BuildRequestId) -> StoreResult<Option<String>> {
        let owned_by: Option<(Option<String>,)> = sqlx::query_as(
            "select s.owned_by from buildrequests r join buildsets s on s.id = r.buildset_id where r.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(owned_by.and_then(|(owned_by,)| owned_by))
    }
}
