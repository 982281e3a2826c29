//! Streams one log of a running step into its Redis stream, in small batches,
//! so anyone can watch it live through any master.
//!
//! Entries get explicit ids `1-0`, `2-0`, …: the master checks, before it
//! archives a log, that it has every entry the worker wrote, and a batch
//! retried after a lost reply cannot be written twice.
//!
//! Every entry is also kept in a spool file on the worker's disk until the
//! step ends. If Redis lost the stream meanwhile (a restart without
//! persistence, a flush), the stream is written again from the spool before
//! the step is reported finished, so the archived log is still complete.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::aio::ConnectionManager;
use shared::names::{LOG_FIELD_CHANNEL, LOG_FIELD_DATA, Namespace};
use shared::wire::LogChannel;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::filter::LogFilter;

/// Largest entry; a longer run of output (even one huge line) is split.
const ENTRY_BYTES: usize = 64 * 1024;
/// A batch holds at most about this much: output that arrives while one
/// is written goes out in the next.
const BATCH_BYTES: usize = 256 * 1024;
/// The stream expires this long after its last write, in case no master
/// ever archives it (the build's lease then retries it anyway).
const STREAM_TTL_SECONDS: i64 = 24 * 3600;

/// What a finished log amounted to.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogTotals {
    /// Entries written: the stream holds ids `1-0` to `{entries}-0`.
    pub entries: u64,
    /// Bytes the step printed (headers not counted).
    pub bytes: u64,
}

pub struct LogWriter {
    sender: mpsc::Sender<(LogChannel, Vec<u8>)>,
    task: JoinHandle<LogTotals>,
}

impl LogWriter {
    /// Starts writing the stream `key`, spooling to `spool` (a file path
    /// that the writer creates and removes).
    /// `filter` masks secrets and caps the log before anything is written.
    pub fn start(redis: ConnectionManager, key: String, spool: PathBuf, filter: LogFilter) -> Self {
        let (sender, receiver) = mpsc::channel(64);
        let task = tokio::spawn(write_stream(redis, key, spool, receiver, filter));
        Self { sender, task }
    }

    /// Queues output; waits only when Redis is slower than the step.
    pub async fn write(&self, channel: LogChannel, data: Vec<u8>) {
        if !data.is_empty() {
            // The writer task only ends after `finish` drops the sender.
            let _ = self.sender.send((channel, data)).await;
        }
    }

    /// Room for one piece of output, when the writer has it; `None` once
    /// the writer is gone. For a caller that must not wait on the log
    /// while it waits on other things.
    pub async fn reserve(&self) -> Option<mpsc::Permit<'_, (LogChannel, Vec<u8>)>> {
        self.sender.reserve().await.ok()
    }

    /// Sends what is left and returns the totals once all of it is in Redis.
    pub async fn finish(self) -> LogTotals {
        drop(self.sender);
        self.task.await.expect("log writer task does not panic")
    }
}

struct Entry {
    channel: LogChannel,
    data: Vec<u8>,
}

/// How many lines a log holds so far, as masters number them: every
/// newline ends one, and a last line not yet ended counts.
#[derive(Debug, Default, Clone, Copy)]
struct LineCount {
    ended: u64,
    open: bool,
}

impl LineCount {
    fn add(&mut self, entries: &[Entry]) {
        for entry in entries {
            self.ended += entry.data.iter().filter(|&&byte| byte == b'\n').count() as u64;
            if let Some(last) = entry.data.last() {
                self.open = *last != b'\n';
            }
        }
    }

    fn total(self) -> u64 {
        self.ended + u64::from(self.open)
    }
}

async fn write_stream(
    mut redis: ConnectionManager,
    key: String,
    spool_path: PathBuf,
    mut receiver: mpsc::Receiver<(LogChannel, Vec<u8>)>,
    mut filter: LogFilter,
) -> LogTotals {
    let mut spool = Spool::create(&spool_path).await;
    let mut totals = LogTotals::default();
    let mut lines = LineCount::default();
    let mut batch: Vec<Entry> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut open = true;
    while open {
        // Wait for output, then take whatever else is already queued: a
        // quiet step's line goes out at once, a chatty step's output goes
        // in batches as large as Redis is slow.
        let mut pieces = vec![receiver.recv().await];
        while batch_bytes < BATCH_BYTES
            && let Ok(piece) = receiver.try_recv()
        {
            batch_bytes += piece.1.len();
            pieces.push(Some(piece));
        }
        for piece in pieces {
            let kept = match piece {
                Some((channel, data)) => filter.push(channel, &data),
                None => {
                    open = false;
                    filter.finish()
                }
            };
            for (channel, data) in kept {
                if channel != LogChannel::Header {
                    totals.bytes += data.len() as u64;
                    crate::metrics::METRICS.log_bytes.inc_by(data.len() as u64);
                    crate::metrics::METRICS.log_lines.inc_by(data.iter().filter(|&&b| b == b'\n').count() as u64);
                }
                append(&mut batch, channel, &data);
            }
        }
        if !batch.is_empty() {
            lines.add(&batch);
            tokio::join!(send_batch(&mut redis, &key, &batch, totals.entries, lines), spool.append(&batch));
            totals.entries += batch.len() as u64;
            batch.clear();
        }
        batch_bytes = 0;
    }
    spool.restore_if_lost(&mut redis, &key, totals.entries).await;
    spool.remove(&spool_path).await;
    totals
}

/// The worker's own copy of a log while its step runs. Writing it may fail
/// (a full disk); the log is then only as safe as Redis keeps it.
struct Spool {
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
}

impl Spool {
    async fn create(path: &Path) -> Spool {
        if let Some(parent) = path.parent() {
            let _ = tokio::fs::create_dir_all(parent).await;
        }
        let opened = tokio::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).await;
        match opened {
            Ok(file) => Spool { file: Some(tokio::io::BufWriter::new(file)) },
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "cannot spool a log; it will not survive a loss of Redis");
                Spool { file: None }
            }
        }
    }

    async fn append(&mut self, batch: &[Entry]) {
        let Some(file) = &mut self.file else { return };
        // One write per batch: each write of a tokio file is a trip to the
        // blocking thread pool.
        let mut records = Vec::with_capacity(batch.iter().map(|entry| 5 + entry.data.len()).sum());
        for entry in batch {
            records.push(entry.channel.code());
            records.extend_from_slice(&(entry.data.len() as u32).to_le_bytes());
            records.extend_from_slice(&entry.data);
        }
        if let Err(error) = file.write_all(&records).await {
            tracing::warn!(%error, "spooling a log failed; it will not survive a loss of Redis");
            self.file = None;
        }
    }

    /// Writes the stream again from the spool when Redis no longer has all
    /// of its `entries`.
    async fn restore_if_lost(&mut self, redis: &mut ConnectionManager, key: &str, entries: u64) {
        let Some(mut file) = self.file.take() else { return };
        let mut delay = Duration::from_millis(100);
        let length = loop {
            match redis::cmd("XLEN").arg(key).query_async::<u64>(redis).await {
                Ok(length) => break length,
                Err(error) => {
                    tracing::warn!(%error, redis.key = %key, "cannot check a log stream; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        if length == entries {
            return;
        }
        tracing::warn!(redis.key = %key, found = length, expected = entries, "Redis lost log entries; writing them again from the spool");
        if let Err(error) = rewrite_from_spool(redis, key, &mut file).await {
            tracing::error!(%error, redis.key = %key, "cannot read the spool back; the archived log will say entries were lost");
        }
    }

    async fn remove(self, path: &Path) {
        drop(self.file);
        let _ = tokio::fs::remove_file(path).await;
    }
}

/// Replaces the stream with every entry of the spool, in order.
async fn rewrite_from_spool(
    redis: &mut ConnectionManager,
    key: &str,
    file: &mut tokio::io::BufWriter<tokio::fs::File>,
) -> std::io::Result<()> {
    file.flush().await?;
    let file = file.get_mut();
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let mut reader = tokio::io::BufReader::new(file);
    let _: Result<(), _> = redis::cmd("DEL").arg(key).query_async(redis).await;
    let mut batch = Vec::new();
    let mut written = 0u64;
    let mut lines = LineCount::default();
    loop {
        let mut header = [0u8; 5];
        let more = match reader.read_exact(&mut header).await {
            Ok(_) => true,
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => false,
            Err(error) => return Err(error),
        };
        if more {
            let channel = LogChannel::from_code(header[0])
                .ok_or_else(|| std::io::Error::other(format!("unknown channel {} in the spool", header[0])))?;
            let mut data = vec![0u8; u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize];
            reader.read_exact(&mut data).await?;
            batch.push(Entry { channel, data });
        }
        if batch.len() >= 256 || (!more && !batch.is_empty()) {
            lines.add(&batch);
            send_batch(redis, key, &batch, written, lines).await;
            written += batch.len() as u64;
            batch.clear();
        }
        if !more {
            return Ok(());
        }
    }
}

/// Adds output to the batch, joining it to the last entry of the same
/// channel and splitting at `ENTRY_BYTES`.
fn append(batch: &mut Vec<Entry>, channel: LogChannel, mut data: &[u8]) {
    while !data.is_empty() {
        match batch.last_mut() {
            Some(last) if last.channel == channel && last.data.len() < ENTRY_BYTES => {
                let room = ENTRY_BYTES - last.data.len();
                let (now, rest) = data.split_at(room.min(data.len()));
                last.data.extend_from_slice(now);
                data = rest;
            }
            _ => batch.push(Entry { channel, data: Vec::with_capacity(data.len().min(ENTRY_BYTES)) }),
        }
    }
}

/// Writes a batch as entries `first_id + 1 …`, retrying until Redis takes
/// it. After a failure, entries Redis already has are skipped.
async fn send_batch(redis: &mut ConnectionManager, key: &str, batch: &[Entry], written_before: u64, lines: LineCount) {
    let mut delay = Duration::from_millis(100);
    let mut retrying = false;
    loop {
        let already = if !retrying {
            0
        } else {
            match stream_top(redis, key).await {
                Ok(top) => top.saturating_sub(written_before) as usize,
                Err(error) => {
                    tracing::warn!(%error, redis.key = %key, "cannot reach Redis to write a log; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        };
        retrying = true;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (offset, entry) in batch.iter().enumerate().skip(already) {
            let id = format!("{}-0", written_before + offset as u64 + 1);
            pipe.cmd("XADD")
                .arg(key)
                .arg(id)
                .arg(LOG_FIELD_CHANNEL)
                .arg(&[entry.channel.code()][..])
                .arg(LOG_FIELD_DATA)
                .arg(&entry.data[..])
                .ignore();
        }
        pipe.cmd("EXPIRE").arg(key).arg(STREAM_TTL_SECONDS).ignore();
        pipe.cmd("SET")
            .arg(Namespace::log_lines_key(key))
            .arg(lines.total())
            .arg("EX")
            .arg(STREAM_TTL_SECONDS)
            .ignore();
        match pipe.query_async::<()>(redis).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, redis.key = %key, "writing a log batch failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The sequence number of the last entry of a stream (0 when empty).
pub(crate) async fn stream_top(redis: &mut ConnectionManager, key: &str) -> redis::RedisResult<u64> {
    let last: redis::streams::StreamRangeReply =
        redis::cmd("XREVRANGE").arg(key).arg("+").arg("-").arg("COUNT").arg(1).query_async(redis).await?;
    Ok(last.ids.first().and_then(|entry| entry.id.split('-').next()).and_then(|seq| seq.parse().ok()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_of_one_channel_joins_and_splits_at_the_entry_size() {
        let mut batch = Vec::new();
        append(&mut batch, LogChannel::Stdout, b"a");
        append(&mut batch, LogChannel::Stdout, b"b");
        append(&mut batch, LogChannel::Stderr, b"c");
        append(&mut batch, LogChannel::Stderr, &vec![b'x'; ENTRY_BYTES + 10]);
        let shapes: Vec<(LogChannel, usize)> = batch.iter().map(|e| (e.channel, e.data.len())).collect();
        assert_eq!(shapes, [(LogChannel::Stdout, 2), (LogChannel::Stderr, ENTRY_BYTES), (LogChannel::Stderr, 11)]);
    }
}
