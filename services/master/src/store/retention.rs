//! Retention: history older than the configured horizons is deleted in
//! small batches, each taking an advisory lock so one master prunes at a
//! time and no transaction is long. Log contents and artifacts go first
//! (their rows stay and say when); whole buildsets later, with everything
//! under them.

use sqlx::{Postgres, Transaction};

use super::{Store, StoreResult};

impl Store {
    /// One batch of log pruning: the archived contents of the logs of up to
    /// `batch` builds finished more than `older_than_seconds` ago are
    /// deleted, the logs marked. Returns (builds, chunks deleted), or `None`
    /// when another master is pruning (one at a time).
    pub async fn prune_logs(&self, older_than_seconds: u64, batch: i64) -> StoreResult<Option<(u64, u64)>> {
        let mut tx = self.pool.begin().await?;
        if !Self::retention_lock(&mut tx).await? {
            return Ok(None);
        }
        let builds: Vec<i64> = sqlx::query_scalar(
            r#"with picked as (
                   select id from builds
                   where not logs_pruned and complete_at < now() - make_interval(secs => $1)
                   order by complete_at limit $2
                   for update skip locked
               )
               update builds b set logs_pruned = true from picked where b.id = picked.id returning b.id"#,
        )
        .bind(older_than_seconds as f64)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        let chunks = sqlx::query(
            r#"with doomed as (
                   update logs l set deleted_at = now()
                   from steps s where s.build_id = any($1) and l.step_id = s.id and l.deleted_at is null
                   returning l.id
               )
               delete from log_chunks where log_id in (select id from doomed)"#,
        )
        .bind(&builds)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Artifacts go with the logs: both are what a build left, kept
        // for as long.
        sqlx::query(
            r#"with doomed as (
                   update artifacts set deleted_at = now()
                   where build_id = any($1) and deleted_at is null
                   returning id
               )
               delete from artifact_chunks where artifact_id in (select id from doomed)"#,
        )
        .bind(&builds)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some((builds.len() as u64, chunks)))
    }

    /// One batch of build pruning: up to `batch` complete buildsets
    /// finished more than `older_than_seconds` ago are deleted, with their
    /// requests, builds, steps, logs and events. Returns how many, or
    /// `None` when another master is pruning.
    pub async fn prune_builds(&self, older_than_seconds: u64, batch: i64) -> StoreResult<Option<u64>> {
        let mut tx = self.pool.begin().await?;
        if !Self::retention_lock(&mut tx).await? {
            return Ok(None);
        }
        let deleted = sqlx::query(
            r#"delete from buildsets where id in (
                   select id from buildsets
                   where complete and complete_at < now() - make_interval(secs => $1)
                   order by complete_at limit $2
                   for update skip locked
               )"#,
        )
        .bind(older_than_seconds as f64)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(Some(deleted))
    }

    /// Taken by each retention batch, for its transaction: one master
    /// prunes at a time.
    async fn retention_lock(tx: &mut Transaction<'static, Postgres>) -> StoreResult<bool> {
        const RETENTION_LOCK: i64 = 0x6275_696c_6472_6574; // "buildret"
        Ok(sqlx::query_scalar("select pg_try_advisory_xact_lock($1)").bind(RETENTION_LOCK).fetch_one(&mut **tx).await?)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use shared::model::Results;
    use shared::wire::{LogRecord, StepRecord, TestSummary};

    use crate::store::testing::TestDatabase;
    use crate::store::{ArchivedChunk, Store};

    /// A finished build with one step, one archived log, a test result
    /// set of two failed tests and an artifact of one chunk, finished
    /// `days_ago` days ago.
    async fn finished_build(db: &TestDatabase, builder: shared::ids::BuilderId, days_ago: i32) {
        db.queue(builder, 1).await;
        let build = db.claim_next(builder).await.unwrap();
        let step = StepRecord {
            number: 0,
            name: "s".into(),
            started_at: Some(Utc::now()),
            finished_at: Some(Utc::now()),
            results: Some(Results::Success),
            state_string: "done".into(),
            logs: vec![LogRecord { slug: "stdio".into(), name: "stdio".into(), chunks: 1, bytes: 3 }],
            test_summary: None,
            files: Vec::new(),
            properties: Default::default(),
        };
        let mut tx = db.store.pool().begin().await.unwrap();
        let (step_id, logs) = Store::upsert_step(&mut tx, build.id, &step).await.unwrap();
        let summary = TestSummary { failed: vec!["test_os".into(), "test_ssl".into()], passed: Some(3) };
        Store::record_test_summary(&mut tx, build.id, step_id, &summary).await.unwrap();
        let chunk = ArchivedChunk { seq: 0, first_line: 0, num_lines: 1, raw_bytes: 3, content: b"abc".to_vec() };
        Store::insert_log_chunk(&mut tx, logs[0].id, &chunk).await.unwrap();
        let artifact = Store::create_artifact(&mut tx, build.id, step_id, "dist/a.whl", 3, "ab").await.unwrap();
        Store::insert_artifact_chunk(&mut tx, artifact, 0, 3, b"abc").await.unwrap();
        Store::finish_build(&mut tx, build.id, Results::Success, "done", Utc::now()).await.unwrap();
        sqlx::query("update builds set complete_at = now() - make_interval(days => $2) where id = $1")
            .bind(build.id)
            .bind(days_ago)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(
            "update buildsets set complete_at = now() - make_interval(days => $2) \
             where id = (select buildset_id from buildrequests where id = $1)",
        )
        .bind(build.buildrequest_id)
        .bind(days_ago)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    async fn count(db: &TestDatabase, table: &str) -> i64 {
        let query = format!("select count(*) from {table}");
        sqlx::query_scalar(sqlx::AssertSqlSafe(query)).fetch_one(db.store.pool()).await.unwrap()
    }

    #[tokio::test]
    async fn old_logs_go_first_and_old_builds_later_and_nothing_newer() {
        let db = TestDatabase::new().await;
        let builder = db.builder("kept").await;
        finished_build(&db, builder, 40).await;
        finished_build(&db, builder, 10).await;
        finished_build(&db, builder, 1).await;
        let day = 24 * 3600;

        assert_eq!(db.store.prune_logs(7 * day, 500).await.unwrap(), Some((2, 2)));
        assert_eq!(count(&db, "log_chunks").await, 1, "the newest build's log is kept");
        assert_eq!(count(&db, "logs where deleted_at is not null").await, 2, "pruned logs say so");
        assert_eq!(count(&db, "artifact_chunks").await, 1, "artifacts go with the logs");
        assert_eq!(count(&db, "artifacts where deleted_at is not null").await, 2, "and say so");
        assert_eq!(db.store.prune_logs(7 * day, 500).await.unwrap(), Some((0, 0)), "nothing twice");

        assert_eq!(db.store.prune_builds(30 * day, 500).await.unwrap(), Some(1));
        assert_eq!(count(&db, "builds").await, 2);
        assert_eq!(count(&db, "steps").await, 2, "the deleted build's steps went with it");
        assert_eq!(count(&db, "test_result_sets").await, 2, "and its test results");
        assert_eq!(count(&db, "test_results").await, 4);
        assert_eq!(count(&db, "artifacts").await, 2);
        assert_eq!(count(&db, "buildrequests").await, 2);
    }

    #[tokio::test]
    async fn one_master_prunes_at_a_time() {
        let db = TestDatabase::new().await;
        let mut other = db.store.pool().begin().await.unwrap();
        let held: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
            .bind(0x6275_696c_6472_6574_i64)
            .fetch_one(&mut *other)
            .await
            .unwrap();
        assert!(held);
        assert_eq!(db.store.prune_logs(0, 10).await.unwrap(), None, "another master holds the lock");
        assert_eq!(db.store.prune_builds(0, 10).await.unwrap(), None);
        other.commit().await.unwrap();
        assert_eq!(db.store.prune_logs(0, 10).await.unwrap(), Some((0, 0)));
    }
}
