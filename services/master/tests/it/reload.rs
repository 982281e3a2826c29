//! Live configuration: an edit of master.yaml reaches every running master
//! within seconds, with no restart; a broken one is refused, reported in
//! the API and on the web UI, and the running configuration stays.

use serde_json::Value;

use crate::harness::{TestStack, master_yaml, try_force};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_master_yaml_reaches_both_running_masters_without_a_restart() {
    let first = ("first", "- name: hi\n  command: echo first\n");
    let mut stack = TestStack::new(&master_yaml(&[first]), &["first", "added"]).await;
    let a = format!("http://{}", stack.start_master("a").await);
    let b = format!("http://{}", stack.start_master("b").await);
    stack.start_worker("w1");
    assert!(try_force(&stack.http, &a, "added").await.is_err(), "not configured yet");

    let path = stack.dir.path().join("master.yaml");
    std::fs::write(&path, master_yaml(&[first, ("added", "- name: hi\n  command: echo added\n")])).unwrap();
    // Each master takes the builder on, and the running worker serves it.
    for base in [&a, &b] {
        let request = stack
            .eventually(20, "the added builder on each master", async || {
                try_force(&stack.http, base, "added").await.ok()
            })
            .await;
        let build = stack.wait_for_build(request).await;
        assert_eq!(build["results"], 0, "{build}");
    }

    // A broken edit is refused by both; they keep building with what runs.
    std::fs::write(&path, "builders:\n  - name: [unclosed\n").unwrap();
    let masters = stack
        .eventually(20, "both masters to report the refused reload", async || {
            let body: Value = stack.http.get(format!("{a}/api/v2/masters")).send().await.ok()?.json().await.ok()?;
            let masters = body["masters"].as_array()?.clone();
            let refused =
                masters.iter().filter(|m| m["config_error"].as_str().is_some_and(|e| e.contains("master.yaml")));
            (refused.count() == 2).then_some(masters)
        })
        .await;
    assert!(masters[0]["config_error"].as_str().unwrap().contains("master.yaml:"), "at its line: {masters:?}");
    let page = stack.http.get(format!("{b}/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("refused its last configuration reload"), "the web UI says so");
    let request = try_force(&stack.http, &b, "added").await.expect("the running configuration stays");
    assert_eq!(stack.wait_for_build(request).await["results"], 0);

    // Fixed: applied, and the report is gone.
    std::fs::write(&path, master_yaml(&[first])).unwrap();
    stack
        .eventually(20, "the reports cleared", async || {
            let body: Value = stack.http.get(format!("{a}/api/v2/masters")).send().await.ok()?.json().await.ok()?;
            body["masters"].as_array()?.iter().all(|m| m["config_error"].is_null()).then_some(())
        })
        .await;
    for base in [&a, &b] {
        let refused = try_force(&stack.http, base, "added").await;
        assert!(refused.is_err(), "a removed builder refuses new builds: {refused:?}");
    }
    let history = stack.get("/api/v2/builders/added/builds").await;
    assert_eq!(history["meta"]["total"], 3, "and keeps its history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builds_address_keeps_working_after_a_reload_even_when_its_builder_left_the_configuration() {
    let kept = ("kept", "- name: hi\n  command: echo kept\n");
    let retired = ("retired", "- name: hi\n  command: echo retired\n");
    let mut stack = TestStack::new(&master_yaml(&[kept, retired]), &["kept", "retired"]).await;
    stack.start_masters_behind_haproxy().await;
    stack.start_worker("w1");
    for builder in ["kept", "retired"] {
        let request = stack.force(builder).await;
        stack.wait_for_build(request).await;
    }
    let page = |path: &'static str| {
        let (http, base) = (stack.http.clone(), stack.base_url.clone());
        async move {
            let response = http.get(format!("{base}{path}")).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, before) = page("/builders/retired/builds/1").await;
    assert_eq!(status, 200);
    assert!(before.contains("retired #1"));

    // `retired` leaves master.yaml, a new builder comes before `kept`.
    std::fs::write(
        stack.dir.path().join("master.yaml"),
        master_yaml(&[("added", "- name: hi\n  command: echo added\n"), kept]),
    )
    .unwrap();
    stack
        .eventually(20, "the reload on both masters", async || {
            let builders = stack.get("/api/v2/builders?name=retired").await;
            (builders["builders"][0]["masterids"] == serde_json::json!([])).then_some(())
        })
        .await;
    for (path, title) in [("/builders/kept/builds/1", "kept #1"), ("/builders/retired/builds/1", "retired #1")] {
        let (status, body) = page(path).await;
        assert_eq!(status, 200, "{path}");
        assert!(body.contains(title), "{path}");
    }
    assert_eq!(page("/builders/never-was/builds/1").await.0, 404);
}
