//! Changes linked to builds, as Buildbot's data API shows them (a
//! buildset's source stamps, a build's changes, a change's builds), and the
//! console view: a push that breaks two of four builders is that change's
//! row with two cells outlined red, its author named.

use serde_json::{Value, json};

use crate::github::{SECRET, deliver};
use crate::harness::TestStack;

/// Four builders on main; `compile` and `tests` fail on a revision that
/// starts with `bad`, and say so in a JUnit file (`test_eval` fails).
fn console_yaml() -> String {
    "factories:\n  picky:\n    steps:\n      - name: check\n        test_results: [junit.xml]\n        command: |\n\
     \x20         case %(prop:revision)s in bad*) failed='<failure message=\"boom\"/>';; *) failed='';; esac\n\
     \x20         printf '<testsuite name=\"s\"><testcase classname=\"c\" name=\"test_eval\">%s</testcase></testsuite>' \"$failed\" > junit.xml\n\
     \x20         case %(prop:revision)s in bad*) exit 1;; esac\n\
     \x20 easy:\n    steps:\n      - name: check\n        command: \"true\"\n\
     builders:\n\
     \x20 - {name: compile, factory: picky, workers: [w1, w2], tags: [stable]}\n\
     \x20 - {name: tests, factory: picky, workers: [w1, w2], tags: [stable]}\n\
     \x20 - {name: docs, factory: easy, workers: [w1, w2], tags: [unstable]}\n\
     \x20 - {name: lint, factory: easy, workers: [w1, w2], tags: [unstable], collapse_requests: true}\n\
     release_board: {branches: [main, \"3.14\"], tags: [stable]}\n\
     schedulers:\n  - {type: single_branch, name: main, branch: main, builders: [compile, tests, docs, lint]}\n\
     \x20 - {type: force, name: force, builders: [compile, tests, docs, lint]}\n"
        .to_owned()
}

/// Pushes `revision` to main as `author`; the buildset's id.
pub(crate) async fn push(stack: &TestStack, delivery: &str, revision: &str, author: &str, message: &str) -> i64 {
    let payload = json!({
        "ref": "refs/heads/main", "after": revision, "pusher": { "name": author },
        "repository": { "clone_url": "https://github.com/python/cpython.git", "full_name": "python/cpython" },
        "head_commit": { "id": revision, "message": message, "author": { "name": author } },
        "commits": [{ "id": revision, "added": [], "modified": ["Python/ceval.c"], "removed": [] }],
    });
    let (status, answer) = deliver(stack, "push", delivery, &payload, None).await;
    assert_eq!(status, 200, "{answer}");
    answer["buildsets"][0].as_i64().unwrap_or_else(|| panic!("a buildset: {answer}"))
}

/// Waits for every build of a buildset to finish; builder name -> build.
pub(crate) async fn finished(stack: &TestStack, buildset: i64) -> std::collections::BTreeMap<String, Value> {
    let requests = stack.get(&format!("/api/v2/buildrequests?buildsetid={buildset}")).await;
    let builders = stack.get("/api/v2/builders").await;
    let name = |id: &Value| {
        builders["builders"].as_array().unwrap().iter().find(|b| b["builderid"] == *id).unwrap()["name"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut builds = std::collections::BTreeMap::new();
    for request in requests["buildrequests"].as_array().unwrap() {
        let build = stack.wait_for_build(request["buildrequestid"].as_i64().unwrap()).await;
        builds.insert(name(&request["builderid"]), build);
    }
    builds
}

pub(crate) async fn stack_with_two_pushes() -> (TestStack, i64, i64) {
    let mut stack = TestStack::new(&console_yaml(), &["compile", "tests", "docs", "lint"]).await;
    stack.append_settings(&format!("github:\n  webhook_secret: {SECRET}\n"));
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    stack.start_worker("w2");
    let good = push(&stack, "p-1", "good111111111111111111111111111111111111", "guido", "Speed up the eval loop").await;
    finished(&stack, good).await;
    let bad =
        push(&stack, "p-2", "bad2222222222222222222222222222222222222", "mallory", "Break two builders\n\nlong").await;
    finished(&stack, bad).await;
    (stack, good, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_knows_its_source_stamp_and_changes_and_a_change_its_builds() {
    let (stack, good, bad) = stack_with_two_pushes().await;
    let builds = finished(&stack, bad).await;
    let results: Vec<(&str, i64)> =
        builds.iter().map(|(name, build)| (name.as_str(), build["results"].as_i64().unwrap())).collect();
    assert_eq!(results, [("compile", 2), ("docs", 0), ("lint", 0), ("tests", 2)]);

    // The buildset's source stamp, in Buildbot's fields.
    let buildset = stack.get(&format!("/api/v2/buildsets/{bad}")).await;
    let stamp = &buildset["buildsets"][0]["sourcestamps"][0];
    assert_eq!(stamp["ssid"], bad, "{stamp}");
    assert_eq!(stamp["branch"], "main");
    assert_eq!(stamp["revision"], "bad2222222222222222222222222222222222222");
    assert_eq!(stamp["repository"], "https://github.com/python/cpython.git");
    for field in ["codebase", "project", "patch", "created_at"] {
        assert!(stamp.get(field).is_some(), "{field} in {stamp}");
    }

    // A build's changes: its blamelist, since its builder's previous build.
    let compile = builds["compile"]["buildid"].as_i64().unwrap();
    let changes = stack.get(&format!("/api/v2/builds/{compile}/changes")).await;
    assert_eq!(changes["meta"]["total"], 1, "{changes}");
    let change = &changes["changes"][0];
    assert_eq!(
        (&change["author"], &change["revision"]),
        (&json!("mallory"), &json!("bad2222222222222222222222222222222222222"))
    );
    assert_eq!(change["comments"], "Break two builders\n\nlong");
    assert_eq!(change["sourcestamp"]["branch"], "main");

    // A change's builds: the four it started.
    let change_id = change["changeid"].as_i64().unwrap();
    let started = stack.get(&format!("/api/v2/changes/{change_id}/builds")).await;
    assert_eq!(started["meta"]["total"], 4, "{started}");
    let mut ids: Vec<i64> =
        started["builds"].as_array().unwrap().iter().map(|b| b["buildid"].as_i64().unwrap()).collect();
    ids.sort();
    let mut expected: Vec<i64> = builds.values().map(|b| b["buildid"].as_i64().unwrap()).collect();
    expected.sort();
    assert_eq!(ids, expected);

    // The first build of a builder has its own change only; a forced build
    // has none.
    let first = finished(&stack, good).await;
    let changes = stack.get(&format!("/api/v2/builds/{}/changes", first["docs"]["buildid"])).await;
    assert_eq!(changes["changes"][0]["author"], "guido");
    assert_eq!(changes["meta"]["total"], 1);
    let forced = stack.force("docs").await;
    let build = stack.wait_for_build(forced).await;
    let changes = stack.get(&format!("/api/v2/builds/{}/changes", build["buildid"])).await;
    assert_eq!(changes["meta"]["total"], 0, "{changes}");
    let missing = stack.http.get(format!("{}/api/v2/builds/abc/changes", stack.base_url)).send().await.unwrap();
    assert_eq!(missing.status(), 400);

    // Two pushes while `lint` is paused: it builds the newest once, and
    // that build's blamelist has both changes.
    let paused = stack.rpc("/builders/lint", "pause", json!({ "reason": "for the test" })).await;
    assert!(paused.get("error").is_none(), "{paused}");
    push(&stack, "p-3", "good333333333333333333333333333333333333", "tim", "Third").await;
    let fourth = push(&stack, "p-4", "good444444444444444444444444444444444444", "barry", "Fourth").await;
    stack.rpc("/builders/lint", "unpause", json!({})).await;
    let lint = &finished(&stack, fourth).await["lint"];
    let changes = stack.get(&format!("/api/v2/builds/{}/changes", lint["buildid"])).await;
    let authors: Vec<&str> =
        changes["changes"].as_array().unwrap().iter().map(|c| c["author"].as_str().unwrap()).collect();
    assert_eq!(authors, ["tim", "barry"], "{changes}");

    // The charts stand on their own URLs, as SVG: one point per build.
    for (path, points) in [("/charts/builders/lint/durations.svg", 3), ("/charts/builders/docs/durations.svg", 5)] {
        let response = stack.http.get(format!("{}{path}", stack.base_url)).send().await.unwrap();
        assert_eq!(response.headers()["content-type"], "image/svg+xml; charset=utf-8");
        let svg = response.text().await.unwrap();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
        assert_eq!(svg.matches("<circle class=\"point\"").count(), points, "{path}: {svg}");
    }
    let worker = stack.http.get(format!("{}/charts/workers/w1/builds.svg", stack.base_url)).send().await.unwrap();
    let worker = worker.text().await.unwrap();
    assert_eq!(worker.matches("<g class=\"day\">").count(), 14, "{worker}");
    let queue = stack.http.get(format!("{}/charts/queue.svg", stack.base_url)).send().await.unwrap();
    let queue = queue.text().await.unwrap();
    assert_eq!(queue.matches("<circle class=\"point\"").count(), 96, "a point per quarter hour: {queue}");
    let missing = stack.http.get(format!("{}/charts/workers/nobody/builds.svg", stack.base_url)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_managers_script_finds_the_stable_builders_failing_now_as_it_does_on_buildbot_python_org() {
    // The requests python/release-tools' buildbotapi.py makes before a
    // release, as it makes them (under buildbot.python.org's `/all`, with
    // its doubled `&&`), with only the host changed.
    let (stack, _, _) = stack_with_two_pushes().await;
    let base = format!("{}/all/api/v2", stack.base_url);
    let builders = stack.http.get(format!("{base}/builders")).send().await.unwrap();
    assert_eq!(builders.status(), 200);
    let builders: Value = builders.json().await.unwrap();
    let stable: Vec<(i64, String)> = builders["builders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|builder| builder["tags"].as_array().unwrap().iter().any(|tag| tag == "stable"))
        .map(|builder| (builder["builderid"].as_i64().unwrap(), builder["name"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(stable.iter().map(|(_, name)| name.as_str()).collect::<Vec<_>>(), ["compile", "tests"]);
    let by_tag: Value =
        stack.http.get(format!("{base}/builders?tags__contains=stable")).send().await.unwrap().json().await.unwrap();
    assert_eq!(by_tag["builders"].as_array().unwrap().len(), 2);
    for (id, name) in &stable {
        let url = format!("{base}/builds?complete__eq=true&&builderid__eq={id}&&order=-complete_at&&limit=1");
        let response = stack.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let builds: Value = response.json().await.unwrap();
        let build = &builds["builds"][0];
        assert_eq!(build["results"], 2, "{name} fails now: {builds}");
        assert!(build["complete_at"].as_i64().unwrap() > 0);
    }
}
