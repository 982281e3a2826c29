//! Timed schedulers fire each tick exactly once, however many masters run,
//! and go on firing when one of them stops.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::harness::TestStack;

/// (ticks fired, buildsets of the scheduler, each tick's buildset count).
async fn fired(stack: &TestStack) -> (Vec<DateTime<Utc>>, i64) {
    let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let ticks: Vec<DateTime<Utc>> =
        sqlx::query_scalar("select tick from scheduler_ticks where scheduler = 'every-second' order by tick")
            .fetch_all(&pool)
            .await
            .unwrap();
    let buildsets: i64 = sqlx::query_scalar("select count(*) from buildsets where scheduler = 'every-second'")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    (ticks, buildsets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_and_a_cron_scheduler_fire_once_per_tick_with_three_masters_and_with_one_stopped() {
    let yaml = "factories:\n  quick:\n    steps:\n      - name: hi\n        command: echo hi\n\
                builders:\n  - {name: ticking, factory: quick, workers: [w1]}\n\
                schedulers:\n  - {type: periodic, name: every-second, every_seconds: 1, builders: [ticking], branch: main}\n\
                \x20 - {type: nightly, name: cron, cron: \"*/2 * * * * *\", timezone: Europe/Amsterdam, builders: [ticking]}\n";
    let mut stack = TestStack::new(yaml, &["ticking"]).await;
    let first = stack.start_master("a").await;
    stack.start_master("b").await;
    stack.start_master("c").await;
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let (before, _) = fired(&stack).await;
    stack.stop_master(first).await;
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let (ticks, buildsets) = fired(&stack).await;

    assert!(before.len() >= 4, "ticks fired with three masters: {before:?}");
    assert!(ticks.len() >= before.len() + 4, "and go on with two: {ticks:?}");
    assert_eq!(buildsets, ticks.len() as i64, "one buildset per tick, never two");
    for pair in ticks.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_seconds(), 1, "no tick missed: {ticks:?}");
    }
    let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let cron: Vec<DateTime<Utc>> =
        sqlx::query_scalar("select tick from scheduler_ticks where scheduler = 'cron' order by tick")
            .fetch_all(&pool)
            .await
            .unwrap();
    let cron_sets: i64 =
        sqlx::query_scalar("select count(*) from buildsets where scheduler = 'cron'").fetch_one(&pool).await.unwrap();
    assert!(cron.len() >= 4, "{cron:?}");
    assert_eq!(cron_sets, cron.len() as i64);
    assert!(cron.iter().all(|tick| tick.timestamp() % 2 == 0), "on the even seconds: {cron:?}");
    let distinct: BTreeSet<_> = cron.iter().collect();
    assert_eq!(distinct.len(), cron.len());
    // The builds carry the scheduler's properties.
    let branch: Option<String> = sqlx::query_scalar(
        "select properties -> 'branch' ->> 0 from buildsets where scheduler = 'every-second' order by id limit 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(branch.as_deref(), Some("main"));
}
