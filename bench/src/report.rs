//! Turns the JSON lines the scenarios printed into `bench/RESULTS.md`, each
//! figure next to its target, met or not.

use anyhow::{Context, bail};
use serde_json::Value;

/// Writes the results next to the targets, met or not.
pub fn write(input: &std::path::Path, output: &std::path::Path, machine: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(input).with_context(|| format!("cannot read {}", input.display()))?;
    let results: Vec<Value> =
        text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    for result in &results {
        let f = |path: &[&str]| path.iter().fold(result, |v, k| &v[*k]).as_f64().unwrap_or(f64::NAN);
        match result["scenario"].as_str().unwrap_or("") {
            "enqueue" => {
                let rate = f(&["requests_per_second"]);
                rows.push(format!(
                    "| Enqueue ({} forces, {} in flight) | {rate:.0} requests/s; latency p50 {} ms, p99 {} ms | ≥ 2,000 requests/s | {} |",
                    result["requests"], result["concurrency"], f(&["latency_ms", "p50"]), f(&["latency_ms", "p99"]), verdict(rate >= 2000.0)
                ));
            }
            "throughput" => {
                let rate = f(&["builds_per_second"]);
                let workers = result["workers"].as_u64().unwrap_or(0);
                let target = if workers >= 8 { "≥ 300 builds/s (8 workers)" } else { "(no target)" };
                rows.push(format!(
                    "| End-to-end, {} trivial builds, {workers} workers | {rate:.0} builds/s ({} not successful) | {target} | {} |",
                    result["builds"], result["not_successful"], if workers >= 8 { verdict(rate >= 300.0) } else { "" }
                ));
            }
            "dispatch" => {
                let (p50, p99) = (f(&["dispatch_latency_ms", "p50"]), f(&["dispatch_latency_ms", "p99"]));
                rows.push(format!(
                    "| Dispatch latency at {}/s, {} builds | p50 {p50} ms, p95 {} ms, p99 {p99} ms, max {} ms | p50 ≤ 5 ms, p99 ≤ 25 ms | {} |",
                    result["per_second"], result["builds"], f(&["dispatch_latency_ms", "p95"]), f(&["dispatch_latency_ms", "max"]),
                    verdict(p50 <= 5.0 && p99 <= 25.0)
                ));
            }
            "forces" => {
                let (rate, p50, p99) =
                    (f(&["requests_per_second"]), f(&["latency_ms", "p50"]), f(&["latency_ms", "p99"]));
                let clients = result["clients"].as_u64().unwrap_or(0);
                let (target, met) = if clients >= 4 {
                    ("p50 ≤ 5 ms, p99 ≤ 20 ms; ≥ 600 forces/s", verdict(p50 <= 5.0 && p99 <= 20.0 && rate >= 600.0))
                } else {
                    ("(no target)", "")
                };
                rows.push(format!(
                    "| Forces from {clients} client(s), a new connection each, {} forces | {rate:.0} forces/s; latency p50 {p50} ms, p99 {p99} ms, max {} ms | {target} | {met} |",
                    result["requests"], f(&["latency_ms", "max"])
                ));
            }
            "bursts" => {
                rows.push(format!(
                    "| Bursts of {} forces at once, a new connection each, {} bursts | latency p50 {} ms, p99 {} ms, max {} ms | (no target) | |",
                    result["size"], result["bursts"], f(&["latency_ms", "p50"]), f(&["latency_ms", "p99"]), f(&["latency_ms", "max"])
                ));
            }
            "submit-to-complete" => {
                let (p50, cpu) = (f(&["latency_ms", "p50"]), f(&["master_cpu_ms_per_build"]));
                rows.push(format!(
                    "| A trivial build at a time on an idle system, {} builds | committed → complete p50 {p50} ms, p99 {} ms; masters' CPU {cpu:.1} ms per build | p50 ≤ 20 ms; CPU ≤ 6 ms per build | {} |",
                    result["builds"], f(&["latency_ms", "p99"]), verdict(p50 <= 20.0 && cpu <= 6.0)
                ));
            }
            "builds" => {
                let (rate, cpu) = (f(&["builds_per_second"]), f(&["master_cpu_ms_per_build"]));
                let workers = result["workers"].as_u64().unwrap_or(0);
                let builders = result["builders"].as_array().map_or(0, Vec::len);
                let (target, goal) =
                    if workers >= 8 { ("≥ 250 builds/s", 250.0) } else { ("≥ 150 builds/s", 150.0) };
                rows.push(format!(
                    "| {} trivial builds forced by {} clients (a new connection each), {workers} workers, {builders} builder(s), one build of a builder per worker | {rate:.0} builds/s ({} not successful); masters' CPU {cpu:.1} ms per build | {target}; CPU ≤ 6 ms per build | {} |",
                    result["builds"], result["clients"], result["not_successful"], verdict(rate >= goal && cpu <= 6.0)
                ));
            }
            "reporter-statuses" => {
                rows.push(format!(
                    "| Commit statuses of {} trivial builds forced by {} clients, 4 workers, at a stand-in for GitHub | build ended → its status at GitHub p50 {} ms, p95 {} ms, p99 {} ms, max {} ms | (no target) | |",
                    result["builds"], result["clients"], f(&["end_to_status_ms", "p50"]), f(&["end_to_status_ms", "p95"]),
                    f(&["end_to_status_ms", "p99"]), f(&["end_to_status_ms", "max"])
                ));
            }
            "footprint" => {
                let (master, worker) = (f(&["master_rss_mb"]), f(&["worker_rss_mb"]));
                rows.push(format!(
                    "| Memory ({}) | master {master:.1} MB RSS, worker {worker:.1} MB RSS | idle: master ≤ 30 MB, worker ≤ 15 MB | {} |",
                    result["when"].as_str().unwrap_or(""),
                    if result["when"] == "idle" { verdict(master <= 30.0 && worker <= 15.0) } else { "" }
                ));
            }
            "live-log" => {
                let (p50, p99) = (f(&["latency_ms", "p50"]), f(&["latency_ms", "p99"]));
                rows.push(format!(
                    "| Live log, {} lines followed through HAProxy | printed → received p50 {p50} ms, p95 {} ms, p99 {p99} ms, max {} ms | p50 ≤ 5 ms, p99 ≤ 200 ms | {} |",
                    result["latency_ms"]["samples"], f(&["latency_ms", "p95"]), f(&["latency_ms", "max"]),
                    verdict(p50 <= 5.0 && p99 <= 200.0)
                ));
            }
            "log-throughput" => {
                let (ingest, extra) = (f(&["ingest_mb_per_second"]), f(&["master_extra_mb"]));
                rows.push(format!(
                    "| Log of {:.0} MB | ingest {ingest:.0} MB/s ({:.2} s); archived in {:.2} s to {:.1} MB; raw download {:.2} s ({:.0} MB/s), master +{extra:.1} MB RSS | ingest ≥ 100 MB/s; download < 20 MB extra master memory | {} |",
                    f(&["log_mb"]), f(&["ingest_seconds"]), f(&["archive_seconds"]), f(&["archived_mb"]),
                    f(&["download_seconds"]), f(&["download_mb_per_second"]), verdict(ingest >= 100.0 && extra < 20.0)
                ));
            }
            "crawl" => {
                let (rate, p99, dispatch_p99) =
                    (f(&["reads_per_second"]), f(&["read_latency_ms", "p99"]), f(&["dispatch_latency_ms", "p99"]));
                rows.push(format!(
                    "| Crawler reads ({} in flight, {:.0} s) on {} builds / {} steps, {} builds/s forced meanwhile | {rate:.0} reads/s ({} failed); read p50 {} ms, p99 {p99} ms; dispatch p50 {} ms, p99 {dispatch_p99} ms | ≥ 5,000 reads/s, p99 ≤ 50 ms; dispatch p99 < 50 ms | {} |",
                    result["concurrency"], f(&["seconds"]), result["seeded_builds"], result["seeded_steps"],
                    result["dispatch_per_second"], result["failed_reads"], f(&["read_latency_ms", "p50"]),
                    f(&["dispatch_latency_ms", "p50"]), verdict(rate >= 5000.0 && p99 <= 50.0 && dispatch_p99 < 50.0)
                ));
            }
            "pages" => {
                let p50 = |name: &str| f(&[name, "p50"]);
                let p99 = |name: &str| f(&[name, "p99"]);
                rows.push(format!(
                    "| Web pages, one at a time, on {} builds | overview of {} builders p50 {} ms, p99 {} ms ({:.0} KB); builder page p50 {} ms, p99 {} ms (deep in its history p50 {} ms); build page p50 {} ms, p99 {} ms | (no target) | {} |",
                    result["seeded_builds"], result["builders"], p50("overview_ms"), p99("overview_ms"), f(&["overview_kb"]),
                    p50("builder_page_ms"), p99("builder_page_ms"), p50("builder_deep_page_ms"), p50("build_page_ms"),
                    p99("build_page_ms"), ""

                ));
            }
            "junit-ingest" => {
                rows.push(format!(
                    "| A JUnit file of {} test cases ({} failed) | written and sent by its step in {:.2} s; read into Postgres {:.2} s after the step ended; masters +{:.1} MB RSS at most | (no target) | |",
                    result["tests"], result["failed"], f(&["step_seconds"]), f(&["read_seconds"]), f(&["master_extra_mb"])
                ));
            }
            "tests-page" => {
                let p50 = |name: &str| f(&[name, "p50"]);
                let p99 = |name: &str| f(&[name, "p99"]);
                rows.push(format!(
                    "| Tests, one request at a time, on {} builds with {} test result sets and {} test results | Tests page p50 {} ms, p99 {} ms; `tests/failing` p50 {} ms ({} failing); `tests/flaky` p50 {} ms ({} flaky) | (no target) | |",
                    result["seeded_builds"], result["test_result_sets"], result["test_results"], p50("tests_page_ms"),
                    p99("tests_page_ms"), p50("failing_api_ms"), result["failing_tests"], p50("flaky_api_ms"), result["flaky_tests"]
                ));
            }
            other => bail!("unknown scenario `{other}` in {}", input.display()),
        }
    }
    let markdown = format!(
        "# Benchmark results\n\nWritten by `bench/run.sh` ({}); raw figures in `bench/results/latest.jsonl`.\n\n\
         Machine: {machine}\n\nEverything runs on this one machine: two masters behind HAProxy, RabbitMQ, Redis, \
         Postgres, the workers and the load generator.\n\n\
         | Scenario | Measured | Target | |\n|---|---|---|---|\n{}\n\n\
         Where the time goes, what was changed because of it, and why a missed target is missed: \
         `bench/PROFILE.md`.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        rows.join("\n")
    );
    std::fs::write(output, markdown).with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}
