//! Recording what workers report. Each event is applied in one transaction
//! with its entry in the `build_events` ledger (build id, sequence number),
//! so an event delivered twice changes nothing; events are snapshots, and
//! each write only moves a step or a build forward, so their order does not
//! matter either.

use chrono::{DateTime, Utc};
use shared::ids::{BuildId, BuildRequestId, BuilderId, BuildsetId, LogId, StepId, WorkerName};
use shared::model::Results;
use shared::wire::StepRecord;
use sqlx::{FromRow, Postgres, Transaction};

use super::logs::{ArchivedChunk, LogRow};
use super::{Store, StoreError, StoreResult};

/// The outcome of recording one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    Applied,
    Duplicate,
}

/// Why an event cannot be recorded, ever.
#[derive(Debug, thiserror::Error)]
pub enum EventRejected {
    #[error("build {0} does not exist")]
    UnknownBuild(BuildId),
    #[error("build {build_id} runs on worker `{owner}`, not on `{sender}`")]
    WrongWorker { build_id: BuildId, owner: WorkerName, sender: WorkerName },
    /// Its worker was away longer than the lease; the masters ended the
    /// build and retried its request. What the worker says later about it
    /// changes nothing.
    #[error("build {0} lost its lease (its worker was away too long) and was retried")]
    LeaseLost(BuildId),
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Rejected(#[from] EventRejected),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for RecordError {
    fn from(error: sqlx::Error) -> Self {
        RecordError::Store(StoreError::Database(error))
    }
}

/// What ended with a build: its builder, request and buildset.
#[derive(Debug, Clone, Copy, FromRow)]
pub struct FinishedBuild {
    pub builder_id: BuilderId,
    pub buildrequest_id: BuildRequestId,
    pub buildset_id: BuildsetId,
}

impl Store {
    /// Starts recording one event: checks that the build exists and belongs
    /// to the sender, and enters the event in the ledger. Returns the
    /// transaction and the build's builder; `None` means the event was
    /// recorded before and must change nothing.
    pub async fn begin_event(
        &self,
        build_id: BuildId,
        seq: i64,
        sender: &WorkerName,
    ) -> Result<Option<(Transaction<'static, Postgres>, BuilderId)>, RecordError> {
        let mut tx = self.pool.begin().await?;
        // The owner check and the ledger entry in one round trip: every
        // event of every build passes here.
        let owner: Option<(WorkerName, bool, bool, BuilderId)> = sqlx::query_as(
            r#"with owner as (
                   select w.name, b.lease_lost_at is not null as lost, b.builder_id
                   from builds b join workers w on w.id = b.worker_id where b.id = $1
               ), entered as (
                   insert into build_events (build_id, seq)
                   select $1, $2 from owner where owner.name = $3 and not owner.lost
                   on conflict do nothing
                   returning 1
               )
               select owner.name, owner.lost, exists (select 1 from entered), owner.builder_id from owner"#,
        )
        .bind(build_id)
        .bind(seq)
        .bind(sender)
        .fetch_optional(&mut *tx)
        .await?;
        let (inserted, builder_id) = match owner {
            None => return Err(EventRejected::UnknownBuild(build_id).into()),
            Some((owner, _, _, _)) if owner != *sender => {
                return Err(EventRejected::WrongWorker { build_id, owner, sender: sender.clone() }.into());
            }
            Some((_, true, _, _)) => return Err(EventRejected::LeaseLost(build_id).into()),
            Some((_, false, inserted, builder_id)) => (inserted, builder_id),
        };
        Ok(inserted.then_some((tx, builder_id)))
    }

    /// Adds properties a step set to its build's, source
    /// `SetPropertyFromCommand` as in Buildbot.
    pub async fn set_build_properties(
        tx: &mut Transaction<'_, Postgres>,
        build_id: BuildId,
        properties: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        if properties.is_empty() {
            return Ok(());
        }
        let added: serde_json::Map<String, serde_json::Value> = properties
            .iter()
            .map(|(name, value)| (name.clone(), serde_json::json!([value, "SetPropertyFromCommand"])))
            .collect();
        sqlx::query("update builds set properties = properties || $2 where id = $1")
            .bind(build_id)
            .bind(serde_json::Value::Object(added))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Creates or completes a step from what its worker reported, never
    /// moving it backwards (a late "started" after "finished" changes
    /// nothing). Returns the step's id and its logs' ids and completeness.
    pub async fn upsert_step(
        tx: &mut Transaction<'static, Postgres>,
        build_id: BuildId,
        step: &StepRecord,
    ) -> StoreResult<(StepId, Vec<LogRow>)> {
        let step_id: StepId = sqlx::query_scalar(
            r#"insert into steps (build_id, number, name, started_at, complete_at, results, state_string)
               values ($1, $2, $3, $4, $5, $6, $7)
               on conflict (build_id, number) do update set
                   started_at = coalesce(steps.started_at, excluded.started_at),
                   complete_at = coalesce(steps.complete_at, excluded.complete_at),
                   results = coalesce(steps.results, excluded.results),
                   state_string = case when steps.complete_at is null
                                       then excluded.state_string else steps.state_string end
               returning id"#,
        )
        .bind(build_id)
        .bind(step.number)
        .bind(&step.name)
        .bind(step.started_at)
        .bind(step.finished_at)
        .bind(step.results.map(Results::code))
        .bind(&step.state_string)
        .fetch_one(&mut **tx)
        .await?;
        let mut logs = Vec::with_capacity(step.logs.len());
        for log in &step.logs {
            let row: LogRow = sqlx::query_as(
                r#"insert into logs (step_id, name, slug) values ($1, $2, $3)
                   on conflict (step_id, slug) do update set name = excluded.name
                   returning id, step_id, name, slug, type, num_lines, num_bytes, complete, deleted_at"#,
            )
            .bind(step_id)
            .bind(&log.name)
            .bind(&log.slug)
            .fetch_one(&mut **tx)
            .await?;
            logs.push(row);
        }
        Ok((step_id, logs))
    }

    /// Records what a step's test runner summary said: a test result set
    /// with a `fail` row per failed test.
    pub async fn record_test_summary(
        tx: &mut Transaction<'static, Postgres>,
        build_id: BuildId,
        step_id: StepId,
        summary: &shared::wire::TestSummary,
    ) -> StoreResult<()> {
        let set_id: i64 = sqlx::query_scalar(
            r#"insert into test_result_sets
                   (builder_id, build_id, step_id, description, category, value_unit, tests_passed, tests_failed)
               select builder_id, id, $2, 'test runner summary', 'pass_fail', 'boolean', $3, $4
               from builds where id = $1
               returning id"#,
        )
        .bind(build_id)
        .bind(step_id)
        .bind(summary.passed.map(|passed| passed.min(i32::MAX as u64) as i32))
        .bind(summary.failed.len() as i32)
        .fetch_one(&mut **tx)
        .await?;
        sqlx::query(
            r#"insert into test_results (builder_id, test_result_set_id, test_name, value)
               select s.builder_id, s.id, name, 'fail'
               from test_result_sets s, unnest($2::text[]) with ordinality as failed(name, position)
               where s.id = $1
               order by position"#,
        )
        .bind(set_id)
        .bind(&summary.failed)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn insert_log_chunk(
        tx: &mut Transaction<'static, Postgres>,
        log_id: LogId,
        chunk: &ArchivedChunk,
    ) -> StoreResult<()> {
        sqlx::query(
            r#"insert into log_chunks (log_id, seq, first_line, num_lines, raw_bytes, content)
               values ($1, $2, $3, $4, $5, $6) on conflict do nothing"#,
        )
        .bind(log_id)
        .bind(chunk.seq)
        .bind(chunk.first_line)
        .bind(chunk.num_lines)
        .bind(chunk.raw_bytes)
        .bind(&chunk.content)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn complete_log(
        tx: &mut Transaction<'static, Postgres>,
        log_id: LogId,
        num_lines: i64,
        num_bytes: i64,
    ) -> StoreResult<()> {
        sqlx::query("update logs set complete = true, num_lines = $2, num_bytes = $3 where id = $1")
            .bind(log_id)
            .bind(num_lines)
            .bind(num_bytes)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn set_build_state(
        tx: &mut Transaction<'static, Postgres>,
        build_id: BuildId,
        state_string: &str,
    ) -> StoreResult<()> {
        sqlx::query("update builds set state_string = $2 where id = $1 and complete_at is null")
            .bind(build_id)
            .bind(state_string)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Ends a build and its request, and its buildset once every request of
    /// it is complete. A build already ended (say, as RETRY after its lease
    /// expired) stays as it was: `None`.
    pub async fn finish_build(
        tx: &mut Transaction<'static, Postgres>,
        build_id: BuildId,
        results: Results,
        state_string: &str,
        finished_at: DateTime<Utc>,
    ) -> StoreResult<Option<FinishedBuild>> {
        let finished: Option<FinishedBuild> = sqlx::query_as(
            r#"update builds set complete_at = $2, results = $3, state_string = $4
               where id = $1 and complete_at is null
               returning builder_id, buildrequest_id,
                         (select buildset_id from buildrequests where id = buildrequest_id)"#,
        )
        .bind(build_id)
        .bind(finished_at)
        .bind(results.code())
        .bind(state_string)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(finished) = finished else {
            return Ok(None);
        };
        sqlx::query(
            r#"update buildrequests set state = 'complete', complete_at = $2, results = $3
               where id = $1 and state = 'claimed'"#,
        )
        .bind(finished.buildrequest_id)
        .bind(finished_at)
        .bind(results.code())
        .execute(&mut **tx)
        .await?;
        Self::complete_buildset_if_done(tx, finished.buildset_id).await?;
        Ok(Some(finished))
    }
}

#[cfg(test)]
mod tests {
    use shared::ids::WorkerName;
    use shared::model::Results;
    use shared::wire::StepRecord;

    use super::*;
    use crate::store::claims::ClaimedBuild;
    use crate::store::testing::TestDatabase;

    fn step(number: i32, name: &str, results: Option<Results>) -> StepRecord {
        StepRecord {
            number,
            name: name.into(),
            started_at: Some(Utc::now()),
            finished_at: results.map(|_| Utc::now()),
            results,
            state_string: if results.is_some() { "done".into() } else { "running".into() },
            logs: Vec::new(),
            test_summary: None,
            files: Vec::new(),
            properties: Default::default(),
        }
    }

    /// One running build of a builder with `requests` requests in one
    /// buildset, on worker w1.
    async fn running_build(db: &TestDatabase, requests: usize) -> ClaimedBuild {
        let builder = db.builder("ledger").await;
        db.queue(builder, requests).await;
        db.claim_next(builder).await.unwrap()
    }

    #[tokio::test]
    async fn an_event_recorded_twice_changes_nothing_and_a_late_start_does_not_undo_a_finish() {
        let db = TestDatabase::new().await;
        let build = running_build(&db, 1).await;
        let w1 = WorkerName::new("w1");

        // seq 2 (finished) arrives before seq 1 (started), then seq 2 again.
        let (mut tx, _) = db.store.begin_event(build.id, 2, &w1).await.unwrap().expect("first delivery of seq 2");
        Store::upsert_step(&mut tx, build.id, &step(0, "compile", Some(Results::Failure))).await.unwrap();
        tx.commit().await.unwrap();
        let (mut tx, _) = db.store.begin_event(build.id, 1, &w1).await.unwrap().expect("first delivery of seq 1");
        Store::upsert_step(&mut tx, build.id, &step(0, "compile", None)).await.unwrap();
        tx.commit().await.unwrap();
        assert!(db.store.begin_event(build.id, 2, &w1).await.unwrap().is_none(), "seq 2 is recognised as recorded");

        let steps: Vec<(Option<i16>, String, bool)> =
            sqlx::query_as("select results, state_string, complete_at is not null from steps where build_id = $1")
                .bind(build.id)
                .fetch_all(db.store.pool())
                .await
                .unwrap();
        assert_eq!(
            steps,
            [(Some(Results::Failure.code()), "done".to_owned(), true)],
            "the late start reopened nothing"
        );

        // Another worker cannot report for this build.
        let refused = db.store.begin_event(build.id, 3, &WorkerName::new("w2")).await.unwrap_err();
        assert!(matches!(refused, RecordError::Rejected(_)), "{refused}");
        assert!(refused.to_string().contains("runs on worker `w1`, not on `w2`"), "{refused}");
    }

    #[tokio::test]
    async fn finishing_a_build_ends_its_request_and_its_buildset_with_the_last_one() {
        let db = TestDatabase::new().await;
        let build = running_build(&db, 2).await;
        let mut tx = db.store.pool().begin().await.unwrap();
        let finished = Store::finish_build(&mut tx, build.id, Results::Warnings, "warned", Utc::now()).await.unwrap();
        tx.commit().await.unwrap();
        let finished = finished.expect("the build was running");
        let (state, results): (String, Option<i16>) =
            sqlx::query_as("select state, results from buildrequests where id = $1")
                .bind(finished.buildrequest_id)
                .fetch_one(db.store.pool())
                .await
                .unwrap();
        assert_eq!((state.as_str(), results), ("complete", Some(Results::Warnings.code())));
        let complete: bool = sqlx::query_scalar("select complete from buildsets where id = $1")
            .bind(finished.buildset_id)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
        assert!(!complete, "the buildset's other request is still pending");

        // A second end (a late duplicate under another sequence number)
        // changes nothing.
        let mut tx = db.store.pool().begin().await.unwrap();
        let again = Store::finish_build(&mut tx, build.id, Results::Failure, "late", Utc::now()).await.unwrap();
        tx.commit().await.unwrap();
        assert!(again.is_none());
        let results: Option<i16> = sqlx::query_scalar("select results from builds where id = $1")
            .bind(build.id)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
        assert_eq!(results, Some(Results::Warnings.code()));
    }
}
