//! The few reads that are not a resource of the API: the overview grid's
//! newest builds per builder (one index scan each), the queue's size, the
//! pending counts for the metrics, and what chat commands answer (what
//! runs, a builder's last build). On the read pool.

use std::collections::HashMap;

use shared::ids::{BuildId, BuilderId};
use sqlx::FromRow;

use super::{Store, StoreResult};

/// How far back the overview looks for builds of a branch.
pub const BRANCH_SCAN_BUILDS: i64 = 500;

/// One build in the overview grid.
#[derive(Debug, FromRow)]
pub struct GridCell {
    pub builder_id: BuilderId,
    pub id: BuildId,
    pub number: i32,
    pub results: Option<i16>,
    pub complete: bool,
}

impl Store {
    /// The newest `per_builder` builds of each builder, newest first, one
    /// index scan per builder (for the overview grid); with `branch`, only
    /// builds of that branch among each builder's newest
    /// `BRANCH_SCAN_BUILDS`, so a rare branch cannot make the page read
    /// every builder's whole history.
    pub async fn recent_builds(
        &self,
        builder_ids: &[BuilderId],
        per_builder: i64,
        branch: Option<&str>,
    ) -> StoreResult<Vec<GridCell>> {
        Ok(sqlx::query_as(
            r#"select b.builder_id, x.id, x.number, x.results, x.complete_at is not null as complete
               from unnest($1::int[]) as b(builder_id)
               cross join lateral (
                   select id, number, results, complete_at from (
                       select id, number, results, complete_at, properties from builds
                       where builder_id = b.builder_id
                       order by number desc
                       limit $4
                   ) newest
                   where $3::text is null or properties -> 'branch' ->> 0 = $3
                   order by number desc
                   limit $2
               ) x"#,
        )
        .bind(builder_ids)
        .bind(per_builder)
        .bind(branch)
        .bind(if branch.is_some() { BRANCH_SCAN_BUILDS } else { per_builder })
        .fetch_all(&self.reads)
        .await?)
    }

    /// Pending requests per builder, and how many workers run a build now.
    pub async fn queue_summary(&self) -> StoreResult<(HashMap<BuilderId, i64>, i64)> {
        let pending: Vec<(BuilderId, i64)> = sqlx::query_as(
            "select builder_id, count(*) from buildrequests where state = 'pending' group by builder_id",
        )
        .fetch_all(&self.reads)
        .await?;
        let busy: i64 = sqlx::query_scalar("select count(distinct worker_id) from builds where complete_at is null")
            .fetch_one(&self.reads)
            .await?;
        Ok((pending.into_iter().collect(), busy))
    }

    /// Pending requests per builder name, for the metrics.
    pub async fn pending_by_builder(&self) -> StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            r#"select b.name, count(*) from buildrequests r join builders b on b.id = r.builder_id
               where r.state = 'pending' group by b.name"#,
        )
        .fetch_all(&self.reads)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::store::testing::TestDatabase;

    #[tokio::test]
    async fn the_grid_shows_each_builders_newest_builds_of_a_branch() {
        let db = TestDatabase::new().await;
        let (one, two) = (db.builder("one").await, db.builder("two").await);
        for (builder, branch) in [(one, "main"), (one, "3.14"), (one, "main"), (two, "main")] {
            db.buildset(builder, 1, 0, json!({ "branch": [branch, "Force"] })).await;
            db.claim_next(builder).await.unwrap();
        }
        let cells = db.store.recent_builds(&[one, two], 2, None).await.unwrap();
        let shown: Vec<_> = cells.iter().map(|cell| (cell.builder_id, cell.number)).collect();
        assert_eq!(shown, [(one, 3), (one, 2), (two, 1)]);
        let main = db.store.recent_builds(&[one, two], 2, Some("main")).await.unwrap();
        let shown: Vec<_> = main.iter().map(|cell| (cell.builder_id, cell.number)).collect();
        assert_eq!(shown, [(one, 3), (one, 1), (two, 1)]);
        let (pending, busy) = db.store.queue_summary().await.unwrap();
        assert!(pending.is_empty());
        assert_eq!(busy, 4, "each build on a worker of its own");
    }
}

/// A build running now, for a chat's `status`.
#[derive(Debug, FromRow)]
pub struct RunningBuild {
    pub builder_id: BuilderId,
    pub number: i32,
    pub state_string: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

/// A builder's newest finished build, for a chat's `last`.
#[derive(Debug, FromRow)]
pub struct LastBuild {
    pub number: i32,
    pub results: Option<i16>,
    pub state_string: String,
    pub complete_at: chrono::DateTime<chrono::Utc>,
}

impl Store {
    /// The oldest `limit` builds running now, and how many run in all.
    pub async fn running_builds(&self, limit: i64) -> StoreResult<(Vec<RunningBuild>, i64)> {
        let running = sqlx::query_as(
            r#"select builder_id, number, state_string, started_at from builds
               where complete_at is null order by started_at limit $1"#,
        )
        .bind(limit)
        .fetch_all(&self.reads)
        .await?;
        let count =
            sqlx::query_scalar("select count(*) from builds where complete_at is null").fetch_one(&self.reads).await?;
        Ok((running, count))
    }

    pub async fn last_finished_build(&self, builder_id: BuilderId) -> StoreResult<Option<LastBuild>> {
        Ok(sqlx::query_as(
            r#"select number, results, state_string, complete_at from builds
               where builder_id = $1 and complete_at is not null
               order by number desc limit 1"#,
        )
        .bind(builder_id)
        .fetch_optional(&self.reads)
        .await?)
    }
}
