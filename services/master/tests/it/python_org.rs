//! buildbot.python.org's configuration, translated (deploy/example/python-org),
//! run by a master: its thousand builders served, and a forced build of a
//! Unix builder on the master's local worker, the way buildbot.python.org's
//! README says to try a change locally (`use_local_worker` with
//! `local_worker_buildfactory`). CPython itself is not cloned (no network
//! here, and a real build takes an hour): a repository stands in for it
//! with the targets `UnixBuild` runs, and checks the options it is given.

use std::path::Path;
use std::process::Command;

use crate::github_api::{self, StandIn};
use crate::harness::{TestStack, free_port, repository_root, try_force};

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git").args(args).current_dir(dir).status().unwrap();
    assert!(status.success(), "git {args:?}");
}

/// A repository with `configure` and the Makefile targets `UnixBuild` runs;
/// `buildbottest` prints what regrtest would and writes a JUnit file.
fn stand_in_cpython(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("cpython");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["config", "uploadpack.allowFilter", "true"]);
    std::fs::write(repo.join("configure"), "#!/bin/sh\necho \"configure $*\"\ntouch Makefile.configured\n").unwrap();
    let makefile = "all:\n\t@test -f Makefile.configured && echo built\n\
                    pythoninfo:\n\t@echo 'sys.version: 3.16.0a0'\n\
                    buildbottest:\n\t@echo \"TESTOPTS=$(TESTOPTS) TESTTIMEOUT=$(TESTTIMEOUT)\"\n\
                    \t@printf '<testsuites><testsuite name=\"test_os\" tests=\"1\"><testcase classname=\"test.test_os\" name=\"test_stat\"/></testsuite></testsuites>' > test-results.xml\n\
                    \t@echo '== Tests result: SUCCESS =='\n\t@echo '1 test OK.'\n\
                    distclean:\n\t@rm -f Makefile.configured test-results.xml\n";
    std::fs::write(repo.join("Makefile"), makefile).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["update-index", "--chmod=+x", "configure"]);
    git(&repo, &["-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "stand-in"]);
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_serves_the_translation_and_builds_a_forced_unix_builder_on_its_local_worker() {
    let example = repository_root().join("deploy/example/python-org");
    let config = shared::config::Config::load(&example.join("settings.yaml")).expect("the translation loads");
    let names: Vec<&str> = config.master.builders.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names.len(), 1036);
    let mut stack = TestStack::new("", &names).await;
    let repo = stand_in_cpython(stack.dir.path());

    // The translation's settings on this test's services, with a local
    // worker; its reporters' targets beside the test (a Discord and GitHub
    // stand-in, an IRC server nobody listens for), and a token for the
    // test's forces, since the translation's authorization wants a role.
    let stand_in = StandIn::default();
    let stand_in_url = github_api::serve(stand_in.clone()).await;
    let (token, token_sha256) = master::auth::new_token();
    let ours: serde_yaml::Mapping =
        serde_yaml::from_str(&std::fs::read_to_string(&stack.settings_path).unwrap()).unwrap();
    let mut settings: serde_yaml::Mapping =
        serde_yaml::from_str(&std::fs::read_to_string(example.join("settings.yaml")).unwrap()).unwrap();
    for key in ["database_url", "amqp_url", "redis_url", "namespace"] {
        settings.insert(key.into(), ours[key].clone());
    }
    let extra: serde_yaml::Mapping = serde_yaml::from_str(&format!(
        "use_local_worker: true\nlocal_worker_buildfactory: UnixBuild\n\
         users: [{{name: test-bot, roles: [admins], token_sha256: [{token_sha256}]}}]\n\
         irc: {{host: 127.0.0.1, port: {irc_port}, tls: false, nickname: py-bb-example, password: x-irc-password, identify: sasl}}\n",
        irc_port = free_port(),
    ))
    .unwrap();
    settings.extend(extra);
    settings["github"]["api_url"] = stand_in_url.clone().into();
    settings["secrets"]["discord_webhook"] = format!("{stand_in_url}/api/webhooks/1/webhook-token").into();
    std::fs::write(&stack.settings_path, serde_yaml::to_string(&settings).unwrap()).unwrap();
    std::fs::copy(example.join("master.yaml"), stack.dir.path().join("master.yaml")).unwrap();
    let factories = std::fs::read_to_string(example.join("factories.yaml"))
        .unwrap()
        .replace("https://github.com/python/cpython", &format!("file://{}", repo.display()));
    std::fs::write(stack.dir.path().join("factories.yaml"), factories).unwrap();

    let started = std::time::Instant::now();
    stack.start_masters_behind_haproxy().await;
    eprintln!("two masters with buildbot.python.org's translation were healthy in {:?}", started.elapsed());
    let page = |path: String| {
        let (http, base) = (stack.http.clone(), stack.base_url.clone());
        async move { http.get(format!("{base}{path}")).send().await.unwrap().text().await.unwrap() }
    };
    let overview = page("/".into()).await;
    assert_eq!(overview.matches("<tr data-builderid=").count(), 1036, "the overview lists every builder");
    let tier1 = page("/?tag=tier-1".into()).await;
    assert!(tier1.contains("AMD64 Debian root 3.x") && !tier1.contains("AMD64 FreeBSD15 3.x"), "tiers are tags");
    let builder = page("/builders/AMD64%20Debian%20root%203.x".into()).await;
    assert!(builder.contains("AMD64 Debian root 3.x"), "{builder}");
    let windows = page("/builders/AMD64%20Windows10%203.14".into()).await;
    assert!(windows.contains("Needs a Windows worker"), "Windows builders say what they need");

    // Forcing wants a role: refused to nobody, done with the test's token,
    // through HAProxy, served by the local worker.
    let refused = try_force(&stack.http, &stack.base_url, "AMD64 Debian root 3.x").await.unwrap_err();
    assert!(refused.contains("401"), "{refused}");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let bot = reqwest::Client::builder().default_headers(headers).build().unwrap();
    let request = try_force(&bot, &stack.base_url, "AMD64 Debian root 3.x").await.unwrap();
    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 0, "SUCCESS: {build}");
    let build_id = build["buildid"].as_i64().unwrap();
    let steps = stack.steps(build_id).await;
    let step_names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(step_names, ["git", "configure", "compile", "pythoninfo", "test", "clean"]);
    let test_log = stack.archived_log(steps[4]["stepid"].as_i64().unwrap()).await;
    let text = String::from_utf8_lossy(&stack.get_bytes(&format!("/api/v2/logs/{}/raw", test_log["logid"])).await)
        .into_owned();
    // angelico-debian-amd64 gives no parallel_tests: -j2, as get_j_opts says.
    assert!(text.contains("TESTOPTS=-j2 --junit-xml test-results.xml  TESTTIMEOUT=1200"), "{text}");
    let properties = stack.get(&format!("/api/v2/builds/{build_id}?property=*")).await;
    let properties = &properties["builds"][0]["properties"];
    assert_eq!(properties["branch"][0], "main", "the 3.x builders build main: {properties}");
    assert_eq!(properties["version"][0], "3.16", "{properties}");

    // A stable builder's build is told in Discord, as on buildbot.python.org.
    let told = stack
        .eventually(30, "the build told in Discord", async || {
            let calls = stand_in.calls("/api/webhooks/");
            calls.into_iter().find(|call| call.status == 200 || call.status == 204)
        })
        .await;
    let content = told.body["content"].as_str().unwrap_or_default();
    assert!(content.contains("AMD64 Debian root 3.x"), "{content}");
}
