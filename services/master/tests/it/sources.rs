//! Builds that start from source: the `git` step checks out a branch and a
//! revision of a local repository, builder matrices expand one definition
//! into a builder per branch, and properties (from the matrix, the worker,
//! the force) reach step commands as `%(prop:NAME)s`.

use std::path::Path;

use crate::harness::{TestStack, git};

/// A repository whose `version` file says `one`, then `two` on main, and
/// `feature` on the branch `feature`; returns it and the first commit.
fn repository(dir: &Path) -> (std::path::PathBuf, String) {
    let repo = dir.join("cpython");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("version"), "one\n").unwrap();
    git(&repo, &["add", "version"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(repo.join("version"), "two\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "two"]);
    git(&repo, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(repo.join("version"), "feature\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "feature"]);
    git(&repo, &["checkout", "-q", "main"]);
    (repo, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_of_git_builders_checks_out_each_branch_and_the_forced_revision_with_properties_in_commands() {
    let scratch = tempfile::tempdir().unwrap();
    let (repo, first) = repository(scratch.path());
    let yaml = format!(
        "factories:\n  source:\n    steps:\n\
         \x20     - name: checkout\n        git:\n          repourl: file://{}\n          mode: full\n          shallow: 10\n\
         \x20     - name: show\n        command: cat version; echo %(prop:branch)s -j%(prop:parallel_tests:-1)s %(prop:owner)s\n\
         builders:\n  - name: \"src {{branch}}\"\n    factory: source\n    workers: [w1]\n    tags: [tier-1]\n\
         \x20   matrix:\n      branch: [main, feature, gone]\n    exclude:\n      - {{branch: gone}}\n\
         schedulers:\n  - type: force\n    name: force\n    builders: [\"src main\", \"src feature\"]\n",
        repo.display()
    );
    let mut stack = TestStack::new(&yaml, &["src main", "src feature"]).await;
    // The worker's own property, as buildbot.python.org gives its workers.
    let settings = std::fs::read_to_string(&stack.settings_path).unwrap();
    let settings =
        settings.replacen("    max_builds: 2\n", "    max_builds: 2\n    properties: {parallel_tests: 3}\n", 1);
    std::fs::write(&stack.settings_path, settings).unwrap();
    let builders = stack.config().master.builders;
    let names: Vec<&str> = builders.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["src main", "src feature"], "one builder per branch, `gone` excluded");
    assert!(builders[1].tags.contains(&"feature".to_owned()), "each axis value is a tag");
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");

    let show = async |stack: &TestStack, request: i64| {
        let build = stack.wait_for_build(request).await;
        assert_eq!(build["results"], 0, "{build}\n{}", stack.worker_logs());
        let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
        let log = stack.archived_log(steps[1]["stepid"].as_i64().unwrap()).await;
        String::from_utf8(stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await).unwrap()
    };
    let feature = stack.force("src feature").await;
    assert_eq!(show(&stack, feature).await, "feature\nfeature -j3 tests\n");
    let main = stack.force("src main").await;
    assert_eq!(show(&stack, main).await, "two\nmain -j3 tests\n");

    // A forced revision of the branch.
    let request = stack.force_with("src main", serde_json::json!({ "owner": "someone", "revision": first })).await;
    assert_eq!(show(&stack, request).await, "one\nmain -j3 someone\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_step_that_cannot_fetch_retries_then_fails_or_warns_as_configured() {
    let yaml = "factories:\n  strict:\n    steps:\n      - name: checkout\n        git: {repourl: file:///nonexistent/repo, retries: 1}\n\
                \x20     - name: after\n        command: echo must not run\n\
                \x20 lenient:\n    steps:\n      - name: checkout\n        git: {repourl: file:///nonexistent/repo, retries: 0, on_failure: warnings}\n\
                \x20     - name: after\n        command: echo still runs\n\
                \x20 warn_and_halt:\n    steps:\n      - name: checkout\n        git: {repourl: file:///nonexistent/repo, retries: 0, on_failure: warnings}\n        halt_on_failure: true\n\
                \x20     - name: after\n        command: echo must not run either\n\
                builders:\n  - {name: strict, factory: strict, workers: [w1]}\n  - {name: lenient, factory: lenient, workers: [w1]}\n\
                \x20 - {name: warn_and_halt, factory: warn_and_halt, workers: [w1]}\n\
                schedulers:\n  - {type: force, name: force, builders: [strict, lenient, warn_and_halt]}\n";
    let mut stack = TestStack::new(yaml, &["strict", "lenient", "warn_and_halt"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let strict = stack.force("strict").await;
    let build = stack.wait_for_build(strict).await;
    assert_eq!(build["results"], 2, "FAILURE: {build}");
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    assert_eq!(steps[1]["results"], 3, "the checkout halts the build: the next step is SKIPPED");
    let log = stack.archived_log(steps[0]["stepid"].as_i64().unwrap()).await;
    let text =
        String::from_utf8_lossy(&stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await).into_owned();
    assert!(text.contains("attempt 1 failed; retrying"), "{text}");
    let lenient = stack.force("lenient").await;
    let build = stack.wait_for_build(lenient).await;
    assert_eq!(build["results"], 1, "WARNINGS: {build}");
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    assert_eq!(steps[1]["results"], 0, "a lenient checkout lets the build go on");
    // buildbot.python.org's rule: a checkout that fails warns and stops.
    let gh68 = stack.force("warn_and_halt").await;
    let build = stack.wait_for_build(gh68).await;
    assert_eq!(build["results"], 1, "WARNINGS: {build}");
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    // As in Buildbot: the step failed; the build only warns.
    assert_eq!((steps[0]["results"].clone(), steps[1]["results"].clone()), (2.into(), 3.into()), "{steps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_checkout_is_removed_and_cloned_again_with_clobber_on_failure() {
    let scratch = tempfile::tempdir().unwrap();
    let (repo, _) = repository(scratch.path());
    let url = format!("file://{}", repo.display());
    // Each build breaks the repository it leaves behind, as a full disk or
    // a killed git would.
    let factory = |name: &str, clobber: bool| {
        format!(
            "  {name}:\n    steps:\n      - name: checkout\n        git: {{repourl: \"{url}\", retries: 0, clobber_on_failure: {clobber}}}\n\
             \x20     - name: break\n        command: printf 'not a config' > .git/config && cat version\n"
        )
    };
    let yaml = format!(
        "factories:\n{}{}builders:\n  - {{name: clobbering, factory: clobbering, workers: [w1]}}\n\
         \x20 - {{name: keeping, factory: keeping, workers: [w1]}}\n\
         schedulers:\n  - {{type: force, name: force, builders: [clobbering, keeping]}}\n",
        factory("clobbering", true),
        factory("keeping", false)
    );
    let mut stack = TestStack::new(&yaml, &["clobbering", "keeping"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    for builder in ["clobbering", "keeping"] {
        let first = stack.force(builder).await;
        assert_eq!(stack.wait_for_build(first).await["results"], 0, "{builder}: a fresh clone works");
    }
    let again = stack.force("clobbering").await;
    let build = stack.wait_for_build(again).await;
    assert_eq!(build["results"], 0, "removed and cloned again: {build}");
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    let log = stack.archived_log(steps[0]["stepid"].as_i64().unwrap()).await;
    let text =
        String::from_utf8_lossy(&stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await).into_owned();
    assert!(text.contains("removing the directory and cloning again"), "{text}");
    let kept = stack.force("keeping").await;
    assert_eq!(stack.wait_for_build(kept).await["results"], 2, "without it the broken repository fails the build");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_repository_builds_each_new_commit_once_across_masters() {
    let scratch = tempfile::tempdir().unwrap();
    let (repo, _) = repository(scratch.path());
    let url = format!("file://{}", repo.display());
    let yaml = format!(
        "factories:\n  show:\n    steps:\n      - name: show\n        command: echo %(prop:revision)s\n\
         builders:\n  - {{name: polled, factory: show, workers: [w1]}}\n\
         schedulers:\n  - {{type: single_branch, name: main, branch: main, builders: [polled]}}\n\
         pollers:\n  - {{repourl: \"{url}\", branches: [main], poll_seconds: 1}}\n"
    );
    let mut stack = TestStack::new(&yaml, &["polled"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let changes = async || stack.get("/api/v2/changes").await["changes"].as_array().unwrap().clone();
    stack.eventually(20, "the poller's first look", async || (changes().await.len() == 1).then_some(())).await;
    assert_eq!(stack.get("/api/v2/buildrequests").await["meta"]["total"], 0, "the first look builds nothing");

    let mut commits = Vec::new();
    for text in ["three\n", "four\n"] {
        std::fs::write(repo.join("version"), text).unwrap();
        git(&repo, &["commit", "-q", "-am", text.trim()]);
        commits.push(git(&repo, &["rev-parse", "HEAD"]));
    }
    let seen = stack
        .eventually(30, "both commits as changes", async || {
            let found = changes().await;
            (found.len() == 3).then_some(found)
        })
        .await;
    let revisions: Vec<&str> = seen.iter().skip(1).map(|c| c["revision"].as_str().unwrap()).collect();
    assert_eq!(revisions, commits, "one change per commit, in order");
    let requests = stack
        .eventually(20, "two build requests", async || {
            let body = stack.get("/api/v2/buildrequests?order=buildrequestid").await;
            let requests = body["buildrequests"].as_array().unwrap().clone();
            (requests.len() == 2).then_some(requests)
        })
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(changes().await.len(), 3, "two masters poll; each commit is recorded once");
    assert_eq!(stack.get("/api/v2/buildrequests").await["meta"]["total"], 2, "and built once");
    for (request, commit) in requests.iter().zip(&commits) {
        let build = stack.wait_for_build(request["buildrequestid"].as_i64().unwrap()).await;
        let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
        let log = stack.archived_log(steps[0]["stepid"].as_i64().unwrap()).await;
        let printed = stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await;
        assert_eq!(String::from_utf8(printed).unwrap(), format!("{commit}\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_sets_a_property_later_steps_use_and_steps_run_only_when_their_condition_holds() {
    let yaml = r#"
factories:
  triple:
    steps:
      - {name: triple, command: "echo '  x86_64-pc-linux-gnu  '; echo noise >&2", set_property: triple}
      - {name: argv, command: [sh, -c, 'echo "$1 $2"; pwd', sh, "--build=%(prop:triple)s", "%(prop:evil)s"],
         workdir: "build/%(prop:triple)s"}
      - {name: shell, command: "echo host=%(prop:triple)s-x; echo default=%(prop:unset:-none)s"}
      - {name: env, command: "echo env=$TRIPLE", env: {TRIPLE: "%(prop:triple)s/%(prop:evil)s"}}
      - {name: failing, command: "exit 3", flunk_on_failure: false, warn_on_failure: true}
      - {name: on-failure, command: "echo cleaning up", run_if: {step: failing, results: [FAILURE]}}
      - {name: on-success, command: "echo never", run_if: {step: failing, results: [SUCCESS]}}
      - {name: if-set, command: "echo set", run_if: {property: triple}}
      - {name: if-unset, command: "echo never", run_if: {property: nothing}}
builders:
  - {name: triple, factory: triple, workers: [w1]}
schedulers:
  - {type: force, name: force, builders: [triple]}
"#;
    let mut stack = TestStack::new(yaml, &["triple"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    // A forced value that looks like a reference stays text.
    let request = stack.force_with("triple", serde_json::json!({ "properties": { "evil": "%(prop:triple)s" } })).await;
    let build = stack.wait_for_build(request).await;
    assert_eq!(build["results"], 1, "WARNINGS, from the failing step: {build}");
    let build_id = build["buildid"].as_i64().unwrap();
    let steps = stack.steps(build_id).await;
    let log = async |index: usize| {
        let log = stack.archived_log(steps[index]["stepid"].as_i64().unwrap()).await;
        String::from_utf8_lossy(&stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await).into_owned()
    };
    let argv = log(1).await;
    assert!(argv.contains("--build=x86_64-pc-linux-gnu %(prop:triple)s"), "{argv}");
    assert!(argv.contains("/build/x86_64-pc-linux-gnu\n"), "the workdir too: {argv}");
    let shell = log(2).await;
    assert!(shell.contains("host=x86_64-pc-linux-gnu-x") && shell.contains("default=none"), "{shell}");
    assert!(log(3).await.contains("env=x86_64-pc-linux-gnu/%(prop:triple)s"), "env values too");
    let outcome: Vec<(&str, i64, &str)> = steps
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["results"].as_i64().unwrap(), s["state_string"].as_str().unwrap()))
        .collect();
    assert_eq!(outcome[5], ("on-failure", 0, "exit code 0"));
    assert_eq!(outcome[6], ("on-success", 3, "skipped: failing ended failure"));
    assert_eq!(outcome[7], ("if-set", 0, "exit code 0"));
    assert_eq!(outcome[8], ("if-unset", 3, "skipped: property nothing is not set"));
    let build = stack.get(&format!("/api/v2/builds/{build_id}?property=triple")).await;
    assert_eq!(
        build["builds"][0]["properties"]["triple"],
        serde_json::json!(["x86_64-pc-linux-gnu", "SetPropertyFromCommand"]),
        "kept with the build, only stdout, trimmed"
    );
}
