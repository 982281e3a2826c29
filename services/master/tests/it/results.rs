//! What a build printed, understood: warnings counted as the output
//! streams, test results from a runner's summary and from JUnit XML files,
//! flaky tests across builds, and artifacts kept with the build.

use serde_json::json;

use crate::harness::TestStack;
use crate::pipeline::{ids, two_masters_haproxy_and_a_worker};

/// The build a request ran, once all of it is recorded. A step's end may
/// be recorded after the build's (events are taken by either master); its
/// test results and artifacts are in once its log is archived, in the same
/// transaction.
async fn recorded(stack: &TestStack, request: i64) -> serde_json::Value {
    let build = stack.wait_for_build(request).await;
    for step in stack.steps(build["buildid"].as_i64().unwrap()).await {
        if step["results"] != 3 {
            stack.archived_log(step["stepid"].as_i64().unwrap()).await;
        }
    }
    build
}

const WARNS: &str = r#"- name: compile
  warnings: compiler
  command: [sh, -c, "printf 'gcc -c a.c\\na.c:12:5: warning: unused x\\nok\\nb.c(3): warning C4101: y\\n'"]
- name: test
  warnings: {pattern: "^Warning -- ", max: 1}
  command: [sh, -c, "echo 'Warning -- one leaked'; echo 'not Warning -- this'"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_counting_warnings_ends_warnings_with_their_count_and_a_log_of_them() {
    let stack = two_masters_haproxy_and_a_worker(&[("warns", WARNS)]).await;
    let build = recorded(&stack, stack.force("warns").await).await;
    assert_eq!(build["results"], 1, "WARNINGS: {build}");
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    assert_eq!(ids(&steps, "results"), [1, 0], "over its max, then within it");
    assert_eq!(ids(&steps, "state_string"), ["exit code 0; 2 warnings", "exit code 0; 1 warning"]);
    for (step, expected) in
        steps.iter().zip(["a.c:12:5: warning: unused x\nb.c(3): warning C4101: y\n", "Warning -- one leaked\n"])
    {
        let step_id = step["stepid"].as_i64().unwrap();
        stack.archived_log(step_id).await;
        let logs = stack.get(&format!("/api/v2/steps/{step_id}/logs")).await;
        let warnings = logs["logs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|log| log["slug"] == "warnings")
            .unwrap_or_else(|| panic!("no warnings log: {logs}"))
            .clone();
        assert_eq!(warnings["complete"], true, "{warnings}");
        let raw = stack.get_bytes(&format!("/api/v2/logs/{}/raw", warnings["logid"])).await;
        assert_eq!(String::from_utf8(raw).unwrap(), expected);
    }
}

const REGRTEST: &str = r#"- name: test
  test_summary: regrtest
  command: [sh, -c, "printf '== Tests result: FAILURE ==\\n\\n385 tests OK.\\n\\n3 tests failed:\\n    test_os test_sys\\n    test_ssl\\n\\n2 tests failed again:\\n    test_os test_ssl\\n\\nTotal duration: 5 min\\n'; exit 2"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_runners_summary_becomes_a_test_result_set_with_the_tests_that_failed_last() {
    let stack = two_masters_haproxy_and_a_worker(&[("regrtest", REGRTEST)]).await;
    let build = recorded(&stack, stack.force("regrtest").await).await;
    assert_eq!(build["results"], 2, "{build}");
    let build_id = build["buildid"].as_i64().unwrap();
    let steps = stack.steps(build_id).await;
    assert_eq!(steps[0]["state_string"], "exit code 2; 2 tests failed");
    let sets = stack.get(&format!("/api/v2/builds/{build_id}/test_result_sets")).await;
    assert_eq!(sets["meta"]["total"], 1, "{sets}");
    let set = &sets["test_result_sets"][0];
    assert_eq!((set["tests_failed"].as_i64(), set["tests_passed"].as_i64()), (Some(2), Some(385)), "{set}");
    assert_eq!((set["category"].as_str(), set["value_unit"].as_str()), (Some("pass_fail"), Some("boolean")));
    assert_eq!(set["stepid"], steps[0]["stepid"]);
    assert_eq!(set["builderid"], build["builderid"]);
    let by_step = stack.get(&format!("/api/v2/steps/{}/test_result_sets", steps[0]["stepid"])).await;
    assert_eq!(by_step["test_result_sets"][0]["test_result_setid"], set["test_result_setid"]);
    let results = stack.get(&format!("/api/v2/test_result_sets/{}/results", set["test_result_setid"])).await;
    let names: Vec<&str> =
        results["test_results"].as_array().unwrap().iter().map(|r| r["test_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["test_os", "test_ssl"], "the ones that failed again: {results}");
    assert!(results["test_results"].as_array().unwrap().iter().all(|r| r["value"] == "fail"));
    let failing =
        stack.get(&format!("/api/v2/test_result_sets/{}/results?test_name=test_ssl", set["test_result_setid"])).await;
    assert_eq!(failing["meta"]["total"], 1, "filtered like any collection: {failing}");

    // The build's page lists them first, before the steps.
    let page = String::from_utf8(stack.get_bytes("/builders/regrtest/builds/1").await).unwrap();
    let tests = page.find("<h2>Tests</h2>").unwrap_or_else(|| panic!("no Tests section:\n{page}"));
    let steps = page.find("<h2>Steps</h2>").unwrap();
    assert!(tests < steps, "failures first");
    let section = &page[tests..steps];
    assert!(section.contains("2 failed, 385 passed (test runner summary of step test)"), "{section}");
    let os = section.find("<code>test_os</code>").unwrap_or_else(|| panic!("test_os is not listed: {section}"));
    let ssl = section.find("<code>test_ssl</code>").unwrap_or_else(|| panic!("test_ssl is not listed: {section}"));
    assert!(os < ssl, "in the order the runner listed them: {section}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_failing_then_passing_on_a_rebuild_of_the_same_revision_is_listed_flaky() {
    let flags = tempfile::tempdir().unwrap();
    let flag = flags.path().join("flaky");
    let steps = format!(
        "- name: test\n  test_summary: regrtest\n  command: if [ -e {} ]; then printf '2 tests OK.\\n\\n1 test failed:\\n    test_flaky\\n\\n'; exit 2; else printf '3 tests OK.\\n'; fi\n",
        flag.display()
    );
    let stack = two_masters_haproxy_and_a_worker(&[("flaky", &steps)]).await;
    let at = |revision: &str| json!({ "properties": { "revision": revision } });
    std::fs::write(&flag, "").unwrap();
    let failed = recorded(&stack, stack.force_with("flaky", at("abc123")).await).await;
    assert_eq!(failed["results"], 2);
    // A failure alone is not flakiness; nor is passing at another revision.
    std::fs::remove_file(&flag).unwrap();
    let other = recorded(&stack, stack.force_with("flaky", at("def456")).await).await;
    assert_eq!(other["results"], 0);
    assert_eq!(stack.get("/api/v2/tests/flaky").await["meta"]["total"], 0);
    // The rebuild of the same revision passes: flaky.
    let rebuilt = recorded(&stack, stack.force_with("flaky", at("abc123")).await).await;
    assert_eq!(rebuilt["results"], 0);
    let flaky = stack.get("/api/v2/tests/flaky").await;
    assert_eq!(flaky["meta"]["total"], 1, "{flaky}");
    let test = &flaky["flaky_tests"][0];
    assert_eq!((test["test_name"].as_str(), test["failures"].as_i64()), (Some("test_flaky"), Some(1)), "{test}");
    assert_eq!(test["builderid"], failed["builderid"]);
    assert_eq!(test["last_failed_at"], failed["complete_at"]);
    let refused = stack.http.get(format!("{}/api/v2/tests/flaky?days=0", stack.base_url)).send().await.unwrap();
    assert_eq!(refused.status(), 400);
}

const JUNIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="tests" tests="5" failures="1" errors="1" skipped="1">
    <testcase classname="tests.test_math" name="test_add" time="0.25"/>
    <testcase classname="tests.test_math" name="test_sub" time="0.75"/>
    <testcase classname="tests.test_io" name="test_read" time="1.5">
      <failure message="expected 3, got 4">Traceback (most recent call last):
  File "tests/test_io.py", line 12, in test_read
AssertionError: expected 3, got 4</failure>
    </testcase>
    <testcase classname="tests.test_io" name="test_write" time="0.5">
      <error message="PermissionError: out/x &lt;denied&gt;"/>
    </testcase>
    <testcase classname="tests.test_net" name="test_dns"><skipped message="no network"/></testcase>
  </testsuite>
</testsuites>
"#;

/// The step names the failed tests in its output (as a runner does) with
/// `printf`, so that the command line itself, printed in the log's header,
/// does not.
const JUNIT_STEP: &str = r#"- name: test
  command: [sh, -c, "printf 'running\\nFAIL: test_%s\\nERROR: test_%s\\n' read write; exit 1"]
  test_results: out/*.xml
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junit_file_becomes_a_test_result_set_served_as_buildbot_shapes_it() {
    let stack = two_masters_haproxy_and_a_worker(&[("junit", JUNIT_STEP)]).await;
    let out = stack.dir.path().join("worker-w1/junit/build/out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("junit.xml"), JUNIT).unwrap();
    let build = recorded(&stack, stack.force("junit").await).await;
    assert_eq!(build["results"], 2, "the step's exit code decides: {build}");
    let build_id = build["buildid"].as_i64().unwrap();
    let step = &stack.steps(build_id).await[0];
    let log = stack.archived_log(step["stepid"].as_i64().unwrap()).await;

    let sets = stack.get(&format!("/api/v2/builds/{build_id}/test_result_sets")).await;
    assert_eq!(sets["meta"]["total"], 1, "{sets}");
    let set = &sets["test_result_sets"][0];
    let counts = ["tests_passed", "tests_failed", "tests_skipped"].map(|field| set[field].as_i64().unwrap());
    assert_eq!(counts, [2, 2, 1], "an error counts as failed: {set}");
    assert_eq!(set["duration_ns"], 3_000_000_000_i64, "{set}");
    assert_eq!((set["description"].as_str(), set["complete"].as_bool()), (Some("out/junit.xml"), Some(true)));
    assert_eq!((set["stepid"].clone(), set["builderid"].clone()), (step["stepid"].clone(), build["builderid"].clone()));

    let set_id = set["test_result_setid"].as_i64().unwrap();
    let results = stack.get(&format!("/api/v2/test_result_sets/{set_id}/results?order=test_resultid")).await;
    let rows = results["test_results"].as_array().unwrap();
    let shape: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (r["test_name"].as_str().unwrap(), r["test_code_path"].as_str().unwrap(), r["value"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("test_add", "tests.test_math", "pass"),
            ("test_sub", "tests.test_math", "pass"),
            ("test_read", "tests.test_io", "fail"),
            ("test_write", "tests.test_io", "error"),
            ("test_dns", "tests.test_net", "skip"),
        ]
    );
    assert_eq!(rows[0]["duration_ns"], 250_000_000);
    assert_eq!(rows[2]["message"], "expected 3, got 4");
    assert_eq!(rows[3]["message"], "PermissionError: out/x <denied>");
    assert_eq!(rows[4]["message"], "no network");
    // Paged and filtered like any of Buildbot's collections.
    let page = stack.get(&format!("/api/v2/test_result_sets/{set_id}/results?value__in=fail,error&limit=1")).await;
    assert_eq!(
        (page["meta"]["total"].as_i64(), page["test_results"][0]["test_name"].as_str()),
        (Some(2), Some("test_read"))
    );

    // Each failed test points at the first line of the log naming it.
    let contents = stack.get(&format!("/api/v2/logs/{}/contents", log["logid"])).await;
    let lines: Vec<String> = contents["logchunks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|chunk| chunk["content"].as_str().unwrap().lines().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let line_of = |text: &str| lines.iter().position(|line| line.contains(text)).unwrap() as i64;
    assert_eq!(rows[2]["log_line"].as_i64(), Some(line_of("FAIL: test_read")), "{lines:?}");
    assert_eq!(rows[3]["log_line"].as_i64(), Some(line_of("ERROR: test_write")));
    assert!(rows[0]["log_line"].is_null(), "passed tests are not looked for");
    assert!(
        lines.iter().any(|line| line.ends_with(&format!("test results: sent `out/junit.xml` ({} B)", JUNIT.len()))),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|line| line.ends_with("test results: read `out/junit.xml`: 5 tests, 2 failed, 1 skipped"))
    );

    // The build's page: the failures with their messages, linked to the log.
    let page = String::from_utf8(stack.get_bytes("/builders/junit/builds/1").await).unwrap();
    let tests = page.find("<h2>Tests</h2>").unwrap_or_else(|| panic!("no Tests section:\n{page}"));
    let section = &page[tests..page.find("<h2>Steps</h2>").unwrap()];
    assert!(section.contains("2 failed, 2 passed, 1 skipped, 3s in all (out/junit.xml of step test)"), "{section}");
    let link =
        format!("<a href=\"#log{}-L{}\"><code>test_read</code></a>", log["logid"], line_of("FAIL: test_read") + 1);
    assert!(section.contains(&link), "{link} in {section}");
    assert!(section.contains("expected 3, got 4"), "{section}");
    assert!(!section.contains("test_add"), "passed tests are not listed: {section}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_files_that_cannot_be_read_each_say_why_in_the_log_and_change_nothing_else() {
    let steps = r#"- name: test
  command: [sh, -c, "echo tests ran"]
  test_results: [out/broken.xml, out/page.xml, out/huge.xml, out/missing.xml, "reports/*.xml"]
"#;
    let stack = two_masters_haproxy_and_a_worker(&[("bad", steps)]).await;
    let out = stack.dir.path().join("worker-w1/bad/build/out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("broken.xml"), "<testsuite><testcase name='a'></testsuite>\n").unwrap();
    std::fs::write(out.join("page.xml"), "<html><body>Not Found</body></html>\n").unwrap();
    // 200 MB, sparse: refused by its size before anything is read.
    std::fs::File::create(out.join("huge.xml")).unwrap().set_len(200 * 1024 * 1024).unwrap();
    let build = recorded(&stack, stack.force("bad").await).await;
    assert_eq!(build["results"], 0, "files a step could not send do not fail it: {build}");
    let build_id = build["buildid"].as_i64().unwrap();
    let step = &stack.steps(build_id).await[0];
    assert_eq!((step["results"].as_i64(), step["state_string"].as_str()), (Some(0), Some("exit code 0")));
    let log = stack.archived_log(step["stepid"].as_i64().unwrap()).await;
    let raw = String::from_utf8(stack.get_bytes(&format!("/api/v2/logs/{}/raw_inline", log["logid"])).await).unwrap();
    assert_eq!(raw, "tests ran\n", "the step's own output is as it printed it");
    let contents = stack.get(&format!("/api/v2/logs/{}/contents", log["logid"])).await;
    let text: String =
        contents["logchunks"].as_array().unwrap().iter().map(|c| c["content"].as_str().unwrap()).collect();
    for expected in [
        "htest results: `out/broken.xml` is not well-formed XML (at byte ",
        "htest results: `out/page.xml` is not JUnit XML: its root element is <html>, not <testsuites> or <testsuite>; nothing of it was kept",
        "htest results: `out/huge.xml` is 200.0 MiB, over the cap of 64.0 MiB (builds.max_test_result_file_bytes); not read",
        "htest results: `out/missing.xml` is not there",
        "htest results: `reports/*.xml` matched no file",
    ] {
        assert!(text.contains(expected), "`{expected}` in:\n{text}");
    }
    let sets = stack.get(&format!("/api/v2/builds/{build_id}/test_result_sets")).await;
    assert_eq!(sets["meta"]["total"], 0, "nothing half-read is kept: {sets}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_round_trips_byte_for_byte_and_a_path_leading_out_is_refused() {
    let steps = r#"- name: package
  command: [sh, -c, "ln -sf /etc/hostname dist/leak.txt; echo packaged"]
  artifacts: ["dist/*"]
"#;
    let stack = two_masters_haproxy_and_a_worker(&[("pkg", steps)]).await;
    let dist = stack.dir.path().join("worker-w1/pkg/build/dist");
    std::fs::create_dir_all(&dist).unwrap();
    // Several chunks of bytes that do not compress, and every byte value.
    let mut wheel: Vec<u8> =
        (0..3 * 1024 * 1024 + 17).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    wheel.extend(0..=255u8);
    std::fs::write(dist.join("pkg-1.0.whl"), &wheel).unwrap();
    std::fs::write(dist.join("notes \"1\".txt"), "<script>alert(1)</script>").unwrap();
    let build = recorded(&stack, stack.force("pkg").await).await;
    assert_eq!(build["results"], 0, "{build}");
    let build_id = build["buildid"].as_i64().unwrap();
    let step = &stack.steps(build_id).await[0];
    let log = stack.archived_log(step["stepid"].as_i64().unwrap()).await;
    let contents = stack.get(&format!("/api/v2/logs/{}/contents", log["logid"])).await;
    let text: String =
        contents["logchunks"].as_array().unwrap().iter().map(|c| c["content"].as_str().unwrap()).collect();
    assert!(
        text.contains(
            "hartifacts: `dist/leak.txt` leads outside the builder's directory (a symlink out of it); refused"
        ),
        "{text}"
    );

    let artifacts = stack.get(&format!("/api/v2/builds/{build_id}/artifacts?order=name")).await;
    let names: Vec<&str> =
        artifacts["artifacts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["dist/notes \"1\".txt", "dist/pkg-1.0.whl"], "{artifacts}");
    let artifact = &artifacts["artifacts"][1];
    assert_eq!(artifact["bytes"].as_u64(), Some(wheel.len() as u64));
    let response = stack
        .http
        .get(format!("{}/api/v2/artifacts/{}/download", stack.base_url, artifact["artifactid"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("content-disposition").as_deref(), Some("attachment; filename=\"pkg-1.0.whl\""));
    assert_eq!(header("content-type").as_deref(), Some("application/octet-stream"));
    let downloaded = response.bytes().await.unwrap();
    assert!(downloaded[..] == wheel[..], "byte for byte ({} of {} bytes)", downloaded.len(), wheel.len());

    let notes = &artifacts["artifacts"][0];
    let response = stack
        .http
        .get(format!("{}/api/v2/artifacts/{}/download", stack.base_url, notes["artifactid"]))
        .send()
        .await
        .unwrap();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("content-disposition").as_deref(), Some("attachment; filename=\"notes _1_.txt\""));
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "never shown as a page");

    let page = String::from_utf8(stack.get_bytes("/builders/pkg/builds/1").await).unwrap();
    let link = format!("href=\"/api/v2/artifacts/{}/download\"", artifact["artifactid"]);
    assert!(page.contains("<h2>Artifacts</h2>") && page.contains(&link), "{page}");
    let missing = stack.http.get(format!("{}/api/v2/artifacts/999999/download", stack.base_url)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tests_page_shows_what_fails_now_on_a_branch_where_it_broke_and_last_passed() {
    let lists = tempfile::tempdir().unwrap();
    let failing = lists.path().join("failing");
    let steps = format!(
        "- name: test\n  test_summary: regrtest\n  command: if [ -s {0} ]; then printf '5 tests OK.\\n\\n2 tests failed:\\n'; cat {0}; printf '\\n'; exit 2; else printf '7 tests OK.\\n'; fi\n",
        failing.display()
    );
    let stack = two_masters_haproxy_and_a_worker(&[("unit", &steps)]).await;
    let on = |branch: &str, revision: &str| json!({ "properties": { "branch": branch, "revision": revision } });
    let mut builds = Vec::new();
    for (revision, fails) in [("r1", ""), ("r2", "    test_a\n"), ("r3", "    test_a test_b\n")] {
        std::fs::write(&failing, fails).unwrap();
        builds.push(recorded(&stack, stack.force_with("unit", on("main", revision)).await).await);
    }
    // Another branch, passing: it changes nothing on main.
    std::fs::write(&failing, "").unwrap();
    recorded(&stack, stack.force_with("unit", on("3.14", "s1")).await).await;

    let answer = stack.get("/api/v2/tests/failing?branch=main").await;
    let tests = answer["failing_tests"].as_array().unwrap();
    let shape: Vec<(&str, i64, i64, Option<i64>, i64)> = tests
        .iter()
        .map(|t| {
            (
                t["test_name"].as_str().unwrap(),
                t["first_failed_number"].as_i64().unwrap(),
                t["failing_builds"].as_i64().unwrap(),
                t["last_passed_number"].as_i64(),
                t["number"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shape, [("test_b", 3, 1, Some(2), 3), ("test_a", 2, 2, Some(1), 3)], "newest breakage first: {answer}");
    assert_eq!(
        (tests[1]["first_failed_revision"].as_str(), tests[1]["last_passed_revision"].as_str()),
        (Some("r2"), Some("r1"))
    );
    assert_eq!(tests[0]["builderid"], builds[0]["builderid"]);
    assert_eq!(stack.get("/api/v2/tests/failing?branch=3.14").await["meta"]["total"], 0, "nothing fails on 3.14");
    let refused = stack.http.get(format!("{}/api/v2/tests/failing?brnch=main", stack.base_url)).send().await.unwrap();
    assert_eq!(refused.status(), 400, "a misspelt parameter is refused, not ignored");

    let page = String::from_utf8(stack.get_bytes("/tests?branch=main").await).unwrap();
    assert!(page.contains("2 failing tests on 1 builder"), "{page}");
    let row = &page[page.find("<code>test_a</code>").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("href=\"/builders/unit/builds/2\">#2</a> <code>r2</code>"), "broke in #2: {row}");
    assert!(row.contains("href=\"/builders/unit/builds/1\">#1</a> <code>r1</code>"), "last passed in #1: {row}");
    assert!(page.contains("<option value=\"main\" selected>main</option>"), "{page}");
}
