//! Logs as Postgres keeps them: a row per log of a step, and its archived
//! contents in compressed chunks (`crate::logs` makes and reads them),
//! streamed a few rows at a time so a download of any size holds one chunk
//! in memory.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use futures_util::stream::BoxStream;
use shared::ids::{BuildId, LogId, StepId, WorkerName};
use sqlx::FromRow;
use sqlx::postgres::PgPool;

use super::{Store, StoreResult};

#[derive(Debug, FromRow, Clone)]
pub struct LogRow {
    pub id: LogId,
    pub step_id: StepId,
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
    pub build_id: BuildId,
    pub step_number: i32,
    pub worker_name: WorkerName,
}

/// One archived piece of a log, ready to insert.
pub struct ArchivedChunk {
    pub seq: i32,
    pub first_line: i64,
    pub num_lines: i64,
    pub raw_bytes: i32,
    pub content: Vec<u8>,
}

impl Store {
    /// Whether more output may still come to a log: `Archived` with its
    /// printed size, `Abandoned` when its build ended without archiving it
    /// (the worker was lost), else `Running`.
    pub async fn log_state(&self, log_id: LogId) -> StoreResult<LogState> {
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

    pub async fn log_location(&self, log_id: LogId) -> StoreResult<Option<LogLocation>> {
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
    pub fn log_chunks(&self, log_id: LogId) -> BoxStream<'static, Result<Vec<u8>, sqlx::Error>> {
        self.log_chunks_from(log_id, 0)
    }

    /// The archived chunks of a log from chunk `seq` on.
    pub fn log_chunks_from(&self, log_id: LogId, seq: i32) -> BoxStream<'static, Result<Vec<u8>, sqlx::Error>> {
        Box::pin(stream_chunks(self.reads.clone(), log_id, seq))
    }

    /// The chunk in which line `line` of an archived log starts, as
    /// `(seq, first_line)`; none for a line past the end.
    pub async fn chunk_holding_line(&self, log_id: LogId, line: i64) -> StoreResult<Option<(i32, i64)>> {
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

    pub async fn log_chunk(&self, log_id: LogId, seq: i32) -> StoreResult<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar("select content from log_chunks where log_id = $1 and seq = $2")
            .bind(log_id)
            .bind(seq)
            .fetch_optional(&self.reads)
            .await?)
    }
}

/// Streams `log_chunks.content` in order, fetching a few rows per round trip.
fn stream_chunks(
    pool: PgPool,
    log_id: LogId,
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
