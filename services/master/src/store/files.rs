//! The files steps sent: test result sets read from JUnit XML (rows in
//! `test_result_sets` and `test_results`, written in batches while the file
//! streams), and artifacts (`artifacts` with their compressed
//! `artifact_chunks`, read back one page of chunks at a time).

use chrono::{DateTime, Utc};
use shared::ids::{BuildId, StepId};
use sqlx::{FromRow, PgConnection};

use super::{Store, StoreResult};

/// One test's row, before it is written.
pub struct NewTestResult {
    pub name: String,
    pub code_path: Option<String>,
    pub duration_ns: Option<i64>,
    pub value: &'static str,
    pub message: Option<String>,
}

/// What a set of test results counted, once its file was read.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetCounts {
    pub passed: i64,
    pub failed: i64,
    pub skipped: i64,
    pub duration_ns: i64,
}

/// A failed test of a step, to look for in the step's log.
#[derive(Debug, Clone, FromRow)]
pub struct FailedTest {
    pub id: i64,
    pub test_name: String,
}

/// An artifact a step kept.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct Artifact {
    #[serde(rename = "artifactid")]
    pub id: i64,
    #[serde(rename = "buildid")]
    pub build_id: BuildId,
    #[serde(rename = "stepid")]
    pub step_id: StepId,
    pub name: String,
    pub bytes: i64,
    pub sha256: String,
    #[serde(with = "chrono::serde::ts_seconds")]
    pub created_at: DateTime<Utc>,
    /// When retention deleted its contents.
    #[serde(with = "chrono::serde::ts_seconds_option")]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// Chunks read per round trip when an artifact is downloaded: at most
/// 8 MiB of compressed bytes.
pub const ARTIFACT_CHUNKS_PER_PAGE: i64 = 8;

impl Store {
    /// Starts the set of one result file; its counts come with `finish_result_set`.
    pub async fn begin_result_set(
        conn: &mut PgConnection,
        build_id: BuildId,
        step_id: StepId,
        description: &str,
    ) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            r#"insert into test_result_sets
                   (builder_id, build_id, step_id, description, category, value_unit, complete)
               select builder_id, id, $2, $3, 'pass_fail', 'result', false
               from builds where id = $1
               returning id"#,
        )
        .bind(build_id)
        .bind(step_id)
        .bind(description)
        .fetch_one(conn)
        .await?)
    }

    pub async fn add_test_results(conn: &mut PgConnection, set_id: i64, results: &[NewTestResult]) -> StoreResult<()> {
        let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
        let paths: Vec<Option<&str>> = results.iter().map(|r| r.code_path.as_deref()).collect();
        let durations: Vec<Option<i64>> = results.iter().map(|r| r.duration_ns).collect();
        let values: Vec<&str> = results.iter().map(|r| r.value).collect();
        let messages: Vec<Option<&str>> = results.iter().map(|r| r.message.as_deref()).collect();
        sqlx::query(
            r#"insert into test_results
                   (builder_id, test_result_set_id, test_name, test_code_path, duration_ns, value, message)
               select s.builder_id, s.id, r.name, r.path, r.duration, r.value, r.message
               from test_result_sets s,
                    unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
                        with ordinality as r(name, path, duration, value, message, position)
               where s.id = $1
               order by r.position"#,
        )
        .bind(set_id)
        .bind(names)
        .bind(paths)
        .bind(durations)
        .bind(values)
        .bind(messages)
        .execute(conn)
        .await?;
        Ok(())
    }

    pub async fn finish_result_set(conn: &mut PgConnection, set_id: i64, counts: SetCounts) -> StoreResult<()> {
        let int = |count: i64| count.min(i32::MAX as i64) as i32;
        sqlx::query(
            r#"update test_result_sets
               set tests_passed = $2, tests_failed = $3, tests_skipped = $4, duration_ns = $5, complete = true
               where id = $1"#,
        )
        .bind(set_id)
        .bind(int(counts.passed))
        .bind(int(counts.failed))
        .bind(int(counts.skipped))
        .bind(counts.duration_ns)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// The step's failed tests, first recorded first, up to `limit`.
    pub async fn failed_tests_of_step(
        conn: &mut PgConnection,
        step_id: StepId,
        limit: i64,
    ) -> StoreResult<Vec<FailedTest>> {
        Ok(sqlx::query_as(
            r#"select r.id, r.test_name
               from test_result_sets s join test_results r on r.test_result_set_id = s.id
               where s.step_id = $1 and r.value in ('fail', 'error') and coalesce(r.test_name, '') <> ''
               order by r.id
               limit $2"#,
        )
        .bind(step_id)
        .bind(limit)
        .fetch_all(conn)
        .await?)
    }

    /// Where each test (by id) first appears in its step's log.
    pub async fn set_test_log_lines(conn: &mut PgConnection, lines: &[(i64, i64)]) -> StoreResult<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let (ids, lines): (Vec<i64>, Vec<i64>) = lines.iter().copied().unzip();
        sqlx::query(
            r#"update test_results t set log_line = u.line
               from unnest($1::bigint[], $2::bigint[]) as u(id, line)
               where t.id = u.id"#,
        )
        .bind(ids)
        .bind(lines)
        .execute(conn)
        .await?;
        Ok(())
    }

    pub async fn create_artifact(
        conn: &mut PgConnection,
        build_id: BuildId,
        step_id: StepId,
        name: &str,
        bytes: u64,
        sha256: &str,
    ) -> StoreResult<i64> {
        // A step that sent the same path twice (two patterns matching it)
        // keeps it once.
        Ok(sqlx::query_scalar(
            r#"insert into artifacts (build_id, step_id, name, bytes, sha256) values ($1, $2, $3, $4, $5)
               on conflict (step_id, name) do update set bytes = excluded.bytes, sha256 = excluded.sha256
               returning id"#,
        )
        .bind(build_id)
        .bind(step_id)
        .bind(name)
        .bind(bytes as i64)
        .bind(sha256)
        .fetch_one(conn)
        .await?)
    }

    pub async fn insert_artifact_chunk(
        conn: &mut PgConnection,
        artifact_id: i64,
        seq: i32,
        raw_bytes: usize,
        content: &[u8],
    ) -> StoreResult<()> {
        sqlx::query(
            r#"insert into artifact_chunks (artifact_id, seq, raw_bytes, content) values ($1, $2, $3, $4)
               on conflict (artifact_id, seq) do update set raw_bytes = excluded.raw_bytes, content = excluded.content"#,
        )
        .bind(artifact_id)
        .bind(seq)
        .bind(raw_bytes as i32)
        .bind(content)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// An artifact's chunks are replaced when it is sent again.
    pub async fn clear_artifact_chunks(conn: &mut PgConnection, artifact_id: i64) -> StoreResult<()> {
        sqlx::query("delete from artifact_chunks where artifact_id = $1").bind(artifact_id).execute(conn).await?;
        Ok(())
    }

    pub async fn artifacts_of_build(&self, build_id: BuildId) -> StoreResult<Vec<Artifact>> {
        Ok(sqlx::query_as(
            r#"select id, build_id, step_id, name, bytes, sha256, created_at, deleted_at
               from artifacts where build_id = $1 order by step_id, name"#,
        )
        .bind(build_id)
        .fetch_all(&self.reads)
        .await?)
    }

    pub async fn artifact(&self, artifact_id: i64) -> StoreResult<Option<Artifact>> {
        Ok(sqlx::query_as(
            r#"select id, build_id, step_id, name, bytes, sha256, created_at, deleted_at
               from artifacts where id = $1"#,
        )
        .bind(artifact_id)
        .fetch_optional(&self.reads)
        .await?)
    }

    /// Compressed chunks of an artifact after `after_seq`, in order.
    pub async fn artifact_chunks(&self, artifact_id: i64, after_seq: i32) -> StoreResult<Vec<(i32, Vec<u8>)>> {
        Ok(sqlx::query_as(
            r#"select seq, content from artifact_chunks
               where artifact_id = $1 and seq > $2 order by seq limit $3"#,
        )
        .bind(artifact_id)
        .bind(after_seq)
        .bind(ARTIFACT_CHUNKS_PER_PAGE)
        .fetch_all(&self.reads)
        .await?)
    }
}
