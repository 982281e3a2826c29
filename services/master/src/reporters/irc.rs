//! The installation's one IRC connection. A network allows a nickname
//! once, and two masters fighting over it would each knock the other off;
//! so one master at a time holds the `irc` role in Postgres and the
//! connection with it. It announces what the IRC reporters' notifications
//! tell, answers the few commands people use, and lets go of the
//! connection before its hold can run out: by the time another master
//! takes the role, the old connection is closed (or its master is dead).
//!
//! The client is small on purpose: registration (with SASL PLAIN or
//! NickServ), PING, JOIN, PRIVMSG and QUIT are all buildmaster says.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use shared::config::{IrcIdentify, IrcSettings};
use shared::model::Results;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::{Judged, Outcome, judge, record, retry};
use crate::node::Master;
use crate::store::{Notification, Takes};
use crate::{MasterError, urls};

/// The role's name in `master_roles`.
pub const ROLE: &str = "irc";
/// How long a hold lasts unless renewed: how long the connection may stay
/// without an owner after its master died.
const HOLD: Duration = Duration::from_secs(6);
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// A holder that could not renew for this long closes the connection,
/// well before its hold runs out and another master may connect.
const LET_GO_AFTER: Duration = Duration::from_secs(3);
/// Connecting, TLS and registration must be done within this.
const REGISTER_WITHIN: Duration = Duration::from_secs(30);
/// With nothing heard for this long, ask the server (PING); with nothing
/// for twice as long, the connection is dead.
const QUIET: Duration = Duration::from_secs(90);
/// Lines sent at once, then one per `LINE_EVERY`: networks disconnect
/// clients that flood.
const BURST: f64 = 4.0;
const LINE_EVERY: Duration = Duration::from_millis(1500);
/// Room for a line's text: 512 bytes less the command, the channel and
/// the prefix the server puts before it when relaying.
const TEXT_BYTES: usize = 400;
/// How many running builds `status` names.
const STATUS_NAMES: i64 = 6;
/// A notification taken by the holder is its own for this long.
const LEASE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum IrcError {
    #[error("cannot reach {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection: {0}")]
    Closed(String),
    #[error("registration did not finish within {0:?}")]
    RegistrationTimeout(Duration),
    #[error("nickname `{0}` is in use; trying again later")]
    NicknameInUse(String),
    #[error("the server refused nickname `{0}`: {1}")]
    NicknameRefused(String, String),
    #[error("SASL identification failed: {0}")]
    Sasl(String),
    #[error("nothing heard from the server for {0:?}")]
    Silent(Duration),
}

/// Whether this installation wants an IRC connection: a network in
/// settings.yaml and at least one IRC reporter.
fn wanted(master: &Master) -> Option<IrcSettings> {
    let config = &master.catalog().config;
    let reporters = config.master.reporters.iter().any(|reporter| reporter.irc.is_some());
    config.settings.irc.clone().filter(|_| reporters)
}

/// The channels the IRC reporters announce in, and their names.
fn channels_and_reporters(master: &Master) -> (BTreeSet<String>, Vec<String>) {
    let config = &master.catalog().config;
    let mut channels = BTreeSet::new();
    let mut reporters = Vec::new();
    for reporter in &config.master.reporters {
        if let Some(irc) = &reporter.irc {
            channels.extend(irc.channels.iter().map(|channel| channel.to_ascii_lowercase()));
            reporters.push(reporter.name.clone());
        }
    }
    (channels, reporters)
}

/// The names of the IRC reporters, whose notifications only the holder
/// delivers.
pub fn reporters(master: &Master) -> Vec<String> {
    channels_and_reporters(master).1
}

/// Competes for the role on every master; while this one holds it, keeps
/// the connection.
pub async fn hold(master: Arc<Master>, shutdown: CancellationToken) -> Result<(), MasterError> {
    let mut backoff = shared::amqp::Backoff::new();
    loop {
        let mut wait = RENEW_EVERY;
        if let Some(settings) = wanted(&master) {
            match master.store.hold_role(ROLE, master.id, HOLD).await {
                Ok(true) => {
                    let started = Instant::now();
                    let ended = Session::run(&master, settings, &shutdown).await;
                    match ended {
                        Ok(Ended::Shutdown) => {
                            let _ = master.store.release_role(ROLE, master.id).await;
                            return Ok(());
                        }
                        Ok(Ended::LostRole) => tracing::warn!("the IRC role could not be renewed; connection closed"),
                        Ok(Ended::NotWanted) => tracing::info!("IRC no longer configured; connection closed"),
                        Ok(Ended::Reconfigured) => tracing::info!("IRC settings changed; connecting again"),
                        Err(error) => {
                            if started.elapsed() > Duration::from_secs(60) {
                                backoff.reset();
                            }
                            wait = backoff.next_wait().max(RENEW_EVERY);
                            tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "IRC connection ended");
                        }
                    }
                    // Another master may do better meanwhile (its network,
                    // its turn): the role is free while this one waits.
                    if let Err(error) = master.store.release_role(ROLE, master.id).await {
                        tracing::warn!(%error, "cannot release the IRC role; it runs out by itself");
                    }
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "cannot compete for the IRC role now"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Why a session ended without an error.
enum Ended {
    Shutdown,
    LostRole,
    NotWanted,
    Reconfigured,
}

/// One line from the server: `[@tags] [:prefix] COMMAND params [:trailing]`.
#[derive(Debug, PartialEq)]
struct Message {
    /// The sender's nickname (the prefix up to `!`), if any.
    from: Option<String>,
    command: String,
    params: Vec<String>,
}

impl Message {
    fn parse(line: &str) -> Option<Message> {
        let mut rest = line.trim_end_matches(['\r', '\n']);
        if rest.starts_with('@') {
            rest = rest.split_once(' ')?.1.trim_start();
        }
        let mut from = None;
        if let Some(prefixed) = rest.strip_prefix(':') {
            let (prefix, after) = prefixed.split_once(' ')?;
            from = Some(prefix.split(['!', '@']).next().unwrap_or(prefix).to_owned());
            rest = after.trim_start();
        }
        let (head, trailing) = match rest.split_once(" :") {
            Some((head, trailing)) => (head, Some(trailing)),
            None => (rest, None),
        };
        let mut words = head.split_ascii_whitespace();
        let command = words.next()?.to_ascii_uppercase();
        let mut params: Vec<String> = words.map(str::to_owned).collect();
        params.extend(trailing.map(str::to_owned));
        Some(Message { from, command, params })
    }

    fn param(&self, index: usize) -> &str {
        self.params.get(index).map_or("", String::as_str)
    }

    fn last(&self) -> &str {
        self.params.last().map_or("", String::as_str)
    }
}

/// Lines to send, paced so the network does not take buildmaster for a
/// flood.
struct Pace {
    tokens: f64,
    at: Instant,
}

impl Pace {
    fn new() -> Pace {
        Pace { tokens: BURST, at: Instant::now() }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() / LINE_EVERY.as_secs_f64();
        self.tokens = (self.tokens + earned).min(BURST);
        self.at = now;
    }

    /// How long until a line may go; zero when one may now.
    fn wait(&mut self) -> Duration {
        self.refill();
        if self.tokens >= 1.0 { Duration::ZERO } else { LINE_EVERY.mul_f64(1.0 - self.tokens) }
    }

    fn spend(&mut self) {
        self.refill();
        self.tokens -= 1.0;
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// One connection, from the first byte to QUIT.
struct Session<'a> {
    master: &'a Master,
    settings: IrcSettings,
    writer: tokio::io::WriteHalf<Box<dyn Stream>>,
    /// Lines waiting for their turn (announcements, answers).
    paced: VecDeque<String>,
    pace: Pace,
    /// The notification whose lines are in `paced`; recorded as sent once
    /// the last is written.
    announcing: Option<Notification>,
    registered: bool,
    /// Channels joined (lowercase).
    joined: BTreeSet<String>,
}

impl<'a> Session<'a> {
    async fn run(master: &'a Master, settings: IrcSettings, shutdown: &CancellationToken) -> Result<Ended, IrcError> {
        let address = format!("{}:{}", settings.host, settings.port());
        let stream = tokio::time::timeout(REGISTER_WITHIN, connect(&settings, &address))
            .await
            .map_err(|_| IrcError::RegistrationTimeout(REGISTER_WITHIN))??;
        let (reader, writer) = tokio::io::split(stream);
        let mut lines = BufReader::new(reader).lines();
        let mut session = Session {
            master,
            settings,
            writer,
            paced: VecDeque::new(),
            pace: Pace::new(),
            announcing: None,
            registered: false,
            joined: BTreeSet::new(),
        };
        tracing::info!(server = %address, nickname = %session.settings.nickname, "IRC connected; registering");
        let ended = session.converse(&mut lines, shutdown).await;
        if let Some(notification) = session.announcing.take() {
            // Its lines may not all have gone out: told again later.
            let outcome =
                retry(24 * 60, &notification, Some(Duration::from_secs(1)), "the IRC connection ended".into());
            record(master, &notification, outcome).await;
        }
        let reason = match &ended {
            Ok(Ended::Shutdown) => "master shutting down",
            Ok(Ended::LostRole) => "another master takes over",
            Ok(Ended::Reconfigured) => "reconfigured",
            _ => "bye",
        };
        // Best effort, briefly: the connection closes when this returns.
        let _ = tokio::time::timeout(Duration::from_secs(2), session.send_now(&format!("QUIT :{reason}"))).await;
        ended
    }

    async fn converse(
        &mut self,
        lines: &mut tokio::io::Lines<BufReader<tokio::io::ReadHalf<Box<dyn Stream>>>>,
        shutdown: &CancellationToken,
    ) -> Result<Ended, IrcError> {
        let nickname = self.settings.nickname.clone();
        if self.settings.identify == IrcIdentify::Sasl {
            self.send_now("CAP REQ :sasl").await?;
        }
        self.send_now(&format!("NICK {nickname}")).await?;
        self.send_now(&format!("USER {nickname} 0 * :buildmaster")).await?;
        let connected = Instant::now();
        let mut renewed = Instant::now();
        let mut heard = Instant::now();
        let mut pinged = false;
        let mut renew = tokio::time::interval(RENEW_EVERY);
        // Whether a notification may be due now: one was just taken, a
        // ring came (from this master), or a second passed (other masters'
        // are found by looking).
        let mut look_now = true;
        loop {
            if !self.registered && connected.elapsed() > REGISTER_WITHIN {
                return Err(IrcError::RegistrationTimeout(REGISTER_WITHIN));
            }
            let rung = self.master.reports.notified();
            tokio::pin!(rung);
            rung.as_mut().enable();
            // The next announcement is taken only once the last is out.
            let free = |session: &Self| session.registered && session.paced.is_empty() && session.announcing.is_none();
            if free(self) && look_now {
                look_now = self.take().await;
            }
            let can_take = free(self);
            let can_send = self.registered && !self.paced.is_empty();
            let turn = self.pace.wait();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                line = lines.next_line() => {
                    let line = line?.ok_or_else(|| IrcError::Closed("end of stream".into()))?;
                    heard = Instant::now();
                    pinged = false;
                    if let Some(message) = Message::parse(&line) {
                        self.on_message(message).await?;
                    }
                }
                _ = renew.tick() => {
                    look_now = true;
                    let held = tokio::time::timeout(RENEW_EVERY, self.master.store.hold_role(ROLE, self.master.id, HOLD));
                    match held.await {
                        Ok(Ok(true)) => renewed = Instant::now(),
                        Ok(Ok(false)) => return Ok(Ended::LostRole),
                        Ok(Err(error)) => tracing::warn!(%error, "cannot renew the IRC role"),
                        Err(_) => tracing::warn!("cannot renew the IRC role: Postgres did not answer in time"),
                    }
                    if renewed.elapsed() > LET_GO_AFTER {
                        return Ok(Ended::LostRole);
                    }
                    match wanted(self.master) {
                        None => return Ok(Ended::NotWanted),
                        Some(settings) if !same_network(&settings, &self.settings) => return Ok(Ended::Reconfigured),
                        Some(_) => {}
                    }
                    if self.registered {
                        self.join_channels().await?;
                    }
                    if heard.elapsed() > QUIET * 2 {
                        return Err(IrcError::Silent(heard.elapsed()));
                    }
                    if heard.elapsed() > QUIET && !pinged {
                        self.send_now("PING :buildmaster").await?;
                        pinged = true;
                    }
                }
                _ = tokio::time::sleep(turn), if can_send => {
                    let line = self.paced.pop_front().expect("a line waits");
                    self.pace.spend();
                    self.send_now(&line).await?;
                    if self.paced.is_empty()
                        && let Some(notification) = self.announcing.take()
                    {
                        let told = Outcome::Sent(format!("said in {}", self.said_where(&notification)));
                        record(self.master, &notification, told).await;
                        look_now = true;
                    }
                }
                _ = &mut rung => look_now = true,
                // Took one: look again at once, after what else is ready.
                _ = std::future::ready(()), if can_take && look_now => {}
            }
        }
    }

    /// Where a notification's reporter announces, for the record.
    fn said_where(&self, notification: &Notification) -> String {
        let config = &self.master.catalog().config;
        let channels = config
            .master
            .reporters
            .iter()
            .find(|reporter| reporter.name == notification.reporter)
            .and_then(|reporter| reporter.irc.as_ref())
            .map(|irc| irc.channels.join(" "));
        channels.unwrap_or_default()
    }

    /// Takes one due notification of the IRC reporters and queues its
    /// lines, or records why nothing is said. False when none was due.
    async fn take(&mut self) -> bool {
        let reporters = reporters(self.master);
        let taken = match self.master.store.take_notification(LEASE, Takes::Only(&reporters)).await {
            Ok(Some(taken)) => taken,
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(%error, "cannot look for IRC notifications now");
                return false;
            }
        };
        let Judged { reporter, report, .. } = match judge(self.master, &taken).await {
            Ok(judged) => judged,
            Err(outcome) => {
                record(self.master, &taken, outcome).await;
                return true;
            }
        };
        let Some(irc) = &reporter.irc else {
            record(self.master, &taken, Outcome::Skipped("the reporter no longer announces on IRC".into())).await;
            return true;
        };
        let text = match irc.message.render(&report) {
            Ok(text) => one_line(&text),
            Err(error) => {
                record(self.master, &taken, Outcome::Failed(format!("the message cannot be rendered: {error}"))).await;
                return true;
            }
        };
        for channel in &irc.channels {
            self.paced.push_back(format!("PRIVMSG {channel} :{text}"));
        }
        self.announcing = Some(taken);
        true
    }

    async fn on_message(&mut self, message: Message) -> Result<(), IrcError> {
        let nickname = self.settings.nickname.clone();
        match message.command.as_str() {
            "PING" => self.send_now(&format!("PONG :{}", message.last())).await?,
            "ERROR" => return Err(IrcError::Closed(message.last().to_owned())),
            "CAP" if message.param(1).eq_ignore_ascii_case("ACK") && message.last().contains("sasl") => {
                self.send_now("AUTHENTICATE PLAIN").await?;
            }
            "CAP" if message.param(1).eq_ignore_ascii_case("NAK") => {
                return Err(IrcError::Sasl("the server does not offer SASL; use `identify: nickserv`".into()));
            }
            "AUTHENTICATE" if message.param(0) == "+" => {
                let password = self.settings.password.as_ref().map(|password| password.expose()).unwrap_or_default();
                let credentials = format!("{nickname}\0{nickname}\0{password}");
                let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
                // Lines carry 400 bytes of it at most; a last line of
                // exactly 400 is followed by `+`.
                for chunk in encoded.as_bytes().chunks(400) {
                    self.send_now(&format!("AUTHENTICATE {}", String::from_utf8_lossy(chunk))).await?;
                }
                if encoded.len() % 400 == 0 {
                    self.send_now("AUTHENTICATE +").await?;
                }
            }
            // RPL_SASLSUCCESS
            "903" => self.send_now("CAP END").await?,
            // ERR_SASLFAIL, ERR_SASLTOOLONG, ERR_SASLABORTED, ERR_NICKLOCKED
            "902" | "904" | "905" | "906" => return Err(IrcError::Sasl(message.last().to_owned())),
            // RPL_WELCOME
            "001" => {
                self.registered = true;
                tracing::info!(nickname = %nickname, "IRC registered");
                if self.settings.identify == IrcIdentify::Nickserv
                    && let Some(password) = &self.settings.password
                {
                    self.send_now(&format!("PRIVMSG NickServ :IDENTIFY {}", password.expose())).await?;
                }
                self.join_channels().await?;
            }
            // ERR_NICKNAMEINUSE, ERR_NICKCOLLISION: never another nickname,
            // which would be a second buildmaster on the network.
            "433" | "436" if !self.registered => return Err(IrcError::NicknameInUse(nickname)),
            // ERR_ERRONEUSNICKNAME
            "432" => return Err(IrcError::NicknameRefused(nickname, message.last().to_owned())),
            // Cannot join: full, invite only, banned, bad key.
            "471" | "473" | "474" | "475" => {
                let channel = message.param(1).to_ascii_lowercase();
                tracing::warn!(channel = %channel, reason = %message.last(), "cannot join an IRC channel");
            }
            "KICK" if message.param(1).eq_ignore_ascii_case(&nickname) => {
                let channel = message.param(0).to_ascii_lowercase();
                tracing::warn!(channel = %channel, by = ?message.from, "kicked from an IRC channel; joining again");
                self.joined.remove(&channel);
            }
            "PRIVMSG" if self.registered => self.on_privmsg(&message).await?,
            _ => {}
        }
        Ok(())
    }

    /// Joins the channels the reporters name now and leaves the others.
    async fn join_channels(&mut self) -> Result<(), IrcError> {
        let (wanted, _) = channels_and_reporters(self.master);
        let join: Vec<String> = wanted.difference(&self.joined).cloned().collect();
        let part: Vec<String> = self.joined.difference(&wanted).cloned().collect();
        if !join.is_empty() {
            self.send_now(&format!("JOIN {}", join.join(","))).await?;
        }
        if !part.is_empty() {
            self.send_now(&format!("PART {} :no longer announced here", part.join(","))).await?;
        }
        self.joined = wanted;
        Ok(())
    }

    /// A command: `nickname: status` in a channel, or `status` in a private
    /// message.
    async fn on_privmsg(&mut self, message: &Message) -> Result<(), IrcError> {
        let Some(from) = message.from.clone() else { return Ok(()) };
        let (target, text) = (message.param(0), message.last());
        let nickname = &self.settings.nickname;
        let (reply_to, prefix, command) = if target.eq_ignore_ascii_case(nickname) {
            (from.clone(), String::new(), text.trim())
        } else {
            let Some(addressed) = strip_address(text, nickname) else { return Ok(()) };
            (target.to_owned(), format!("{from}: "), addressed)
        };
        let answer = self.answer(command).await;
        self.paced.push_back(format!("PRIVMSG {reply_to} :{}", one_line(&format!("{prefix}{answer}"))));
        Ok(())
    }

    async fn answer(&self, command: &str) -> String {
        let (verb, rest) = command.split_once(' ').unwrap_or((command, ""));
        match verb.to_ascii_lowercase().as_str() {
            "status" => self.status().await,
            "last" => self.last(rest.trim()).await,
            "help" | "" => "I announce builds here. Ask me: `status` (what runs now), `last <builder>` \
                            (a builder's last build), `help`."
                .into(),
            other => format!("I do not know `{other}`; try `help`."),
        }
    }

    async fn status(&self) -> String {
        let (running, count) = match self.master.store.running_builds(STATUS_NAMES).await {
            Ok(found) => found,
            Err(error) => return format!("I cannot tell now: {error}"),
        };
        if count == 0 {
            return "Nothing is running.".into();
        }
        let catalog = self.master.catalog();
        let named: Vec<String> = running
            .iter()
            .map(|build| {
                let builder = catalog.builder_name(build.builder_id).map_or("?", |name| name.as_str());
                let minutes = (chrono::Utc::now() - build.started_at).num_minutes();
                format!("{builder} #{} ({}, {minutes} min)", build.number, build.state_string)
            })
            .collect();
        let more = if count > running.len() as i64 {
            format!(" and {} more", count - running.len() as i64)
        } else {
            String::new()
        };
        format!("{count} running: {}{more}.", named.join(", "))
    }

    async fn last(&self, builder: &str) -> String {
        if builder.is_empty() {
            return "Which builder? `last <builder>`".into();
        }
        let catalog = self.master.catalog();
        let found = catalog.builders().find(|(config, _)| config.name.as_str().eq_ignore_ascii_case(builder));
        let Some((config, builder_id)) = found else {
            return format!("There is no builder named `{builder}`.");
        };
        let name = config.name.as_str();
        match self.master.store.last_finished_build(builder_id).await {
            Ok(Some(build)) => {
                let results = build.results.and_then(Results::from_code).map_or("unknown", |results| results.name());
                let minutes = (chrono::Utc::now() - build.complete_at).num_minutes();
                let web_url = catalog.config.settings.web.url.as_deref().unwrap_or_default().trim_end_matches('/');
                let url = format!("{web_url}{}", urls::build_page(name, i64::from(build.number)));
                format!("{name} build {}: {results} ({}), {minutes} min ago {url}", build.number, build.state_string)
            }
            Ok(None) => format!("{name} has no finished build yet."),
            Err(error) => format!("I cannot tell now: {error}"),
        }
    }

    async fn send_now(&mut self, line: &str) -> Result<(), IrcError> {
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.write_all(b"\r\n").await?;
        self.writer.flush().await?;
        Ok(())
    }
}

/// Whether two settings name the same connection (host, port, TLS,
/// nickname and how it identifies).
fn same_network(a: &IrcSettings, b: &IrcSettings) -> bool {
    a.host == b.host
        && a.port() == b.port()
        && a.tls == b.tls
        && a.nickname == b.nickname
        && a.identify == b.identify
        && a.password.as_ref().map(|p| p.expose()) == b.password.as_ref().map(|p| p.expose())
}

/// `text` without `nickname:` or `nickname,` before it, if it was
/// addressed to `nickname`.
fn strip_address<'t>(text: &'t str, nickname: &str) -> Option<&'t str> {
    let head = text.get(..nickname.len())?;
    if !head.eq_ignore_ascii_case(nickname) {
        return None;
    }
    let rest = &text[nickname.len()..];
    let rest = rest.strip_prefix([':', ','])?;
    Some(rest.trim())
}

/// One IRC line of text: no line breaks, at most `TEXT_BYTES` bytes (cut
/// on a character boundary).
fn one_line(text: &str) -> String {
    let flat: String = text.chars().map(|c| if c == '\r' || c == '\n' || c == '\0' { ' ' } else { c }).collect();
    let flat = flat.trim();
    if flat.len() <= TEXT_BYTES {
        return flat.to_owned();
    }
    let mut end = TEXT_BYTES - 3;
    while !flat.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &flat[..end])
}

async fn connect(settings: &IrcSettings, address: &str) -> Result<Box<dyn Stream>, IrcError> {
    let tcp =
        tokio::net::TcpStream::connect(address).await.map_err(|error| IrcError::Connect(address.into(), error))?;
    tcp.set_nodelay(true)?;
    if !settings.tls {
        return Ok(Box::new(tcp));
    }
    let tls_error = |error: std::io::Error| IrcError::Tls(address.into(), error);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|error| tls_error(std::io::Error::other(error)))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| tls_error(std::io::Error::other(error)))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(settings.host.clone())
        .map_err(|error| tls_error(std::io::Error::other(error)))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(tls_error)?;
    Ok(Box::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_and_without_prefix_tags_and_trailing() {
        let message = Message::parse(":alice!a@host PRIVMSG #builds :bb: last AMD64 Debian\r\n").unwrap();
        assert_eq!(message.from.as_deref(), Some("alice"));
        assert_eq!(message.command, "PRIVMSG");
        assert_eq!(message.params, ["#builds", "bb: last AMD64 Debian"]);
        let ping = Message::parse("PING :irc.example.org").unwrap();
        assert_eq!((ping.from.as_deref(), ping.command.as_str(), ping.last()), (None, "PING", "irc.example.org"));
        let tagged = Message::parse("@time=2026-12-03T12:00:00Z :srv 001 bb :Welcome").unwrap();
        assert_eq!((tagged.command.as_str(), tagged.param(0), tagged.last()), ("001", "bb", "Welcome"));
        let cap = Message::parse(":srv CAP * ACK :sasl").unwrap();
        assert_eq!(cap.params, ["*", "ACK", "sasl"]);
        assert!(Message::parse("").is_none());
    }

    #[test]
    fn commands_are_addressed_by_nickname_in_any_case() {
        assert_eq!(strip_address("bb: status", "bb"), Some("status"));
        assert_eq!(strip_address("BB, last AMD64", "bb"), Some("last AMD64"));
        assert_eq!(strip_address("bbx: status", "bb"), None);
        assert_eq!(strip_address("hello bb", "bb"), None);
    }

    #[test]
    fn a_line_is_one_line_of_at_most_400_bytes() {
        assert_eq!(one_line("a\nb\r\nc "), "a b  c");
        let long = "é".repeat(300);
        let cut = one_line(&long);
        assert!(cut.len() <= TEXT_BYTES && cut.ends_with("..."), "{}", cut.len());
    }

    #[test]
    fn pacing_allows_a_burst_then_one_line_per_interval() {
        let mut pace = Pace::new();
        for _ in 0..4 {
            assert_eq!(pace.wait(), Duration::ZERO);
            pace.spend();
        }
        let wait = pace.wait();
        assert!(wait > LINE_EVERY / 2 && wait <= LINE_EVERY, "{wait:?}");
    }
}
