//! What a build printed, at scale: a JUnit file of 100,000 test cases read
//! into test results (how long after its step ended, and how much memory the
//! masters took for it), and the Tests page and its APIs on the seeded
//! history of builds with test results (bench/seed-tests.sql).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::{force, percentiles_ms};

#[derive(sqlx::FromRow)]
struct Ingested {
    started_at: DateTime<Utc>,
    complete_at: DateTime<Utc>,
    tests: i64,
    failed: i64,
}

/// The `bench-junit` step writes a JUnit file of 100,000 cases (one in a
/// hundred failed, with a message) and sends it. Sending is part of the
/// step's own time; reading it into Postgres is from the step's end until
/// its test result set is there, with the masters' memory sampled every
/// 5 ms meanwhile.
pub async fn junit_ingest(
    http: &reqwest::Client,
    url: &str,
    database: &sqlx::PgPool,
    master_pids: &[u32],
) -> anyhow::Result<Value> {
    let sampler = crate::memory::PeakSampler::start(master_pids);
    let request = force(http, url, "bench-junit").await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (recorded_seen, step_id) = loop {
        let found: Option<(i64,)> = sqlx::query_as(
            r#"select s.step_id from test_result_sets s join builds b on b.id = s.build_id
               where b.buildrequest_id = $1 and s.complete"#,
        )
        .bind(request)
        .fetch_optional(database)
        .await?;
        if let Some((step_id,)) = found {
            break (Utc::now(), step_id);
        }
        if Instant::now() > deadline {
            bail!("the test results of request {request} were not recorded within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let memory = sampler.stop().await?;
    let ingested: Ingested = sqlx::query_as(
        r#"select st.started_at, st.complete_at,
                  (select count(*) from test_results r join test_result_sets s on s.id = r.test_result_set_id
                   where s.step_id = st.id) as tests,
                  (select coalesce(sum(tests_failed), 0)::int8 from test_result_sets where step_id = st.id) as failed
           from steps st where st.id = $1"#,
    )
    .bind(step_id)
    .fetch_one(database)
    .await
    .context("reading the step's times")?;
    if ingested.tests != 100_000 || ingested.failed != 1_000 {
        bail!("expected 100,000 tests, 1,000 failed; recorded {} and {}", ingested.tests, ingested.failed);
    }
    Ok(json!({
        "scenario": "junit-ingest",
        "tests": ingested.tests,
        "failed": ingested.failed,
        "step_seconds": (ingested.complete_at - ingested.started_at).as_seconds_f64(),
        "read_seconds": (recorded_seen - ingested.complete_at).as_seconds_f64(),
        "master_rss_before_mb": memory.baseline,
        "master_rss_peak_mb": memory.peaks,
        "master_extra_mb": memory.extra_mb(),
    }))
}

/// The Tests page and its APIs on the seeded history, one request at a time.
pub async fn tests_page(
    http: &reqwest::Client,
    url: &str,
    database: &sqlx::PgPool,
    rounds: usize,
) -> anyhow::Result<Value> {
    let (builds, sets, results): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from builds), (select count(*) from test_result_sets), (select count(*) from test_results)",
    )
    .fetch_one(database)
    .await?;
    if sets < 100_000 {
        bail!("the seeded history has {sets} test result sets; run bench/run.sh tests-page (it seeds) first");
    }
    let mut timings = serde_json::Map::new();
    for (name, path, marker) in [
        ("tests_page_ms", "/tests?branch=main", "Failing on"),
        ("failing_api_ms", "/api/v2/tests/failing?branch=main", "failing_tests"),
        ("flaky_api_ms", "/api/v2/tests/flaky", "flaky_tests"),
    ] {
        let mut latencies = Vec::with_capacity(rounds);
        let mut answer = String::new();
        for _ in 0..rounds {
            let sent = Instant::now();
            let response = http.get(format!("{url}{path}")).send().await?;
            let status = response.status();
            answer = response.text().await.with_context(|| format!("GET {path}"))?;
            latencies.push(sent.elapsed());
            if !status.is_success() || !answer.contains(marker) {
                bail!("GET {path} answered {status} without `{marker}`: {}", &answer[..answer.len().min(300)]);
            }
        }
        timings.insert(name.into(), percentiles_ms(latencies));
        if name == "failing_api_ms" {
            let failing: Value = serde_json::from_str(&answer)?;
            timings.insert("failing_tests".into(), failing["meta"]["total"].clone());
        }
        if name == "flaky_api_ms" {
            let flaky: Value = serde_json::from_str(&answer)?;
            timings.insert("flaky_tests".into(), flaky["meta"]["total"].clone());
        }
    }
    let mut result = json!({
        "scenario": "tests-page",
        "seeded_builds": builds,
        "test_result_sets": sets,
        "test_results": results,
        "rounds": rounds,
    });
    result.as_object_mut().expect("an object").extend(timings);
    Ok(result)
}
