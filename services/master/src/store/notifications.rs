//! The reporters' outbox. What a reporter must tell is inserted in the
//! transaction of the event that causes it, so it cannot be lost once that
//! event is recorded. Delivering takes one due row at a time under a lease,
//! so whichever master takes it, one master at a time sends it, and a row
//! whose master died is taken again when its lease ends.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::ids::{BuildId, BuilderId, LogId, WorkerId};
use sqlx::{FromRow, Postgres, Transaction};

use super::{Store, StoreResult};

/// The pseudo-reporter of mails to a worker's admins (settings.yaml's
/// `notify_on_missing`).
pub const WORKER_ADMINS: &str = "notify_on_missing";

/// The pseudo-reporter of the pull-request loop's actions on GitHub
/// (taking a trigger label off, answering `!buildbot`).
pub const PULL_REQUEST_LOOP: &str = "pull_request_loop";

/// Why a build is told: it started (its first step runs) or it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportEvent {
    Started,
    Finished,
}

impl ReportEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportEvent::Started => "started",
            ReportEvent::Finished => "finished",
        }
    }
}

/// Which comment a `github_comment` reporter keeps: one per pull request
/// and builder, so builders failing at once do not overwrite each other.
#[derive(Debug, Clone, Copy)]
pub struct KeptComment<'a> {
    pub reporter: &'a str,
    /// `owner/name`.
    pub repository: &'a str,
    pub pull_request: i64,
    pub builder: &'a str,
}

/// Whose notifications a taker delivers: the IRC connection's holder
/// takes its reporters' alone, every other deliverer the rest.
#[derive(Debug, Clone, Copy)]
pub enum Takes<'a> {
    AllBut(&'a [String]),
    Only(&'a [String]),
}

/// One row taken for delivery, leased to this master.
#[derive(Debug, Clone, FromRow)]
pub struct Notification {
    pub id: i64,
    pub reporter: String,
    /// A build's notification, or a worker's, or else an action on a
    /// pull request (`payload`).
    pub build_id: Option<BuildId>,
    pub worker_id: Option<WorkerId>,
    pub payload: Option<Value>,
    pub event: String,
    /// Including this one.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    /// A `started` row whose build has a `finished` row for the same
    /// reporter: telling it now would undo the end.
    pub superseded: bool,
}

/// What a build's reports are made of.
#[derive(Debug, Clone, FromRow)]
pub struct ReportFacts {
    pub builder_id: BuilderId,
    pub number: i32,
    pub results: Option<i16>,
    pub state_string: String,
    pub properties: Value,
    pub owner: Option<String>,
    /// The first step that failed or broke.
    pub failed_step: Option<String>,
    /// The result of the builder's last build before this one that was not
    /// retried.
    pub previous_results: Option<i16>,
}

/// A notification as the API and the build page show it.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct NotificationRow {
    pub reporter: String,
    pub event: String,
    pub state: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub done_at: Option<DateTime<Utc>>,
    pub due_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub detail: Option<String>,
}

impl Store {
    /// Enters what `reporters` must tell of a build, in the transaction of
    /// the event that causes it. Entering it twice changes nothing.
    pub async fn add_notifications(
        tx: &mut Transaction<'static, Postgres>,
        build_id: BuildId,
        event: ReportEvent,
        reporters: &[String],
    ) -> StoreResult<()> {
        if reporters.is_empty() {
            return Ok(());
        }
        sqlx::query(
            r#"insert into notifications (build_id, event, reporter)
               select $1, $2, unnest($3::text[])
               on conflict do nothing"#,
        )
        .bind(build_id)
        .bind(event.as_str())
        .bind(reporters)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Takes the next due notification for `lease`. A build's end waits
    /// while its start is still to be told by the same reporter, so a
    /// commit status never goes back to pending.
    pub async fn take_notification(&self, lease: Duration, takes: Takes<'_>) -> StoreResult<Option<Notification>> {
        let taken = sqlx::query_as(
            r#"with next as (
                   select n.id from notifications n
                   where n.state = 'pending' and n.due_at <= now()
                     and (n.leased_until is null or n.leased_until < now())
                     and (n.reporter = any($2)) = $3
                     and not (n.event = 'finished' and exists (
                         select 1 from notifications s
                         where s.build_id = n.build_id and s.reporter = n.reporter
                           and s.event = 'started' and s.state = 'pending'))
                   order by n.due_at, n.id
                   limit 1
                   for update skip locked
               )
               update notifications n
               set leased_until = now() + make_interval(secs => $1), attempts = n.attempts + 1
               from next where n.id = next.id
               returning n.id, n.reporter, n.build_id, n.worker_id, n.payload, n.event, n.attempts, n.created_at,
                         n.event = 'started' and exists (
                             select 1 from notifications f
                             where f.build_id = n.build_id and f.reporter = n.reporter
                               and f.event = 'finished') as superseded"#,
        )
        .bind(lease.as_secs_f64())
        .bind(match takes {
            Takes::AllBut(reporters) | Takes::Only(reporters) => reporters,
        })
        .bind(matches!(takes, Takes::Only(_)))
        .fetch_optional(&self.pool)
        .await?;
        Ok(taken)
    }

    /// Enters, once whichever master looks, a mail to the admins of each
    /// watched worker (name, seconds) gone longer than its time, and of each
    /// told-missing worker seen again. Returns how many were entered.
    pub async fn note_missing_workers(&self, watched: &[(String, f64)]) -> StoreResult<u64> {
        let (names, seconds): (Vec<&str>, Vec<f64>) = watched.iter().map(|(name, s)| (name.as_str(), *s)).unzip();
        let entered = sqlx::query(
            r#"with watched (name, seconds) as (select * from unnest($1::text[], $2::float8[])),
               missing as (
                   update workers w set missing_told_at = now()
                   from watched
                   where w.name = watched.name and w.missing_told_at is null
                     and w.last_seen_at < now() - make_interval(secs => watched.seconds)
                   returning w.id
               ),
               back as (
                   update workers w set missing_told_at = null
                   where w.missing_told_at is not null and w.last_seen_at > w.missing_told_at
                   returning w.id
               )
               insert into notifications (worker_id, reporter, event)
               select id, $3, 'worker_missing' from missing
               union all
               select id, $3, 'worker_back' from back"#,
        )
        .bind(&names)
        .bind(&seconds)
        .bind(WORKER_ADMINS)
        .execute(&self.pool)
        .await?;
        Ok(entered.rows_affected())
    }

    /// A worker's name and when it was last seen.
    pub async fn worker_seen(&self, worker_id: WorkerId) -> StoreResult<Option<(String, Option<DateTime<Utc>>)>> {
        let seen = sqlx::query_as("select name, last_seen_at from workers where id = $1")
            .bind(worker_id)
            .fetch_optional(&self.reads)
            .await?;
        Ok(seen)
    }

    pub async fn report_facts(&self, build_id: BuildId) -> StoreResult<Option<ReportFacts>> {
        let facts = sqlx::query_as(
            r#"select b.builder_id, b.number, b.results, b.state_string, b.properties, bs.owner,
                      (select s.name from steps s where s.build_id = b.id and s.results in (2, 4)
                       order by s.number limit 1) as failed_step,
                      (select p.results from builds p
                       where p.builder_id = b.builder_id and p.number < b.number
                         and p.complete_at is not null and p.results <> 5
                       order by p.number desc limit 1) as previous_results
               from builds b
               join buildrequests r on r.id = b.buildrequest_id
               join buildsets bs on bs.id = r.buildset_id
               where b.id = $1"#,
        )
        .bind(build_id)
        .fetch_optional(&self.reads)
        .await?;
        Ok(facts)
    }

    /// The first failed step's stdio log, with its line count and whether
    /// it is archived whole, if it has one.
    pub async fn failed_step_log(&self, build_id: BuildId) -> StoreResult<Option<(LogId, i64, bool)>> {
        Ok(sqlx::query_as(
            r#"select l.id, l.num_lines, l.complete from steps s join logs l on l.step_id = s.id
               where s.build_id = $1 and s.results in (2, 4) and l.deleted_at is null
               order by s.number, l.slug <> 'stdio', l.id
               limit 1"#,
        )
        .bind(build_id)
        .fetch_optional(&self.reads)
        .await?)
    }

    /// The names of the tests that failed in a build, as its steps read
    /// them, in their order; at most `limit`.
    pub async fn failed_tests(&self, build_id: BuildId, limit: i64) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            r#"select r.test_name from test_result_sets s join test_results r on r.test_result_set_id = s.id
               where s.build_id = $1 and r.value in ('fail', 'error') and r.test_name is not null
               order by s.id, r.id
               limit $2"#,
        )
        .bind(build_id)
        .bind(limit)
        .fetch_all(&self.reads)
        .await?)
    }

    /// The comment a reporter keeps on a pull request for a builder, if it
    /// recorded one.
    pub async fn pull_request_comment(&self, kept: &KeptComment<'_>) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(
            r#"select comment_id from pull_request_comments
               where reporter = $1 and repository = $2 and pull_request = $3 and builder = $4"#,
        )
        .bind(kept.reporter)
        .bind(kept.repository)
        .bind(kept.pull_request as i32)
        .bind(kept.builder)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records the comment a reporter keeps on a pull request for a
    /// builder; `None` forgets it (it was deleted on GitHub).
    pub async fn keep_pull_request_comment(&self, kept: &KeptComment<'_>, comment_id: Option<i64>) -> StoreResult<()> {
        let query = match comment_id {
            Some(_) => {
                r#"insert into pull_request_comments (reporter, repository, pull_request, builder, comment_id)
                   values ($1, $2, $3, $4, $5)
                   on conflict (reporter, repository, pull_request, builder)
                   do update set comment_id = excluded.comment_id, updated_at = now()"#
            }
            None => {
                r#"delete from pull_request_comments
                   where reporter = $1 and repository = $2 and pull_request = $3 and builder = $4"#
            }
        };
        let mut query = sqlx::query(query)
            .bind(kept.reporter)
            .bind(kept.repository)
            .bind(kept.pull_request as i32)
            .bind(kept.builder);
        if let Some(id) = comment_id {
            query = query.bind(id);
        }
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// Enters the pull-request loop's actions (event, payload) asked for
    /// by webhook delivery `delivery`, once however often it is delivered.
    pub async fn enter_actions(&self, delivery: &str, actions: &[(&str, Value)]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        Self::add_actions(&mut tx, delivery, actions).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn add_actions(
        tx: &mut Transaction<'_, Postgres>,
        delivery: &str,
        actions: &[(&str, Value)],
    ) -> StoreResult<()> {
        for (event, payload) in actions {
            sqlx::query(
                r#"insert into notifications (reporter, event, payload, delivery) values ($1, $2, $3, $4)
                   on conflict (delivery, event) where delivery is not null do nothing"#,
            )
            .bind(PULL_REQUEST_LOOP)
            .bind(event)
            .bind(payload)
            .bind(delivery)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Delivered; `detail` says what, in the target's words.
    pub async fn notification_sent(&self, id: i64, detail: &str) -> StoreResult<()> {
        self.finish_notification(id, "sent", Some(detail), None).await
    }

    /// Nothing to tell, and why.
    pub async fn notification_skipped(&self, id: i64, why: &str) -> StoreResult<()> {
        self.finish_notification(id, "skipped", Some(why), None).await
    }

    /// Given up on, and why.
    pub async fn notification_failed(&self, id: i64, error: &str) -> StoreResult<()> {
        self.finish_notification(id, "failed", None, Some(error)).await
    }

    async fn finish_notification(
        &self,
        id: i64,
        state: &str,
        detail: Option<&str>,
        error: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query(
            r#"update notifications
               set state = $2, done_at = now(), leased_until = null, detail = $3,
                   last_error = coalesce($4, last_error)
               where id = $1 and state = 'pending'"#,
        )
        .bind(id)
        .bind(state)
        .bind(detail)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Not delivered this time: try again after `after`.
    pub async fn notification_retry(&self, id: i64, after: Duration, error: &str) -> StoreResult<()> {
        sqlx::query(
            r#"update notifications
               set due_at = now() + make_interval(secs => $2), leased_until = null, last_error = $3
               where id = $1 and state = 'pending'"#,
        )
        .bind(id)
        .bind(after.as_secs_f64())
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What was told of a build, pending or given up, oldest first.
    pub async fn notifications_of_build(&self, build_id: BuildId) -> StoreResult<Vec<NotificationRow>> {
        let rows = sqlx::query_as(
            r#"select reporter, event, state, attempts, created_at, done_at, due_at, last_error, detail
               from notifications where build_id = $1 order by id"#,
        )
        .bind(build_id)
        .fetch_all(&self.reads)
        .await?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::TestDatabase;

    async fn build(db: &TestDatabase) -> BuildId {
        let builder = db.builder("told").await;
        db.queue(builder, 1).await;
        db.claim_next(builder).await.unwrap().id
    }

    async fn add(db: &TestDatabase, build: BuildId, event: ReportEvent, reporters: &[&str]) {
        let reporters: Vec<String> = reporters.iter().map(|name| name.to_string()).collect();
        let mut tx = db.store.pool().begin().await.unwrap();
        Store::add_notifications(&mut tx, build, event, &reporters).await.unwrap();
        tx.commit().await.unwrap();
    }

    const LEASE: Duration = Duration::from_secs(30);
    const ANY: Takes<'static> = Takes::AllBut(&[]);

    #[tokio::test]
    async fn the_irc_holder_takes_its_reporters_notifications_and_other_deliverers_the_rest() {
        let db = TestDatabase::new().await;
        let build = build(&db).await;
        add(&db, build, ReportEvent::Finished, &["irc", "mail"]).await;
        let irc = ["irc".to_owned()];
        let taken = db.store.take_notification(LEASE, Takes::AllBut(&irc)).await.unwrap().expect("mail is due");
        assert_eq!(taken.reporter, "mail");
        assert!(db.store.take_notification(LEASE, Takes::AllBut(&irc)).await.unwrap().is_none(), "irc is not theirs");
        let taken = db.store.take_notification(LEASE, Takes::Only(&irc)).await.unwrap().expect("irc is due");
        assert_eq!(taken.reporter, "irc");
    }

    #[tokio::test]
    async fn a_notification_is_leased_to_one_taker_and_taken_again_when_its_lease_ends() {
        let db = TestDatabase::new().await;
        let build = build(&db).await;
        add(&db, build, ReportEvent::Finished, &["mail"]).await;
        add(&db, build, ReportEvent::Finished, &["mail"]).await;

        let first = db.store.take_notification(LEASE, ANY).await.unwrap().expect("one is due");
        assert_eq!((first.reporter.as_str(), first.event.as_str(), first.attempts), ("mail", "finished", 1));
        assert!(db.store.take_notification(LEASE, ANY).await.unwrap().is_none(), "entered once, leased to one taker");

        // Its taker died: once the lease ends another takes it.
        sqlx::query("update notifications set leased_until = now() - interval '1 second'")
            .execute(db.store.pool())
            .await
            .unwrap();
        let again = db.store.take_notification(LEASE, ANY).await.unwrap().expect("taken again");
        assert_eq!((again.id, again.attempts), (first.id, 2));

        db.store.notification_retry(again.id, Duration::from_secs(60), "HTTP 502").await.unwrap();
        assert!(db.store.take_notification(LEASE, ANY).await.unwrap().is_none(), "not due for a minute");
        sqlx::query("update notifications set due_at = now()").execute(db.store.pool()).await.unwrap();
        let third = db.store.take_notification(LEASE, ANY).await.unwrap().expect("due again");
        db.store.notification_sent(third.id, "success").await.unwrap();
        assert!(db.store.take_notification(LEASE, ANY).await.unwrap().is_none());
        let rows = db.store.notifications_of_build(build).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].state.as_str(), rows[0].attempts), ("sent", 3));
        assert_eq!(rows[0].last_error.as_deref(), Some("HTTP 502"), "the last error stays visible");
    }

    #[tokio::test]
    async fn an_end_waits_for_its_start_and_a_start_told_after_the_end_is_superseded() {
        let db = TestDatabase::new().await;
        let build = build(&db).await;
        add(&db, build, ReportEvent::Started, &["status"]).await;
        add(&db, build, ReportEvent::Finished, &["status"]).await;

        let start = db.store.take_notification(LEASE, ANY).await.unwrap().expect("the start");
        assert_eq!(start.event, "started");
        assert!(start.superseded, "the end is already entered");
        assert!(db.store.take_notification(LEASE, ANY).await.unwrap().is_none(), "the end waits for its start");
        db.store.notification_skipped(start.id, "the build ended first").await.unwrap();
        let end = db.store.take_notification(LEASE, ANY).await.unwrap().expect("then the end");
        assert_eq!(end.event, "finished");
        assert!(!end.superseded);
    }

    #[tokio::test]
    async fn a_missing_worker_is_told_once_and_once_more_when_it_is_back() {
        let db = TestDatabase::new().await;
        db.worker("w1").await;
        db.worker("w2").await;
        let watched = [("w1".to_owned(), 60.0), ("w2".to_owned(), 60.0)];
        sqlx::query("update workers set last_seen_at = now() - interval '2 minutes' where name = 'w1'")
            .execute(db.store.pool())
            .await
            .unwrap();
        assert_eq!(db.store.note_missing_workers(&watched).await.unwrap(), 1, "w1 is missing, w2 is not");
        assert_eq!(db.store.note_missing_workers(&watched).await.unwrap(), 0, "told once, whoever looks again");
        sqlx::query("update workers set last_seen_at = now() where name = 'w1'")
            .execute(db.store.pool())
            .await
            .unwrap();
        assert_eq!(db.store.note_missing_workers(&watched).await.unwrap(), 1, "w1 is back");
        assert_eq!(db.store.note_missing_workers(&watched).await.unwrap(), 0);
        let events: Vec<String> =
            sqlx::query_scalar("select event from notifications order by id").fetch_all(db.store.pool()).await.unwrap();
        assert_eq!(events, ["worker_missing", "worker_back"]);
        let taken = db.store.take_notification(LEASE, ANY).await.unwrap().unwrap();
        assert_eq!((taken.build_id, taken.reporter.as_str()), (None, WORKER_ADMINS));
    }

    #[tokio::test]
    async fn the_facts_of_a_report_name_the_failed_step_and_the_build_before() {
        let db = TestDatabase::new().await;
        let builder = db.builder("facts").await;
        db.queue(builder, 3).await;
        let mut builds = Vec::new();
        for results in [0i16, 5, 2] {
            let build = db.claim_next(builder).await.unwrap();
            sqlx::query("update builds set complete_at = now(), results = $2 where id = $1")
                .bind(build.id)
                .bind(results)
                .execute(db.store.pool())
                .await
                .unwrap();
            builds.push(build.id);
        }
        sqlx::query(
            "insert into steps (build_id, number, name, results) values ($1, 0, 'compile', 0), ($1, 1, 'test', 2)",
        )
        .bind(builds[2])
        .execute(db.store.pool())
        .await
        .unwrap();
        let facts = db.store.report_facts(builds[2]).await.unwrap().unwrap();
        assert_eq!(facts.failed_step.as_deref(), Some("test"));
        assert_eq!(facts.previous_results, Some(0), "the retried build in between does not count");
        assert_eq!(facts.results, Some(2));
    }
}
