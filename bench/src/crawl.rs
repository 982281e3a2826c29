//! Read load like a crawler's on a large history: random builds, their
//! steps, step logs and builder pages, as fast as the stack answers, while
//! builds keep being forced, whose dispatch latency shows what the reads
//! cost the pipeline. The history comes from `bench/seed.sql`.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use crate::{Limit, dispatch_latencies, force_steadily, percentiles_ms, wait_complete};

/// What there is to read: id ranges of the seeded history.
#[derive(sqlx::FromRow)]
struct History {
    builds: i64,
    steps: i64,
    min_build: i64,
    max_build: i64,
    min_step: i64,
    max_step: i64,
    builders: Vec<i32>,
}

/// A small, fast, reproducible generator (xorshift64*); quality is
/// irrelevant for picking ids.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }

    fn between(&mut self, low: i64, high: i64) -> i64 {
        low + self.below((high - low + 1) as u64) as i64
    }
}

/// One GET as a crawler would send it: the path and its kind, for the report.
fn pick(random: &mut Random, history: &History) -> (&'static str, String) {
    match random.below(100) {
        0..40 => ("step logs", format!("/api/v2/steps/{}/logs", random.between(history.min_step, history.max_step))),
        40..65 => ("build", format!("/api/v2/builds/{}", random.between(history.min_build, history.max_build))),
        65..80 => {
            ("build steps", format!("/api/v2/builds/{}/steps", random.between(history.min_build, history.max_build)))
        }
        _ => {
            let builder = history.builders[random.below(history.builders.len() as u64) as usize];
            ("builder page", format!("/api/v2/builders/{builder}/builds?order=-number&limit=20"))
        }
    }
}

pub async fn crawl(
    http: &reqwest::Client,
    url: &str,
    database: &sqlx::PgPool,
    duration: Duration,
    concurrency: usize,
    dispatch_per_second: u64,
) -> anyhow::Result<Value> {
    let history: History = sqlx::query_as(
        r#"select (select count(*) from builds) as builds, (select count(*) from steps) as steps,
                  (select min(id) from builds) as min_build, (select max(id) from builds) as max_build,
                  (select min(id) from steps) as min_step, (select max(id) from steps) as max_step,
                  (select array_agg(id) from builders where name like 'seed-%') as builders"#,
    )
    .fetch_one(database)
    .await?;
    let history = std::sync::Arc::new(history);
    let dispatching = {
        let (http, url) = (http.clone(), url.to_owned());
        tokio::spawn(async move { force_steadily(&http, &url, dispatch_per_second, Limit::Duration(duration)).await })
    };
    let started = Instant::now();
    let mut crawlers = tokio::task::JoinSet::new();
    for n in 0..concurrency {
        let (http, url, history) = (http.clone(), url.to_owned(), history.clone());
        crawlers.spawn(async move {
            let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
            let (mut latencies, mut errors) = (Vec::new(), Vec::new());
            while started.elapsed() < duration {
                let (kind, path) = pick(&mut random, &history);
                let sent = Instant::now();
                let response = http.get(format!("{url}{path}")).send().await?;
                let status = response.status();
                response.bytes().await?;
                latencies.push(sent.elapsed());
                if !status.is_success() {
                    errors.push(format!("{kind} {path}: {status}"));
                }
            }
            anyhow::Ok((latencies, errors))
        });
    }
    let (mut latencies, mut errors) = (Vec::new(), Vec::new());
    while let Some(done) = crawlers.join_next().await {
        let (more_latencies, more_errors) = done??;
        latencies.extend(more_latencies);
        errors.extend(more_errors);
    }
    let elapsed = started.elapsed();
    let ids = dispatching.await??;
    wait_complete(database, &ids, Duration::from_secs(300)).await?;
    if errors.len() * 100 > latencies.len() {
        bail!("{} of {} reads failed, e.g. {}", errors.len(), latencies.len(), errors[0]);
    }
    let reads = latencies.len();
    Ok(json!({
        "scenario": "crawl",
        "seeded_builds": history.builds,
        "seeded_steps": history.steps,
        "concurrency": concurrency,
        "seconds": elapsed.as_secs_f64(),
        "reads": reads,
        "failed_reads": errors.len(),
        "reads_per_second": reads as f64 / elapsed.as_secs_f64(),
        "read_latency_ms": percentiles_ms(latencies),
        "dispatch_per_second": dispatch_per_second,
        "dispatch_latency_ms": dispatch_latencies(database, &ids).await?,
    }))
}
