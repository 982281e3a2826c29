//! Configuration users write, typed, loaded and validated in one place.
//!
//! Two files, as on buildbot.python.org: `master.yaml` (builders, factories,
//! schedulers; kept in the configuration's git repository and reloaded live)
//! and `settings.yaml` (service URLs, workers and their passwords, web
//! settings; private to the host). A remote worker has its own small file,
//! `worker.yaml`.
//!
//! Every field's `///` doc is its reference. Loading never stops at the first
//! problem: it collects every error with its file, line, column and a hint,
//! so `buildmaster checkconfig` can show them all at once.

pub mod interpolate;
mod source_map;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::de::{self, DeserializeOwned};
use serde::{Deserialize, Deserializer, Serialize};

pub use source_map::{Position, SourceMap, YamlPath};

use crate::model::{Results, StepFlags};

/// Environment variables that name the settings file, in order of precedence
/// (after `--settings`). The second is the one buildbot.python.org's own
/// instructions use.
pub const SETTINGS_ENV_VARS: [&str; 2] = ["BUILDMASTER_SETTINGS", "PYBUILDBOT_SETTINGS_PATH"];

/// Workers' passwords must be at least this long, as buildbot.python.org asks.
pub const MIN_WORKER_PASSWORD_CHARS: usize = 14;

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

/// A string that must never be printed: passwords and URLs that carry them.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

// ---------------------------------------------------------------------------
// settings.yaml
// ---------------------------------------------------------------------------

/// `settings.yaml`: what is private to the host running masters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Postgres URL, e.g. `postgres://buildmaster:pw@127.0.0.1:5432/buildmaster`.
    /// Postgres is the system of record and the only thing to back up.
    pub database_url: Secret,
    /// RabbitMQ URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub amqp_url: Secret,
    /// Redis URL, e.g. `redis://127.0.0.1:6379/`.
    pub redis_url: Secret,
    /// Prefix of every queue, exchange and Redis key, so several buildmaster
    /// installations (or test runs) can share one RabbitMQ and one Redis.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Path of `master.yaml`, relative to this file's folder.
    #[serde(default = "default_master_config")]
    pub master_config: PathBuf,
    #[serde(default)]
    pub web: WebSettings,
    /// Remote workers allowed to connect, with their passwords.
    #[serde(default)]
    pub workers: Vec<WorkerSettings>,
    /// When set, masters give every worker in `workers` an account of its
    /// own in RabbitMQ and Redis, limited to what that worker needs, and
    /// trust a worker's identity only from RabbitMQ's validated `user_id`.
    pub worker_accounts: Option<WorkerAccountsSettings>,
    /// Run a worker inside every master, consuming like any other worker.
    #[serde(default)]
    pub use_local_worker: bool,
    /// The local worker serves the builders whose factory has this name.
    #[serde(default = "default_local_worker_buildfactory")]
    pub local_worker_buildfactory: String,
    #[serde(default)]
    pub local_worker: LocalWorkerSettings,
    #[serde(default)]
    pub builds: BuildSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub retention: RetentionSettings,
    /// Values steps may use in their environment as `%(secret:NAME)s`,
    /// never written in master.yaml; masked as `***` in logs.
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
    /// People and scripts who may log in. With none, control actions
    /// (force, stop, ...) are open to anyone who reaches the masters.
    #[serde(default)]
    pub users: Vec<UserSettings>,
    /// Which roles may do what, once `users` has anyone.
    #[serde(default)]
    pub authorization: AuthorizationSettings,
    /// GitHub's webhook (`/change_hook/github`); off while unset.
    pub github: Option<GitHubSettings>,
}

/// The GitHub webhook and the API it asks who may trigger builds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubSettings {
    /// The webhook's secret: every delivery must be signed with it
    /// (`X-Hub-Signature-256`); others get 401 and change nothing.
    pub webhook_secret: Secret,
    /// GitHub's REST API, asked whether a commenter may write to the
    /// repository.
    #[serde(default = "default_github_api")]
    pub api_url: String,
    /// A token for that API.
    pub api_token: Option<Secret>,
}

fn default_github_api() -> String {
    "https://api.github.com".into()
}

/// Someone who may log in (with a password, on the web) or send an API
/// token (scripts).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSettings {
    pub name: String,
    /// An argon2 hash (`buildmaster hash-password` makes one); without it
    /// the user cannot log in with a password, only use tokens.
    pub password_hash: Option<Secret>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// SHA-256 (hex) of each API token the user's scripts send as
    /// `Authorization: Bearer <token>` (`buildmaster new-token` makes one).
    #[serde(default)]
    pub token_sha256: Vec<String>,
}

/// The roles allowed each control action. A user may act when one of their
/// roles is listed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationSettings {
    #[serde(default = "admins_only")]
    pub force: Vec<String>,
    #[serde(default = "admins_only")]
    pub stop_build: Vec<String>,
    #[serde(default = "admins_only")]
    pub rebuild: Vec<String>,
    #[serde(default = "admins_only")]
    pub cancel: Vec<String>,
    #[serde(default = "admins_only")]
    pub set_priority: Vec<String>,
    /// Pause, unpause and stop workers.
    #[serde(default = "admins_only")]
    pub manage_workers: Vec<String>,
    /// Pause and unpause builders.
    #[serde(default = "admins_only")]
    pub manage_builders: Vec<String>,
}

fn admins_only() -> Vec<String> {
    vec!["admins".into()]
}

impl Default for AuthorizationSettings {
    fn default() -> Self {
        Self {
            force: admins_only(),
            stop_build: admins_only(),
            rebuild: admins_only(),
            cancel: admins_only(),
            set_priority: admins_only(),
            manage_workers: admins_only(),
            manage_builders: admins_only(),
        }
    }
}

impl Settings {
    /// The user an API token belongs to.
    pub fn user_of_token_sha256(&self, token_sha256: &str) -> Option<&UserSettings> {
        self.users.iter().find(|user| user.token_sha256.iter().any(|hash| hash.eq_ignore_ascii_case(token_sha256)))
    }

    pub fn user(&self, name: &str) -> Option<&UserSettings> {
        self.users.iter().find(|user| user.name == name)
    }
}

/// How long history is kept. Unset horizons keep everything. Deleting runs
/// in small batches, one master at a time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Log contents of builds finished longer ago than this are deleted; the
    /// log's record stays and says so.
    pub logs_days: Option<u32>,
    /// Builds finished longer ago than this are deleted, with their steps,
    /// logs, requests and buildsets.
    pub builds_days: Option<u32>,
    /// Builds (or buildsets) per delete transaction: small, so no lock is
    /// held for long.
    #[serde(default = "default_retention_batch")]
    pub batch: u32,
    /// Time between passes.
    #[serde(default = "default_retention_interval_seconds")]
    pub interval_seconds: u64,
}

fn default_retention_batch() -> u32 {
    500
}

fn default_retention_interval_seconds() -> u64 {
    300
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            logs_days: None,
            builds_days: None,
            batch: default_retention_batch(),
            interval_seconds: default_retention_interval_seconds(),
        }
    }
}

fn default_namespace() -> String {
    "buildmaster".into()
}

fn default_master_config() -> PathBuf {
    "master.yaml".into()
}

fn default_local_worker_buildfactory() -> String {
    "UnixBuild".into()
}

/// Traces, exported with OpenTelemetry's protocol (OTLP) over HTTP to a
/// collector (the OpenTelemetry Collector, Jaeger, Tempo...). Off without an
/// endpoint. The same block is read from settings.yaml and worker.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Base URL of the collector's OTLP/HTTP receiver, e.g.
    /// `http://127.0.0.1:4318`; spans go to `{endpoint}/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (the default) or `http/json`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Share of traces kept, from 0.0 to 1.0, decided where a trace starts
    /// and followed by every part of it.
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: f64,
    /// `service.name` of the spans; default `buildmaster-master` or
    /// `buildmaster-worker`.
    pub service_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

fn default_sampling_ratio() -> f64 {
    1.0
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            protocol: OtlpProtocol::default(),
            sampling_ratio: default_sampling_ratio(),
            service_name: None,
        }
    }
}

/// The web server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSettings {
    /// Public port, served by HAProxy in front of the masters.
    #[serde(default = "default_public_port")]
    pub port: u16,
    /// Address a master listens on when `buildmaster start` is given no
    /// `--listen`. Each master on a host needs its own.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Mark login cookies `Secure` (sent over HTTPS only; browsers also
    /// accept them from http://localhost). Turn off only to log in over
    /// plain HTTP on another address.
    #[serde(default = "default_true")]
    pub secure_cookies: bool,
}

fn default_public_port() -> u16 {
    9011
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9021))
}

fn default_max_body_bytes() -> usize {
    1024 * 1024
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            port: default_public_port(),
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            secure_cookies: true,
        }
    }
}

/// Per-worker accounts, kept in sync by every master.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerAccountsSettings {
    /// RabbitMQ's management API, with an administrator's credentials, e.g.
    /// `http://guest:guest@127.0.0.1:15672/`.
    pub rabbitmq_management_url: Secret,
    /// How often each master checks the accounts (they are also synced at
    /// start and on every reload), so a broker or Redis that lost them gets
    /// them back.
    #[serde(default = "default_accounts_sync_seconds")]
    pub sync_seconds: u64,
}

fn default_accounts_sync_seconds() -> u64 {
    60
}

/// A remote worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Its login name: letters, digits, `.`, `_` and `-`.
    pub name: String,
    /// Its password, at least 14 characters.
    pub password: Secret,
    /// How many builds it runs at once.
    #[serde(default = "default_max_builds")]
    pub max_builds: u32,
    /// Properties of every build it runs (e.g. `parallel_tests: 4`),
    /// source `Worker`.
    #[serde(default)]
    pub properties: BTreeMap<String, serde_yaml::Value>,
    /// Daily windows in which it takes no new builds (as if paused; its
    /// running builds go on), e.g. a machine its owner uses by day.
    #[serde(default)]
    pub downtime: Vec<DowntimeWindow>,
}

/// A daily window, `from` to `until` (`HH:MM`, crossing midnight when
/// `until` is earlier), in a time zone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DowntimeWindow {
    pub from: String,
    pub until: String,
    #[serde(default = "default_timezone")]
    pub timezone: String,
}

impl DowntimeWindow {
    fn bounds(&self) -> Option<(chrono::NaiveTime, chrono::NaiveTime, chrono_tz::Tz)> {
        let time = |text: &str| chrono::NaiveTime::parse_from_str(text, "%H:%M").ok();
        Some((time(&self.from)?, time(&self.until)?, self.timezone.parse().ok()?))
    }

    /// Whether `now` falls in the window (never, for one `checkconfig`
    /// refuses).
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        let Some((from, until, zone)) = self.bounds() else {
            return false;
        };
        let local = now.with_timezone(&zone).time();
        if from <= until { from <= local && local < until } else { local >= from || local < until }
    }
}

impl WorkerSettings {
    /// Whether one of its downtime windows holds `now`.
    pub fn in_downtime(&self, now: DateTime<Utc>) -> bool {
        self.downtime.iter().any(|window| window.contains(now))
    }
}

fn default_max_builds() -> u32 {
    1
}

/// The worker that runs inside each master when `use_local_worker` is on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalWorkerSettings {
    /// Its name; each master's local worker appends the master's name.
    #[serde(default = "default_local_worker_name")]
    pub name: String,
    /// Where it checks out and builds, relative to the settings file's folder.
    #[serde(default = "default_local_worker_basedir")]
    pub basedir: PathBuf,
    #[serde(default = "default_local_max_builds")]
    pub max_builds: u32,
}

fn default_local_worker_name() -> String {
    "local".into()
}

fn default_local_worker_basedir() -> PathBuf {
    "workers".into()
}

fn default_local_max_builds() -> u32 {
    2
}

impl Default for LocalWorkerSettings {
    fn default() -> Self {
        Self {
            name: default_local_worker_name(),
            basedir: default_local_worker_basedir(),
            max_builds: default_local_max_builds(),
        }
    }
}

/// Timing of running builds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSettings {
    /// A build whose worker has not sent a heartbeat for this long is
    /// considered lost and retried.
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    /// How often workers send heartbeats for their running builds.
    #[serde(default = "default_heartbeat_seconds")]
    pub heartbeat_seconds: u64,
    /// How long a log stays in Redis after it was archived in Postgres, so
    /// that people watching it live see its end.
    #[serde(default = "default_log_linger_seconds")]
    pub log_linger_seconds: u64,
    /// A pending request is announced again to workers when nobody claimed it
    /// for this long (its doorbell may have been lost with a broker).
    #[serde(default = "default_redeliver_after_seconds")]
    pub redeliver_after_seconds: u64,
    /// How many times a request is built again after its worker was lost;
    /// after that it ends as EXCEPTION, so a build that kills its worker
    /// every time cannot take down the fleet one worker after another.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// A log is cut after this many bytes, with a marker saying so; the
    /// step goes on. None: no cap.
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: Option<u64>,
}

fn default_max_log_bytes() -> Option<u64> {
    Some(256 * 1024 * 1024)
}

fn default_lease_seconds() -> u64 {
    60
}

fn default_heartbeat_seconds() -> u64 {
    5
}

fn default_log_linger_seconds() -> u64 {
    600
}

fn default_redeliver_after_seconds() -> u64 {
    60
}

fn default_max_retries() -> u32 {
    3
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            lease_seconds: default_lease_seconds(),
            heartbeat_seconds: default_heartbeat_seconds(),
            log_linger_seconds: default_log_linger_seconds(),
            redeliver_after_seconds: default_redeliver_after_seconds(),
            max_retries: default_max_retries(),
            max_log_bytes: default_max_log_bytes(),
        }
    }
}

// ---------------------------------------------------------------------------
// master.yaml
// ---------------------------------------------------------------------------

/// `master.yaml`: what to build, how, and when.
#[derive(Debug, Clone, Default)]
pub struct MasterConfig {
    pub builders: Vec<BuilderConfig>,
    /// Named step lists, shared by builders.
    pub factories: BTreeMap<String, FactoryConfig>,
    pub schedulers: Vec<SchedulerConfig>,
    /// Repositories polled for new commits (for those that send no
    /// webhook).
    pub pollers: Vec<PollerConfig>,
}

/// A git repository whose branches any master polls; each new commit
/// becomes one change, handed to the branch schedulers like a push.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollerConfig {
    pub repourl: String,
    pub branches: Vec<String>,
    #[serde(default = "default_poll_seconds")]
    pub poll_seconds: u64,
}

fn default_poll_seconds() -> u64 {
    60
}

/// The top level of master.yaml; each item is parsed on its own so that one
/// bad builder does not hide the errors of the next.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MasterConfigFile {
    #[serde(default)]
    builders: Vec<serde_yaml::Value>,
    #[serde(default)]
    factories: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    schedulers: Vec<serde_yaml::Value>,
    #[serde(default)]
    pollers: Vec<serde_yaml::Value>,
}

/// A builder: a name people see, the factory it runs, who may run it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderConfig {
    pub name: String,
    /// Name of an entry of `factories`.
    pub factory: String,
    /// Names of workers (from settings.yaml) allowed to run it; the local
    /// workers' name (`local_worker.name`, default `local`) stands for every
    /// master's local worker. The local workers also serve the builders of
    /// `local_worker_buildfactory` without being listed.
    #[serde(default)]
    pub workers: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// A new request supersedes this builder's older pending requests of
    /// the same branch, which end SKIPPED: build the newest, not each one.
    #[serde(default)]
    pub collapse_requests: bool,
    /// Properties of every build of this builder, source `Builder`; a
    /// matrix adds its axes' values.
    #[serde(default)]
    pub properties: BTreeMap<String, serde_yaml::Value>,
    /// Axes to expand this definition over, one builder per combination:
    /// `matrix: {branch: [main, "3.14"]}` with `name: "Fedora {branch}"`.
    /// Each value is also a tag and a property of its builder; `{axis}` is
    /// replaced in the name, the factory and the workers.
    #[serde(default)]
    pub matrix: BTreeMap<String, Vec<String>>,
    /// Combinations left out, e.g. `[{branch: "3.13", arch: arm64}]`.
    #[serde(default)]
    pub exclude: Vec<BTreeMap<String, String>>,
    /// Index of the definition in master.yaml's `builders:` (for errors).
    #[serde(skip)]
    pub definition: usize,
}

/// A named list of steps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactoryConfig {
    pub steps: Vec<StepSpec>,
}

/// One step of a factory, exactly as it is sent to the worker that runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    /// A list (`["make", "-j4"]`, run as is) or a string (run by `/bin/sh -c`).
    pub command: StepCommand,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Directory to run in, relative to the builder's directory on the
    /// worker. Default: `build`.
    #[serde(default = "default_workdir")]
    pub workdir: String,
    /// Seconds without output after which the step is killed (FAILURE).
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Seconds of running after which the step is killed (FAILURE), however
    /// much it prints. None: no limit.
    #[serde(default)]
    pub max_time: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when a step is killed.
    #[serde(default = "default_kill_grace")]
    pub kill_grace: u64,
    /// A failure stops the build; later steps are skipped unless `always_run`.
    #[serde(default)]
    pub halt_on_failure: bool,
    /// A failure makes the build FAILURE.
    #[serde(default = "default_true")]
    pub flunk_on_failure: bool,
    /// A failure makes the build WARNINGS (when `flunk_on_failure` is off).
    #[serde(default)]
    pub warn_on_failure: bool,
    /// WARNINGS of this step make the build WARNINGS.
    #[serde(default = "default_true")]
    pub warn_on_warnings: bool,
    /// Run even after an earlier step halted the build.
    #[serde(default)]
    pub always_run: bool,
    /// Exit code to result, like Buildbot's `decodeRC`. Codes not listed are
    /// FAILURE. Default: `{0: SUCCESS}`.
    #[serde(default = "default_decode_rc", deserialize_with = "deserialize_decode_rc")]
    pub decode_rc: BTreeMap<i32, Results>,
}

fn default_workdir() -> String {
    "build".into()
}

fn default_timeout() -> u64 {
    1200
}

fn default_kill_grace() -> u64 {
    5
}

fn default_true() -> bool {
    true
}

fn default_decode_rc() -> BTreeMap<i32, Results> {
    BTreeMap::from([(0, Results::Success)])
}

/// Exit codes are integers in YAML but strings once a step travels as JSON
/// (whose keys are strings); both are read.
fn deserialize_decode_rc<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<i32, Results>, D::Error> {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct ExitCode(i32);

    impl<'de> Deserialize<'de> for ExitCode {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct ExitCodeVisitor;

            impl de::Visitor<'_> for ExitCodeVisitor {
                type Value = ExitCode;

                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("an exit code (a whole number)")
                }

                fn visit_i64<E: de::Error>(self, value: i64) -> Result<ExitCode, E> {
                    i32::try_from(value)
                        .map(ExitCode)
                        .map_err(|_| E::custom(format!("exit code {value} is out of range")))
                }

                fn visit_u64<E: de::Error>(self, value: u64) -> Result<ExitCode, E> {
                    i32::try_from(value)
                        .map(ExitCode)
                        .map_err(|_| E::custom(format!("exit code {value} is out of range")))
                }

                fn visit_str<E: de::Error>(self, value: &str) -> Result<ExitCode, E> {
                    value.parse().map(ExitCode).map_err(|_| E::custom(format!("`{value}` is not an exit code")))
                }
            }

            deserializer.deserialize_any(ExitCodeVisitor)
        }
    }

    let codes = BTreeMap::<ExitCode, Results>::deserialize(deserializer);
    Ok(codes?.into_iter().map(|(code, results)| (code.0, results)).collect())
}

impl StepSpec {
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

/// How a step's command is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StepCommand {
    /// Run directly, no shell.
    Argv(Vec<String>),
    /// Run by `/bin/sh -c`.
    Shell(String),
}

impl StepCommand {
    /// The program and its arguments.
    pub fn argv(&self) -> Vec<String> {
        match self {
            StepCommand::Argv(argv) => argv.clone(),
            StepCommand::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script.clone()],
        }
    }
}

impl<'de> Deserialize<'de> for StepCommand {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CommandVisitor;

        impl<'de> de::Visitor<'de> for CommandVisitor {
            type Value = StepCommand;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings (program and arguments) or a shell command string")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<StepCommand, E> {
                Ok(StepCommand::Shell(value.to_owned()))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<StepCommand, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                Ok(StepCommand::Argv(argv))
            }
        }

        deserializer.deserialize_any(CommandVisitor)
    }
}

/// What starts builds.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SchedulerConfig {
    /// The Force button and the `force` JSON-RPC method.
    Force {
        name: String,
        /// Builders it may force.
        builders: Vec<String>,
        /// Parameters of its form, each a build property: a default, and
        /// optionally the only values allowed.
        #[serde(default)]
        parameters: Vec<ForceParameter>,
    },
    /// At the times a cron expression gives, in a time zone, like
    /// Buildbot's `Nightly`. Six fields, seconds first: `0 0 3 * * *` is
    /// 03:00 every day.
    Nightly {
        name: String,
        cron: String,
        /// An IANA time zone, e.g. `Europe/Amsterdam`; default UTC.
        #[serde(default = "default_timezone")]
        timezone: String,
        builders: Vec<String>,
        /// The `branch` property of its builds.
        branch: Option<String>,
        #[serde(default)]
        properties: BTreeMap<String, serde_yaml::Value>,
    },
    /// Builds each push to `branch` (GitHub webhook), like Buildbot's
    /// `SingleBranchScheduler`; a push touching only `ignore_files`
    /// patterns (e.g. `Doc/*`, `*.rst`) builds nothing.
    SingleBranch {
        name: String,
        branch: String,
        builders: Vec<String>,
        #[serde(default)]
        ignore_files: Vec<String>,
        /// Wait until no change came for this long, then build the newest
        /// (Buildbot's `treeStableTimer`); 0 builds each push at once.
        #[serde(default)]
        tree_stable_seconds: u64,
    },
    /// Builds each push to any branch, like Buildbot's `AnyBranchScheduler`;
    /// builds get the pushed branch as their `branch` property.
    AnyBranch {
        name: String,
        builders: Vec<String>,
        #[serde(default)]
        ignore_files: Vec<String>,
        /// As for `single_branch`, per branch.
        #[serde(default)]
        tree_stable_seconds: u64,
    },
    /// Builds pull requests, as buildbot.python.org does: adding the label
    /// `label` builds the builders tagged `label_tag`; a comment
    /// `!buildbot REGEX` from someone who may write to the repository
    /// builds those whose name matches.
    PullRequest {
        name: String,
        builders: Vec<String>,
        #[serde(default = "default_pr_label")]
        label: String,
        #[serde(default = "default_pr_label_tag")]
        label_tag: String,
    },
    /// Builds after each buildset of the scheduler `upstream` finished
    /// with SUCCESS or WARNINGS, with its properties, like Buildbot's
    /// `Dependent`.
    Dependent { name: String, upstream: String, builders: Vec<String> },
    /// Every `every_seconds`, counted from the Unix epoch (so every master
    /// agrees on the ticks), like Buildbot's `Periodic`.
    Periodic {
        name: String,
        every_seconds: u64,
        builders: Vec<String>,
        branch: Option<String>,
        #[serde(default)]
        properties: BTreeMap<String, serde_yaml::Value>,
    },
}

/// One parameter of a force scheduler's form.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceParameter {
    pub name: String,
    /// Shown to people; default the name.
    pub label: Option<String>,
    #[serde(default)]
    pub default: String,
    /// The only values allowed (a drop-down in the form); any when empty.
    #[serde(default)]
    pub choices: Vec<String>,
}

fn default_timezone() -> String {
    "UTC".into()
}

fn default_pr_label() -> String {
    ":hammer: test-with-buildbots".into()
}

fn default_pr_label_tag() -> String {
    "stable".into()
}

/// Whether `path` matches the glob `pattern` (`*` any run of characters,
/// `/` included; `?` one character), for `ignore_files`.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    fn matches(pattern: &[u8], path: &[u8]) -> bool {
        match (pattern.first(), path.first()) {
            (None, None) => true,
            (Some(b'*'), _) => matches(&pattern[1..], path) || (!path.is_empty() && matches(pattern, &path[1..])),
            (Some(b'?'), Some(_)) => matches(&pattern[1..], &path[1..]),
            (Some(p), Some(c)) if p == c => matches(&pattern[1..], &path[1..]),
            _ => false,
        }
    }
    matches(pattern.as_bytes(), path.as_bytes())
}

impl SchedulerConfig {
    pub fn name(&self) -> &str {
        match self {
            SchedulerConfig::Force { name, .. }
            | SchedulerConfig::Nightly { name, .. }
            | SchedulerConfig::SingleBranch { name, .. }
            | SchedulerConfig::AnyBranch { name, .. }
            | SchedulerConfig::Dependent { name, .. }
            | SchedulerConfig::PullRequest { name, .. }
            | SchedulerConfig::Periodic { name, .. } => name,
        }
    }

    pub fn builders(&self) -> &[String] {
        match self {
            SchedulerConfig::Force { builders, .. }
            | SchedulerConfig::Nightly { builders, .. }
            | SchedulerConfig::SingleBranch { builders, .. }
            | SchedulerConfig::AnyBranch { builders, .. }
            | SchedulerConfig::Dependent { builders, .. }
            | SchedulerConfig::PullRequest { builders, .. }
            | SchedulerConfig::Periodic { builders, .. } => builders,
        }
    }

    /// A timed scheduler's ticks in `(after, until]`, oldest first; none
    /// for the others (or for a cron expression `checkconfig` refuses).
    pub fn ticks(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        match self {
            SchedulerConfig::Force { .. }
            | SchedulerConfig::SingleBranch { .. }
            | SchedulerConfig::AnyBranch { .. }
            | SchedulerConfig::Dependent { .. }
            | SchedulerConfig::PullRequest { .. } => Vec::new(),
            SchedulerConfig::Nightly { cron, timezone, .. } => {
                let (Ok(schedule), Ok(zone)) = (cron.parse::<cron::Schedule>(), timezone.parse::<chrono_tz::Tz>())
                else {
                    return Vec::new();
                };
                schedule
                    .after(&after.with_timezone(&zone))
                    .map(|tick| tick.with_timezone(&Utc))
                    .take_while(|tick| *tick <= until)
                    .collect()
            }
            SchedulerConfig::Periodic { every_seconds, .. } => {
                let every = (*every_seconds).max(1) as i64;
                let mut tick = (after.timestamp().div_euclid(every) + 1) * every;
                let mut ticks = Vec::new();
                while tick <= until.timestamp() {
                    ticks.extend(DateTime::from_timestamp(tick, 0));
                    tick += every;
                }
                ticks
            }
        }
    }
}

// ---------------------------------------------------------------------------
// worker.yaml
// ---------------------------------------------------------------------------

/// `worker.yaml`: what a remote worker needs to connect. Which builders it
/// serves is decided by the masters' configuration, not here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    /// Its name, as listed in the masters' settings.yaml.
    pub name: String,
    /// Its password, as listed in the masters' settings.yaml.
    pub password: Secret,
    /// RabbitMQ URL, e.g. `amqp://host:5672/%2f`.
    pub amqp_url: Secret,
    /// Redis URL, e.g. `redis://host:6379/`.
    pub redis_url: Secret,
    /// Which credentials the worker logs in with.
    #[serde(default)]
    pub login: WorkerLogin,
    /// Must equal the masters' `namespace`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Where builds run, relative to this file's folder.
    #[serde(default = "default_worker_basedir")]
    pub basedir: PathBuf,
    /// Who looks after this worker (e.g. `Jane Doe <jane@example.org>`),
    /// shown to users as Buildbot's `workerinfo.admin`.
    pub admin: Option<String>,
    /// Serve Prometheus metrics at `http://{metrics_listen}/metrics`; off
    /// when unset.
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
}

/// How a worker logs in to RabbitMQ and Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerLogin {
    /// As its own account, `{namespace}.worker.{name}`, with its password:
    /// the account the masters create when settings.yaml has
    /// `worker_accounts`. The URLs carry no credentials.
    #[default]
    OwnAccount,
    /// With the credentials in the URLs, shared by every worker, for
    /// installations whose masters do not manage accounts.
    FromUrls,
}

fn default_worker_basedir() -> PathBuf {
    ".".into()
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// One problem in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub position: Option<Position>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(position) = self.position {
            write!(f, ":{}:{}", position.line, position.column)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n    hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found while loading the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// One YAML file being read: its text, where its nodes are, and the errors
/// found in it so far.
struct SourceFile {
    path: PathBuf,
    map: SourceMap,
    errors: Vec<ConfigError>,
}

impl SourceFile {
    fn read(path: &Path) -> Result<(Self, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            file: path.to_owned(),
            position: None,
            message: format!("cannot read the file: {error}"),
            hint: Some("check the path (settings: --settings, BUILDMASTER_SETTINGS or PYBUILDBOT_SETTINGS_PATH; master.yaml: `master_config` in settings.yaml)".into()),
        })?;
        Ok((Self { path: path.to_owned(), map: SourceMap::scan(&text), errors: Vec::new() }, text))
    }

    fn error_at(&mut self, path: &YamlPath, message: impl Into<String>, hint: Option<String>) {
        self.errors.push(ConfigError {
            file: self.path.clone(),
            position: self.map.position(path),
            message: message.into(),
            hint,
        });
    }

    fn error_at_value(&mut self, path: &YamlPath, message: impl Into<String>, hint: Option<String>) {
        self.errors.push(ConfigError {
            file: self.path.clone(),
            position: self.map.value_position(path),
            message: message.into(),
            hint,
        });
    }

    /// Parses the whole text as YAML; a syntax error is the only error then.
    fn parse_yaml(&mut self, text: &str) -> Option<serde_yaml::Value> {
        match serde_yaml::from_str::<serde_yaml::Value>(text) {
            Ok(serde_yaml::Value::Null) => Some(serde_yaml::Value::Mapping(Default::default())),
            Ok(value) => Some(value),
            Err(error) => {
                self.errors.push(ConfigError {
                    file: self.path.clone(),
                    position: error.location().map(|l| Position { line: l.line(), column: l.column() }),
                    message: format!("not valid YAML: {}", strip_location(&error.to_string())),
                    hint: Some("check indentation and quoting around this place".into()),
                });
                None
            }
        }
    }

    /// Deserializes the node found at `at`, recording an error with its exact
    /// position when it does not fit `T`.
    fn deserialize<T: DeserializeOwned>(&mut self, at: &YamlPath, value: serde_yaml::Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                let path = at.join_serde(error.path());
                let message = strip_location(&error.inner().to_string());
                let hint = hint_for(&message);
                self.error_at(&path, format!("{path}: {message}"), hint);
                None
            }
        }
    }
}

/// serde_yaml appends " at line L column C" to its messages; positions are
/// printed separately here.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// For an unknown field, the expected field closest to the typo.
fn hint_for(message: &str) -> Option<String> {
    let unknown = message.strip_prefix("unknown field `")?.split('`').next()?;
    let expected: Vec<&str> = message.split_once("expected")?.1.split('`').skip(1).step_by(2).collect();
    let closest = expected.iter().min_by_key(|candidate| edit_distance(unknown, candidate))?;
    if edit_distance(unknown, closest) <= 3 {
        Some(format!("did you mean `{closest}`?"))
    } else {
        Some(format!("the fields allowed here are: {}", expected.join(", ")))
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Everything a master runs from: both files, checked against each other.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings_path: PathBuf,
    pub master_config_path: PathBuf,
    pub settings: Settings,
    pub master: MasterConfig,
}

/// Finds the settings file: `--settings`, else the environment.
pub fn settings_path(from_command_line: Option<PathBuf>) -> Result<PathBuf, ConfigErrors> {
    if let Some(path) = from_command_line {
        return Ok(path);
    }
    for var in SETTINGS_ENV_VARS {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(value));
        }
    }
    Err(ConfigErrors(vec![ConfigError {
        file: PathBuf::from("settings.yaml"),
        position: None,
        message: "no settings file given".into(),
        hint: Some(format!("pass --settings PATH or set {} or {}", SETTINGS_ENV_VARS[0], SETTINGS_ENV_VARS[1])),
    }]))
}

impl Config {
    /// Loads and validates settings.yaml and the master.yaml it points at.
    pub fn load(settings_path: &Path) -> Result<Config, ConfigErrors> {
        let settings_dir = settings_path.parent().unwrap_or(Path::new(".")).to_owned();
        let (mut settings_file, settings_text) = SourceFile::read(settings_path).map_err(|e| ConfigErrors(vec![e]))?;
        let settings = settings_file
            .parse_yaml(&settings_text)
            .and_then(|value| settings_file.deserialize::<Settings>(&YamlPath::root(), value));
        let Some(mut settings) = settings else {
            return Err(ConfigErrors(settings_file.errors));
        };
        settings.master_config = settings_dir.join(&settings.master_config);
        settings.local_worker.basedir = settings_dir.join(&settings.local_worker.basedir);

        let master_config_path = settings.master_config.clone();
        let (mut master_file, master_text) = match SourceFile::read(&master_config_path) {
            Ok(read) => read,
            Err(error) => {
                let mut errors = settings_file.errors;
                errors.push(error);
                return Err(ConfigErrors(errors));
            }
        };
        let master = parse_master_config(&mut master_file, &master_text);
        validate_settings(&mut settings_file, &settings);
        if let Some(master) = &master {
            validate_master(&mut master_file, master, &settings);
        }

        let mut errors = settings_file.errors;
        errors.extend(master_file.errors);
        match master {
            Some(master) if errors.is_empty() => {
                Ok(Config { settings_path: settings_path.to_owned(), master_config_path, settings, master })
            }
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// The factory a builder runs. Validation guarantees it exists.
    pub fn factory_of(&self, builder: &BuilderConfig) -> &FactoryConfig {
        &self.master.factories[&builder.factory]
    }

    pub fn builder(&self, name: &str) -> Option<&BuilderConfig> {
        self.master.builders.iter().find(|b| b.name == name)
    }

    /// Whether `worker` may run `builder`: listed by name, or a local worker
    /// where the builder lists the local workers or uses
    /// `local_worker_buildfactory`.
    pub fn may_run(&self, builder: &BuilderConfig, worker: &str, is_local: bool) -> bool {
        if is_local {
            builder.factory == self.settings.local_worker_buildfactory
                || builder.workers.contains(&self.settings.local_worker.name)
        } else {
            builder.workers.iter().any(|w| w == worker)
        }
    }

    /// The builders a worker may run.
    pub fn builders_for_worker(&self, worker: &str, is_local: bool) -> Vec<&BuilderConfig> {
        self.master.builders.iter().filter(|b| self.may_run(b, worker, is_local)).collect()
    }

    pub fn worker(&self, name: &str) -> Option<&WorkerSettings> {
        self.settings.workers.iter().find(|w| w.name == name)
    }

    /// A short summary for `checkconfig`.
    pub fn summary(&self) -> String {
        let steps: usize = self.master.factories.values().map(|f| f.steps.len()).sum();
        format!(
            "{} builders, {} factories ({} steps), {} schedulers, {} workers{}",
            self.master.builders.len(),
            self.master.factories.len(),
            steps,
            self.master.schedulers.len(),
            self.settings.workers.len(),
            if self.settings.use_local_worker { " and a local worker" } else { "" },
        )
    }
}

fn parse_master_config(file: &mut SourceFile, text: &str) -> Option<MasterConfig> {
    let value = file.parse_yaml(text)?;
    let root = YamlPath::root();
    let top: MasterConfigFile = file.deserialize(&root, value)?;
    let mut config = MasterConfig::default();
    let mut complete = true;
    for (index, value) in top.builders.into_iter().enumerate() {
        let at = root.key("builders").index(index);
        match file.deserialize::<BuilderConfig>(&at, value) {
            Some(mut builder) => {
                builder.definition = index;
                match expand_matrix(file, &at, builder) {
                    Some(builders) => config.builders.extend(builders),
                    None => complete = false,
                }
            }
            None => complete = false,
        }
    }
    for (name, value) in top.factories {
        let at = root.key("factories").key(name.clone());
        match file.deserialize::<FactoryConfigFile>(&at, value) {
            Some(factory) => {
                let mut steps = Vec::new();
                for (index, step) in factory.steps.into_iter().enumerate() {
                    let step_at = at.key("steps").index(index);
                    let parsed = if step.get("git").is_some() {
                        file.deserialize::<GitStepFile>(&step_at, step).map(GitStepFile::into_step)
                    } else {
                        file.deserialize(&step_at, step)
                    };
                    match parsed {
                        Some(step) => steps.push(step),
                        None => complete = false,
                    }
                }
                config.factories.insert(name, FactoryConfig { steps });
            }
            None => complete = false,
        }
    }
    for (index, value) in top.schedulers.into_iter().enumerate() {
        match file.deserialize(&root.key("schedulers").index(index), value) {
            Some(scheduler) => config.schedulers.push(scheduler),
            None => complete = false,
        }
    }
    for (index, value) in top.pollers.into_iter().enumerate() {
        let at = root.key("pollers").index(index);
        match file.deserialize::<PollerConfig>(&at, value) {
            Some(poller) if poller.poll_seconds == 0 || poller.branches.is_empty() => {
                let problem = if poller.branches.is_empty() {
                    "a poller needs branches"
                } else {
                    "poll_seconds must be at least 1"
                };
                file.error_at(&at, problem, None);
                complete = false;
            }
            Some(poller) => config.pollers.push(poller),
            None => complete = false,
        }
    }
    complete.then_some(config)
}

/// The builders one definition stands for: itself, or one per combination
/// of its matrix's axes (less the excluded ones), each named from the
/// template with `{axis}` replaced, tagged and given a property per axis.
fn expand_matrix(file: &mut SourceFile, at: &YamlPath, builder: BuilderConfig) -> Option<Vec<BuilderConfig>> {
    if builder.matrix.is_empty() {
        if !builder.exclude.is_empty() {
            file.error_at_value(&at.key("exclude"), "`exclude` needs a `matrix`", None);
            return None;
        }
        return Some(vec![builder]);
    }
    let mut ok = true;
    for (axis, values) in &builder.matrix {
        if values.is_empty() {
            file.error_at_value(
                &at.key("matrix").key(axis.clone()),
                format!("matrix axis `{axis}` has no values"),
                None,
            );
            ok = false;
        }
        if !builder.name.contains(&format!("{{{axis}}}")) {
            file.error_at_value(
                &at.key("name"),
                format!("the name `{}` does not use matrix axis `{axis}`", builder.name),
                Some(format!("put `{{{axis}}}` in the name, so each combination gets a name of its own")),
            );
            ok = false;
        }
    }
    for (index, excluded) in builder.exclude.iter().enumerate() {
        for (axis, value) in excluded {
            let known = builder.matrix.get(axis).is_some_and(|values| values.contains(value));
            if !known {
                file.error_at_value(
                    &at.key("exclude").index(index).key(axis.clone()),
                    format!("`{axis}: {value}` is not a value of this builder's matrix"),
                    None,
                );
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    let mut combinations: Vec<BTreeMap<&str, &str>> = vec![BTreeMap::new()];
    for (axis, values) in &builder.matrix {
        combinations = combinations
            .into_iter()
            .flat_map(|combination| {
                values.iter().map(move |value| {
                    let mut next = combination.clone();
                    next.insert(axis.as_str(), value.as_str());
                    next
                })
            })
            .collect();
    }
    let excluded = |combination: &BTreeMap<&str, &str>| {
        builder
            .exclude
            .iter()
            .any(|rule| rule.iter().all(|(axis, value)| combination.get(axis.as_str()) == Some(&value.as_str())))
    };
    let expanded = combinations
        .into_iter()
        .filter(|combination| !excluded(combination))
        .map(|combination| {
            let mut one = builder.clone();
            for (axis, value) in &combination {
                let placeholder = format!("{{{axis}}}");
                one.name = one.name.replace(&placeholder, value);
                one.factory = one.factory.replace(&placeholder, value);
                for worker in &mut one.workers {
                    *worker = worker.replace(&placeholder, value);
                }
                if !one.tags.iter().any(|tag| tag == value) {
                    one.tags.push((*value).to_owned());
                }
                one.properties.insert((*axis).to_owned(), serde_yaml::Value::String((*value).to_owned()));
            }
            one.matrix.clear();
            one.exclude.clear();
            one
        })
        .collect();
    Some(expanded)
}

/// A source checkout step: `git:` instead of `command:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GitStepFile {
    name: String,
    git: GitStep,
    #[serde(default = "default_workdir")]
    workdir: String,
    #[serde(default = "default_timeout")]
    timeout: u64,
    #[serde(default = "default_true")]
    halt_on_failure: bool,
    #[serde(default)]
    always_run: bool,
}

/// Where the source comes from and how to check it out, like Buildbot's
/// `Git` step. Every text may use `%(prop:...)s`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GitStep {
    repourl: String,
    /// Branch to check out; default the build's `branch` property, else `main`.
    #[serde(default = "default_git_branch")]
    branch: String,
    /// Revision to check out; default the build's `revision` property,
    /// else the branch's head.
    #[serde(default = "default_git_revision")]
    revision: String,
    #[serde(default)]
    mode: GitMode,
    /// With `mode: full`: `fresh` removes untracked and ignored files,
    /// `clobber` starts from an empty directory.
    #[serde(default)]
    method: GitMethod,
    /// A shallow fetch of this many commits.
    shallow: Option<u32>,
    /// A partial clone, e.g. `blob:none`.
    filter: Option<String>,
    /// Attempts after the first when fetching fails (a network blip).
    #[serde(default = "default_git_retries")]
    retries: u32,
    /// `warnings` marks a failed checkout WARNINGS instead of FAILURE.
    #[serde(default)]
    on_failure: GitFailure,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum GitMode {
    /// Keep the working tree; fetch and check out.
    #[default]
    Incremental,
    /// Also clean the tree, per `method`.
    Full,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum GitMethod {
    #[default]
    Fresh,
    Clobber,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum GitFailure {
    #[default]
    Failure,
    Warnings,
}

fn default_git_branch() -> String {
    "%(prop:branch:-main)s".into()
}

fn default_git_revision() -> String {
    "%(prop:revision)s".into()
}

fn default_git_retries() -> u32 {
    2
}

/// What a `git` step runs: a script that takes everything from its
/// environment, so no value (a branch name from a webhook) is ever parsed
/// by the shell.
const GIT_SCRIPT: &str = r#"set -eu
retry() {
    n=0
    until "$@"; do
        n=$((n + 1))
        if [ "$n" -gt "$BM_GIT_RETRIES" ]; then return 1; fi
        echo "attempt $n failed; retrying in $((n * 2))s: $*" >&2
        sleep $((n * 2))
    done
}
set --
if [ -n "$BM_GIT_DEPTH" ]; then set -- "$@" --depth "$BM_GIT_DEPTH"; fi
if [ -n "$BM_GIT_FILTER" ]; then set -- "$@" --filter="$BM_GIT_FILTER"; fi
if [ "$BM_GIT_MODE" = full ] && [ "$BM_GIT_METHOD" = clobber ]; then
    find . -mindepth 1 -maxdepth 1 -exec rm -rf {} +
fi
if [ -d .git ]; then
    git remote set-url origin "$BM_GIT_REPOURL"
else
    git init -q .
    git remote add origin "$BM_GIT_REPOURL"
fi
# A revision is fetched by itself where the server allows it; else the
# branch, which must contain it.
# `--end-of-options`: a revision or branch is never read as an option.
if [ -n "$BM_GIT_REVISION" ] && git fetch -q --no-tags "$@" --end-of-options origin "$BM_GIT_REVISION" 2>/dev/null; then
    git checkout -q -f --detach FETCH_HEAD
else
    retry git fetch --no-tags "$@" --end-of-options origin "$BM_GIT_BRANCH"
    git checkout -q -f --detach FETCH_HEAD
    if [ -n "$BM_GIT_REVISION" ]; then git checkout -q -f --detach --end-of-options "$BM_GIT_REVISION"; fi
fi
if [ "$BM_GIT_MODE" = full ]; then git clean -q -f -f -d -x; fi
git log -1 --format='checked out %H (%s)'
"#;

impl GitStepFile {
    fn into_step(self) -> StepSpec {
        let GitStep { repourl, branch, revision, mode, method, shallow, filter, retries, on_failure } = self.git;
        let env = [
            ("BM_GIT_REPOURL", repourl),
            ("BM_GIT_BRANCH", branch),
            ("BM_GIT_REVISION", revision),
            ("BM_GIT_MODE", if mode == GitMode::Full { "full" } else { "incremental" }.to_owned()),
            ("BM_GIT_METHOD", if method == GitMethod::Clobber { "clobber" } else { "fresh" }.to_owned()),
            ("BM_GIT_DEPTH", shallow.map(|depth| depth.to_string()).unwrap_or_default()),
            ("BM_GIT_FILTER", filter.unwrap_or_default()),
            ("BM_GIT_RETRIES", retries.to_string()),
        ];
        let warnings = on_failure == GitFailure::Warnings;
        StepSpec {
            name: self.name,
            command: StepCommand::Shell(GIT_SCRIPT.to_owned()),
            env: env.into_iter().map(|(name, value)| (name.to_owned(), value)).collect(),
            workdir: self.workdir,
            timeout: self.timeout,
            max_time: None,
            kill_grace: default_kill_grace(),
            halt_on_failure: self.halt_on_failure && !warnings,
            flunk_on_failure: !warnings,
            warn_on_failure: warnings,
            warn_on_warnings: true,
            always_run: self.always_run,
            decode_rc: default_decode_rc(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FactoryConfigFile {
    steps: Vec<serde_yaml::Value>,
}

/// Names that end up in queue names, Redis keys and RabbitMQ user names.
fn is_valid_worker_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Builder names appear in URLs, queue names and permission patterns:
/// anything printable but `/`, at most 200 bytes.
fn is_valid_builder_name(name: &str) -> bool {
    !name.trim().is_empty() && name.len() <= 200 && !name.chars().any(|c| c == '/' || c.is_control())
}

fn validate_settings(file: &mut SourceFile, settings: &Settings) {
    let root = YamlPath::root();
    if settings.namespace.is_empty()
        || !settings.namespace.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        file.error_at_value(
            &root.key("namespace"),
            format!("namespace `{}` is not allowed", settings.namespace),
            Some("use letters, digits, `_` and `-` only".into()),
        );
    }
    let mut seen = BTreeSet::new();
    for (index, worker) in settings.workers.iter().enumerate() {
        let at = root.key("workers").index(index);
        if !is_valid_worker_name(&worker.name) {
            file.error_at_value(
                &at.key("name"),
                format!("worker name `{}` is not allowed", worker.name),
                Some("use 1 to 64 letters, digits, `.`, `_` and `-`".into()),
            );
        }
        if !seen.insert(worker.name.as_str()) {
            file.error_at_value(&at.key("name"), format!("worker `{}` is listed twice", worker.name), None);
        }
        if worker.password.expose().chars().count() < MIN_WORKER_PASSWORD_CHARS {
            file.error_at_value(
                &at.key("password"),
                format!(
                    "the password of worker `{}` is shorter than {MIN_WORKER_PASSWORD_CHARS} characters",
                    worker.name
                ),
                Some("generate one, e.g. `openssl rand -base64 18`".into()),
            );
        }
        if worker.max_builds == 0 {
            file.error_at_value(&at.key("max_builds"), "max_builds must be at least 1", None);
        }
        for (window_index, window) in worker.downtime.iter().enumerate() {
            if window.bounds().is_none() {
                file.error_at_value(
                    &at.key("downtime").index(window_index),
                    "a downtime window needs `from` and `until` as HH:MM and a known `timezone`",
                    Some("e.g. {from: \"22:00\", until: \"06:00\", timezone: Europe/Amsterdam}".into()),
                );
            }
        }
    }
    if settings.use_local_worker {
        if !is_valid_worker_name(&settings.local_worker.name) {
            file.error_at_value(
                &root.key("local_worker").key("name"),
                format!("worker name `{}` is not allowed", settings.local_worker.name),
                Some("use 1 to 64 letters, digits, `.`, `_` and `-`".into()),
            );
        }
        if settings.workers.iter().any(|w| w.name == settings.local_worker.name) {
            file.error_at_value(
                &root.key("local_worker").key("name"),
                format!("`{}` is both a remote worker's name and the local workers' name", settings.local_worker.name),
                Some("rename one of them".into()),
            );
        }
        if settings.local_worker.max_builds == 0 {
            file.error_at_value(&root.key("local_worker").key("max_builds"), "max_builds must be at least 1", None);
        }
    }
    validate_telemetry(file, &root.key("telemetry"), &settings.telemetry);
    validate_users(file, settings);
    if let Some(github) = &settings.github
        && github.webhook_secret.expose().chars().count() < 16
    {
        file.error_at_value(
            &root.key("github").key("webhook_secret"),
            "the webhook secret is shorter than 16 characters: anyone could sign deliveries",
            Some("generate one, e.g. `openssl rand -hex 20`, and give GitHub the same".into()),
        );
    }
    if let Some(accounts) = &settings.worker_accounts {
        let at = root.key("worker_accounts");
        let url = accounts.rabbitmq_management_url.expose();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            file.error_at_value(
                &at.key("rabbitmq_management_url"),
                "rabbitmq_management_url is not an http:// or https:// URL",
                Some("give the management API with an administrator, e.g. http://admin:pw@127.0.0.1:15672/".into()),
            );
        }
        if accounts.sync_seconds == 0 {
            file.error_at_value(&at.key("sync_seconds"), "sync_seconds must be at least 1", None);
        }
    }
    let retention = &settings.retention;
    if retention.batch == 0 || retention.batch > 100_000 {
        file.error_at_value(
            &root.key("retention").key("batch"),
            format!("batch {} is not between 1 and 100000", retention.batch),
            Some("a few hundred keeps each delete short".into()),
        );
    }
    if let (Some(logs), Some(builds)) = (retention.logs_days, retention.builds_days)
        && builds < logs
    {
        file.error_at_value(
            &root.key("retention").key("builds_days"),
            format!("builds_days ({builds}) is shorter than logs_days ({logs})"),
            Some("builds are deleted with their logs; keep builds at least as long as logs".into()),
        );
    }
    let builds = &settings.builds;
    if builds.heartbeat_seconds == 0 || builds.lease_seconds < 2 * builds.heartbeat_seconds {
        file.error_at_value(
            &root.key("builds").key("lease_seconds"),
            format!(
                "lease_seconds ({}) must be at least twice heartbeat_seconds ({}), which must not be 0",
                builds.lease_seconds, builds.heartbeat_seconds
            ),
            Some("a lease survives one lost heartbeat only if it is at least two heartbeats long".into()),
        );
    }
}

fn validate_master(file: &mut SourceFile, master: &MasterConfig, settings: &Settings) {
    let root = YamlPath::root();
    for (factory_name, factory) in &master.factories {
        for (index, step) in factory.steps.iter().enumerate() {
            for (variable, value) in &step.env {
                for secret in secret_references(value) {
                    if !settings.secrets.contains_key(secret) {
                        let at =
                            root.key("factories").key(factory_name).key("steps").index(index).key("env").key(variable);
                        file.error_at_value(
                            &at,
                            format!("secret `{secret}` is not defined"),
                            Some(format!("add it under `secrets:` in settings.yaml ({secret}: ...)")),
                        );
                    }
                }
            }
        }
    }
    let mut workers: BTreeSet<&str> = settings.workers.iter().map(|w| w.name.as_str()).collect();
    if settings.use_local_worker {
        workers.insert(settings.local_worker.name.as_str());
    }
    let mut builder_names = BTreeSet::new();
    let mut definitions_checked = BTreeSet::new();
    for builder in &master.builders {
        let at = root.key("builders").index(builder.definition);
        if !is_valid_builder_name(&builder.name) {
            file.error_at_value(
                &at.key("name"),
                format!("builder name `{}` is not allowed", builder.name),
                Some("use at most 200 bytes, no `/` and no control characters".into()),
            );
        }
        if !builder_names.insert(builder.name.as_str()) {
            file.error_at_value(
                &at.key("name"),
                format!("builder `{}` is defined twice", builder.name),
                Some("builder names must be unique".into()),
            );
        }
        // What a matrix's builders share is checked once per definition
        // (and per factory and workers, which `{axis}` may vary).
        if !definitions_checked.insert((builder.definition, &builder.factory, &builder.workers)) {
            continue;
        }
        if !master.factories.contains_key(&builder.factory) {
            file.error_at_value(
                &at.key("factory"),
                format!("builder `{}` uses factory `{}`, which is not defined", builder.name, builder.factory),
                Some(format!(
                    "define it under `factories:` or use one of: {}",
                    master.factories.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
            );
        }
        for (worker_index, worker) in builder.workers.iter().enumerate() {
            if !workers.contains(worker.as_str()) {
                file.error_at_value(
                    &at.key("workers").index(worker_index),
                    format!("builder `{}` names worker `{worker}`, which is not in settings.yaml", builder.name),
                    Some(if worker == &settings.local_worker.name {
                        "set `use_local_worker: true` in settings.yaml to run the local workers".into()
                    } else {
                        "add it under `workers:` in settings.yaml (with a password) or fix the name".into()
                    }),
                );
            }
        }
        let served_locally = settings.use_local_worker && builder.factory == settings.local_worker_buildfactory;
        if builder.workers.is_empty() && !served_locally {
            file.error_at(
                &at,
                format!("builder `{}` has no workers", builder.name),
                Some(format!(
                    "list workers under `workers:`, or set use_local_worker with local_worker_buildfactory: {}",
                    builder.factory
                )),
            );
        }
    }
    for (name, factory) in &master.factories {
        let at = root.key("factories").key(name.clone());
        if factory.steps.is_empty() {
            file.error_at_value(&at.key("steps"), format!("factory `{name}` has no steps"), None);
        }
        let mut step_names = BTreeSet::new();
        for (index, step) in factory.steps.iter().enumerate() {
            let step_at = at.key("steps").index(index);
            let mut texts: Vec<(YamlPath, &str)> = match &step.command {
                StepCommand::Argv(argv) => {
                    argv.iter().enumerate().map(|(i, word)| (step_at.key("command").index(i), word.as_str())).collect()
                }
                StepCommand::Shell(script) => vec![(step_at.key("command"), script.as_str())],
            };
            texts.extend(step.env.iter().map(|(name, value)| (step_at.key("env").key(name.clone()), value.as_str())));
            texts.push((step_at.key("workdir"), step.workdir.as_str()));
            for (text_at, text) in texts {
                if let Err(problem) = interpolate::check(text) {
                    file.error_at_value(&text_at, problem, None);
                }
            }
            if !step_names.insert(step.name.as_str()) {
                file.error_at_value(
                    &step_at.key("name"),
                    format!("factory `{name}` has two steps named `{}`", step.name),
                    Some("step names must be unique within a factory".into()),
                );
            }
            let empty = match &step.command {
                StepCommand::Argv(argv) => argv.is_empty(),
                StepCommand::Shell(script) => script.trim().is_empty(),
            };
            if empty {
                file.error_at_value(
                    &step_at.key("command"),
                    format!("step `{}` has an empty command", step.name),
                    None,
                );
            }
            if Path::new(&step.workdir).is_absolute() || step.workdir.split('/').any(|part| part == "..") {
                file.error_at_value(
                    &step_at.key("workdir"),
                    format!("workdir `{}` leaves the builder's directory", step.workdir),
                    Some("use a relative path without `..`".into()),
                );
            }
            if step.timeout == 0 {
                file.error_at_value(&step_at.key("timeout"), "timeout must be at least 1 second", None);
            }
        }
    }
    let mut scheduler_names = BTreeSet::new();
    for (index, scheduler) in master.schedulers.iter().enumerate() {
        let at = root.key("schedulers").index(index);
        if !scheduler_names.insert(scheduler.name()) {
            file.error_at_value(&at.key("name"), format!("scheduler `{}` is defined twice", scheduler.name()), None);
        }
        for (builder_index, builder) in scheduler.builders().iter().enumerate() {
            if !builder_names.contains(builder.as_str()) {
                file.error_at_value(
                    &at.key("builders").index(builder_index),
                    format!("scheduler `{}` names builder `{builder}`, which is not defined", scheduler.name()),
                    None,
                );
            }
        }
        match scheduler {
            SchedulerConfig::Nightly { cron, timezone, .. } => {
                if let Err(error) = cron.parse::<cron::Schedule>() {
                    file.error_at_value(
                        &at.key("cron"),
                        format!("`{cron}` is not a cron expression: {error}"),
                        Some("six fields, seconds first: `0 0 3 * * *` is 03:00 every day".into()),
                    );
                }
                if timezone.parse::<chrono_tz::Tz>().is_err() {
                    file.error_at_value(
                        &at.key("timezone"),
                        format!("`{timezone}` is not a time zone"),
                        Some("use an IANA name, e.g. UTC or Europe/Amsterdam".into()),
                    );
                }
            }
            SchedulerConfig::Force { parameters, .. } => {
                for (parameter_index, parameter) in parameters.iter().enumerate() {
                    if !parameter.choices.is_empty() && !parameter.choices.contains(&parameter.default) {
                        file.error_at_value(
                            &at.key("parameters").index(parameter_index).key("default"),
                            format!("the default `{}` is not one of the choices", parameter.default),
                            Some(format!("use one of: {}", parameter.choices.join(", "))),
                        );
                    }
                }
            }
            SchedulerConfig::Dependent { upstream, .. }
                if !master.schedulers.iter().any(|other| other.name() == upstream) =>
            {
                file.error_at_value(
                    &at.key("upstream"),
                    format!("scheduler `{}` follows `{upstream}`, which is not defined", scheduler.name()),
                    None,
                );
            }
            SchedulerConfig::Dependent { .. } if follows_itself(master, scheduler.name()) => {
                file.error_at_value(
                    &at.key("upstream"),
                    format!(
                        "scheduler `{}` follows itself through its upstreams: it would never stop",
                        scheduler.name()
                    ),
                    None,
                );
            }
            SchedulerConfig::Periodic { every_seconds, .. } if !(1..=366 * 24 * 3600).contains(every_seconds) => {
                file.error_at_value(&at.key("every_seconds"), "every_seconds must be between 1 and a year", None);
            }
            _ => {}
        }
    }
}

/// Whether following `name`'s upstreams leads back to it.
fn follows_itself(master: &MasterConfig, name: &str) -> bool {
    let mut current = name;
    for _ in 0..=master.schedulers.len() {
        let upstream = master.schedulers.iter().find_map(|scheduler| match scheduler {
            SchedulerConfig::Dependent { name, upstream, .. } if name == current => Some(upstream.as_str()),
            _ => None,
        });
        match upstream {
            Some(upstream) if upstream == name => return true,
            Some(upstream) => current = upstream,
            None => return false,
        }
    }
    false
}

fn validate_users(file: &mut SourceFile, settings: &Settings) {
    let mut names = BTreeSet::new();
    let mut tokens = BTreeSet::new();
    for (index, user) in settings.users.iter().enumerate() {
        let at = YamlPath::root().key("users").index(index);
        if !is_valid_worker_name(&user.name) {
            file.error_at_value(
                &at.key("name"),
                format!("user name `{}` is not allowed", user.name),
                Some("use 1 to 64 letters, digits, `.`, `_` and `-`".into()),
            );
        }
        if !names.insert(user.name.as_str()) {
            file.error_at_value(&at.key("name"), format!("user `{}` is listed twice", user.name), None);
        }
        if let Some(hash) = &user.password_hash
            && !hash.expose().starts_with("$argon2")
        {
            file.error_at_value(
                &at.key("password_hash"),
                format!("the password_hash of user `{}` is not an argon2 hash", user.name),
                Some("make one with `buildmaster hash-password` (it reads the password from stdin)".into()),
            );
        }
        for (token_index, token) in user.token_sha256.iter().enumerate() {
            if token.len() != 64 || !token.chars().all(|c| c.is_ascii_hexdigit()) {
                file.error_at_value(
                    &at.key("token_sha256").index(token_index),
                    "not the SHA-256 of a token (64 hexadecimal digits)",
                    Some("`buildmaster new-token` prints a token and the line to put here".into()),
                );
            } else if !tokens.insert(token.to_ascii_lowercase()) {
                file.error_at_value(&at.key("token_sha256").index(token_index), "this token is listed twice", None);
            }
        }
    }
}

fn validate_telemetry(file: &mut SourceFile, at: &YamlPath, telemetry: &TelemetrySettings) {
    if let Some(endpoint) = &telemetry.otlp_endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        file.error_at_value(
            &at.key("otlp_endpoint"),
            format!("otlp_endpoint `{endpoint}` is not an http:// or https:// URL"),
            Some("give the collector's OTLP/HTTP address, e.g. http://127.0.0.1:4318".into()),
        );
    }
    if !(0.0..=1.0).contains(&telemetry.sampling_ratio) {
        file.error_at_value(
            &at.key("sampling_ratio"),
            format!("sampling_ratio {} is not between 0.0 and 1.0", telemetry.sampling_ratio),
            Some("1.0 keeps every trace, 0.1 one in ten".into()),
        );
    }
}

/// The names of the secrets a value uses, as `%(secret:NAME)s`
/// (Buildbot's interpolation syntax).
pub fn secret_references(value: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("%(") {
        // `%%(` is an escaped `%(` (a property's value), not a reference.
        if rest[..start].ends_with('%') {
            rest = &rest[start + 2..];
            continue;
        }
        let Some(after) = rest[start..].strip_prefix("%(secret:") else {
            rest = &rest[start + 2..];
            continue;
        };
        let Some(end) = after.find(")s") else { break };
        names.push(&after[..end]);
        rest = &after[end + 2..];
    }
    names
}

/// `value` with every `%(secret:NAME)s` replaced by the secret's value;
/// the name of an unknown secret as the error.
/// `%%(` stands for a literal `%(` (how property values are put into
/// env), so a property cannot name a secret.
pub fn interpolate_secrets(value: &str, secrets: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find('%') {
        out.push_str(&rest[..start]);
        let from = &rest[start..];
        if let Some(after) = from.strip_prefix("%%(") {
            out.push_str("%(");
            rest = after;
        } else if let Some(after) = from.strip_prefix("%(secret:")
            && let Some(end) = after.find(")s")
        {
            let name = &after[..end];
            out.push_str(secrets.get(name).ok_or_else(|| name.to_owned())?);
            rest = &after[end + 2..];
        } else {
            out.push('%');
            rest = &from[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether a URL names a user or a password (`scheme://user:pw@host/`).
fn url_has_credentials(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

/// Loads worker.yaml; relative paths are resolved against its folder.
pub fn load_worker_file(path: &Path) -> Result<WorkerFile, ConfigErrors> {
    let (mut file, text) = SourceFile::read(path).map_err(|e| ConfigErrors(vec![e]))?;
    let worker = file.parse_yaml(&text).and_then(|value| file.deserialize::<WorkerFile>(&YamlPath::root(), value));
    if let Some(worker) = &worker {
        validate_telemetry(&mut file, &YamlPath::root().key("telemetry"), &worker.telemetry);
    }
    if let Some(worker) = &worker
        && !is_valid_worker_name(&worker.name)
    {
        file.error_at_value(
            &YamlPath::root().key("name"),
            format!("worker name `{}` is not allowed", worker.name),
            Some("use 1 to 64 letters, digits, `.`, `_` and `-`".into()),
        );
    }
    if let Some(worker) = &worker
        && worker.login == WorkerLogin::OwnAccount
    {
        for (key, url) in [("amqp_url", &worker.amqp_url), ("redis_url", &worker.redis_url)] {
            if url_has_credentials(url.expose()) {
                file.error_at_value(
                    &YamlPath::root().key(key),
                    format!("{key} carries credentials, but this worker logs in as its own account"),
                    Some(
                        "remove `user:password@` from the URL (the worker logs in with its name and password), \
                         or set `login: from_urls` to use the URL's credentials"
                            .into(),
                    ),
                );
            }
        }
    }
    match worker {
        Some(mut worker) if file.errors.is_empty() => {
            worker.basedir = path.parent().unwrap_or(Path::new(".")).join(&worker.basedir);
            Ok(worker)
        }
        _ => Err(ConfigErrors(file.errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_field_is_suggested_for_a_typo() {
        let hint = hint_for("unknown field `comand`, expected one of `name`, `command`, `env`");
        assert_eq!(hint.as_deref(), Some("did you mean `command`?"));
    }

    #[test]
    fn secrets_are_found_and_interpolated_where_referenced() {
        let value = "token=%(secret:pypi)s;again=%(secret:pypi)s;%(secret:other)s";
        assert_eq!(secret_references(value), ["pypi", "pypi", "other"]);
        let secrets = BTreeMap::from([("pypi".to_owned(), "s3cr3t".to_owned()), ("other".to_owned(), "x".to_owned())]);
        assert_eq!(interpolate_secrets(value, &secrets).unwrap(), "token=s3cr3t;again=s3cr3t;x");
        assert_eq!(interpolate_secrets("%(secret:nope)s", &secrets), Err("nope".to_owned()));
        // A property's `%(`, escaped as `%%(`, stays text and names nothing.
        assert_eq!(interpolate_secrets("%%(secret:token)s 50%", &secrets).unwrap(), "%(secret:token)s 50%");
        assert!(secret_references("%%(secret:token)s").is_empty());
        assert!(secret_references("100%(not a secret)").is_empty());
    }

    #[test]
    fn a_shell_string_runs_through_sh() {
        let command = StepCommand::Shell("echo hi".into());
        assert_eq!(command.argv(), ["/bin/sh", "-c", "echo hi"]);
    }
}
