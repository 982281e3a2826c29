//! Tests across builds: which ones are flaky, meaning they failed on a
//! builder at a revision where another build of the same builder and
//! revision ran them without that failure (a rebuild that passed, or a
//! failure that came without a change). Read from the test result sets the
//! builds' steps recorded, over a bounded window of recent builds.

use shared::ids::BuilderId;
use sqlx::FromRow;

use super::{Store, StoreResult};

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

impl Store {
    /// Flaky tests among the builds finished in the last `days`, the most
    /// recently failed first.
    pub async fn flaky_tests(&self, days: u32, limit: i64) -> StoreResult<Vec<FlakyTest>> {
        Ok(sqlx::query_as(
            r#"with failed as (
                   select r.test_name, b.builder_id, b.id as build_id, b.complete_at,
                          b.properties -> 'revision' ->> 0 as revision
                   from builds b
                   join test_result_sets s on s.build_id = b.id
                   join test_results r on r.test_result_set_id = s.id and r.value in ('fail', 'error')
                   where b.complete_at > now() - make_interval(days => $1)
                     and coalesce(b.properties -> 'revision' ->> 0, '') <> ''
                     and r.test_name is not null
               )
               select f.test_name, f.builder_id, count(*) as failures,
                      floor(extract(epoch from max(f.complete_at)))::bigint as last_failed_at
               from failed f
               where exists (
                   select 1 from builds p join test_result_sets ps on ps.build_id = p.id
                   where p.builder_id = f.builder_id and p.id <> f.build_id
                     and p.properties -> 'revision' ->> 0 = f.revision
                     and not exists (
                         select 1 from test_results pr
                         where pr.test_result_set_id = ps.id and pr.test_name = f.test_name and pr.value in ('fail', 'error')))
               group by f.test_name, f.builder_id
               order by last_failed_at desc, f.test_name
               limit $2"#,
        )
        .bind(days as i32)
        .bind(limit)
        .fetch_all(&self.reads)
        .await?)
    }
}
