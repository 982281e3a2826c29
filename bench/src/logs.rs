//! The log scenarios: how soon a printed line reaches someone following the
//! log, and what a 100 MB log costs to ingest, archive and download.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::{force, percentiles_ms};

/// Polls the API until the request's build has a first step with a log;
/// returns the step and log ids.
async fn first_log(http: &reqwest::Client, url: &str, request: i64) -> anyhow::Result<(i64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let builds: Value =
            http.get(format!("{url}/api/v2/builds?buildrequestid={request}")).send().await?.json().await?;
        if let Some(build) = builds["builds"].get(0) {
            let steps: Value =
                http.get(format!("{url}/api/v2/builds/{}/steps", build["buildid"])).send().await?.json().await?;
            if let Some(step_id) = steps["steps"][0]["stepid"].as_i64() {
                let logs: Value = http.get(format!("{url}/api/v2/steps/{step_id}/logs")).send().await?.json().await?;
                if let Some(log_id) = logs["logs"][0]["logid"].as_i64() {
                    return Ok((step_id, log_id));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("request {request} has no build with a log after 60s")
}

fn now_ns() -> i64 {
    Utc::now().timestamp_nanos_opt().expect("a clock within the representable years")
}

/// The `bench-live` step prints its clock (`date +%s%N`) every 20 ms; each
/// line's latency is its arrival at this client minus the time it holds.
/// Lines printed before the client attached are not counted.
pub async fn live_log(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let request = force(http, url, "bench-live").await?;
    let (_, log_id) = first_log(http, url, request).await?;
    let attached = now_ns();
    let response = http.get(format!("{url}/api/v2/logs/{log_id}/raw?follow=true")).send().await?;
    if !response.status().is_success() {
        bail!("following log {log_id} answered {}", response.status());
    }
    let mut pieces = response.bytes_stream();
    let mut pending = Vec::new();
    let (mut samples, mut before_attach) = (Vec::new(), 0);
    while let Some(piece) = tokio::time::timeout(Duration::from_secs(60), pieces.next()).await? {
        let arrived = now_ns();
        pending.extend_from_slice(&piece?);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            let printed: i64 = text.trim().parse().with_context(|| format!("not a clock line: {text:?}"))?;
            if printed < attached {
                before_attach += 1;
            } else {
                samples.push(Duration::from_nanos((arrived - printed).max(0) as u64));
            }
        }
    }
    Ok(json!({
        "scenario": "live-log",
        "lines_before_attach": before_attach,
        "latency_ms": percentiles_ms(samples),
    }))
}

#[derive(sqlx::FromRow)]
struct StepTimes {
    started_at: DateTime<Utc>,
    complete_at: DateTime<Utc>,
    num_bytes: i64,
    archived_bytes: i64,
}

/// The `bench-100mb` step prints 100 MB. Ingest is the step's own time
/// (the worker stamps the end once every byte is in Redis); archiving is
/// from then until the API shows the log complete; then the raw download
/// through HAProxy, with the masters' resident memory sampled every 5 ms.
pub async fn log_throughput(
    http: &reqwest::Client,
    url: &str,
    database: &sqlx::PgPool,
    master_pids: &[u32],
) -> anyhow::Result<Value> {
    let request = force(http, url, "bench-100mb").await?;
    let (step_id, log_id) = first_log(http, url, request).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let archived_seen = loop {
        let log: Value = http.get(format!("{url}/api/v2/logs/{log_id}")).send().await?.json().await?;
        if log["logs"][0]["complete"] == true {
            break Utc::now();
        }
        if Instant::now() > deadline {
            bail!("log {log_id} not archived after 300s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let times: StepTimes = sqlx::query_as(
        r#"select s.started_at, s.complete_at, l.num_bytes,
                  (select coalesce(sum(octet_length(content)), 0)::int8 from log_chunks where log_id = l.id) as archived_bytes
           from steps s join logs l on l.step_id = s.id where s.id = $1 and l.id = $2"#,
    )
    .bind(step_id)
    .bind(log_id)
    .fetch_one(database)
    .await?;
    let ingest_seconds = (times.complete_at - times.started_at).as_seconds_f64();
    let archive_seconds = (archived_seen - times.complete_at).as_seconds_f64();

    let sampler = crate::memory::PeakSampler::start(master_pids);
    let started = Instant::now();
    let response = http.get(format!("{url}/api/v2/logs/{log_id}/raw")).send().await?;
    if !response.status().is_success() {
        bail!("downloading log {log_id} answered {}", response.status());
    }
    let mut downloaded = 0u64;
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        downloaded += piece?.len() as u64;
    }
    let download_seconds = started.elapsed().as_secs_f64();
    let memory = sampler.stop().await?;
    if downloaded != times.num_bytes as u64 {
        bail!("downloaded {downloaded} bytes of log {log_id}, which holds {}", times.num_bytes);
    }
    let mb = times.num_bytes as f64 / 1e6;
    Ok(json!({
        "scenario": "log-throughput",
        "log_mb": mb,
        "ingest_seconds": ingest_seconds,
        "ingest_mb_per_second": mb / ingest_seconds,
        "archive_seconds": archive_seconds,
        "archived_mb": times.archived_bytes as f64 / 1e6,
        "download_seconds": download_seconds,
        "download_mb_per_second": mb / download_seconds,
        "master_rss_before_mb": memory.baseline,
        "master_rss_peak_mb": memory.peaks,
        "master_extra_mb": memory.extra_mb(),
    }))
}
