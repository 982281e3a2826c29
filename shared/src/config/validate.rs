//! Checks that need more than one field: cross-references (a builder's
//! factory and workers, a scheduler's builders, a secret a step uses),
//! names that end up in queue names, and limits that keep the system sound
//! (a lease at least two heartbeats long). Each problem is reported at its
//! place in its file.

use std::collections::BTreeSet;
use std::path::Path;

use super::diagnostics::SourceFile;
use super::interpolate;
use super::master::{MasterConfig, SchedulerConfig};
use super::settings::{IrcIdentify, Settings, TelemetrySettings};
use super::sign_in::is_valid_provider_name;
use super::steps::{StepCommand, StepSpec};
use super::{MIN_WORKER_PASSWORD_CHARS, YamlPath};

/// Names that end up in queue names, Redis keys and RabbitMQ user names.
pub(super) fn is_valid_worker_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Builder names appear in URLs, queue names and permission patterns:
/// anything printable but `/`, at most 200 bytes.
fn is_valid_builder_name(name: &str) -> bool {
    !name.trim().is_empty() && name.len() <= 200 && !name.chars().any(|c| c == '/' || c.is_control())
}

pub(super) fn settings(file: &mut SourceFile, settings: &Settings) {
    let root = YamlPath::root();
    if let Some(app) = settings.github.as_ref().and_then(|github| github.app.as_ref()) {
        let at = root.key("github").key("app").key("private_key_file");
        let path = app.private_key_file.display();
        match std::fs::read_to_string(&app.private_key_file) {
            Err(error) => file.error_at_value(
                &at,
                format!("cannot read the GitHub App's private key {path}: {error}"),
                Some("download one from the App's settings page (\"Generate a private key\")".into()),
            ),
            Ok(pem) if !(pem.contains("-----BEGIN") && pem.contains("PRIVATE KEY-----")) => file.error_at_value(
                &at,
                format!("{path} is not a PEM private key"),
                Some("use the `.pem` file GitHub gave when the key was generated".into()),
            ),
            Ok(_) => {}
        }
    }
    if let Some(mail) = &settings.mail {
        if !is_mail_address(&mail.from) {
            file.error_at_value(
                &root.key("mail").key("from"),
                format!("`{}` is not a mail address", mail.from),
                Some("write `buildbot@example.org` or `buildmaster <buildbot@example.org>`".into()),
            );
        }
        if mail.username.is_some() != mail.password.is_some() {
            file.error_at(&root.key("mail"), "`username` and `password` go together", None);
        }
    }
    if let Some(irc) = &settings.irc {
        let valid = !irc.nickname.is_empty()
            && irc.nickname.len() <= 30
            && irc.nickname.chars().all(|c| c.is_ascii_alphanumeric() || "-_[]\\`^{}|".contains(c))
            && !irc.nickname.starts_with(|c: char| c.is_ascii_digit() || c == '-');
        if !valid {
            file.error_at_value(
                &root.key("irc").key("nickname"),
                format!("`{}` is not an IRC nickname", irc.nickname),
                Some("use letters, digits and `-_[]\\`^{}|`, not starting with a digit or `-`".into()),
            );
        }
        if irc.identify == IrcIdentify::Sasl && irc.password.is_none() {
            file.error_at(
                &root.key("irc"),
                "`identify: sasl` needs the nickname's `password`",
                Some("add `password:` under `irc:`, or drop `identify: sasl`".into()),
            );
        }
    }
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
        let at = settings.worker_at(index);
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
        if worker.password.expose().is_empty() {
            file.error_at(
                &at,
                format!("worker `{}` has no password", worker.name),
                Some("give it `password:`, or an owner under `owners:` with one".into()),
            );
        } else if worker.password.expose().chars().count() < MIN_WORKER_PASSWORD_CHARS {
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
        for (address_index, address) in worker.notify_on_missing.iter().enumerate() {
            if !is_mail_address(address) {
                file.error_at_value(
                    &at.key("notify_on_missing").index(address_index),
                    format!("`{address}` is not a mail address"),
                    Some("write `name@example.org` or `Name <name@example.org>`".into()),
                );
            }
        }
        if !worker.notify_on_missing.is_empty() && settings.mail.is_none() {
            file.error_at_value(
                &at.key("notify_on_missing"),
                format!(
                    "worker `{}` has people to mail when it is missing, but there is no `mail` server",
                    worker.name
                ),
                Some("add `mail: {smtp_host: smtp.example.org, from: buildbot@example.org}` to settings.yaml".into()),
            );
        }
        if worker.missing_timeout_seconds == 0 {
            file.error_at_value(&at.key("missing_timeout_seconds"), "missing_timeout_seconds must be at least 1", None);
        }
        for (window_index, window) in worker.downtime.iter().enumerate() {
            let window_at = at.key("downtime").index(window_index);
            if window.bounds().is_none() {
                file.error_at_value(
                    &window_at,
                    "a downtime window needs `from` and `until` as HH:MM and a known `timezone`",
                    Some("e.g. {from: \"22:00\", until: \"06:00\", timezone: Europe/Amsterdam}".into()),
                );
            }
            if let Err(day) = window.days() {
                file.error_at_value(
                    &window_at.key("weekdays"),
                    format!("`{day}` is not a day of the week"),
                    Some("write e.g. `weekdays: [wednesday]` (or `wed`)".into()),
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
        if settings.workers.iter().any(|w| *w.name == *settings.local_worker.name) {
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
    telemetry(file, &root.key("telemetry"), &settings.telemetry);
    users(file, settings);
    if let Some(github) = &settings.github
        && github.webhook_secret.expose().chars().count() < 16
    {
        file.error_at_value(
            &root.key("github").key("webhook_secret"),
            "the webhook secret is shorter than 16 characters: anyone could sign deliveries",
            Some("generate one, e.g. `openssl rand -hex 20`, and give GitHub the same".into()),
        );
    }
    if let Some(github) = &settings.github {
        for (index, repository) in github.repositories.iter().enumerate() {
            let parts: Vec<&str> = repository.split('/').collect();
            if parts.len() != 2 || parts.iter().any(|part| part.is_empty()) {
                file.error_at_value(
                    &root.key("github").key("repositories").index(index),
                    format!("`{repository}` is not a repository's `owner/name`"),
                    Some("e.g. python/cpython".into()),
                );
            }
        }
    }
    if let Some(url) = &settings.web.url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        file.error_at_value(
            &root.key("web").key("url"),
            format!("web.url `{url}` is not an http:// or https:// URL"),
            Some("the address people open, e.g. https://buildbot.python.org/".into()),
        );
    }
    sign_in(file, &root.key("sign_in"), settings);
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

pub(super) fn master(file: &mut SourceFile, master: &MasterConfig, settings: &Settings) {
    let root = YamlPath::root();
    reporters(file, master, settings);
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
                    Some(if **worker == *settings.local_worker.name {
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
                    let parameter_at = at.key("parameters").index(parameter_index);
                    if let Some(pattern) = &parameter.pattern
                        && let Err(error) = regex::Regex::new(pattern)
                    {
                        file.error_at_value(
                            &parameter_at.key("pattern"),
                            format!("`{pattern}` is not a regular expression: {error}"),
                            None,
                        );
                    } else if !parameter.allows(&parameter.default) {
                        let hint = if parameter.choices.is_empty() {
                            "a default must match the pattern".to_owned()
                        } else {
                            format!("use one of: {}", parameter.choices.join(", "))
                        };
                        file.error_at_value(
                            &parameter_at.key("default"),
                            format!("the default `{}` is not a value this parameter allows", parameter.default),
                            Some(hint),
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
    if let Some(board) = &master.release_board {
        for (index, tag) in board.tags.iter().enumerate() {
            if !master.builders.iter().any(|builder| builder.tags.contains(tag)) {
                file.error_at_value(
                    &root.key("release_board").key("tags").index(index),
                    format!("no builder has the tag `{tag}`"),
                    Some("the board shows builders with these tags; add it to builders' `tags`".into()),
                );
            }
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

fn users(file: &mut SourceFile, settings: &Settings) {
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

pub(super) fn telemetry(file: &mut SourceFile, at: &YamlPath, telemetry: &TelemetrySettings) {
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

/// `#name` or `&name`, without what IRC separates with.
fn is_irc_channel(channel: &str) -> bool {
    channel.len() > 1
        && channel.len() <= 50
        && (channel.starts_with('#') || channel.starts_with('&'))
        && !channel.contains([' ', ',', '\x07', '\r', '\n', '\0'])
}

/// `name@domain` or `Name <name@domain>`: what a mail header takes.
pub(super) fn is_mail_address(text: &str) -> bool {
    let address = match text.rsplit_once('<') {
        Some((_, rest)) => match rest.strip_suffix('>') {
            Some(address) => address,
            None => return false,
        },
        None => text,
    };
    let Some((local, domain)) = address.trim().rsplit_once('@') else { return false };
    !local.is_empty() && domain.contains('.') && !address.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A reporter's names (unique, builders that exist) and what it needs from
/// settings.yaml: the public URL its links point to, and its credentials.
fn reporters(file: &mut SourceFile, master: &MasterConfig, settings: &Settings) {
    let root = YamlPath::root();
    let builders: BTreeSet<&str> = master.builders.iter().map(|builder| builder.name.as_str()).collect();
    let mut names = BTreeSet::new();
    for (index, reporter) in master.reporters.iter().enumerate() {
        let at = root.key("reporters").index(index);
        if reporter.name.trim().is_empty() || !names.insert(reporter.name.as_str()) {
            file.error_at_value(
                &at.key("name"),
                format!("reporter name `{}` is empty or used twice", reporter.name),
                Some("each reporter needs a name of its own: what it sent is recorded under it".into()),
            );
        }
        for (builder_index, builder) in reporter.builders.iter().enumerate() {
            if !builders.contains(builder.as_str()) {
                file.error_at_value(
                    &at.key("builders").index(builder_index),
                    format!("reporter `{}` names builder `{builder}`, which is not defined", reporter.name),
                    None,
                );
            }
        }
        if index == 0 && settings.web.url.is_none() {
            file.error_at(
                &root.key("reporters"),
                "reporters link to build pages, but settings.yaml has no `web.url`",
                Some("set `web: {url: https://buildbot.example.org/}` in settings.yaml, the address people use".into()),
            );
        }
        let github_target = match (&reporter.github_status, &reporter.github_comment) {
            (Some(_), _) => Some(("github_status", "sets commit statuses", "commit statuses")),
            (_, Some(_)) => Some(("github_comment", "comments on pull requests", "pull requests")),
            _ => None,
        };
        if let Some((key, does, writes)) = github_target
            && settings.github.as_ref().is_none_or(|github| github.api_token.is_none() && github.app.is_none())
        {
            file.error_at_value(
                &at.key(key),
                format!(
                    "reporter `{}` {does}, but settings.yaml has no `github.api_token` or `github.app`",
                    reporter.name
                ),
                Some(format!("add a token that may write {writes} under `github:` in settings.yaml")),
            );
        }
        if let Some(mail) = &reporter.mail {
            if settings.mail.is_none() {
                file.error_at_value(
                    &at.key("mail"),
                    format!("reporter `{}` sends mail, but settings.yaml has no `mail` server", reporter.name),
                    Some(
                        "add `mail: {smtp_host: smtp.example.org, from: buildbot@example.org}` to settings.yaml".into(),
                    ),
                );
            }
            if mail.to.is_empty() {
                file.error_at_value(&at.key("mail").key("to"), "a mail reporter needs recipients", None);
            }
            for (to_index, to) in mail.to.iter().enumerate() {
                if !is_mail_address(to) {
                    file.error_at_value(
                        &at.key("mail").key("to").index(to_index),
                        format!("`{to}` is not a mail address"),
                        Some("write `name@example.org` or `Name <name@example.org>`".into()),
                    );
                }
            }
        }
        if let Some(irc) = &reporter.irc {
            if settings.irc.is_none() {
                file.error_at_value(
                    &at.key("irc"),
                    format!("reporter `{}` announces on IRC, but settings.yaml has no `irc` network", reporter.name),
                    Some(
                        "add `irc: {host: irc.libera.chat, nickname: example-bb, password: ...}` to settings.yaml"
                            .into(),
                    ),
                );
            }
            if irc.channels.is_empty() {
                file.error_at_value(&at.key("irc").key("channels"), "an IRC reporter needs channels", None);
            }
            for (channel_index, channel) in irc.channels.iter().enumerate() {
                if !is_irc_channel(channel) {
                    file.error_at_value(
                        &at.key("irc").key("channels").index(channel_index),
                        format!("`{channel}` is not an IRC channel"),
                        Some("a channel starts with `#` and has no spaces or commas, e.g. `#python-dev`".into()),
                    );
                }
            }
        }
        if let Some(discord) = &reporter.discord
            && !settings.secrets.contains_key(&discord.webhook_secret)
        {
            file.error_at_value(
                &at.key("discord").key("webhook_secret"),
                format!("secret `{}` is not defined", discord.webhook_secret),
                Some(format!("add the webhook's URL under `secrets:` in settings.yaml ({}: https://discord.com/api/webhooks/...)", discord.webhook_secret)),
            );
        }
    }
}

/// Providers need the address people come back to, and settings that make
/// sense; secrets are never quoted back.
fn sign_in(file: &mut SourceFile, at: &YamlPath, settings: &Settings) {
    let sign_in = &settings.sign_in;
    if sign_in.any() && settings.web.url.is_none() {
        file.error_at(
            at,
            "signing in with a provider needs `web.url`, the address people are sent back to",
            Some("add `url: https://buildbot.example.org/` under `web:`".into()),
        );
    }
    if let Some(github) = &sign_in.github {
        let at = at.key("github");
        for (key, url) in [("url", &github.url), ("api_url", &github.api_url)] {
            if !is_http_url(url) {
                file.error_at_value(&at.key(key), format!("`{url}` is not an http:// or https:// URL"), None);
            }
        }
        for team in github.teams.keys() {
            if !team.split_once('/').is_some_and(|(org, slug)| !org.is_empty() && !slug.is_empty()) {
                file.error_at(
                    &at.key("teams").key(team.as_str()),
                    format!("`{team}` does not name a team as `organisation/team-slug`"),
                    Some("e.g. `python/core-developers`".into()),
                );
            }
        }
        if github.client_id.trim().is_empty() || github.client_secret.expose().trim().is_empty() {
            file.error_at(
                &at,
                "`client_id` and `client_secret` must not be empty",
                Some("copy them from the OAuth App's page at GitHub".into()),
            );
        }
        if github.roles_refresh_seconds == 0 {
            file.error_at_value(&at.key("roles_refresh_seconds"), "must be at least 1", None);
        }
    }
    let mut seen = BTreeSet::new();
    for (index, provider) in sign_in.oidc.iter().enumerate() {
        let at = at.key("oidc").index(index);
        if !is_valid_provider_name(&provider.name) {
            file.error_at_value(
                &at.key("name"),
                format!("provider name `{}` is not allowed", provider.name),
                Some("use letters, digits, `-` and `_` (it appears in the callback URL); `github` is taken".into()),
            );
        } else if !seen.insert(provider.name.as_str()) {
            file.error_at_value(&at.key("name"), format!("provider `{}` is named twice", provider.name), None);
        }
        let loopback = provider.issuer.starts_with("http://127.") || provider.issuer.starts_with("http://localhost");
        if !(provider.issuer.starts_with("https://") || loopback) {
            file.error_at_value(
                &at.key("issuer"),
                format!("issuer `{}` must be an https:// URL", provider.issuer),
                Some("OpenID Connect providers are reached over HTTPS (plain http only on this machine)".into()),
            );
        }
        if provider.client_id.trim().is_empty() || provider.client_secret.expose().trim().is_empty() {
            file.error_at(
                &at,
                "`client_id` and `client_secret` must not be empty",
                Some("register buildmaster as a confidential client at the provider".into()),
            );
        }
        if !provider.roles.is_empty() && provider.roles_claim.is_none() {
            file.error_at(
                &at.key("roles"),
                "`roles` maps groups to roles, but no `roles_claim` says which claim holds the groups",
                Some("add `roles_claim: groups`".into()),
            );
        }
    }
}

fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// Checks one step as worked out for a builder, at the place of its
/// template (`at`, `factories.NAME.steps[i]`).
pub(super) fn step(file: &mut SourceFile, at: &YamlPath, step: &StepSpec, settings: &Settings) {
    for (variable, value) in &step.env {
        for secret in interpolate::secret_names(value) {
            if !settings.secrets.contains_key(secret) {
                file.error_at_value(
                    &at.key("env").key(variable),
                    format!("secret `{secret}` is not defined"),
                    Some(format!("add it under `secrets:` in settings.yaml ({secret}: ...)")),
                );
            }
        }
    }
    // A list command's words may come from a kw: the command's line is the place.
    let mut texts: Vec<(YamlPath, &str)> = match &step.command {
        StepCommand::Argv(argv) => argv.iter().map(|word| (at.key("command"), word.as_str())).collect(),
        StepCommand::Shell(script) => vec![(at.key("command"), script.as_str())],
    };
    texts.extend(step.env.iter().map(|(name, value)| (at.key("env").key(name.clone()), value.as_str())));
    texts.push((at.key("workdir"), step.workdir.as_str()));
    for (text_at, text) in texts {
        if let Err(problem) = interpolate::check(text) {
            file.error_at_value(&text_at, problem, None);
        }
    }
    if let StepCommand::Shell(script) = &step.command
        && interpolate::check(script).is_ok()
        && let Err(problem) = interpolate::check_shell(script)
    {
        file.error_at_value(
            &at.key("command"),
            problem,
            Some("a property is one word: write `\"%(prop:NAME)s\"` or `%(prop:NAME)s`".into()),
        );
    }
    if let Some(Err(problem)) = step.warnings.as_ref().map(|warnings| warnings.resolve()) {
        file.error_at_value(&at.key("warnings"), problem, None);
    }
    if let Some(Err(problem)) = step.test_summary.as_ref().map(|summary| summary.resolve()) {
        file.error_at_value(&at.key("test_summary"), problem, None);
    }
    for (field, patterns) in [("test_results", &step.test_results), ("artifacts", &step.artifacts)] {
        for (i, pattern) in patterns.iter().enumerate() {
            if let Err(problem) = super::steps::check_file_glob(pattern) {
                // A single string has no item: its field's line is found.
                file.error_at_value(&at.key(field).index(i), problem, None);
            }
        }
    }
    let empty = match &step.command {
        StepCommand::Argv(argv) => argv.is_empty(),
        StepCommand::Shell(script) => script.trim().is_empty(),
    };
    if empty {
        file.error_at_value(&at.key("command"), format!("step `{}` has an empty command", step.name), None);
    }
    if Path::new(&step.workdir).is_absolute() || step.workdir.split('/').any(|part| part == "..") {
        file.error_at_value(
            &at.key("workdir"),
            format!("workdir `{}` leaves the builder's directory", step.workdir),
            Some("use a relative path without `..`".into()),
        );
    }
    if step.timeout == 0 {
        file.error_at_value(&at.key("timeout"), "timeout must be at least 1 second", None);
    }
}
