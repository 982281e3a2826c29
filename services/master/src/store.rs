//! All SQL of the master, behind one type. Postgres is the truth: every
//! decision that must hold across masters (who claims a request, which number
//! a build gets, whether an event was already recorded) is made here, in one
//! statement or one transaction, never in a master's memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use shared::config::BuilderConfig;
use shared::model::Results;
use shared::wire::StepRecord;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;

pub mod resources;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "the database schema is out of date (missing migrations: {missing}); run `buildmaster upgrade-master` first"
    )]
    SchemaOutdated { missing: String },
    #[error("the database schema is newer than this master (unknown migrations: {unknown}); upgrade buildmaster")]
    SchemaNewer { unknown: String },
}

impl StoreError {
    /// Whether trying again later may succeed (the database was unreachable
    /// or busy), as opposed to a request that can never be recorded.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(error) = self else { return false };
        match error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => true,
            // Connection exceptions, serialization failures and deadlocks,
            // insufficient resources, operator intervention (e.g. a restart).
            sqlx::Error::Database(db) => {
                db.code().is_some_and(|code| ["08", "40", "53", "57"].iter().any(|class| code.starts_with(class)))
            }
            _ => false,
        }
    }
}

impl StoreError {
    /// Postgres refused a value the request carried (a data exception: a
    /// NUL in a text, a time out of range), so the client is at fault.
    pub fn bad_input(&self) -> Option<String> {
        let StoreError::Database(sqlx::Error::Database(db)) = self else { return None };
        db.code().is_some_and(|code| code.starts_with("22")).then(|| db.message().to_owned())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Two pools, so that readers never queue in front of the pipeline: a
/// crawler sending hundreds of GETs at once waits for `reads` connections
/// while claims, events and triggers keep theirs.
#[derive(Clone)]
pub struct Store {
    /// Triggers, claims, events, reconciliation.
    pool: PgPool,
    /// The API's reads.
    reads: PgPool,
}

/// A request as created by a trigger.
#[derive(Debug, Clone, Copy)]
pub struct NewRequest {
    pub builder_id: i32,
    pub priority: i32,
}

pub struct NewBuildset<'a> {
    pub reason: &'a str,
    pub owner: Option<&'a str>,
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
    pub triggered_by: Option<i64>,
}

/// A change a change source reported.
pub struct NewChange<'a> {
    /// The source's id of the delivery (GitHub's `X-GitHub-Delivery`).
    pub delivery: Option<&'a str>,
    pub source: &'a str,
    pub repository: &'a str,
    pub branch: &'a str,
    pub revision: &'a str,
    pub author: &'a str,
    pub comments: &'a str,
    pub files: &'a [String],
    /// `push`, `pull_request`, `comment`.
    pub category: &'a str,
}

/// A buildset's values, owned, for those made from data that does not
/// outlive the call (changes, webhooks).
pub struct OwnedBuildset {
    pub reason: String,
    pub owner: String,
    pub scheduler: String,
    pub properties: serde_json::Value,
    pub requests: Vec<NewRequest>,
}

impl OwnedBuildset {
    pub fn as_new(&self, traceparent: Option<String>) -> NewBuildset<'_> {
        NewBuildset {
            reason: &self.reason,
            owner: Some(&self.owner),
            scheduler: &self.scheduler,
            properties: &self.properties,
            requests: self.requests.clone(),
            traceparent,
            tick: None,
            triggered_by: None,
        }
    }
}

/// A change whose branch became quiet for its scheduler.
#[derive(Debug, FromRow)]
pub struct StableChange {
    pub scheduler: String,
    pub change_id: i64,
    pub repository: String,
    pub branch: String,
    pub revision: String,
    pub author: String,
    pub category: String,
}

/// Who claims a build of which builder.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub builder_id: i32,
    pub builder_name: &'a str,
    pub worker_id: i32,
    pub worker_name: &'a str,
    pub master_id: i32,
    /// Chosen by the worker; retrying with it returns the same build.
    pub claim_token: Uuid,
    pub lease_seconds: u64,
    /// Properties from the builder's and the worker's configuration
    /// (`{"name": [value, source]}`); those of the request win over them.
    pub configured_properties: &'a serde_json::Value,
}

/// How far back the overview looks for builds of a branch.
pub const BRANCH_SCAN_BUILDS: i64 = 500;

/// One build in the overview grid.
#[derive(Debug, FromRow)]
pub struct GridCell {
    pub builder_id: i32,
    pub id: i64,
    pub number: i32,
    pub results: Option<i16>,
    pub complete: bool,
}

/// What a claim produced: a new or (for a retried token) existing build.
#[derive(Debug, FromRow)]
pub struct ClaimedBuild {
    pub id: i64,
    pub number: i32,
    pub buildrequest_id: i64,
    pub properties: serde_json::Value,
    /// The trace of the request, which the build joins.
    pub traceparent: Option<String>,
    /// When the request was accepted.
    pub submitted_at: DateTime<Utc>,
}

#[derive(Debug, FromRow, Clone)]
pub struct BuildRow {
    pub id: i64,
    pub builder_id: i32,
    pub number: i32,
    pub buildrequest_id: i64,
    pub worker_id: i32,
    pub worker_name: String,
    pub master_id: i32,
    pub started_at: DateTime<Utc>,
    pub complete_at: Option<DateTime<Utc>>,
    pub results: Option<i16>,
    pub state_string: String,
    pub properties: serde_json::Value,
}

#[derive(Debug, FromRow, Clone)]
pub struct StepRow {
    pub id: i64,
    pub build_id: i64,
    pub number: i32,
    pub name: String,
    pub started_at: Option<DateTime<Utc>>,
    pub complete_at: Option<DateTime<Utc>>,
    pub results: Option<i16>,
    pub state_string: String,
    pub hidden: bool,
    pub urls: serde_json::Value,
}

#[derive(Debug, FromRow, Clone)]
pub struct LogRow {
    pub id: i64,
    pub step_id: i64,
    pub name: String,
    pub slug: String,
    #[sqlx(rename = "type")]
    pub log_type: String,
    pub num_lines: i64,
    pub num_bytes: i64,
    pub complete: bool,
    /// When retention deleted its contents.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// See [`Store::log_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogState {
    Running,
    Archived { bytes: i64 },
    Abandoned,
}

/// Where a log's live copy is: enough to name its Redis stream.
#[derive(Debug, FromRow, Clone)]
pub struct LogLocation {
    #[sqlx(flatten)]
    pub log: LogRow,
    pub build_id: i64,
    pub step_number: i32,
    pub worker_name: String,
}

/// One archived piece of a log, ready to insert.
pub struct ArchivedChunk {
    pub seq: i32,
    pub first_line: i64,
    pub num_lines: i64,
    pub raw_bytes: i32,
    pub content: Vec<u8>,
}

/// A request whose doorbell should be rung (again).
#[derive(Debug, FromRow)]
pub struct DueRequest {
    pub id: i64,
    pub builder_id: i32,
    /// The trace that asked for the request, which its doorbell continues.
    pub traceparent: Option<String>,
}

/// What [`Store::expire_leases`] did: builds ended as RETRY, and the
/// requests pending again.
#[derive(Debug)]
pub struct Expired {
    pub builds: Vec<i64>,
    pub requeued: Vec<DueRequest>,
}

/// The outcome of recording one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    Applied,
    Duplicate,
}

#[derive(Debug, FromRow)]
pub struct RebuildSource {
    pub builder_id: i32,
    pub reason: String,
    pub owner: Option<String>,
    pub scheduler: String,
    pub properties: serde_json::Value,
    pub priority: i32,
    pub number: i32,
}

/// See [`Store::cancel_request`].
#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    Running { build_id: i64, worker_name: String },
    AlreadyComplete,
    NotFound,
}

/// Why an event cannot be recorded, ever.
#[derive(Debug, thiserror::Error)]
pub enum EventRejected {
    #[error("build {0} does not exist")]
    UnknownBuild(i64),
    #[error("build {build_id} runs on worker `{owner}`, not on `{sender}`")]
    WrongWorker { build_id: i64, owner: String, sender: String },
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

/// A query for builds (with their worker's name) ending in `$tail`.
macro_rules! select_builds {
    ($tail:literal) => {
        concat!(
            "select b.id, b.builder_id, b.number, b.buildrequest_id, b.worker_id, w.name as worker_name, ",
            "b.master_id, b.started_at, b.complete_at, b.results, b.state_string, b.properties ",
            "from builds b join workers w on w.id = b.worker_id ",
            $tail
        )
    };
}

impl Store {
    /// Connects with up to `connections` for the pipeline and
    /// `read_connections` for reads.
    pub async fn connect(url: &str, connections: u32, read_connections: u32) -> StoreResult<Store> {
        // No ping before each use: it doubles the round trips of every
        // query, and a broken connection fails its query anyway (a transient
        // error: 503 to an HTTP client, a retry for an event) and is dropped.
        let options = PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .test_before_acquire(false);
        let pool = options.clone().connect(url).await?;
        let reads = options.max_connections(read_connections).connect(url).await?;
        Ok(Store { pool, reads })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Refuses to run on a schema that is not exactly what this binary
    /// expects, with the command that fixes it.
    pub async fn check_schema(&self) -> StoreResult<()> {
        let table_exists: bool =
            sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null").fetch_one(&self.pool).await?;
        let applied: Vec<i64> = if table_exists {
            sqlx::query_scalar("select version from _sqlx_migrations where success order by version")
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        let known: Vec<i64> = shared::MIGRATOR.iter().map(|m| m.version).collect();
        let missing: Vec<String> = known.iter().filter(|v| !applied.contains(v)).map(|v| v.to_string()).collect();
        if !missing.is_empty() {
            return Err(StoreError::SchemaOutdated { missing: missing.join(", ") });
        }
        let unknown: Vec<String> = applied.iter().filter(|v| !known.contains(v)).map(|v| v.to_string()).collect();
        if !unknown.is_empty() {
            return Err(StoreError::SchemaNewer { unknown: unknown.join(", ") });
        }
        Ok(())
    }

    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn register_master(&self, name: &str) -> StoreResult<i32> {
        Ok(sqlx::query_scalar(
            r#"insert into masters (name) values ($1)
               on conflict (name) do update set started_at = now(), last_seen_at = now()
               returning id"#,
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn touch_master(&self, id: i32) -> StoreResult<()> {
        sqlx::query("update masters set last_seen_at = now() where id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Makes the builders table match the configuration and returns every
    /// configured builder's id. Builders no longer configured keep their row
    /// (and history) but are marked so.
    pub async fn sync_builders(&self, builders: &[BuilderConfig]) -> StoreResult<HashMap<String, i32>> {
        let names: Vec<&str> = builders.iter().map(|b| b.name.as_str()).collect();
        let descriptions: Vec<Option<&str>> = builders.iter().map(|b| b.description.as_deref()).collect();
        let tags: Vec<String> =
            builders.iter().map(|b| serde_json::to_string(&b.tags).expect("tags serialize")).collect();
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(String, i32)> = sqlx::query_as(
            r#"insert into builders (name, description, tags, configured)
               select name, description, array(select jsonb_array_elements_text(tags::jsonb)), true
               from unnest($1::text[], $2::text[], $3::text[]) as t(name, description, tags)
               on conflict (name) do update
                 set description = excluded.description, tags = excluded.tags, configured = true
               returning name, id"#,
        )
        .bind(&names)
        .bind(&descriptions)
        .bind(&tags)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("update builders set configured = false where configured and not (name = any($1))")
            .bind(&names)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn ensure_worker(&self, name: &str) -> StoreResult<i32> {
        Ok(sqlx::query_scalar(
            r#"insert into workers (name, last_seen_at) values ($1, now())
               on conflict (name) do update set last_seen_at = now()
               returning id"#,
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Writes a buildset and its requests (at least one) in one statement.
    /// The requests are marked announced now: the caller rings their
    /// doorbells right after the commit, and the reconciler rings again only
    /// if nobody claims them.
    #[tracing::instrument(
        name = "db", skip_all,
        fields(otel.name = "INSERT buildsets, buildrequests", otel.kind = "client", db.system.name = "postgresql")
    )]
    /// Writes a buildset and its requests; for a tick already fired (see
    /// `NewBuildset::tick`), writes nothing and returns no requests.
    pub async fn create_buildset(&self, new: NewBuildset<'_>) -> StoreResult<(i64, Vec<(i32, i64)>)> {
        Self::create_buildset_on(&self.pool, new).await
    }

    async fn create_buildset_on<'e>(
        executor: impl sqlx::PgExecutor<'e>,
        new: NewBuildset<'_>,
    ) -> StoreResult<(i64, Vec<(i32, i64)>)> {
        let builder_ids: Vec<i32> = new.requests.iter().map(|r| r.builder_id).collect();
        let priorities: Vec<i32> = new.requests.iter().map(|r| r.priority).collect();
        // One statement, so one round trip and its own transaction: a tick
        // and its buildset are written together or not at all.
        let rows: Vec<(i64, i32, i64)> = sqlx::query_as(
            r#"with tick as (
                   insert into scheduler_ticks (scheduler, tick)
                   select $3, $8 where $8::timestamptz is not null
                   on conflict do nothing
                   returning 1
               ), buildset as (
                   insert into buildsets (reason, owner, scheduler, properties, triggered_by)
                   select $1, $2, $3, $4, $9 where $8::timestamptz is null or exists (select 1 from tick)
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
        .fetch_all(executor)
        .await?;
        let buildset_id = rows.first().map(|(buildset, _, _)| *buildset).unwrap_or_default();
        Ok((buildset_id, rows.into_iter().map(|(_, builder, request)| (builder, request)).collect()))
    }

    /// Records a change and the buildsets it causes, in one transaction,
    /// so a change acknowledged to its source is never lost and never
    /// half-scheduled. A delivery recorded before changes nothing (`None`).
    pub async fn record_change(
        &self,
        change: &NewChange<'_>,
        buildsets: Vec<NewBuildset<'_>>,
        deferred: &[(String, u64)],
    ) -> StoreResult<Option<(i64, Vec<(i64, Vec<(i32, i64)>)>)>> {
        let mut tx = self.pool.begin().await?;
        let change_id: Option<i64> = sqlx::query_scalar(
            r#"insert into changes (delivery, source, repository, branch, revision, author, comments, files, category)
               values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               on conflict (delivery) do nothing
               returning id"#,
        )
        .bind(change.delivery)
        .bind(change.source)
        .bind(change.repository)
        .bind(change.branch)
        .bind(change.revision)
        .bind(change.author)
        .bind(change.comments)
        .bind(serde_json::json!(change.files))
        .bind(change.category)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(change_id) = change_id else {
            return Ok(None);
        };
        let mut created = Vec::with_capacity(buildsets.len());
        for buildset in buildsets {
            created.push(Self::create_buildset_on(&mut *tx, buildset).await?);
        }
        // Schedulers waiting for a quiet branch hold the newest change, and
        // wait again from now.
        for (scheduler, seconds) in deferred {
            sqlx::query(
                r#"insert into scheduler_pending_changes (scheduler, branch, change_id, due_at)
                   values ($1, $2, $3, now() + make_interval(secs => $4))
                   on conflict (scheduler, branch)
                   do update set change_id = excluded.change_id, due_at = excluded.due_at"#,
            )
            .bind(scheduler)
            .bind(change.branch)
            .bind(change_id)
            .bind(*seconds as f64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some((change_id, created)))
    }

    /// Changes whose branch has been quiet for their scheduler's
    /// `tree_stable_seconds`, taken (skip locked) in a transaction that
    /// deletes them: `build` makes each one's buildset in the same
    /// transaction, so each is built exactly once by one master.
    pub async fn build_stable_changes(
        &self,
        build: impl Fn(&StableChange) -> Option<OwnedBuildset>,
    ) -> StoreResult<Vec<(i64, Vec<(i32, i64)>)>> {
        let mut tx = self.pool.begin().await?;
        let due: Vec<StableChange> = sqlx::query_as(
            r#"with due as (
                   select scheduler, branch from scheduler_pending_changes
                   where due_at <= now()
                   order by due_at
                   limit 100
                   for update skip locked
               ), taken as (
                   delete from scheduler_pending_changes p using due
                   where p.scheduler = due.scheduler and p.branch = due.branch
                   returning p.scheduler, p.change_id
               )
               select taken.scheduler, c.id as change_id, c.repository, c.branch, c.revision, c.author, c.category
               from taken join changes c on c.id = taken.change_id"#,
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut created = Vec::new();
        for change in &due {
            if let Some(buildset) = build(change) {
                created.push(Self::create_buildset_on(&mut *tx, buildset.as_new(None)).await?);
            }
        }
        tx.commit().await?;
        Ok(created)
    }

    /// Buildsets of `upstream` finished in the last hour with SUCCESS or
    /// WARNINGS that `scheduler` has not followed yet: (id, properties).
    pub async fn unfollowed_buildsets(
        &self,
        upstream: &str,
        scheduler: &str,
    ) -> StoreResult<Vec<(i64, serde_json::Value)>> {
        Ok(sqlx::query_as(
            r#"select s.id, s.properties from buildsets s
               where s.complete and s.complete_at > now() - interval '1 hour'
                 and s.scheduler = $1 and s.results in (0, 1)
                 and not exists (select 1 from buildsets d where d.triggered_by = s.id and d.scheduler = $2)
               order by s.id"#,
        )
        .bind(upstream)
        .bind(scheduler)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The revision of the newest change `source` recorded for a branch of
    /// a repository (a poller's last look).
    pub async fn last_change_revision(
        &self,
        source: &str,
        repository: &str,
        branch: &str,
    ) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            r#"select revision from changes where source = $1 and repository = $2 and branch = $3
               order by id desc limit 1"#,
        )
        .bind(source)
        .bind(repository)
        .bind(branch)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Collapses the queue: pending requests older than this buildset's,
    /// of the same builder (among `builder_ids`) and the same branch, are
    /// superseded and end SKIPPED, so a builder builds the newest change of
    /// a branch rather than every one. Returns the requests skipped.
    pub async fn collapse_older(&self, buildset_id: i64, builder_ids: &[i32]) -> StoreResult<Vec<i64>> {
        let mut tx = self.pool.begin().await?;
        let skipped: Vec<(i64, i64)> = sqlx::query_as(
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
        let buildsets: BTreeSet<i64> = skipped.iter().map(|(_, buildset)| *buildset).collect();
        for buildset in buildsets {
            Self::complete_buildset_if_done(&mut tx, buildset).await?;
        }
        tx.commit().await?;
        Ok(skipped.into_iter().map(|(request, _)| request).collect())
    }

    /// Forgets that these requests were announced, so the reconciler rings
    /// for them soon (their doorbell could not be published).
    pub async fn mark_unannounced(&self, request_ids: &[i64]) -> StoreResult<()> {
        sqlx::query("update buildrequests set announced_at = null where id = any($1) and state = 'pending'")
            .bind(request_ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Claims the best pending request of a builder for a worker.
    ///
    /// The claim statement sees the requests committed when it started and
    /// skips those another transaction holds, so it can find nothing while
    /// a request waits: one committed a moment after it started, whose
    /// doorbell a concurrent claim answered by taking an older request; or
    /// one a cancel or a reconciler pass holds for a moment. Answering
    /// "nothing" then would leave that request to `redeliver_after_seconds`.
    /// So a claim that found nothing looks again (a new statement sees what
    /// is committed now) while the builder has a pending request, and if one
    /// is still out of reach after a few looks, it is marked unannounced:
    /// the reconciler rings for it within seconds.
    pub async fn claim(&self, claim: &Claim<'_>) -> StoreResult<Option<ClaimedBuild>> {
        const LOOKS: u32 = 3;
        for look in 1..=LOOKS {
            if let Some(build) = self.claim_once(claim).await? {
                return Ok(Some(build));
            }
            let waiting: bool = sqlx::query_scalar(
                r#"select exists (select 1 from buildrequests where builder_id = $1 and state = 'pending')
                          and not exists (select 1 from workers where id = $2 and paused)
                          and not exists (select 1 from builders where id = $1 and paused)"#,
            )
            .bind(claim.builder_id)
            .bind(claim.worker_id)
            .fetch_one(&self.pool)
            .await?;
            if !waiting {
                return Ok(None);
            }
            if look < LOOKS {
                tokio::time::sleep(std::time::Duration::from_millis(10 * u64::from(look))).await;
            }
        }
        sqlx::query("update buildrequests set announced_at = null where builder_id = $1 and state = 'pending'")
            .bind(claim.builder_id)
            .execute(&self.pool)
            .await?;
        Ok(None)
    }

    /// One claim statement: picks the best pending request (priority, then
    /// age; skipping rows another transaction holds), marks it claimed,
    /// takes the builder's next number under the builder row's lock, and
    /// creates the build. A retried claim token returns the build it
    /// already made.
    async fn claim_once(&self, claim: &Claim<'_>) -> StoreResult<Option<ClaimedBuild>> {
        let Claim {
            builder_id,
            builder_name,
            worker_id,
            worker_name,
            master_id,
            claim_token,
            lease_seconds,
            configured_properties,
        } = *claim;
        let existing: Option<ClaimedBuild> = sqlx::query_as(
            r#"select b.id, b.number, b.buildrequest_id, b.properties, r.traceparent, r.submitted_at
                   from builds b join buildrequests r on r.id = b.buildrequest_id where b.claim_token = $1"#,
        )
        .bind(claim_token)
        .fetch_optional(&self.pool)
        .await?;
        if existing.is_some() {
            return Ok(existing);
        }
        let claimed = sqlx::query_as(
            r#"with picked as (
                   select id from buildrequests
                   where builder_id = $1 and state = 'pending'
                     -- A paused worker takes no new build, and a paused
                     -- builder starts none.
                     and not exists (select 1 from workers w where w.id = $2 and w.paused)
                     and not exists (select 1 from builders pb where pb.id = $1 and pb.paused)
                   order by priority desc, submitted_at, id
                   limit 1
                   for update skip locked
               ), claimed as (
                   update buildrequests r
                   set state = 'claimed', claimed_at = now(), claimed_by_master_id = $3
                   from picked where r.id = picked.id
                   returning r.id, r.buildset_id, r.traceparent, r.submitted_at
               ), numbered as (
                   update builders set next_build_number = next_build_number + 1
                   where id = $1 and exists (select 1 from claimed)
                   returning next_build_number - 1 as number
               ), inserted as (
                   insert into builds (builder_id, number, buildrequest_id, worker_id, master_id, claim_token,
                                       lease_expires_at, state_string, properties)
                   select $1, numbered.number, claimed.id, $2, $3, $4,
                          now() + make_interval(secs => $5), 'building',
                          $8::jsonb || s.properties || jsonb_build_object(
                              'buildername', jsonb_build_array($6::text, 'Builder'),
                              'buildnumber', jsonb_build_array(numbered.number, 'Build'),
                              'workername', jsonb_build_array($7::text, 'Worker'))
                   from claimed, numbered, buildsets s
                   where s.id = claimed.buildset_id
                   returning id, number, buildrequest_id, properties
               )
               select inserted.id, inserted.number, inserted.buildrequest_id, inserted.properties,
                      claimed.traceparent, claimed.submitted_at
               from inserted, claimed"#,
        )
        .bind(builder_id)
        .bind(worker_id)
        .bind(master_id)
        .bind(claim_token)
        .bind(lease_seconds as f64)
        .bind(builder_name)
        .bind(worker_name)
        .bind(configured_properties)
        .fetch_optional(&self.pool)
        .await?;
        Ok(claimed)
    }

    /// Starts recording one event: checks that the build exists and belongs
    /// to the sender, and enters the event in the ledger. `None` means the
    /// event was recorded before and must change nothing.
    pub async fn begin_event(
        &self,
        build_id: i64,
        seq: i64,
        sender: &str,
    ) -> Result<Option<Transaction<'static, Postgres>>, RecordError> {
        let mut tx = self.pool.begin().await?;
        let owner: Option<String> =
            sqlx::query_scalar("select w.name from builds b join workers w on w.id = b.worker_id where b.id = $1")
                .bind(build_id)
                .fetch_optional(&mut *tx)
                .await?;
        match owner {
            None => return Err(EventRejected::UnknownBuild(build_id).into()),
            Some(owner) if owner != sender => {
                return Err(EventRejected::WrongWorker { build_id, owner, sender: sender.to_owned() }.into());
            }
            Some(_) => {}
        }
        let inserted = sqlx::query("insert into build_events (build_id, seq) values ($1, $2) on conflict do nothing")
            .bind(build_id)
            .bind(seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        Ok((inserted == 1).then_some(tx))
    }

    /// Creates or completes a step from what its worker reported, never
    /// moving it backwards (a late "started" after "finished" changes
    /// nothing). Returns the step's id and its logs' ids and completeness.
    pub async fn upsert_step(
        tx: &mut Transaction<'static, Postgres>,
        build_id: i64,
        step: &StepRecord,
    ) -> StoreResult<(i64, Vec<LogRow>)> {
        let step_id: i64 = sqlx::query_scalar(
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

    pub async fn insert_log_chunk(
        tx: &mut Transaction<'static, Postgres>,
        log_id: i64,
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
        log_id: i64,
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
        build_id: i64,
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
    /// expired) stays as it was.
    pub async fn finish_build(
        tx: &mut Transaction<'static, Postgres>,
        build_id: i64,
        results: Results,
        state_string: &str,
        finished_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let request: Option<(i64, i64)> = sqlx::query_as(
            r#"update builds set complete_at = $2, results = $3, state_string = $4
               where id = $1 and complete_at is null
               returning buildrequest_id,
                         (select buildset_id from buildrequests where id = buildrequest_id)"#,
        )
        .bind(build_id)
        .bind(finished_at)
        .bind(results.code())
        .bind(state_string)
        .fetch_optional(&mut **tx)
        .await?;
        let Some((request_id, buildset_id)) = request else {
            return Ok(());
        };
        sqlx::query(
            r#"update buildrequests set state = 'complete', complete_at = $2, results = $3
               where id = $1 and state = 'claimed'"#,
        )
        .bind(request_id)
        .bind(finished_at)
        .bind(results.code())
        .execute(&mut **tx)
        .await?;
        Self::complete_buildset_if_done(tx, buildset_id).await
    }

    async fn complete_buildset_if_done(tx: &mut Transaction<'static, Postgres>, buildset_id: i64) -> StoreResult<()> {
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

    /// Extends the leases of the builds a worker says it runs.
    pub async fn heartbeat(&self, worker: &str, build_ids: &[i64], lease_seconds: u64) -> StoreResult<()> {
        sqlx::query(
            r#"update builds b set lease_expires_at = now() + make_interval(secs => $3)
               from workers w
               where b.id = any($2) and b.complete_at is null and w.id = b.worker_id and w.name = $1"#,
        )
        .bind(worker)
        .bind(build_ids)
        .bind(lease_seconds as f64)
        .execute(&self.pool)
        .await?;
        sqlx::query("update workers set last_seen_at = now() where name = $1").bind(worker).execute(&self.pool).await?;
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

    /// Ends builds whose worker stopped sending heartbeats as RETRY and puts
    /// their requests back in the queue. Returns the requeued requests.
    /// Ends builds whose lease expired as RETRY. Their requests are pending
    /// again (returned, to be announced), unless they already lost a worker
    /// `max_retries` times: those end as EXCEPTION.
    pub async fn expire_leases(&self, limit: i64, max_retries: u32) -> StoreResult<Expired> {
        let mut tx = self.pool.begin().await?;
        let expired: Vec<(i64, i64)> = sqlx::query_as(
            r#"with expired as (
                   select id from builds
                   where complete_at is null and lease_expires_at < now()
                   order by lease_expires_at
                   limit $1
                   for update skip locked
               )
               update builds b
               set complete_at = now(), results = $2,
                   state_string = 'worker lost: no heartbeat before the lease expired'
               from expired where b.id = expired.id
               returning b.id, b.buildrequest_id"#,
        )
        .bind(limit)
        .bind(Results::Retry.code())
        .fetch_all(&mut *tx)
        .await?;
        let request_ids: Vec<i64> = expired.iter().map(|(_, request)| *request).collect();
        let updated: Vec<(i64, i32, String, i64, Option<String>)> = sqlx::query_as(
            r#"with counted as (
                   select r.id,
                          (select count(*) from builds b where b.buildrequest_id = r.id and b.results = $3) as lost
                   from buildrequests r
                   where r.id = any($1) and r.state = 'claimed'
               )
               update buildrequests r
               set state = case when c.lost > $2 then 'complete' else 'pending' end,
                   claimed_at = null, claimed_by_master_id = null,
                   announced_at = now(),
                   complete_at = case when c.lost > $2 then now() end,
                   results = case when c.lost > $2 then $4 end
               from counted c where r.id = c.id
               returning r.id, r.builder_id, r.state, r.buildset_id, r.traceparent"#,
        )
        .bind(&request_ids)
        .bind(i64::from(max_retries))
        .bind(Results::Retry.code())
        .bind(Results::Exception.code())
        .fetch_all(&mut *tx)
        .await?;
        let mut requeued = Vec::new();
        for (id, builder_id, state, buildset_id, traceparent) in updated {
            if state == "pending" {
                requeued.push(DueRequest { id, builder_id, traceparent });
            } else {
                tracing::warn!(
                    buildrequest.id = id,
                    max_retries,
                    "request lost its worker too often; it ends as EXCEPTION"
                );
                Self::complete_buildset_if_done(&mut tx, buildset_id).await?;
            }
        }
        tx.commit().await?;
        Ok(Expired { builds: expired.iter().map(|(build, _)| *build).collect(), requeued })
    }

    // --- control -----------------------------------------------------------

    /// What a rebuild of a build needs: its builder and its buildset's
    /// reason, owner, properties and the request's priority.
    pub async fn rebuild_source(&self, build_id: i64) -> StoreResult<Option<RebuildSource>> {
        Ok(sqlx::query_as(
            r#"select b.builder_id, s.reason, s.owner, s.scheduler, s.properties, r.priority, b.number
               from builds b join buildrequests r on r.id = b.buildrequest_id join buildsets s on s.id = r.buildset_id
               where b.id = $1"#,
        )
        .bind(build_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Cancels a build request: a pending one ends CANCELLED at once (and
    /// its buildset, if that was the last); for a claimed one the running
    /// build is returned, to be stopped.
    pub async fn cancel_request(&self, request_id: i64) -> StoreResult<CancelOutcome> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, i64)> =
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
                let running: Option<(i64, String)> = sqlx::query_as(
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
    pub async fn set_priority(&self, request_id: i64, priority: i32) -> StoreResult<Option<String>> {
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

    /// A worker's id by name.
    pub async fn worker_id_by_name(&self, name: &str) -> StoreResult<Option<i32>> {
        Ok(sqlx::query_scalar("select id from workers where name = $1").bind(name).fetch_optional(&self.reads).await?)
    }

    /// Pauses or unpauses a worker (by id), returning its name and the
    /// change's version (workers apply only newer versions).
    pub async fn set_worker_paused(
        &self,
        worker_id: i64,
        paused: bool,
        reason: Option<&str>,
    ) -> StoreResult<Option<(String, i64)>> {
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

    /// Pauses or unpauses a builder; returns its name and, when unpaused,
    /// its pending requests (to ring their doorbells again).
    pub async fn set_builder_paused(
        &self,
        builder_id: i64,
        paused: bool,
        reason: Option<&str>,
    ) -> StoreResult<Option<(String, Vec<i64>)>> {
        let mut tx = self.pool.begin().await?;
        let name: Option<String> = sqlx::query_scalar(
            "update builders set paused = $2, pause_reason = case when $2 then $3 end where id = $1 returning name",
        )
        .bind(builder_id)
        .bind(paused)
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(name) = name else {
            return Ok(None);
        };
        let pending: Vec<i64> = if paused {
            Vec::new()
        } else {
            sqlx::query_scalar("select id from buildrequests where builder_id = $1 and state = 'pending' order by id")
                .bind(builder_id)
                .fetch_all(&mut *tx)
                .await?
        };
        tx.commit().await?;
        Ok(Some((name, pending)))
    }

    /// Marks a worker as shutting down (until its next hello), returning its
    /// name.
    pub async fn set_worker_graceful(&self, worker_id: i64) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("update workers set graceful = true where id = $1 returning name")
            .bind(worker_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A worker said hello: what it tells about itself is kept, a shutdown
    /// it was asked for is over, and whether it is paused (with the pause's
    /// version) is returned.
    pub async fn worker_hello(&self, name: &str, info: &serde_json::Value) -> StoreResult<(i32, bool, i64)> {
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

    /// Records why this master's last reload was refused, or that the
    /// files on disk are applied (`None`).
    pub async fn set_config_error(&self, master_id: i32, error: Option<&str>) -> StoreResult<()> {
        sqlx::query("update masters set config_error = $2 where id = $1")
            .bind(master_id)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // --- web pages ---------------------------------------------------------

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

    /// The newest `per_builder` builds of each builder, newest first, one
    /// index scan per builder (for the overview grid); with `branch`, only
    /// builds of that branch among each builder's newest
    /// `BRANCH_SCAN_BUILDS`, so a rare branch cannot make the page read
    /// every builder's whole history.
    pub async fn recent_builds(
        &self,
        builder_ids: &[i32],
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

    /// Pending requests per builder id, and how many workers run a build now.
    pub async fn queue_summary(&self) -> StoreResult<(HashMap<i32, i64>, i64)> {
        let pending: Vec<(i32, i64)> = sqlx::query_as(
            "select builder_id, count(*) from buildrequests where state = 'pending' group by builder_id",
        )
        .fetch_all(&self.reads)
        .await?;
        let busy: i64 = sqlx::query_scalar("select count(distinct worker_id) from builds where complete_at is null")
            .fetch_one(&self.reads)
            .await?;
        Ok((pending.into_iter().collect(), busy))
    }

    // --- sessions ----------------------------------------------------------

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
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn delete_session(&self, token_sha256: &[u8]) -> StoreResult<()> {
        sqlx::query("delete from sessions where token_sha256 = $1").bind(token_sha256).execute(&self.pool).await?;
        Ok(())
    }

    // --- retention ---------------------------------------------------------

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

    // --- reads -------------------------------------------------------------

    pub async fn build(&self, id: i64) -> StoreResult<Option<BuildRow>> {
        Ok(sqlx::query_as(select_builds!("where b.id = $1")).bind(id).fetch_optional(&self.reads).await?)
    }

    pub async fn builds_of_request(&self, buildrequest_id: i64) -> StoreResult<Vec<BuildRow>> {
        Ok(sqlx::query_as(select_builds!("where b.buildrequest_id = $1 order by b.id"))
            .bind(buildrequest_id)
            .fetch_all(&self.reads)
            .await?)
    }

    pub async fn steps_of_build(&self, build_id: i64) -> StoreResult<Vec<StepRow>> {
        Ok(sqlx::query_as(
            r#"select id, build_id, number, name, started_at, complete_at, results, state_string, hidden, urls
               from steps where build_id = $1 order by number"#,
        )
        .bind(build_id)
        .fetch_all(&self.reads)
        .await?)
    }

    /// Whether more output may still come to a log: `Archived` with its
    /// printed size, `Abandoned` when its build ended without archiving it
    /// (the worker was lost), else `Running`.
    pub async fn log_state(&self, log_id: i64) -> StoreResult<LogState> {
        let row: Option<(bool, i64, bool)> = sqlx::query_as(
            r#"select l.complete, l.num_bytes, b.complete_at is not null
               from logs l join steps s on s.id = l.step_id join builds b on b.id = s.build_id
               where l.id = $1"#,
        )
        .bind(log_id)
        .fetch_optional(&self.reads)
        .await?;
        Ok(match row {
            Some((true, bytes, _)) => LogState::Archived { bytes },
            Some((false, _, true)) | None => LogState::Abandoned,
            Some((false, _, false)) => LogState::Running,
        })
    }

    pub async fn log_location(&self, log_id: i64) -> StoreResult<Option<LogLocation>> {
        Ok(sqlx::query_as(
            r#"select l.id, l.step_id, l.name, l.slug, l.type, l.num_lines, l.num_bytes, l.complete, l.deleted_at,
                      s.build_id, s.number as step_number, w.name as worker_name
               from logs l join steps s on s.id = l.step_id join builds b on b.id = s.build_id
                    join workers w on w.id = b.worker_id
               where l.id = $1"#,
        )
        .bind(log_id)
        .fetch_optional(&self.reads)
        .await?)
    }

    /// The archived chunks of a log in order, one row at a time, so a
    /// download of any size holds one chunk in memory.
    pub fn log_chunks(&self, log_id: i64) -> BoxStream<'static, Result<Vec<u8>, sqlx::Error>> {
        self.log_chunks_from(log_id, 0)
    }

    /// The archived chunks of a log from chunk `seq` on.
    pub fn log_chunks_from(&self, log_id: i64, seq: i32) -> BoxStream<'static, Result<Vec<u8>, sqlx::Error>> {
        Box::pin(async_stream_chunks(self.reads.clone(), log_id, seq))
    }

    /// The chunk in which line `line` of an archived log starts, as
    /// `(seq, first_line)`; none for a line past the end.
    pub async fn chunk_holding_line(&self, log_id: i64, line: i64) -> StoreResult<Option<(i32, i64)>> {
        Ok(sqlx::query_as(
            r#"select seq, first_line from log_chunks
               where log_id = $1 and first_line <= $2 and first_line + num_lines > $2
               order by seq limit 1"#,
        )
        .bind(log_id)
        .bind(line)
        .fetch_optional(&self.reads)
        .await?)
    }

    pub async fn log_chunk(&self, log_id: i64, seq: i32) -> StoreResult<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar("select content from log_chunks where log_id = $1 and seq = $2")
            .bind(log_id)
            .bind(seq)
            .fetch_optional(&self.reads)
            .await?)
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

    /// A build's builder name and when its request was accepted.
    pub async fn build_origin(&self, build_id: i64) -> StoreResult<Option<(String, DateTime<Utc>)>> {
        Ok(sqlx::query_as(
            r#"select bu.name, r.submitted_at
               from builds b join buildrequests r on r.id = b.buildrequest_id join builders bu on bu.id = b.builder_id
               where b.id = $1"#,
        )
        .bind(build_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Builder names by id, including builders no longer configured.
    pub async fn builder_names(&self) -> StoreResult<BTreeMap<i32, String>> {
        let rows: Vec<(i32, String)> = sqlx::query_as("select id, name from builders").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().collect())
    }
}

/// Streams `log_chunks.content` in order, fetching a few rows per round trip.
fn async_stream_chunks(
    pool: PgPool,
    log_id: i64,
    from_seq: i32,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, sqlx::Error>> + Send + 'static {
    const ROWS_PER_FETCH: i64 = 4;
    futures_util::stream::try_unfold(Some(from_seq), move |next_seq| {
        let pool = pool.clone();
        async move {
            let Some(next_seq) = next_seq else { return Ok::<_, sqlx::Error>(None) };
            let rows: Vec<(i32, Vec<u8>)> = sqlx::query_as(
                "select seq, content from log_chunks where log_id = $1 and seq >= $2 order by seq limit $3",
            )
            .bind(log_id)
            .bind(next_seq)
            .bind(ROWS_PER_FETCH)
            .fetch_all(&pool)
            .await?;
            if rows.is_empty() {
                return Ok(None);
            }
            let following =
                (rows.len() as i64 == ROWS_PER_FETCH).then(|| rows.last().map(|(seq, _)| seq + 1)).flatten();
            let contents: Vec<Vec<u8>> = rows.into_iter().map(|(_, content)| content).collect();
            Ok(Some((contents, following)))
        }
    })
    .map_ok(|contents| futures_util::stream::iter(contents.into_iter().map(Ok)))
    .try_flatten()
}

use futures_util::TryStreamExt;

/// Creates the database named in `url` when it does not exist, then applies
/// every migration not yet applied. Returns how many were applied now.
pub async fn upgrade(url: &str) -> StoreResult<usize> {
    use sqlx::ConnectOptions;
    use sqlx::postgres::PgConnectOptions;

    let options: PgConnectOptions = url.parse()?;
    if let Some(database) = options.get_database().map(str::to_owned) {
        let mut admin = options.clone().database("postgres").connect().await?;
        let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&database)
            .fetch_one(&mut admin)
            .await?;
        if !exists {
            let quoted = database.replace('"', "\"\"");
            // The name comes from the operator's own settings and is quoted.
            sqlx::query(sqlx::AssertSqlSafe(format!("create database \"{quoted}\""))).execute(&mut admin).await?;
            tracing::info!(database = %database, "database created");
        }
    }
    let mut connection = options.connect().await?;
    let before: i64 = if sqlx::query_scalar::<_, bool>("select to_regclass('_sqlx_migrations') is not null")
        .fetch_one(&mut connection)
        .await?
    {
        sqlx::query_scalar("select count(*) from _sqlx_migrations").fetch_one(&mut connection).await?
    } else {
        0
    };
    shared::MIGRATOR.run(&mut connection).await.map_err(|e| StoreError::Database(e.into()))?;
    let after: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations").fetch_one(&mut connection).await?;
    Ok((after - before) as usize)
}
