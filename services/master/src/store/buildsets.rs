//! Buildsets and their build requests, one request per builder: how work is
//! asked for (a force, a rebuild, a scheduler, a change), collapsed,
//! cancelled, reprioritised, and announced to workers again when nobody
//! claimed it.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use shared::ids::{BuildId, BuildRequestId, BuilderId, BuildsetId, WorkerName};
use shared::model::Results;
use sqlx::{FromRow, Postgres, Transaction};

use super::{Store, StoreResult};

/// A request as created by a trigger.
#[derive(Debug, Clone, Copy)]
pub struct NewRequest {
    pub builder_id: BuilderId,
    pub priority: i32,
}

pub struct NewBuildset<'a> {
    pub reason: &'a str,
    pub owner: Option<&'a str>,
    /// Who may act as its owner (`authorization`'s `owner` role):
    /// `local:alice`, `github:octocat`, `oidc:sso:bob`.
    pub owned_by: Option<&'a str>,
    pub scheduler: &'a str,
    /// Buildbot-shaped: `{"name": [value, "source"]}`.
    pub properties: &'a serde_json::Value,
    pub requests: Vec<NewRequest>,
    /// The trace asking for it, which its builds join.
    pub traceparent: Option<String>,
    /// For a timed scheduler: the tick it fires for. The buildset is made
    /// only if this tick was not fired before, by any master.
    pub tick: Option<DateTime<Utc>>,
    /// For a dependent scheduler: the upstream buildset it follows. Made
    /// only once per scheduler and upstream buildset.
    pub triggered_by: Option<BuildsetId>,
}

/// A buildset's values, owned, for those made from data that does not
/// outlive the call (changes, webhooks).
pub struct OwnedBuildset {
    pub reason: String,
    pub owner: String,
    pub owned_by: Option<String>,
    pub scheduler: String,
    pub properties: serde_json::Value,
    pub requests: Vec<NewRequest>,
}

impl OwnedBuildset {
    pub fn as_new(&self, traceparent: Option<String>) -> NewBuildset<'_> {
        NewBuildset {
            reason: &self.reason,
            owner: Some(&self.owner),
            owned_by: self.owned_by.as_deref(),
            scheduler: &self.scheduler,
            properties: &self.properties,
            requests: self.requests.clone(),
            traceparent,
            tick: None,
            triggered_by: None,
        }
    }
}

/// A buildset as written: its id, and its requests with their builders.
#[derive(Debug, Clone)]
pub struct CreatedBuildset {
    pub id: BuildsetId,
    pub requests: Vec<(BuilderId, BuildRequestId)>,
}

/// A request whose doorbell should be rung (again).
#[derive(Debug, FromRow)]
pub struct DueRequest {
    pub id: BuildRequestId,
    pub builder_id: BuilderId,
    /// The trace that asked for the request, which its doorbell continues.
    pub traceparent: Option<String>,
}

/// See [`Store::cancel_request`].
#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    Running { build_id: BuildId, worker_name: WorkerName },
    AlreadyComplete,
    NotFound,
}

impl Store {
    /// Writes a buildset and its requests (at least one) in one statement.
    /// The requests are marked announced now: the caller rings their
    /// doorbells right after the commit, and the reconciler rings again only
    /// if nobody claims them. For a tick already fired or an upstream
    /// buildset already followed (see `NewBuildset`), writes nothing.
    #[tracing::instrument(
        name = "db", skip_all,
        fields(otel.name = "INSERT buildsets, buildrequests", otel.kind = "client", db.system.name = "postgresql")
    )]
    pub async fn create_buildset(&self, new: NewBuildset<'_>) -> StoreResult<Option<CreatedBuildset>> {
        Self::create_buildset_on(&self.pool, new).await
    }

    pub(super) async fn create_buildset_on<'e>(
        executor: impl sqlx::PgExecutor<'e>,
        new: NewBuildset<'_>,
    ) -> StoreResult<Option<CreatedBuildset>> {
        let builder_ids: Vec<BuilderId> = new.requests.iter().map(|r| r.builder_id).collect();
        let priorities: Vec<i32> = new.requests.iter().map(|r| r.priority).collect();
        // One statement, so one round trip and its own transaction: a tick
        // and its buildset are written together or not at all.
        let rows: Vec<(BuildsetId, BuilderId, BuildRequestId)> = sqlx::query_as(
            r#"with tick as (
                   insert into scheduler_ticks (scheduler, tick)
                   select $3, $8 where $8::timestamptz is not null
                   on conflict do nothing
                   returning 1
               ), buildset as (
                   insert into buildsets (reason, owner, scheduler, properties, triggered_by, owned_by)
                   select $1, $2, $3, $4, $9, $10 where $8::timestamptz is null or exists (select 1 from tick)
                   on conflict (scheduler, triggered_by) where triggered_by is not null do nothing
                   returning id
               )
               insert into buildrequests (buildset_id, builder_id, priority, announced_at, traceparent)
               select buildset.id, t.builder_id, t.priority, now(), $7
               from buildset, unnest($5::int[], $6::int[]) with ordinality as t(builder_id, priority, n)
               order by t.n
               returning buildset_id, builder_id, id"#,
        )
        .bind(new.reason)
        .bind(new.owner)
        .bind(new.scheduler)
        .bind(new.properties)
        .bind(&builder_ids)
        .bind(&priorities)
        .bind(&new.traceparent)
        .bind(new.tick)
        .bind(new.triggered_by)
        .bind(new.owned_by)
        .fetch_all(executor)
        .await?;
        let Some((id, _, _)) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(CreatedBuildset {
            id: *id,
            requests: rows.iter().map(|(_, builder, request)| (*builder, *request)).collect(),
        }))
    }

    /// Collapses the queue: pending requests older than this buildset's,
    /// of the same builder (among `builder_ids`) and the same branch, are
    /// superseded and end SKIPPED, so a builder builds the newest change of
    /// a branch rather than every one. Returns the requests skipped.
    pub async fn collapse_older(
        &self,
        buildset_id: BuildsetId,
        builder_ids: &[BuilderId],
    ) -> StoreResult<Vec<BuildRequestId>> {
        let mut tx = self.pool.begin().await?;
        let skipped: Vec<(BuildRequestId, BuildsetId)> = sqlx::query_as(
            r#"with mine as (
                   select r.id, r.builder_id, coalesce(s.properties -> 'branch' ->> 0, '') as branch
                   from buildrequests r join buildsets s on s.id = r.buildset_id
                   where r.buildset_id = $1 and r.builder_id = any($2)
               )
               update buildrequests old
               set state = 'complete', complete_at = now(), results = $3
               from buildsets older_set, mine
               where old.buildset_id = older_set.id and old.state = 'pending'
                 and old.builder_id = mine.builder_id and old.id < mine.id
                 and coalesce(older_set.properties -> 'branch' ->> 0, '') = mine.branch
                 -- A build of a revision someone asked for by name (a
                 -- force, a rebuild) is never superseded.
                 and (coalesce(older_set.properties -> 'revision' ->> 0, '') = ''
                      or older_set.properties -> 'revision' ->> 1 = 'GitHub')
               returning old.id, old.buildset_id"#,
        )
        .bind(buildset_id)
        .bind(builder_ids)
        .bind(Results::Skipped.code())
        .fetch_all(&mut *tx)
        .await?;
        let buildsets: BTreeSet<BuildsetId> = skipped.iter().map(|(_, buildset)| *buildset).collect();
        for buildset in buildsets {
            Self::complete_buildset_if_done(&mut tx, buildset).await?;
        }
        tx.commit().await?;
        Ok(skipped.into_iter().map(|(request, _)| request).collect())
    }

    /// Marks a buildset complete, with the worst of its requests' results,
    /// once every request of it is complete.
    pub(super) async fn complete_buildset_if_done(
        tx: &mut Transaction<'static, Postgres>,
        buildset_id: BuildsetId,
    ) -> StoreResult<()> {
        // The buildset row's lock makes the last two requests to finish see
        // each other; locking the requests instead would hide the pending
        // ones of the set from claims, which skip locked rows.
        sqlx::query("select 1 from buildsets where id = $1 for update").bind(buildset_id).execute(&mut **tx).await?;
        let states: Vec<(String, Option<i16>)> =
            sqlx::query_as("select state, results from buildrequests where buildset_id = $1")
                .bind(buildset_id)
                .fetch_all(&mut **tx)
                .await?;
        if states.iter().any(|(state, _)| state != "complete") {
            return Ok(());
        }
        let results = states
            .iter()
            .filter_map(|(_, code)| code.and_then(Results::from_code))
            // From SKIPPED: a set whose every request was superseded is
            // SKIPPED, not SUCCESS (a dependent scheduler must not follow it).
            .fold(Results::Skipped, Results::worst);
        sqlx::query(
            "update buildsets set complete = true, complete_at = now(), results = $2 where id = $1 and not complete",
        )
        .bind(buildset_id)
        .bind(results.code())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Forgets that these requests were announced, so the reconciler rings
    /// for them soon (their doorbell could not be published).
    pub async fn mark_unannounced(&self, request_ids: &[BuildRequestId]) -> StoreResult<()> {
        sqlx::query("update buildrequests set announced_at = null where id = any($1) and state = 'pending'")
            .bind(request_ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Pending requests nobody claimed since their doorbell rang
    /// `older_than_seconds` ago (or that never rang), marked as announced
    /// now. Safe on every master at once: each row goes to one of them.
    pub async fn take_due_requests(&self, older_than_seconds: u64, limit: i64) -> StoreResult<Vec<DueRequest>> {
        Ok(sqlx::query_as(
            r#"with due as (
                   select id from buildrequests r
                   where state = 'pending'
                     and (announced_at is null or announced_at < now() - make_interval(secs => $1))
                     -- A paused builder's requests are announced when it is unpaused.
                     and not exists (select 1 from builders b where b.id = r.builder_id and b.paused)
                   order by id
                   limit $2
                   for update skip locked
               )
               update buildrequests r set announced_at = now()
               from due where r.id = due.id
               returning r.id, r.builder_id, r.traceparent"#,
        )
        .bind(older_than_seconds as f64)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Cancels a build request: a pending one ends CANCELLED at once (and
    /// its buildset, if that was the last); for a claimed one the running
    /// build is returned, to be stopped.
    pub async fn cancel_request(&self, request_id: BuildRequestId) -> StoreResult<CancelOutcome> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, BuildsetId)> =
            sqlx::query_as("select state, buildset_id from buildrequests where id = $1 for update")
                .bind(request_id)
                .fetch_optional(&mut *tx)
                .await?;
        let outcome = match row {
            None => CancelOutcome::NotFound,
            Some((state, _)) if state == "complete" => CancelOutcome::AlreadyComplete,
            Some((state, buildset_id)) if state == "pending" => {
                sqlx::query(
                    "update buildrequests set state = 'complete', complete_at = now(), results = $2 where id = $1",
                )
                .bind(request_id)
                .bind(Results::Cancelled.code())
                .execute(&mut *tx)
                .await?;
                Self::complete_buildset_if_done(&mut tx, buildset_id).await?;
                CancelOutcome::Cancelled
            }
            Some(_) => {
                let running: Option<(BuildId, WorkerName)> = sqlx::query_as(
                    r#"select b.id, w.name from builds b join workers w on w.id = b.worker_id
                       where b.buildrequest_id = $1 and b.complete_at is null order by b.id desc limit 1"#,
                )
                .bind(request_id)
                .fetch_optional(&mut *tx)
                .await?;
                match running {
                    Some((build_id, worker_name)) => CancelOutcome::Running { build_id, worker_name },
                    None => CancelOutcome::AlreadyComplete,
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Sets the priority of a request that is not complete. Returns the
    /// request's state before (`None`: no such request); a complete one is
    /// left as it is.
    pub async fn set_priority(&self, request_id: BuildRequestId, priority: i32) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            r#"with found as (select id, state from buildrequests where id = $1 for update)
               update buildrequests r set priority = case when found.state = 'complete' then r.priority else $2 end
               from found where r.id = found.id
               returning found.state"#,
        )
        .bind(request_id)
        .bind(priority)
        .fetch_optional(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use shared::model::Results;

    use crate::store::testing::TestDatabase;

    async fn request_results(db: &TestDatabase, buildset: shared::ids::BuildsetId) -> Vec<(String, Option<i16>)> {
        sqlx::query_as("select state, results from buildrequests where buildset_id = $1 order by id")
            .bind(buildset)
            .fetch_all(db.store.pool())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_new_request_supersedes_older_pending_ones_of_its_branch_only() {
        let db = TestDatabase::new().await;
        let builder = db.builder("collapsing").await;
        let branch = |name: &str| json!({ "branch": [name, "GitHub"], "revision": ["abc", "GitHub"] });
        let old_main = db.buildset(builder, 1, 0, branch("main")).await;
        let old_other = db.buildset(builder, 1, 0, branch("3.14")).await;
        let forced =
            db.buildset(builder, 1, 0, json!({ "branch": ["main", "Force"], "revision": ["abc", "Force"] })).await;
        let new_main = db.buildset(builder, 1, 0, branch("main")).await;

        let skipped = db.store.collapse_older(new_main, &[builder]).await.unwrap();

        assert_eq!(skipped.len(), 1, "only the older request of main from a change");
        assert_eq!(request_results(&db, old_main).await, [("complete".into(), Some(Results::Skipped.code()))]);
        assert_eq!(request_results(&db, old_other).await, [("pending".into(), None)], "another branch stays");
        assert_eq!(request_results(&db, forced).await, [("pending".into(), None)], "a named revision stays");
        let (complete, results): (bool, Option<i16>) =
            sqlx::query_as("select complete, results from buildsets where id = $1")
                .bind(old_main)
                .fetch_one(db.store.pool())
                .await
                .unwrap();
        assert!(complete, "a buildset whose every request was superseded is complete");
        assert_eq!(results, Some(Results::Skipped.code()), "and SKIPPED, so no dependent scheduler follows it");
    }

    #[tokio::test]
    async fn a_tick_fires_once_whichever_master_writes_it() {
        let db = TestDatabase::new().await;
        let builder = db.builder("nightly").await;
        let tick = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let properties = json!({});
        let buildset = |requests| crate::store::NewBuildset {
            reason: "tick",
            owner: None,
            owned_by: None,
            scheduler: "nightly",
            properties: &properties,
            requests,
            traceparent: None,
            tick: Some(tick),
            triggered_by: None,
        };
        let request = vec![crate::store::NewRequest { builder_id: builder, priority: 0 }];
        let first = db.store.create_buildset(buildset(request.clone())).await.unwrap();
        let second = db.store.create_buildset(buildset(request)).await.unwrap();
        assert!(first.is_some_and(|created| created.requests.len() == 1));
        assert!(second.is_none(), "the same tick written again makes nothing");
    }

    #[tokio::test]
    async fn a_cancelled_request_ends_its_buildset_and_a_second_cancel_is_told_so() {
        let db = TestDatabase::new().await;
        let builder = db.builder("cancelled").await;
        let buildset = db.queue(builder, 1).await;
        let (request,): (shared::ids::BuildRequestId,) =
            sqlx::query_as("select id from buildrequests").fetch_one(db.store.pool()).await.unwrap();
        assert_eq!(db.store.cancel_request(request).await.unwrap(), crate::store::CancelOutcome::Cancelled);
        assert_eq!(request_results(&db, buildset).await, [("complete".into(), Some(Results::Cancelled.code()))]);
        assert_eq!(db.store.cancel_request(request).await.unwrap(), crate::store::CancelOutcome::AlreadyComplete);
        assert_eq!(
            db.store.cancel_request(shared::ids::BuildRequestId(999_999)).await.unwrap(),
            crate::store::CancelOutcome::NotFound
        );
    }
}
