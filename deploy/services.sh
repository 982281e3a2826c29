#!/usr/bin/env bash
# The backing services buildmaster needs on this machine: PostgreSQL, RabbitMQ
# and Redis, plus haproxy, socat, git and curl; and, for the tests only,
# Chromium with chromedriver (the web UI's tests), faketime, aiosmtpd,
# ngircd, InspIRCd with Atheme, and Node.js with npm and the npm packages of
# the test OpenID Connect provider (services/master/tests/oidc).
#
#   deploy/services.sh ensure   install what is missing (Debian packages),
#                               start what is not running, wait until ready,
#                               and make sure the Postgres role exists
#   deploy/services.sh ensure --tests
#                               the same, and what the tests use besides
#   deploy/services.sh check    only report; exit 1 when something is missing
#
# Used by deploy/stack.sh, `make test` and CI. Safe to run again and again: it
# reuses services that already answer on their ports, whoever started them.
# "Running" means "answers on its TCP port"; process names are never used.
#
# Environment:
#   BUILDMASTER_SERVICES_TIMEOUT  seconds to wait for each service to become
#                                 ready after starting it (default 120)
#
# What the rest of the project can then rely on:
#   postgres://buildmaster:buildmaster@127.0.0.1:5432/<db>  (role with LOGIN,
#                                                           CREATEDB)
#   amqp://guest:guest@127.0.0.1:5672/%2f
#   http://guest:guest@127.0.0.1:15672/  (RabbitMQ's management API, with
#                                         which masters make worker accounts)
#   redis://127.0.0.1:6379/
#   /usr/sbin/haproxy (not started here: deploy/stack.sh and the tests run
#                      their own instances)
set -euo pipefail

readonly PG_HOST=127.0.0.1 PG_PORT=5432
# Whether to install what only the tests use (`ensure --tests`).
FOR_TESTS=0
readonly PG_ROLE=buildmaster PG_PASSWORD=buildmaster
readonly AMQP_HOST=127.0.0.1 AMQP_PORT=5672 MANAGEMENT_PORT=15672
readonly REDIS_HOST=127.0.0.1 REDIS_PORT=6379
readonly TIMEOUT_SECONDS="${BUILDMASTER_SERVICES_TIMEOUT:-120}"
# The test OpenID Connect provider (oidc-provider, an npm package) and the
# oldest Node.js it runs on.
OIDC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/services/master/tests/oidc"
readonly OIDC_DIR
readonly NODE_MINIMUM=18.12

say() { printf '[services] %s\n' "$*"; }
warn() { printf '[services] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[services] ERROR: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat >&2 <<'EOF'
usage: deploy/services.sh ensure|check [--tests]

  ensure  install (Debian packages) and start PostgreSQL, RabbitMQ and Redis
          when they are missing, ensure the Postgres role "buildmaster", and
          install haproxy, socat, git, curl and python3 (for the example
          API script and its test)
  check   report what is installed and running; exit 1 if anything is missing

  --tests also what only the tests use: Chromium and chromedriver (the web
          UI's tests), faketime (a worker whose clock is behind) and
          aiosmtpd (an SMTP server for the mail reporter's tests), ngircd
          and InspIRCd with Atheme (IRC servers, with services for SASL, for
          the IRC reporter's tests), Node.js and npm, and `npm ci` in
          services/master/tests/oidc (the OpenID Connect provider of the
          sign-in tests)
EOF
}

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "'$*' needs root. Run this script as root (or install sudo)."
    fi
}

# Runs a command as the "postgres" operating-system user, from a directory it
# can read (psql complains about an unreadable working directory).
as_postgres() {
    if [[ $(id -un) == postgres ]]; then
        (cd / && "$@")
    elif [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    elif command -v sudo >/dev/null 2>&1; then
        (cd / && sudo -u postgres "$@")
    else
        die "'$*' must run as the postgres user. Run this script as root (or install sudo)."
    fi
}

# True when something accepts TCP connections on host:port.
port_open() {
    # shellcheck disable=SC2016 # $0 and $1 expand in the inner bash.
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# ---------------------------------------------------------------------------
# Packages

apt_updated=0

# apt_install PACKAGE... : installs Debian packages, running `apt-get update`
# once per run, and only when something is actually to be installed.
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "cannot install $* automatically: apt-get not found (this script expects Debian or Ubuntu). Install $* yourself and run it again."
    if [[ $apt_updated -eq 0 ]]; then
        say "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
            die "apt-get update failed; check the network and /etc/apt/sources.list, then run again."
        apt_updated=1
    fi
    say "installing Debian packages: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" ||
        die "apt-get install $* failed; see the output above."
}

# ensure_command COMMAND PACKAGE : installs PACKAGE when COMMAND is not found.
# Checks /usr/sbin and /usr/lib/postgresql too, since non-root PATHs often
# lack them.
ensure_command() {
    local command_name=$1 package=$2
    if find_command "$command_name" >/dev/null; then
        return 0
    fi
    say "$command_name not found"
    apt_install "$package"
    find_command "$command_name" >/dev/null ||
        die "$command_name is still not found after installing $package."
}

# find_command COMMAND : prints the path of COMMAND, searching the sbin
# directories too.
find_command() {
    local path
    if path=$(command -v "$1" 2>/dev/null); then
        printf '%s\n' "$path"
        return 0
    fi
    for dir in /usr/sbin /sbin /usr/local/sbin; do
        if [[ -x $dir/$1 ]]; then
            printf '%s\n' "$dir/$1"
            return 0
        fi
    done
    return 1
}

# wait_until DESCRIPTION COMMAND... : polls COMMAND every half second until it
# succeeds, for at most TIMEOUT_SECONDS.
wait_until() {
    local description=$1
    shift
    local deadline=$((SECONDS + TIMEOUT_SECONDS))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.5
    done
    say "$description is ready"
}

# ---------------------------------------------------------------------------
# PostgreSQL

postgres_ready() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
    else
        port_open "$PG_HOST" "$PG_PORT"
    fi
}

# Newest PostgreSQL version with a cluster directory, else the newest
# installed server version.
postgres_version() {
    local version=""
    if [[ -d /etc/postgresql ]]; then
        version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n 1)
    fi
    if [[ -z $version && -d /usr/lib/postgresql ]]; then
        version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n 1)
    fi
    printf '%s\n' "$version"
}

ensure_postgres() {
    if postgres_ready; then
        say "PostgreSQL answers on $PG_HOST:$PG_PORT (reusing it)"
    else
        if ! port_open "$PG_HOST" "$PG_PORT"; then
            if ! command -v pg_ctlcluster >/dev/null 2>&1 || [[ -z $(postgres_version) ]]; then
                say "PostgreSQL is not installed"
                apt_install postgresql
            fi
            local version
            version=$(postgres_version)
            [[ -n $version ]] || die "PostgreSQL is installed but no server version was found under /usr/lib/postgresql; reinstall the postgresql package."
            if [[ ! -d /etc/postgresql/$version/main ]]; then
                say "creating PostgreSQL cluster $version/main"
                as_root pg_createcluster "$version" main ||
                    die "pg_createcluster $version main failed; see the output above."
            fi
            # The package's own start may have raced us (or been refused by
            # policy-rc.d): start only if it still does not answer.
            if ! port_open "$PG_HOST" "$PG_PORT"; then
                say "starting PostgreSQL $version/main"
                # A failure here may only mean the package's own start is still
                # under way; the wait below decides.
                as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
                    warn "pg_ctlcluster $version main start failed; waiting in case PostgreSQL is starting anyway"
            fi
        fi
        wait_until "PostgreSQL on $PG_HOST:$PG_PORT" postgres_ready ||
            die "PostgreSQL did not accept connections on $PG_HOST:$PG_PORT within ${TIMEOUT_SECONDS}s. See /var/log/postgresql/, check that listen_addresses includes localhost and port is $PG_PORT, and start it with: pg_ctlcluster --skip-systemctl-redirect VERSION main start"
    fi
    ensure_postgres_role
}

# True when the role logs in over TCP with its password and may create
# databases.
role_login_works() {
    local answer
    answer=$(PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=5 psql -X -q -t -A \
        "postgres://$PG_ROLE@$PG_HOST:$PG_PORT/postgres" \
        -c "select 1 from pg_roles where rolname = current_user and rolcreatedb" 2>/dev/null) || return 1
    [[ $answer == 1 ]]
}

ensure_postgres_role() {
    command -v psql >/dev/null 2>&1 || apt_install postgresql-client
    if role_login_works; then
        say "Postgres role $PG_ROLE can log in over TCP and create databases"
        return 0
    fi
    # Over the local socket as the postgres superuser (peer authentication).
    local superuser_psql=(as_postgres psql -X -q -v ON_ERROR_STOP=1 -t -A -d postgres)
    local exists
    exists=$("${superuser_psql[@]}" -c "select 1 from pg_roles where rolname = '$PG_ROLE'") ||
        die "cannot connect to PostgreSQL as the postgres superuser over the local socket (runuser -u postgres -- psql). Create the role yourself: CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';"
    if [[ $exists == 1 ]]; then
        say "Postgres role $PG_ROLE exists but cannot log in with its password or lacks CREATEDB; resetting LOGIN CREATEDB PASSWORD"
        "${superuser_psql[@]}" -c "alter role $PG_ROLE with login createdb password '$PG_PASSWORD'" >/dev/null
    else
        say "creating Postgres role $PG_ROLE (LOGIN CREATEDB)"
        "${superuser_psql[@]}" -c "create role $PG_ROLE with login createdb password '$PG_PASSWORD'" >/dev/null
    fi
    role_login_works ||
        die "role $PG_ROLE exists but postgres://$PG_ROLE:***@$PG_HOST:$PG_PORT/postgres still refuses the login; check pg_hba.conf allows password (scram-sha-256 or md5) or trust authentication for host connections from $PG_HOST."
    say "Postgres role $PG_ROLE can log in over TCP and create databases"
}

# ---------------------------------------------------------------------------
# Redis

redis_ready() {
    if command -v redis-cli >/dev/null 2>&1; then
        [[ $(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
    else
        port_open "$REDIS_HOST" "$REDIS_PORT"
    fi
}

ensure_redis() {
    if redis_ready; then
        say "Redis answers on $REDIS_HOST:$REDIS_PORT (reusing it)"
        return 0
    fi
    if ! port_open "$REDIS_HOST" "$REDIS_PORT"; then
        if ! find_command redis-server >/dev/null || ! command -v redis-cli >/dev/null 2>&1; then
            say "Redis is not installed"
            apt_install redis-server redis-tools
        fi
        if ! port_open "$REDIS_HOST" "$REDIS_PORT"; then
            say "starting Redis on $REDIS_HOST:$REDIS_PORT (no persistence; log /var/log/redis/ci.log)"
            as_root mkdir -p /var/lib/redis /var/log/redis
            as_root "$(find_command redis-server)" --daemonize yes --bind 127.0.0.1 -::1 \
                --port "$REDIS_PORT" --save "" --appendonly no \
                --dir /var/lib/redis --logfile /var/log/redis/ci.log ||
                die "could not start redis-server; see /var/log/redis/ci.log"
        fi
    fi
    wait_until "Redis on $REDIS_HOST:$REDIS_PORT" redis_ready ||
        die "Redis did not answer PING on $REDIS_HOST:$REDIS_PORT within ${TIMEOUT_SECONDS}s; see /var/log/redis/ci.log. Is something else listening on port $REDIS_PORT?"
}

# ---------------------------------------------------------------------------
# RabbitMQ

ensure_rabbitmq() {
    if port_open "$AMQP_HOST" "$AMQP_PORT"; then
        say "RabbitMQ answers on $AMQP_HOST:$AMQP_PORT (reusing it)"
        return 0
    fi
    if ! find_command rabbitmq-server >/dev/null; then
        say "RabbitMQ is not installed"
        apt_install rabbitmq-server
    fi
    if ! port_open "$AMQP_HOST" "$AMQP_PORT"; then
        say "starting RabbitMQ (rabbitmq-server -detached; logs in /var/log/rabbitmq/)"
        as_root "$(find_command rabbitmq-server)" -detached ||
            warn "rabbitmq-server -detached failed; waiting in case RabbitMQ is starting anyway"
    fi
    # The AMQP listener opens last in RabbitMQ's boot, so an open port means
    # the broker is ready for clients.
    wait_until "RabbitMQ on $AMQP_HOST:$AMQP_PORT" port_open "$AMQP_HOST" "$AMQP_PORT" ||
        die "RabbitMQ did not open $AMQP_HOST:$AMQP_PORT within ${TIMEOUT_SECONDS}s. See /var/log/rabbitmq/ (a hostname that does not resolve is a common cause: check /etc/hosts), then start it with: rabbitmq-server -detached"
}

# Masters make each worker's own RabbitMQ account through the management API
# (settings.yaml `worker_accounts`), so the plugin is turned on.
ensure_rabbitmq_management() {
    if port_open "$AMQP_HOST" "$MANAGEMENT_PORT"; then
        say "RabbitMQ's management API answers on $AMQP_HOST:$MANAGEMENT_PORT (reusing it)"
        return 0
    fi
    if ! find_command rabbitmq-plugins >/dev/null; then
        warn "RabbitMQ's management API is closed and rabbitmq-plugins is not here; enable the rabbitmq_management plugin on the broker, or remove worker_accounts from settings.yaml"
        return 0
    fi
    say "enabling RabbitMQ's management plugin (rabbitmq-plugins enable rabbitmq_management)"
    as_root "$(find_command rabbitmq-plugins)" enable rabbitmq_management >/dev/null ||
        die "rabbitmq-plugins could not enable rabbitmq_management; see /var/log/rabbitmq/, or run it yourself: rabbitmq-plugins enable rabbitmq_management"
    wait_until "RabbitMQ's management API on $AMQP_HOST:$MANAGEMENT_PORT" port_open "$AMQP_HOST" "$MANAGEMENT_PORT" ||
        die "RabbitMQ's management API did not open $AMQP_HOST:$MANAGEMENT_PORT within ${TIMEOUT_SECONDS}s; see /var/log/rabbitmq/"
}

# ---------------------------------------------------------------------------
# The test OpenID Connect provider (npm packages)

# True when Node.js is at least NODE_MINIMUM.
node_recent_enough() {
    local version
    version=$(node -p 'process.versions.node' 2>/dev/null) || return 1
    [[ $(printf '%s\n%s\n' "$NODE_MINIMUM" "$version" | sort -V | head -n 1) == "$NODE_MINIMUM" ]]
}

# True when node_modules was installed (npm writes its
# node_modules/.package-lock.json last) and is not older than package-lock.json.
oidc_packages_current() {
    local installed=$OIDC_DIR/node_modules/.package-lock.json
    [[ -f $installed && ! $OIDC_DIR/package-lock.json -nt $installed ]]
}

ensure_oidc_packages() {
    node_recent_enough ||
        die "Node.js $(node -p 'process.versions.node' 2>/dev/null || echo '(unknown)') is too old for the test OpenID Connect provider (oidc-provider 8 needs Node.js $NODE_MINIMUM or later). Install a newer Node.js and run again."
    if oidc_packages_current; then
        say "the test OpenID Connect provider's npm packages are installed ($OIDC_DIR/node_modules)"
        return 0
    fi
    say "installing the test OpenID Connect provider's npm packages (npm ci in $OIDC_DIR)"
    (cd "$OIDC_DIR" && npm ci --no-audit --no-fund) ||
        die "npm ci in $OIDC_DIR failed; see the output above (is the npm registry reachable?)."
    oidc_packages_current ||
        die "npm ci in $OIDC_DIR did not leave node_modules/.package-lock.json newer than package-lock.json."
}

# ---------------------------------------------------------------------------
# Verbs

# Installs, in one apt-get run, every package that is missing: the tools, and
# the servers whose port is closed (a server already answering is reused even
# if it is not a local Debian package, e.g. a container).
install_missing_packages() {
    local -a packages=()
    find_command git >/dev/null || packages+=(git)
    find_command curl >/dev/null || packages+=(curl)
    find_command python3 >/dev/null || packages+=(python3)
    find_command haproxy >/dev/null || packages+=(haproxy)
    find_command socat >/dev/null || packages+=(socat)
    find_command psql >/dev/null || packages+=(postgresql-client)
    if ! port_open "$PG_HOST" "$PG_PORT" &&
        { ! find_command pg_ctlcluster >/dev/null || [[ -z $(postgres_version) ]]; }; then
        packages+=(postgresql)
    fi
    if ! port_open "$AMQP_HOST" "$AMQP_PORT" && ! find_command rabbitmq-server >/dev/null; then
        packages+=(rabbitmq-server)
    fi
    if ! port_open "$REDIS_HOST" "$REDIS_PORT" && ! find_command redis-server >/dev/null; then
        packages+=(redis-server)
    fi
    find_command redis-cli >/dev/null || packages+=(redis-tools)
    if ((FOR_TESTS)); then
        # The web UI's tests drive a real browser.
        find_command chromium >/dev/null || packages+=(chromium)
        find_command chromedriver >/dev/null || packages+=(chromium-driver)
        # The fault tests run a worker whose clock is behind.
        find_command faketime >/dev/null || packages+=(faketime)
        # The mail reporter's tests send to a real SMTP server.
        find_command aiosmtpd >/dev/null || packages+=(python3-aiosmtpd)
        # The IRC reporter's tests announce on a real IRC server.
        find_command ngircd >/dev/null || packages+=(ngircd)
        # SASL needs services: InspIRCd with Atheme linked to it.
        find_command inspircd >/dev/null || packages+=(inspircd)
        find_command atheme-services >/dev/null || packages+=(atheme-services)
        # The sign-in tests run a real OpenID Connect provider on Node.js.
        find_command node >/dev/null || packages+=(nodejs)
        find_command npm >/dev/null || packages+=(npm)
    fi
    if ((${#packages[@]} > 0)); then
        say "missing: ${packages[*]}"
        apt_install "${packages[@]}"
    fi
    if command -v systemctl >/dev/null; then
        # The tests start private servers; the packages' own, on port 6667
        # for anyone, are not wanted on a developer's machine.
        local service
        for service in ngircd inspircd atheme-services; do
            if [[ " ${packages[*]} " == *" $service "* ]]; then
                systemctl disable --now "$service" >/dev/null 2>&1 || true
            fi
        done
    fi
}

cmd_ensure() {
    local started=$SECONDS
    install_missing_packages
    # Each check below is a no-op after install_missing_packages; they stay
    # so that a package which did not provide its command fails clearly.
    ensure_command git git
    ensure_command curl curl
    ensure_command python3 python3
    ensure_command haproxy haproxy
    # The client for HAProxy's runtime socket (draining during rolling restarts).
    ensure_command socat socat
    if ((FOR_TESTS)); then
        # The browser and its WebDriver, for the web UI's tests.
        ensure_command chromium chromium
        ensure_command chromedriver chromium-driver
        ensure_command faketime faketime
        ensure_command aiosmtpd python3-aiosmtpd
        ensure_command ngircd ngircd
        ensure_command inspircd inspircd
        ensure_command atheme-services atheme-services
        ensure_command node nodejs
        ensure_command npm npm
        ensure_oidc_packages
    fi
    ensure_postgres
    ensure_rabbitmq
    ensure_rabbitmq_management
    ensure_redis
    say "all services ready in $((SECONDS - started))s:"
    say "  postgres://$PG_ROLE:$PG_PASSWORD@$PG_HOST:$PG_PORT/postgres"
    say "  amqp://guest:guest@$AMQP_HOST:$AMQP_PORT/%2f"
    say "  http://guest:guest@$AMQP_HOST:$MANAGEMENT_PORT/ (RabbitMQ management)"
    say "  redis://$REDIS_HOST:$REDIS_PORT/"
    say "  haproxy: $(find_command haproxy)"
}

cmd_check() {
    local missing=0 name
    local names=(git curl python3 haproxy socat psql pg_ctlcluster redis-server rabbitmq-server)
    ((FOR_TESTS)) && names+=(chromium chromedriver faketime aiosmtpd ngircd inspircd atheme-services node npm)
    for name in "${names[@]}"; do
        if find_command "$name" >/dev/null; then
            say "installed:  $name ($(find_command "$name"))"
        else
            say "MISSING:    $name"
            missing=1
        fi
    done
    if ((FOR_TESTS)); then
        if find_command node >/dev/null && ! node_recent_enough; then
            say "TOO OLD:    node $(node -p 'process.versions.node') (the test OpenID Connect provider needs $NODE_MINIMUM or later)"
            missing=1
        fi
        if oidc_packages_current; then
            say "installed:  the test OpenID Connect provider's npm packages ($OIDC_DIR/node_modules)"
        else
            say "MISSING:    the test OpenID Connect provider's npm packages (npm ci in $OIDC_DIR)"
            missing=1
        fi
    fi
    if postgres_ready; then
        say "running:    PostgreSQL on $PG_HOST:$PG_PORT"
        if command -v psql >/dev/null 2>&1 && role_login_works; then
            say "ok:         Postgres role $PG_ROLE logs in with LOGIN CREATEDB"
        else
            say "MISSING:    Postgres role $PG_ROLE (LOGIN CREATEDB, password $PG_PASSWORD)"
            missing=1
        fi
    else
        say "NOT RUNNING: PostgreSQL on $PG_HOST:$PG_PORT"
        missing=1
    fi
    if port_open "$AMQP_HOST" "$AMQP_PORT"; then
        say "running:    RabbitMQ on $AMQP_HOST:$AMQP_PORT"
    else
        say "NOT RUNNING: RabbitMQ on $AMQP_HOST:$AMQP_PORT"
        missing=1
    fi
    if port_open "$AMQP_HOST" "$MANAGEMENT_PORT"; then
        say "running:    RabbitMQ management API on $AMQP_HOST:$MANAGEMENT_PORT"
    else
        say "NOT RUNNING: RabbitMQ management API on $AMQP_HOST:$MANAGEMENT_PORT (rabbitmq-plugins enable rabbitmq_management)"
        missing=1
    fi
    if redis_ready; then
        say "running:    Redis on $REDIS_HOST:$REDIS_PORT"
    else
        say "NOT RUNNING: Redis on $REDIS_HOST:$REDIS_PORT"
        missing=1
    fi
    if [[ $missing -ne 0 ]]; then
        say "something is missing: run 'deploy/services.sh ensure' (as root) to fix it"
        return 1
    fi
    say "everything is in place"
}

main() {
    case "${1:-}" in
    ensure | check)
        case "${2:-}" in
        --tests) FOR_TESTS=1 ;;
        "") ;;
        *)
            usage
            exit 2
            ;;
        esac
        "cmd_$1"
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage
        exit 2
        ;;
    esac
}

# Sourcing the file (for tests) defines the functions without running a verb.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
