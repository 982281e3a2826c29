//! buildbot.python.org's `settings.yaml`, read as it is. Its masters find
//! it through `PYBUILDBOT_SETTINGS_PATH`, as buildmaster's do. What means
//! the same here is taken under buildmaster's name (`db_url` when it is a
//! Postgres URL, `web_port`, `buildbot_url`); `workers` as a mapping and
//! `owners` are read as they are (`settings.rs`). For each other key,
//! an error at its line says what to write instead.

use serde_yaml::{Mapping, Value};

use super::YamlPath;
use super::diagnostics::SourceFile;

/// Keys buildbot.python.org's settings have and buildmaster says elsewhere,
/// with what to write instead.
const ELSEWHERE: &[(&str, &str)] = &[
    ("worker_port", "workers reach the masters through RabbitMQ (`amqp_url`), not a port of the masters: remove it"),
    ("irc_notice", "IRC is `irc: {host, nickname, password}` here, and its channel an `irc` reporter in master.yaml"),
    ("irc_host", "write `irc: {host: irc.libera.chat, nickname: ...}`"),
    ("irc_nick", "write `irc: {host: ..., nickname: ...}`"),
    ("irc_password", "write `irc: {..., password: ..., identify: sasl}`"),
    ("irc_channel", "the channel is the `channel` of an `irc` reporter in master.yaml"),
    ("irc_notify_events", "the events are the `events` of an `irc` reporter in master.yaml"),
    ("send_mail", "mail goes out when master.yaml has a `mail` reporter and settings.yaml a `mail:` server"),
    ("email_relay_host", "write `mail: {smtp_host: ..., from: ...}`"),
    ("from_email", "write `mail: {smtp_host: ..., from: ...}`"),
    ("status_email", "the address is the `to` of a `mail` reporter in master.yaml"),
    ("github_status_token", "write `github: {api_token: ..., webhook_secret: ...}`"),
    ("github_change_hook_secret", "write `github: {webhook_secret: ...}`"),
    ("do_auth", "people sign in when `sign_in: {github: ...}` is set; remove it"),
    ("github_auth_id", "write `sign_in: {github: {client_id: ..., client_secret: ...}}`"),
    ("github_auth_secret", "write `sign_in: {github: {client_id: ..., client_secret: ...}}`"),
    ("discord_webhook", "Discord is a `discord` reporter in master.yaml, with its webhook URL under `secrets:`"),
    ("verbosity", "how much masters log is set by RUST_LOG; remove it"),
    ("sentry_dsn", "errors and traces go out through OpenTelemetry (`telemetry: {otlp_endpoint: ...}`)"),
    ("git_url", "the repository is the `repourl` of the git steps in master.yaml (or the factories file)"),
];

/// Takes buildbot.python.org's keys that mean the same here under
/// buildmaster's names, and reports the others at their lines.
pub(super) fn translate(file: &mut SourceFile, value: &mut Value) {
    let Value::Mapping(top) = value else { return };
    let root = YamlPath::root();
    if let Some(url) = top.get("db_url").and_then(Value::as_str).map(str::to_owned) {
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !postgres {
            file.error_at_value(
                &root.key("db_url"),
                "buildmaster keeps its records in Postgres, not in this database",
                Some("give `database_url: postgresql://USER:PASSWORD@HOST/DB`".into()),
            );
        } else if top.contains_key("database_url") {
            file.error_at(&root.key("db_url"), "both `db_url` and `database_url` are given", Some("keep one".into()));
        } else {
            top.insert("database_url".into(), Value::String(url));
        }
        top.remove("db_url");
    }
    for (theirs, ours) in [("web_port", "port"), ("buildbot_url", "url")] {
        let Some(given) = top.remove(theirs) else { continue };
        let web = top.entry("web".into()).or_insert_with(|| Value::Mapping(Mapping::new()));
        match web {
            Value::Mapping(web) if !web.contains_key(ours) => {
                web.insert(ours.into(), given);
            }
            _ => file.error_at(
                &root.key(theirs),
                format!("both `{theirs}` and `web.{ours}` are given"),
                Some("keep one".into()),
            ),
        }
    }
    for (key, instead) in ELSEWHERE {
        if top.remove(*key).is_some() {
            file.error_at(
                &root.key(*key),
                format!("`{key}` is buildbot.python.org's setting; buildmaster says it elsewhere"),
                Some((*instead).to_owned()),
            );
        }
    }
}
