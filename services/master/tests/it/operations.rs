//! Operating the stack as its operators do, through `deploy/stack.sh` (what
//! `make update-master` and `make restart-master` run): a rolling restart
//! under load fails no request and loses no build.

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

impl Drop for DeployedStack {
    fn drop(&mut self) {
        let _ = self.run("down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request_and_loses_no_build() {
    let mut stack = TestStack::new(&master_yaml(&[("quick", "- name: hi\n  command: echo hi\n")]), &["quick"]).await;
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
    assert!(failed.is_empty(), "requests failed during the rolling restart: {failed:#?}\n{restart}");
    assert!(forced.len() >= 20, "the load ran through the restart: {} forces", forced.len());
    for request in &forced {
        let build = stack.wait_for_build(*request).await;
        assert_eq!(build["results"], 0, "{build}");
        let builds = stack.builds_of_request(*request).await;
        assert_eq!(builds.len(), 1, "request {request} built once: {builds:?}");
    }
}
