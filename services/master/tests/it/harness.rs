//! A private buildmaster installation per test, on the real services: its
//! own Postgres database, its own namespace of queues, exchanges and Redis
//! keys, its own masters, HAProxy and workers on free ports. Everything is
//! removed when the test ends, so tests run in parallel and never touch a
//! stack someone is using.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use serde_json::{Value, json};
use shared::config::Config;
use shared::names::Namespace;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::servers::ChildGuard;

/// w1's password in every test stack's settings.yaml.
pub const WORKER_PASSWORD: &str = "a-test-password-long-enough";
/// w2's: workers must not share one, or a test of one worker using
/// another's password proves nothing.
pub const OTHER_WORKER_PASSWORD: &str = "another-test-password-long-enough";

/// The password settings.yaml gives the worker `name`.
pub fn password_of(name: &str) -> &'static str {
    if name == "w2" { OTHER_WORKER_PASSWORD } else { WORKER_PASSWORD }
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

pub fn admin_database_url() -> String {
    env_or("BUILDMASTER_TEST_DATABASE_URL", "postgres://buildmaster:buildmaster@127.0.0.1:5432/postgres")
}

pub fn amqp_url() -> String {
    env_or("BUILDMASTER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

pub fn redis_url() -> String {
    env_or("BUILDMASTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/")
}

/// A binary built by `cargo build --workspace --bins` (as `make test` does).
pub fn binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_buildmaster")).with_file_name(name);
    assert!(path.exists(), "{} is missing: run `make test`, which builds every binary first", path.display());
    path
}

pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root exists")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().expect("local addr").port()
}

/// Where a test stack's services are: the machine's shared ones, or private
/// instances of a test's own.
pub struct Services {
    /// A database URL on the Postgres server, for creating the test's database.
    pub admin_database_url: String,
    pub amqp_url: String,
    pub redis_url: String,
}

impl Services {
    pub fn shared() -> Services {
        Services { admin_database_url: admin_database_url(), amqp_url: amqp_url(), redis_url: redis_url() }
    }
}

/// How to start a worker process, beyond its name; `Default` is as
/// `start_worker` does.
#[derive(Default)]
pub struct WorkerLaunch<'a> {
    pub password: Option<&'a str>,
    pub amqp_url: Option<&'a str>,
    pub redis_url: Option<&'a str>,
    /// A command the worker runs under (e.g. `["faketime", "-f", "-10m"]`).
    pub wrapper: &'a [&'a str],
    /// Its directory (where worker.yaml's `basedir: .` points); default
    /// `worker-{name}` in the stack's directory.
    pub basedir: Option<&'a Path>,
}

pub struct TestStack {
    pub dir: tempfile::TempDir,
    pub namespace: String,
    pub database: String,
    pub database_url: String,
    pub settings_path: PathBuf,
    builders: Vec<String>,
    masters: Vec<(CancellationToken, tokio::task::JoinHandle<()>, SocketAddr)>,
    /// Notified to make the in-process masters reload their configuration.
    reloads: Vec<Arc<tokio::sync::Notify>>,
    /// Masters running as `buildmaster start` processes, by name.
    master_processes: Vec<(String, SocketAddr, ChildGuard)>,
    amqp_url: String,
    redis_url: String,
    children: Vec<ChildGuard>,
    workers: Vec<(String, ChildGuard)>,
    pub http: reqwest::Client,
    /// Where requests go: HAProxy once started, else the first master.
    pub base_url: String,
    /// YAML appended to every worker.yaml this stack writes.
    pub worker_yaml_extra: String,
    /// Whether workers log in as their own accounts (settings.yaml then
    /// needs `worker_accounts`) instead of with the URLs' credentials.
    pub worker_own_accounts: bool,
    /// Environment of the master and worker processes this stack starts.
    pub process_env: Vec<(String, String)>,
    /// HAProxy's port when chosen before the masters start (`public_url`).
    public_port: Option<u16>,
}

impl TestStack {
    /// Writes settings.yaml and master.yaml (YAML text of `master_yaml`),
    /// creates the database and applies migrations.
    pub async fn new(master_yaml: &str, builders: &[&str]) -> TestStack {
        Self::with_services(master_yaml, builders, Services::shared()).await
    }

    /// Like `new`, on the given services (private instances for tests that
    /// restart or flush them).
    pub async fn with_services(master_yaml: &str, builders: &[&str], services: Services) -> TestStack {
        let Services { admin_database_url: admin, amqp_url, redis_url } = services;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let namespace = format!("t{}", &id[..12]);
        let database = format!("buildmaster_test_{}", &id[..12]);
        let dir = tempfile::tempdir().expect("temporary directory");
        let (base, _) = admin.rsplit_once('/').expect("database URL has a path");
        let database_url = format!("{base}/{database}");
        let settings = format!(
            "database_url: {database_url}\namqp_url: {amqp}\nredis_url: {redis}\nnamespace: {namespace}\nweb:\n  max_body_bytes: 65536\n\
             workers:\n  - name: w1\n    password: {WORKER_PASSWORD}\n    max_builds: 2\n  - name: w2\n    password: {OTHER_WORKER_PASSWORD}\n\
             builds:\n  lease_seconds: 4\n  heartbeat_seconds: 1\n  redeliver_after_seconds: 2\n  max_retries: 1\n",
            amqp = amqp_url,
            redis = redis_url,
        );
        let settings_path = dir.path().join("settings.yaml");
        std::fs::write(&settings_path, settings).expect("write settings.yaml");
        std::fs::write(dir.path().join("master.yaml"), master_yaml).expect("write master.yaml");
        master::store::upgrade(&database_url).await.expect("upgrade-master on the test database");
        TestStack {
            dir,
            namespace,
            database,
            database_url,
            settings_path,
            builders: builders.iter().map(|b| b.to_string()).collect(),
            masters: Vec::new(),
            reloads: Vec::new(),
            master_processes: Vec::new(),
            amqp_url,
            redis_url,
            children: Vec::new(),
            workers: Vec::new(),
            http: reqwest::Client::new(),
            base_url: String::new(),
            worker_yaml_extra: String::new(),
            worker_own_accounts: false,
            process_env: Vec::new(),
            public_port: None,
        }
    }

    pub fn amqp_url(&self) -> &str {
        &self.amqp_url
    }

    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    /// The address HAProxy will serve on, written as settings.yaml's
    /// `web.url` (sign-in providers send people back there); call before
    /// the masters start.
    pub fn public_url(&mut self) -> String {
        let port = *self.public_port.get_or_insert_with(free_port);
        let url = format!("http://127.0.0.1:{port}");
        let settings = std::fs::read_to_string(&self.settings_path).expect("read settings.yaml");
        let settings = settings.replacen("web:\n", &format!("web:\n  url: {url}/\n"), 1);
        std::fs::write(&self.settings_path, settings).expect("write settings.yaml");
        url
    }

    /// Appends YAML to settings.yaml (before masters start).
    pub fn append_settings(&self, yaml: &str) {
        let mut settings = std::fs::read_to_string(&self.settings_path).expect("read settings.yaml");
        settings.push_str(yaml);
        std::fs::write(&self.settings_path, settings).expect("write settings.yaml");
    }

    pub fn config(&self) -> Config {
        Config::load(&self.settings_path).unwrap_or_else(|errors| panic!("test config is invalid:\n{errors}"))
    }

    /// Starts a master in this process, on a free port.
    pub async fn start_master(&mut self, name: &str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a master port");
        let address = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let config = self.config();
        let master_name = format!("{}-{name}", self.namespace);
        let reload = Arc::new(tokio::sync::Notify::new());
        self.reloads.push(reload.clone());
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                if let Err(error) = master::run(config, master_name, listener, shutdown, reload).await {
                    panic!("master failed: {error}");
                }
            }
        });
        self.masters.push((shutdown, task, address));
        self.wait_healthy(&format!("http://{address}")).await;
        if self.base_url.is_empty() {
            self.base_url = format!("http://{address}");
        }
        address
    }

    /// Stops the in-process master at `address` (graceful, as on SIGTERM)
    /// and waits until it has.
    pub async fn stop_master(&mut self, address: SocketAddr) {
        let index = self.masters.iter().position(|(_, _, at)| *at == address).expect("a master of this stack");
        let (shutdown, task, _) = self.masters.remove(index);
        shutdown.cancel();
        let _ = task.await;
    }

    /// Makes every in-process master reload its configuration files, as
    /// SIGHUP does.
    pub fn reload_masters(&self) {
        for reload in &self.reloads {
            reload.notify_one();
        }
    }

    /// Starts a master as a `buildmaster start` process, which a test can
    /// kill with SIGKILL (`kill_master_process`).
    pub async fn start_master_process(&mut self, name: &str) -> SocketAddr {
        let settings = self.settings_path.clone();
        self.start_master_process_with(name, &settings).await
    }

    /// Starts a master process that reaches RabbitMQ at `amqp_url` (a
    /// proxy) instead, with a settings.yaml of its own.
    pub async fn start_master_process_through(&mut self, name: &str, amqp_url: &str) -> SocketAddr {
        let settings = std::fs::read_to_string(&self.settings_path).expect("read settings.yaml");
        let settings = settings.replace(&format!("amqp_url: {}\n", self.amqp_url), &format!("amqp_url: {amqp_url}\n"));
        let path = self.dir.path().join(format!("settings-{name}.yaml"));
        std::fs::write(&path, settings).expect("write settings.yaml");
        self.start_master_process_with(name, &path).await
    }

    async fn start_master_process_with(&mut self, name: &str, settings: &Path) -> SocketAddr {
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("an address");
        let log = std::fs::File::create(self.dir.path().join(format!("master-{name}.log"))).expect("master log");
        let child = Command::new(binary("buildmaster"))
            .arg("--settings")
            .arg(settings)
            .args(["start", "--listen", &address.to_string(), "--name", &format!("{}-{name}", self.namespace)])
            .envs(self.process_env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("buildmaster starts");
        self.master_processes.push((name.to_owned(), address, ChildGuard(child)));
        self.wait_healthy(&format!("http://{address}")).await;
        address
    }

    /// Kills a master process with SIGKILL: no graceful anything.
    pub fn kill_master_process(&mut self, name: &str) {
        let index = self.master_processes.iter().position(|(n, _, _)| n == name).expect("master was started");
        drop(self.master_processes.remove(index));
    }

    /// Sends SIGTERM to a master process, as a service manager stopping it
    /// would.
    pub fn terminate_master_process(&self, name: &str) {
        let (_, _, master) = self.master_processes.iter().find(|(n, _, _)| n == name).expect("master was started");
        let status = Command::new("kill").arg("-TERM").arg(master.0.id().to_string()).status().expect("kill runs");
        assert!(status.success(), "SIGTERM to master {name}");
    }

    /// Whether a master process has exited.
    pub fn master_process_exited(&mut self, name: &str) -> bool {
        let (_, _, master) = self.master_processes.iter_mut().find(|(n, _, _)| n == name).expect("master was started");
        master.0.try_wait().expect("master status").is_some()
    }

    /// Starts HAProxy with the repository's haproxy.cfg in front of the first
    /// two masters (in this process, then processes); requests go through it
    /// from now on.
    pub async fn start_haproxy(&mut self) {
        let port = self.public_port.unwrap_or_else(free_port);
        let in_process = self.masters.iter().map(|(_, _, address)| address.to_string());
        let processes = self.master_processes.iter().map(|(_, address, _)| address.to_string());
        let masters: Vec<String> = in_process.chain(processes).collect();
        assert!(masters.len() >= 2, "start two masters before HAProxy");
        let child = Command::new("haproxy")
            .args(["-W", "-db", "-f"])
            .arg(repository_root().join("haproxy/haproxy.cfg"))
            .env("BUILDMASTER_HTTP_BIND", format!("127.0.0.1:{port}"))
            .env("BUILDMASTER_MASTER1", &masters[0])
            .env("BUILDMASTER_MASTER2", &masters[1])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts (deploy/services.sh ensure installs it)");
        self.children.push(ChildGuard(child));
        self.base_url = format!("http://127.0.0.1:{port}");
        let url = self.base_url.clone();
        self.wait_healthy(&url).await;
    }

    /// Two masters, `a` and `b`, with HAProxy in front: the usual stack.
    pub async fn start_masters_behind_haproxy(&mut self) {
        self.start_master("a").await;
        self.start_master("b").await;
        self.start_haproxy().await;
    }

    /// Starts a `buildmaster-worker` process with its own worker.yaml.
    pub fn start_worker(&mut self, name: &str) {
        self.start_worker_with_password(name, password_of(name));
    }

    /// Starts a `buildmaster-worker` process named `name` that logs in with
    /// `password`.
    pub fn start_worker_with_password(&mut self, name: &str, password: &str) {
        let launch = WorkerLaunch { password: Some(password), ..WorkerLaunch::default() };
        self.start_worker_with(name, launch);
    }

    /// Starts a `buildmaster-worker` process as `launch` says: through other
    /// service addresses (a proxy), under a wrapper command (a faked clock,
    /// a mount namespace), in a given directory.
    pub fn start_worker_with(&mut self, name: &str, launch: WorkerLaunch<'_>) {
        // Its worker.yaml and log; builds run here too unless `basedir`.
        let home = self.dir.path().join(format!("worker-{name}"));
        std::fs::create_dir_all(&home).expect("worker directory");
        let basedir = launch.basedir.map_or_else(|| ".".to_owned(), |path| path.display().to_string());
        let amqp_url = launch.amqp_url.unwrap_or(&self.amqp_url);
        let redis_url = launch.redis_url.unwrap_or(&self.redis_url);
        let (amqp, redis, login) = if self.worker_own_accounts {
            (without_credentials(amqp_url), without_credentials(redis_url), "")
        } else {
            (amqp_url.to_owned(), redis_url.to_owned(), "login: from_urls\n")
        };
        let password = launch.password.unwrap_or_else(|| password_of(name));
        let config = format!(
            "name: {name}\npassword: {password}\namqp_url: {amqp}\nredis_url: {redis}\nnamespace: {}\nbasedir: {basedir}\n{login}{}",
            self.namespace, self.worker_yaml_extra
        );
        let config_path = home.join("worker.yaml");
        std::fs::write(&config_path, config).expect("write worker.yaml");
        let log = std::fs::File::create(home.join("worker.log")).expect("worker log");
        let mut command = match launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary("buildmaster-worker"));
                command
            }
            None => Command::new(binary("buildmaster-worker")),
        };
        let child = command
            .arg("--config")
            .arg(&config_path)
            .envs(self.process_env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("worker starts");
        self.workers.push((name.to_owned(), ChildGuard(child)));
    }

    /// Kills a worker process with SIGKILL, as a crash would.
    pub fn kill_worker(&mut self, name: &str) {
        let index = self.workers.iter().position(|(n, _)| n == name).expect("worker was started");
        drop(self.workers.remove(index));
    }

    /// Sends SIGTERM to a worker process, as a service manager stopping it
    /// would.
    pub fn terminate_worker(&self, name: &str) {
        let (_, worker) = self.workers.iter().find(|(n, _)| n == name).expect("worker was started");
        let status = Command::new("kill").arg("-TERM").arg(worker.0.id().to_string()).status().expect("kill runs");
        assert!(status.success(), "SIGTERM to worker {name}");
    }

    /// Whether a worker process has exited.
    pub fn worker_exited(&mut self, name: &str) -> bool {
        let (_, worker) = self.workers.iter_mut().find(|(n, _)| n == name).expect("worker was started");
        worker.0.try_wait().expect("worker status").is_some()
    }

    /// Waits until a worker is connected to a master (its presence in the
    /// API); fails the test after 30 s.
    pub async fn wait_for_worker_connected(&self, name: &str) {
        self.eventually(30, &format!("{name} connected"), async || {
            let url = format!("{}/api/v2/workers/{name}", self.base_url);
            let body: Value = self.http.get(url).send().await.ok()?.json().await.ok()?;
            body["workers"][0]["connected_to"].as_array().is_some_and(|c| !c.is_empty()).then_some(())
        })
        .await;
    }

    /// Waits until a worker process has exited; fails the test after 30 s.
    pub async fn wait_for_worker_exit(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.worker_exited(name) {
            assert!(Instant::now() < deadline, "worker {name} did not exit:\n{}", self.worker_logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks `check` every 50 ms until it answers; fails the test after
    /// `seconds`, saying what was awaited and what the workers logged.
    pub async fn eventually<T>(&self, seconds: u64, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(found) = check().await {
                return found;
            }
            assert!(Instant::now() < deadline, "{what}: not within {seconds}s; worker logs:\n{}", self.worker_logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_healthy(&self, base_url: &str) {
        let healthz = format!("{base_url}/healthz");
        self.eventually(30, &format!("{base_url} healthy"), async || {
            self.http.get(&healthz).send().await.is_ok_and(|r| r.status() == 200).then_some(())
        })
        .await
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = self.http.get(format!("{}{path}", self.base_url)).send().await.expect("GET reaches the stack");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "GET {path} answered {status}: {body}");
        body
    }

    pub async fn get_bytes(&self, path: &str) -> Vec<u8> {
        let response = self.http.get(format!("{}{path}", self.base_url)).send().await.expect("GET reaches the stack");
        assert!(response.status().is_success(), "GET {path} answered {}", response.status());
        response.bytes().await.expect("body").to_vec()
    }

    /// Forces one builder with Buildbot's JSON-RPC body; returns the request id.
    /// A JSON-RPC call on `/api/v2{path}` through the stack; its answer,
    /// whatever it is.
    pub async fn rpc(&self, path: &str, method: &str, params: Value) -> Value {
        let body = json!({ "jsonrpc": "2.0", "method": method, "id": 1, "params": params });
        let response = self.http.post(format!("{}/api/v2{path}", self.base_url)).json(&body).send().await;
        response.expect("POST reaches the stack").json().await.unwrap_or(Value::Null)
    }

    /// Forces `builder` with more parameters (`branch`, `priority`,
    /// `properties`...); the request id.
    pub async fn force_with(&self, builder: &str, mut params: Value) -> i64 {
        params["builderNames"] = json!([builder]);
        let answer = self.rpc("/forceschedulers/force", "force", params).await;
        answer["result"][1]
            .as_object()
            .and_then(|ids| ids.values().next()?.as_i64())
            .unwrap_or_else(|| panic!("{answer}"))
    }

    pub async fn force(&self, builder: &str) -> i64 {
        self.force_at(&self.base_url, builder).await
    }

    /// Forces through the master (or proxy) at `base_url`.
    pub async fn force_at(&self, base_url: &str, builder: &str) -> i64 {
        try_force(&self.http, base_url, builder).await.unwrap_or_else(|error| panic!("force of {builder}: {error}"))
    }

    /// Forces `builder` `count` times through the stack's URL, one every
    /// `spacing`, in the background; `burst_outcome` collects the answers.
    pub fn spawn_forces(&self, builder: &str, count: usize, spacing: Duration) -> JoinSet<Result<i64, String>> {
        let mut forces = JoinSet::new();
        for n in 0..count {
            let (http, url, builder) = (self.http.clone(), self.base_url.clone(), builder.to_owned());
            forces.spawn(async move {
                tokio::time::sleep(spacing * n as u32).await;
                try_force(&http, &url, &builder).await
            });
        }
        forces
    }

    /// Polls until the request's build has a first step with a log;
    /// returns the step's and the log's ids.
    pub async fn first_step_log(&self, build_id: i64) -> (i64, i64) {
        self.eventually(30, &format!("the first step's log of build {build_id}"), async || {
            let step = self.steps(build_id).await.into_iter().next()?;
            let logs = self.get(&format!("/api/v2/steps/{}/logs", step["stepid"])).await;
            Some((step["stepid"].as_i64()?, logs["logs"][0]["logid"].as_i64()?))
        })
        .await
    }

    /// The builds of a request, oldest first.
    pub async fn builds_of_request(&self, buildrequest_id: i64) -> Vec<Value> {
        let builds = self.get(&format!("/api/v2/builds?buildrequestid={buildrequest_id}")).await;
        builds["builds"].as_array().expect("builds").clone()
    }

    /// The builds of a request, or `None` while the API answers with an
    /// error (a service restarting), for polling.
    async fn poll_builds_of_request(&self, buildrequest_id: i64) -> Option<Vec<Value>> {
        let url = format!("{}/api/v2/builds?buildrequestid={buildrequest_id}", self.base_url);
        let response = self.http.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let builds: Value = response.json().await.ok()?;
        builds["builds"].as_array().cloned()
    }

    /// Polls until the build of a request is complete; returns it.
    pub async fn wait_for_build(&self, buildrequest_id: i64) -> Value {
        self.eventually(60, &format!("a complete build of request {buildrequest_id}"), async || {
            self.poll_builds_of_request(buildrequest_id).await?.into_iter().find(|b| b["complete"] == true)
        })
        .await
    }

    /// Polls until a worker has claimed the request; returns its build.
    pub async fn wait_for_build_to_start(&self, buildrequest_id: i64) -> Value {
        self.eventually(30, &format!("a build of request {buildrequest_id}"), async || {
            self.poll_builds_of_request(buildrequest_id).await?.into_iter().next()
        })
        .await
    }

    /// Everything the worker processes wrote, for failure messages.
    /// What each worker logged that explains a failure: its warnings and
    /// errors, and its last lines (a burst's thousand routine lines would
    /// push them out of a CI log).
    pub fn worker_logs(&self) -> String {
        const LAST: usize = 20;
        let mut logs = String::new();
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path().join("worker.log")) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines.len().saturating_sub(LAST);
                logs.push_str(&format!("--- {} ({} lines)\n", entry.path().display(), lines.len()));
                for (number, line) in lines.iter().enumerate() {
                    if number >= tail || line.contains(" WARN ") || line.contains(" ERROR ") {
                        logs.push_str(&format!("{number:>6}: {line}\n"));
                    }
                }
            }
        }
        logs
    }

    pub async fn steps(&self, build_id: i64) -> Vec<Value> {
        self.get(&format!("/api/v2/builds/{build_id}/steps")).await["steps"].as_array().expect("steps").clone()
    }

    /// The stdio log of a step, once archived in Postgres.
    pub async fn archived_log(&self, step_id: i64) -> Value {
        self.eventually(30, &format!("the archived log of step {step_id}"), async || {
            let logs = self.get(&format!("/api/v2/steps/{step_id}/logs")).await;
            logs["logs"].as_array().and_then(|l| l.first()).filter(|l| l["complete"] == true).cloned()
        })
        .await
    }

    /// Has RabbitMQ close every connection of this installation (masters and
    /// workers), as a broker restart would, without touching anyone else's.
    /// Returns how many it closed.
    pub fn close_amqp_connections(&self) -> usize {
        let listing = Command::new("rabbitmqctl")
            .args(["list_connections", "-q", "pid", "client_properties"])
            .output()
            .expect("rabbitmqctl runs (deploy/services.sh ensure installs RabbitMQ)");
        let listing = String::from_utf8_lossy(&listing.stdout);
        let mut closed = 0;
        for line in listing.lines().filter(|line| line.contains(&self.namespace)) {
            let pid = line.split_whitespace().next().expect("a pid column");
            let status = Command::new("rabbitmqctl")
                .args(["close_connection", pid, "test: broker connection lost"])
                .status()
                .expect("rabbitmqctl runs");
            assert!(status.success(), "rabbitmqctl close_connection {pid} failed");
            closed += 1;
        }
        closed
    }

    /// Deletes every Redis key of this installation (as a FLUSHALL would,
    /// without touching anyone else's).
    pub async fn delete_redis_keys(&self) -> usize {
        let client = redis::Client::open(self.redis_url.as_str()).expect("redis url");
        let mut connection = client.get_multiplexed_async_connection().await.expect("redis connects");
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}:*", self.namespace)).query_async(&mut connection).await.expect("KEYS");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut connection).await.expect("DEL");
        }
        keys.len()
    }
}

impl Drop for TestStack {
    fn drop(&mut self) {
        for (shutdown, _, _) in &self.masters {
            shutdown.cancel();
        }
        self.children.clear();
        self.workers.clear();
        let namespace = self.namespace.clone();
        let database = self.database.clone();
        let builders = std::mem::take(&mut self.builders);
        // Drop cannot await; clean up on a runtime of its own, bounded: a
        // cleanup that cannot finish leaves a stray database or queue, not
        // a test that never ends.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let removing = remove_installation(&namespace, &database, &builders);
            if runtime.block_on(async { tokio::time::timeout(Duration::from_secs(30), removing).await }).is_err() {
                eprintln!("cleanup of test installation {namespace} gave up after 30 s");
            }
            runtime.shutdown_timeout(Duration::from_secs(5));
        });
        let _ = cleanup.join();
    }
}

async fn remove_installation(namespace: &str, database: &str, builders: &[String]) {
    use sqlx::Connection;
    if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_database_url()).await {
        let statement = format!("drop database if exists \"{database}\" with (force)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut admin).await;
    }
    let ns = Namespace::new(namespace);
    if let Ok(connection) = lapin::Connection::connect(&amqp_url(), Default::default()).await {
        if let Ok(channel) = connection.create_channel().await {
            let mut queues = vec![ns.rpc_queue(), ns.events_queue(), ns.dead_letter_queue()];
            queues.extend(builders.iter().map(|b| ns.builder_queue(b)));
            for queue in queues {
                let _ = channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
            }
            for exchange in [ns.doorbell_exchange(), ns.rpc_exchange(), ns.events_exchange(), ns.dead_letter_exchange()]
            {
                let _ = channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
            }
        }
        let _ = connection.close(200, "test done".into()).await;
    }
    if let Ok(client) = redis::Client::open(redis_url())
        && let Ok(mut connection) = client.get_multiplexed_async_connection().await
    {
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{namespace}:*")).query_async(&mut connection).await.unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query_async(&mut connection).await;
        }
    }
}

/// Runs git in `repo` (with a committer of its own); its output.
pub fn git(repo: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=Tests", "-c", "user.email=tests@example.org", "-c", "init.defaultBranch=main"])
        .args(args)
        .output()
        .expect("git runs (deploy/services.sh ensure installs it)");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// `url` without its `user:password@`.
pub fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

/// Forces `builder` with Buildbot's JSON-RPC body; the request id, or what
/// the stack answered instead.
pub async fn try_force(http: &reqwest::Client, base_url: &str, builder: &str) -> Result<i64, String> {
    let body = json!({
        "jsonrpc": "2.0", "method": "force", "id": 1,
        "params": { "builderNames": [builder], "reason": "test", "owner": "tests" },
    });
    let url = format!("{base_url}/api/v2/forceschedulers/force");
    let response = http.post(url).json(&body).send().await.map_err(|e| format!("POST failed: {e}"))?;
    let status = response.status();
    let answer: Value = response.json().await.map_err(|e| format!("{status} without a JSON answer: {e}"))?;
    if status != 200 {
        return Err(format!("force answered {status}: {answer}"));
    }
    let requests =
        answer["result"][1].as_object().ok_or_else(|| format!("not [bsid, {{builderid: brid}}]: {answer}"))?;
    requests.values().next().and_then(Value::as_i64).ok_or_else(|| format!("no request id in {answer}"))
}

/// Waits for every force of a burst: the accepted request ids, and what the
/// others were answered.
pub async fn burst_outcome(mut forces: JoinSet<Result<i64, String>>) -> (Vec<i64>, Vec<String>) {
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    while let Some(outcome) = forces.join_next().await {
        match outcome.expect("a force task does not panic") {
            Ok(request) => accepted.push(request),
            Err(error) => refused.push(error),
        }
    }
    (accepted, refused)
}

/// A master.yaml with one force scheduler over `builders`, each running the
/// factory of the same name, served by workers w1 and w2.
pub fn master_yaml(factories: &[(&str, &str)]) -> String {
    let mut yaml = String::from("factories:\n");
    for (name, steps) in factories {
        yaml.push_str(&format!("  {name}:\n    steps:\n"));
        for line in steps.lines() {
            yaml.push_str(&format!("      {line}\n"));
        }
    }
    yaml.push_str("builders:\n");
    for (name, _) in factories {
        yaml.push_str(&format!("  - name: {name}\n    factory: {name}\n    workers: [w1, w2]\n"));
    }
    let names: Vec<&str> = factories.iter().map(|(name, _)| *name).collect();
    yaml.push_str(&format!("schedulers:\n  - type: force\n    name: force\n    builders: [{}]\n", names.join(", ")));
    yaml
}
