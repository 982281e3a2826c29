//! Logs: moved from the Redis stream a worker writes into Postgres when a step
//! ends, and read back from whichever of the two holds them.
//!
//! An archived chunk is a zstd frame of records `[channel: u8][len: u32 LE]
//! [bytes]`, in the order the worker wrote them, so stdout and stderr stay
//! distinguishable and the raw download is exactly the bytes the step
//! printed. Archiving reads the stream page by page and never holds a whole
//! log in memory.

use futures_util::StreamExt;
use std::time::Duration;

use futures_util::stream::BoxStream;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use shared::ids::LogId;
use shared::names::{LOG_FIELD_CHANNEL, LOG_FIELD_DATA, Namespace};
use shared::wire::LogChannel;
use sqlx::{Postgres, Transaction};

use crate::store::{ArchivedChunk, LogState, Store, StoreError};

/// Raw bytes gathered before a chunk is compressed and written.
const CHUNK_RAW_BYTES: usize = 1024 * 1024;
/// Entries read per round trip to Redis: at most 2 MiB, as an entry holds
/// at most 64 KiB (a log's, or a file's a step sent).
pub(crate) const ENTRIES_PER_PAGE: usize = 32;
/// How archived logs and kept artifacts are compressed.
pub(crate) const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("redis error while reading log stream `{key}`: {source}")]
    Redis { key: String, source: redis::RedisError },
    #[error("log stream `{key}` has {found} of the {expected} entries its worker wrote; the rest was lost from Redis")]
    Incomplete { key: String, found: u64, expected: u64 },
    #[error("log stream `{key}` has an unreadable entry `{id}`")]
    BadEntry { key: String, id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("archived chunk of log {log_id} is corrupt: {reason}")]
    CorruptChunk { log_id: LogId, reason: String },
}

/// One piece of a log as the worker wrote it.
pub struct LogRecord {
    pub channel: LogChannel,
    pub data: Vec<u8>,
}

/// Reads entries of a log stream after `after_id` (exclusive; `"-"` for all).
pub async fn read_stream_page<C: ConnectionLike + Send>(
    redis: &mut C,
    key: &str,
    after_id: &str,
    count: usize,
) -> Result<Vec<(String, LogRecord)>, LogError> {
    let start = if after_id == "-" { "-".to_owned() } else { format!("({after_id}") };
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg(&start)
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(redis)
        .await
        .map_err(|source| LogError::Redis { key: key.to_owned(), source })?;
    reply.ids.into_iter().map(|entry| parse_entry(key, entry)).collect()
}

/// Waits up to `block` for entries of a log stream after `after_id`
/// (exclusive; `"0-0"` for all). Holds the connection while it waits, so
/// callers use a connection of their own.
async fn read_stream_blocking(
    redis: &mut MultiplexedConnection,
    key: &str,
    after_id: &str,
    count: usize,
    block: Duration,
) -> Result<Vec<(String, LogRecord)>, LogError> {
    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(key)
        .arg(after_id)
        .query_async(redis)
        .await
        .map_err(|source| LogError::Redis { key: key.to_owned(), source })?;
    let entries = reply.into_iter().flat_map(|reply| reply.keys).flat_map(|stream| stream.ids);
    entries.map(|entry| parse_entry(key, entry)).collect()
}

fn parse_entry(key: &str, entry: StreamId) -> Result<(String, LogRecord), LogError> {
    let channel = match entry.map.get(LOG_FIELD_CHANNEL) {
        Some(redis::Value::BulkString(code)) if code.len() == 1 => LogChannel::from_code(code[0]),
        _ => None,
    };
    let data = match entry.map.get(LOG_FIELD_DATA) {
        Some(redis::Value::BulkString(data)) => Some(data.clone()),
        _ => None,
    };
    match (channel, data) {
        (Some(channel), Some(data)) => Ok((entry.id, LogRecord { channel, data })),
        _ => Err(LogError::BadEntry { key: key.to_owned(), id: entry.id }),
    }
}

/// Accumulates records into compressed chunks.
struct ChunkBuilder {
    buffer: Vec<u8>,
    raw_bytes: usize,
    lines_in_chunk: i64,
    next_seq: i32,
    first_line: i64,
    total_lines: i64,
    total_bytes: i64,
    /// Whether the last byte seen ended a line.
    at_line_start: bool,
}

impl ChunkBuilder {
    fn new() -> Self {
        Self {
            buffer: Vec::new(),
            raw_bytes: 0,
            lines_in_chunk: 0,
            next_seq: 0,
            first_line: 0,
            total_lines: 0,
            total_bytes: 0,
            at_line_start: true,
        }
    }

    fn push(&mut self, record: &LogRecord) {
        if record.data.is_empty() {
            return;
        }
        self.buffer.push(record.channel.code());
        self.buffer.extend_from_slice(&(record.data.len() as u32).to_le_bytes());
        self.buffer.extend_from_slice(&record.data);
        self.raw_bytes += record.data.len();
        // A line counts where it starts, so a line split across records or
        // chunks counts once.
        let mut starts = 0;
        for &byte in &record.data {
            if self.at_line_start {
                starts += 1;
            }
            self.at_line_start = byte == b'\n';
        }
        self.lines_in_chunk += starts;
        if record.channel != LogChannel::Header {
            self.total_bytes += record.data.len() as i64;
        }
    }

    fn is_full(&self) -> bool {
        self.raw_bytes >= CHUNK_RAW_BYTES
    }

    fn take(&mut self) -> Option<ArchivedChunk> {
        if self.buffer.is_empty() {
            return None;
        }
        let content = zstd::bulk::compress(&self.buffer, ZSTD_LEVEL).expect("compressing into memory cannot fail");
        let chunk = ArchivedChunk {
            seq: self.next_seq,
            first_line: self.first_line,
            num_lines: self.lines_in_chunk,
            raw_bytes: self.raw_bytes as i32,
            content,
        };
        self.next_seq += 1;
        self.first_line += self.lines_in_chunk;
        self.total_lines += self.lines_in_chunk;
        self.lines_in_chunk = 0;
        self.raw_bytes = 0;
        self.buffer.clear();
        Some(chunk)
    }
}

/// What archiving adds to a log: lines a master says at its end (what it
/// made of the files the step sent), and texts (failed tests' names) whose
/// first line in the log is wanted.
#[derive(Default)]
pub struct Additions<'a> {
    pub notes: &'a [String],
    pub find: &'a [String],
}

/// What a log amounted to once archived.
pub struct Archived {
    /// Bytes the step printed.
    pub bytes: u64,
    pub lines: u64,
    /// For each text of `Additions::find`, the 0-based number of the first
    /// line holding it, as the log viewer numbers lines.
    pub found: Vec<Option<i64>>,
}

/// Finds the first line holding each of some texts, fed the log's bytes
/// in order (lines may be split across records).
struct LineFinder {
    texts: Option<aho_corasick::AhoCorasick>,
    found: Vec<Option<i64>>,
    missing: usize,
    line: Vec<u8>,
    number: i64,
}

impl LineFinder {
    fn new(texts: &[String]) -> Self {
        let matcher = (!texts.is_empty()).then(|| aho_corasick::AhoCorasick::new(texts)).and_then(Result::ok);
        Self { texts: matcher, found: vec![None; texts.len()], missing: texts.len(), line: Vec::new(), number: 0 }
    }

    fn feed(&mut self, data: &[u8]) {
        if self.texts.is_none() || self.missing == 0 {
            return;
        }
        for piece in data.split_inclusive(|&byte| byte == b'\n') {
            // A line longer than the viewer shows is searched in what it shows.
            let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
            self.line.extend_from_slice(&piece[..piece.len().min(room)]);
            if piece.ends_with(b"\n") {
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        if let Some(texts) = &self.texts {
            for hit in texts.find_overlapping_iter(&self.line) {
                let slot = &mut self.found[hit.pattern().as_usize()];
                if slot.is_none() {
                    *slot = Some(self.number);
                    self.missing -= 1;
                }
            }
        }
        self.line.clear();
        self.number += 1;
    }

    fn finish(mut self) -> Vec<Option<i64>> {
        if !self.line.is_empty() {
            self.end_line();
        }
        self.found
    }
}

/// Copies a finished log from its Redis stream into Postgres inside the
/// caller's transaction, after checking that every entry its worker wrote
/// (`expected_entries`) is there, and adds `additions`.
#[tracing::instrument(name = "archive", skip_all, fields(otel.name = "archive log", log.id = %log_id))]
pub async fn archive(
    redis: &mut ConnectionManager,
    tx: &mut Transaction<'static, Postgres>,
    log_id: LogId,
    key: &str,
    expected_entries: u64,
    additions: Additions<'_>,
) -> Result<Archived, LogError> {
    let mut builder = ChunkBuilder::new();
    let mut finder = LineFinder::new(additions.find);
    let mut after = String::from("-");
    let mut found = 0u64;
    loop {
        let page = read_stream_page(redis, key, &after, ENTRIES_PER_PAGE).await?;
        let Some((last_id, _)) = page.last() else {
            break;
        };
        after = last_id.clone();
        for (_, record) in &page {
            found += 1;
            builder.push(record);
            finder.feed(&record.data);
            if builder.is_full() {
                let chunk = builder.take().expect("a full builder has a chunk");
                Store::insert_log_chunk(tx, log_id, &chunk).await?;
            }
        }
        if page.len() < ENTRIES_PER_PAGE {
            break;
        }
    }
    if found != expected_entries {
        // Waiting would not bring the entries back: archive what exists and
        // say so in the log itself, where its readers will see it.
        let lost = LogError::Incomplete { key: key.to_owned(), found, expected: expected_entries };
        tracing::warn!(error = %lost, log.id = %log_id, "archiving an incomplete log");
        let marker = format!("\n[buildmaster: {lost}]\n");
        builder.push(&LogRecord { channel: LogChannel::Header, data: marker.into_bytes() });
    }
    if !additions.notes.is_empty() {
        // On a line of their own, even after output without a last newline.
        let mut text = if builder.at_line_start { String::new() } else { "\n".to_owned() };
        for note in additions.notes {
            text.push_str(note);
            text.push('\n');
        }
        builder.push(&LogRecord { channel: LogChannel::Header, data: text.into_bytes() });
    }
    if let Some(chunk) = builder.take() {
        Store::insert_log_chunk(tx, log_id, &chunk).await?;
    }
    Store::complete_log(tx, log_id, builder.total_lines, builder.total_bytes).await?;
    Ok(Archived { bytes: builder.total_bytes as u64, lines: builder.total_lines as u64, found: finder.finish() })
}

/// Splits an archived chunk back into its records.
pub fn decode_chunk(log_id: LogId, content: &[u8]) -> Result<Vec<LogRecord>, LogError> {
    let corrupt = |reason: String| LogError::CorruptChunk { log_id, reason };
    let raw = zstd::stream::decode_all(content).map_err(|e| corrupt(e.to_string()))?;
    let mut records = Vec::new();
    let mut rest = raw.as_slice();
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err(corrupt("truncated record header".into()));
        }
        let channel = LogChannel::from_code(rest[0]).ok_or_else(|| corrupt(format!("unknown channel {}", rest[0])))?;
        let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < 5 + len {
            return Err(corrupt("truncated record".into()));
        }
        records.push(LogRecord { channel, data: rest[5..5 + len].to_vec() });
        rest = &rest[5 + len..];
    }
    Ok(records)
}

/// What the step printed (stdout and stderr, no headers), as a stream of
/// byte pieces: from Postgres when archived, else from the live stream.
pub fn raw_bytes(
    store: &Store,
    redis: ConnectionManager,
    log_id: LogId,
    archived: bool,
    stream_key: String,
) -> BoxStream<'static, Result<Vec<u8>, LogError>> {
    if archived {
        store
            .log_chunks(log_id)
            .map(move |content| {
                let content = content.map_err(StoreError::from)?;
                let records = decode_chunk(log_id, &content)?;
                Ok(printed_bytes(records))
            })
            .boxed()
    } else {
        futures_util::stream::try_unfold(Some(String::from("-")), move |after| {
            let key = stream_key.clone();
            let mut redis = redis.clone();
            async move {
                let Some(after) = after else { return Ok(None) };
                let page = read_stream_page(&mut redis, &key, &after, ENTRIES_PER_PAGE).await?;
                let next = (page.len() == ENTRIES_PER_PAGE).then(|| page.last().map(|(id, _)| id.clone())).flatten();
                if page.is_empty() {
                    return Ok(None);
                }
                let bytes = printed_bytes(page.into_iter().map(|(_, record)| record).collect());
                Ok(Some((bytes, next)))
            }
        })
        .boxed()
    }
}

/// How long a follower waits on Redis for new output before it asks
/// Postgres whether the log has ended.
const FOLLOW_BLOCK: Duration = Duration::from_millis(500);

/// What a step prints, from the first byte, as it prints it, until the log is
/// archived (or its build ended without it, its worker lost): the live Redis
/// stream first, then whatever the stream no longer
/// holds from the archive. The bytes are exactly those of the raw download.
///
/// `live` is a connection of the follower's own: waiting for new entries
/// holds it.
pub fn follow(
    store: Store,
    live: MultiplexedConnection,
    log_id: LogId,
    stream_key: String,
) -> BoxStream<'static, Result<Vec<u8>, LogError>> {
    follow_records(store, live, log_id, stream_key)
        .map(|records| records.map(printed_bytes))
        .filter(|bytes| std::future::ready(!matches!(bytes, Ok(bytes) if bytes.is_empty())))
        .boxed()
}

/// Like `follow`, as `contents` serves lines (each prefixed with its
/// channel, `o`, `e` or `h`, when `with_channels`), from line `offset` on.
/// A line is sent once it ends (or the log does).
pub fn follow_lines(
    store: Store,
    live: MultiplexedConnection,
    log_id: LogId,
    stream_key: String,
    offset: i64,
    with_channels: bool,
) -> BoxStream<'static, Result<String, LogError>> {
    let records = follow_records(store, live, log_id, stream_key);
    let splitter =
        LineSplitter { wanted: offset..i64::MAX, next_line: 0, current: None, out: Vec::new(), out_bytes: 0 };
    futures_util::stream::try_unfold((records, splitter, false), move |(mut records, mut splitter, ended)| async move {
        if ended {
            return Ok(None);
        }
        let ended = match records.next().await {
            Some(batch) => {
                for record in batch? {
                    splitter.push(&record);
                }
                false
            }
            None => {
                splitter.finish();
                true
            }
        };
        let mut text = String::new();
        for line in splitter.out.drain(..) {
            if with_channels {
                text.push(char::from(line.channel.code()));
            }
            text.push_str(&String::from_utf8_lossy(&line.text));
            text.push('\n');
        }
        Ok(Some((text, (records, splitter, ended))))
    })
    .filter(|text| std::future::ready(!matches!(text, Ok(text) if text.is_empty())))
    .boxed()
}

/// How many lines a running log's stream holds so far (a last line not yet
/// ended counts).
pub async fn live_line_count(redis: &mut ConnectionManager, stream_key: &str) -> Result<i64, LogError> {
    // Written by the worker with each batch; workers of the previous
    // version write none, and their streams are counted by reading them.
    let counted: Option<i64> = redis::cmd("GET")
        .arg(Namespace::log_lines_key(stream_key))
        .query_async(redis)
        .await
        .map_err(|source| LogError::Redis { key: stream_key.to_owned(), source })?;
    if let Some(lines) = counted {
        return Ok(lines);
    }
    let mut splitter =
        LineSplitter { wanted: i64::MAX..i64::MAX, next_line: 0, current: None, out: Vec::new(), out_bytes: 0 };
    let mut after = String::from("-");
    loop {
        let page = read_stream_page(redis, stream_key, &after, ENTRIES_PER_PAGE).await?;
        let Some((last_id, _)) = page.last() else { break };
        after = last_id.clone();
        let full = page.len() == ENTRIES_PER_PAGE;
        for (_, record) in page {
            splitter.push(&record);
        }
        if !full {
            break;
        }
    }
    Ok(splitter.next_line)
}

/// The records of a log as they are written; see `follow`.
fn follow_records(
    store: Store,
    live: MultiplexedConnection,
    log_id: LogId,
    stream_key: String,
) -> BoxStream<'static, Result<Vec<LogRecord>, LogError>> {
    let follower = Follower { store, live, log_id, key: stream_key, after: "0-0".into(), sent: 0, phase: Phase::Live };
    futures_util::stream::try_unfold(follower, |mut follower| async move {
        Ok(follower.next_piece().await?.map(|piece| (piece, follower)))
    })
    .boxed()
}

struct Follower {
    store: Store,
    live: MultiplexedConnection,
    log_id: LogId,
    key: String,
    /// Id of the last stream entry delivered.
    after: String,
    /// Printed bytes delivered so far.
    sent: u64,
    phase: Phase,
}

enum Phase {
    /// The step may still print: wait for entries.
    Live,
    /// The log is archived with `total` printed bytes: deliver the rest from
    /// the stream while it is still there.
    Draining { total: u64 },
    /// The stream is gone (expired or flushed): the rest comes from the
    /// archive, after the `skip` printed bytes already delivered.
    Archive { skip: u64, chunks: BoxStream<'static, Result<Vec<u8>, sqlx::Error>> },
}

impl Follower {
    async fn next_piece(&mut self) -> Result<Option<Vec<LogRecord>>, LogError> {
        loop {
            let page = match &mut self.phase {
                Phase::Live => {
                    let page =
                        read_stream_blocking(&mut self.live, &self.key, &self.after, ENTRIES_PER_PAGE, FOLLOW_BLOCK)
                            .await?;
                    if page.is_empty() {
                        match self.store.log_state(self.log_id).await? {
                            LogState::Running => {}
                            LogState::Archived { bytes } => self.phase = Phase::Draining { total: bytes as u64 },
                            // Its worker was lost: nothing more will come.
                            LogState::Abandoned => return Ok(None),
                        }
                    }
                    page
                }
                Phase::Draining { total } => {
                    if self.sent >= *total {
                        return Ok(None);
                    }
                    let page = read_stream_page(&mut self.live, &self.key, &self.after, ENTRIES_PER_PAGE).await?;
                    if page.is_empty() {
                        self.phase = Phase::Archive { skip: self.sent, chunks: self.store.log_chunks(self.log_id) };
                    }
                    page
                }
                Phase::Archive { skip, chunks } => {
                    let Some(content) = chunks.next().await else { return Ok(None) };
                    let records = skip_printed(decode_chunk(self.log_id, &content.map_err(StoreError::from)?)?, skip);
                    if !records.is_empty() {
                        return Ok(Some(records));
                    }
                    continue;
                }
            };
            let Some((last_id, _)) = page.last() else { continue };
            self.after = last_id.clone();
            let records: Vec<LogRecord> = page.into_iter().map(|(_, record)| record).collect();
            self.sent +=
                records.iter().filter(|r| r.channel != LogChannel::Header).map(|r| r.data.len() as u64).sum::<u64>();
            if !records.is_empty() {
                return Ok(Some(records));
            }
        }
    }
}

/// `records` without their first `skip` printed bytes (and the headers
/// among them), which were delivered before; `skip` is what remains.
fn skip_printed(records: Vec<LogRecord>, skip: &mut u64) -> Vec<LogRecord> {
    let mut out = Vec::new();
    for mut record in records {
        if *skip == 0 {
            out.push(record);
            continue;
        }
        if record.channel == LogChannel::Header {
            continue;
        }
        let skipped = (*skip).min(record.data.len() as u64);
        record.data.drain(..skipped as usize);
        *skip -= skipped;
        if !record.data.is_empty() {
            out.push(record);
        }
    }
    out
}

/// One line of a log, as `contents` serves it: the channel it started on
/// and its bytes without the newline.
pub struct LogLine {
    pub channel: LogChannel,
    pub text: Vec<u8>,
}

/// Lines `offset .. offset + limit` of a log. Archived logs start at the
/// chunk holding line `offset` (chunks know their first line), so reading
/// the end of a large log does not decompress its beginning; a live log is
/// read from its stream's start.
pub async fn lines(
    store: &Store,
    mut redis: ConnectionManager,
    log_id: LogId,
    archived: bool,
    stream_key: String,
    offset: i64,
    limit: i64,
) -> Result<Vec<LogLine>, LogError> {
    let mut splitter = LineSplitter {
        wanted: offset..offset.saturating_add(limit),
        next_line: 0,
        current: None,
        out: Vec::new(),
        out_bytes: 0,
    };
    if limit == 0 {
        return Ok(Vec::new());
    }
    if archived {
        let Some((seq, first_line)) = store.chunk_holding_line(log_id, offset).await? else {
            return Ok(Vec::new());
        };
        // Whether the chunk starts inside a line begun in the one before.
        let mid_line = match seq.checked_sub(1) {
            Some(previous) => match store.log_chunk(log_id, previous).await? {
                Some(content) => {
                    decode_chunk(log_id, &content)?.iter().rev().find_map(|r| r.data.last().copied()) != Some(b'\n')
                }
                None => false,
            },
            None => false,
        };
        splitter.next_line = first_line;
        if mid_line {
            // The continued line is before `offset`: it is skipped.
            splitter.current = Some((first_line - 1, LogLine { channel: LogChannel::Stdout, text: Vec::new() }));
        }
        let mut chunks = store.log_chunks_from(log_id, seq);
        while let Some(content) = chunks.next().await {
            for record in decode_chunk(log_id, &content.map_err(StoreError::from)?)? {
                if splitter.push(&record) || splitter.full() {
                    return Ok(splitter.out);
                }
            }
        }
        splitter.finish();
    } else {
        // A running log's last line may still grow: only whole lines are
        // served, as Buildbot does.
        let mut after = String::from("-");
        loop {
            let page = read_stream_page(&mut redis, &stream_key, &after, ENTRIES_PER_PAGE).await?;
            let Some((last_id, _)) = page.last() else { break };
            after = last_id.clone();
            let full = page.len() == ENTRIES_PER_PAGE;
            for (_, record) in page {
                if splitter.push(&record) || splitter.full() {
                    return Ok(splitter.out);
                }
            }
            if !full {
                break;
            }
        }
    }
    Ok(splitter.out)
}

/// The longest line `contents` serves whole. A longer one (a step may print
/// megabytes without a newline) is cut with a note; the raw download has it
/// whole. Bounds what one answer holds in memory and sends.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The most bytes of lines one `contents` answer holds; it then holds
/// fewer lines than asked for, and the client asks for the rest.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// A line longer than `MAX_LINE_BYTES` (it holds one byte more when it
/// was), cut with a note saying so.
fn cut_long(line: &mut LogLine) {
    if line.text.len() > MAX_LINE_BYTES {
        line.text.truncate(MAX_LINE_BYTES);
        line.text.extend_from_slice(b" [line cut at 65536 bytes; the raw log has it whole]");
    }
}

/// Cuts records into numbered lines, keeping those wanted.
struct LineSplitter {
    wanted: std::ops::Range<i64>,
    /// Number the next line to start gets.
    next_line: i64,
    /// The line being read, with its number.
    current: Option<(i64, LogLine)>,
    out: Vec<LogLine>,
    /// Bytes of the lines out so far (see `full`).
    out_bytes: usize,
}

impl LineSplitter {
    /// Returns true once every wanted line is out.
    fn push(&mut self, record: &LogRecord) -> bool {
        for piece in record.data.split_inclusive(|&b| b == b'\n') {
            let (number, line) = self.current.get_or_insert_with(|| {
                let number = self.next_line;
                self.next_line += 1;
                (number, LogLine { channel: record.channel, text: Vec::new() })
            });
            let number = *number;
            let ends = piece.last() == Some(&b'\n');
            if self.wanted.contains(&number) {
                let text = piece.strip_suffix(b"\n").unwrap_or(piece);
                let room = (MAX_LINE_BYTES + 1).saturating_sub(line.text.len());
                line.text.extend_from_slice(&text[..text.len().min(room)]);
            }
            if ends {
                let (number, mut line) = self.current.take().expect("a line is being read");
                if self.wanted.contains(&number) {
                    cut_long(&mut line);
                    self.out_bytes += line.text.len() + 2;
                    self.out.push(line);
                }
                if number + 1 >= self.wanted.end {
                    return true;
                }
            }
        }
        false
    }

    /// Whether the lines out make an answer as large as one may be
    /// (`MAX_ANSWER_BYTES`): a client asks for the rest.
    fn full(&self) -> bool {
        self.out_bytes >= MAX_ANSWER_BYTES
    }

    /// The last line of a finished log counts even without a newline.
    fn finish(&mut self) {
        if let Some((number, mut line)) = self.current.take()
            && self.wanted.contains(&number)
        {
            cut_long(&mut line);
            self.out.push(line);
        }
    }
}

fn printed_bytes(records: Vec<LogRecord>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for record in records {
        if record.channel != LogChannel::Header {
            bytes.extend_from_slice(&record.data);
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_line_is_served_cut_with_a_note() {
        let mut splitter = LineSplitter { wanted: 0..10, next_line: 0, current: None, out: Vec::new(), out_bytes: 0 };
        let huge = vec![b'x'; 10 * MAX_LINE_BYTES];
        for piece in huge.chunks(MAX_LINE_BYTES / 3) {
            splitter.push(&LogRecord { channel: LogChannel::Stdout, data: piece.to_vec() });
        }
        splitter.push(&LogRecord { channel: LogChannel::Stdout, data: b"\nnext\n".to_vec() });
        assert_eq!(splitter.out.len(), 2);
        assert!(splitter.out[0].text.len() < MAX_LINE_BYTES + 100);
        assert!(splitter.out[0].text.ends_with(b"[line cut at 65536 bytes; the raw log has it whole]"));
        assert_eq!(splitter.out[1].text, b"next");
    }

    #[test]
    fn a_chunk_decodes_to_the_records_it_was_built_from() {
        let mut builder = ChunkBuilder::new();
        builder.push(&LogRecord { channel: LogChannel::Header, data: b"$ make\n".to_vec() });
        builder.push(&LogRecord { channel: LogChannel::Stdout, data: b"one\ntw".to_vec() });
        builder.push(&LogRecord { channel: LogChannel::Stderr, data: b"o\nthree".to_vec() });
        let chunk = builder.take().unwrap();
        assert_eq!(chunk.num_lines, 4, "`$ make`, `one`, `two`, `three`");
        assert_eq!(builder.total_bytes, 13, "headers are not counted as printed bytes");
        let records = decode_chunk(LogId(1), &chunk.content).unwrap();
        assert_eq!(printed_bytes(records), b"one\ntwo\nthree");
    }

    #[test]
    fn lines_are_numbered_where_they_start_and_keep_their_first_channel() {
        let records = [
            LogRecord { channel: LogChannel::Header, data: b"$ make\n".to_vec() },
            LogRecord { channel: LogChannel::Stdout, data: b"one\ntw".to_vec() },
            LogRecord { channel: LogChannel::Stderr, data: b"o\nthree".to_vec() },
        ];
        let split = |offset: i64, limit: i64| {
            let mut splitter = LineSplitter {
                wanted: offset..offset + limit,
                next_line: 0,
                current: None,
                out: Vec::new(),
                out_bytes: 0,
            };
            for record in &records {
                if splitter.push(record) {
                    return splitter.out;
                }
            }
            splitter.finish();
            splitter.out
        };
        let all: Vec<(u8, Vec<u8>)> = split(0, 10).into_iter().map(|l| (l.channel.code(), l.text)).collect();
        assert_eq!(
            all,
            vec![
                (b'h', b"$ make".to_vec()),
                (b'o', b"one".to_vec()),
                (b'o', b"two".to_vec()),
                (b'e', b"three".to_vec())
            ]
        );
        let middle: Vec<Vec<u8>> = split(1, 2).into_iter().map(|l| l.text).collect();
        assert_eq!(middle, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(split(4, 5).is_empty(), "past the end");
    }
}
