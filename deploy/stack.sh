#!/usr/bin/env bash
# The whole buildmaster stack on one machine: two masters behind HAProxy,
# using the PostgreSQL, RabbitMQ and Redis that deploy/services.sh provides.
#
#   deploy/stack.sh up             services, build, checkconfig, upgrade-master,
#                                  then start what is not running, reload
#                                  (SIGHUP) the masters that are, and restart
#                                  one at a time (drained) those whose binary
#                                  was rebuilt
#   deploy/stack.sh down           stop what `up` started (by pid file)
#   deploy/stack.sh restart        like up, but restart running masters one at
#                                  a time (drained in HAProxy first) so the
#                                  URL keeps answering
#   deploy/stack.sh status         what runs, and whether it is healthy
#   deploy/stack.sh checkconfig    build, then `buildmaster checkconfig`
#   deploy/stack.sh upgrade-master services, build, then apply migrations
#   deploy/stack.sh logs           follow the logs of everything it runs
#
# The masters run the local worker in-process (use_local_worker: true in the
# example settings), so no separate worker process is started.
#
# Environment (all optional):
#   BUILDMASTER_SETTINGS        settings file (also PYBUILDBOT_SETTINGS_PATH);
#                               default deploy/example/settings.yaml; exported
#                               to the masters
#   BUILDMASTER_RUN_DIR         pid files, logs, HAProxy socket; default run/
#   BUILDMASTER_BIN_DIR         where buildmaster is; default target/release.
#                               target/release is built with
#                               `cargo build --release -p master -p worker
#                               --bins`, target/debug without --release; any
#                               other directory is used as it is
#   BUILDMASTER_HTTP_BIND       public HAProxy address; default 127.0.0.1:9011
#   BUILDMASTER_MASTER1         master-1's listen address; default 127.0.0.1:9021
#   BUILDMASTER_MASTER2         master-2's listen address; default 127.0.0.1:9022
#   BUILDMASTER_HAPROXY_SOCKET  HAProxy runtime socket; default RUN_DIR/haproxy.sock
#   BUILDMASTER_START_TIMEOUT   seconds to wait for /healthz; default 60
#   BUILDMASTER_STOP_TIMEOUT    seconds between SIGTERM and SIGKILL; default 30
set -euo pipefail

say() { printf '[stack] %s\n' "$*"; }
warn() { printf '[stack] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[stack] ERROR: %s\n' "$*" >&2
    exit 1
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly CALLER_DIR="$PWD"

# absolute PATH : PATH made absolute against the caller's working directory.
absolute() {
    case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$CALLER_DIR/$1" ;;
    esac
}

if [[ -n ${BUILDMASTER_SETTINGS:-} ]]; then
    SETTINGS="$(absolute "$BUILDMASTER_SETTINGS")"
elif [[ -n ${PYBUILDBOT_SETTINGS_PATH:-} ]]; then
    SETTINGS="$(absolute "$PYBUILDBOT_SETTINGS_PATH")"
else
    SETTINGS="$ROOT/deploy/example/settings.yaml"
fi
export BUILDMASTER_SETTINGS="$SETTINGS"

TARGET_DIR="$(absolute "${CARGO_TARGET_DIR:-$ROOT/target}")"
BIN_DIR="$(absolute "${BUILDMASTER_BIN_DIR:-$TARGET_DIR/release}")"
BIN="$BIN_DIR/buildmaster"
RUN_DIR="$(absolute "${BUILDMASTER_RUN_DIR:-$ROOT/run}")"
HAPROXY_CFG="$ROOT/haproxy/haproxy.cfg"
HTTP_BIND="${BUILDMASTER_HTTP_BIND:-127.0.0.1:9011}"
MASTER1_ADDR="${BUILDMASTER_MASTER1:-127.0.0.1:9021}"
MASTER2_ADDR="${BUILDMASTER_MASTER2:-127.0.0.1:9022}"
HAPROXY_SOCKET="${BUILDMASTER_HAPROXY_SOCKET:-$RUN_DIR/haproxy.sock}"
START_TIMEOUT="${BUILDMASTER_START_TIMEOUT:-60}"
STOP_TIMEOUT="${BUILDMASTER_STOP_TIMEOUT:-30}"
readonly MASTERS=(master-1 master-2)

# A Unix socket path is limited to 107 bytes; a deep checkout could exceed it.
if ((${#HAPROXY_SOCKET} > 100)); then
    HAPROXY_SOCKET="/tmp/buildmaster-haproxy-$(printf '%s' "$RUN_DIR" | cksum | cut -d' ' -f1).sock"
fi

cd "$ROOT"

# ---------------------------------------------------------------------------
# Helpers

master_addr() {
    case "$1" in
    master-1) printf '%s\n' "$MASTER1_ADDR" ;;
    master-2) printf '%s\n' "$MASTER2_ADDR" ;;
    *) die "unknown master $1" ;;
    esac
}

# The master's server name in haproxy.cfg's "masters" backend.
haproxy_server() { printf 'masters/%s\n' "${1//-/}"; }

# http_base ADDRESS : base URL to reach a listen address from this machine.
http_base() {
    local host="${1%:*}" port="${1##*:}"
    case "$host" in
    "" | "*" | 0.0.0.0) host=127.0.0.1 ;;
    esac
    printf 'http://%s:%s\n' "$host" "$port"
}

port_open() {
    local host="${1%:*}" port="${1##*:}"
    case "$host" in
    "" | "*" | 0.0.0.0) host=127.0.0.1 ;;
    esac
    # shellcheck disable=SC2016 # $0 and $1 expand in the inner bash.
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
}

healthy() { curl -fs -o /dev/null --max-time 2 "$(http_base "$1")/healthz"; }

pid_file() { printf '%s/pids/%s.pid\n' "$RUN_DIR" "$1"; }
log_file() { printf '%s/logs/%s.log\n' "$RUN_DIR" "$1"; }

# True when the process exists and is not a zombie.
pid_alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ ${stat%% *} != Z ]]
}

# running_pid NAME : prints the pid of component NAME when its pid file names
# a live process still running our program; removes a stale pid file.
running_pid() {
    local name="$1" file pid program cmdline
    file="$(pid_file "$name")"
    [[ -f $file ]] || return 1
    pid="$(<"$file")"
    # What the process's command line must contain to be ours.
    case "$name" in
    haproxy) program="haproxy" ;;
    *) program="--name $name" ;;
    esac
    if [[ $pid =~ ^[0-9]+$ ]] && pid_alive "$pid"; then
        cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
        if [[ $cmdline == *"$program"* ]]; then
            printf '%s\n' "$pid"
            return 0
        fi
        say "removing stale pid file $file (pid $pid now runs something else)" >&2
    else
        say "removing stale pid file $file (process ${pid:-?} is gone)" >&2
    fi
    rm -f "$file"
    return 1
}

show_log_tail() {
    local log
    log="$(log_file "$1")"
    if [[ -f $log ]]; then
        printf '[stack] ---- last 40 lines of %s ----\n' "$log" >&2
        tail -n 40 "$log" >&2
        printf '[stack] ----\n' >&2
    fi
}

# spawn NAME COMMAND... : starts COMMAND detached from this terminal (own
# session, stdin from /dev/null, output appended to NAME's log); the process
# writes its own pid file just before exec, so the pid is the program's.
spawn() {
    local name="$1" pidfile log
    shift
    pidfile="$(pid_file "$name")"
    log="$(log_file "$name")"
    mkdir -p "$RUN_DIR/pids" "$RUN_DIR/logs"
    rm -f "$pidfile"
    printf '\n==== %s: starting %s: %s\n' "$(date -Is)" "$name" "$*" >>"$log"
    # shellcheck disable=SC2016 # $$, $0 and $@ expand in the inner bash.
    setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
        </dev/null >>"$log" 2>&1 9>&- &
    local deadline=$((SECONDS + 10))
    until [[ -s $pidfile ]]; do
        ((SECONDS < deadline)) || die "$name did not start (no pid file after 10s); see $log"
        sleep 0.1
    done
}

# stop NAME... : SIGTERM to each running component, wait up to STOP_TIMEOUT
# seconds for all of them, then SIGKILL what is left; removes pid files.
stop() {
    local name pid
    local -a names=() pids=()
    for name in "$@"; do
        if pid="$(running_pid "$name")"; then
            say "stopping $name (pid $pid, SIGTERM)"
            kill -TERM "$pid" 2>/dev/null || true
            names+=("$name")
            pids+=("$pid")
        else
            say "$name is not running"
        fi
    done
    local deadline=$((SECONDS + STOP_TIMEOUT)) i left
    while :; do
        left=0
        for i in "${!pids[@]}"; do
            if pid_alive "${pids[$i]}"; then
                left=1
            fi
        done
        ((left == 0 || SECONDS >= deadline)) && break
        sleep 0.2
    done
    for i in "${!pids[@]}"; do
        if pid_alive "${pids[$i]}"; then
            warn "${names[$i]} (pid ${pids[$i]}) still runs after ${STOP_TIMEOUT}s: SIGKILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
            deadline=$((SECONDS + 5))
            while pid_alive "${pids[$i]}" && ((SECONDS < deadline)); do sleep 0.1; done
        else
            say "${names[$i]} stopped"
        fi
        rm -f "$(pid_file "${names[$i]}")"
    done
}

# ---------------------------------------------------------------------------
# Steps

ensure_services() {
    say "ensuring PostgreSQL, RabbitMQ, Redis (deploy/services.sh ensure)"
    "$ROOT/deploy/services.sh" ensure 9>&-
}

build() {
    if [[ ${BUILDMASTER_SKIP_BUILD:-0} == 1 ]]; then
        say "BUILDMASTER_SKIP_BUILD=1: not building"
    else
        local -a cargo_args
        case "$BIN_DIR" in
        "$TARGET_DIR/release") cargo_args=(build --release -p master -p worker --bins) ;;
        "$TARGET_DIR/debug") cargo_args=(build -p master -p worker --bins) ;;
        *) cargo_args=() ;;
        esac
        if ((${#cargo_args[@]} == 0)); then
            say "using the binaries in $BIN_DIR as they are (not a cargo target directory)"
        else
            command -v cargo >/dev/null 2>&1 ||
                die "cargo not found. Install Rust (rustup), or point BUILDMASTER_BIN_DIR at a directory holding a built buildmaster."
            say "building: cargo ${cargo_args[*]} (a no-op when up to date)"
            cargo "${cargo_args[@]}" 9>&- || die "the build failed (errors above); nothing was started or changed."
        fi
    fi
    [[ -x $BIN ]] || die "$BIN not found or not executable. Build it (cargo build --release --bins) or set BUILDMASTER_BIN_DIR."
}

require_settings() {
    [[ -f $SETTINGS ]] ||
        die "settings file $SETTINGS not found. Set BUILDMASTER_SETTINGS to your settings.yaml (see deploy/example/settings.yaml)."
}

checkconfig() {
    require_settings
    say "checking the configuration: buildmaster --settings $SETTINGS checkconfig"
    "$BIN" --settings "$SETTINGS" checkconfig ||
        die "the configuration is invalid (errors above). Nothing was started, reloaded or migrated; running masters keep their current configuration. Fix it and run again."
}

upgrade_master() {
    require_settings
    say "applying database migrations: buildmaster --settings $SETTINGS upgrade-master"
    "$BIN" --settings "$SETTINGS" upgrade-master ||
        die "upgrade-master failed (errors above). Running masters were not touched."
}

# wait_master_healthy NAME PID : waits for GET /healthz on the master; on
# failure shows its log, stops it and exits.
wait_master_healthy() {
    local name="$1" pid="$2" addr
    addr="$(master_addr "$name")"
    local deadline=$((SECONDS + START_TIMEOUT))
    until healthy "$addr"; do
        if ! pid_alive "$pid"; then
            show_log_tail "$name"
            rm -f "$(pid_file "$name")"
            die "$name exited before answering $(http_base "$addr")/healthz; its log is above ($(log_file "$name"))."
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "$name"
            stop "$name"
            die "$name did not answer $(http_base "$addr")/healthz within ${START_TIMEOUT}s, so it was stopped; its log is above ($(log_file "$name"))."
        fi
        sleep 0.5
    done
    say "$name is healthy at $(http_base "$addr")"
}

start_master() {
    local name="$1" addr pid
    addr="$(master_addr "$name")"
    if port_open "$addr"; then
        die "$addr is already in use by a process this stack did not start (no live pid file in $RUN_DIR/pids). Stop that process, or set BUILDMASTER_MASTER1/BUILDMASTER_MASTER2 to free addresses."
    fi
    say "starting $name on $addr (log $(log_file "$name"))"
    spawn "$name" "$BIN" --settings "$SETTINGS" start --listen "$addr" --name "$name"
    pid="$(<"$(pid_file "$name")")"
    wait_master_healthy "$name" "$pid"
}

reload_master() {
    local name="$1" pid="$2"
    say "$name runs (pid $pid): reloading its configuration (SIGHUP)"
    kill -HUP "$pid"
    wait_master_healthy "$name" "$pid"
}

# haproxy_admin COMMAND : sends a runtime API command; fails quietly when
# there is no running HAProxy, no socket or no socat.
haproxy_admin() {
    running_pid haproxy >/dev/null 2>&1 || return 1
    [[ -S $HAPROXY_SOCKET ]] || return 1
    command -v socat >/dev/null 2>&1 || return 1
    printf '%s\n' "$1" | socat -t 2 - "UNIX-CONNECT:$HAPROXY_SOCKET"
}

# haproxy_sees_up NAME : true when HAProxy's health check has the master UP.
haproxy_sees_up() {
    local server stats
    server="$(haproxy_server "$1")"
    stats="$(haproxy_admin "show stat")" || return 1
    stat_columns svname status <<<"$stats" |
        awk -F'\t' -v sv="${server#*/}" '$1 == sv && $2 == "UP" { found = 1 } END { exit !found }'
}

# stat_columns COLUMN... : from HAProxy's "show stat" CSV on stdin, prints the
# named columns (tab-separated) of the servers of the "masters" backend.
stat_columns() {
    awk -F, -v want="$*" '
        /^# / {
            sub(/^# /, "")
            for (i = 1; i <= NF; i++) column[$i] = i
            n = split(want, names, " ")
            next
        }
        $1 == "masters" && $2 != "BACKEND" {
            line = ""
            for (i = 1; i <= n; i++) line = line (i > 1 ? "\t" : "") $(column[names[i]])
            print line
        }'
}

# Rolling restart of one master: drain it in HAProxy, stop it, start it, wait
# until both it and HAProxy see it healthy, put it back in rotation.
restart_master() {
    local name="$1" server drained=0
    server="$(haproxy_server "$name")"
    if haproxy_admin "set server $server state drain" >/dev/null; then
        say "draining $name in HAProxy ($server)"
        drained=1
    fi
    stop "$name"
    start_master "$name"
    if ((drained)); then
        haproxy_admin "set server $server state ready" >/dev/null ||
            warn "could not set $server back to ready; check with: echo 'show servers state' | socat - UNIX-CONNECT:$HAPROXY_SOCKET"
    fi
    if running_pid haproxy >/dev/null 2>&1; then
        local deadline=$((SECONDS + 15))
        if command -v socat >/dev/null 2>&1 && [[ -S $HAPROXY_SOCKET ]]; then
            until haproxy_sees_up "$name"; do
                if ((SECONDS >= deadline)); then
                    warn "HAProxy does not see $name UP after 15s; continuing"
                    break
                fi
                sleep 0.5
            done
        else
            # No runtime socket to ask: give the health check (inter 1s, rise 1)
            # time to see it.
            sleep 2
        fi
    fi
}

# haproxy_env COMMAND... : runs COMMAND (exec-able, not a function) with the
# variables haproxy.cfg reads.
haproxy_env() {
    env BUILDMASTER_HTTP_BIND="$HTTP_BIND" \
        BUILDMASTER_MASTER1="$MASTER1_ADDR" \
        BUILDMASTER_MASTER2="$MASTER2_ADDR" \
        BUILDMASTER_HAPROXY_SOCKET="$HAPROXY_SOCKET" \
        "$@"
}

check_haproxy_config() {
    local haproxy_bin output
    haproxy_bin="$(command -v haproxy || echo /usr/sbin/haproxy)"
    [[ -x $haproxy_bin ]] || die "haproxy not found; run deploy/services.sh ensure."
    output="$(haproxy_env "$haproxy_bin" -c -f "$HAPROXY_CFG" 2>&1)" ||
        die "$HAPROXY_CFG is invalid: $output"
    printf '%s\n' "$haproxy_bin"
}

# Starts HAProxy in master-worker mode (-W) in the foreground (-db), detached:
# SIGUSR2 to its pid reloads haproxy.cfg, SIGTERM stops it.
ensure_haproxy() {
    local haproxy_bin pid
    haproxy_bin="$(check_haproxy_config)"
    if pid="$(running_pid haproxy)"; then
        say "HAProxy runs (pid $pid): reloading $HAPROXY_CFG (SIGUSR2)"
        kill -USR2 "$pid"
    else
        if port_open "$HTTP_BIND"; then
            die "$HTTP_BIND is already in use by a process this stack did not start (no live pid file in $RUN_DIR/pids). Stop it, or set BUILDMASTER_HTTP_BIND."
        fi
        mkdir -p "$(dirname "$HAPROXY_SOCKET")"
        say "starting HAProxy on $HTTP_BIND -> $MASTER1_ADDR, $MASTER2_ADDR (log $(log_file haproxy), runtime socket $HAPROXY_SOCKET)"
        spawn haproxy env BUILDMASTER_HTTP_BIND="$HTTP_BIND" \
            BUILDMASTER_MASTER1="$MASTER1_ADDR" \
            BUILDMASTER_MASTER2="$MASTER2_ADDR" \
            BUILDMASTER_HAPROXY_SOCKET="$HAPROXY_SOCKET" \
            "$haproxy_bin" -W -db -f "$HAPROXY_CFG"
    fi
    local url deadline=$((SECONDS + START_TIMEOUT))
    url="$(http_base "$HTTP_BIND")"
    until healthy "$HTTP_BIND"; do
        if ! pid="$(running_pid haproxy)"; then
            show_log_tail haproxy
            die "HAProxy exited; its log is above ($(log_file haproxy))."
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail haproxy
            die "$url/healthz does not answer 200 through HAProxy after ${START_TIMEOUT}s (HAProxy keeps running); its log is above. Try 'deploy/stack.sh status'."
        fi
        sleep 0.5
    done
    say "HAProxy answers at $url/healthz"
}

# ---------------------------------------------------------------------------
# Verbs

take_lock() {
    mkdir -p "$RUN_DIR"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$RUN_DIR/stack.lock"
        flock -n 9 || die "another deploy/stack.sh is working on $RUN_DIR; wait for it to finish."
    fi
}

# cmd_up reload|restart
cmd_up() {
    local mode="$1" name pid started=$SECONDS
    take_lock
    ensure_services
    build
    checkconfig
    upgrade_master
    for name in "${MASTERS[@]}"; do
        if pid="$(running_pid "$name")"; then
            if [[ $mode == restart ]]; then
                restart_master "$name"
            elif ! [[ /proc/$pid/exe -ef $BIN ]]; then
                # A new binary (another file than the one running, whatever
                # its mtime): roll it out, one drained master at a time.
                say "$BIN is not what $name runs: restarting it"
                restart_master "$name"
            else
                reload_master "$name" "$pid"
            fi
        else
            start_master "$name"
        fi
    done
    ensure_haproxy
    say "stack is up in $((SECONDS - started))s: $(http_base "$HTTP_BIND")/"
    say "logs in $RUN_DIR/logs/, stop with 'make stop-master' (deploy/stack.sh down)"
}

cmd_down() {
    take_lock
    # The entry point first, so no new request reaches a stopping master.
    stop haproxy
    stop "${MASTERS[@]}"
    if [[ -S $HAPROXY_SOCKET ]] && ! running_pid haproxy >/dev/null 2>&1; then
        rm -f "$HAPROXY_SOCKET"
    fi
    say "stack is down (PostgreSQL, RabbitMQ and Redis keep running)"
}

cmd_status() {
    local all_up=1 name pid addr state
    printf '%-10s %-8s %-22s %-10s %s\n' COMPONENT PID ADDRESS STATE UPTIME
    for name in haproxy "${MASTERS[@]}"; do
        if [[ $name == haproxy ]]; then addr="$HTTP_BIND"; else addr="$(master_addr "$name")"; fi
        if pid="$(running_pid "$name")"; then
            if healthy "$addr"; then state=healthy; else
                state=unhealthy
                all_up=0
            fi
            printf '%-10s %-8s %-22s %-10s %s\n' "$name" "$pid" "$addr" "$state" "$(ps -o etime= -p "$pid" | tr -d ' ')"
        else
            all_up=0
            printf '%-10s %-8s %-22s %-10s %s\n' "$name" - "$addr" stopped -
        fi
    done
    local service_name service_addr
    for service_name in postgresql:127.0.0.1:5432 rabbitmq:127.0.0.1:5672 redis:127.0.0.1:6379; do
        service_addr="${service_name#*:}"
        if port_open "$service_addr"; then state=listening; else
            state=down
            all_up=0
        fi
        printf '%-10s %-8s %-22s %-10s %s\n' "${service_name%%:*}" - "$service_addr" "$state" -
    done
    if running_pid haproxy >/dev/null 2>&1 && haproxy_admin "show stat" >/dev/null 2>&1; then
        printf '\nHAProxy view of the masters:\n'
        haproxy_admin "show stat" | stat_columns svname addr status check_status |
            awk -F'\t' '{ printf "  %-8s %-22s %-10s %s\n", $1, $2, $3, $4 }'
    fi
    printf '\nsettings: %s\nrun dir:  %s\nURL:      %s/\n' "$SETTINGS" "$RUN_DIR" "$(http_base "$HTTP_BIND")"
    if ((all_up)); then return 0; fi
    return 3
}

cmd_logs() {
    mkdir -p "$RUN_DIR/logs"
    shopt -s nullglob
    local logs=("$RUN_DIR"/logs/*.log)
    ((${#logs[@]} > 0)) || die "no logs in $RUN_DIR/logs yet; start the stack with 'deploy/stack.sh up'."
    exec tail -n 20 -F "${logs[@]}"
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

main() {
    case "${1:-}" in
    up) cmd_up reload ;;
    restart) cmd_up restart ;;
    down | stop) cmd_down ;;
    status) cmd_status ;;
    checkconfig)
        build
        checkconfig
        say "the configuration is valid"
        ;;
    upgrade-master)
        ensure_services
        build
        upgrade_master
        ;;
    logs) cmd_logs ;;
    -h | --help | help) usage ;;
    *)
        usage
        exit 2
        ;;
    esac
}

main "$@"
