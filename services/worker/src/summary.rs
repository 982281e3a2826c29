//! Reads the failed tests from the summary a test runner prints at its end
//! (CPython's regrtest: `2 tests failed:` and the names on the indented
//! lines after it; `385 tests OK.`), while the output streams, for runners
//! that write no result files. A later list replaces an earlier one, as
//! regrtest's `failed again:` after re-running the failures does.

use regex::bytes::Regex;
use shared::wire::{LogChannel, TestSummary, TestSummaryRule};

use crate::lines::LineSplitter;

/// Names kept from one list: a runner gone wrong cannot fill memory.
const MAX_NAMES: usize = 100_000;

pub struct SummaryReader {
    failed: Regex,
    passed: Option<Regex>,
    lines: LineSplitter,
    /// Inside a list of failed tests.
    listing: bool,
    /// Whether any list or count was seen.
    seen: bool,
    summary: TestSummary,
}

impl SummaryReader {
    /// `None` when a pattern cannot be read here.
    pub fn new(rule: &TestSummaryRule) -> Option<SummaryReader> {
        let failed = Regex::new(&rule.failed).ok()?;
        let passed = match &rule.passed {
            Some(pattern) => Some(Regex::new(pattern).ok()?),
            None => None,
        };
        Some(SummaryReader {
            failed,
            passed,
            lines: LineSplitter::default(),
            listing: false,
            seen: false,
            summary: TestSummary::default(),
        })
    }

    pub fn feed(&mut self, channel: LogChannel, data: &[u8]) {
        let mut lines = std::mem::take(&mut self.lines);
        lines.feed(channel, data, |line| self.line(line));
        self.lines = lines;
    }

    /// What the summary said, if the step printed one.
    pub fn finish(mut self) -> Option<TestSummary> {
        let mut lines = std::mem::take(&mut self.lines);
        lines.finish(|line| self.line(line));
        self.seen.then_some(self.summary)
    }

    fn line(&mut self, line: &[u8]) {
        if self.failed.is_match(line) {
            self.listing = true;
            self.seen = true;
            self.summary.failed.clear();
            return;
        }
        if let Some(count) = self.passed.as_ref().and_then(|passed| passed.captures(line)) {
            self.seen = true;
            self.summary.passed =
                count.get(1).and_then(|count| std::str::from_utf8(count.as_bytes()).ok()?.parse().ok());
        }
        if !self.listing {
            return;
        }
        let indented = line.first().is_some_and(|byte| *byte == b' ' || *byte == b'\t');
        if !indented || line.iter().all(u8::is_ascii_whitespace) {
            self.listing = false;
            return;
        }
        let text = String::from_utf8_lossy(line);
        for name in text.split_whitespace() {
            if self.summary.failed.len() < MAX_NAMES {
                self.summary.failed.push(name.to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regrtest() -> TestSummaryRule {
        TestSummaryRule {
            failed: r"^\d+ tests? failed(?: again)?:$".into(),
            passed: Some(r"^(\d+) tests? OK\.$".into()),
        }
    }

    #[test]
    fn regrtests_summary_gives_the_tests_that_failed_last_and_the_count_that_passed() {
        let mut reader = SummaryReader::new(&regrtest()).unwrap();
        let output = "0:00:01 [  1/400] test_os\n\
                      == Tests result: FAILURE then FAILURE ==\n\n\
                      385 tests OK.\n\n\
                      3 tests failed:\n    test_os test_sys\n    test_ssl\n\n\
                      Re-running 3 failed tests in verbose mode\n\
                      2 tests failed again:\n    test_os test_ssl\n\n\
                      Total duration: 5 min\n";
        // In pieces that cut lines, as pipes deliver them.
        for piece in output.as_bytes().chunks(7) {
            reader.feed(LogChannel::Stdout, piece);
        }
        let summary = reader.finish().expect("a summary");
        assert_eq!(summary.failed, ["test_os", "test_ssl"]);
        assert_eq!(summary.passed, Some(385));
    }

    #[test]
    fn no_summary_printed_is_none_and_all_passing_is_an_empty_list() {
        let mut reader = SummaryReader::new(&regrtest()).unwrap();
        reader.feed(LogChannel::Stdout, b"make: *** [test] Error 2\n");
        assert!(reader.finish().is_none());
        let mut reader = SummaryReader::new(&regrtest()).unwrap();
        reader.feed(LogChannel::Stdout, b"All 400 tests OK.\n400 tests OK.\n");
        assert_eq!(reader.finish(), Some(TestSummary { failed: Vec::new(), passed: Some(400) }));
    }
}
