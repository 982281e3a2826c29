//! Counts a step's warnings while its output streams: each line of stdout
//! and stderr (split across the pieces the pipes deliver, each channel on
//! its own) is matched against the step's pattern, and the matching lines
//! are kept, up to a cap, for the step's `warnings` log. A build that
//! prints gigabytes is matched line by line, never held.

use regex::bytes::Regex;
use shared::wire::LogChannel;

/// Matching lines kept for the `warnings` log; the count goes on.
const KEPT_BYTES: usize = 1024 * 1024;
/// A line longer than this is matched on its first this many bytes.
const LINE_BYTES: usize = 64 * 1024;

pub struct WarningCounter {
    pattern: Regex,
    /// The unfinished last line of stdout and of stderr.
    partial: [Vec<u8>; 2],
    pub count: u64,
    /// The matching lines, each ending in a newline.
    pub lines: Vec<u8>,
    /// Matching lines left out of `lines` (over `KEPT_BYTES`).
    pub dropped: u64,
}

impl WarningCounter {
    /// `None` when the pattern cannot be read (the masters checked it;
    /// this worker's regex engine could still differ).
    pub fn new(pattern: &str) -> Option<WarningCounter> {
        let pattern = Regex::new(pattern).ok()?;
        Some(WarningCounter { pattern, partial: [Vec::new(), Vec::new()], count: 0, lines: Vec::new(), dropped: 0 })
    }

    pub fn feed(&mut self, channel: LogChannel, data: &[u8]) {
        let index = match channel {
            LogChannel::Stdout => 0,
            LogChannel::Stderr => 1,
            LogChannel::Header => return,
        };
        let mut rest = data;
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            let mut line = std::mem::take(&mut self.partial[index]);
            let room = LINE_BYTES.saturating_sub(line.len());
            line.extend_from_slice(&rest[..end.min(room)]);
            self.line(&line);
            rest = &rest[end + 1..];
        }
        let partial = &mut self.partial[index];
        let room = LINE_BYTES.saturating_sub(partial.len());
        partial.extend_from_slice(&rest[..rest.len().min(room)]);
    }

    /// Matches what is left of lines the step did not end.
    pub fn finish(&mut self) {
        for index in 0..2 {
            let line = std::mem::take(&mut self.partial[index]);
            if !line.is_empty() {
                self.line(&line);
            }
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !self.pattern.is_match(line) {
            return;
        }
        self.count += 1;
        if self.lines.len() + line.len() < KEPT_BYTES {
            self.lines.extend_from_slice(line);
            self.lines.push(b'\n');
        } else {
            self.dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_pieces_and_channels_are_matched_whole() {
        let mut counter = WarningCounter::new(shared::config::COMPILER_WARNINGS).unwrap();
        counter.feed(LogChannel::Stdout, b"gcc -c a.c\na.c:12:5: warn");
        counter.feed(LogChannel::Stderr, b"b.c(7): warning C4101: 'x': unreferenced\r\n");
        counter.feed(LogChannel::Stdout, b"ing: unused variable 'x'\nlinking\nwarning: not a compiler's\n");
        counter.feed(LogChannel::Stdout, b"c.c:1: warning: no newline at the end");
        counter.finish();
        assert_eq!(counter.count, 3);
        assert_eq!(
            String::from_utf8(counter.lines).unwrap(),
            "b.c(7): warning C4101: 'x': unreferenced\na.c:12:5: warning: unused variable 'x'\n\
             c.c:1: warning: no newline at the end\n"
        );
    }

    #[test]
    fn headers_are_not_the_steps_output() {
        let mut counter = WarningCounter::new("warning").unwrap();
        counter.feed(LogChannel::Header, b"warning\n");
        counter.finish();
        assert_eq!(counter.count, 0);
    }
}
