//! Tests across builds: which ones fail now on a branch, since which build
//! (and which build last ran them without failing), and which ones are
//! flaky, meaning they failed on a builder at a revision where another
//! build of the same builder and revision ran them without that failure (a
//! rebuild that passed, or a failure that came without a change). Read
//! from the test result sets the builds' steps recorded, over a bounded
//! window of recent builds.

use shared::ids::{BuildId, BuilderId};
use sqlx::FromRow;

use super::{Store, StoreResult};

/// How many of each builder's newest builds the views across builds look
/// at: a builder's recent history, read by index, however long its whole
/// history is.
pub const TEST_HISTORY_BUILDS: i64 = 200;

/// How many of each builder's newest builds are searched for flaky tests:
/// fewer, as every builder's are read at once.
pub const FLAKY_HISTORY_BUILDS: i64 = 50;

/// A test that failed and passed on the same builder and revision.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct FlakyTest {
    pub test_name: String,
    #[serde(rename = "builderid")]
    pub builder_id: BuilderId,
    /// Builds in the window in which it failed at a revision it also
    /// passed at.
    pub failures: i64,
    /// Epoch seconds, as the API gives times.
    pub last_failed_at: i64,
}

/// A test failing in the newest build of a branch on a builder.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct FailingTest {
    pub test_name: String,
    #[serde(rename = "builderid")]
    pub builder_id: BuilderId,
    /// The newest build of the branch on that builder, in which it failed.
    #[serde(rename = "buildid")]
    pub build_id: BuildId,
    pub number: i32,
    /// What it said there, if it said something.
    pub message: Option<String>,
    /// Builds of the builder since the one where it broke, that one
    /// included.
    pub failing_builds: i64,
    /// The first build of that run: where it broke.
    pub first_failed_buildid: BuildId,
    pub first_failed_number: i32,
    pub first_failed_revision: Option<String>,
    /// Epoch seconds.
    pub first_failed_at: i64,
    /// The newest build before that run which ran it without failing; none
    /// when it failed in every build of the window.
    pub last_passed_buildid: Option<BuildId>,
    pub last_passed_number: Option<i32>,
    pub last_passed_revision: Option<String>,
}

impl Store {
    /// Tests failing in the newest build of `branch` on each builder, among
    /// its newest `TEST_HISTORY_BUILDS` builds finished in the last `days`,
    /// the most recently broken first.
    pub async fn failing_tests(&self, branch: &str, days: u32, limit: i64) -> StoreResult<Vec<FailingTest>> {
        Ok(sqlx::query_as(
            r#"with latest as materialized (
                   -- Each builder's newest build of the branch with test
                   -- results: an index walk back that stops at the first.
                   select x.id, x.builder_id, x.number
                   from builders bl
                   cross join lateral (
                       select b.id, b.builder_id, b.number
                       from (select id, builder_id, number, complete_at, properties from builds
                             where builder_id = bl.id and complete_at is not null
                             order by number desc limit $4) b
                       where b.complete_at > now() - make_interval(days => $2)
                         and coalesce(b.properties -> 'branch' ->> 0, '') = $1
                         and exists (select 1 from test_result_sets s where s.build_id = b.id)
                       order by b.number desc
                       limit 1
                   ) x
               ),
               failing as (
                   select distinct on (r.test_name, l.builder_id)
                          r.test_name, l.builder_id, l.id as build_id, l.number, r.message
                   from latest l
                   join test_result_sets s on s.build_id = l.id
                   join test_results r on r.test_result_set_id = s.id
                   where r.value in ('fail', 'error') and coalesce(r.test_name, '') <> ''
                   order by r.test_name, l.builder_id, r.id
               ),
               -- For each, the newest earlier build of its builder and
               -- branch with test results that do not hold it: an index
               -- walk back that stops there.
               passed as (
                   select f.test_name, f.builder_id, p.id, p.number, p.revision
                   from failing f
                   cross join lateral (
                       select b.id, b.number, b.properties -> 'revision' ->> 0 as revision
                       from (select id, number, properties from builds
                             where builder_id = f.builder_id and number < f.number and complete_at is not null
                             order by number desc limit $4) b
                       where coalesce(b.properties -> 'branch' ->> 0, '') = $1
                         and exists (select 1 from test_result_sets s where s.build_id = b.id)
                         and not exists (
                             select 1 from test_result_sets s
                             join test_results r on r.test_result_set_id = s.id
                             where s.build_id = b.id and r.test_name = f.test_name and r.value in ('fail', 'error'))
                       order by b.number desc
                       limit 1
                   ) p
               )
               select f.test_name, f.builder_id, f.build_id, f.number, f.message,
                      (f.number - first.number + 1)::int8 as failing_builds,
                      first.id as first_failed_buildid, first.number as first_failed_number,
                      first.revision as first_failed_revision,
                      floor(extract(epoch from first.complete_at))::bigint as first_failed_at,
                      p.id as last_passed_buildid, p.number as last_passed_number,
                      p.revision as last_passed_revision
               from failing f
               left join passed p on p.test_name = f.test_name and p.builder_id = f.builder_id
               -- The build after the last pass: where it broke.
               cross join lateral (
                   select b.id, b.number, b.complete_at, b.properties -> 'revision' ->> 0 as revision
                   from builds b
                   where b.builder_id = f.builder_id and b.complete_at is not null
                     and b.number > coalesce(p.number, f.number - $4) and b.number <= f.number
                     and coalesce(b.properties -> 'branch' ->> 0, '') = $1
                     and exists (select 1 from test_result_sets s where s.build_id = b.id)
                   order by b.number
                   limit 1
               ) first
               order by first.complete_at desc, f.test_name, f.builder_id
               limit $3"#,
        )
        .bind(branch)
        .bind(days as i32)
        .bind(limit)
        .bind(TEST_HISTORY_BUILDS)
        .fetch_all(&self.reads)
        .await?)
    }

    /// The branches of each builder's newest builds with test results
    /// finished in the last `days`, the most recently built first.
    pub async fn tested_branches(&self, days: u32) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            r#"select coalesce(x.properties -> 'branch' ->> 0, '') as branch
               from builders bl
               cross join lateral (
                   select b.id, b.complete_at, b.properties from builds b
                   where b.builder_id = bl.id and b.complete_at is not null
                   order by b.number desc
                   limit 10
               ) x
               where x.complete_at > now() - make_interval(days => $1)
                 and exists (select 1 from test_result_sets s where s.build_id = x.id)
               group by 1
               order by max(x.complete_at) desc
               limit 100"#,
        )
        .bind(days as i32)
        .fetch_all(&self.reads)
        .await?)
    }

    /// Flaky tests among each builder's newest `FLAKY_HISTORY_BUILDS`
    /// builds finished in the last `days` (of one builder, or all), the most
    /// recently failed first.
    pub async fn flaky_tests(&self, days: u32, limit: i64, builder: Option<BuilderId>) -> StoreResult<Vec<FlakyTest>> {
        Ok(sqlx::query_as(
            r#"with recent as materialized (
                   select x.id, x.builder_id, x.complete_at, x.properties -> 'revision' ->> 0 as revision
                   from builders bl
                   cross join lateral (
                       select b.id, b.builder_id, b.complete_at, b.properties
                       from builds b
                       where b.builder_id = bl.id and b.complete_at is not null
                       order by b.number desc
                       limit $4
                   ) x
                   where ($3::int is null or bl.id = $3)
                     and x.complete_at > now() - make_interval(days => $1)
                     and coalesce(x.properties -> 'revision' ->> 0, '') <> ''
               ),
               failed as (
                   select r.test_name, c.builder_id, c.id as build_id, c.complete_at, c.revision
                   from recent c
                   join test_result_sets s on s.build_id = c.id
                   join test_results r on r.test_result_set_id = s.id and r.value in ('fail', 'error')
                   where r.test_name is not null
               ),
               -- A failure, and another build of its builder and revision
               -- with test results that do not hold it.
               flaky as (
                   select distinct f.test_name, f.builder_id, f.build_id, f.complete_at
                   from failed f
                   join recent p on p.builder_id = f.builder_id and p.revision = f.revision and p.id <> f.build_id
                   join test_result_sets ps on ps.build_id = p.id
                   where not exists (
                       select 1 from test_results pr
                       where pr.test_result_set_id = ps.id and pr.test_name = f.test_name
                         and pr.value in ('fail', 'error'))
               )
               select test_name, builder_id, count(*) as failures,
                      floor(extract(epoch from max(complete_at)))::bigint as last_failed_at
               from flaky
               group by test_name, builder_id
               order by last_failed_at desc, test_name
               limit $2"#,
        )
        .bind(days as i32)
        .bind(limit)
        .bind(builder)
        .bind(FLAKY_HISTORY_BUILDS)
        .fetch_all(&self.reads)
        .await?)
    }
}
