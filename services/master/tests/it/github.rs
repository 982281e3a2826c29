//! GitHub's webhook as buildbot.python.org uses it: a signed push builds the
//! pushed revision through the git step; a bad signature changes nothing;
//! the pull-request label builds only the stable builders; a `!buildbot`
//! comment from someone who may write builds the matching ones. GitHub's
//! API (who may write, pull requests, labels, comments) is the stand-in of
//! `github_api`.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::github_api::{self, StandIn, TOKEN};
use crate::harness::{TestStack, git};

pub const SECRET: &str = "a-webhook-secret";

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let digest: String = mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256={digest}")
}

/// Sends one delivery; (status, answer).
pub async fn deliver(
    stack: &TestStack,
    event: &str,
    delivery: &str,
    payload: &Value,
    signature: Option<&str>,
) -> (u16, Value) {
    let body = serde_json::to_vec(payload).unwrap();
    let signature = signature.map(str::to_owned).unwrap_or_else(|| sign(&body));
    let response = stack
        .http
        .post(format!("{}/change_hook/github", stack.base_url))
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn requests_total(stack: &TestStack) -> i64 {
    stack.get("/api/v2/buildrequests").await["meta"]["total"].as_i64().unwrap()
}

/// The builders of the buildsets a delivery made.
async fn built_by(stack: &TestStack, answer: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for buildset in answer["buildsets"].as_array().unwrap() {
        let requests = stack.get(&format!("/api/v2/buildrequests?buildsetid={buildset}")).await;
        for request in requests["buildrequests"].as_array().unwrap() {
            let builder = stack.get(&format!("/api/v2/builders/{}", request["builderid"])).await;
            names.push(builder["builders"][0]["name"].as_str().unwrap().to_owned());
        }
    }
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_pushes_labels_and_comments_build_what_buildbot_python_org_would() {
    let scratch = tempfile::tempdir().unwrap();
    let repo = scratch.path().join("cpython");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("version"), "one\n").unwrap();
    git(&repo, &["add", "version"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    std::fs::write(repo.join("version"), "two\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "two"]);
    let pushed = git(&repo, &["rev-parse", "HEAD"]);
    // A pull request's merge ref, as GitHub keeps it.
    git(&repo, &["checkout", "-q", "-b", "pr"]);
    std::fs::write(repo.join("version"), "pull request\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "pr"]);
    let merge = git(&repo, &["rev-parse", "HEAD"]);
    git(&repo, &["update-ref", "refs/pull/7/merge", &merge]);
    git(&repo, &["checkout", "-q", "main"]);

    let steps = "    steps:\n      - name: checkout\n        git: {repourl: \"%(prop:repository)s\", mode: full}\n\
                 \x20     - name: show\n        command: cat version; echo %(prop:branch)s\n";
    let yaml = format!(
        "factories:\n  source:\n{steps}builders:\n\
         \x20 - {{name: stable-a, factory: source, workers: [w1], tags: [stable]}}\n\
         \x20 - {{name: stable-b, factory: source, workers: [w1], tags: [stable]}}\n\
         \x20 - {{name: unstable-c, factory: source, workers: [w1], tags: [unstable]}}\n\
         schedulers:\n  - {{type: single_branch, name: main, branch: main, builders: [stable-a], ignore_files: [\"Doc/*\", \"*.rst\"]}}\n\
         \x20 - {{type: single_branch, name: quiet, branch: stable, builders: [stable-b], tree_stable_seconds: 2}}\n\
         \x20 - {{type: any_branch, name: everything, builders: [unstable-c], ignore_files: [\"Doc/*\", \"*.rst\"]}}\n\
         \x20 - {{type: pull_request, name: pulls, builders: [stable-a, stable-b, unstable-c]}}\n"
    );
    let mut stack = TestStack::new(&yaml, &["stable-a", "stable-b", "unstable-c"]).await;
    let api = StandIn::default();
    api.writers.lock().unwrap().push("core-dev".to_owned());
    let url = github_api::serve(api).await;
    stack.append_settings(&format!("github:\n  webhook_secret: {SECRET}\n  api_url: {url}\n  api_token: {TOKEN}\n"));
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let repository = json!({ "clone_url": format!("file://{}", repo.display()), "full_name": "python/cpython" });

    let (status, answer) = deliver(&stack, "ping", "d-0", &json!({ "zen": "Keep it logically awesome." }), None).await;
    assert_eq!((status, answer["ok"].as_str()), (200, Some("pong")));

    // A push with a good signature builds the pushed revision.
    let push = json!({
        "ref": "refs/heads/main", "after": pushed, "repository": repository,
        "pusher": { "name": "guido" }, "head_commit": { "message": "two" },
        "commits": [{ "added": [], "modified": ["version"], "removed": [] }],
    });
    let (status, answer) = deliver(&stack, "push", "d-1", &push, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(built_by(&stack, &answer).await, ["stable-a", "unstable-c"], "single-branch and any-branch");
    let request = stack.get(&format!("/api/v2/buildrequests?buildsetid={}", answer["buildsets"][0])).await;
    let build = stack.wait_for_build(request["buildrequests"][0]["buildrequestid"].as_i64().unwrap()).await;
    assert_eq!(build["results"], 0, "{build}\n{}", stack.worker_logs());
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    let log = stack.archived_log(steps[1]["stepid"].as_i64().unwrap()).await;
    assert_eq!(stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await, b"two\nmain\n");
    let change = stack.get(&format!("/api/v2/changes/{}", answer["change"])).await;
    assert_eq!(change["changes"][0]["revision"], pushed.as_str());

    // The same delivery again, a wrong signature and none: nothing changes.
    let before = requests_total(&stack).await;
    let (status, again) = deliver(&stack, "push", "d-1", &push, None).await;
    assert_eq!((status, again["ignored"].as_str()), (200, Some("this delivery was recorded before")));
    let (status, _) = deliver(&stack, "push", "d-2", &push, Some("sha256=00ff")).await;
    assert_eq!(status, 401);
    let unsigned = stack
        .http
        .post(format!("{}/change_hook/github", stack.base_url))
        .header("x-github-event", "push")
        .json(&push)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(requests_total(&stack).await, before);
    assert_eq!(stack.get("/api/v2/changes").await["meta"]["total"], 1, "refused deliveries record no change");

    // A push touching only documentation builds nothing.
    let docs = json!({
        "ref": "refs/heads/main", "after": pushed, "repository": repository, "pusher": { "name": "guido" },
        "commits": [{ "added": ["Doc/whatsnew.rst"], "modified": ["README.rst"], "removed": [] }],
    });
    let (status, answer) = deliver(&stack, "push", "d-3", &docs, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(requests_total(&stack).await, before, "{answer}");

    // Another branch: only the any-branch scheduler builds it, on that branch.
    let other = json!({
        "ref": "refs/heads/3.14", "after": pushed, "repository": repository, "pusher": { "name": "guido" },
        "commits": [{ "added": [], "modified": ["version"], "removed": [] }],
    });
    let (status, answer) = deliver(&stack, "push", "d-3b", &other, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(built_by(&stack, &answer).await, ["unstable-c"]);
    let set = stack.get(&format!("/api/v2/buildsets/{}", answer["buildsets"][0])).await;
    assert_eq!(set["buildsets"][0]["reason"], "GitHub push of 3.14 by guido");

    // A scheduler with a tree-stable timer builds only the newest of quick
    // pushes, once the branch has been quiet for its seconds.
    let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let quiet = async || -> Vec<String> {
        sqlx::query_scalar("select properties -> 'revision' ->> 0 from buildsets where scheduler = 'quiet'")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    for (delivery, revision) in [("d-q1", "0123456789abcdef"), ("d-q2", pushed.as_str())] {
        let quick = json!({
            "ref": "refs/heads/stable", "after": revision, "repository": repository, "pusher": { "name": "guido" },
            "commits": [{ "added": [], "modified": ["version"], "removed": [] }],
        });
        let (status, answer) = deliver(&stack, "push", delivery, &quick, None).await;
        assert_eq!(status, 200, "{answer}");
    }
    assert!(quiet().await.is_empty(), "nothing while the branch is busy");
    let built = stack
        .eventually(15, "the quiet branch built", async || {
            let found = quiet().await;
            (!found.is_empty()).then_some(found)
        })
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(quiet().await, built, "once");
    assert_eq!(built, std::slice::from_ref(&pushed), "the newest change");

    // The label builds the stable builders on the pull request's merge ref.
    let labeled = json!({
        "action": "labeled", "label": { "name": ":hammer: test-with-buildbots" },
        "pull_request": { "number": 7, "title": "Fix it" }, "repository": repository, "sender": { "login": "core-dev" },
    });
    let (status, answer) = deliver(&stack, "pull_request", "d-4", &labeled, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(built_by(&stack, &answer).await, ["stable-a", "stable-b"]);
    // Whoever labelled it owns its builds, as the GitHub user they sign in as.
    let owned_by: Option<String> = sqlx::query_scalar("select owned_by from buildsets where id = $1")
        .bind(answer["buildsets"][0].as_i64().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(owned_by.as_deref(), Some("github:core-dev"));
    let requests = stack.get(&format!("/api/v2/buildrequests?buildsetid={}", answer["buildsets"][0])).await;
    for request in requests["buildrequests"].as_array().unwrap() {
        let build = stack.wait_for_build(request["buildrequestid"].as_i64().unwrap()).await;
        assert_eq!(build["results"], 0, "{build}");
        let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
        let log = stack.archived_log(steps[1]["stepid"].as_i64().unwrap()).await;
        let printed = stack.get_bytes(&format!("/api/v2/logs/{}/raw", log["logid"])).await;
        assert_eq!(printed, b"pull request\nrefs/pull/7/merge\n");
    }

    // `!buildbot REGEX` from someone who may write builds the matching
    // builders; from someone who may not, nothing.
    let comment = |user: &str, body: &str| {
        json!({
            "action": "created", "issue": { "number": 7, "pull_request": { "url": "..." } },
            "comment": { "body": body, "user": { "login": user } }, "repository": repository,
        })
    };
    let (status, answer) =
        deliver(&stack, "issue_comment", "d-5", &comment("core-dev", "!buildbot unstable|-b$"), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(built_by(&stack, &answer).await, ["stable-b", "unstable-c"]);
    let before = requests_total(&stack).await;
    let (status, answer) = deliver(&stack, "issue_comment", "d-6", &comment("random", "!buildbot .*"), None).await;
    assert_eq!(status, 200);
    assert!(answer["ignored"].as_str().unwrap().contains("`random` may not write"), "{answer}");
    assert_eq!(requests_total(&stack).await, before);
}

const HEAD: &str = "7777777777777777777777777777777777777777";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_request_loop_takes_the_label_off_and_answers_every_command_once() {
    let yaml = "factories:\n  pass:\n    steps:\n      - {name: compile, command: [\"true\"]}\n\
                builders:\n\
                \x20 - {name: AMD64 Debian, factory: pass, workers: [w1], tags: [stable]}\n\
                \x20 - {name: ARM64 macOS, factory: pass, workers: [w1], tags: [stable]}\n\
                \x20 - {name: s390x RHEL, factory: pass, workers: [w1], tags: [unstable]}\n\
                schedulers:\n  - {type: single_branch, name: main, branch: main, builders: [AMD64 Debian]}\n\
                \x20 - {type: pull_request, name: pulls, builders: [AMD64 Debian, ARM64 macOS, s390x RHEL]}\n";
    let mut stack = TestStack::new(yaml, &["AMD64 Debian", "ARM64 macOS", "s390x RHEL"]).await;
    let api = StandIn::default();
    api.writers.lock().unwrap().push("core-dev".to_owned());
    api.pull_heads.lock().unwrap().insert(7, HEAD.to_owned());
    let url = github_api::serve(api.clone()).await;
    stack.append_settings(&format!("github:\n  webhook_secret: {SECRET}\n  api_url: {url}\n  api_token: {TOKEN}\n"));
    let a = stack.start_master_process("a").await;
    stack.base_url = format!("http://{a}");
    stack.start_worker("w1");
    let repository = json!({ "clone_url": "https://github.com/python/cpython.git", "full_name": "python/cpython" });
    let database = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let settled = async || {
        stack
            .eventually(60, "the pull-request loop's actions done", async || {
                let pending: i64 = sqlx::query_scalar(
                    "select count(*) from notifications where reporter = 'pull_request_loop' and state = 'pending'",
                )
                .fetch_one(&database)
                .await
                .unwrap();
                (pending == 0).then_some(())
            })
            .await
    };

    // The label schedules the stable builders and is taken off, once
    // however often GitHub delivers it.
    let label = ":hammer: test-with-buildbots";
    let labeled = json!({
        "action": "labeled", "label": { "name": label },
        "pull_request": { "number": 7, "title": "Fix it", "head": { "sha": HEAD } },
        "repository": repository, "sender": { "login": "core-dev" },
    });
    let (status, answer) = deliver(&stack, "pull_request", "l-1", &labeled, None).await;
    assert_eq!(status, 200, "{answer}\n{}", std::fs::read_to_string(stack.dir.path().join("master-a.log")).unwrap());
    assert_eq!(built_by(&stack, &answer).await, ["AMD64 Debian", "ARM64 macOS"]);
    let (_, again) = deliver(&stack, "pull_request", "l-1", &labeled, None).await;
    assert_eq!(again["ignored"], "this delivery was recorded before");
    settled().await;
    assert_eq!(*api.labels_taken_off.lock().unwrap(), [label]);

    // Every `!buildbot` command is answered, once: what it scheduled
    // (its pattern matched without regard to case), or why nothing.
    let comment = |user: &str, body: &str| {
        json!({
            "action": "created", "issue": { "number": 7, "pull_request": { "url": "..." } },
            "comment": { "body": body, "user": { "login": user } }, "repository": repository,
        })
    };
    *api.lose_comment_answers.lock().unwrap() = 1;
    let commands = [
        ("c-1", "core-dev", "!buildbot arm64"),
        ("c-2", "core-dev", "!buildbot (unclosed"),
        ("c-3", "core-dev", "!buildbot windows"),
        ("c-4", "drive-by", "!buildbot .*"),
        ("c-5", "core-dev", "thanks! !buildbot is great"),
    ];
    for (delivery, user, body) in commands {
        let (status, answer) = deliver(&stack, "issue_comment", delivery, &comment(user, body), None).await;
        assert_eq!(status, 200, "{answer}");
        if delivery == "c-1" {
            assert_eq!(built_by(&stack, &answer).await, ["ARM64 macOS"]);
        } else {
            assert!(answer["ignored"].is_string(), "{delivery}: {answer}");
        }
    }
    let (_, again) = deliver(&stack, "issue_comment", "c-3", &comment("core-dev", "!buildbot windows"), None).await;
    assert!(again["ignored"].is_string());
    settled().await;
    let answers: Vec<String> = api.comments.lock().unwrap().iter().map(|(_, _, body)| body.clone()).collect();
    let expected = [
        "@core-dev: scheduled builds of 777777777777 on `ARM64 macOS`.",
        "@core-dev: `(unclosed` is not a pattern I can read (error: unclosed group); nothing was scheduled.",
        "@core-dev: `windows` matches none of the builders that build pull requests; nothing was scheduled. \
         They are: `AMD64 Debian`, `ARM64 macOS`, `s390x RHEL`.",
        "@drive-by: only people who may write to python/cpython may start builds; nothing was scheduled.",
    ];
    assert_eq!(answers.len(), expected.len(), "one answer per command, though one answer was lost: {answers:#?}");
    for text in expected {
        assert_eq!(answers.iter().filter(|answer| answer.starts_with(text)).count(), 1, "`{text}` in {answers:#?}");
    }
    let states: Vec<(String, String, i64)> = sqlx::query_as(
        "select event, state, count(*) from notifications where reporter = 'pull_request_loop' group by 1, 2 order by 1, 2",
    )
    .fetch_all(&database)
    .await
    .unwrap();
    assert_eq!(
        states,
        [("answer_command".to_owned(), "sent".to_owned(), 4), ("remove_label".to_owned(), "sent".to_owned(), 1)]
    );

    // A push whose head commit asks to skip CI builds nothing.
    let before = requests_total(&stack).await;
    let push = json!({
        "ref": "refs/heads/main", "after": HEAD, "repository": repository, "pusher": { "name": "guido" },
        "head_commit": { "message": "Fix a typo in a comment\n\n[skip ci]" },
        "commits": [{ "added": [], "modified": ["Lib/os.py"], "removed": [] }],
    });
    let (status, answer) = deliver(&stack, "push", "p-1", &push, None).await;
    assert_eq!((status, answer["ignored"].as_str()), (200, Some("the head commit of `main` asks to skip CI")));
    assert_eq!(requests_total(&stack).await, before);
}
