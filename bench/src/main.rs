//! The load generator. It drives a running stack through HAProxy, like a
//! user's scripts would, and reads the timestamps the system itself recorded
//! in Postgres for the latencies it cannot see from outside. `bench/run.sh`
//! brings up the stack it drives (bench/config) and starts its workers.
//!
//! Every scenario is bounded in requests and time and prints one JSON object;
//! `bench/run.sh` collects them into `bench/results/latest.jsonl` and
//! `bench/RESULTS.md`.

mod crawl;
mod installation;
mod logs;
mod memory;
mod pages;
mod report;
mod reporters;
mod results;
mod views;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "bench", about = "buildmaster load generator")]
struct Cli {
    /// The stack's public URL (HAProxy).
    #[arg(long, default_value = "http://127.0.0.1:9011")]
    url: String,
    /// The stack's database, read for the timestamps it records.
    #[arg(long, default_value = "postgres://buildmaster:buildmaster@127.0.0.1:5432/buildmaster_bench")]
    database_url: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Force requests per second at a fixed concurrency, on a builder no
    /// running worker serves (requests only queue up).
    Enqueue {
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 5000)]
        requests: usize,
    },
    /// Trivial builds (one step running `true`) per second, forced as fast as
    /// they are accepted, until all are complete.
    Throughput {
        /// How many worker processes serve the builder (recorded, not started).
        #[arg(long)]
        workers: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 2000)]
        builds: usize,
    },
    /// Turns the JSON lines the scenarios printed into bench/RESULTS.md.
    Report {
        /// One JSON object per line, as the scenarios print them.
        #[arg(long)]
        input: std::path::PathBuf,
        #[arg(long)]
        output: std::path::PathBuf,
        /// A line about the machine (cores, memory, versions).
        #[arg(long)]
        machine: String,
    },
    /// Request accepted → step started, at a steady moderate rate.
    Dispatch {
        #[arg(long, default_value_t = 50)]
        per_second: u64,
        #[arg(long, default_value_t = 500)]
        builds: usize,
    },
    /// A step printing its clock every few milliseconds, followed through
    /// HAProxy: printed → arrived at the client.
    LiveLog,
    /// A step printing 100 MB: ingest, archive, archived size, and a raw
    /// download of it with the masters' memory sampled meanwhile.
    LogThroughput {
        /// The masters' process ids, whose memory is sampled during the download.
        #[arg(long, value_delimiter = ',')]
        master_pids: Vec<u32>,
    },
    /// A JUnit file of 100,000 test cases read into test results: the
    /// time after its step's end, and the masters' memory.
    JunitIngest {
        #[arg(long, value_delimiter = ',')]
        master_pids: Vec<u32>,
    },
    /// The Tests page and its APIs on the seeded history with test results.
    TestsPage {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// The web UI's heaviest pages on the seeded history, one at a time.
    Pages {
        #[arg(long, default_value_t = 50)]
        rounds: usize,
    },
    /// The console, the release board and the waterfall on the seeded
    /// history, one at a time.
    Views {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// Forces from a few clients, a new connection per force, on a builder
    /// nobody serves.
    Forces {
        #[arg(long)]
        clients: usize,
        #[arg(long, default_value_t = 1000)]
        requests: usize,
    },
    /// Bursts of forces sent at once, each on a new connection.
    Bursts {
        #[arg(long, default_value_t = 10)]
        bursts: usize,
        #[arg(long, default_value_t = 20)]
        size: usize,
    },
    /// One trivial build at a time, request committed → build complete.
    SubmitToComplete {
        #[arg(long, default_value_t = 200)]
        builds: usize,
        /// The masters' process ids, whose CPU time is read.
        #[arg(long, value_delimiter = ',')]
        master_pids: Vec<u32>,
    },
    /// Trivial builds forced by a few clients (a new connection per force)
    /// on one or more builders, until all are complete.
    Builds {
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 2000)]
        builds: usize,
        #[arg(long, value_delimiter = ',', default_value = "bench-true")]
        builders: Vec<String>,
        /// How many worker processes serve them (recorded, not started).
        #[arg(long)]
        workers: usize,
        #[arg(long, value_delimiter = ',')]
        master_pids: Vec<u32>,
    },
    /// Trivial builds forced by a few clients on the builder the `statuses`
    /// reporter covers: each build's end → its commit status at a stand-in
    /// for GitHub this load generator serves.
    ReporterStatuses {
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 200)]
        builds: usize,
        /// Where settings.yaml's `github.api_url` points.
        #[arg(long, default_value = "127.0.0.1:9098")]
        listen: std::net::SocketAddr,
    },
    /// GETs like a crawler's on a seeded database (see bench/seed.sql) while
    /// builds keep being forced at a moderate rate.
    Crawl {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Builds forced per second meanwhile, whose dispatch latency is measured.
        #[arg(long, default_value_t = 50)]
        dispatch_per_second: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Scenario::Report { input, output, machine } = &cli.scenario {
        return report::write(input, output, machine);
    }
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let database = sqlx::PgPool::connect(&cli.database_url)
        .await
        .with_context(|| format!("cannot reach the bench database {}", cli.database_url))?;
    let result = match cli.scenario {
        Scenario::Enqueue { concurrency, requests } => {
            enqueue(&http, &cli.url, &database, concurrency, requests).await?
        }
        Scenario::Throughput { workers, concurrency, builds } => {
            let mut result = throughput(&http, &cli.url, &database, concurrency, builds).await?;
            result["workers"] = json!(workers);
            result
        }
        Scenario::Dispatch { per_second, builds } => {
            let ids = force_steadily(&http, &cli.url, per_second, Limit::Builds(builds)).await?;
            wait_complete(&database, &ids, Duration::from_secs(300)).await?;
            json!({
                "scenario": "dispatch",
                "per_second": per_second,
                "builds": builds,
                "dispatch_latency_ms": dispatch_latencies(&database, &ids).await?,
            })
        }
        Scenario::LiveLog => logs::live_log(&http, &cli.url).await?,
        Scenario::LogThroughput { master_pids } => {
            logs::log_throughput(&http, &cli.url, &database, &master_pids).await?
        }
        Scenario::Crawl { seconds, concurrency, dispatch_per_second } => {
            crawl::crawl(&http, &cli.url, &database, Duration::from_secs(seconds), concurrency, dispatch_per_second)
                .await?
        }
        Scenario::Forces { clients, requests } => installation::forces(&cli.url, &database, clients, requests).await?,
        Scenario::Bursts { bursts, size } => installation::bursts(&cli.url, &database, bursts, size).await?,
        Scenario::SubmitToComplete { builds, master_pids } => {
            installation::submit_to_complete(&cli.url, &database, builds, &master_pids).await?
        }
        Scenario::Builds { clients, builds, builders, workers, master_pids } => {
            installation::builds(&cli.url, &database, clients, builds, &builders, workers, &master_pids).await?
        }
        Scenario::ReporterStatuses { clients, builds, listen } => {
            reporters::statuses(&cli.url, &database, clients, builds, listen).await?
        }
        Scenario::Pages { rounds } => pages::pages(&http, &cli.url, &database, rounds).await?,
        Scenario::Views { rounds } => views::views(&http, &cli.url, &database, rounds).await?,
        Scenario::JunitIngest { master_pids } => {
            results::junit_ingest(&http, &cli.url, &database, &master_pids).await?
        }
        Scenario::TestsPage { rounds } => results::tests_page(&http, &cli.url, &database, rounds).await?,
        Scenario::Report { .. } => unreachable!("handled above"),
    };
    println!("{result}");
    Ok(())
}

/// Forces one build of `builder`; returns the request id.
pub async fn force(http: &reqwest::Client, url: &str, builder: &str) -> anyhow::Result<i64> {
    let body =
        json!({"jsonrpc": "2.0", "method": "force", "id": 1, "params": {"builderNames": [builder], "reason": "bench"}});
    let response = http.post(format!("{url}/api/v2/forceschedulers/force")).json(&body).send().await?;
    let status = response.status();
    let answer: Value = response.json().await?;
    if !status.is_success() {
        bail!("force answered {status}: {answer}");
    }
    answer["result"][1].as_object().and_then(|r| r.values().next()).and_then(Value::as_i64).context("no request id")
}

/// Runs `total` forces with `concurrency` in flight; returns each latency
/// and the wall time.
async fn force_many(
    http: &reqwest::Client,
    url: &str,
    builder: &str,
    concurrency: usize,
    total: usize,
) -> anyhow::Result<(Vec<Duration>, Duration, Vec<i64>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, url, builder, next) = (http.clone(), url.to_owned(), builder.to_owned(), next.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut requests = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let sent = Instant::now();
                requests.push(force(&http, &url, &builder).await?);
                latencies.push(sent.elapsed());
            }
            anyhow::Ok((latencies, requests))
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut requests = Vec::with_capacity(total);
    while let Some(done) = tasks.join_next().await {
        let (more_latencies, more_requests) = done??;
        latencies.extend(more_latencies);
        requests.extend(more_requests);
    }
    Ok((latencies, started.elapsed(), requests))
}

pub fn percentiles_ms(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(index).map_or(0.0, |d| (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0)
    };
    json!({"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": at(1.0), "samples": samples.len()})
}

async fn enqueue(
    http: &reqwest::Client,
    url: &str,
    database: &sqlx::PgPool,
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<Value> {
    let (latencies, elapsed, ids) = force_many(http, url, "bench-queue", concurrency, requests).await?;
    // Nobody will run these; cancel them so later runs start from nothing.
    sqlx::query("update buildrequests set state = 'complete', results = 6, complete_at = now() where id = any($1)")
        .bind(&ids)
        .execute(database)
        .await?;
    Ok(json!({
        "scenario": "enqueue",
        "concurrency": concurrency,
        "requests": requests,
        "seconds": elapsed.as_secs_f64(),
        "requests_per_second": requests as f64 / elapsed.as_secs_f64(),
        "latency_ms": percentiles_ms(latencies),
    }))
}

/// Waits until every request is complete; returns when the last completed.
pub async fn wait_complete(database: &sqlx::PgPool, ids: &[i64], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let pending: i64 =
            sqlx::query_scalar("select count(*) from buildrequests where id = any($1) and state <> 'complete'")
                .bind(ids)
                .fetch_one(database)
                .await?;
        if pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{pending} of {} builds not complete after {limit:?}", ids.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn throughput(
    http: &reqwest::Client,
    url: &str,
    database: &sqlx::PgPool,
    concurrency: usize,
    builds: usize,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let (_, _, ids) = force_many(http, url, "bench-true", concurrency, builds).await?;
    wait_complete(database, &ids, Duration::from_secs(300)).await?;
    let elapsed = started.elapsed();
    let failed: i64 = sqlx::query_scalar("select count(*) from buildrequests where id = any($1) and results <> 0")
        .bind(&ids)
        .fetch_one(database)
        .await?;
    Ok(json!({
        "scenario": "throughput",
        "builds": builds,
        "not_successful": failed,
        "seconds": elapsed.as_secs_f64(),
        "builds_per_second": builds as f64 / elapsed.as_secs_f64(),
    }))
}

/// How long a steady stream of forces lasts.
#[derive(Clone, Copy)]
pub enum Limit {
    Builds(usize),
    Duration(Duration),
}

/// Forces `bench-true` at a steady rate; returns the request ids.
pub async fn force_steadily(
    http: &reqwest::Client,
    url: &str,
    per_second: u64,
    limit: Limit,
) -> anyhow::Result<Vec<i64>> {
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / per_second.max(1)));
    let started = Instant::now();
    let mut forces = tokio::task::JoinSet::new();
    let mut sent = 0;
    loop {
        let more = match limit {
            Limit::Builds(builds) => sent < builds,
            Limit::Duration(duration) => started.elapsed() < duration,
        };
        if !more {
            break;
        }
        ticker.tick().await;
        let (http, url) = (http.clone(), url.to_owned());
        forces.spawn(async move { force(&http, &url, "bench-true").await });
        sent += 1;
    }
    let mut ids = Vec::with_capacity(sent);
    while let Some(id) = forces.join_next().await {
        ids.push(id??);
    }
    Ok(ids)
}

/// Accepted (the request row's commit) to the first step's process start,
/// both as the system recorded them.
pub async fn dispatch_latencies(database: &sqlx::PgPool, ids: &[i64]) -> anyhow::Result<Value> {
    let waits: Vec<f64> = sqlx::query_scalar(
        r#"select extract(epoch from (s.started_at - r.submitted_at))::float8
           from buildrequests r join builds b on b.buildrequest_id = r.id
                join steps s on s.build_id = b.id and s.number = 0
           where r.id = any($1)"#,
    )
    .bind(ids)
    .fetch_all(database)
    .await?;
    Ok(percentiles_ms(waits.into_iter().map(|seconds| Duration::from_secs_f64(seconds.max(0.0))).collect()))
}
