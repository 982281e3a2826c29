//! `worker.yaml`: what a remote worker needs to connect. Which builders it
//! serves is decided by the masters' configuration, not here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::diagnostics::{ConfigErrors, SourceFile};
use super::settings::{StepEnvironment, TelemetrySettings, default_namespace};
use super::{Secret, YamlPath, validate};
use crate::ids::WorkerName;

/// `worker.yaml`: what a remote worker needs to connect. Which builders it
/// serves is decided by the masters' configuration, not here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    /// Its name, as listed in the masters' settings.yaml.
    pub name: WorkerName,
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
    /// The environment steps run in (what is passed on from this worker's
    /// own, and what is set).
    #[serde(default)]
    pub step_environment: StepEnvironment,
    /// Connect to RabbitMQ and Redis without TLS (`amqp://`, `redis://`)
    /// though they are not on this machine. Off, such URLs are refused:
    /// a volunteer's worker reaches the masters' services across the
    /// internet, where passwords and logs must not travel in clear.
    #[serde(default)]
    pub allow_plaintext: bool,
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

/// Whether a URL names a user or a password (`scheme://user:pw@host/`).
fn url_has_credentials(url: &str) -> bool {
    authority(url).contains('@')
}

/// The `user:password@host:port` part of a URL.
fn authority(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.split(['/', '?', '#']).next().unwrap_or_default()
}

/// Whether a URL's host is this machine (`localhost`, `127.0.0.0/8`,
/// `::1`): traffic to it never crosses a network.
fn is_loopback(url: &str) -> bool {
    let host_and_port = authority(url).rsplit('@').next().unwrap_or_default();
    let host = match host_and_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host_and_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|address| address.is_loopback())
}

/// Loads worker.yaml; relative paths are resolved against its folder.
pub fn load_worker_file(path: &Path) -> Result<WorkerFile, ConfigErrors> {
    let (mut file, text) = SourceFile::read(path).map_err(|e| ConfigErrors(vec![e]))?;
    let worker = file.parse_yaml(&text).and_then(|value| file.deserialize::<WorkerFile>(&YamlPath::root(), value));
    if let Some(worker) = &worker {
        validate::telemetry(&mut file, &YamlPath::root().key("telemetry"), &worker.telemetry);
    }
    if let Some(worker) = &worker
        && !validate::is_valid_worker_name(&worker.name)
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
    if let Some(worker) = &worker
        && !worker.allow_plaintext
    {
        for (key, url, secure) in [("amqp_url", &worker.amqp_url, "amqps"), ("redis_url", &worker.redis_url, "rediss")]
        {
            let url = url.expose();
            let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
            if scheme != secure && !is_loopback(url) {
                file.error_at_value(
                    &YamlPath::root().key(key),
                    format!("{key} is not encrypted ({scheme}://) and leads to another machine"),
                    Some(format!(
                        "use {secure}:// (the masters' operator gives the port and the CA certificate), or set \
                         `allow_plaintext: true` if the network between them is private"
                    )),
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
    fn only_this_machine_is_loopback() {
        assert!(is_loopback("amqp://127.0.0.1:5672/%2f"));
        assert!(is_loopback("redis://user:pw@localhost:6379/"));
        assert!(is_loopback("amqp://[::1]:5672"));
        assert!(!is_loopback("amqp://buildbot.python.org:5672/%2f"));
        assert!(!is_loopback("redis://10.0.0.5/"));
        assert!(!is_loopback("amqp://127.0.0.1.example.org/"));
    }
}
