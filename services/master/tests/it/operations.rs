//! Operating the stack as its operators do, through `deploy/stack.sh` (what
//! `make update-master` and `make restart-master` run): a rolling restart
//! under load fails no request and loses no build; backups restore; a
//! volunteer's worker set-up; retention.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;

use crate::harness::{TestStack, binary, free_port, master_yaml, repository_root, try_force};

/// `deploy/stack.sh` with a test's own ports, run directory, binaries and
/// settings; `down` when dropped, so a failing test leaves nothing running.
struct DeployedStack {
    env: Vec<(&'static str, String)>,
}

impl DeployedStack {
    fn new(stack: &TestStack) -> DeployedStack {
        // A directory that is not a cargo target: stack.sh uses what it holds.
        let bin = stack.dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for name in ["buildmaster", "buildmaster-worker"] {
            std::os::unix::fs::symlink(binary(name), bin.join(name)).unwrap();
        }
        let run: PathBuf = stack.dir.path().join("run");
        let env = vec![
            ("BUILDMASTER_SETTINGS", stack.settings_path.display().to_string()),
            ("BUILDMASTER_BIN_DIR", bin.display().to_string()),
            ("BUILDMASTER_RUN_DIR", run.display().to_string()),
            ("BUILDMASTER_HTTP_BIND", format!("127.0.0.1:{}", free_port())),
            ("BUILDMASTER_MASTER1", format!("127.0.0.1:{}", free_port())),
            ("BUILDMASTER_MASTER2", format!("127.0.0.1:{}", free_port())),
            ("BUILDMASTER_HAPROXY_SOCKET", run.join("haproxy.sock").display().to_string()),
        ];
        DeployedStack { env }
    }

    fn url(&self) -> String {
        let bind = &self.env.iter().find(|(k, _)| *k == "BUILDMASTER_HTTP_BIND").unwrap().1;
        format!("http://{bind}")
    }

    fn run(&self, verb: &str) -> Output {
        Command::new("bash")
            .arg(repository_root().join("deploy/stack.sh"))
            .arg(verb)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("bash runs deploy/stack.sh")
    }

    async fn run_ok(self: &Arc<Self>, verb: &'static str) -> String {
        let stack = self.clone();
        let output = tokio::task::spawn_blocking(move || stack.run(verb)).await.unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "deploy/stack.sh {verb} failed:\n{text}");
        text
    }
}

impl DeployedStack {
    /// The masters' warnings and errors, for a failing test's message.
    fn logs(&self) -> String {
        let run = &self.env.iter().find(|(k, _)| *k == "BUILDMASTER_RUN_DIR").unwrap().1;
        let mut said = String::new();
        for name in ["master-1", "master-2"] {
            let log = std::fs::read_to_string(format!("{run}/logs/{name}.log")).unwrap_or_default();
            for line in
                log.lines().filter(|line| line.contains("WARN") || line.contains("ERROR") || line.contains("===="))
            {
                said.push_str(&format!("{name}: {line}\n"));
            }
        }
        said
    }
}

impl Drop for DeployedStack {
    fn drop(&mut self) {
        let _ = self.run("down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request_and_loses_no_build() {
    let mut stack = TestStack::new(&master_yaml(&[("quick", "- name: hi\n  command: echo hi\n")]), &["quick"]).await;
    // This test is about restarts, not lost workers: a lease longer than the
    // test stack's 4 s, so a machine busy with other tests meanwhile cannot
    // make heartbeats late enough to retry a build.
    let settings = std::fs::read_to_string(&stack.settings_path).unwrap();
    std::fs::write(&stack.settings_path, settings.replace("lease_seconds: 4", "lease_seconds: 30")).unwrap();
    let deployed = Arc::new(DeployedStack::new(&stack));
    deployed.run_ok("up").await;
    stack.base_url = deployed.url();
    stack.start_worker("w1");

    // Load through HAProxy for the whole restart: forces, and the pages a
    // dashboard reads.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load: JoinSet<(Vec<i64>, Vec<String>, usize)> = JoinSet::new();
    for client in 0..2 {
        let (http, url, stop) = (stack.http.clone(), stack.base_url.clone(), stop.clone());
        load.spawn(async move {
            let (mut forced, mut failed, mut reads) = (Vec::new(), Vec::new(), 0);
            while !stop.load(Ordering::Relaxed) {
                match try_force(&http, &url, "quick").await {
                    Ok(request) => forced.push(request),
                    Err(error) => failed.push(format!("force: {error}")),
                }
                for page in ["/api/v2/builders", "/api/v2/builds?order=-buildid&limit=10", "/api/v2/masters"] {
                    match http.get(format!("{url}{page}")).send().await {
                        Ok(response) if response.status().is_success() => reads += 1,
                        Ok(response) => failed.push(format!("GET {page}: {}", response.status())),
                        Err(error) => failed.push(format!("GET {page}: {error}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20 + 10 * client)).await;
            }
            (forced, failed, reads)
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restart = deployed.run_ok("restart").await;
    assert!(restart.contains("draining master-1") && restart.contains("draining master-2"), "{restart}");
    // A rebuilt binary: `make update-master` rolls it out the same way.
    let installed = stack.dir.path().join("bin/buildmaster");
    std::fs::remove_file(&installed).unwrap();
    std::fs::copy(binary("buildmaster"), &installed).unwrap();
    let update = deployed.run_ok("up").await;
    assert!(update.contains("is not what master-2 runs: restarting it"), "{update}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut forced, mut failed, mut reads) = (Vec::new(), Vec::new(), 0);
    while let Some(outcome) = load.join_next().await {
        let (f, e, r) = outcome.unwrap();
        forced.extend(f);
        failed.extend(e);
        reads += r;
    }
    println!("rolling restart under load: {} forces, {reads} reads, {} failed", forced.len(), failed.len());
    assert!(failed.is_empty(), "requests failed during the rolling restarts: {failed:#?}\n{restart}\n{update}");
    assert!(forced.len() >= 20, "the load ran through the restart: {} forces", forced.len());
    for request in &forced {
        let build = stack.wait_for_build(*request).await;
        assert_eq!(build["results"], 0, "{build}\n{}\n{}", deployed.logs(), stack.worker_logs());
        let builds = stack.builds_of_request(*request).await;
        assert_eq!(builds.len(), 1, "request {request} built once: {builds:?}");
    }
}

const BACKED_UP: &str = r#"
factories:
  talk:
    steps:
      - name: say
        command: printf 'hello\nworld\n'; echo uh-oh >&2
      - name: bye
        command: mkdir -p dist; printf 'wheel\000bytes' > dist/a.whl; printf '1 test failed:\n    test_x\n\n'
        test_summary: regrtest
        artifacts: dist/*.whl
builders:
  - name: talk
    factory: talk
    workers: [w1]
  - name: later
    factory: talk
    workers: [w2]
schedulers:
  - type: force
    name: force
    builders: [talk, later]
"#;

fn backup(args: &[&str]) {
    let output = Command::new("bash")
        .arg(repository_root().join("deploy/backup.sh"))
        .args(args)
        .output()
        .expect("bash runs deploy/backup.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "deploy/backup.sh {args:?} failed:\n{text}");
}

/// Everything the API says about a build: the build, its steps, each log's
/// record and bytes, its test results and its artifacts with their bytes.
async fn build_record(stack: &TestStack, build_id: i64) -> serde_json::Value {
    let build = stack.get(&format!("/api/v2/builds/{build_id}?property=*")).await["builds"][0].clone();
    let mut steps = Vec::new();
    for step in stack.steps(build_id).await {
        let logs = stack.get(&format!("/api/v2/steps/{}/logs", step["stepid"])).await["logs"].clone();
        let mut contents = Vec::new();
        for log in logs.as_array().unwrap() {
            let raw = stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await;
            let lines = stack.get(&format!("/api/v2/logs/{}/contents", log["logid"])).await["logchunks"].clone();
            contents.push(serde_json::json!({ "raw": String::from_utf8_lossy(&raw), "lines": lines }));
        }
        steps.push(serde_json::json!({ "step": step, "logs": logs, "contents": contents }));
    }
    let mut tests = Vec::new();
    for set in
        stack.get(&format!("/api/v2/builds/{build_id}/test_result_sets")).await["test_result_sets"].as_array().unwrap()
    {
        let results = stack.get(&format!("/api/v2/test_result_sets/{}/results", set["test_result_setid"])).await;
        tests.push(serde_json::json!({ "set": set, "results": results }));
    }
    let mut artifacts = Vec::new();
    for artifact in stack.get(&format!("/api/v2/builds/{build_id}/artifacts")).await["artifacts"].as_array().unwrap() {
        let bytes = stack.get_bytes(&format!("/api/v2/artifacts/{}/download", artifact["artifactid"])).await;
        artifacts.push(serde_json::json!({ "artifact": artifact, "bytes": bytes }));
    }
    assert!(!tests.is_empty() && !artifacts.is_empty(), "build {build_id} has test results and artifacts");
    serde_json::json!({ "build": build, "steps": steps, "tests": tests, "artifacts": artifacts })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_a_fresh_installation_serves_the_same_history_and_runs_what_was_pending() {
    let mut original = TestStack::new(BACKED_UP, &["talk", "later"]).await;
    original.start_masters_behind_haproxy().await;
    original.start_worker("w1");
    let mut built = Vec::new();
    for _ in 0..3 {
        let request = original.force("talk").await;
        let build_id = original.wait_for_build(request).await["buildid"].as_i64().unwrap();
        // Each step's end recorded too (with its test results, artifacts).
        for step in original.steps(build_id).await {
            original.archived_log(step["stepid"].as_i64().unwrap()).await;
        }
        built.push(build_id);
    }
    // Nobody serves `later` yet: it is pending in the backup.
    let pending = original.force("later").await;
    let mut records = Vec::new();
    for build_id in &built {
        records.push(build_record(&original, *build_id).await);
    }
    let backups = tempfile::tempdir().unwrap();
    let dump = backups.path().join("buildmaster.dump");
    backup(&["dump", &original.database_url, dump.to_str().unwrap()]);
    drop(original);

    // A new installation: its own (empty) database, namespace, queues, keys.
    let mut restored = TestStack::new(BACKED_UP, &["talk", "later"]).await;
    let admin = crate::harness::admin_database_url();
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("drop database \"{}\"", restored.database)))
        .execute(&mut connection)
        .await
        .unwrap();
    backup(&["restore", dump.to_str().unwrap(), &restored.database_url]);
    restored.start_masters_behind_haproxy().await;
    for (build_id, record) in built.iter().zip(&records) {
        assert_eq!(&build_record(&restored, *build_id).await, record, "build {build_id} as it was");
    }
    // The reconciler announces the pending request on the new queues.
    restored.start_worker("w2");
    let build = restored.wait_for_build(pending).await;
    assert_eq!(build["results"], 0, "{build}");
    assert_eq!(build["number"], 1);
    restored.start_worker("w1");
    let next = restored.force("talk").await;
    assert_eq!(restored.wait_for_build_to_start(next).await["number"], 4, "numbering goes on after the restore");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_worker_writes_a_config_a_volunteer_can_run_and_the_worker_tells_who_looks_after_it() {
    let mut stack = TestStack::new(&master_yaml(&[("quick", "- name: hi\n  command: echo hi\n")]), &["quick"]).await;
    stack.start_masters_behind_haproxy().await;
    let basedir = stack.dir.path().join("volunteer");
    let created = Command::new(binary("buildmaster-worker"))
        .arg("create-worker")
        .arg(&basedir)
        .args([stack.amqp_url(), "w1", crate::harness::WORKER_PASSWORD])
        .args(["--redis-url", stack.redis_url(), "--namespace", &stack.namespace])
        .args(["--admin", "Jane Doe <jane@example.org>", "--shared-login"])
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let config = basedir.join("worker.yaml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600, "it holds a password");
    let again = Command::new(binary("buildmaster-worker"))
        .arg("create-worker")
        .arg(&basedir)
        .args([stack.amqp_url(), "w1", "x"])
        .output()
        .unwrap();
    assert!(!again.status.success(), "an existing worker.yaml is not overwritten without --force");

    let _worker = crate::servers::ChildGuard(
        Command::new(binary("buildmaster-worker")).arg("--config").arg(&config).spawn().expect("the worker runs"),
    );
    let worker = stack
        .eventually(30, "w1 connected", async || {
            let body: serde_json::Value =
                stack.http.get(format!("{}/api/v2/workers/w1", stack.base_url)).send().await.ok()?.json().await.ok()?;
            let worker = body["workers"][0].clone();
            worker["connected_to"].as_array().is_some_and(|c| !c.is_empty()).then_some(worker)
        })
        .await;
    assert_eq!(worker["workerinfo"]["admin"], "Jane Doe <jane@example.org>");
    let cpus: usize = worker["workerinfo"]["cpus"].as_str().unwrap().parse().unwrap();
    assert!(cpus >= 1);
    assert!(!worker["workerinfo"]["host"].as_str().unwrap().is_empty());
    let request = stack.force("quick").await;
    assert_eq!(stack.wait_for_build(request).await["results"], 0);
}

/// Sums a metric over Prometheus texts (no labels asked), or takes its
/// largest value.
fn metric(texts: &[String], name: &str, combine: fn(f64, f64) -> f64) -> f64 {
    texts
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == name || series.starts_with(&format!("{name}{{"))).then(|| value.parse::<f64>().ok()).flatten()
        })
        .fold(0.0, combine)
}

async fn scrape(stack: &TestStack, masters: &[std::net::SocketAddr]) -> Vec<String> {
    let mut texts = Vec::new();
    for master in masters {
        texts.push(stack.http.get(format!("http://{master}/metrics")).send().await.unwrap().text().await.unwrap());
    }
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_deleted_by_retention_says_so_and_its_record_stays() {
    let mut stack = TestStack::new(&master_yaml(&[("quick", "- name: hi\n  command: echo hi\n")]), &["quick"]).await;
    stack.append_settings("retention:\n  logs_days: 0\n  interval_seconds: 1\n");
    let master = stack.start_master("a").await;
    stack.start_worker("w1");
    let request = stack.force("quick").await;
    let build = stack.wait_for_build(request).await;
    let (_, log_id) = stack.first_step_log(build["buildid"].as_i64().unwrap()).await;
    let raw = format!("{}/api/v2/logs/{log_id}/raw", stack.base_url);
    let answer = stack
        .eventually(30, "the log's contents pruned", async || {
            let response = stack.http.get(&raw).send().await.ok()?;
            (response.status() == 410).then_some(response)
        })
        .await;
    let body: serde_json::Value = answer.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("deleted") && error.contains("retention.logs_days"), "{error}");
    let contents = stack.http.get(format!("{}/api/v2/logs/{log_id}/contents", stack.base_url)).send().await.unwrap();
    assert_eq!(contents.status(), 410);
    let log = stack.get(&format!("/api/v2/logs/{log_id}")).await;
    assert_eq!(log["logs"][0]["complete"], true, "the record stays: {log}");
    assert_eq!(stack.get(&format!("/api/v2/builds/{}", build["buildid"])).await["builds"][0]["results"], 0);
    let texts = scrape(&stack, &[master]).await;
    assert!(metric(&texts, "buildmaster_retention_deleted_total", |a, b| a + b) >= 1.0, "{}", texts[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_a_million_old_builds_in_short_batches_while_new_builds_complete() {
    const SEEDED: i64 = 1_000_000;
    let postgres = crate::servers::PrivatePostgres::start().await;
    let services = crate::harness::Services {
        admin_database_url: postgres.admin_url(),
        amqp_url: crate::harness::amqp_url(),
        redis_url: crate::harness::redis_url(),
    };
    let yaml = master_yaml(&[("quick", "- name: hi\n  command: echo hi\n")]);
    let mut stack = TestStack::with_services(&yaml, &["quick"], services).await;
    for _ in 0..4 {
        let output = postgres
            .psql(&stack.database)
            .args(["-v", "batch=250000", "-v", "steps=1", "-v", "age=3 days", "-f"])
            .arg(repository_root().join("bench/seed.sql"))
            .output()
            .unwrap();
        assert!(output.status.success(), "seeding: {}", String::from_utf8_lossy(&output.stderr));
    }
    let store = master::store::Store::connect(&stack.database_url, 2, 2).await.unwrap();
    sqlx::query("analyze").execute(store.pool()).await.unwrap();
    let old_builds = async || -> i64 {
        sqlx::query_scalar("select count(*) from builds where started_at < now() - interval '2 days'")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    assert_eq!(old_builds().await, SEEDED);

    stack.append_settings("retention:\n  builds_days: 2\n  batch: 1000\n  interval_seconds: 1\n");
    let a = stack.start_master("a").await;
    let b = stack.start_master("b").await;
    stack.start_haproxy().await;
    stack.start_worker("w1");
    let started = std::time::Instant::now();
    let forces = stack.spawn_forces("quick", 60, Duration::from_millis(500));
    let (accepted, refused) = crate::harness::burst_outcome(forces).await;
    assert!(refused.is_empty(), "{refused:?}");
    for request in &accepted {
        assert_eq!(stack.wait_for_build(*request).await["results"], 0);
    }
    let left_while_forcing = old_builds().await;
    let mut left = left_while_forcing;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while left > 0 {
        assert!(std::time::Instant::now() < deadline, "{left} old builds left after 10 minutes");
        tokio::time::sleep(Duration::from_secs(2)).await;
        left = old_builds().await;
    }
    let took = started.elapsed();
    let texts = scrape(&stack, &[a, b]).await;
    let deleted = metric(&texts, "buildmaster_retention_deleted_total", |x, y| x + y);
    let longest = metric(&texts, "buildmaster_retention_longest_batch_seconds", f64::max);
    let batches = metric(&texts, "buildmaster_retention_batch_seconds_count", |x, y| x + y);
    println!(
        "retention: {SEEDED} old builds deleted in {:.0} s ({batches} batches, longest {:.3} s); \
         {} forced builds completed meanwhile ({} old builds were left when they had)",
        took.as_secs_f64(),
        longest,
        accepted.len(),
        left_while_forcing,
    );
    assert_eq!(deleted, SEEDED as f64, "every old buildset, each counted once");
    let kept: i64 = sqlx::query_scalar("select count(*) from builds").fetch_one(store.pool()).await.unwrap();
    assert_eq!(kept, accepted.len() as i64, "the new builds are kept");
}
