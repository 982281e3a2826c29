//! IRC: the installation's one connection to a real IRC server (the
//! distribution's ngircd, over TLS), watched by the test's own clients: a
//! person in the channel, and one registered as NickServ to receive the
//! identification.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::harness::TestStack;
use crate::servers::{PrivateIrc, PrivateIrcServices};

const NICK: &str = "bb";
const CHANNEL: &str = "#builds";
const WEB_URL: &str = "https://buildbot.example.org/";

/// A person on the network, as the test sees it: every line it got.
struct Client {
    nick: String,
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    seen: Vec<String>,
}

impl Client {
    /// Connects as `nick`, registers, and joins `channels`.
    async fn connect(port: u16, nick: &str, channels: &[&str]) -> Client {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect to ngircd");
        let (reader, writer) = stream.into_split();
        let mut client =
            Client { nick: nick.to_owned(), lines: BufReader::new(reader).lines(), writer, seen: Vec::new() };
        client.send(&format!("NICK {nick}")).await;
        client.send(&format!("USER {nick} 0 * :test client")).await;
        client.expect(10, "the welcome", |line| line.split(' ').nth(1) == Some("001")).await;
        for channel in channels {
            client.send(&format!("JOIN {channel}")).await;
            // RPL_ENDOFNAMES: joined.
            client.expect(10, "the join", |line| line.split(' ').nth(1) == Some("366")).await;
        }
        client
    }

    async fn send(&mut self, line: &str) {
        self.writer.write_all(format!("{line}\r\n").as_bytes()).await.expect("write to ngircd");
    }

    /// Reads until a line satisfies `wanted` (answering PINGs), within
    /// `seconds`; returns it.
    async fn expect(&mut self, seconds: u64, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match tokio::time::timeout(left, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
                Ok(other) => {
                    panic!("{}: connection ended ({other:?}) waiting for {what}; saw {:#?}", self.nick, self.seen)
                }
                Err(_) => panic!("{}: no {what} within {seconds} s; saw {:#?}", self.nick, self.seen),
            };
            if let Some(token) = line.strip_prefix("PING ") {
                self.send(&format!("PONG {token}")).await;
                continue;
            }
            self.seen.push(line.clone());
            if wanted(&line) {
                return line;
            }
        }
    }

    /// The nicknames in `channel` now.
    async fn names(&mut self, channel: &str) -> Vec<String> {
        self.send(&format!("NAMES {channel}")).await;
        let mut names = Vec::new();
        loop {
            let line =
                self.expect(10, "the names", |line| matches!(line.split(' ').nth(1), Some("353") | Some("366"))).await;
            if line.split(' ').nth(1) == Some("366") {
                return names;
            }
            let listed = line.rsplit_once(" :").map_or("", |(_, names)| names);
            names.extend(listed.split_whitespace().map(|name| name.trim_start_matches(['@', '+']).to_owned()));
        }
    }
}

/// `:bb!... PRIVMSG <target> :<text>` from the bot: its text.
fn said_by_bot<'l>(line: &'l str, target: &str) -> Option<&'l str> {
    let rest = line.strip_prefix(&format!(":{NICK}!"))?;
    let (_, rest) = rest.split_once(' ')?;
    rest.strip_prefix(&format!("PRIVMSG {target} :"))
}

fn is_bot(line: &str, command: &str) -> bool {
    line.starts_with(&format!(":{NICK}!")) && line.split(' ').nth(1) == Some(command)
}

/// The master holding the IRC role, by the test's name for it.
async fn holder(stack: &TestStack) -> Option<String> {
    let database = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let name: Option<String> = sqlx::query_scalar(
        "select m.name from master_roles r join masters m on m.id = r.master_id where r.role = 'irc'",
    )
    .fetch_optional(&database)
    .await
    .unwrap();
    database.close().await;
    name.map(|name| name.rsplit('-').next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_and_its_fix_are_announced_and_the_connection_moves_when_its_master_is_killed() {
    let irc = PrivateIrc::start().await;
    let mut nickserv = Client::connect(irc.port, "NickServ", &[]).await;
    let mut person = Client::connect(irc.port, "alice", &[CHANNEL]).await;

    let flags = tempfile::tempdir().unwrap();
    let broken = flags.path().join("broken");
    let yaml = format!(
        "factories:\n  tip:\n    steps:\n      - {{name: compile, command: [\"true\"]}}\n\
         \x20     - {{name: test, command: [\"test\", \"!\", \"-e\", \"{}\"]}}\n\
         builders:\n  - {{name: tip, factory: tip, workers: [w1], properties: {{branch: main}}}}\n\
         schedulers:\n  - {{type: force, name: force, builders: [tip]}}\n\
         reporters:\n  - name: channel\n    mode: [problem, change]\n    irc: {{channels: [\"{CHANNEL}\"]}}\n",
        broken.display()
    );
    let mut stack = TestStack::new(&yaml, &["tip"]).await;
    let settings = std::fs::read_to_string(&stack.settings_path).unwrap();
    let web = format!("web:\n  url: {WEB_URL}\n  anonymous_control: true\n");
    std::fs::write(&stack.settings_path, settings.replacen("web:\n", &web, 1)).unwrap();
    stack.append_settings(&format!(
        "irc:\n  host: localhost\n  port: {}\n  nickname: {NICK}\n  password: the-nickname-password\n",
        irc.tls_port
    ));
    stack.process_env.push(("SSL_CERT_FILE".into(), irc.ca_file.display().to_string()));
    let a = stack.start_master_process("a").await;
    let b = stack.start_master_process("b").await;
    stack.base_url = format!("http://{a}");
    stack.start_worker("w1");

    // Over TLS, identified to NickServ, in the channel.
    let identified = nickserv.expect(30, "the identification", |line| said_by_bot(line, "NickServ").is_some()).await;
    assert_eq!(said_by_bot(&identified, "NickServ"), Some("IDENTIFY the-nickname-password"));
    person.expect(30, "the bot joining", |line| is_bot(line, "JOIN")).await;

    // Red: announced. Red again: no news. Green: announced as a fix.
    std::fs::write(&broken, "").unwrap();
    let first = stack.wait_for_build(stack.force("tip").await).await;
    assert_eq!(first["results"], 2);
    let failed = person.expect(60, "the failure", |line| said_by_bot(line, CHANNEL).is_some()).await;
    assert_eq!(
        said_by_bot(&failed, CHANNEL).unwrap(),
        format!("tip build 1: failure in test on main {WEB_URL}builders/tip/builds/1")
    );
    let second = stack.wait_for_build(stack.force("tip").await).await;
    assert_eq!(second["results"], 2);
    std::fs::remove_file(&broken).unwrap();
    let third = stack.wait_for_build(stack.force("tip").await).await;
    assert_eq!(third["results"], 0);
    let fixed = person.expect(60, "the fix", |line| said_by_bot(line, CHANNEL).is_some()).await;
    assert_eq!(
        said_by_bot(&fixed, CHANNEL).unwrap(),
        format!("tip build 3: success (was failure) on main {WEB_URL}builders/tip/builds/3"),
        "build 2 (still red) is not announced"
    );

    // Commands, addressed by nickname.
    person.send(&format!("PRIVMSG {CHANNEL} :{NICK}: last TIP")).await;
    let last = person.expect(20, "the answer to last", |line| said_by_bot(line, CHANNEL).is_some()).await;
    let last = said_by_bot(&last, CHANNEL).unwrap();
    assert!(last.starts_with("alice: tip build 3: success"), "{last}");
    assert!(last.ends_with(&format!("{WEB_URL}builders/tip/builds/3")), "{last}");
    person.send(&format!("PRIVMSG {NICK} :status")).await;
    let status = person.expect(20, "the answer to status", |line| said_by_bot(line, "alice").is_some()).await;
    assert_eq!(said_by_bot(&status, "alice").unwrap(), "Nothing is running.");

    // The master holding the connection dies: another takes it within
    // seconds, and there is never a second nickname.
    let doomed = holder(&stack).await.expect("a master holds the IRC role");
    let killed = Instant::now();
    stack.kill_master_process(&doomed);
    person.expect(10, "the bot quitting", |line| is_bot(line, "QUIT")).await;
    person.expect(30, "the bot back", |line| is_bot(line, "JOIN")).await;
    let moved_in = killed.elapsed();
    let survivor = holder(&stack).await.expect("the role is held again");
    assert_ne!(survivor, doomed);
    stack.base_url = format!("http://{}", if survivor == "a" { a } else { b });
    eprintln!("IRC connection moved from master {doomed} to {survivor} in {moved_in:?}");
    assert!(moved_in < Duration::from_secs(25), "moved within seconds: {moved_in:?}");
    nickserv.expect(10, "the identification again", |line| said_by_bot(line, "NickServ").is_some()).await;
    let names = person.names(CHANNEL).await;
    let bots: Vec<&String> = names.iter().filter(|name| name.to_lowercase().starts_with(NICK)).collect();
    assert_eq!(bots, [NICK], "one nickname: {names:?}");

    // And the survivor announces.
    std::fs::write(&broken, "").unwrap();
    let fourth = stack.wait_for_build(stack.force("tip").await).await;
    assert_eq!(fourth["number"], 4);
    let again = person.expect(60, "a failure after the move", |line| said_by_bot(line, CHANNEL).is_some()).await;
    assert!(said_by_bot(&again, CHANNEL).unwrap().starts_with("tip build 4: failure in test (was success)"), "{again}");
    for line in &person.seen {
        assert!(!line.contains("build 2:"), "build 2 was announced: {line}");
    }
}

/// SASL PLAIN against a network with services (InspIRCd and Atheme): a
/// wrong password keeps the nickname off the network; the right one logs
/// it in before it joins anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sasl_the_nickname_is_logged_in_before_it_joins_and_a_wrong_password_keeps_it_off() {
    let irc = PrivateIrcServices::start().await;
    // The nickname's account, registered as people do.
    let mut owner = Client::connect(irc.port, NICK, &[]).await;
    owner.send("PRIVMSG NickServ :REGISTER the-nickname-password bb@example.org").await;
    // RPL_LOGGEDIN: registered and logged in.
    owner.expect(15, "the registration", |line| line.split(' ').nth(1) == Some("900")).await;
    owner.send("QUIT :registered").await;
    owner.expect(10, "the goodbye", |line| line.starts_with("ERROR")).await;
    let mut person = Client::connect(irc.port, "alice", &[CHANNEL]).await;

    let yaml = format!(
        "factories:\n  tip:\n    steps:\n      - {{name: compile, command: [\"true\"]}}\n\
         builders:\n  - {{name: tip, factory: tip, workers: [w1]}}\n\
         schedulers:\n  - {{type: force, name: force, builders: [tip]}}\n\
         reporters:\n  - name: channel\n    irc: {{channels: [\"{CHANNEL}\"]}}\n"
    );
    let mut stack = TestStack::new(&yaml, &["tip"]).await;
    let settings = std::fs::read_to_string(&stack.settings_path).unwrap();
    let web = format!("web:\n  url: {WEB_URL}\n  anonymous_control: true\n");
    let settings = settings.replacen("web:\n", &web, 1);
    let irc_settings = |password: &str| {
        format!(
            "irc:\n  host: 127.0.0.1\n  port: {}\n  tls: false\n  nickname: {NICK}\n  password: {password}\n  identify: sasl\n",
            irc.port
        )
    };
    std::fs::write(&stack.settings_path, format!("{settings}{}", irc_settings("not-the-password"))).unwrap();
    let wrong = stack.start_master("a").await;
    // A few attempts' worth of time: never on the network.
    tokio::time::sleep(Duration::from_secs(4)).await;
    person.send(&format!("WHOIS {NICK}")).await;
    // ERR_NOSUCHNICK
    person.expect(10, "no such nick", |line| line.split(' ').nth(1) == Some("401")).await;
    assert!(!person.seen.iter().any(|line| is_bot(line, "JOIN")), "{:#?}", person.seen);
    stack.stop_master(wrong).await;

    std::fs::write(&stack.settings_path, format!("{settings}{}", irc_settings("the-nickname-password"))).unwrap();
    stack.start_master("b").await;
    person.expect(30, "the bot joining", |line| is_bot(line, "JOIN")).await;
    person.send(&format!("WHOIS {NICK}")).await;
    // RPL_WHOISACCOUNT
    let account = person.expect(10, "the account", |line| line.split(' ').nth(1) == Some("330")).await;
    assert!(account.contains(&format!(" {NICK} {NICK} :is logged in as")), "{account}");
}

/// The network's own failures: a nickname someone else holds is waited for
/// (never another nickname), and a server that restarts is connected to
/// again, the channels joined again and builds announced again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_nickname_is_waited_for_and_a_restarted_server_is_joined_again() {
    let mut irc = PrivateIrc::start().await;
    let mut squatter = Client::connect(irc.port, NICK, &[]).await;
    let mut person = Client::connect(irc.port, "alice", &[CHANNEL]).await;
    let yaml = format!(
        "factories:\n  broken:\n    steps:\n      - {{name: test, command: [\"false\"]}}\n\
         builders:\n  - {{name: tip, factory: broken, workers: [w1], properties: {{branch: main}}}}\n\
         schedulers:\n  - {{type: force, name: force, builders: [tip]}}\n\
         reporters:\n  - name: channel\n    mode: [all]\n    irc: {{channels: [\"{CHANNEL}\"]}}\n"
    );
    let mut stack = TestStack::new(&yaml, &["tip"]).await;
    let settings = std::fs::read_to_string(&stack.settings_path).unwrap();
    std::fs::write(
        &stack.settings_path,
        settings.replacen("web:\n", &format!("web:\n  url: {WEB_URL}\n  anonymous_control: true\n"), 1),
    )
    .unwrap();
    stack
        .append_settings(&format!("irc:\n  host: 127.0.0.1\n  port: {}\n  tls: false\n  nickname: {NICK}\n", irc.port));
    stack.start_master("a").await;
    stack.start_worker("w1");

    // The nickname is someone else's: nobody joins under another one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let names = person.names(CHANNEL).await;
    assert_eq!(names, ["alice"], "no bot under another nickname: {names:?}");
    squatter.send("QUIT :done").await;
    person.expect(30, "the bot joining once the nickname is free", |line| is_bot(line, "JOIN")).await;

    // The server restarts: every connection drops; the bot comes back.
    irc.restart().await;
    let restarted = Instant::now();
    let mut person = Client::connect(irc.port, "alice", &[CHANNEL]).await;
    let joined = |names: &[String]| names.iter().any(|name| name == NICK);
    let mut names = person.names(CHANNEL).await;
    while !joined(&names) {
        assert!(restarted.elapsed() < Duration::from_secs(30), "the bot is back within 30 s: {names:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        names = person.names(CHANNEL).await;
    }
    eprintln!("the bot was back in {CHANNEL} {:?} after the server restarted", restarted.elapsed());

    let build = stack.wait_for_build(stack.force("tip").await).await;
    assert_eq!(build["results"], 2);
    let told = person.expect(60, "the failure", |line| said_by_bot(line, CHANNEL).is_some()).await;
    assert!(said_by_bot(&told, CHANNEL).unwrap().starts_with("tip build 1: failure in test on main"), "{told}");
}
