//! `settings.yaml`: what is private to the host running masters (service
//! URLs, workers and their passwords, users, secrets, web settings). Every
//! field's `///` doc is its reference; defaults are given here, next to it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::Secret;
use crate::ids::WorkerName;

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
    /// Remote workers allowed to connect, with their passwords: a list, or
    /// (as buildbot.python.org writes it) a mapping from name to settings.
    #[serde(default, deserialize_with = "list_or_named_map")]
    pub workers: Vec<WorkerSettings>,
    /// The people who run workers, by the name a worker's `owner` gives
    /// (or, as on buildbot.python.org, the part of the worker's name
    /// before its first `-`): defaults for their workers.
    #[serde(default)]
    pub owners: BTreeMap<String, OwnerSettings>,
    /// Whether `workers` was written as a mapping (for errors' places).
    #[serde(skip)]
    pub(super) workers_by_name: bool,
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
    /// Which roles may do what, once `users` has anyone or `sign_in` a
    /// provider. The role `owner` is whoever forced or triggered the build.
    #[serde(default)]
    pub authorization: AuthorizationSettings,
    /// Identity providers people sign in with (GitHub, OpenID Connect).
    #[serde(default)]
    pub sign_in: super::SignInSettings,
    /// GitHub's webhook (`/change_hook/github`); off while unset.
    pub github: Option<GitHubSettings>,
    /// The SMTP server mail reporters send through; they need it.
    pub mail: Option<MailSettings>,
    /// The IRC network IRC reporters announce on; they need it.
    pub irc: Option<IrcSettings>,
}

/// The IRC network and the nickname buildmaster uses on it. One master at
/// a time holds the connection for the whole installation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IrcSettings {
    pub host: String,
    /// Default: 6697 with `tls`, 6667 without.
    pub port: Option<u16>,
    /// TLS from the first byte; on by default.
    #[serde(default = "default_true")]
    pub tls: bool,
    pub nickname: String,
    /// The nickname's password, given as `identify` says.
    pub password: Option<Secret>,
    #[serde(default)]
    pub identify: IrcIdentify,
}

/// How the nickname's password is given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IrcIdentify {
    /// `PRIVMSG NickServ :IDENTIFY <password>` once connected.
    #[default]
    Nickserv,
    /// SASL PLAIN while connecting: nothing is said before the network
    /// knows who buildmaster is.
    Sasl,
}

impl IrcSettings {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.tls { 6697 } else { 6667 })
    }
}

/// An SMTP server to send mail through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    pub smtp_host: String,
    /// Default: 587 with `starttls`, 465 with `tls`, 25 with `none`.
    pub smtp_port: Option<u16>,
    #[serde(default)]
    pub security: MailSecurity,
    /// Log in with these when set.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The sender, e.g. `buildmaster <buildbot@example.org>`.
    pub from: String,
}

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailSecurity {
    /// Plain connection upgraded with STARTTLS, which must succeed.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No encryption: only for a relay on this machine or a trusted network.
    None,
}

impl MailSettings {
    pub fn port(&self) -> u16 {
        self.smtp_port.unwrap_or(match self.security {
            MailSecurity::Starttls => 587,
            MailSecurity::Tls => 465,
            MailSecurity::None => 25,
        })
    }
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
    /// A token for that API (a personal access token), for the webhook's
    /// lookups and commit statuses.
    pub api_token: Option<Secret>,
    /// A GitHub App to set commit statuses as, instead of `api_token`: the
    /// better option (its own rate limit, tokens that expire within the
    /// hour, no person's account).
    pub app: Option<GitHubAppSettings>,
    /// The repositories (`owner/name`) whose deliveries are taken; another
    /// repository's get 403, even signed with the secret. Empty: any.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Largest delivery taken, in bytes (GitHub sends up to 25 MB).
    #[serde(default = "default_max_delivery_bytes")]
    pub max_delivery_bytes: usize,
}

/// A GitHub App, installed on the organisation or the repositories whose
/// commits get statuses (with the "Commit statuses: write" permission).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubAppSettings {
    /// The App's id, from its settings page.
    pub id: u64,
    /// The id of its installation (in the installation's URL).
    pub installation_id: u64,
    /// The App's private key (the `.pem` GitHub gave), relative to
    /// settings.yaml's folder; private like this file.
    pub private_key_file: PathBuf,
}

fn default_max_delivery_bytes() -> usize {
    25 * 1024 * 1024
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

    /// Whether anyone can be told apart: control actions then need someone
    /// with a role that allows them.
    pub fn has_accounts(&self) -> bool {
        !self.users.is_empty() || self.sign_in.any()
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

pub(super) fn default_namespace() -> String {
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
    #[serde(default = "super::steps::default_true")]
    pub secure_cookies: bool,
    /// Let anyone who reaches the masters force, stop and cancel builds
    /// while `users` is empty. Without it, such a master starts only on a
    /// loopback address (and with a loopback `url`).
    #[serde(default)]
    pub anonymous_control: bool,
    /// The address people use, e.g. `https://buildbot.python.org/`; links
    /// in messages sent elsewhere point here.
    pub url: Option<String>,
    /// Live-event connections (`/ws`) one master keeps at most; more get
    /// 503.
    #[serde(default = "default_max_websockets")]
    pub max_websockets: usize,
    /// Running logs one master follows for clients at once (each holds a
    /// Redis connection while it waits for output); more get 503.
    #[serde(default = "default_max_log_followers")]
    pub max_log_followers: usize,
    /// An API read taking longer than this is cancelled (503), so a costly
    /// listing cannot hold the read connections.
    #[serde(default = "default_read_timeout_seconds")]
    pub read_timeout_seconds: u64,
}

fn default_max_websockets() -> usize {
    2000
}

fn default_max_log_followers() -> usize {
    256
}

fn default_read_timeout_seconds() -> u64 {
    10
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
            anonymous_control: false,
            url: None,
            max_websockets: default_max_websockets(),
            max_log_followers: default_max_log_followers(),
            read_timeout_seconds: default_read_timeout_seconds(),
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
    /// Its login name: letters, digits, `.`, `_` and `-` (the key, where
    /// `workers` is a mapping).
    #[serde(default)]
    pub name: WorkerName,
    /// Its password, at least 14 characters; default its owner's.
    #[serde(default)]
    pub password: Secret,
    /// Who runs it: a name of `owners`. Default the part of its name before
    /// the first `-`, when `owners` has it.
    pub owner: Option<String>,
    /// Tags describing it (shown on the workers page), e.g. `[linux, amd64]`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The branches (of master.yaml's `branches:`) it builds, when fewer
    /// than all: `{since: "3.13"}`, `{until: "3.12"}` or a list.
    pub branches: Option<serde_yaml::Value>,
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
    /// Who is mailed (through settings.yaml's `mail` server) when it has
    /// been gone `missing_timeout_seconds`, and again when it is back, as
    /// Buildbot's `notify_on_missing`: typically its owner.
    #[serde(default)]
    pub notify_on_missing: Vec<String>,
    #[serde(default = "default_missing_timeout_seconds")]
    pub missing_timeout_seconds: u64,
}

fn default_missing_timeout_seconds() -> u64 {
    3600
}

/// A person who runs workers, and what their workers have unless they say
/// otherwise.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerSettings {
    /// Their name as people read it.
    pub name: Option<String>,
    /// Mailed when one of their workers is missing (its
    /// `notify_on_missing`, unless it has one).
    pub email: Option<String>,
    /// The password of their workers that have none of their own.
    #[serde(default)]
    pub password: Secret,
    /// Properties of their workers' builds, under each worker's own.
    #[serde(default)]
    pub properties: BTreeMap<String, serde_yaml::Value>,
    /// Their workers' downtime, unless a worker gives its own.
    #[serde(default)]
    pub downtime: Vec<DowntimeWindow>,
}

/// A window, `from` to `until` (`HH:MM`, crossing midnight when `until` is
/// earlier), in a time zone, every day or on the given `weekdays` (the
/// days it starts on).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DowntimeWindow {
    pub from: String,
    pub until: String,
    #[serde(default = "super::master::default_timezone")]
    pub timezone: String,
    /// e.g. `[wednesday]`; every day when empty.
    #[serde(default)]
    pub weekdays: Vec<String>,
}

impl DowntimeWindow {
    pub(super) fn bounds(&self) -> Option<(chrono::NaiveTime, chrono::NaiveTime, chrono_tz::Tz)> {
        let time = |text: &str| chrono::NaiveTime::parse_from_str(text, "%H:%M").ok();
        Some((time(&self.from)?, time(&self.until)?, self.timezone.parse().ok()?))
    }

    /// Its weekdays, or the first one that is not a weekday's name.
    pub(super) fn days(&self) -> Result<Vec<chrono::Weekday>, &str> {
        self.weekdays.iter().map(|day| day.parse::<chrono::Weekday>().map_err(|_| day.as_str())).collect()
    }

    /// Whether `now` falls in the window (never, for one `checkconfig`
    /// refuses).
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        use chrono::Datelike;
        let (Some((from, until, zone)), Ok(days)) = (self.bounds(), self.days()) else {
            return false;
        };
        let local = now.with_timezone(&zone);
        let time = local.time();
        // The day the window that holds `now` started on: after midnight in
        // a window crossing it, the day before.
        let (inside, started) = match from <= until {
            true => (from <= time && time < until, local.weekday()),
            false if time >= from => (true, local.weekday()),
            false => (time < until, local.weekday().pred()),
        };
        inside && (days.is_empty() || days.contains(&started))
    }
}

impl Settings {
    /// Where the `index`th worker is in settings.yaml.
    pub(super) fn worker_at(&self, index: usize) -> super::YamlPath {
        let workers = super::YamlPath::root().key("workers");
        match self.workers_by_name {
            true => workers.key(self.workers[index].name.to_string()),
            false => workers.index(index),
        }
    }

    /// Gives each worker its owner's defaults: password, who to mail when
    /// it is missing, properties and downtime. An owner that is named but
    /// not defined is an error at its line.
    pub(super) fn apply_owners(&mut self, file: &mut super::diagnostics::SourceFile) {
        for index in 0..self.workers.len() {
            let worker = &self.workers[index];
            let implied = worker.name.split('-').next().filter(|prefix| self.owners.contains_key(*prefix));
            let owner_name = worker.owner.clone().or(implied.map(str::to_owned));
            let Some(owner_name) = owner_name else { continue };
            let Some(owner) = self.owners.get(&owner_name).cloned() else {
                let at = self.worker_at(index).key("owner");
                let known = self.owners.keys().cloned().collect::<Vec<_>>().join(", ");
                file.error_at_value(
                    &at,
                    format!("worker `{}` names owner `{owner_name}`, who is not under `owners:`", worker.name),
                    Some(if known.is_empty() { "add them under `owners:`".into() } else { format!("owners: {known}") }),
                );
                continue;
            };
            let worker = &mut self.workers[index];
            worker.owner = Some(owner_name);
            if worker.password.expose().is_empty() {
                worker.password = owner.password;
            }
            if worker.notify_on_missing.is_empty() {
                worker.notify_on_missing.extend(owner.email);
            }
            for (name, value) in owner.properties {
                worker.properties.entry(name).or_insert(value);
            }
            if worker.downtime.is_empty() {
                worker.downtime = owner.downtime;
            }
        }
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

/// A list of workers, or a mapping from each one's name to its settings;
/// read as it streams, so an error keeps its place in the file.
fn list_or_named_map<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<WorkerSettings>, D::Error> {
    struct Workers;

    impl<'de> serde::de::Visitor<'de> for Workers {
        type Value = Vec<WorkerSettings>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of workers, or a mapping from worker name to its settings")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut workers = Vec::new();
            while let Some(worker) = seq.next_element::<WorkerSettings>()? {
                workers.push(worker);
            }
            Ok(workers)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut workers = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                let mut worker = map.next_value::<WorkerSettings>()?;
                worker.name = name.into();
                workers.push(worker);
            }
            Ok(workers)
        }
    }

    deserializer.deserialize_any(Workers)
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
    #[serde(default)]
    pub step_environment: StepEnvironment,
}

/// The environment a worker's steps run in: a few variables taken from
/// the worker's own environment and values given here, and nothing else
/// of the worker's (its settings, its credentials); each step adds its
/// `env`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepEnvironment {
    /// Variables passed on from the worker's environment when set, besides
    /// `PATH`, `HOME`, `USER`, `LOGNAME`, `SHELL`, `LANG`, `LANGUAGE`,
    /// `LC_*`, `TZ` and `TMPDIR`.
    #[serde(default)]
    pub pass: Vec<String>,
    /// Variables set for every step.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

impl StepEnvironment {
    /// What every worker passes on from its environment.
    pub const ALWAYS_PASSED: &[&str] =
        &["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR"];

    /// The base environment of every step, from the worker's own
    /// environment `from`.
    pub fn resolve(&self, from: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = from
            .into_iter()
            .filter(|(name, _)| {
                Self::ALWAYS_PASSED.contains(&name.as_str()) || name.starts_with("LC_") || self.pass.contains(name)
            })
            .collect();
        env.extend(self.set.clone());
        env
    }
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
            step_environment: StepEnvironment::default(),
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
    /// A test result file (`test_results:`) larger than this is not sent.
    #[serde(default = "default_max_test_result_file_bytes")]
    pub max_test_result_file_bytes: u64,
    /// An artifact larger than this is not kept.
    #[serde(default = "default_max_artifact_bytes")]
    pub max_artifact_bytes: u64,
    /// A build keeps artifacts up to this many bytes in all; later ones
    /// are not kept.
    #[serde(default = "default_max_artifacts_per_build_bytes")]
    pub max_artifacts_per_build_bytes: u64,
}

impl BuildSettings {
    /// The caps workers apply to the files steps send.
    pub fn file_limits(&self) -> crate::wire::FileLimits {
        crate::wire::FileLimits {
            test_result_file_bytes: self.max_test_result_file_bytes,
            artifact_bytes: self.max_artifact_bytes,
            artifacts_per_build_bytes: self.max_artifacts_per_build_bytes,
        }
    }
}

fn default_max_test_result_file_bytes() -> u64 {
    crate::wire::FileLimits::default().test_result_file_bytes
}

fn default_max_artifact_bytes() -> u64 {
    crate::wire::FileLimits::default().artifact_bytes
}

fn default_max_artifacts_per_build_bytes() -> u64 {
    crate::wire::FileLimits::default().artifacts_per_build_bytes
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
            max_test_result_file_bytes: default_max_test_result_file_bytes(),
            max_artifact_bytes: default_max_artifact_bytes(),
            max_artifacts_per_build_bytes: default_max_artifacts_per_build_bytes(),
        }
    }
}

fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_weekly_window_holds_on_its_days_only_and_one_crossing_midnight_on_the_day_it_started() {
        // buildbot.python.org's: Wednesdays 8:00 to 10:00 in Los Angeles.
        let wednesday: DowntimeWindow = serde_yaml::from_str(
            "{from: \"08:00\", until: \"10:00\", timezone: America/Los_Angeles, weekdays: [wednesday]}",
        )
        .unwrap();
        assert!(wednesday.contains(at("2026-12-02T16:30:00Z")), "Wednesday 8:30 in Los Angeles");
        assert!(!wednesday.contains(at("2026-12-02T18:00:00Z")), "10:00 is the end");
        assert!(!wednesday.contains(at("2026-12-03T16:30:00Z")), "Thursday");
        let friday_night: DowntimeWindow =
            serde_yaml::from_str("{from: \"22:00\", until: \"08:00\", weekdays: [fri]}").unwrap();
        assert!(friday_night.contains(at("2026-12-04T23:00:00Z")), "Friday 23:00");
        assert!(friday_night.contains(at("2026-12-05T07:00:00Z")), "Saturday 07:00, in Friday's window");
        assert!(!friday_night.contains(at("2026-12-06T07:00:00Z")), "Sunday 07:00 is in Saturday's, not listed");
        let daily: DowntimeWindow = serde_yaml::from_str("{from: \"22:00\", until: \"08:00\"}").unwrap();
        assert!(daily.contains(at("2026-12-06T07:00:00Z")));
        let wrong: DowntimeWindow =
            serde_yaml::from_str("{from: \"22:00\", until: \"08:00\", weekdays: [funday]}").unwrap();
        assert_eq!(wrong.days(), Err("funday"));
        assert!(!wrong.contains(at("2026-12-06T23:00:00Z")), "checkconfig refuses it; it never holds");
    }
}
