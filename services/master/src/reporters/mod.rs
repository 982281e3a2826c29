//! Telling people of builds: commit statuses and pull-request comments on
//! GitHub, messages in Discord, mail, IRC (`irc`, held by one master); a
//! worker's owner of the worker going missing; and the pull-request loop's
//! actions (taking a trigger label off, answering `!buildbot`). What to
//! tell was entered in the `notifications` outbox in the transaction of the
//! event that caused it (`events`, `watch_workers`, `changes::record`); here every master
//! runs a few deliverers that take due rows one at a time under a lease,
//! decide with the reporter's current configuration whether anything is
//! told, send it, and record what became of it. A delivery that fails is
//! retried with backoff and jitter, or after the time the target asked
//! for, until the reporter's horizon; then it is marked failed, with the
//! target's last answer, on the build's page.

mod discord;
mod github;
pub mod irc;
mod mail;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value;
use shared::config::reporters::{BuildReport, ReporterConfig};
use shared::ids::{BuildId, BuilderId};
use shared::model::Results;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::changes::PullRequestAction;
use crate::node::Master;
use crate::store::{Notification, ReportFacts, StoreError, Takes, WORKER_ADMINS};
use crate::{MasterError, urls};

/// Deliverers per master: a slow target holds one, not all.
const DELIVERERS: usize = 4;
/// How long a taken notification is this master's; a master that dies
/// mid-delivery leaves it to another after this. Longer than any delivery
/// may take (`TARGET_TIMEOUT`, the SMTP conversation's), so a slow one is
/// not taken twice.
const LEASE: Duration = Duration::from_secs(30);
/// How often an idle deliverer looks for work other masters entered.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long a mail to a worker's admins is retried.
const WORKER_MAILS_FOR_MINUTES: u32 = 24 * 60;
/// How long the pull-request loop's actions are retried: an answer hours
/// late is still better than none.
const PULL_REQUEST_ACTIONS_FOR_MINUTES: u32 = 24 * 60;
/// Failed tests a report names at most (templates show fewer).
const FAILED_TESTS_TOLD: i64 = 1000;
/// Every HTTP call to a target ends within this; a hanging target is
/// retried like a failing one.
const TARGET_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a delivery did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth trying again: the target is down, slow, or limits the rate.
    /// `after` is what the target asked for, if it did.
    #[error("{problem}")]
    Retry { problem: String, after: Option<Duration> },
    /// Trying again cannot help (bad credentials, no such repository): the
    /// configuration needs a change.
    #[error("{problem}")]
    Refused { problem: String },
}

/// What a target did with a report.
pub enum Delivery {
    /// Sent; what, in the target's words.
    Told(String),
    /// Nothing this target can say of this build, and why.
    NothingToTell(String),
}

/// The client every target's calls go through.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(TARGET_TIMEOUT).build().expect("an HTTP client builds")
}

/// Targets that asked this master to wait (a rate limit), until when. A
/// rate limit holds for every call to the target, not only the one that
/// met it.
#[derive(Default)]
struct Pauses(Mutex<HashMap<String, Instant>>);

impl Pauses {
    /// How long `target` still asked to be left alone.
    fn remaining(&self, target: &str) -> Option<Duration> {
        let until = *self.0.lock().expect("pauses lock poisoned").get(target)?;
        until.checked_duration_since(Instant::now()).filter(|left| !left.is_zero())
    }

    fn pause(&self, target: &str, wait: Duration) {
        let until = Instant::now() + wait;
        let mut pauses = self.0.lock().expect("pauses lock poisoned");
        let entry = pauses.entry(target.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }
}

/// Everything a deliverer works with.
struct Deliverer {
    master: Arc<Master>,
    http: reqwest::Client,
    pauses: Arc<Pauses>,
}

/// Looks, on every master, for workers gone longer than their
/// `missing_timeout_seconds` (and for such workers back), entering a mail
/// to their admins; the store makes each happen once.
pub async fn watch_workers(master: Arc<Master>, shutdown: CancellationToken) -> Result<(), MasterError> {
    loop {
        let watched: Vec<(String, f64)> = master
            .catalog()
            .config
            .settings
            .workers
            .iter()
            .filter(|worker| !worker.notify_on_missing.is_empty())
            .map(|worker| (worker.name.to_string(), worker.missing_timeout_seconds as f64))
            .collect();
        // Often enough that a mail is late by at most half the shortest time.
        let shortest = watched.iter().map(|(_, seconds)| *seconds).fold(f64::INFINITY, f64::min);
        let every = Duration::from_secs_f64((shortest / 2.0).clamp(1.0, 15.0));
        if !watched.is_empty() {
            match master.store.note_missing_workers(&watched).await {
                Ok(0) => {}
                Ok(entered) => {
                    tracing::info!(entered, reporter = WORKER_ADMINS, "workers missing or back: mails entered");
                    master.reports.notify_waiters();
                }
                Err(error) => tracing::warn!(%error, "cannot look for missing workers now"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Runs this master's deliverers until shutdown.
pub async fn deliver(master: Arc<Master>, shutdown: CancellationToken) -> Result<(), MasterError> {
    let http = http_client();
    let pauses = Arc::new(Pauses::default());
    let mut deliverers = tokio::task::JoinSet::new();
    for _ in 0..DELIVERERS {
        let deliverer = Deliverer { master: master.clone(), http: http.clone(), pauses: pauses.clone() };
        deliverers.spawn(deliverer.run(shutdown.clone()));
    }
    while deliverers.join_next().await.is_some() {}
    Ok(())
}

impl Deliverer {
    async fn run(self, shutdown: CancellationToken) {
        let master = &self.master;
        loop {
            // Listening before looking: what is entered while we look rings us.
            let rung = master.reports.notified();
            tokio::pin!(rung);
            rung.as_mut().enable();
            let irc = irc::reporters(master);
            match master.store.take_notification(LEASE, Takes::AllBut(&irc)).await {
                Ok(Some(notification)) => {
                    self.deliver_one(notification).await;
                    continue;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot look for notifications to deliver now"),
            }
            // Without reporters only rows of removed ones can be due (to be
            // skipped): no need to look as often.
            let idle = if master.catalog().config.master.reporters.is_empty() { LOOK_EVERY * 10 } else { LOOK_EVERY };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut rung => {}
                _ = tokio::time::sleep(idle) => {}
            }
        }
    }

    async fn deliver_one(&self, notification: Notification) {
        let span = tracing::info_span!(
            "notify",
            reporter = %notification.reporter,
            build.id = notification.build_id.map(|id| id.0),
            worker.id = notification.worker_id.map(|id| id.0),
            event = %notification.event,
            attempt = notification.attempts,
        );
        async {
            let outcome = self.attempt(&notification).await;
            record(&self.master, &notification, outcome).await;
        }
        .instrument(span)
        .await
    }

    /// The pull-request loop's action on GitHub.
    async fn act_on_pull_request(&self, notification: &Notification, payload: &Value) -> Outcome {
        let action: PullRequestAction = match serde_json::from_value(payload.clone()) {
            Ok(action) => action,
            Err(error) => return Outcome::Failed(format!("an action this master does not know: {error}")),
        };
        let catalog = self.master.catalog();
        let Some(github) = &catalog.config.settings.github else {
            return Outcome::Failed("settings.yaml no longer has a `github:` section".into());
        };
        if let Some(left) = self.pauses.remaining("github") {
            return retry(PULL_REQUEST_ACTIONS_FOR_MINUTES, notification, Some(left), "GitHub asked to wait".into());
        }
        let first_attempt = notification.attempts <= 1;
        let sent = github::act(&self.master, &self.http, github, &action, notification.id, first_attempt).await;
        self.outcome(sent, "github", PULL_REQUEST_ACTIONS_FOR_MINUTES, notification)
    }

    /// What a target's answer means for the notification; a rate limit
    /// holds every call to `target`.
    fn outcome(
        &self,
        sent: Result<Delivery, SendError>,
        target: &str,
        give_up_after_minutes: u32,
        notification: &Notification,
    ) -> Outcome {
        match sent {
            Ok(Delivery::Told(detail)) => Outcome::Sent(detail),
            Ok(Delivery::NothingToTell(why)) => Outcome::Skipped(why),
            Err(SendError::Refused { problem }) => Outcome::Failed(problem),
            Err(SendError::Retry { problem, after }) => {
                if let Some(wait) = after {
                    self.pauses.pause(target, wait);
                }
                retry(give_up_after_minutes, notification, after, problem)
            }
        }
    }

    /// The mail to a worker's admins that it is missing, or back.
    async fn tell_worker_admins(&self, notification: &Notification) -> Outcome {
        let catalog = self.master.catalog();
        let config = &catalog.config;
        let Some(worker_id) = notification.worker_id else {
            return Outcome::Skipped("it names no build and no worker".into());
        };
        let (name, last_seen) = match self.master.store.worker_seen(worker_id).await {
            Ok(Some(seen)) => seen,
            Ok(None) => return Outcome::Skipped("the worker no longer exists".into()),
            Err(error) => return retry(WORKER_MAILS_FOR_MINUTES, notification, None, error.to_string()),
        };
        let Some(worker) = config.worker(&name) else {
            return Outcome::Skipped(format!("worker `{name}` is no longer configured"));
        };
        if worker.notify_on_missing.is_empty() {
            return Outcome::Skipped(format!("nobody is to be mailed of worker `{name}`"));
        }
        let Some(server) = &config.settings.mail else {
            return Outcome::Failed("settings.yaml has no `mail` server".into());
        };
        let web_url = config.settings.web.url.as_deref().unwrap_or_default().trim_end_matches('/');
        let last = last_seen.map_or("never".to_owned(), |at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string());
        let (subject, body) = if notification.event == "worker_missing" {
            (
                format!("buildmaster: worker {name} is missing"),
                format!(
                    "Worker {name} was last heard from at {last},\n\
                     more than {} seconds ago.\n\n\
                     Builds that only it runs wait for it.\n\
                     You will get another mail when it is back.\n\n\
                     {web_url}/workers\n",
                    worker.missing_timeout_seconds
                ),
            )
        } else {
            (
                format!("buildmaster: worker {name} is back"),
                format!("Worker {name} is connected again (heard from at {last}).\n\n{web_url}/workers\n"),
            )
        };
        let mail = mail::Mail { to: &worker.notify_on_missing, subject, body };
        let sent = mail::send(server, mail, notification.id).await;
        self.outcome(sent, "mail", WORKER_MAILS_FOR_MINUTES, notification)
    }

    async fn attempt(&self, notification: &Notification) -> Outcome {
        let (master, http) = (&self.master, &self.http);
        if let Some(payload) = &notification.payload {
            return self.act_on_pull_request(notification, payload).await;
        }
        if notification.build_id.is_none() {
            return self.tell_worker_admins(notification).await;
        }
        let Judged { build_id, reporter, report, facts } = match judge(master, notification).await {
            Ok(judged) => judged,
            Err(outcome) => return outcome,
        };
        let catalog = master.catalog();
        let config = &catalog.config;
        // GitHub limits a token's calls, Discord a webhook's.
        let target = match (&reporter.discord, &reporter.mail) {
            (Some(discord), _) => format!("discord {}", discord.webhook_secret),
            (_, Some(_)) => "mail".to_owned(),
            _ => "github".to_owned(),
        };
        if let Some(left) = self.pauses.remaining(&target) {
            let problem = format!("{target} asked to wait (a rate limit)");
            return retry(reporter.give_up_after_minutes, notification, Some(left), problem);
        }
        let sent = if let Some(status) = &reporter.github_status {
            let Some(github) = &config.settings.github else {
                return Outcome::Failed("settings.yaml has no `github:` section".into());
            };
            github::set_status(http, github, &master.github, status, &report, &facts.properties).await
        } else if let Some(comment) = &reporter.github_comment {
            let Some(github) = &config.settings.github else {
                return Outcome::Failed("settings.yaml has no `github:` section".into());
            };
            let mut report = report;
            if report.pull_request.is_none() && comment.merged_pull_requests && report.results == "failure" {
                match merged_from(master, build_id).await {
                    Ok(number) => report.pull_request = number,
                    Err(error) => {
                        let problem = format!("cannot read the build's changes: {error}");
                        return retry(reporter.give_up_after_minutes, notification, None, problem);
                    }
                }
            }
            if report.pull_request.is_some() && report.failed_step.is_some() {
                // Also when no lines are wanted: the step's failed tests are
                // recorded with its log.
                match log_excerpt(master, build_id, notification.attempts, comment.log_lines).await {
                    Ok(excerpt) => report.log_excerpt = excerpt,
                    Err(problem) => return retry(reporter.give_up_after_minutes, notification, None, problem),
                }
                match failed_tests(master, build_id, facts.builder_id).await {
                    Ok((failed, flaky)) => (report.failed_tests, report.known_flaky) = (failed, flaky),
                    Err(error) => {
                        let problem = format!("cannot read the failed tests: {error}");
                        return retry(reporter.give_up_after_minutes, notification, None, problem);
                    }
                }
            }
            let of = github::CommentOf {
                reporter: &reporter.name,
                notification_id: notification.id,
                first_attempt: notification.attempts <= 1,
            };
            github::comment(master, http, github, comment, &report, of).await
        } else if let Some(discord) = &reporter.discord {
            let Some(webhook) = config.settings.secrets.get(&discord.webhook_secret) else {
                return Outcome::Failed(format!("secret `{}` is not defined", discord.webhook_secret));
            };
            discord::post(http, webhook.expose(), discord, &report).await
        } else if let Some(mail) = &reporter.mail {
            let Some(server) = &config.settings.mail else {
                return Outcome::Failed("settings.yaml has no `mail` server".into());
            };
            match mail::Mail::of_build(mail, &report) {
                Ok(message) => mail::send(server, message, notification.id).await,
                Err(error) => Err(error),
            }
        } else {
            Ok(Delivery::NothingToTell("the reporter has no target".into()))
        };
        self.outcome(sent, &target, reporter.give_up_after_minutes, notification)
    }
}

/// A build's notification that its reporter, as configured now, tells.
struct Judged {
    build_id: BuildId,
    reporter: ReporterConfig,
    report: BuildReport,
    facts: ReportFacts,
}

/// Whether `notification` is told at all, by the reporter's current
/// configuration and filters, and what of; or what to record instead.
async fn judge(master: &Master, notification: &Notification) -> Result<Judged, Outcome> {
    let build_id = notification.build_id.ok_or_else(|| Outcome::Skipped("it names no build".into()))?;
    if notification.superseded {
        return Err(Outcome::Skipped("the build ended before its start was told".into()));
    }
    let catalog = master.catalog();
    let config = &catalog.config;
    let Some(reporter) = config.master.reporters.iter().find(|reporter| reporter.name == notification.reporter) else {
        return Err(Outcome::Skipped(format!("reporter `{}` is no longer configured", notification.reporter)));
    };
    let facts = match master.store.report_facts(build_id).await {
        Ok(Some(facts)) => facts,
        Ok(None) => return Err(Outcome::Skipped("the build no longer exists".into())),
        Err(error) => {
            let problem = format!("cannot read the build: {error}");
            return Err(retry(reporter.give_up_after_minutes, notification, None, problem));
        }
    };
    let Some(builder) = catalog.builder_name(facts.builder_id) else {
        return Err(Outcome::Skipped("its builder is no longer configured".into()));
    };
    let web_url = config.settings.web.url.as_deref().unwrap_or_default();
    let report = build_report(&notification.event, builder.as_str(), web_url, &facts);
    if let Some(why) = reporter.skips_branch(&report.branch, report.pull_request.is_some()) {
        return Err(Outcome::Skipped(why));
    }
    if notification.event == "finished" {
        let results = facts.results.and_then(Results::from_code).unwrap_or(Results::Exception);
        let previous = facts.previous_results.and_then(Results::from_code);
        if !reporter.tells_result(results, previous) {
            return Err(Outcome::Skipped(format!("its modes do not tell of a build that ended {}", results.name())));
        }
    }
    Ok(Judged { build_id, reporter: reporter.clone(), report, facts })
}

/// The last `lines` lines the build's first failed step printed (not the
/// lines buildmaster adds, such as its exit code), with Markdown's code
/// fences in them defused; once the step's end (its log, its test results)
/// is recorded.
/// The pull request a branch build's one change was merged from, as
/// buildbot.python.org finds it: `(GH-123)` or `(#123)` in the change's
/// message. None when the build covers more changes than one, or none.
async fn merged_from(master: &Master, build_id: BuildId) -> Result<Option<i64>, StoreError> {
    let [change] = master.store.blamelist(build_id).await?[..] else { return Ok(None) };
    Ok(master.store.change_comments(change).await?.as_deref().and_then(merged_pull_request))
}

/// The number in a squash merge's `(GH-123)` or `(#123)`.
fn merged_pull_request(message: &str) -> Option<i64> {
    static NAMED: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?i)\((?:GH-|#)(\d+)\)").expect("the pattern is valid"));
    NAMED.captures(message)?.get(1)?.as_str().parse().ok()
}

async fn log_excerpt(master: &Master, build_id: BuildId, attempts: i32, lines: u32) -> Result<String, String> {
    // Room for buildmaster's own lines at the end.
    const OWN_LINES: i64 = 8;
    // A build's end may be recorded just before its last step's log is
    // archived: wait for it a few times, not for ever (a build that broke
    // may leave a log that is never complete).
    const WAIT_FOR_LOG_ATTEMPTS: i32 = 4;
    let failed_log = master.store.failed_step_log(build_id).await.map_err(|error| error.to_string())?;
    let Some((log_id, num_lines, complete)) = failed_log else { return Ok(String::new()) };
    if !complete {
        if attempts < WAIT_FOR_LOG_ATTEMPTS {
            return Err("the failed step's log is still being archived".into());
        }
        return Ok(String::new());
    }
    if lines == 0 {
        return Ok(String::new());
    }
    let wanted = i64::from(lines) + OWN_LINES;
    let offset = (num_lines - wanted).max(0);
    let found = crate::logs::lines(&master.store, master.redis.clone(), log_id, true, String::new(), offset, wanted)
        .await
        .map_err(|error| format!("cannot read the failed step's log: {error}"))?;
    let printed: Vec<String> = found
        .iter()
        .filter(|line| line.channel != shared::wire::LogChannel::Header)
        .map(|line| String::from_utf8_lossy(&line.text).trim_end_matches(['\n', '\r']).replace("```", "`\u{200b}``"))
        .collect();
    Ok(printed[printed.len().saturating_sub(lines as usize)..].join("\n"))
}

/// The build's failed tests, and those of them known to be flaky on its
/// builder.
async fn failed_tests(
    master: &Master,
    build_id: BuildId,
    builder_id: BuilderId,
) -> Result<(Vec<String>, Vec<String>), StoreError> {
    /// How far back a test's flakiness is remembered.
    const FLAKY_DAYS: u32 = 30;
    let failed = master.store.failed_tests(build_id, FAILED_TESTS_TOLD).await?;
    if failed.is_empty() {
        return Ok((failed, Vec::new()));
    }
    let flaky = master.store.flaky_tests(FLAKY_DAYS, 10_000, Some(builder_id)).await?;
    let known: Vec<String> =
        failed.iter().filter(|name| flaky.iter().any(|test| &test.test_name == *name)).cloned().collect();
    Ok((failed, known))
}

/// What became of one delivery, to record.
enum Outcome {
    Sent(String),
    Skipped(String),
    Failed(String),
    Retry(Duration, String),
}

async fn record(master: &Master, notification: &Notification, outcome: Outcome) {
    let (id, reporter) = (notification.id, notification.reporter.as_str());
    let recorded = match &outcome {
        Outcome::Sent(detail) => {
            tracing::info!(%detail, "notification sent");
            master.metrics.notification(reporter, "sent");
            master.store.notification_sent(id, detail).await
        }
        Outcome::Skipped(why) => {
            tracing::debug!(%why, "nothing to tell");
            master.metrics.notification(reporter, "skipped");
            master.store.notification_skipped(id, why).await
        }
        Outcome::Failed(error) => {
            tracing::warn!(%error, "notification given up");
            master.metrics.notification(reporter, "failed");
            master.store.notification_failed(id, error).await
        }
        Outcome::Retry(after, error) => {
            tracing::info!(%error, retry_in = ?after, "notification not delivered; it will be retried");
            master.metrics.notification(reporter, "retried");
            master.store.notification_retry(id, *after, error).await
        }
    };
    if let Err(error) = recorded {
        // The lease ends and another master takes it again: told twice at
        // worst, where the target makes that harmless.
        tracing::warn!(%error, "cannot record what became of a notification");
    }
}

/// Retry after what the target asked for, or with exponential backoff and
/// jitter; fail once `give_up_after_minutes` have passed.
fn retry(give_up_after_minutes: u32, notification: &Notification, asked: Option<Duration>, problem: String) -> Outcome {
    let horizon = chrono::Duration::minutes(i64::from(give_up_after_minutes));
    if chrono::Utc::now() - notification.created_at > horizon {
        return Outcome::Failed(format!(
            "given up after {} attempts over {give_up_after_minutes} minutes; the last: {problem}",
            notification.attempts
        ));
    }
    Outcome::Retry(asked.unwrap_or_else(|| backoff(notification.attempts)), problem)
}

/// 2 s, 4 s, 8 s ... up to 5 minutes, each within ±25 %, so that masters
/// retrying a target that came back do not all call at once.
fn backoff(attempts: i32) -> Duration {
    let doublings = (attempts.clamp(1, 9) - 1) as u32;
    let base = Duration::from_secs(2 << doublings).min(Duration::from_secs(300));
    let mut random = [0u8; 2];
    let _ = getrandom::fill(&mut random);
    let factor = 0.75 + f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX) * 0.5;
    base.mul_f64(factor)
}

/// A property's value from a build's `{name: [value, source]}`, as text.
fn property(properties: &Value, name: &str) -> Option<String> {
    match &properties[name][0] {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn build_report(event: &str, builder: &str, web_url: &str, facts: &ReportFacts) -> BuildReport {
    let properties = &facts.properties;
    let results = match (event, facts.results.and_then(Results::from_code)) {
        ("finished", Some(results)) => results.name().to_owned(),
        _ => "running".to_owned(),
    };
    BuildReport {
        event: event.to_owned(),
        builder: builder.to_owned(),
        number: facts.number,
        results,
        state_string: facts.state_string.clone(),
        url: format!("{}{}", web_url.trim_end_matches('/'), urls::build_page(builder, i64::from(facts.number))),
        branch: property(properties, "branch").unwrap_or_default(),
        revision: property(properties, "revision").unwrap_or_default(),
        repository: property(properties, "repository").unwrap_or_default(),
        owner: facts.owner.clone().or_else(|| property(properties, "owner")).unwrap_or_default(),
        pull_request: property(properties, "pull_request").and_then(|number| number.parse().ok()),
        failed_step: facts.failed_step.clone(),
        previous_results: facts.previous_results.and_then(Results::from_code).map(|results| results.name().to_owned()),
        log_excerpt: String::new(),
        failed_tests: Vec::new(),
        known_flaky: Vec::new(),
    }
}

/// `after` seconds from a `Retry-After` header (GitHub, Discord).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: f64 = headers.get("retry-after")?.to_str().ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// A target's answer that was not a success, as a `SendError`: rate
/// limits and server errors are retried, the rest is refused.
async fn refusal(target: &str, response: reqwest::Response) -> SendError {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    let problem = format!("{target} answered {status}: {body}");
    let limited = status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || (status == reqwest::StatusCode::FORBIDDEN
            && (headers.contains_key("retry-after")
                || headers.get("x-ratelimit-remaining").is_some_and(|remaining| remaining == "0")));
    if limited {
        return SendError::Retry {
            problem,
            after: retry_after(&headers).or_else(|| github::rate_limit_reset(&headers)),
        };
    }
    if status.is_server_error() || status == reqwest::StatusCode::REQUEST_TIMEOUT {
        return SendError::Retry { problem, after: None };
    }
    SendError::Refused { problem }
}

/// A call that got no answer (refused connection, timeout): retried.
fn unreachable(target: &str, error: reqwest::Error) -> SendError {
    let what = if error.is_timeout() { "did not answer in time" } else { "could not be reached" };
    SendError::Retry { problem: format!("{target} {what}: {}", error.without_url()), after: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_jitter_up_to_five_minutes() {
        for (attempts, seconds) in [(1, 2.0), (2, 4.0), (3, 8.0), (9, 300.0), (40, 300.0)] {
            let waited = backoff(attempts).as_secs_f64();
            assert!(waited >= seconds * 0.75 && waited <= seconds * 1.25, "attempt {attempts}: {waited}");
        }
    }

    #[test]
    fn a_squash_merge_names_its_pull_request_as_gh_or_hash() {
        let cases = [
            ("gh-140000: Fix the eval loop (GH-140123)", Some(140123)),
            ("Fix a typo (#4242)\n\nLong text", Some(4242)),
            ("[3.14] gh-1: Backport (gh-77) (#78)", Some(77)),
            ("gh-140000: Fix the eval loop", None),
            ("See #4242 for why", None),
        ];
        for (message, number) in cases {
            assert_eq!(merged_pull_request(message), number, "{message}");
        }
    }
}
