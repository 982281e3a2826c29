//! JUnit XML, read as it streams: one test case at a time comes out while
//! the bytes go in, so a file of a hundred thousand cases is never held in
//! memory, neither as text nor as a tree.
//!
//! JUnit XML has no single specification; this reads what the common
//! writers (pytest, CPython's regrtest, Maven Surefire, Go's and Jest's
//! reporters) write: `<testsuites>` or `<testsuite>` at the root, suites
//! nested at any depth, and in each `<testcase>` at most one of
//! `<failure>`, `<error>` or `<skipped>`. Entities other than XML's own are
//! left as written; nothing outside the file is ever read (no DTD, no
//! external entity).

use quick_xml::events::{BytesStart, Event};
use tokio::io::AsyncBufRead;

/// The most of a failure's message kept per test: the first lines say what
/// failed, the whole traceback is in the log.
const MESSAGE_CHARS: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Error,
    Skip,
}

impl Outcome {
    /// The value of a test result, as the API serves it.
    pub fn value(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Error => "error",
            Outcome::Skip => "skip",
        }
    }
}

/// One `<testcase>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub name: String,
    /// `classname`, or else `file`, when given.
    pub code_path: Option<String>,
    pub duration_ns: Option<i64>,
    pub outcome: Outcome,
    /// The failure's, error's or skip's `message`, or else the first lines
    /// of its text; cut at `MESSAGE_CHARS`.
    pub message: Option<String>,
}

/// Why a file could not be read as JUnit XML, with the byte where it went
/// wrong when there is one.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("is not well-formed XML (at byte {position}): {message}")]
    Malformed { position: u64, message: String },
    #[error("is not JUnit XML: its root element is <{0}>, not <testsuites> or <testsuite>")]
    NotJunit(String),
    #[error("holds no XML element")]
    Empty,
    #[error("ends inside <{0}>; the file is cut short")]
    Truncated(String),
    #[error("{0}")]
    Read(String),
}

/// Reads cases from JUnit XML as its bytes arrive.
pub struct JunitReader<R> {
    reader: quick_xml::Reader<R>,
    buffer: Vec<u8>,
    state: State,
}

/// Where the reader is in the document.
struct State {
    /// The open elements' names, root first.
    open: Vec<String>,
    case: Option<Case>,
    /// Collecting the text of the case's `<failure>`/`<error>`/`<skipped>`
    /// (when it has no `message`).
    in_outcome: bool,
    seen_root: bool,
}

impl<R: AsyncBufRead + Unpin> JunitReader<R> {
    pub fn new(input: R) -> Self {
        let mut reader = quick_xml::Reader::from_reader(input);
        reader.config_mut().check_end_names = true;
        let state = State { open: Vec::new(), case: None, in_outcome: false, seen_root: false };
        Self { reader, buffer: Vec::new(), state }
    }

    /// The next test case, or `None` at the end of a complete document.
    pub async fn next_case(&mut self) -> Result<Option<Case>, JunitError> {
        loop {
            self.buffer.clear();
            let event = self.reader.read_event_into_async(&mut self.buffer).await.map_err(|error| match error {
                quick_xml::Error::Io(io) => JunitError::Read(io.to_string()),
                other => JunitError::Malformed { position: self.reader.error_position(), message: other.to_string() },
            })?;
            let malformed = |message: String, position: u64| JunitError::Malformed { position, message };
            let position = self.reader.buffer_position();
            let state = &mut self.state;
            match event {
                Event::Start(start) => {
                    let name = element_name(&start);
                    state.check_root(&name, position)?;
                    state.open_element(&start, &name).map_err(|message| malformed(message, position))?;
                    state.open.push(name);
                }
                Event::Empty(start) => {
                    let name = element_name(&start);
                    state.check_root(&name, position)?;
                    state.open_element(&start, &name).map_err(|message| malformed(message, position))?;
                    if let Some(case) = state.close_element(&name) {
                        return Ok(Some(case));
                    }
                }
                Event::End(end) => {
                    let name = String::from_utf8_lossy(end.local_name().as_ref()).into_owned();
                    state.open.pop();
                    if let Some(case) = state.close_element(&name) {
                        return Ok(Some(case));
                    }
                }
                Event::Text(text) if state.in_outcome => {
                    let text = text.decode().map_err(|error| malformed(error.to_string(), position))?;
                    state.add_text(&text);
                }
                Event::CData(text) if state.in_outcome => {
                    state.add_text(&String::from_utf8_lossy(&text));
                }
                Event::GeneralRef(reference) if state.in_outcome => {
                    let text = match reference.resolve_char_ref() {
                        Ok(Some(char)) => char.to_string(),
                        _ => {
                            let name = String::from_utf8_lossy(&reference).into_owned();
                            match quick_xml::escape::resolve_xml_entity(&name) {
                                Some(text) => text.to_owned(),
                                None => format!("&{name};"),
                            }
                        }
                    };
                    state.add_text(&text);
                }
                Event::Eof => {
                    return match (state.open.last(), state.seen_root) {
                        (Some(open), _) => Err(JunitError::Truncated(open.clone())),
                        (None, false) => Err(JunitError::Empty),
                        (None, true) => Ok(None),
                    };
                }
                _ => {}
            }
        }
    }
}

impl State {
    fn check_root(&mut self, name: &str, position: u64) -> Result<(), JunitError> {
        if self.open.is_empty() {
            if self.seen_root {
                return Err(JunitError::Malformed { position, message: format!("a second root element <{name}>") });
            }
            if name != "testsuites" && name != "testsuite" {
                return Err(JunitError::NotJunit(name.to_owned()));
            }
            self.seen_root = true;
        }
        Ok(())
    }

    fn open_element(&mut self, start: &BytesStart, name: &str) -> Result<(), String> {
        match name {
            "testcase" => {
                let mut case = Case {
                    name: String::new(),
                    code_path: None,
                    duration_ns: None,
                    outcome: Outcome::Pass,
                    message: None,
                };
                let mut file = None;
                for attribute in start.attributes() {
                    let attribute = attribute.map_err(|error| error.to_string())?;
                    let value = attribute.unescape_value().map_err(|error| error.to_string())?.into_owned();
                    match attribute.key.local_name().as_ref() {
                        b"name" => case.name = value,
                        b"classname" if !value.is_empty() => case.code_path = Some(value),
                        b"file" if !value.is_empty() => file = Some(value),
                        b"time" => case.duration_ns = seconds_to_ns(&value),
                        _ => {}
                    }
                }
                case.code_path = case.code_path.or(file);
                self.case = Some(case);
            }
            "failure" | "error" | "skipped" => {
                let Some(case) = &mut self.case else { return Ok(()) };
                let outcome = match name {
                    "failure" => Outcome::Fail,
                    "error" => Outcome::Error,
                    _ => Outcome::Skip,
                };
                // A case that both failed and errored counts as its worst.
                if rank(outcome) >= rank(case.outcome) {
                    case.outcome = outcome;
                    case.message = None;
                    for attribute in start.attributes() {
                        let attribute = attribute.map_err(|error| error.to_string())?;
                        if attribute.key.local_name().as_ref() == b"message" {
                            let value = attribute.unescape_value().map_err(|error| error.to_string())?;
                            if !value.trim().is_empty() {
                                case.message = Some(cut(value.trim()));
                            }
                        }
                    }
                    self.in_outcome = case.message.is_none();
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Ends an element; a case comes out when its `<testcase>` ends.
    fn close_element(&mut self, name: &str) -> Option<Case> {
        match name {
            "testcase" => self.case.take().map(|mut case| {
                if let Some(message) = &mut case.message {
                    *message = message.trim().to_owned();
                }
                self.in_outcome = false;
                case
            }),
            "failure" | "error" | "skipped" => {
                self.in_outcome = false;
                None
            }
            _ => None,
        }
    }

    fn add_text(&mut self, text: &str) {
        let Some(case) = &mut self.case else { return };
        let message = case.message.get_or_insert_with(String::new);
        let room = MESSAGE_CHARS.saturating_sub(message.chars().count());
        if room == 0 {
            return;
        }
        // Leading blank lines say nothing; the message starts at the text.
        let text = if message.is_empty() { text.trim_start() } else { text };
        message.extend(text.chars().take(room));
    }
}

fn element_name(start: &BytesStart) -> String {
    String::from_utf8_lossy(start.local_name().as_ref()).into_owned()
}

fn rank(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Pass => 0,
        Outcome::Skip => 1,
        Outcome::Fail => 2,
        Outcome::Error => 3,
    }
}

fn cut(text: &str) -> String {
    text.chars().take(MESSAGE_CHARS).collect()
}

/// `time="0.123"` (seconds; some writers use a comma, or thousands
/// separators) as nanoseconds.
fn seconds_to_ns(text: &str) -> Option<i64> {
    let seconds: f64 = text.trim().replace(',', "").parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| (seconds * 1e9).min(i64::MAX as f64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(xml: &str) -> Result<Vec<Case>, JunitError> {
        let mut reader = JunitReader::new(xml.as_bytes());
        let mut cases = Vec::new();
        while let Some(case) = reader.next_case().await? {
            cases.push(case);
        }
        Ok(cases)
    }

    #[tokio::test]
    async fn passes_failures_errors_and_skips_come_out_in_order() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
  <testcase classname="tests.test_a" name="test_ok" time="0.25"/>
  <testcase classname="tests.test_a" name="test_bad" time="1,5">
    <failure message="assert 1 == 2">tests/test_a.py:12: AssertionError</failure>
    <system-out>noise</system-out>
  </testcase>
  <testcase classname="tests.test_b" name="test_broken"><error>Traceback:
  KeyError: &apos;x&apos; &amp; &#x41;</error></testcase>
  <testcase file="tests/test_c.py" name="test_later"><skipped message="needs network"/></testcase>
</testsuite></testsuites>"#;
        let cases = read(xml).await.unwrap();
        let summary: Vec<(&str, Option<&str>, Outcome)> =
            cases.iter().map(|c| (c.name.as_str(), c.code_path.as_deref(), c.outcome)).collect();
        assert_eq!(
            summary,
            [
                ("test_ok", Some("tests.test_a"), Outcome::Pass),
                ("test_bad", Some("tests.test_a"), Outcome::Fail),
                ("test_broken", Some("tests.test_b"), Outcome::Error),
                ("test_later", Some("tests/test_c.py"), Outcome::Skip),
            ]
        );
        assert_eq!(cases[0].duration_ns, Some(250_000_000));
        assert_eq!(cases[1].duration_ns, Some(15_000_000_000));
        assert_eq!(cases[1].message.as_deref(), Some("assert 1 == 2"));
        assert_eq!(cases[2].message.as_deref(), Some("Traceback:\n  KeyError: 'x' & A"));
        assert_eq!(cases[3].message.as_deref(), Some("needs network"));
    }

    #[tokio::test]
    async fn what_is_not_junit_is_told_apart() {
        assert!(matches!(read("<html><body/></html>").await, Err(JunitError::NotJunit(root)) if root == "html"));
        assert!(matches!(read("  \n").await, Err(JunitError::Empty)));
        assert!(matches!(
            read("<testsuite><testcase name='a'>").await,
            Err(JunitError::Truncated(open)) if open == "testcase"
        ));
        let Err(JunitError::Malformed { position, .. }) = read("<testsuite><testcase name='a'></testsuite>").await
        else {
            panic!("a mismatched end tag is malformed");
        };
        assert!(position > 0);
    }

    #[tokio::test]
    async fn a_long_message_is_cut() {
        let xml =
            format!("<testsuite><testcase name='a'><failure>{}</failure></testcase></testsuite>", "x".repeat(10_000));
        let cases = read(&xml).await.unwrap();
        assert_eq!(cases[0].message.as_ref().unwrap().chars().count(), MESSAGE_CHARS);
    }
}
