//! The web UI in a real browser: Debian's Chromium, driven over WebDriver by
//! chromedriver, through HAProxy with two masters. Each test writes
//! screenshots of the pages it visits to `target/screenshots/` (or
//! `$BUILDMASTER_SCREENSHOTS`), the artefacts CI keeps.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::harness::{TestStack, free_port, repository_root};
use crate::identity_providers::{GitHub, GitHubPeople};
use crate::servers::ChildGuard;

/// A browser session over the W3C WebDriver protocol.
struct Browser {
    http: reqwest::Client,
    session: String,
    _driver: ChildGuard,
    name: String,
}

impl Browser {
    async fn start(name: &str) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (deploy/services.sh ensure installs chromium-driver)");
        let driver = ChildGuard(driver);
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900"]
            }
        }}});
        let deadline = Instant::now() + Duration::from_secs(30);
        let session = loop {
            match http.post(format!("{base}/session")).json(&capabilities).send().await {
                Ok(response) => {
                    let body: Value = response.json().await.expect("a WebDriver answer");
                    let id = body["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {body}"));
                    break id.to_owned();
                }
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(error) => panic!("chromedriver did not answer: {error}"),
            }
        };
        Browser { http, session: format!("{base}/session/{session}"), _driver: driver, name: name.to_owned() }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.expect("chromedriver answers").json().await.expect("JSON");
        assert!(answer["value"].get("error").is_none(), "WebDriver {path}: {answer}");
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    async fn url(&self) -> String {
        self.command(reqwest::Method::GET, "/url", None).await.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` in the page (a function body; `arguments` are `args`).
    async fn run(&self, script: &str, args: Value) -> Value {
        self.command(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": script, "args": args }))).await
    }

    async fn click(&self, css: &str) {
        let element = self
            .command(reqwest::Method::POST, "/element", Some(json!({ "using": "css selector", "value": css })))
            .await;
        let id = element.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("element id");
        self.command(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({}))).await;
    }

    /// Resizes the window (a phone is 390 by 844).
    async fn resize(&self, width: u32, height: u32) {
        self.command(reqwest::Method::POST, "/window/rect", Some(json!({ "width": width, "height": height }))).await;
    }

    /// Presses and releases `key` (a WebDriver key: `\u{E004}` is Tab,
    /// `\u{E007}` Enter).
    async fn press(&self, key: &str) {
        let actions = json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": [
            { "type": "keyDown", "value": key }, { "type": "keyUp", "value": key }
        ]}]});
        self.command(reqwest::Method::POST, "/actions", Some(actions)).await;
    }

    async fn text(&self, css: &str) -> String {
        let text =
            self.run("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", json!([css]));
        text.await.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until `script` returns something truthy; fails after `seconds`.
    async fn wait_for(&self, seconds: u64, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let value = self.run(script, json!([])).await;
            let truthy = !(value.is_null() || value == json!(false) || value == json!("") || value == json!(0));
            if truthy {
                return value;
            }
            assert!(Instant::now() < deadline, "{what}: not within {seconds}s (at {})", self.url().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves what the browser shows as `<screenshots>/<test>-<page>.png`.
    async fn screenshot(&self, page: &str) -> PathBuf {
        let png = self.command(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        let dir = std::env::var_os("BUILDMASTER_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| repository_root().join("target/screenshots"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}-{page}.png", self.name));
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let http = self.http.clone();
        let session = self.session.clone();
        // Best effort: the driver process is killed right after anyway.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async { http.delete(session).send().await.ok() });
        })
        .join();
    }
}

const LIVE_YAML: &str = "factories:\n  slow:\n    steps:\n      - name: print\n        command: \
    for i in 1 2 3 4 5 6 7 8; do printf 'line %s\\n' $i; if [ $i = 2 ]; then printf 'oops\\n' >&2; fi; sleep 0.5; done\n\
  \x20 sleeper:\n    steps:\n      - name: sleep\n        command: echo started; sleep 300\n\
    builders:\n  - name: slow\n    factory: slow\n    workers: [w1]\n    tags: [stable]\n\
  \x20 - name: sleeper\n    factory: sleeper\n    workers: [w1]\n\
  \x20 - name: waiting\n    factory: slow\n    workers: [w2]\n\
    schedulers:\n  - type: force\n    name: force\n    builders: [slow, sleeper, waiting]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_from_the_builder_page_shows_the_log_live_and_the_result_without_reloading() {
    let mut stack = TestStack::new(LIVE_YAML, &["slow", "sleeper", "waiting"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let base = stack.base_url.clone();
    let browser = Browser::start("force").await;

    browser.goto(&format!("{base}/builders/slow")).await;
    browser.wait_for(10, "the force form", "return document.querySelector('#force button')").await;
    browser.screenshot("builder").await;
    browser.click("#force button").await;
    browser.wait_for(30, "the build page", "return location.pathname === '/builders/slow/builds/1'").await;
    // The page must not reload from here on: a marker would be lost.
    browser.run("window.stayed = true;", json!([])).await;
    let seen = browser
        .wait_for(
            30,
            "line 2 while the step runs",
            "const text = document.querySelector('pre.lines')?.textContent || ''; \
             const result = document.getElementById('result').textContent; \
             return text.includes('line 2') ? result : null;",
        )
        .await;
    assert_eq!(seen, "running", "the line arrived while the build was running");
    let stderr = browser.text("pre.lines .ch-e .text").await;
    assert_eq!(stderr, "oops", "stderr is told apart from stdout");
    browser.screenshot("build-running").await;
    browser
        .wait_for(
            30,
            "the result to turn to success",
            "return document.getElementById('result').textContent === 'success'",
        )
        .await;
    assert_eq!(browser.run("return window.stayed === true", json!([])).await, true, "no reload happened");
    let counts = browser
        .run(
            "return [document.querySelectorAll('pre.lines .ch-o').length, document.querySelectorAll('pre.lines .ch-e').length]",
            json!([]),
        )
        .await;
    assert_eq!(counts, json!([8, 1]), "8 lines of stdout and one of stderr, each once");
    browser.screenshot("build-finished").await;

    // A linkable line number.
    browser.goto(&format!("{}#{}", browser.url().await.split('#').next().unwrap(), "log1-L3")).await;
    browser.run("location.reload()", json!([])).await;
    browser.wait_for(10, "line 3 marked", "return document.querySelector('.line.target')?.id").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_on_a_running_build_kills_it_and_the_page_shows_cancelled() {
    let mut stack = TestStack::new(LIVE_YAML, &["slow", "sleeper", "waiting"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let request = stack.force("sleeper").await;
    let build = stack.wait_for_build_to_start(request).await;
    let base = stack.base_url.clone();
    let browser = Browser::start("stop").await;
    browser.goto(&format!("{base}/builders/sleeper/builds/{}", build["number"])).await;
    browser
        .wait_for(
            30,
            "the step's first line",
            "return (document.querySelector('pre.lines')?.textContent || '').includes('started')",
        )
        .await;
    browser.click("#stop").await;
    browser.wait_for(30, "CANCELLED", "return document.getElementById('result').textContent === 'cancelled'").await;
    assert_eq!(stack.wait_for_build(request).await["results"], 6, "the build ended CANCELLED");
    browser.wait_for(10, "the Rebuild button", "return !document.getElementById('rebuild').hidden").await;
    browser.screenshot("build-cancelled").await;

    // The other pages, for the artefacts: workers, the queue (a request for
    // a worker that is not running waits there), the login form.
    stack.force("waiting").await;
    for (path, page, ready) in [
        ("/workers", "workers", "return document.querySelector('table.workers tbody tr')"),
        ("/queue", "queue", "return document.querySelector('section.queue li')"),
        ("/login", "login", "return document.querySelector('main h1')"),
    ] {
        browser.goto(&format!("{base}{path}")).await;
        browser.wait_for(10, page, ready).await;
        browser.screenshot(page).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_of_a_thousand_builders_renders_and_its_cells_link_to_real_builds() {
    const BUILDERS: usize = 1000;
    let names: Vec<String> = (0..BUILDERS).map(|i| format!("builder-{i:04}")).collect();
    let mut yaml =
        String::from("factories:\n  quick:\n    steps:\n      - name: hi\n        command: echo hi\nbuilders:\n");
    for (i, name) in names.iter().enumerate() {
        // A few served by the running worker, the rest by one never started.
        let worker = if i % 250 == 0 { "w1" } else { "w2" };
        let tag = if i % 2 == 0 { "tier-1" } else { "tier-2" };
        yaml.push_str(&format!("  - name: {name}\n    factory: quick\n    workers: [{worker}]\n    tags: [{tag}]\n"));
    }
    yaml.push_str(&format!("schedulers:\n  - type: force\n    name: force\n    builders: [{}]\n", names.join(", ")));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut stack = TestStack::new(&yaml, &refs).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let mut built = Vec::new();
    for name in ["builder-0000", "builder-0250", "builder-0500"] {
        let request = stack.force(name).await;
        built.push((name, stack.wait_for_build(request).await));
    }
    let base = stack.base_url.clone();
    let browser = Browser::start("overview").await;
    let started = Instant::now();
    browser.goto(&format!("{base}/")).await;
    let rows = browser.wait_for(30, "the grid", "return document.querySelectorAll('table.grid tbody tr').length").await;
    eprintln!("overview of {BUILDERS} builders loaded in the browser in {:?}", started.elapsed());
    assert_eq!(rows, BUILDERS);
    browser.screenshot("overview").await;
    for (name, build) in &built {
        let href = browser
            .run(
                "const row = document.querySelector(`tr[data-builder='${arguments[0]}']`); \
                 return row.querySelector('a.cell').getAttribute('href');",
                json!([name]),
            )
            .await;
        assert_eq!(href, format!("/builders/{name}/builds/{}", build["number"]));
    }
    browser.click("tr[data-builder='builder-0250'] a.cell").await;
    browser.wait_for(10, "the build page", "return document.getElementById('result')?.textContent === 'success'").await;
    assert_eq!(browser.url().await, format!("{base}/builders/builder-0250/builds/1"));
    // The tag filter keeps half.
    browser.goto(&format!("{base}/?tag=tier-1")).await;
    let rows = browser
        .wait_for(30, "the filtered grid", "return document.querySelectorAll('table.grid tbody tr').length")
        .await;
    assert_eq!(rows, BUILDERS / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifty_megabyte_log_opens_at_its_tail_and_pages_back() {
    // 50 MB in 625,000 numbered lines of 80 bytes.
    let yaml = "factories:\n  big:\n    steps:\n      - name: print\n        command: \
                seq -f '%079g' 1 625000\nbuilders:\n  - name: big\n    factory: big\n    workers: [w1]\n\
                schedulers:\n  - type: force\n    name: force\n    builders: [big]\n";
    let mut stack = TestStack::new(yaml, &["big"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let request = stack.force("big").await;
    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 0, "{build}");
    let base = stack.base_url.clone();
    let browser = Browser::start("big-log").await;
    browser.goto(&format!("{base}/builders/big/builds/1")).await;
    browser.run("document.querySelector('li.step details').open = true;", json!([])).await;
    let shown =
        browser.wait_for(30, "the log's tail", "return document.querySelectorAll('pre.lines .line').length").await;
    assert_eq!(shown, 1000, "only the last 1,000 lines are in the page");
    let last = browser
        .run("return [...document.querySelectorAll('pre.lines .ch-o .text')].pop().textContent", json!([]))
        .await;
    assert_eq!(last, format!("{:079}", 625000), "the tail is the log's end");
    browser.click("button.earlier").await;
    browser
        .wait_for(30, "1,000 earlier lines", "return document.querySelectorAll('pre.lines .line').length === 2000")
        .await;
    // The printed lines shown are consecutive and end with the last one.
    let found = browser
        .run(
            "const lines = document.querySelectorAll('pre.lines .ch-o .text'); \
             return [Number(lines[0].textContent), lines.length];",
            json!([]),
        )
        .await;
    let (first, count) = (found[0].as_i64().unwrap(), found[1].as_i64().unwrap());
    assert_eq!(first + count - 1, 625000, "earlier lines come before, in order, none missing");
    browser.screenshot("build").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_with_two_thousand_failed_tests_shows_them_first_and_each_opens_its_log_line() {
    const FAILED: usize = 2000;
    // The runner names each failed test in its output, after 5,000 lines
    // of noise, so the log is longer than the page shows at first.
    let yaml = "factories:\n  many:\n    steps:\n      - name: test\n        command: \
                \"seq -f 'noise %g' 1 5000; seq -f 'FAIL: test_case_%04g' 0 1999; exit 1\"\n        \
                test_results: junit.xml\nbuilders:\n  - name: many\n    factory: many\n    workers: [w1]\n\
                schedulers:\n  - type: force\n    name: force\n    builders: [many]\n";
    let mut stack = TestStack::new(yaml, &["many"]).await;
    let mut junit = String::from("<testsuite name=\"many\">\n");
    for i in 0..FAILED + 100 {
        if i < FAILED {
            junit.push_str(&format!(
                "<testcase classname=\"suite.Many\" name=\"test_case_{i:04}\" time=\"0.01\">\
                 <failure message=\"case {i} failed: expected {i}, got {}\">trace {i}</failure></testcase>\n",
                i + 1
            ));
        } else {
            junit.push_str(&format!("<testcase classname=\"suite.Many\" name=\"test_ok_{i}\" time=\"0.01\"/>\n"));
        }
    }
    junit.push_str("</testsuite>\n");
    let workdir = stack.dir.path().join("worker-w1/many/build");
    std::fs::create_dir_all(&workdir).unwrap();
    std::fs::write(workdir.join("junit.xml"), junit).unwrap();
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let build = stack.wait_for_build(stack.force("many").await).await;
    assert_eq!(build["results"], 2, "{build}");
    let step_id = stack.steps(build["buildid"].as_i64().unwrap()).await[0]["stepid"].as_i64().unwrap();
    stack.archived_log(step_id).await;

    let browser = Browser::start("many-failures").await;
    let started = Instant::now();
    browser.goto(&format!("{}/builders/many/builds/1", stack.base_url)).await;
    let shown =
        browser.wait_for(30, "the failed tests", "return document.querySelectorAll('ul.failed-tests li').length").await;
    eprintln!("build page with {FAILED} failed tests shown after {:?}", started.elapsed());
    assert_eq!(shown, FAILED);
    // Failures come before the steps, the first one first, with its message.
    let order = browser
        .run(
            "const headings = [...document.querySelectorAll('main h2')].map(h => h.textContent); \
             const first = document.querySelector('ul.failed-tests li'); \
             return [headings, first.querySelector('code').textContent, first.querySelector('pre.message').textContent];",
            json!([]),
        )
        .await;
    assert_eq!(order[0][0], "Tests", "{order}");
    assert_eq!(order[1], "test_case_0000");
    assert_eq!(order[2], "case 0 failed: expected 0, got 1");
    browser.screenshot("failures").await;

    // The page answers: a failed test far from the log's tail opens its line.
    let started = Instant::now();
    browser.run("document.querySelectorAll('ul.failed-tests li a')[10].click();", json!([])).await;
    let target = browser
        .wait_for(
            30,
            "the test's line in the log",
            "return document.querySelector('pre.lines .line.target .text')?.textContent",
        )
        .await;
    eprintln!("failed test's log line shown after {:?}", started.elapsed());
    assert_eq!(target, "FAIL: test_case_0010");
    browser.screenshot("failure-line").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_with_github_in_the_browser_comes_back_signed_in_with_team_roles_and_forces() {
    let mut stack = TestStack::new(LIVE_YAML, &["slow", "sleeper", "waiting"]).await;
    stack.public_url();
    let mut people = GitHubPeople::default();
    people.organizations.insert("alice".into(), vec!["python".into()]);
    people.teams.insert("alice".into(), vec!["python/core-developers".into()]);
    let github = GitHub::start(people).await;
    stack.append_settings(&format!("sign_in:\n{}authorization:\n  force: [developers]\n", github.settings_yaml(900)));
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let base = stack.base_url.clone();
    let browser = Browser::start("sign-in").await;

    browser.goto(&format!("{base}/builders/slow")).await;
    browser.wait_for(10, "the log in link", "return document.querySelector('#who a')?.textContent === 'log in'").await;
    browser.click("#who a").await;
    browser.wait_for(10, "the login page", "return document.querySelector('a.sign-in')").await;
    assert_eq!(browser.text("a.sign-in").await, "Sign in with GitHub");
    browser.screenshot("login").await;
    browser.click("a.sign-in").await;
    browser.wait_for(10, "GitHub's authorize page", "return document.getElementById('authorize')").await;
    assert!(browser.url().await.starts_with(&github.url), "the browser is at GitHub");
    browser.run("document.getElementById('login').value = 'alice';", json!([])).await;
    browser.click("#authorize").await;
    browser
        .wait_for(15, "back on the builder page, signed in", "return document.querySelector('#who .user')?.textContent")
        .await;
    assert_eq!(browser.url().await, format!("{base}/builders/slow"), "back where the sign-in started");
    assert_eq!(browser.text("#who .user").await, "alice");
    assert_eq!(browser.text("#who .roles").await, " (developers, members)");
    browser.screenshot("signed-in").await;

    // Her team lets her force from the page.
    browser.wait_for(10, "the force form", "return document.querySelector('#force button')").await;
    browser.click("#force button").await;
    browser.wait_for(30, "the build page", "return location.pathname === '/builders/slow/builds/1'").await;
    let build = stack.get("/api/v2/builds/1?property=owner").await;
    assert_eq!(build["builds"][0]["properties"]["owner"][0], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_push_that_broke_two_of_four_builders_as_its_row_with_two_red_cells() {
    let (stack, _, _) = crate::console::stack_with_two_pushes().await;
    let newest = stack.get("/api/v2/changes?order=-changeid&limit=1").await;
    let change = newest["changes"][0]["changeid"].as_i64().unwrap();
    let browser = Browser::start("console").await;
    browser.goto(&format!("{}/console?branch=main", stack.base_url)).await;
    let row = format!("#change-{change}");
    browser.wait_for(10, "the change's row", &format!("return document.querySelector('{row}')")).await;
    let cells = browser
        .run(
            "const row = document.querySelector(arguments[0]); \
             return [...row.querySelectorAll('td.cell')].map(td => [td.className, td.textContent]);",
            json!([row]),
        )
        .await;
    // Columns grouped by tag: stable (compile, tests), then unstable.
    let classes: Vec<&str> = cells.as_array().unwrap().iter().map(|cell| cell[0].as_str().unwrap()).collect();
    assert_eq!(classes, ["cell r2 broke", "cell r2 broke", "cell r0", "cell r0"], "{cells}");
    assert_eq!(browser.text(&format!("{row} .author")).await, "mallory", "the change names its author");
    assert_eq!(browser.text(&format!("{row} .comment")).await, "Break two builders");
    let groups =
        browser.run("return [...document.querySelectorAll('tr.groups th')].map(th => th.textContent)", json!([])).await;
    assert_eq!(groups, json!(["", "stable", "unstable"]));
    // The previous change's row is all green, and each cell opens its build.
    let older = browser
        .run(
            "return [...document.querySelectorAll('tbody tr')[1].querySelectorAll('td.cell')].map(td => td.className)",
            json!([]),
        )
        .await;
    assert_eq!(older, json!(["cell r0", "cell r0", "cell r0", "cell r0"]));
    browser.screenshot("console").await;
    browser.click(&format!("{row} td.broke a")).await;
    browser.wait_for(10, "the build that broke", "return location.pathname === '/builders/compile/builds/2'").await;
    // Its page names the change it built: who broke it.
    browser.wait_for(10, "the build's changes", "return document.querySelector('#changes .author')").await;
    assert_eq!(browser.text("#changes .author").await, "mallory");
    // Narrowed to a tag: only its builders' columns and cells.
    browser.goto(&format!("{}/console?branch=main&tag=stable", stack.base_url)).await;
    browser.wait_for(10, "the change's row", &format!("return document.querySelector('{row}')")).await;
    let narrowed = browser
        .run(
            "return [...document.querySelector(arguments[0]).querySelectorAll('td.cell')].map(td => td.className)",
            json!([row]),
        )
        .await;
    assert_eq!(narrowed, json!(["cell r2 broke", "cell r2 broke"]));

    // The builder's chart: one point per build, in its result's colour.
    browser.goto(&format!("{}/builders/compile", stack.base_url)).await;
    let points = browser
        .wait_for(
            10,
            "the duration chart",
            "const points = document.querySelectorAll('svg#builder-durations circle.point'); \
             return points.length ? [...points].map(p => [p.dataset.number, p.getAttribute('fill')]) : null;",
        )
        .await;
    assert_eq!(points, json!([["1", "#2e7d32"], ["2", "#c62828"]]), "builds #1 (passed) and #2 (failed)");
    browser.screenshot("builder-chart").await;

    // The waterfall of the last hour: a bar per build, failures red,
    // columns by builder name.
    browser.goto(&format!("{}/waterfall?hours=1", stack.base_url)).await;
    let bars = browser
        .wait_for(
            10,
            "the waterfall",
            "const bars = document.querySelectorAll('svg#waterfall rect.build'); \
             return bars.length ? [...bars].map(b => b.dataset.builder + '#' + b.dataset.number + ' ' + b.getAttribute('fill')).sort() : null;",
        )
        .await;
    assert_eq!(
        bars,
        json!([
            "compile#1 #2e7d32",
            "compile#2 #c62828",
            "docs#1 #2e7d32",
            "docs#2 #2e7d32",
            "lint#1 #2e7d32",
            "lint#2 #2e7d32",
            "tests#1 #2e7d32",
            "tests#2 #c62828"
        ])
    );
    let columns = browser
        .run("return [...document.querySelectorAll('svg#waterfall text.builder')].map(t => t.textContent)", json!([]))
        .await;
    assert_eq!(columns, json!(["compile", "docs", "lint", "tests"]));
    browser.screenshot("waterfall").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_board_turns_red_when_a_stable_builder_fails_and_green_after_a_fix() {
    let (stack, _, _) = crate::console::stack_with_two_pushes().await;
    let browser = Browser::start("release").await;
    let board = format!("{}/release", stack.base_url);
    browser.goto(&board).await;
    browser.wait_for(10, "the board", "return document.querySelector('#branch-main .summary')").await;
    assert_eq!(
        browser.text("#branch-main .summary").await,
        "main: 2 of 2 builders red (compile, tests)",
        "only the stable builders count"
    );
    assert_eq!(browser.text("#branch-main h2 .badge").await, "red");
    let rows = browser
        .run(
            "return [...document.querySelectorAll('#branch-main tbody tr')].map(tr => \
             [tr.cells[0].textContent, tr.className, tr.cells[2].textContent.split(',')[0], tr.cells[3].textContent])",
            json!([]),
        )
        .await;
    assert_eq!(
        rows,
        json!([
            ["compile", "r2 red", "#2", "steps: checktest_eval"],
            ["tests", "r2 red", "#2", "steps: checktest_eval"]
        ]),
        "red since the build that broke it, with the step and the test that failed"
    );
    assert_eq!(
        browser.text("#branch-3\\.14 .summary").await,
        "3.14: no builder of these tags has built it lately; 2 with no recent build of it"
    );
    browser.screenshot("red").await;

    // A fix lands: both go green.
    let fix =
        crate::console::push(&stack, "p-fix", "fix5555555555555555555555555555555555555", "guido", "Fix it").await;
    crate::console::finished(&stack, fix).await;
    browser.goto(&board).await;
    browser.wait_for(10, "the board", "return document.querySelector('#branch-main .summary')").await;
    assert_eq!(browser.text("#branch-main .summary").await, "main: all 2 builders green");
    assert_eq!(browser.text("#branch-main h2 .badge").await, "green");
    browser.screenshot("green").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_fits_a_phone_and_a_build_is_forced_with_the_keyboard_alone() {
    let (stack, _, _) = crate::console::stack_with_two_pushes().await;
    let browser = Browser::start("phone").await;
    browser.resize(390, 844).await;
    let base = stack.base_url.clone();
    for (path, ready) in [
        ("/", "table.grid"),
        ("/builders/compile", "#force button"),
        ("/builders/compile/builds/2", "#steps"),
        ("/console", "table.console"),
        ("/waterfall", "svg#waterfall"),
        ("/release", "#branch-main"),
        ("/tests", "h1"),
        ("/workers", "table.workers"),
        ("/queue", "svg#queue-history"),
        ("/login", "h1"),
    ] {
        browser.goto(&format!("{base}{path}")).await;
        browser.wait_for(10, path, &format!("return document.querySelector('{ready}')")).await;
        let widths = browser.run("return [document.documentElement.scrollWidth, window.innerWidth]", json!([])).await;
        let (page, window) = (widths[0].as_i64().unwrap(), widths[1].as_i64().unwrap());
        assert!(page <= window, "{path} is {page} px wide on a {window} px phone: wide parts must scroll on their own");
        let name = path.trim_matches('/').replace('/', "-");
        browser.screenshot(if name.is_empty() { "overview" } else { &name }).await;
    }

    // Tab to the Force button and press Enter: the build page opens.
    browser.goto(&format!("{base}/builders/docs")).await;
    browser.wait_for(10, "the force form", "return document.querySelector('#force button')").await;
    let mut reached = false;
    for _ in 0..60 {
        browser.press("\u{E004}").await;
        let focused =
            browser.run("return document.activeElement === document.querySelector('#force button')", json!([])).await;
        if focused == json!(true) {
            reached = true;
            break;
        }
    }
    assert!(reached, "the Force button is reached with Tab");
    let outline = browser.run("return getComputedStyle(document.activeElement).outlineStyle", json!([])).await;
    assert_eq!(outline, "solid", "the focused control shows it");
    browser.press("\u{E007}").await;
    browser.wait_for(30, "the forced build's page", "return location.pathname === '/builders/docs/builds/3'").await;
}
