//! What travels between masters and workers through RabbitMQ and Redis.
//!
//! Every message is JSON in a versioned envelope with an internally tagged
//! body (`{"v":1,"type":"claim",...}`), so a master can refuse a message from
//! an incompatible worker with a clear reason instead of misreading it.
//! Events are snapshots, not deltas: each says everything its sender knows
//! about what it reports, so masters record them correctly in any order and
//! any number of times.
//!
//! These types are the wire's own, not the configuration's: a step travels
//! as [`Step`], made from `config::StepSpec` by the master at the claim.
//! While a rolling upgrade is under way, masters and workers of two
//! neighbouring versions talk, so every reader here ignores fields it does
//! not know, and a field a reader may miss has a default. ARCHITECTURE.md
//! ("Changing the wire") says what a change must do to keep that true.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{BuildId, BuildRequestId, BuilderName, WorkerName};
use crate::model::{Results, StepFlags};

/// The version of this protocol. Bumped only for a change that cannot
/// follow the rules in ARCHITECTURE.md ("Changing the wire"): adding a
/// field never bumps it.
pub const WIRE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message is not valid JSON for this type: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("message has no protocol version `v`; it was not sent by buildmaster")]
    Unversioned,
    #[error("message has protocol version {found}, this side speaks {WIRE_VERSION}; upgrade the older side")]
    Version { found: u32 },
}

/// The body's JSON object with the protocol version `v` added. (Not
/// `#[serde(flatten)]`: it would lose integer map keys such as `decode_rc`'s.)
pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    let mut value = serde_json::to_value(body).expect("wire messages always serialize");
    if let serde_json::Value::Object(fields) = &mut value {
        fields.insert("v".into(), WIRE_VERSION.into());
    }
    serde_json::to_vec(&value).expect("wire messages always serialize")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes)?;
    let version = value.as_object_mut().and_then(|fields| fields.remove("v")).and_then(|v| v.as_u64());
    match version {
        Some(version) if version == u64::from(WIRE_VERSION) => Ok(serde_json::from_value(value)?),
        Some(found) => Err(WireError::Version { found: found as u32 }),
        None => Err(WireError::Unversioned),
    }
}

/// Published by a master to a builder's queue after a request for it was
/// committed: "builder X has work". Not the truth: the claim decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Doorbell {
    Ring {
        builder: BuilderName,
        /// The request whose commit rang it. A worker names it in its
        /// claim, which takes it among the requests of the highest
        /// priority waiting, before older ones that have doorbells of
        /// their own.
        #[serde(default)]
        buildrequest_id: Option<BuildRequestId>,
    },
}

/// Worker → masters, answered into the worker's reply queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RpcRequest {
    /// Sent at start: which builders should I serve? `info` (host, version,
    /// operating system) is shown to users as Buildbot's `workerinfo`.
    Hello {
        worker: WorkerName,
        #[serde(default)]
        info: BTreeMap<String, String>,
    },
    /// Give me the best pending request of `builder`. Retrying with the same
    /// `claim_token` returns the same build, so a lost reply costs nothing.
    Claim {
        worker: WorkerName,
        builder: BuilderName,
        claim_token: Uuid,
        /// The builds this worker runs now. A build of `builder` that it
        /// no longer runs does not keep the builder busy, though its
        /// `BuildFinished` may still be on its way to the masters. `None`
        /// from a worker that does not say: every build the masters have
        /// not seen end counts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        running: Option<Vec<BuildId>>,
        /// The request named by the doorbell that made the worker claim.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rung_for: Option<BuildRequestId>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RpcReply {
    Welcome {
        builders: Vec<BuilderName>,
        max_builds: u32,
        heartbeat_seconds: u64,
        /// A paused worker keeps its connection and running builds but takes
        /// no new one until it is unpaused.
        #[serde(default)]
        paused: bool,
        /// The version of `paused`; see [`ControlMessage::SetPaused`].
        #[serde(default)]
        pause_version: i64,
    },
    Claimed {
        build: BuildAssignment,
    },
    NothingPending,
    Refused {
        reason: String,
    },
}

/// Everything a worker needs to run one build; it never reads config itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildAssignment {
    pub build_id: BuildId,
    pub builder: BuilderName,
    pub number: i32,
    pub worker: WorkerName,
    pub steps: Vec<Step>,
    /// The trace of the request (W3C traceparent): the build's span is its
    /// child.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The secrets the steps' env uses (`%(secret:NAME)s`), by name.
    #[serde(default)]
    pub secrets: SecretValues,
    /// The size cap of each log (settings' `builds.max_log_bytes`).
    #[serde(default)]
    pub max_log_bytes: Option<u64>,
    /// The size caps of the files steps send (settings' `builds`).
    #[serde(default)]
    pub file_limits: FileLimits,
    /// Not read by workers of this version (properties are already put
    /// into the steps); still sent, as workers of the previous version
    /// require them.
    #[serde(default)]
    pub buildrequest_id: Option<BuildRequestId>,
    #[serde(default)]
    pub properties: BTreeMap<String, serde_json::Value>,
}

/// One step as a worker runs it: the configuration's step with the build's
/// properties put in. Every option a worker of the previous version does
/// not know must have a default here, and be safe to ignore there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub command: Command,
    /// Extra environment variables; `%(secret:NAME)s` in a value is put in
    /// by the worker from [`BuildAssignment::secrets`], `%%(` is a literal
    /// `%(`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Relative to the builder's directory on the worker.
    pub workdir: String,
    /// Seconds without output after which the step is killed.
    pub timeout: u64,
    /// Seconds of running after which the step is killed.
    #[serde(default)]
    pub max_time: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL.
    pub kill_grace: u64,
    pub halt_on_failure: bool,
    pub flunk_on_failure: bool,
    pub warn_on_failure: bool,
    pub warn_on_warnings: bool,
    pub always_run: bool,
    /// Exit code to result; codes not listed are FAILURE.
    #[serde(deserialize_with = "crate::model::deserialize_exit_codes")]
    pub decode_rc: BTreeMap<i32, Results>,
    /// Warnings to count in the output.
    #[serde(default)]
    pub warnings: Option<Warnings>,
    /// How to read failed tests from the output.
    #[serde(default)]
    pub test_summary: Option<TestSummaryRule>,
    /// JUnit XML files to send after the step (globs relative to `workdir`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_results: Vec<String>,
    /// Files to keep with the build (globs relative to `workdir`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// Its standard output, trimmed, becomes this property when it succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_property: Option<String>,
    /// Run only when this holds; otherwise SKIPPED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_if: Option<RunIf>,
    /// Its argv and workdir hold `%(prop:NAME)s` of properties earlier
    /// steps set, every other `%(` escaped as `%%(` (as env values always
    /// are): the worker puts them in. Env values may hold them too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late_properties: bool,
}

/// Where a worker's hello `info` lists the step options it honours,
/// separated by spaces.
pub const STEP_OPTIONS_INFO: &str = "step_options";

/// Step options a worker that ignored them would run wrongly: a step meant
/// to be skipped would run (`run_if`), a property later steps use would stay
/// unset (`set_property`). Masters give a builder whose steps use one only
/// to workers whose hello lists it under [`STEP_OPTIONS_INFO`]; workers of
/// versions before these options list nothing there.
pub const STEP_OPTIONS: [&str; 2] = ["run_if", "set_property"];

/// The step options a worker's hello `info` says it honours.
pub fn honoured_step_options(info: &BTreeMap<String, String>) -> Vec<&str> {
    info.get(STEP_OPTIONS_INFO).map(|options| options.split_whitespace().collect()).unwrap_or_default()
}

/// When a step runs, decided as the build runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunIf {
    /// The property is set and not empty.
    Property { property: String },
    /// The named earlier step ended with one of these results.
    Step { step: String, results: Vec<Results> },
}

/// How large the files a step sends may be; a larger one is refused, with
/// a line in the step's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLimits {
    pub test_result_file_bytes: u64,
    pub artifact_bytes: u64,
    pub artifacts_per_build_bytes: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            test_result_file_bytes: 64 * 1024 * 1024,
            artifact_bytes: 256 * 1024 * 1024,
            artifacts_per_build_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// What a file a step sent is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// JUnit XML, read into test results.
    TestResults,
    /// Kept as it is, for download.
    Artifact,
}

/// A file a step sent: its Redis stream (`Namespace::file_stream_key` with
/// `index`) holds entries `1-0` … `{entries}-0` with its bytes in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub kind: FileKind,
    pub index: u32,
    /// Relative to the step's workdir, as the glob matched it.
    pub path: String,
    pub entries: u64,
    pub bytes: u64,
    /// Hex SHA-256 of the bytes, as the worker read them.
    pub sha256: String,
}

/// How a worker reads a test runner's summary (see
/// `config::TestSummarySpec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSummaryRule {
    pub failed: String,
    pub passed: Option<String>,
}

/// What a step's test summary said.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSummary {
    /// In the order the runner listed them.
    pub failed: Vec<String>,
    pub passed: Option<u64>,
}

/// Lines matching `pattern` are warnings; more than `max` make a step that
/// succeeded end WARNINGS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warnings {
    pub pattern: String,
    pub max: u32,
}

impl Step {
    pub fn flags(&self) -> StepFlags {
        StepFlags {
            halt_on_failure: self.halt_on_failure,
            flunk_on_failure: self.flunk_on_failure,
            warn_on_failure: self.warn_on_failure,
            warn_on_warnings: self.warn_on_warnings,
        }
    }

    /// The result an exit code means for this step.
    pub fn result_for_exit_code(&self, code: i32) -> Results {
        self.decode_rc.get(&code).copied().unwrap_or(Results::Failure)
    }
}

/// How a step's command is run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    /// Run directly, no shell.
    Argv(Vec<String>),
    /// Run by `/bin/sh -c`.
    Shell(String),
}

impl Command {
    /// The program and its arguments.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Argv(argv) => argv.clone(),
            Command::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script.clone()],
        }
    }
}

/// Secret values by name; never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValues(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} secret(s)", self.0.len())
    }
}

/// Worker → masters, through the events queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerEvent {
    StepStarted {
        worker: WorkerName,
        build_id: BuildId,
        seq: i64,
        step: StepRecord,
        /// The worker's clock when it sent this (see [`WorkerEvent::sent_at`]).
        #[serde(default)]
        sent_at: Option<DateTime<Utc>>,
    },
    StepFinished {
        worker: WorkerName,
        build_id: BuildId,
        seq: i64,
        step: StepRecord,
        /// The worker's clock when it sent this (see [`WorkerEvent::sent_at`]).
        #[serde(default)]
        sent_at: Option<DateTime<Utc>>,
    },
    /// Carries every step, so recording it alone completes the build.
    BuildFinished {
        worker: WorkerName,
        build_id: BuildId,
        seq: i64,
        results: Results,
        state_string: String,
        finished_at: DateTime<Utc>,
        steps: Vec<StepRecord>,
        #[serde(default)]
        sent_at: Option<DateTime<Utc>>,
    },
    /// Extends the leases of the builds the worker is running.
    Heartbeat { worker: WorkerName, build_ids: Vec<BuildId>, sent_at: DateTime<Utc> },
}

impl WorkerEvent {
    /// The build it is about; none for a heartbeat.
    pub fn build_id(&self) -> Option<BuildId> {
        match self {
            WorkerEvent::StepStarted { build_id, .. }
            | WorkerEvent::StepFinished { build_id, .. }
            | WorkerEvent::BuildFinished { build_id, .. } => Some(*build_id),
            WorkerEvent::Heartbeat { .. } => None,
        }
    }

    /// Its name on the wire, for logs and spans.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkerEvent::StepStarted { .. } => "step_started",
            WorkerEvent::StepFinished { .. } => "step_finished",
            WorkerEvent::BuildFinished { .. } => "build_finished",
            WorkerEvent::Heartbeat { .. } => "heartbeat",
        }
    }

    /// The worker's clock when it sent the event. Its times are the
    /// worker's clock's, which may be off: masters learn by how much from
    /// when events arrive, and record times on their own clock. (Workers of
    /// the previous version send none but in heartbeats.)
    pub fn sent_at(&self) -> Option<DateTime<Utc>> {
        match self {
            WorkerEvent::StepStarted { sent_at, .. }
            | WorkerEvent::StepFinished { sent_at, .. }
            | WorkerEvent::BuildFinished { sent_at, .. } => *sent_at,
            WorkerEvent::Heartbeat { sent_at, .. } => Some(*sent_at),
        }
    }

    pub fn worker(&self) -> &WorkerName {
        match self {
            WorkerEvent::StepStarted { worker, .. }
            | WorkerEvent::StepFinished { worker, .. }
            | WorkerEvent::BuildFinished { worker, .. }
            | WorkerEvent::Heartbeat { worker, .. } => worker,
        }
    }
}

/// A step as its worker knows it at the time of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 0-based position in the factory, as Buildbot numbers steps.
    pub number: i32,
    pub name: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// None while running.
    pub results: Option<Results>,
    pub state_string: String,
    pub logs: Vec<LogRecord>,
    /// What the step's test runner summary said, once it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_summary: Option<TestSummary>,
    /// The files it sent, once it finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRecord>,
    /// Properties it set (`set_property`), once it finished.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// A log of a step: its Redis stream holds entries `1-0` … `{chunks}-0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub slug: String,
    pub name: String,
    pub chunks: u64,
    pub bytes: u64,
}

/// Master → one worker, through its control queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    StopBuild {
        build_id: BuildId,
        reason: String,
    },
    /// Take no new builds while `paused`; running ones go on. Versions grow
    /// with every change in Postgres: a worker ignores one older than what
    /// it has, so two masters sending at once cannot leave it wrong.
    SetPaused {
        paused: bool,
        version: i64,
    },
    /// Finish the running builds, take no new one, and exit (as on SIGTERM).
    Shutdown {
        reason: String,
    },
    /// The builders this worker serves now, after a master applied a
    /// changed configuration: it consumes these builders' doorbells from
    /// now on.
    SetBuilders {
        builders: Vec<BuilderName>,
    },
}

/// Which stream of a step a piece of log came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogChannel {
    Stdout,
    Stderr,
    /// Lines buildmaster itself writes (the command, the exit code); not part
    /// of what the step printed, so not in the raw download.
    Header,
}

impl LogChannel {
    pub fn code(self) -> u8 {
        match self {
            LogChannel::Stdout => b'o',
            LogChannel::Stderr => b'e',
            LogChannel::Header => b'h',
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            b'o' => Some(LogChannel::Stdout),
            b'e' => Some(LogChannel::Stderr),
            b'h' => Some(LogChannel::Header),
            _ => None,
        }
    }
}

/// The name of the one log every shell step has, as in Buildbot.
pub const STDIO_LOG: &str = "stdio";
/// The slug of the log holding the lines a step's warnings pattern matched.
pub const WARNINGS_LOG: &str = "warnings";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_that_lists_no_step_options_honours_none() {
        let mut info = BTreeMap::from([("version".to_owned(), "0.1.0".to_owned())]);
        assert!(honoured_step_options(&info).is_empty());
        info.insert(STEP_OPTIONS_INFO.to_owned(), " run_if  set_property ".to_owned());
        assert_eq!(honoured_step_options(&info), STEP_OPTIONS);
    }

    fn step() -> Step {
        Step {
            name: "t".into(),
            command: Command::Argv(vec!["x".into()]),
            env: BTreeMap::new(),
            workdir: "build".into(),
            timeout: 60,
            max_time: None,
            kill_grace: 5,
            halt_on_failure: false,
            flunk_on_failure: true,
            warn_on_failure: false,
            warn_on_warnings: true,
            always_run: false,
            decode_rc: BTreeMap::from([(0, Results::Success), (5, Results::Warnings)]),
            warnings: None,
            test_summary: None,
            test_results: Vec::new(),
            artifacts: Vec::new(),
            set_property: None,
            run_if: None,
            late_properties: false,
        }
    }

    fn assignment(steps: Vec<Step>) -> BuildAssignment {
        BuildAssignment {
            build_id: BuildId(1),
            builder: "b".into(),
            number: 1,
            worker: "w".into(),
            steps,
            traceparent: None,
            secrets: SecretValues::default(),
            max_log_bytes: None,
            file_limits: FileLimits::default(),
            buildrequest_id: Some(BuildRequestId(1)),
            properties: BTreeMap::new(),
        }
    }

    #[test]
    fn a_shell_string_runs_through_sh() {
        assert_eq!(Command::Shell("echo hi".into()).argv(), ["/bin/sh", "-c", "echo hi"]);
    }

    #[test]
    fn a_message_round_trips_through_its_envelope() {
        let request = RpcRequest::Claim {
            worker: "w1".into(),
            builder: "b".into(),
            claim_token: Uuid::new_v4(),
            running: Some(vec![BuildId(3)]),
            rung_for: Some(BuildRequestId(5)),
        };
        let bytes = encode(&request);
        assert!(std::str::from_utf8(&bytes).unwrap().contains(r#""type":"claim""#));
        assert_eq!(decode::<RpcRequest>(&bytes).unwrap(), request);
    }

    #[test]
    fn integer_map_keys_survive_the_envelope() {
        let reply = RpcReply::Claimed { build: assignment(vec![step()]) };
        assert_eq!(decode::<RpcReply>(&encode(&reply)).unwrap(), reply);
    }

    #[test]
    fn fields_this_version_does_not_know_are_ignored() {
        let mut value: serde_json::Value =
            serde_json::from_slice(&encode(&RpcReply::Claimed { build: assignment(vec![step()]) })).unwrap();
        value["build"]["steps"][0]["warning_pattern"] = "^warning:".into();
        value["build"]["priority_class"] = "urgent".into();
        let reply: RpcReply = decode(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(reply, RpcReply::Claimed { build: assignment(vec![step()]) });
    }

    #[test]
    fn another_protocol_version_is_refused_with_its_number() {
        let error = decode::<RpcRequest>(br#"{"v":2,"type":"hello","worker":"w"}"#).unwrap_err();
        assert!(matches!(error, WireError::Version { found: 2 }), "{error}");
    }
}
