//! What the console view reads: the newest changes of a branch (pushes and
//! polled commits; pull requests have consoles of their own on GitHub),
//! and every build started for them or for a later change, so each change
//! can be matched with the first build of each builder that included it.

use chrono::{DateTime, Utc};
use shared::ids::{BuildId, BuilderId, ChangeId};
use sqlx::FromRow;

use super::{Store, StoreResult};

/// Categories of changes that are not a branch's history.
const NOT_HISTORY: [&str; 2] = ["pull_request", "comment"];

#[derive(Debug, Clone, FromRow)]
pub struct ConsoleChange {
    pub id: ChangeId,
    pub author: String,
    pub comments: String,
    pub revision: String,
    pub repository: String,
    pub branch: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct ConsoleBuild {
    pub builder_id: BuilderId,
    pub build_id: BuildId,
    pub number: i32,
    pub results: Option<i16>,
    /// The change its buildset was started for.
    pub change_id: ChangeId,
    pub repository: String,
    pub branch: String,
}

impl Store {
    /// The newest `limit` changes (of `branch`, or of every branch), newest
    /// first, and the builds (of `builders`, or of every builder) started
    /// for them or for later changes.
    pub async fn console(
        &self,
        branch: Option<&str>,
        builders: Option<&[BuilderId]>,
        limit: i64,
    ) -> StoreResult<(Vec<ConsoleChange>, Vec<ConsoleBuild>)> {
        let changes: Vec<ConsoleChange> = sqlx::query_as(
            r#"select id, author, comments, revision, repository, branch, created_at from changes
               where category <> all($1) and ($2::text is null or branch = $2)
               order by id desc limit $3"#,
        )
        .bind(&NOT_HISTORY[..])
        .bind(branch)
        .bind(limit)
        .fetch_all(&self.reads)
        .await?;
        let Some(oldest) = changes.last().map(|change| change.id) else {
            return Ok((changes, Vec::new()));
        };
        let builds = sqlx::query_as(
            r#"select b.builder_id, b.id as build_id, b.number, b.results, s.change_id, c.repository, c.branch
               from buildsets s
               join changes c on c.id = s.change_id
               join buildrequests r on r.buildset_id = s.id
               join builds b on b.buildrequest_id = r.id
               where s.change_id >= $1 and c.category <> all($2) and ($3::text is null or c.branch = $3)
                 and ($4::int[] is null or r.builder_id = any($4))"#,
        )
        .bind(oldest)
        .bind(&NOT_HISTORY[..])
        .bind(branch)
        .bind(builders.map(|ids| ids.iter().map(|id| id.0).collect::<Vec<i32>>()))
        .fetch_all(&self.reads)
        .await?;
        Ok((changes, builds))
    }
}
