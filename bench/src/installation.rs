//! Load as a real installation makes it: a few clients, each opening a new
//! connection per request through HAProxy (a script, a browser's form, a
//! webhook), and workers that run one build of a builder at a time. The
//! other scenarios keep connections open and many requests in flight, which
//! flatters; these say what people wait for.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::{force, percentiles_ms, wait_complete};

/// A client that opens a new connection for every request.
fn connection_per_request() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().pool_max_idle_per_host(0).build()?)
}

/// `clients` clients, one force at a time each, a new connection per
/// force, on a builder nobody serves (requests only queue up).
pub async fn forces(url: &str, database: &sqlx::PgPool, clients: usize, requests: usize) -> anyhow::Result<Value> {
    let started = Instant::now();
    let (latencies, ids) = closed_loop(url, "bench-queue", clients, requests).await?;
    let elapsed = started.elapsed();
    cancel(database, &ids).await?;
    Ok(json!({
        "scenario": "forces",
        "clients": clients,
        "requests": requests,
        "seconds": elapsed.as_secs_f64(),
        "requests_per_second": requests as f64 / elapsed.as_secs_f64(),
        "latency_ms": percentiles_ms(latencies),
    }))
}

/// Bursts of forces sent at once, each on its own new connection, as when
/// a push schedules many builders or people retry together.
pub async fn bursts(url: &str, database: &sqlx::PgPool, bursts: usize, size: usize) -> anyhow::Result<Value> {
    let mut latencies = Vec::with_capacity(bursts * size);
    let mut ids = Vec::with_capacity(bursts * size);
    for _ in 0..bursts {
        let mut forces = tokio::task::JoinSet::new();
        for _ in 0..size {
            let url = url.to_owned();
            forces.spawn(async move {
                let http = connection_per_request()?;
                let sent = Instant::now();
                let id = force(&http, &url, "bench-queue").await?;
                anyhow::Ok((sent.elapsed(), id))
            });
        }
        while let Some(done) = forces.join_next().await {
            let (latency, id) = done??;
            latencies.push(latency);
            ids.push(id);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cancel(database, &ids).await?;
    Ok(json!({
        "scenario": "bursts",
        "bursts": bursts,
        "size": size,
        "latency_ms": percentiles_ms(latencies),
    }))
}

/// One trivial build at a time on an idle system: from the request's commit
/// to the build's completion, as the system recorded both, and the
/// masters' CPU per build.
pub async fn submit_to_complete(
    url: &str,
    database: &sqlx::PgPool,
    builds: usize,
    master_pids: &[u32],
) -> anyhow::Result<Value> {
    let http = connection_per_request()?;
    let cpu_before = cpu_seconds(master_pids)?;
    let mut ids = Vec::with_capacity(builds);
    for _ in 0..builds {
        let id = force(&http, url, "bench-true").await?;
        wait_complete(database, &[id], Duration::from_secs(30)).await?;
        ids.push(id);
    }
    let cpu = cpu_seconds(master_pids)? - cpu_before;
    let waits: Vec<f64> = sqlx::query_scalar(
        "select extract(epoch from (complete_at - submitted_at))::float8 from buildrequests where id = any($1)",
    )
    .bind(&ids)
    .fetch_all(database)
    .await?;
    Ok(json!({
        "scenario": "submit-to-complete",
        "builds": builds,
        "latency_ms": percentiles_ms(waits.into_iter().map(|s| Duration::from_secs_f64(s.max(0.0))).collect()),
        "master_cpu_ms_per_build": cpu * 1000.0 / builds as f64,
    }))
}

/// `builds` trivial builds forced by `clients` clients (a new connection per
/// force) on `builders` in turn, until all are complete; the workers run
/// one build of a builder at a time each.
pub async fn builds(
    url: &str,
    database: &sqlx::PgPool,
    clients: usize,
    builds: usize,
    builders: &[String],
    workers: usize,
    master_pids: &[u32],
) -> anyhow::Result<Value> {
    let cpu_before = cpu_seconds(master_pids)?;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(builds);
    let mut forcing = tokio::task::JoinSet::new();
    for (index, builder) in builders.iter().enumerate() {
        // The builds split evenly, the clients too (at least one each).
        let share = builds / builders.len() + usize::from(index < builds % builders.len());
        let (url, builder) = (url.to_owned(), builder.clone());
        let clients = (clients / builders.len()).max(1);
        forcing.spawn(async move { closed_loop(&url, &builder, clients, share).await });
    }
    while let Some(done) = forcing.join_next().await {
        ids.extend(done??.1);
    }
    wait_complete(database, &ids, Duration::from_secs(300)).await?;
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(master_pids)? - cpu_before;
    let failed: i64 = sqlx::query_scalar("select count(*) from buildrequests where id = any($1) and results <> 0")
        .bind(&ids)
        .fetch_one(database)
        .await?;
    Ok(json!({
        "scenario": "builds",
        "clients": clients,
        "builds": builds,
        "builders": builders,
        "workers": workers,
        "not_successful": failed,
        "seconds": elapsed.as_secs_f64(),
        "builds_per_second": builds as f64 / elapsed.as_secs_f64(),
        "master_cpu_ms_per_build": cpu * 1000.0 / builds as f64,
    }))
}

/// `clients` clients forcing `builder` one at a time each, a new
/// connection per force, `total` forces in all.
pub async fn closed_loop(
    url: &str,
    builder: &str,
    clients: usize,
    total: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<i64>)> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (url, builder, next) = (url.to_owned(), builder.to_owned(), next.clone());
        tasks.spawn(async move {
            let http = connection_per_request()?;
            let (mut latencies, mut ids) = (Vec::new(), Vec::new());
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let sent = Instant::now();
                ids.push(force(&http, &url, &builder).await?);
                latencies.push(sent.elapsed());
            }
            anyhow::Ok((latencies, ids))
        });
    }
    let (mut latencies, mut ids) = (Vec::with_capacity(total), Vec::with_capacity(total));
    while let Some(done) = tasks.join_next().await {
        let (more_latencies, more_ids) = done??;
        latencies.extend(more_latencies);
        ids.extend(more_ids);
    }
    Ok((latencies, ids))
}

/// Nobody will run requests forced on `bench-queue`: cancel them so later
/// runs start from nothing.
async fn cancel(database: &sqlx::PgPool, ids: &[i64]) -> anyhow::Result<()> {
    sqlx::query("update buildrequests set state = 'complete', results = 6, complete_at = now() where id = any($1)")
        .bind(ids)
        .execute(database)
        .await?;
    Ok(())
}

/// CPU time (user and system) the processes used so far, from `/proc`.
pub fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat; is the master running?"))?;
        // The fields after the command name, which may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')').context("a /proc stat line")?.1.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
        ticks += fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    }
    // The kernel counts in USER_HZ, 100 on Linux.
    Ok(ticks as f64 / 100.0)
}
