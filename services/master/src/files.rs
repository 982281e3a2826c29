//! What a master does with the files a step sent (the worker's `files`
//! module sends them): while it records the step's end, in the same
//! transaction, it reads each file's Redis stream page by page, JUnit XML
//! into test results as it streams, an artifact into compressed chunks.
//!
//! A file that cannot be used (not JUnit XML, cut short, lost from Redis)
//! leaves nothing behind: its rows are rolled back to a savepoint, and a
//! line saying why is added to the end of the step's log. The rest of the
//! step is recorded as it would be without it. Only an unreachable Redis or
//! database fails the event, to be tried again.

use std::io;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use shared::ids::{BuildId, StepId};
use shared::names::Namespace;
use shared::wire::{FileKind, FileRecord};
use sqlx::{Acquire, Postgres, Transaction};
use tokio_util::io::StreamReader;

use crate::junit::{JunitError, JunitReader, Outcome};
use crate::logs::{self, ENTRIES_PER_PAGE, LogError, ZSTD_LEVEL};
use crate::store::{NewTestResult, SetCounts, Store, StoreError};

/// Test results written per statement.
const RESULTS_PER_INSERT: usize = 1000;
/// Raw bytes of an artifact per compressed chunk.
const ARTIFACT_CHUNK_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("chunk {seq} of artifact {artifact_id} is corrupt: {reason}")]
    Corrupt { artifact_id: i64, seq: i32, reason: String },
}

impl From<sqlx::Error> for FileError {
    fn from(error: sqlx::Error) -> Self {
        FileError::Store(error.into())
    }
}

/// Where a step's files are, and whose they are.
pub struct StepFiles<'a> {
    pub namespace: &'a Namespace,
    pub worker: &'a str,
    pub build_id: BuildId,
    pub step_number: i32,
    pub step_id: StepId,
}

/// What receiving a step's files came to.
#[derive(Default)]
pub struct Received {
    /// Lines for the end of the step's log.
    pub notes: Vec<String>,
    /// The Redis streams read, to delete once the transaction committed.
    pub keys: Vec<String>,
}

/// Reads every file of `files` into the store, inside `tx`.
pub async fn receive(
    redis: &mut ConnectionManager,
    tx: &mut Transaction<'static, Postgres>,
    step: StepFiles<'_>,
    files: &[FileRecord],
) -> Result<Received, FileError> {
    let mut received = Received::default();
    for file in files {
        let key = step.namespace.file_stream_key(step.worker, step.build_id, step.step_number, file.index);
        received.keys.push(key.clone());
        let found = stream_length(redis, &key).await?;
        let note = if found != file.entries {
            Some(format!(
                "{}: `{}` was lost on its way ({found} of its {} parts reached the masters); not kept",
                what(file.kind),
                file.path,
                file.entries
            ))
        } else {
            match file.kind {
                FileKind::TestResults => read_results(redis, tx, &step, file, &key).await?,
                FileKind::Artifact => keep_artifact(redis, tx, &step, file, &key).await?,
            }
        };
        received.notes.extend(note);
    }
    Ok(received)
}

fn what(kind: FileKind) -> &'static str {
    match kind {
        FileKind::TestResults => "test results",
        FileKind::Artifact => "artifacts",
    }
}

/// Reads one JUnit file into a test result set; returns the line that says
/// how it went.
async fn read_results(
    redis: &ConnectionManager,
    tx: &mut Transaction<'static, Postgres>,
    step: &StepFiles<'_>,
    file: &FileRecord,
    key: &str,
) -> Result<Option<String>, FileError> {
    let mut savepoint = tx.begin().await?;
    let set_id = Store::begin_result_set(&mut savepoint, step.build_id, step.step_id, &file.path).await?;
    let mut reader = JunitReader::new(StreamReader::new(Box::pin(file_bytes(redis.clone(), key.to_owned()))));
    let mut counts = SetCounts::default();
    let mut batch = Vec::with_capacity(RESULTS_PER_INSERT);
    loop {
        let case = match reader.next_case().await {
            Ok(Some(case)) => case,
            Ok(None) => break,
            Err(JunitError::Read(problem)) => {
                return Err(LogError::Redis { key: key.to_owned(), source: io::Error::other(problem).into() }.into());
            }
            Err(problem) => {
                savepoint.rollback().await?;
                return Ok(Some(format!("test results: `{}` {problem}; nothing of it was kept", file.path)));
            }
        };
        match case.outcome {
            Outcome::Pass => counts.passed += 1,
            Outcome::Fail | Outcome::Error => counts.failed += 1,
            Outcome::Skip => counts.skipped += 1,
        }
        counts.duration_ns = counts.duration_ns.saturating_add(case.duration_ns.unwrap_or(0));
        batch.push(NewTestResult {
            name: case.name,
            code_path: case.code_path,
            duration_ns: case.duration_ns,
            value: case.outcome.value(),
            message: case.message,
        });
        if batch.len() == RESULTS_PER_INSERT {
            Store::add_test_results(&mut savepoint, set_id, &batch).await?;
            batch.clear();
        }
    }
    Store::add_test_results(&mut savepoint, set_id, &batch).await?;
    Store::finish_result_set(&mut savepoint, set_id, counts).await?;
    savepoint.commit().await?;
    let total = counts.passed + counts.failed + counts.skipped;
    Ok(Some(format!(
        "test results: read `{}`: {total} tests, {} failed, {} skipped",
        file.path, counts.failed, counts.skipped
    )))
}

/// Keeps one artifact, compressed, checking it arrived as the worker read
/// it; returns a line only when it could not be kept.
async fn keep_artifact(
    redis: &ConnectionManager,
    tx: &mut Transaction<'static, Postgres>,
    step: &StepFiles<'_>,
    file: &FileRecord,
    key: &str,
) -> Result<Option<String>, FileError> {
    let mut savepoint = tx.begin().await?;
    let id = Store::create_artifact(&mut savepoint, step.build_id, step.step_id, &file.path, file.bytes, &file.sha256)
        .await?;
    Store::clear_artifact_chunks(&mut savepoint, id).await?;
    let mut pieces = std::pin::pin!(file_bytes(redis.clone(), key.to_owned()));
    let mut hasher = Sha256::new();
    let (mut raw, mut seq, mut total) = (Vec::with_capacity(ARTIFACT_CHUNK_BYTES), 0, 0u64);
    loop {
        let piece =
            pieces.try_next().await.map_err(|error| LogError::Redis { key: key.to_owned(), source: error.into() })?;
        let done = piece.is_none();
        if let Some(piece) = piece {
            hasher.update(&piece);
            total += piece.len() as u64;
            raw.extend_from_slice(&piece);
        }
        if raw.len() >= ARTIFACT_CHUNK_BYTES || (done && !raw.is_empty()) {
            let content = zstd::bulk::compress(&raw, ZSTD_LEVEL).expect("compressing into memory cannot fail");
            Store::insert_artifact_chunk(&mut savepoint, id, seq, raw.len(), &content).await?;
            seq += 1;
            raw.clear();
        }
        if done {
            break;
        }
    }
    let sha256 = format!("{:x}", hasher.finalize());
    if total != file.bytes || sha256 != file.sha256 {
        savepoint.rollback().await?;
        return Ok(Some(format!(
            "artifacts: `{}` arrived different from what the worker sent ({total} of {} bytes, SHA-256 {sha256}); not kept",
            file.path, file.bytes
        )));
    }
    savepoint.commit().await?;
    Ok(None)
}

/// An artifact's bytes, decompressed a page of chunks at a time.
pub fn artifact_bytes(store: Store, artifact_id: i64) -> impl Stream<Item = Result<Bytes, FileError>> {
    futures_util::stream::try_unfold((store, -1), move |(store, after)| async move {
        let page = store.artifact_chunks(artifact_id, after).await?;
        let Some(&(last, _)) = page.last() else { return Ok(None) };
        let mut bytes = Vec::new();
        for (seq, content) in &page {
            let raw = zstd::stream::decode_all(&content[..]).map_err(|error| FileError::Corrupt {
                artifact_id,
                seq: *seq,
                reason: error.to_string(),
            })?;
            bytes.extend_from_slice(&raw);
        }
        Ok(Some((Bytes::from(bytes), (store, last))))
    })
}

async fn stream_length(redis: &mut ConnectionManager, key: &str) -> Result<u64, FileError> {
    Ok(redis::cmd("XLEN")
        .arg(key)
        .query_async(redis)
        .await
        .map_err(|source| LogError::Redis { key: key.to_owned(), source })?)
}

/// A file's bytes from its stream, a page of entries at a time.
fn file_bytes(redis: ConnectionManager, key: String) -> impl Stream<Item = io::Result<Bytes>> {
    futures_util::stream::try_unfold(
        (redis, key, String::from("-"), false),
        |(mut redis, key, after, done)| async move {
            if done {
                return Ok(None);
            }
            let page = logs::read_stream_page(&mut redis, &key, &after, ENTRIES_PER_PAGE)
                .await
                .map_err(|error| io::Error::other(error.to_string()))?;
            let Some((last, _)) = page.last() else { return Ok(None) };
            let last = last.clone();
            let done = page.len() < ENTRIES_PER_PAGE;
            let mut bytes = Vec::with_capacity(page.iter().map(|(_, record)| record.data.len()).sum());
            for (_, record) in page {
                bytes.extend_from_slice(&record.data);
            }
            Ok(Some((Bytes::from(bytes), (redis, key, last, done))))
        },
    )
}
