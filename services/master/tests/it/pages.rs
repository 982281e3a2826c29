//! What the web pages say, read as HTML through HAProxy: of the workers
//! that serve a builder (each master's local worker among them) and who
//! runs them, of a step
//! that never ran, of a log that has ended.

use crate::harness::TestStack;

const YAML: &str = "factories:\n  F:\n    steps:\n\
                    \x20     - {name: install, command: [\"false\"], halt_on_failure: true}\n\
                    \x20     - {name: test, command: [\"true\"]}\n\
                    builders:\n  - {name: both, factory: F, workers: [local, w1]}\n\
                    schedulers:\n  - {type: force, name: force, builders: [both]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_name_local_workers_a_skipped_step_and_an_ended_log_as_they_are() {
    let mut stack = TestStack::new(YAML, &["both"]).await;
    stack.append_settings(
        "use_local_worker: true\nowners:\n  w1: {name: Ada Lovelace, email: ada@example.org}\n\
         mail: {smtp_host: 127.0.0.1, smtp_port: 9, security: none, from: bb@example.org}\n",
    );
    let settings = std::fs::read_to_string(&stack.settings_path).unwrap();
    let tagged = settings.replacen("  - name: w1\n", "  - name: w1\n    tags: [linux, amd64]\n", 1);
    assert_ne!(settings, tagged);
    std::fs::write(&stack.settings_path, tagged).unwrap();
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    let locals: Vec<String> = ["a", "b"].iter().map(|m| format!("local-{}-{m}", stack.namespace)).collect();
    for worker in locals.iter().map(String::as_str).chain(["w1"]) {
        stack.wait_for_worker_connected(worker).await;
    }

    let page = String::from_utf8(stack.get_bytes("/builders/both").await).unwrap();
    let workers = &page[page.find("<h2>Workers</h2>").unwrap()..];
    assert!(!workers.contains("none connected yet"), "{workers}");
    for worker in locals.iter().map(String::as_str).chain(["w1"]) {
        assert!(workers.contains(&format!("<span class=\"online\">{worker}</span> online")), "{worker}: {workers}");
    }

    let page = String::from_utf8(stack.get_bytes("/workers").await).unwrap();
    for worker in locals.iter().map(String::as_str).chain(["w1"]) {
        let row = &page[page.find(&format!("<th>{worker}</th>")).unwrap_or_else(|| panic!("{worker}: {page}"))..];
        let row = &row[..row.find("</tr>").unwrap()];
        let cells: Vec<&str> = row.split("<td>").collect();
        assert!(cells[4].starts_with("1</td>"), "{worker} serves one builder: {row}");
        if worker == "w1" {
            assert!(cells[5].starts_with("Ada Lovelace</td>"), "w1's owner by name, not mail: {row}");
            assert!(row.contains("<span class=\"tag\">linux</span> <span class=\"tag\">amd64</span>"), "{row}");
            assert!(!row.contains("ada@example.org"), "{row}");
        } else {
            assert!(cells[5].starts_with("</td>"), "{worker} has no owner: {row}");
        }
    }

    let build = stack.wait_for_build(stack.force("both").await).await;
    assert_eq!(build["results"], 2, "{build}");
    let steps = stack.steps(build["buildid"].as_i64().unwrap()).await;
    stack.archived_log(steps[0]["stepid"].as_i64().unwrap()).await;
    let page = String::from_utf8(stack.get_bytes(&format!("/builders/both/builds/{}", build["number"])).await).unwrap();
    let skipped = &page[page.find("<span class=\"name\">test</span>").unwrap()..];
    let skipped = &skipped[..skipped.find("</summary>").unwrap()];
    assert!(skipped.contains("<span class=\"result\">skipped</span>"), "{skipped}");
    assert!(!skipped.contains("running"), "a step that never ran is not running: {skipped}");
    assert!(page.contains("class=\"log-name\">stdio</span>"), "{page}");
    assert!(!page.contains("follow"), "an ended log has nothing to follow: {page}");
}
