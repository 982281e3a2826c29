//! What a step printed, made fit to keep before it leaves the worker:
//! secrets masked as `***` (also when one arrives split across reads), and
//! the log cut at its size cap with a marker saying so.

use shared::wire::LogChannel;

const MASK: &[u8] = b"***";

pub struct LogFilter {
    /// Longest first, so a secret containing another is masked whole.
    secrets: Vec<Vec<u8>>,
    /// Per channel (stdout, stderr): the end of the output so far that may
    /// be the start of a secret, held until the next read tells.
    held: [Vec<u8>; 2],
    cap: Option<u64>,
    kept: u64,
    cut: bool,
}

impl LogFilter {
    pub fn new(secrets: impl IntoIterator<Item = String>, cap: Option<u64>) -> LogFilter {
        let mut secrets: Vec<Vec<u8>> = secrets.into_iter().filter(|s| !s.is_empty()).map(String::into_bytes).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        LogFilter { secrets, held: [Vec::new(), Vec::new()], cap, kept: 0, cut: false }
    }

    /// The pieces to keep for one read of output.
    pub fn push(&mut self, channel: LogChannel, data: &[u8]) -> Vec<(LogChannel, Vec<u8>)> {
        let slot = match channel {
            LogChannel::Stdout => 0,
            LogChannel::Stderr => 1,
            // buildmaster's own lines arrive whole and do not count; what is
            // held of the step's output goes first, to keep the order.
            LogChannel::Header => {
                let mut out = self.finish();
                let (masked, _) = self.mask(data, true);
                out.push((channel, masked));
                return out;
            }
        };
        let mut buffer = std::mem::take(&mut self.held[slot]);
        buffer.extend_from_slice(data);
        let (masked, held) = self.mask(&buffer, false);
        self.held[slot] = buffer[held..].to_vec();
        self.limit(channel, masked)
    }

    /// What is still held, at the end of the step (or before a header).
    pub fn finish(&mut self) -> Vec<(LogChannel, Vec<u8>)> {
        let stdout = std::mem::take(&mut self.held[0]);
        let stderr = std::mem::take(&mut self.held[1]);
        let (stdout, _) = self.mask(&stdout, true);
        let (stderr, _) = self.mask(&stderr, true);
        let mut out = self.limit(LogChannel::Stdout, stdout);
        out.extend(self.limit(LogChannel::Stderr, stderr));
        out
    }

    /// `data` with every secret replaced by `***`, scanning from the start:
    /// a secret matching at a position is masked whole (longest first). At
    /// the first position from which the rest could still become a secret,
    /// scanning stops unless `all`: the rest is held for the next read, and
    /// its offset returned. Deciding on the raw bytes, never on masked
    /// ones, keeps a secret that contains another from leaking.
    fn mask(&self, data: &[u8], all: bool) -> (Vec<u8>, usize) {
        if self.secrets.is_empty() {
            return (data.to_vec(), data.len());
        }
        let mut out = Vec::with_capacity(data.len());
        let mut at = 0;
        while at < data.len() {
            let rest = &data[at..];
            if let Some(secret) = self.secrets.iter().find(|secret| rest.starts_with(secret)) {
                out.extend_from_slice(MASK);
                at += secret.len();
            } else if !all && self.secrets.iter().any(|secret| secret.len() > rest.len() && secret.starts_with(rest)) {
                return (out, at);
            } else {
                out.push(data[at]);
                at += 1;
            }
        }
        (out, data.len())
    }

    fn limit(&mut self, channel: LogChannel, data: Vec<u8>) -> Vec<(LogChannel, Vec<u8>)> {
        if self.cut || data.is_empty() {
            return Vec::new();
        }
        let Some(cap) = self.cap else { return vec![(channel, data)] };
        let room = cap - self.kept;
        if data.len() as u64 <= room {
            self.kept += data.len() as u64;
            return vec![(channel, data)];
        }
        self.cut = true;
        self.kept = cap;
        let marker = format!(
            "\n[buildmaster: this log was cut at {cap} bytes (builds.max_log_bytes); the rest of the step's output was dropped]\n"
        );
        let mut kept = data;
        kept.truncate(room as usize);
        let mut out = Vec::new();
        if !kept.is_empty() {
            out.push((channel, kept));
        }
        out.push((LogChannel::Header, marker.into_bytes()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(pieces: Vec<(LogChannel, Vec<u8>)>) -> String {
        pieces.into_iter().map(|(_, data)| String::from_utf8(data).unwrap()).collect()
    }

    #[test]
    fn a_secret_is_masked_also_when_it_arrives_in_pieces() {
        let mut filter = LogFilter::new(["hunter2-token".to_owned()], None);
        let mut out = String::new();
        for piece in ["key=hun", "ter2-", "token and hunter2-token; hunt", "ing"] {
            out.push_str(&printed(filter.push(LogChannel::Stdout, piece.as_bytes())));
        }
        out.push_str(&printed(filter.finish()));
        assert_eq!(out, "key=*** and ***; hunting");
    }

    #[test]
    fn a_secret_containing_another_is_masked_whole_across_reads() {
        let mut filter = LogFilter::new(["https://deploy:pw@host".to_owned(), "deploy".to_owned()], None);
        let mut out = printed(filter.push(LogChannel::Stdout, b"url=https://deploy:p"));
        out.push_str(&printed(filter.push(LogChannel::Stdout, b"w@host and deploy")));
        out.push_str(&printed(filter.finish()));
        assert_eq!(out, "url=*** and ***");
    }

    #[test]
    fn held_output_comes_before_a_header() {
        let mut filter = LogFilter::new(["secret".to_owned()], None);
        let mut pieces = filter.push(LogChannel::Stdout, b"done s");
        pieces.extend(filter.push(LogChannel::Header, b"exit 0\n"));
        assert_eq!(printed(pieces), "done sexit 0\n");
    }

    #[test]
    fn a_log_is_cut_at_its_cap_with_a_marker_and_headers_still_pass() {
        let mut filter = LogFilter::new([], Some(10));
        let mut pieces = filter.push(LogChannel::Stdout, b"0123456");
        pieces.extend(filter.push(LogChannel::Stderr, b"789abc"));
        pieces.extend(filter.push(LogChannel::Stdout, b"dropped"));
        let printed: Vec<u8> =
            pieces.iter().filter(|(c, _)| *c != LogChannel::Header).flat_map(|(_, d)| d.clone()).collect();
        assert_eq!(printed, b"0123456789");
        assert!(String::from_utf8_lossy(&pieces.last().unwrap().1).contains("cut at 10 bytes"));
        assert_eq!(filter.push(LogChannel::Header, b"exit 0\n").len(), 1);
    }
}
