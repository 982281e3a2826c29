//! Sends the files a step declared (`test_results`, `artifacts`) to the
//! masters once the step has ended, each through a Redis stream of its own,
//! in entries as a log travels. A master reads the stream when it records
//! the step: test results into Postgres rows, an artifact compressed beside
//! the build.
//!
//! Nothing a step leaves behind may take a file from outside the builder's
//! directory, or more room than the settings allow: a pattern that matches
//! nothing, a file over its cap, a directory, a path or symlink leading out
//! are each said in one line of the step's log, and the build goes on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use shared::names::{LOG_FIELD_CHANNEL, LOG_FIELD_DATA};
use shared::wire::{FileKind, FileLimits, FileRecord, LogChannel, Step};
use tokio::io::AsyncReadExt;

use crate::logs::LogWriter;

/// Bytes per stream entry, as for logs.
const ENTRY_BYTES: usize = 64 * 1024;
/// Entries written per round trip to Redis.
const ENTRIES_PER_BATCH: usize = 16;
/// A pattern may take this many files; a pattern that matches a whole
/// tree by mistake should not fill Redis.
const FILES_PER_PATTERN: usize = 1000;
/// The stream expires this long after its last write, in case no master
/// ever reads it.
const STREAM_TTL_SECONDS: i64 = 24 * 3600;
/// Tries of one batch before the file is given up (with a line in the log).
const SEND_TRIES: u32 = 6;

/// Where a step's files come from and go to.
pub struct StepFiles<'a> {
    pub redis: ConnectionManager,
    pub builder_dir: &'a Path,
    pub limits: FileLimits,
    /// The stream of the step's `index`th file.
    pub stream_key: &'a (dyn Fn(u32) -> String + Sync),
}

/// Sends every file the step's patterns match, saying in `log` what was
/// sent and what was refused. `artifact_bytes` counts the build's kept
/// artifacts so far, against the per-build cap.
pub async fn send(files: StepFiles<'_>, spec: &Step, log: &LogWriter, artifact_bytes: &mut u64) -> Vec<FileRecord> {
    let StepFiles { mut redis, builder_dir, limits, stream_key } = files;
    let mut records = Vec::new();
    if spec.test_results.is_empty() && spec.artifacts.is_empty() {
        return records;
    }
    let say = |line: String| async move { log.write(LogChannel::Header, format!("{line}\n").into_bytes()).await };
    let Ok(root) = tokio::fs::canonicalize(builder_dir).await else {
        say(format!("the builder's directory {} is gone; no files sent", builder_dir.display())).await;
        return records;
    };
    let workdir = builder_dir.join(&spec.workdir);
    let patterns = spec
        .test_results
        .iter()
        .map(|pattern| (FileKind::TestResults, pattern))
        .chain(spec.artifacts.iter().map(|pattern| (FileKind::Artifact, pattern)));
    for (kind, pattern) in patterns {
        let what = match kind {
            FileKind::TestResults => "test results",
            FileKind::Artifact => "artifacts",
        };
        let paths = match matching(&workdir, pattern) {
            Ok(paths) => paths,
            Err(problem) => {
                say(format!("{what}: {problem}")).await;
                continue;
            }
        };
        if paths.is_empty() {
            let problem = if is_literal(pattern) {
                format!("{what}: `{pattern}` is not there")
            } else {
                format!("{what}: `{pattern}` matched no file")
            };
            say(problem).await;
            continue;
        }
        if paths.len() > FILES_PER_PATTERN {
            say(format!(
                "{what}: `{pattern}` matched {} files; only the first {FILES_PER_PATTERN} are sent",
                paths.len()
            ))
            .await;
        }
        for path in paths.into_iter().take(FILES_PER_PATTERN) {
            let shown = path.strip_prefix(&workdir).unwrap_or(&path).display().to_string();
            if let Err(problem) = admit(&root, &path, kind, &limits, *artifact_bytes).await {
                say(format!("{what}: `{shown}` {problem}")).await;
                continue;
            }
            let index = records.len() as u32;
            let key = stream_key(index);
            match send_file(&mut redis, &key, &path).await {
                Ok((entries, bytes, sha256)) => {
                    if kind == FileKind::Artifact {
                        *artifact_bytes += bytes;
                    }
                    say(format!("{what}: sent `{shown}` ({})", shared::model::human_bytes(bytes))).await;
                    records.push(FileRecord { kind, index, path: shown, entries, bytes, sha256 });
                }
                Err(problem) => {
                    let _: Result<(), _> = redis::cmd("DEL").arg(&key).query_async(&mut redis).await;
                    say(format!("{what}: `{shown}` could not be sent: {problem}")).await;
                }
            }
        }
    }
    records
}

/// The files `pattern` matches under `workdir`, in name order.
fn matching(workdir: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    shared::config::check_file_glob(pattern)?;
    let base = glob::Pattern::escape(&workdir.to_string_lossy());
    let full = format!("{base}/{pattern}");
    let found = glob::glob(&full).map_err(|error| format!("`{pattern}` is not a file pattern: {error}"))?;
    // An unreadable directory on the way is not a match.
    Ok(found.filter_map(Result::ok).collect())
}

fn is_literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?', '['])
}

/// Why the file at `path` may not be sent, if it may not.
async fn admit(
    root: &Path,
    path: &Path,
    kind: FileKind,
    limits: &FileLimits,
    artifact_bytes: u64,
) -> Result<(), String> {
    let real = tokio::fs::canonicalize(path).await.map_err(|error| format!("cannot be read ({error}); not sent"))?;
    if !real.starts_with(root) {
        return Err("leads outside the builder's directory (a symlink out of it); refused".into());
    }
    let metadata = tokio::fs::metadata(&real).await.map_err(|error| format!("cannot be read ({error}); not sent"))?;
    if !metadata.is_file() {
        return Err("is not a regular file; not sent".into());
    }
    let size = metadata.len();
    let human = shared::model::human_bytes;
    match kind {
        FileKind::TestResults if size > limits.test_result_file_bytes => Err(format!(
            "is {}, over the cap of {} (builds.max_test_result_file_bytes); not read",
            human(size),
            human(limits.test_result_file_bytes)
        )),
        FileKind::Artifact if size > limits.artifact_bytes => Err(format!(
            "is {}, over the cap of {} (builds.max_artifact_bytes); not kept",
            human(size),
            human(limits.artifact_bytes)
        )),
        FileKind::Artifact if artifact_bytes + size > limits.artifacts_per_build_bytes => Err(format!(
            "({}) would take the build's artifacts past {} (builds.max_artifacts_per_build_bytes); not kept",
            human(size),
            human(limits.artifacts_per_build_bytes)
        )),
        _ => Ok(()),
    }
}

/// Writes the file into the stream `key` as entries `1-0`, `2-0`, …;
/// returns the entries, the bytes and their SHA-256.
async fn send_file(redis: &mut ConnectionManager, key: &str, path: &Path) -> Result<(u64, u64, String), String> {
    let mut file = tokio::fs::File::open(path).await.map_err(|error| format!("cannot be opened ({error})"))?;
    let _: Result<(), _> = redis::cmd("DEL").arg(key).query_async(redis).await;
    let mut hasher = Sha256::new();
    let (mut entries, mut bytes) = (0u64, 0u64);
    loop {
        let mut batch = Vec::with_capacity(ENTRIES_PER_BATCH);
        while batch.len() < ENTRIES_PER_BATCH {
            let mut entry = Vec::with_capacity(ENTRY_BYTES);
            let read = (&mut file)
                .take(ENTRY_BYTES as u64)
                .read_to_end(&mut entry)
                .await
                .map_err(|error| format!("reading it failed ({error})"))?;
            if read == 0 {
                break;
            }
            hasher.update(&entry);
            batch.push(entry);
        }
        if batch.is_empty() {
            break;
        }
        write_batch(redis, key, &batch, entries).await?;
        entries += batch.len() as u64;
        bytes += batch.iter().map(|entry| entry.len() as u64).sum::<u64>();
    }
    Ok((entries, bytes, format!("{:x}", hasher.finalize())))
}

/// Writes entries `written_before + 1 …`; after a failure, the entries Redis
/// already has are skipped.
async fn write_batch(
    redis: &mut ConnectionManager,
    key: &str,
    batch: &[Vec<u8>],
    written_before: u64,
) -> Result<(), String> {
    let mut delay = Duration::from_millis(100);
    let mut already = 0;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (offset, data) in batch.iter().enumerate().skip(already) {
            pipe.cmd("XADD")
                .arg(key)
                .arg(format!("{}-0", written_before + offset as u64 + 1))
                .arg(LOG_FIELD_CHANNEL)
                .arg(&[LogChannel::Stdout.code()][..])
                .arg(LOG_FIELD_DATA)
                .arg(&data[..])
                .ignore();
        }
        pipe.cmd("EXPIRE").arg(key).arg(STREAM_TTL_SECONDS).ignore();
        match pipe.query_async::<()>(redis).await {
            Ok(()) => return Ok(()),
            Err(error) if attempt == SEND_TRIES => return Err(format!("Redis did not take it ({error})")),
            Err(error) => {
                tracing::warn!(%error, redis.key = %key, "writing a file batch failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                if let Ok(top) = crate::logs::stream_top(redis, key).await {
                    already = top.saturating_sub(written_before) as usize;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FileLimits =
        FileLimits { test_result_file_bytes: 10, artifact_bytes: 8, artifacts_per_build_bytes: 12 };

    #[tokio::test]
    async fn files_over_their_caps_out_of_the_builder_or_not_files_are_refused_saying_why() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let builder = tempfile::tempdir().unwrap();
        let root = tokio::fs::canonicalize(builder.path()).await.unwrap();
        let file = |name: &str, bytes: usize| {
            let path = builder.path().join(name);
            std::fs::write(&path, vec![b'x'; bytes]).unwrap();
            path
        };
        let (small, large) = (file("small", 5), file("large", 11));
        std::os::unix::fs::symlink(outside.path().join("secret"), builder.path().join("leak")).unwrap();
        std::fs::create_dir(builder.path().join("dir")).unwrap();
        let admitted = async |path: &Path, kind, so_far| admit(&root, path, kind, &LIMITS, so_far).await;

        assert_eq!(admitted(&small, FileKind::TestResults, 0).await, Ok(()));
        let refused = admitted(&large, FileKind::TestResults, 0).await.unwrap_err();
        assert_eq!(refused, "is 11 B, over the cap of 10 B (builds.max_test_result_file_bytes); not read");
        let refused = admitted(&large, FileKind::Artifact, 0).await.unwrap_err();
        assert_eq!(refused, "is 11 B, over the cap of 8 B (builds.max_artifact_bytes); not kept");
        assert_eq!(admitted(&small, FileKind::Artifact, 7).await, Ok(()), "7 + 5 is the build's cap");
        let refused = admitted(&small, FileKind::Artifact, 8).await.unwrap_err();
        assert_eq!(
            refused,
            "(5 B) would take the build's artifacts past 12 B (builds.max_artifacts_per_build_bytes); not kept"
        );
        let refused = admitted(&builder.path().join("leak"), FileKind::Artifact, 0).await.unwrap_err();
        assert!(refused.contains("leads outside the builder's directory"), "{refused}");
        let refused = admitted(&builder.path().join("dir"), FileKind::Artifact, 0).await.unwrap_err();
        assert_eq!(refused, "is not a regular file; not sent");
    }

    #[test]
    fn patterns_match_in_name_order_and_literal_ones_are_told_apart() {
        let workdir = tempfile::tempdir().unwrap();
        for name in ["b.xml", "a.xml", "c.txt"] {
            std::fs::write(workdir.path().join(name), "").unwrap();
        }
        let names: Vec<String> = matching(workdir.path(), "*.xml")
            .unwrap()
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.xml", "b.xml"]);
        assert!(matching(workdir.path(), "../*.xml").unwrap_err().contains("leaves the builder's directory"));
        assert!(is_literal("out/junit.xml") && !is_literal("out/*.xml"));
    }
}
