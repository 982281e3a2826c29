//! A step's output as lines, for what reads it while it streams (warnings,
//! a test runner's summary): stdout and stderr each split on their own,
//! across the pieces the pipes deliver; a line longer than `LINE_BYTES` is
//! read on its first that many bytes. buildmaster's own lines are not the
//! step's output.

use shared::wire::LogChannel;

const LINE_BYTES: usize = 64 * 1024;

#[derive(Default)]
pub struct LineSplitter {
    /// The unfinished last line of stdout and of stderr.
    partial: [Vec<u8>; 2],
}

impl LineSplitter {
    /// Calls `line` for each line `data` ends (without its `\n` or `\r\n`).
    pub fn feed(&mut self, channel: LogChannel, data: &[u8], mut line: impl FnMut(&[u8])) {
        let index = match channel {
            LogChannel::Stdout => 0,
            LogChannel::Stderr => 1,
            LogChannel::Header => return,
        };
        let mut rest = data;
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            let mut whole = std::mem::take(&mut self.partial[index]);
            let room = LINE_BYTES.saturating_sub(whole.len());
            whole.extend_from_slice(&rest[..end.min(room)]);
            line(whole.strip_suffix(b"\r").unwrap_or(&whole));
            rest = &rest[end + 1..];
        }
        let partial = &mut self.partial[index];
        let room = LINE_BYTES.saturating_sub(partial.len());
        partial.extend_from_slice(&rest[..rest.len().min(room)]);
    }

    /// Calls `line` for what is left of lines the step did not end.
    pub fn finish(&mut self, mut line: impl FnMut(&[u8])) {
        for partial in &mut self.partial {
            let whole = std::mem::take(partial);
            if !whole.is_empty() {
                line(whole.strip_suffix(b"\r").unwrap_or(&whole));
            }
        }
    }
}
