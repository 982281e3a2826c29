#!/usr/bin/env bash
# Runs every benchmark scenario against a stack of its own (bench/config:
# database buildmaster_bench, namespace `bench`), through HAProxy, and writes
# bench/results/latest.jsonl and bench/RESULTS.md. Bounded: a few minutes.
#
#   bench/run.sh                    all scenarios, then bench/RESULTS.md
#   bench/run.sh live-log crawl     only these (enqueue, throughput, installation,
#                                   reporters, live-log, log-throughput,
#                                   junit-ingest, crawl, pages, tests-page,
#                                   views)
#
# The crawler scenario reads a large history, written once into the bench
# database by bench/seed.sql (BENCH_SEED_BUILDS builds, 2,500,000 unless set,
# of BENCH_SEED_STEPS steps, 8 unless set; about 7 GB and several minutes
# the first time, reused afterwards); the tests-page scenario adds test
# results to it (bench/seed-tests.sql), the views scenario 100 changes built
# by every seeded builder (bench/seed-console.sql).
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
amqp_url: amqp://127.0.0.1:5672/%2f
redis_url: redis://127.0.0.1:6379/
namespace: bench
basedir: .
YAML
    RUST_LOG=warn target/release/buildmaster-worker --config "$dir/worker.yaml" >"$dir/worker.log" 2>&1 &
    worker_pids+=($!)
}

rss_mb() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# psql as the Postgres superuser over the local socket (the seed skips
# foreign key checks, which only a superuser may do).
psql_superuser() {
    if [[ $(id -un) == postgres ]]; then
        psql -X -q -v ON_ERROR_STOP=1 "$@"
    elif [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "$@")
    else
        (cd / && sudo -u postgres psql -X -q -v ON_ERROR_STOP=1 "$@")
    fi
}

seed_history() {
    local want=${BENCH_SEED_BUILDS:-2500000} batch=50000 have
    have=$(psql_superuser -d buildmaster_bench -t -A -c "select count(*) from builds")
    if ((have >= want)); then
        say "history already seeded: $have builds"
        return
    fi
    say "seeding a history of $want builds (8 steps each; once, reused by later runs)"
    while ((have < want)); do
        psql_superuser -d buildmaster_bench -v batch=$((want - have < batch ? want - have : batch)) \
            -v steps="${BENCH_SEED_STEPS:-8}" <bench/seed.sql
        have=$(psql_superuser -d buildmaster_bench -t -A -c "select count(*) from builds")
        say "  $have builds"
    done
    psql_superuser -d buildmaster_bench -c "vacuum analyze"
}

# Test results for every seeded build (bench/seed-tests.sql), once.
seed_test_results() {
    local missing
    builds_without_results() {
        psql_superuser -d buildmaster_bench -t -A -c \
            "select count(*) from builds b where not exists (select 1 from test_result_sets t where t.build_id = b.id)
             and b.builder_id in (select id from builders where name like 'seed-%')"
    }
    missing=$(builds_without_results)
    if ((missing == 0)); then
        say "test results already seeded"
        return
    fi
    say "seeding test results for $missing builds (once, reused by later runs)"
    while ((missing > 0)); do
        psql_superuser -d buildmaster_bench -v batch=200000 <bench/seed-tests.sql
        missing=$(builds_without_results)
        say "  $missing builds left"
    done
    psql_superuser -d buildmaster_bench -c "vacuum analyze test_result_sets" -c "vacuum analyze test_results"
}

# The console's 100 changes built by the 1,000 seeded builders
# (bench/seed-console.sql), once.
seed_console() {
    local have
    have=$(psql_superuser -d buildmaster_bench -tAc "select count(*) from changes where source = 'bench-console'")
    if ((have >= 100)); then
        say "the console's history is already seeded"
        return
    fi
    say "seeding 100 changes built by the 1,000 seeded builders (once, reused by later runs)"
    psql_superuser -d buildmaster_bench <bench/seed-console.sql
}

footprint() {
    local master_pid
    master_pid=$(cat "$BUILDMASTER_RUN_DIR/pids/master-1.pid")
    printf '{"scenario":"footprint","when":"%s","master_rss_mb":%s,"worker_rss_mb":%s}\n' \
        "$1" "$(rss_mb "$master_pid")" "$(rss_mb "${worker_pids[0]}")" | tee -a "$LINES"
}

bench() { target/release/bench "$@" | tee -a "$LINES"; }

master_pids() {
    printf '%s,%s' "$(cat "$BUILDMASTER_RUN_DIR/pids/master-1.pid")" "$(cat "$BUILDMASTER_RUN_DIR/pids/master-2.pid")"
}

# One function per scenario; `bench/run.sh crawl live-log` runs only those
# (their results go to bench/results/latest.jsonl, not RESULTS.md).
scenario_enqueue() {
    say "enqueue"
    bench enqueue --concurrency 32 --requests 5000
    footprint "after enqueue"
}
scenario_throughput() {
    say "throughput, 4 workers"
    bench throughput --workers 4 --concurrency 16 --builds 2000
    say "dispatch latency, 4 workers"
    bench dispatch --per-second 50 --builds 500
    for n in 5 6 7 8; do start_worker "$n"; done
    sleep 3
    say "throughput, 8 workers"
    bench throughput --workers 8 --concurrency 16 --builds 2000
    footprint "after throughput"
}
# The rules of a real installation: a few clients, a new connection per
# request, one build of a builder per worker at a time.
scenario_installation() {
    stop_workers
    for n in 1 2 3 4; do start_worker "$n"; done
    sleep 3
    say "forces, 1 client, a new connection each"
    bench forces --clients 1 --requests 500
    say "forces, 4 clients, a new connection each"
    bench forces --clients 4 --requests 2000
    say "bursts of forces"
    bench bursts --bursts 10 --size 20
    say "one trivial build at a time, idle system"
    bench submit-to-complete --builds 200 --master-pids "$(master_pids)"
    say "builds from 4 clients, 4 workers"
    bench builds --clients 4 --builds 2000 --workers 4 --master-pids "$(master_pids)"
    for n in 5 6 7 8; do start_worker "$n"; done
    sleep 3
    say "builds from 4 clients, 8 workers over 2 builders"
    bench builds --clients 4 --builds 3000 --builders bench-true,bench-true-2 --workers 8 --master-pids "$(master_pids)"
    stop_workers
    for n in 1 2 3 4; do start_worker "$n"; done
    sleep 3
    footprint "after the installation scenario"
}
# Commit statuses: each build's end → its status at a stand-in for GitHub.
scenario_reporters() {
    say "commit statuses of 200 builds from 4 clients, 4 workers"
    bench reporter-statuses --clients 4 --builds 200
}
scenario_live_log() {
    say "live log"
    bench live-log
    footprint "after the live log"
}
scenario_log_throughput() {
    say "log throughput (100 MB)"
    bench log-throughput --master-pids "$(master_pids)"
    footprint "after the 100 MB log"
}
scenario_crawl() {
    seed_history
    say "crawler reads on the seeded history"
    bench crawl --seconds 20 --concurrency 64 --dispatch-per-second 50
    footprint "after the crawler"
}
scenario_pages() {
    seed_history
    say "web pages on the seeded history"
    bench pages --rounds 50
}
scenario_junit_ingest() {
    say "a JUnit file of 100,000 test cases"
    bench junit-ingest --master-pids "$(master_pids)"
    footprint "after the JUnit file"
}
scenario_tests_page() {
    seed_history
    seed_test_results
    say "the Tests page on the seeded history"
    bench tests-page --rounds 20
}
scenario_views() {
    seed_history
    seed_console
    say "the console, the release board and the waterfall on the seeded history"
    bench views --rounds 20
}
ALL=(enqueue throughput installation reporters live-log log-throughput junit-ingest crawl pages tests-page views)
chosen=("${@:-${ALL[@]}}")
for name in "${chosen[@]}"; do
    declare -F "scenario_${name//-/_}" >/dev/null || { echo "unknown scenario $name (known: ${ALL[*]})" >&2; exit 2; }
done

say "bringing up the bench stack"
deploy/stack.sh up
cargo build --release -p bench --bins
for n in 1 2 3 4; do start_worker "$n"; done
sleep 3
footprint idle
for name in "${chosen[@]}"; do "scenario_${name//-/_}"; done
if (($# > 0)); then
    say "partial run: results in $LINES"
    exit 0
fi

machine="$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(psql --version | head -1); RabbitMQ $(rabbitmqctl version 2>/dev/null || echo '?'); $(redis-server --version | sed -E 's/.*v=([0-9.]+).*/Redis \1/'); $(haproxy -v | head -1 | awk '{print "HAProxy", $3}'); $(rustc --version)"
target/release/bench report --input "$LINES" --output bench/RESULTS.md --machine "$machine"
say "results in bench/RESULTS.md"
