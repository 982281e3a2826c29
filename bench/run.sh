#!/usr/bin/env bash
# Runs every benchmark scenario against a stack of its own (bench/config:
# database buildmaster_bench, namespace `bench`), through HAProxy, and writes
# bench/results/latest.jsonl and bench/RESULTS.md. Bounded: a few minutes.
#
#   bench/run.sh          all scenarios
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export BUILDMASTER_SETTINGS="$ROOT/bench/config/settings.yaml"
export BUILDMASTER_RUN_DIR="$ROOT/run/bench"
RESULTS="$ROOT/bench/results"
mkdir -p "$RESULTS" "$BUILDMASTER_RUN_DIR/workers"
LINES="$RESULTS/latest.jsonl"
: >"$LINES"

say() { printf '[bench] %s\n' "$*"; }

worker_pids=()
stop_workers() {
    local pid
    for pid in "${worker_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${worker_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    worker_pids=()
}
cleanup() {
    stop_workers
    deploy/stack.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

# start_worker N: a buildmaster-worker process named bench-N.
start_worker() {
    local dir="$BUILDMASTER_RUN_DIR/workers/bench-$1"
    mkdir -p "$dir"
    cat >"$dir/worker.yaml" <<YAML
name: bench-$1
password: bench-password-000$1
amqp_url: amqp://guest:guest@127.0.0.1:5672/%2f
redis_url: redis://127.0.0.1:6379/
namespace: bench
basedir: .
YAML
    RUST_LOG=warn target/release/buildmaster-worker --config "$dir/worker.yaml" >"$dir/worker.log" 2>&1 &
    worker_pids+=($!)
}

rss_mb() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

footprint() {
    local master_pid
    master_pid=$(cat "$BUILDMASTER_RUN_DIR/pids/master-1.pid")
    printf '{"scenario":"footprint","when":"%s","master_rss_mb":%s,"worker_rss_mb":%s}\n' \
        "$1" "$(rss_mb "$master_pid")" "$(rss_mb "${worker_pids[0]}")" | tee -a "$LINES"
}

bench() { target/release/bench "$@" | tee -a "$LINES"; }

say "bringing up the bench stack"
deploy/stack.sh up
cargo build --release -p bench --bins
for n in 1 2 3 4; do start_worker "$n"; done
sleep 3
footprint idle

say "enqueue"
bench enqueue --concurrency 32 --requests 5000
say "throughput, 4 workers"
bench throughput --workers 4 --concurrency 16 --builds 2000
say "dispatch latency, 4 workers"
bench dispatch --per-second 50 --builds 500
for n in 5 6 7 8; do start_worker "$n"; done
sleep 3
say "throughput, 8 workers"
bench throughput --workers 8 --concurrency 16 --builds 2000
footprint "after the scenarios"

machine="$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(psql --version | head -1); RabbitMQ $(rabbitmqctl version 2>/dev/null || echo '?'); $(redis-server --version | sed -E 's/.*v=([0-9.]+).*/Redis \1/'); $(haproxy -v | head -1 | awk '{print "HAProxy", $3}'); $(rustc --version)"
target/release/bench report --input "$LINES" --output bench/RESULTS.md --machine "$machine"
say "results in bench/RESULTS.md"
