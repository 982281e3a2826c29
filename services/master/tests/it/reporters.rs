//! Reporters: commit statuses on GitHub and messages in Discord reach
//! their targets through server errors and rate limits, each told once,
//! and what became of each is on the build's API. GitHub and Discord
//! are the stand-in of `github_api`; mail and IRC real servers.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::github_api::{self, Call, StandIn, TOKEN, Trouble};
use crate::harness::{TestStack, binary};
use crate::servers::{PrivateIrc, PrivateSmtp};

const GOOD_SHA: &str = "1111111111111111111111111111111111111111";
const BAD_SHA: &str = "2222222222222222222222222222222222222222";
const WEB_URL: &str = "https://buildbot.example.org/";

fn reporters_yaml() -> String {
    format!(
        "factories:\n\
         \x20 pass:\n    steps:\n      - {{name: compile, command: [\"true\"]}}\n\
         \x20 fail:\n    steps:\n      - {{name: compile, command: [\"true\"]}}\n      - {{name: test, command: [\"false\"]}}\n\
         builders:\n\
         \x20 - name: good\n    factory: pass\n    workers: [w1]\n\
         \x20   properties: {{repository: \"https://github.com/python/cpython.git\", revision: \"{GOOD_SHA}\", branch: main}}\n\
         \x20 - name: bad\n    factory: fail\n    workers: [w1]\n\
         \x20   properties: {{repository: \"https://github.com/python/cpython.git\", revision: \"{BAD_SHA}\", branch: main}}\n\
         schedulers:\n  - {{type: force, name: force, builders: [good, bad]}}\n\
         reporters:\n\
         \x20 - name: statuses\n    github_status: {{}}\n\
         \x20 - name: chat\n    mode: [failing]\n    discord: {{webhook_secret: discord_hook}}\n"
    )
}

fn settings_for(stand_in_url: &str, token: &str) -> String {
    format!(
        "github:\n  webhook_secret: a-webhook-secret\n  api_url: {stand_in_url}\n  api_token: {token}\n\
         secrets:\n  discord_hook: {stand_in_url}/api/webhooks/1234/webhook-token\n"
    )
}

/// Sets settings.yaml's `web.url`, where messages link.
fn set_web_url(stack: &TestStack) {
    let settings = std::fs::read_to_string(&stack.settings_path).unwrap();
    // Public, so control needs users, or leave to open it to anyone.
    let web = format!("web:\n  url: {WEB_URL}\n  anonymous_control: true\n");
    std::fs::write(&stack.settings_path, settings.replacen("web:\n", &web, 1)).unwrap();
}

/// The build's notifications once none is pending.
async fn settled(stack: &TestStack, build_id: i64) -> Vec<Value> {
    stack
        .eventually(60, "every notification of the build is settled", async || {
            let answer = stack.get(&format!("/api/v2/builds/{build_id}/notifications")).await;
            let rows = answer["notifications"].as_array()?.clone();
            (!rows.is_empty() && rows.iter().all(|row| row["state"] != "pending")).then_some(rows)
        })
        .await
}

fn row<'a>(rows: &'a [Value], reporter: &str, event: &str) -> &'a Value {
    rows.iter()
        .find(|row| row["reporter"] == reporter && row["event"] == event)
        .unwrap_or_else(|| panic!("no {reporter} {event} in {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_and_messages_reach_github_and_discord_through_errors_and_rate_limits_each_told_once() {
    let stand_in = StandIn::default();
    stand_in.github_trouble.lock().unwrap().extend([
        Trouble::ServerError,
        Trouble::RateLimited,
        Trouble::TooManyRequests,
    ]);
    stand_in.discord_trouble.lock().unwrap().extend([Trouble::Hang, Trouble::TooManyRequests]);
    let url = github_api::serve(stand_in.clone()).await;
    let mut stack = TestStack::new(&reporters_yaml(), &["good", "bad"]).await;
    set_web_url(&stack);
    stack.append_settings(&settings_for(&url, TOKEN));
    stack.start_master("a").await;
    stack.start_worker("w1");

    let good = stack.wait_for_build(stack.force("good").await).await;
    let bad = stack.wait_for_build(stack.force("bad").await).await;
    assert_eq!((good["results"].as_i64(), bad["results"].as_i64()), (Some(0), Some(2)));
    let good_id = good["buildid"].as_i64().unwrap();
    let bad_id = bad["buildid"].as_i64().unwrap();
    let good_rows = settled(&stack, good_id).await;
    let bad_rows = settled(&stack, bad_id).await;

    // Each commit's last status is its build's result, linked to its page;
    // no `pending` arrives after it.
    for (sha, build, builder, state) in [(GOOD_SHA, &good, "good", "success"), (BAD_SHA, &bad, "bad", "failure")] {
        let accepted: Vec<Call> = stand_in
            .calls(&format!("/repos/python/cpython/statuses/{sha}"))
            .into_iter()
            .filter(|call| call.status == 201)
            .collect();
        let last = accepted.last().unwrap_or_else(|| panic!("no status set on {sha}"));
        assert_eq!(last.body["state"], state, "{accepted:?}");
        assert_eq!(last.body["context"], format!("buildmaster/{builder}"));
        assert_eq!(last.body["target_url"], format!("{WEB_URL}builders/{builder}/builds/{}", build["number"]));
        assert_eq!(
            accepted.iter().filter(|call| call.body["state"] != "pending").count(),
            1,
            "the result once: {accepted:?}"
        );
        assert!(accepted.len() <= 2, "a start and an end at most: {accepted:?}");
    }
    assert_eq!(row(&good_rows, "statuses", "finished")["state"], "sent", "{good_rows:?}");
    assert_eq!(row(&bad_rows, "statuses", "finished")["state"], "sent", "{bad_rows:?}");

    // The troubles were met and obeyed: the call after each rate limit came
    // no sooner than GitHub asked.
    let github = stand_in.calls("/repos/");
    let statuses: Vec<u16> = github.iter().map(|call| call.status).collect();
    assert_eq!(&statuses[..3], [500, 403, 429], "{statuses:?}");
    for limited in 1..=2 {
        let waited = github[limited + 1].at - github[limited].at;
        assert!(waited >= Duration::from_millis(900), "waited {waited:?} after a {}", statuses[limited]);
    }
    // Each trouble is on record as some delivery's last error (a later
    // wait for a rate limit may replace an earlier one).
    let all_rows = [good_rows.as_slice(), bad_rows.as_slice()].concat();
    let retried: Vec<&Value> =
        all_rows.iter().filter(|row| row["reporter"] == "statuses" && row["attempts"].as_i64() > Some(1)).collect();
    assert!(!retried.is_empty() && retried.iter().all(|row| row["last_error"].is_string()), "{all_rows:?}");

    // Discord hears of the failure only, once, with its failed step: a
    // call that hung was given up after 10 s and made again.
    let calls = stand_in.calls("/api/webhooks/");
    let messages: Vec<Call> = calls.iter().filter(|call| call.status == 200).cloned().collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let chat = row(&bad_rows, "chat", "finished");
    assert!(chat["attempts"].as_i64() >= Some(3), "hung, limited, sent: {chat}");
    let content = messages[0].body["content"].as_str().unwrap();
    assert!(content.contains("**bad**") && content.contains("failure") && content.contains("`test`"), "{content}");
    assert!(content.contains(&format!("<{WEB_URL}builders/bad/builds/")), "{content}");
    assert_eq!(messages[0].body["allowed_mentions"], json!({ "parse": [] }));
    assert_eq!(row(&bad_rows, "chat", "finished")["state"], "sent");
    let skipped = row(&good_rows, "chat", "finished");
    assert_eq!(skipped["state"], "skipped");
    assert!(skipped["detail"].as_str().unwrap().contains("modes"), "{skipped}");
    assert!(
        good_rows.iter().all(|row| !(row["reporter"] == "chat" && row["event"] == "started")),
        "chat hears no starts"
    );

    // The build's page says what was told.
    let page = String::from_utf8(stack.get_bytes(&format!("/builders/bad/builds/{}", bad["number"])).await).unwrap();
    let told = page.split("<h2>Told</h2>").nth(1).unwrap_or_else(|| panic!("no Told section:\n{page}"));
    assert!(told.contains("<td>chat</td>") && told.contains("message 1180000000000000001"), "{told}");
    assert!(told.contains("buildmaster/bad: failure on python/cpython@222222222222"), "{told}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_gives_the_status_up_at_once_and_the_build_says_why() {
    let stand_in = StandIn::default();
    let url = github_api::serve(stand_in.clone()).await;
    let mut stack = TestStack::new(&reporters_yaml(), &["good", "bad"]).await;
    set_web_url(&stack);
    stack.append_settings(&settings_for(&url, "a-revoked-token"));
    stack.start_master("a").await;
    stack.start_worker("w1");

    let build = stack.wait_for_build(stack.force("good").await).await;
    let rows = settled(&stack, build["buildid"].as_i64().unwrap()).await;
    let end = row(&rows, "statuses", "finished");
    assert_eq!(end["state"], "failed", "{rows:?}");
    assert_eq!(end["attempts"], 1, "retrying cannot mend a token: {end}");
    let error = end["last_error"].as_str().unwrap();
    assert!(error.contains("GitHub answered 401") && error.contains("Bad credentials"), "{error}");
    assert!(!error.contains("a-revoked-token"), "the token never prints: {error}");
}

/// Runs checkconfig on a settings.yaml and a master.yaml; its stderr.
fn checkconfig(settings: &str, master: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("settings.yaml"), settings).unwrap();
    std::fs::write(dir.path().join("master.yaml"), master).unwrap();
    let output = Command::new(binary("buildmaster"))
        .arg("--settings")
        .arg(dir.path().join("settings.yaml"))
        .arg("checkconfig")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stderr}");
    stderr
}

const CHECKED_SETTINGS: &str = "database_url: postgres://x@127.0.0.1/x\namqp_url: amqp://127.0.0.1\n\
                                redis_url: redis://127.0.0.1\n\
                                workers:\n  - name: w1\n    password: long-enough-password\n";
const CHECKED_BUILDERS: &str = "factories:\n  F:\n    steps:\n      - name: s\n        command: [\"true\"]\n\
                                builders:\n  - name: b\n    factory: F\n    workers: [w1]\n";

/// checkconfig on reporters that cannot be read: each problem at its line.
#[test]
fn unreadable_reporters_are_reported_by_checkconfig_at_their_line() {
    let master = format!(
        "{CHECKED_BUILDERS}reporters:\n\
         \x20 - name: statuses\n    mode: [sometimes]\n    github_status: {{}}\n\
         \x20 - name: chat\n    discord:\n      webhook_secret: hook\n      message: \"{{{{ buidler }}}} built\"\n\
         \x20 - name: both\n    github_status: {{}}\n    discord: {{webhook_secret: hook}}\n\
         \x20 - name: broken\n    discord: {{webhook_secret: hook, message: \"{{% if %}}\"}}\n"
    );
    let stderr = checkconfig(CHECKED_SETTINGS, &master);
    for expected in [
        "master.yaml:12:12: reporters[0].mode[0]: unknown variant `sometimes`",
        "master.yaml:17:16: this template uses `buidler`, which reports do not have",
        "hint: its variables are `branch`, `builder`, `event`",
        "master.yaml:18:",
        "reporter `both` needs exactly one target, it has 2",
        "master.yaml:22:46: this template cannot be read: syntax error",
    ] {
        assert!(stderr.contains(expected), "missing `{expected}` in:\n{stderr}");
    }
}

/// checkconfig on reporters that need what settings.yaml lacks.
#[test]
fn reporters_missing_their_settings_are_reported_by_checkconfig_at_their_line() {
    let master = format!(
        "{CHECKED_BUILDERS}reporters:\n\
         \x20 - name: statuses\n    builders: [c]\n    github_status: {{}}\n\
         \x20 - name: chat\n    discord: {{webhook_secret: nowhere}}\n\
         \x20 - name: chat\n    discord: {{webhook_secret: nowhere}}\n\
         \x20 - name: channel\n    irc: {{channels: [\"#ok\", \"no channel\"]}}\n"
    );
    let stderr = checkconfig(CHECKED_SETTINGS, &master);
    for expected in [
        "master.yaml:10:1: reporters link to build pages, but settings.yaml has no `web.url`",
        "master.yaml:12:16: reporter `statuses` names builder `c`, which is not defined",
        "master.yaml:13:20: reporter `statuses` sets commit statuses, but settings.yaml has no `github.api_token`",
        "master.yaml:15:31: secret `nowhere` is not defined",
        "master.yaml:16:11: reporter name `chat` is empty or used twice",
        "master.yaml:19:10: reporter `channel` announces on IRC, but settings.yaml has no `irc` network",
        "master.yaml:19:29: `no channel` is not an IRC channel",
    ] {
        assert!(stderr.contains(expected), "missing `{expected}` in:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_turning_red_is_mailed_to_the_list_once_with_its_failed_step_and_link() {
    let smtp = PrivateSmtp::start().await;
    let yaml = reporters_yaml().replace(
        "reporters:\n",
        "reporters:\n\
         \x20 - name: list\n    mode: [problem]\n    builders: [bad]\n\
         \x20   mail: {to: [python-buildbots@python.org, \"Release Manager <rm@python.org>\"]}\n",
    );
    let mut stack = TestStack::new(&yaml, &["good", "bad"]).await;
    set_web_url(&stack);
    let port = smtp.port;
    stack.append_settings(&format!(
        "{}mail:\n  smtp_host: 127.0.0.1\n  smtp_port: {port}\n  security: none\n  from: \"buildmaster <buildbot@example.org>\"\n",
        settings_for("http://127.0.0.1:9", TOKEN)
    ));
    stack.start_master("a").await;
    stack.start_worker("w1");

    // Red, then red again: one problem, so one mail.
    let first = stack.wait_for_build(stack.force("bad").await).await;
    let second = stack.wait_for_build(stack.force("bad").await).await;
    let first_rows = settled_for(&stack, first["buildid"].as_i64().unwrap(), "list").await;
    let second_rows = settled_for(&stack, second["buildid"].as_i64().unwrap(), "list").await;
    let sent = row(&first_rows, "list", "finished");
    assert_eq!(sent["state"], "sent", "{first_rows:?}");
    let skipped = row(&second_rows, "list", "finished");
    assert_eq!(skipped["state"], "skipped", "still red is no new problem: {second_rows:?}");

    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail = &mails[0];
    let number = first["number"].as_i64().unwrap();
    for expected in [
        format!("Subject: buildmaster: bad build {number} failure"),
        "From: buildmaster <buildbot@example.org>".to_owned(),
        "To: python-buildbots@python.org, \"Release Manager\" <rm@python.org>".to_owned(),
        "X-RcptTo: python-buildbots@python.org, rm@python.org".to_owned(),
        "First failed step: test".to_owned(),
        format!("{WEB_URL}builders/bad/builds/{number}"),
    ] {
        assert!(mail.contains(&expected), "missing `{expected}` in:\n{mail}");
    }
    let message_id = mail.lines().find_map(|line| line.strip_prefix("Message-ID: ")).expect("a Message-ID");
    assert!(message_id.starts_with("<notification.") && message_id.ends_with("@example.org>"), "{message_id}");
    assert!(sent["detail"].as_str().unwrap().contains(message_id), "the build says which mail: {sent}");
}

/// The build's rows of one reporter once none of them is pending.
async fn settled_for(stack: &TestStack, build_id: i64, reporter: &str) -> Vec<Value> {
    stack
        .eventually(60, "the reporter's notifications of the build are settled", async || {
            let answer = stack.get(&format!("/api/v2/builds/{build_id}/notifications")).await;
            let rows: Vec<Value> =
                answer["notifications"].as_array()?.iter().filter(|row| row["reporter"] == reporter).cloned().collect();
            (!rows.is_empty() && rows.iter().all(|row| row["state"] != "pending")).then_some(rows)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_builds_with_a_master_killed_and_github_down_for_a_while_tells_everything() {
    const BUILDS: usize = 200;
    let smtp = PrivateSmtp::start().await;
    let irc = PrivateIrc::start().await;
    let stand_in = StandIn::default();
    let url = github_api::serve(stand_in.clone()).await;
    let yaml = "factories:\n  pass:\n    steps:\n      - {name: compile, command: [\"true\"]}\n\
                builders:\n  - {name: burst, factory: pass, workers: [w1, w2]}\n\
                schedulers:\n  - {type: force, name: force, builders: [burst]}\n\
                reporters:\n\
                \x20 - name: statuses\n    github_status: {}\n\
                \x20 - name: chat\n    discord: {webhook_secret: discord_hook}\n\
                \x20 - name: list\n    mail: {to: [python-buildbots@python.org]}\n\
                \x20 - name: pulls\n    github_comment: {}\n\
                \x20 - name: channel\n    mode: [change]\n    irc: {channels: [\"#builds\"]}\n";
    let mut stack = TestStack::new(yaml, &["burst"]).await;
    set_web_url(&stack);
    let port = smtp.port;
    stack.append_settings(&format!(
        "{}mail:\n  smtp_host: 127.0.0.1\n  smtp_port: {port}\n  security: none\n  from: buildbot@example.org\n\
         irc:\n  host: localhost\n  port: {}\n  nickname: bb\n",
        settings_for(&url, TOKEN),
        irc.tls_port
    ));
    stack.process_env.push(("SSL_CERT_FILE".into(), irc.ca_file.display().to_string()));
    stack.start_master_process("a").await;
    let b = stack.start_master_process("b").await;
    stack.start_worker("w1");
    stack.start_worker("w2");
    *stand_in.github_down_until.lock().unwrap() = Some(Instant::now() + Duration::from_secs(4));

    // Forces through b, each of its own commit; a delivers too until it is
    // killed, mid-burst, with deliveries in its hands.
    stack.base_url = format!("http://{b}");
    let mut requests = Vec::new();
    for n in 1..=BUILDS {
        let sha = format!("{n:040x}");
        let properties = json!({ "revision": sha, "repository": "https://github.com/python/cpython" });
        requests.push((sha, stack.force_with("burst", json!({ "properties": properties })).await));
    }
    let database = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let count = async |sql: &'static str| -> i64 { sqlx::query_scalar(sql).fetch_one(&database).await.unwrap() };
    stack
        .eventually(60, "a third of the builds told", async || {
            (count("select count(*) from notifications where state = 'sent'").await >= BUILDS as i64).then_some(())
        })
        .await;
    stack.kill_master_process("a");

    for (_, request) in &requests {
        let build = stack.wait_for_build(*request).await;
        assert_eq!(build["results"], 0, "{build}");
    }
    // A killed master's deliveries wait for their lease (30 s).
    stack
        .eventually(150, "every notification settled", async || {
            (count("select count(*) from notifications where state = 'pending'").await == 0).then_some(())
        })
        .await;
    let states: Vec<(String, String, String, i64)> =
        sqlx::query_as("select reporter, event, state, count(*) from notifications group by 1, 2, 3 order by 1, 2, 3")
            .fetch_all(&database)
            .await
            .unwrap();
    let total = |reporter: &str, event: &str, state: &str| {
        states
            .iter()
            .find(|row| (row.0.as_str(), row.1.as_str(), row.2.as_str()) == (reporter, event, state))
            .map_or(0, |row| row.3)
    };
    assert!(states.iter().all(|row| row.2 != "failed"), "nothing given up: {states:?}");
    for reporter in ["statuses", "chat", "list"] {
        assert_eq!(total(reporter, "finished", "sent"), BUILDS as i64, "{reporter}: {states:?}");
    }
    assert_eq!(total("statuses", "started", "sent") + total("statuses", "started", "skipped"), BUILDS as i64);
    // Green after green is no change, and no pull request's: each row
    // looked at once and skipped, the IRC ones by whichever master held
    // the connection, through the kill.
    assert_eq!(total("channel", "finished", "skipped"), BUILDS as i64, "{states:?}");
    assert_eq!(total("pulls", "finished", "skipped"), BUILDS as i64, "{states:?}");

    // GitHub: every commit ends with its result; a start never follows it.
    let github = stand_in.calls("/repos/");
    assert!(github.iter().any(|call| call.status == 500), "GitHub was down for a while");
    for (sha, _) in &requests {
        let accepted: Vec<&Call> =
            github.iter().filter(|call| call.status == 201 && call.path.ends_with(sha.as_str())).collect();
        let last = accepted.last().unwrap_or_else(|| panic!("no status on {sha}"));
        assert_eq!(last.body["state"], "success", "{sha}: {accepted:?}");
        let first_success = accepted.iter().position(|call| call.body["state"] == "success").unwrap();
        assert!(accepted[first_success..].iter().all(|call| call.body["state"] == "success"), "{sha}: {accepted:?}");
    }
    // Mail: one Message-ID per build; a copy sent again carries the same.
    let mails = smtp.mails();
    let mut ids: Vec<&str> =
        mails.iter().map(|mail| mail.lines().find_map(|line| line.strip_prefix("Message-ID: ")).unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), BUILDS, "{} mails", mails.len());
    // Discord has no key: a message is repeated only for a delivery the
    // killed master had in hand (at most its deliverers).
    let messages = stand_in.calls("/api/webhooks/").into_iter().filter(|call| call.status == 200).count();
    assert!((BUILDS..=BUILDS + 4).contains(&messages), "{messages} messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_gone_longer_than_its_time_is_mailed_to_its_admin_once_and_again_when_it_is_back() {
    let smtp = PrivateSmtp::start().await;
    let yaml = crate::harness::master_yaml(&[("quiet", "- name: s\n  command: [\"true\"]\n")]);
    let mut stack = TestStack::new(&yaml, &["quiet"]).await;
    set_web_url(&stack);
    let settings = std::fs::read_to_string(&stack.settings_path).unwrap();
    let watched = "    max_builds: 2\n    notify_on_missing: [\"Worker Owner <owner@example.org>\"]\n    missing_timeout_seconds: 4\n";
    std::fs::write(&stack.settings_path, settings.replacen("    max_builds: 2\n", watched, 1)).unwrap();
    let port = smtp.port;
    stack.append_settings(&format!(
        "mail:\n  smtp_host: 127.0.0.1\n  smtp_port: {port}\n  security: none\n  from: buildbot@example.org\n"
    ));
    // Two masters look; one mail is sent.
    stack.start_master("a").await;
    stack.start_master("b").await;
    stack.start_worker("w1");
    stack.wait_for_worker_connected("w1").await;

    stack.kill_worker("w1");
    let gone = Instant::now();
    let mails = stack
        .eventually(30, "the missing mail", async || {
            let mails = smtp.mails();
            (!mails.is_empty()).then_some(mails)
        })
        .await;
    assert!(gone.elapsed() >= Duration::from_secs(3), "not before its time: {:?}", gone.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(smtp.mails().len(), 1, "once, however many masters look: {:?}", smtp.mails());
    let missing = &mails[0];
    for expected in [
        "Subject: buildmaster: worker w1 is missing",
        "To: \"Worker Owner\" <owner@example.org>",
        "Worker w1 was last heard from at",
        "more than 4 seconds ago",
        "https://buildbot.example.org/workers",
    ] {
        assert!(missing.contains(expected), "missing `{expected}` in:\n{missing}");
    }

    stack.start_worker("w1");
    let mails = stack
        .eventually(30, "the back mail", async || {
            let mails = smtp.mails();
            (mails.len() >= 2).then_some(mails)
        })
        .await;
    assert!(mails[1].contains("Subject: buildmaster: worker w1 is back"), "{}", mails[1]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(smtp.mails().len(), 2, "{:?}", smtp.mails());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_a_github_app_statuses_go_with_an_installation_token_bought_with_a_jwt_and_renewed_before_it_expires() {
    let keys = tempfile::tempdir().unwrap();
    let (private_key, public_key) = (keys.path().join("app.pem"), keys.path().join("app.pub"));
    for args in [
        vec!["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", private_key.to_str().unwrap()],
        vec!["pkey", "-in", private_key.to_str().unwrap(), "-pubout", "-out", public_key.to_str().unwrap()],
    ] {
        let output = Command::new("openssl").args(&args).output().unwrap();
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let stand_in = StandIn::default();
    *stand_in.app_public_key.lock().unwrap() = Some(std::fs::read_to_string(&public_key).unwrap());
    // Renewed five minutes before it expires: this one is due in 3 s.
    *stand_in.token_lifetime.lock().unwrap() = Duration::from_secs(5 * 60 + 3);
    let url = github_api::serve(stand_in.clone()).await;
    let mut stack = TestStack::new(&reporters_yaml(), &["good", "bad"]).await;
    set_web_url(&stack);
    stack.append_settings(&format!(
        "github:\n  webhook_secret: a-webhook-secret\n  api_url: {url}\n\
         \x20 app: {{id: 4242, installation_id: 99, private_key_file: {}}}\n\
         secrets:\n  discord_hook: {url}/api/webhooks/1234/webhook-token\n",
        private_key.display()
    ));
    stack.start_master("a").await;
    stack.start_worker("w1");

    let first = stack.wait_for_build(stack.force("good").await).await;
    let rows = settled(&stack, first["buildid"].as_i64().unwrap()).await;
    assert_eq!(row(&rows, "statuses", "finished")["state"], "sent", "{rows:?}");
    assert_eq!(stand_in.installation_tokens.lock().unwrap().len(), 1, "one token for the build's calls");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let second = stack.wait_for_build(stack.force("good").await).await;
    let rows = settled(&stack, second["buildid"].as_i64().unwrap()).await;
    assert_eq!(row(&rows, "statuses", "finished")["state"], "sent", "{rows:?}");
    let tokens = stand_in.installation_tokens.lock().unwrap().clone();
    assert_eq!(tokens, ["ghs_installation-1", "ghs_installation-2"], "renewed once it was near its end");
    let accepted = stand_in.calls("/repos/").into_iter().filter(|call| call.status == 201).count();
    assert!(accepted >= 2, "{accepted} statuses accepted");
}

/// checkconfig on a GitHub App key that cannot be read, or is no key.
#[test]
fn a_github_app_key_that_cannot_be_read_or_is_no_key_is_reported_at_its_line() {
    let master = CHECKED_BUILDERS;
    let settings = |key: &str| {
        format!(
            "{CHECKED_SETTINGS}github:\n  webhook_secret: a-webhook-secret\n  app:\n    id: 4242\n    installation_id: 99\n\
             \x20   private_key_file: {key}\n"
        )
    };
    let stderr = checkconfig(&settings("/nonexistent/app.pem"), master);
    assert!(
        stderr.contains("settings.yaml:12:23: cannot read the GitHub App's private key /nonexistent/app.pem"),
        "{stderr}"
    );
    let not_a_key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_a_key.path(), "hello\n").unwrap();
    let stderr = checkconfig(&settings(&not_a_key.path().display().to_string()), master);
    assert!(stderr.contains("is not a PEM private key"), "{stderr}");
}

/// A pull request's failures: one comment kept and edited, or one per
/// failure, each with the failed step, the end of its log and a link; a
/// comment GitHub made but whose answer was lost is found by its marker,
/// not made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_requests_failures_are_commented_once_each_way_even_when_githubs_answer_is_lost() {
    let stand_in = StandIn::default();
    *stand_in.lose_comment_answers.lock().unwrap() = 2;
    let url = github_api::serve(stand_in.clone()).await;
    let yaml = "factories:\n  noisy:\n    steps:\n      - {name: compile, command: [\"true\"]}\n\
                \x20     - name: test\n        command: [sh, -c, 'printf ''1 test failed:\\n    test_x\\n\\n''; for i in $(seq 1 40); do echo line $i; done; echo FAIL: test_x; exit 1']\n        test_summary: {failed: \"^[0-9]+ tests? failed:$\"}\n\
                builders:\n  - {name: pr, factory: noisy, workers: [w1]}\n  - {name: pr-b, factory: noisy, workers: [w1]}\n\
                schedulers:\n  - {type: force, name: force, builders: [pr, pr-b]}\n\
                reporters:\n\
                \x20 - name: kept\n    pull_requests: only\n    github_comment: {}\n\
                \x20 - name: every\n    pull_requests: only\n    github_comment: {later_failures: add, log_lines: 5}\n";
    let mut stack = TestStack::new(yaml, &["pr", "pr-b"]).await;
    set_web_url(&stack);
    stack.append_settings(&settings_for(&url, TOKEN));
    stack.start_master("a").await;
    stack.start_worker("w1");

    let pull_request = json!({ "properties": {
        "pull_request": 7,
        "repository": "https://github.com/python/cpython",
        "revision": GOOD_SHA,
        "branch": "refs/pull/7/merge",
    }});
    let first = stack.wait_for_build(stack.force_with("pr", pull_request.clone()).await).await;
    assert_eq!(first["results"], 2);
    let rows = settled(&stack, first["buildid"].as_i64().unwrap()).await;
    for reporter in ["kept", "every"] {
        let told = row(&rows, reporter, "finished");
        assert_eq!(told["state"], "sent", "{rows:?}");
        assert!(told["attempts"].as_i64().unwrap() >= 2, "the lost answer was retried: {told}");
    }
    let comments = stand_in.comments.lock().unwrap().clone();
    assert_eq!(comments.len(), 2, "one comment per reporter, though both answers were lost: {comments:#?}");
    let kept = comments.iter().find(|(_, _, body)| body.contains("reporter=kept")).expect("kept's comment").clone();
    let every = comments.iter().find(|(_, _, body)| body.contains("reporter=every")).expect("every's comment").clone();
    assert_eq!((kept.1, every.1), (7, 7), "on pull request 7");
    for expected in [
        ":x: **pr** build 1 ended in **failure** at step `test` (commit 111111111111).\n\nFailed tests: `test_x`.",
        "```\nline 12\n",
        "line 40\nFAIL: test_x\n```",
        &format!("[The build's page]({WEB_URL}builders/pr/builds/1)"),
    ] {
        assert!(kept.2.contains(expected), "missing `{expected}` in:\n{}", kept.2);
    }
    assert!(!kept.2.contains("line 11\n"), "30 lines by default: {}", kept.2);
    assert!(every.2.contains("line 37\nline 38\nline 39\nline 40\nFAIL: test_x"), "{}", every.2);
    assert!(!every.2.contains("line 36"), "five lines only: {}", every.2);

    // The next failure of the builder edits its kept comment (another
    // builder failing at once gets one of its own) and adds one more each.
    let second = stack.force_with("pr", pull_request.clone()).await;
    let other = stack.force_with("pr-b", pull_request).await;
    for request in [second, other] {
        let build = stack.wait_for_build(request).await;
        settled(&stack, build["buildid"].as_i64().unwrap()).await;
    }
    let comments = stand_in.comments.lock().unwrap().clone();
    assert_eq!(comments.len(), 5, "{comments:#?}");
    let edited = comments.iter().find(|(id, _, _)| *id == kept.0).unwrap();
    assert!(edited.2.contains("**pr** build 2 ended in **failure**"), "{}", edited.2);
    let kept_b = comments.iter().filter(|(_, _, body)| body.contains("reporter=kept builder=pr-b")).count();
    assert_eq!(kept_b, 1, "{comments:#?}");
    assert!(
        comments
            .iter()
            .any(|(id, _, body)| *id != every.0 && body.contains("reporter=every") && body.contains("build 2"))
    );
    assert_eq!(
        stand_in.calls("/repos/python/cpython/issues/comments/").len(),
        2,
        "edited: after the lost answer, and now"
    );

    // Not a pull request: nothing is said.
    let plain = stack.wait_for_build(stack.force("pr").await).await;
    let rows = settled(&stack, plain["buildid"].as_i64().unwrap()).await;
    assert_eq!(row(&rows, "kept", "finished")["state"], "skipped");
    assert_eq!(stand_in.comments.lock().unwrap().len(), 5);
}

/// A failed test that failed and passed at one revision of the builder
/// before is said to be known flaky in the pull request's comment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_comment_says_which_failed_tests_are_known_flaky() {
    let stand_in = StandIn::default();
    let url = github_api::serve(stand_in.clone()).await;
    let lists = tempfile::tempdir().unwrap();
    let failing = lists.path().join("failing");
    let yaml = format!(
        "factories:\n  tests:\n    steps:\n      - name: test\n        test_summary: regrtest\n        \
         command: if [ -s {list} ]; then printf '1 test OK.\\n\\n2 tests failed:\\n'; cat {list}; printf '\\n'; exit 2; else printf '2 tests OK.\\n'; fi\n\
         builders:\n  - {{name: pr, factory: tests, workers: [w1]}}\n\
         schedulers:\n  - {{type: force, name: force, builders: [pr]}}\n\
         reporters:\n  - name: kept\n    pull_requests: only\n    github_comment: {{log_lines: 0}}\n",
        list = failing.display()
    );
    let mut stack = TestStack::new(&yaml, &["pr"]).await;
    set_web_url(&stack);
    stack.append_settings(&settings_for(&url, TOKEN));
    stack.start_master("a").await;
    stack.start_worker("w1");
    // At one revision test_flaky fails, then a rebuild passes: flaky.
    let at = |revision: &str| json!({ "properties": { "revision": revision } });
    std::fs::write(&failing, "    test_flaky\n").unwrap();
    stack.wait_for_build(stack.force_with("pr", at("aaaa")).await).await;
    std::fs::write(&failing, "").unwrap();
    stack.wait_for_build(stack.force_with("pr", at("aaaa")).await).await;
    let one_flaky = async || (stack.get("/api/v2/tests/flaky").await["meta"]["total"] == 1).then_some(());
    stack.eventually(30, "test_flaky flaky at aaaa", one_flaky).await;

    // The pull request breaks test_real too; only test_flaky is known flaky.
    std::fs::write(&failing, "    test_flaky test_real\n").unwrap();
    let pull_request = json!({ "properties": {
        "pull_request": 9,
        "repository": "https://github.com/python/cpython",
        "revision": GOOD_SHA,
        "branch": "refs/pull/9/merge",
    }});
    let failed = stack.wait_for_build(stack.force_with("pr", pull_request).await).await;
    assert_eq!(failed["results"], 2);
    let rows = settled(&stack, failed["buildid"].as_i64().unwrap()).await;
    assert_eq!(row(&rows, "kept", "finished")["state"], "sent", "{rows:?}");
    let comments = stand_in.comments.lock().unwrap().clone();
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert!(comments[0].2.contains("Failed tests: `test_flaky` (known flaky), `test_real`."), "{}", comments[0].2);
}

/// Mail through a server that, like most, wants STARTTLS and a login: the
/// certificate is checked (its CA trusted through `SSL_CERT_FILE`), the
/// password from settings.yaml is given, and the mail arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_through_starttls_and_a_login() {
    let smtp = PrivateSmtp::start_secured("buildbot", "an-smtp-password").await;
    let yaml = reporters_yaml().replace(
        "reporters:\n",
        "reporters:\n  - name: list\n    builders: [bad]\n    mail: {to: [python-buildbots@python.org]}\n",
    );
    let mut stack = TestStack::new(&yaml, &["good", "bad"]).await;
    set_web_url(&stack);
    stack.append_settings(&format!(
        "{}mail:\n  smtp_host: localhost\n  smtp_port: {}\n  security: starttls\n\
         \x20 username: buildbot\n  password: an-smtp-password\n  from: buildbot@example.org\n",
        settings_for("http://127.0.0.1:9", TOKEN),
        smtp.port
    ));
    let ca = smtp.ca_file.as_ref().unwrap().display().to_string();
    stack.process_env.push(("SSL_CERT_FILE".into(), ca));
    let a = stack.start_master_process("a").await;
    stack.base_url = format!("http://{a}");
    stack.start_worker("w1");

    let bad = stack.wait_for_build(stack.force("bad").await).await;
    let rows = settled_for(&stack, bad["buildid"].as_i64().unwrap(), "list").await;
    assert_eq!(row(&rows, "list", "finished")["state"], "sent", "{rows:?}");
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].contains(&format!("Subject: buildmaster: bad build {} failure", bad["number"])), "{}", mails[0]);
}

/// As buildbot.python.org does: a stable builder failing on a branch build
/// of one change comments on the pull request that change was merged from,
/// named in its message as `(GH-123)`; a change that names none is not
/// commented anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_build_failing_on_a_merged_pull_request_is_commented_on_that_pull_request() {
    let stand_in = StandIn::default();
    let url = github_api::serve(stand_in.clone()).await;
    let yaml = "factories:\n  broken:\n    steps:\n      - {name: test, command: [sh, -c, 'echo FAIL: test_eval; exit 1']}\n\
                builders:\n  - {name: AMD64 Debian 3.x, factory: broken, workers: [w1], tags: [stable]}\n\
                schedulers:\n  - {type: single_branch, name: main, branch: main, builders: [AMD64 Debian 3.x]}\n\
                reporters:\n\
                \x20 - name: merged\n    tags: [stable]\n    pull_requests: exclude\n\
                \x20   github_comment: {merged_pull_requests: true, later_failures: add}\n";
    let mut stack = TestStack::new(yaml, &["AMD64 Debian 3.x"]).await;
    set_web_url(&stack);
    stack.append_settings(&settings_for(&url, TOKEN));
    stack.start_master("a").await;
    stack.start_worker("w1");

    let merged = "gh-140000: Speed up the eval loop (GH-140123)\n\nCo-authored-by: someone";
    let buildset = crate::console::push(&stack, "p-1", GOOD_SHA, "guido", merged).await;
    let build = &crate::console::finished(&stack, buildset).await["AMD64 Debian 3.x"];
    assert_eq!(build["results"], 2);
    let rows = settled(&stack, build["buildid"].as_i64().unwrap()).await;
    assert_eq!(row(&rows, "merged", "finished")["state"], "sent", "{rows:?}");
    let comments = stand_in.comments.lock().unwrap().clone();
    assert_eq!(comments.len(), 1, "{comments:#?}");
    let (_, number, body) = &comments[0];
    assert_eq!(*number, 140123, "on the pull request the change was merged from");
    assert!(body.contains(":x: **AMD64 Debian 3.x** build 1 ended in **failure** at step `test`"), "{body}");
    assert!(body.contains("FAIL: test_eval"), "the end of the failed step's log: {body}");

    let unnamed = crate::console::push(&stack, "p-2", BAD_SHA, "guido", "Fix a typo in a comment").await;
    let build = &crate::console::finished(&stack, unnamed).await["AMD64 Debian 3.x"];
    assert_eq!(build["results"], 2);
    let rows = settled(&stack, build["buildid"].as_i64().unwrap()).await;
    assert_eq!(row(&rows, "merged", "finished")["state"], "skipped", "{rows:?}");
    assert_eq!(stand_in.comments.lock().unwrap().len(), 1);
}
