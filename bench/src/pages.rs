//! Render time of the web UI's heaviest pages on the seeded history: the
//! overview of every configured builder (the 1,000 seeded ones and the
//! bench's own), a builder's page (its newest builds, and a page deep in its
//! history), and a build's page (steps and logs). One request at a time, so
//! each figure is the page's own time through HAProxy and a master, not a
//! queue's.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::percentiles_ms;

pub async fn pages(http: &reqwest::Client, url: &str, database: &sqlx::PgPool, rounds: usize) -> anyhow::Result<Value> {
    let (builds, builders): (i64, i64) = sqlx::query_as(
        "select (select count(*) from builds), (select count(*) from builders where configured and name like 'seed-%')",
    )
    .fetch_one(database)
    .await?;
    if builders < 1000 {
        bail!("bench/config/master.yaml must list the 1,000 seeded builders; {builders} are configured");
    }
    let (overview, overview_bytes) = time_gets(http, url, rounds, |_| "/".to_owned(), "data-builderid").await?;
    let (builder, _) =
        time_gets(http, url, rounds, |n| format!("/builders/seed-{}", (n * 37) % 1000), "Recent builds").await?;
    let (deep, _) =
        time_gets(http, url, rounds, |n| format!("/builders/seed-{}?before=100", (n * 53) % 1000), "Recent builds")
            .await?;
    // Real builds of the seeded builders, some way down their history.
    let samples: Vec<(String, i32)> = sqlx::query_as(
        r#"select b.name, x.number from builders b
           cross join lateral (select number from builds where builder_id = b.id
                               order by number desc offset 100 limit 1) x
           where b.name like 'seed-%' order by b.id limit $1"#,
    )
    .bind(rounds as i64)
    .fetch_all(database)
    .await?;
    if samples.is_empty() {
        bail!("the seeded builders have no builds; run bench/run.sh crawl (it seeds) first");
    }
    let (build, _) = time_gets(
        http,
        url,
        rounds,
        |n| {
            let (name, number) = &samples[n % samples.len()];
            format!("/builders/{name}/builds/{number}")
        },
        "Steps",
    )
    .await?;
    Ok(json!({
        "scenario": "pages",
        "seeded_builds": builds,
        "builders": builders,
        "overview_ms": percentiles_ms(overview),
        "overview_kb": overview_bytes as f64 / 1024.0,
        "builder_page_ms": percentiles_ms(builder),
        "builder_deep_page_ms": percentiles_ms(deep),
        "build_page_ms": percentiles_ms(build),
    }))
}

/// Sends `rounds` GETs one after the other, each checked for `marker`;
/// their latencies and the last page's size.
pub async fn time_gets(
    http: &reqwest::Client,
    url: &str,
    rounds: usize,
    path: impl Fn(usize) -> String,
    marker: &str,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut latencies = Vec::with_capacity(rounds);
    let mut size = 0;
    for n in 0..rounds {
        let path = path(n);
        let sent = Instant::now();
        let response = http.get(format!("{url}{path}")).send().await?;
        let status = response.status();
        let body = response.text().await.with_context(|| format!("GET {path}"))?;
        latencies.push(sent.elapsed());
        if !status.is_success() || !body.contains(marker) {
            bail!("GET {path} answered {status} without `{marker}`");
        }
        size = body.len();
    }
    Ok((latencies, size))
}
