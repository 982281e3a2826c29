//! The API at buildbot.python.org's scale: a private Postgres seeded by
//! `bench/seed.sql` with a million builds, and the plans Postgres picks for
//! the listings behind `builders/{b}/builds?order=-number&limit=20` and
//! `steps/{id}/logs`: index scans, never a scan of a whole table. Plans, not
//! timings, so the test holds on any machine.

use master::http::query;
use master::store::Store;
use master::store::resources::{BUILDS, Filter, LOGS, Resource, Scalar};

use crate::harness::repository_root;
use crate::servers::PrivatePostgres;

const BUILDS_WANTED: i64 = 1_000_000;
const BATCH: i64 = 250_000;

fn by(resource: &'static Resource, field: &str, id: i64) -> Filter {
    Filter::eq(resource.field(field).expect("field"), Scalar::Int(id))
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_builds_and_step_logs_are_index_scans_on_a_million_builds() {
    let postgres = PrivatePostgres::start().await;
    let (server, _) = postgres.admin_url().rsplit_once('/').map(|(a, b)| (a.to_owned(), b.to_owned())).unwrap();
    let url = format!("{server}/buildmaster_scale");
    master::store::upgrade(&url).await.expect("schema");
    for _ in 0..BUILDS_WANTED / BATCH {
        let output = postgres
            .psql("buildmaster_scale")
            .args(["-v", &format!("batch={BATCH}"), "-v", "steps=1", "-f"])
            .arg(repository_root().join("bench/seed.sql"))
            .output()
            .expect("psql runs");
        assert!(output.status.success(), "seeding: {}", String::from_utf8_lossy(&output.stderr));
    }
    let store = Store::connect(&url, 2, 2).await.unwrap();
    sqlx::query("analyze").execute(store.pool()).await.unwrap();
    let builds: i64 = sqlx::query_scalar("select count(*) from builds").fetch_one(store.pool()).await.unwrap();
    assert!(builds >= BUILDS_WANTED, "{builds} builds seeded");
    let builder_id: i32 =
        sqlx::query_scalar("select id from builders where name = 'seed-7'").fetch_one(store.pool()).await.unwrap();
    let step_id: i64 =
        sqlx::query_scalar("select id from steps order by id desc limit 1").fetch_one(store.pool()).await.unwrap();

    let recent = query::parse(
        &BUILDS,
        &params(&[("order", "-number"), ("limit", "20")]),
        vec![by(&BUILDS, "builderid", i64::from(builder_id))],
    )
    .unwrap();
    let plan = store.explain_list(&BUILDS, &recent.spec).await.unwrap();
    assert!(plan.contains("Index Scan Backward using builds_builder_id_number_key"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    let page = store.list(&BUILDS, &recent.spec).await.unwrap();
    let numbers: Vec<i64> = page.items.iter().map(|b| b["number"].as_i64().unwrap()).collect();
    assert_eq!(numbers.len(), 20);
    assert!(numbers.windows(2).all(|w| w[0] > w[1]), "newest first: {numbers:?}");
    assert_eq!(page.total, BUILDS_WANTED / 1000, "every build of the builder is counted");

    let logs = query::parse(&LOGS, &[], vec![by(&LOGS, "stepid", step_id)]).unwrap();
    let plan = store.explain_list(&LOGS, &logs.spec).await.unwrap();
    assert!(plan.contains("Index Scan using logs_step_id_slug_key"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert_eq!(store.list(&LOGS, &logs.spec).await.unwrap().items.len(), 1);
}
