//! Changes (a push, a pull request, a poller's new commit) and what they
//! start: a change and its buildsets are written in one transaction, once
//! per delivery; schedulers that wait for a quiet branch hold the newest
//! change until it is; dependent schedulers follow finished buildsets.

use shared::ids::{BuildId, BuildsetId, ChangeId};
use sqlx::FromRow;

use super::buildsets::{CreatedBuildset, NewBuildset, OwnedBuildset};
use super::{Store, StoreResult};

/// A change a change source reported.
pub struct NewChange<'a> {
    /// The source's id of the delivery (GitHub's `X-GitHub-Delivery`).
    pub delivery: Option<&'a str>,
    /// The SHA-256 of the delivered body, when it was signed: the same body
    /// under another id is the same delivery.
    pub payload_sha256: Option<&'a [u8]>,
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

/// A change whose branch became quiet for its scheduler.
#[derive(Debug, FromRow)]
pub struct StableChange {
    pub scheduler: String,
    pub change_id: ChangeId,
    pub repository: String,
    pub branch: String,
    pub revision: String,
    pub author: String,
    pub comments: String,
    pub category: String,
}

impl Store {
    /// Records a change and the buildsets it causes, in one transaction,
    /// so a change acknowledged to its source is never lost and never
    /// half-scheduled. Schedulers in `deferred` (name, seconds) hold the
    /// change until its branch is quiet. A delivery recorded before (by its
    /// id, or by its body) changes nothing (`None`).
    pub async fn record_change(
        &self,
        change: &NewChange<'_>,
        buildsets: Vec<NewBuildset<'_>>,
        deferred: &[(String, u64)],
        actions: &[(&str, serde_json::Value)],
    ) -> StoreResult<Option<(ChangeId, Vec<CreatedBuildset>)>> {
        let mut tx = self.pool.begin().await?;
        let change_id: Option<ChangeId> = sqlx::query_scalar(
            r#"insert into changes (delivery, source, repository, branch, revision, author, comments, files, category,
                                   payload_sha256)
               values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               on conflict do nothing
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
        .bind(change.payload_sha256)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(change_id) = change_id else {
            return Ok(None);
        };
        let mut created = Vec::with_capacity(buildsets.len());
        for buildset in buildsets {
            created.extend(Self::create_buildset_on(&mut *tx, buildset).await?);
        }
        Self::link_change(&mut tx, change_id, &created).await?;
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
        if let Some(delivery) = change.delivery {
            Self::add_actions(&mut tx, delivery, actions).await?;
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
    ) -> StoreResult<Vec<CreatedBuildset>> {
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
               select taken.scheduler, c.id as change_id, c.repository, c.branch, c.revision, c.author,
                      c.comments, c.category
               from taken join changes c on c.id = taken.change_id"#,
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut created = Vec::new();
        for change in &due {
            if let Some(buildset) = build(change) {
                let made: Vec<CreatedBuildset> =
                    Self::create_buildset_on(&mut *tx, buildset.as_new(None)).await?.into_iter().collect();
                Self::link_change(&mut tx, change.change_id, &made).await?;
                created.extend(made);
            }
        }
        tx.commit().await?;
        Ok(created)
    }

    /// Notes that `buildsets` were started for `change`.
    async fn link_change(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        change: ChangeId,
        buildsets: &[CreatedBuildset],
    ) -> StoreResult<()> {
        if buildsets.is_empty() {
            return Ok(());
        }
        let ids: Vec<BuildsetId> = buildsets.iter().map(|buildset| buildset.id).collect();
        sqlx::query("update buildsets set change_id = $1 where id = any($2)")
            .bind(change)
            .bind(&ids)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Buildsets of `upstream` finished in the last hour with SUCCESS or
    /// WARNINGS that `scheduler` has not followed yet: (id, properties).
    pub async fn unfollowed_buildsets(
        &self,
        upstream: &str,
        scheduler: &str,
    ) -> StoreResult<Vec<(BuildsetId, serde_json::Value)>> {
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

    /// A build's blamelist: the changes of its branch since its builder's
    /// previous build of that branch, up to its own change (only its own
    /// when there was none before); at most 200, oldest first.
    pub async fn blamelist(&self, build: BuildId) -> StoreResult<Vec<ChangeId>> {
        Ok(sqlx::query_scalar(
            r#"with this as (
                   select b.builder_id, b.number, s.change_id, c.repository, c.branch
                   from builds b
                   join buildrequests r on r.id = b.buildrequest_id
                   join buildsets s on s.id = r.buildset_id
                   join changes c on c.id = s.change_id
                   where b.id = $1
               ), previous as (
                   select max(s.change_id) as change_id
                   from this
                   join builds b on b.builder_id = this.builder_id and b.number < this.number
                   join buildrequests r on r.id = b.buildrequest_id
                   join buildsets s on s.id = r.buildset_id
                   join changes c on c.id = s.change_id
                   where c.repository = this.repository and c.branch = this.branch and s.change_id < this.change_id
               )
               select c.id from this, previous, changes c
               where c.repository = this.repository and c.branch = this.branch
                 and c.id <= this.change_id and c.id > coalesce(previous.change_id, this.change_id - 1)
               order by c.id desc limit 200"#,
        )
        .bind(build)
        .fetch_all(&self.reads)
        .await?
        .into_iter()
        .rev()
        .collect())
    }

    /// A change's message (its commit's, or a pull request's title).
    pub async fn change_comments(&self, change: ChangeId) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("select comments from changes where id = $1")
            .bind(change)
            .fetch_optional(&self.reads)
            .await?)
    }

    /// The builds a change started (through its buildsets), oldest first.
    pub async fn builds_of_change(&self, change: ChangeId) -> StoreResult<Vec<BuildId>> {
        Ok(sqlx::query_scalar(
            r#"select b.id from buildsets s
               join buildrequests r on r.buildset_id = s.id
               join builds b on b.buildrequest_id = r.id
               where s.change_id = $1
               order by b.id"#,
        )
        .bind(change)
        .fetch_all(&self.reads)
        .await?)
    }
}
