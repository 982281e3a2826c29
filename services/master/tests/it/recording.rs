//! Recording what workers report: once, whatever the order or the number of
//! deliveries, and only from the worker that runs the build.

use master::store::{Claim, RecordError, Store};
use shared::model::Results;
use shared::wire::StepRecord;

use crate::harness::{TestStack, master_yaml, queue_requests};

fn step(number: i32, name: &str, results: Option<Results>) -> StepRecord {
    StepRecord {
        number,
        name: name.into(),
        started_at: Some(chrono::Utc::now()),
        finished_at: results.map(|_| chrono::Utc::now()),
        results,
        state_string: if results.is_some() { "done".into() } else { "running".into() },
        logs: Vec::new(),
    }
}

#[tokio::test]
async fn an_event_recorded_twice_changes_nothing_and_a_late_start_does_not_undo_a_finish() {
    let stack = TestStack::new(&master_yaml(&[("ledger", "- name: t\n  command: [\"true\"]\n")]), &["ledger"]).await;
    let store = Store::connect(&stack.database_url, 2, 1).await.unwrap();
    let master_id = store.register_master("a").await.unwrap();
    let builder_id = store.sync_builders(&stack.config().master.builders).await.unwrap()["ledger"];
    let worker_id = store.ensure_worker("w1").await.unwrap();
    queue_requests(&store, builder_id, 1).await;
    let claim = Claim {
        builder_id,
        builder_name: "ledger",
        worker_id,
        worker_name: "w1",
        master_id,
        claim_token: uuid::Uuid::new_v4(),
        lease_seconds: 60,
        configured_properties: &serde_json::json!({}),
    };
    let build = store.claim(&claim).await.unwrap().unwrap();

    // seq 2 (finished) arrives before seq 1 (started), then seq 2 again.
    let mut tx = store.begin_event(build.id, 2, "w1").await.unwrap().expect("first delivery of seq 2");
    Store::upsert_step(&mut tx, build.id, &step(0, "compile", Some(Results::Failure))).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin_event(build.id, 1, "w1").await.unwrap().expect("first delivery of seq 1");
    Store::upsert_step(&mut tx, build.id, &step(0, "compile", None)).await.unwrap();
    tx.commit().await.unwrap();
    assert!(store.begin_event(build.id, 2, "w1").await.unwrap().is_none(), "seq 2 is recognised as recorded");

    let steps = store.steps_of_build(build.id).await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].results, Some(Results::Failure.code()), "the late start did not reopen the step");
    assert_eq!(steps[0].state_string, "done");
    assert!(steps[0].complete_at.is_some());

    // Another worker cannot report for this build.
    let refused = store.begin_event(build.id, 3, "w2").await.unwrap_err();
    assert!(matches!(refused, RecordError::Rejected(_)), "{refused}");
    assert!(refused.to_string().contains("runs on worker `w1`, not on `w2`"), "{refused}");
}
