//! Counts a step's warnings while its output streams: each line of stdout
//! and stderr is matched against the step's pattern, and the matching lines
//! are kept, up to a cap, for the step's `warnings` log. A build that
//! prints gigabytes is matched line by line, never held.

use regex::bytes::Regex;
use shared::wire::LogChannel;

use crate::lines::LineSplitter;

/// Matching lines kept for the `warnings` log; the count goes on.
const KEPT_BYTES: usize = 1024 * 1024;

pub struct WarningCounter {
    pattern: Regex,
    lines: LineSplitter,
    pub count: u64,
    /// The matching lines, each ending in a newline.
    pub kept: Vec<u8>,
    /// Matching lines left out of `kept` (over `KEPT_BYTES`).
    pub dropped: u64,
}

impl WarningCounter {
    /// `None` when the pattern cannot be read (the masters checked it;
    /// this worker's regex engine could still differ).
    pub fn new(pattern: &str) -> Option<WarningCounter> {
        let pattern = Regex::new(pattern).ok()?;
        Some(WarningCounter { pattern, lines: LineSplitter::default(), count: 0, kept: Vec::new(), dropped: 0 })
    }

    pub fn feed(&mut self, channel: LogChannel, data: &[u8]) {
        let WarningCounter { pattern, lines, count, kept, dropped } = self;
        lines.feed(channel, data, |line| match_line(pattern, line, count, kept, dropped));
    }

    /// Matches what is left of lines the step did not end.
    pub fn finish(&mut self) {
        let WarningCounter { pattern, lines, count, kept, dropped } = self;
        lines.finish(|line| match_line(pattern, line, count, kept, dropped));
    }
}

fn match_line(pattern: &Regex, line: &[u8], count: &mut u64, kept: &mut Vec<u8>, dropped: &mut u64) {
    if !pattern.is_match(line) {
        return;
    }
    *count += 1;
    if kept.len() + line.len() < KEPT_BYTES {
        kept.extend_from_slice(line);
        kept.push(b'\n');
    } else {
        *dropped += 1;
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
            String::from_utf8(counter.kept).unwrap(),
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
