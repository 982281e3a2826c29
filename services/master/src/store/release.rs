//! What the release status board reads: for each of a set of builders, its
//! newest finished build of a branch, and since when it has been red (the
//! first build of its current failing run), looking back over the
//! builder's newest builds only, by index, however long its history.

use chrono::{DateTime, Utc};
use shared::ids::{BuildId, BuilderId};
use sqlx::FromRow;

use super::test_history::TEST_HISTORY_BUILDS;
use super::{Store, StoreResult};

/// A builder's standing on a branch.
#[derive(Debug, Clone, FromRow)]
pub struct BranchStanding {
    pub builder_id: BuilderId,
    pub build_id: BuildId,
    pub number: i32,
    pub results: Option<i16>,
    pub complete_at: DateTime<Utc>,
    pub revision: Option<String>,
    /// When red: the first build of the failing run, and when it ended.
    pub red_since_number: Option<i32>,
    pub red_since: Option<DateTime<Utc>>,
}

impl Store {
    /// Each of `builders`' newest finished build of `branch` (builders that
    /// built none lately are left out), with the start of its red run.
    pub async fn branch_standings(&self, builders: &[BuilderId], branch: &str) -> StoreResult<Vec<BranchStanding>> {
        Ok(sqlx::query_as(
            r#"with recent as materialized (
                   select b.id, b.builder_id, b.number, b.results, b.complete_at,
                          b.properties -> 'revision' ->> 0 as revision
                   from unnest($1::int[]) as bl(id)
                   cross join lateral (
                       select id, builder_id, number, results, complete_at, properties from builds
                       where builder_id = bl.id and complete_at is not null
                       order by number desc limit $3
                   ) b
                   where b.properties -> 'branch' ->> 0 = $2
               ), latest as (
                   select distinct on (builder_id) * from recent order by builder_id, number desc
               )
               select l.builder_id, l.id as build_id, l.number, l.results, l.complete_at, l.revision,
                      red.number as red_since_number, red.complete_at as red_since
               from latest l
               left join lateral (
                   -- The oldest build after the newest one that was not red.
                   select r.number, r.complete_at from recent r
                   where r.builder_id = l.builder_id and l.results in (2, 4)
                     and r.number > coalesce((select max(g.number) from recent g
                                              where g.builder_id = l.builder_id and g.results not in (2, 4)), -1)
                   order by r.number limit 1
               ) red on true
               order by l.builder_id"#,
        )
        .bind(builders)
        .bind(branch)
        .bind(TEST_HISTORY_BUILDS)
        .fetch_all(&self.reads)
        .await?)
    }

    /// The names of the steps that failed in each of `builds`.
    pub async fn failed_steps(&self, builds: &[BuildId]) -> StoreResult<Vec<(BuildId, String)>> {
        Ok(sqlx::query_as(
            "select build_id, name from steps where build_id = any($1) and results in (2, 4) order by build_id, number",
        )
        .bind(builds)
        .fetch_all(&self.reads)
        .await?)
    }
}
