//! Build numbers come from the claim statement under the builder row's lock:
//! however many masters claim at once, they are 1, 2, 3 … with no gap and no
//! duplicate, and no request is handed out twice.

use std::collections::BTreeSet;

use master::store::{Claim, Store};

use crate::harness::{TestStack, master_yaml, queue_requests};

static NO_PROPERTIES: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| serde_json::json!({}));

fn claim(builder_name: &str, builder_id: i32, worker_id: i32, master_id: i32, claim_token: uuid::Uuid) -> Claim<'_> {
    Claim {
        builder_id,
        builder_name,
        worker_id,
        worker_name: "w1",
        master_id,
        claim_token,
        lease_seconds: 60,
        configured_properties: &NO_PROPERTIES,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_claiming_at_once_give_unique_gapless_build_numbers() {
    let stack =
        TestStack::new(&master_yaml(&[("numbered", "- name: t\n  command: [\"true\"]\n")]), &["numbered"]).await;
    let config = stack.config();
    // Two masters: two pools, two master rows.
    let store_a = Store::connect(&stack.database_url, 8, 1).await.unwrap();
    let store_b = Store::connect(&stack.database_url, 8, 1).await.unwrap();
    let master_a = store_a.register_master("a").await.unwrap();
    let master_b = store_b.register_master("b").await.unwrap();
    let builder_id = store_a.sync_builders(&config.master.builders).await.unwrap()["numbered"];
    let worker_id = store_a.ensure_worker("w1").await.unwrap();

    const REQUESTS: usize = 60;
    queue_requests(&store_a, builder_id, REQUESTS).await;

    // Twice as many claims as requests, half on each master, all at once.
    let mut claims = tokio::task::JoinSet::new();
    for i in 0..REQUESTS * 2 {
        let (store, master_id) = if i % 2 == 0 { (store_a.clone(), master_a) } else { (store_b.clone(), master_b) };
        claims.spawn(async move {
            store.claim(&claim("numbered", builder_id, worker_id, master_id, uuid::Uuid::new_v4())).await.unwrap()
        });
    }
    let mut numbers = Vec::new();
    let mut requests_claimed = BTreeSet::new();
    let mut by_master = BTreeSet::new();
    while let Some(claimed) = claims.join_next().await {
        if let Some(build) = claimed.unwrap() {
            numbers.push(build.number);
            assert!(requests_claimed.insert(build.buildrequest_id), "request {} claimed twice", build.buildrequest_id);
        }
    }
    numbers.sort();
    assert_eq!(numbers, (1..=REQUESTS as i32).collect::<Vec<_>>());
    let rows: Vec<(i32,)> = sqlx::query_as("select master_id from builds").fetch_all(store_a.pool()).await.unwrap();
    by_master.extend(rows.into_iter().map(|(id,)| id));
    assert_eq!(by_master.len(), 2, "both masters claimed some");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_retried_with_the_same_token_returns_the_same_build() {
    let stack = TestStack::new(&master_yaml(&[("retried", "- name: t\n  command: [\"true\"]\n")]), &["retried"]).await;
    let store = Store::connect(&stack.database_url, 4, 1).await.unwrap();
    let master_id = store.register_master("a").await.unwrap();
    let builder_id = store.sync_builders(&stack.config().master.builders).await.unwrap()["retried"];
    let worker_id = store.ensure_worker("w1").await.unwrap();
    queue_requests(&store, builder_id, 2).await;
    let token = uuid::Uuid::new_v4();
    let first = store.claim(&claim("retried", builder_id, worker_id, master_id, token)).await.unwrap().unwrap();
    let again = store.claim(&claim("retried", builder_id, worker_id, master_id, token)).await.unwrap().unwrap();
    assert_eq!((first.id, first.number), (again.id, again.number));
    let count: i64 = sqlx::query_scalar("select count(*) from builds").fetch_one(store.pool()).await.unwrap();
    assert_eq!(count, 1, "the second request is still pending");
}

#[tokio::test]
async fn a_master_refuses_an_out_of_date_schema_and_says_how_to_fix_it() {
    let stack = TestStack::new(&master_yaml(&[("any", "- name: t\n  command: [\"true\"]\n")]), &["any"]).await;
    let store = Store::connect(&stack.database_url, 2, 1).await.unwrap();
    sqlx::query("delete from _sqlx_migrations").execute(store.pool()).await.unwrap();
    let error = store.check_schema().await.unwrap_err().to_string();
    assert!(error.contains("buildmaster upgrade-master"), "{error}");
}

/// A store, a master row, the builder `held` with `count` pending requests in
/// one buildset, and worker w1.
async fn one_builder_with_requests(stack: &TestStack, count: usize) -> (Store, i32, i32, i32) {
    let store = Store::connect(&stack.database_url, 4, 1).await.unwrap();
    let master_id = store.register_master("a").await.unwrap();
    let builder_id = store.sync_builders(&stack.config().master.builders).await.unwrap()["held"];
    let worker_id = store.ensure_worker("w1").await.unwrap();
    queue_requests(&store, builder_id, count).await;
    (store, master_id, builder_id, worker_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buildset_finishing_one_build_does_not_hide_its_pending_request_from_claims() {
    let stack = TestStack::new(&master_yaml(&[("held", "- name: t\n  command: [\"true\"]\n")]), &["held"]).await;
    let (store, master_id, builder_id, worker_id) = one_builder_with_requests(&stack, 2).await;
    let first = store.claim(&claim("held", builder_id, worker_id, master_id, uuid::Uuid::new_v4())).await.unwrap();
    let first = first.expect("the first request is claimed");
    // The first build's end is being recorded (its buildset checked for
    // completion) while the second request is claimed.
    let mut recording = store.pool().begin().await.unwrap();
    Store::finish_build(&mut recording, first.id, shared::model::Results::Success, "done", chrono::Utc::now())
        .await
        .unwrap();
    let second = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        store.claim(&claim("held", builder_id, worker_id, master_id, uuid::Uuid::new_v4())),
    )
    .await
    .expect("the claim does not wait for the recording transaction")
    .unwrap();
    assert!(second.is_some(), "the pending request of the same buildset is claimable meanwhile");
    recording.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_cannot_reach_a_pending_request_has_it_announced_again_soon() {
    let stack = TestStack::new(&master_yaml(&[("held", "- name: t\n  command: [\"true\"]\n")]), &["held"]).await;
    let (store, master_id, builder_id, worker_id) = one_builder_with_requests(&stack, 1).await;
    // Another transaction holds the only request (as a cancel does for a
    // moment) while a worker's claim runs.
    let mut holder = store.pool().begin().await.unwrap();
    let (request_id,): (i64,) =
        sqlx::query_as("select id from buildrequests for update").fetch_one(&mut *holder).await.unwrap();
    let claiming = tokio::spawn({
        let store = store.clone();
        async move { store.claim(&claim("held", builder_id, worker_id, master_id, uuid::Uuid::new_v4())).await.unwrap() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    holder.commit().await.unwrap();
    assert!(claiming.await.unwrap().is_none(), "the request was out of reach");
    let announced: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select announced_at from buildrequests where id = $1")
            .bind(request_id)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(announced, None, "marked unannounced: the reconciler rings for it within seconds");
}
