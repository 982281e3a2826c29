#!/usr/bin/env bash
# Back up and restore buildmaster. Postgres is the only thing to back up:
# RabbitMQ and Redis carry messages and live logs, and masters started on a
# restored database announce its pending requests again (the reconciler).
#
#   deploy/backup.sh dump DATABASE_URL FILE      pg_dump in the custom format
#   deploy/backup.sh restore FILE DATABASE_URL   into a new, empty database
#                                                (created when missing)
#
# Restore while no master uses the target database, then start masters on it
# (`buildmaster upgrade-master` first when the dump comes from an older
# version). A dump is consistent on its own (one snapshot); masters may keep
# running while it is taken.
set -euo pipefail

say() { printf '[backup] %s\n' "$*"; }
die() {
    printf '[backup] ERROR: %s\n' "$*" >&2
    exit 1
}

need() {
    command -v "$1" >/dev/null 2>&1 ||
        die "$1 not found; install the postgresql-client package (deploy/services.sh ensure does)."
}

# split_url URL : prints the URL of the server's `postgres` database and the
# database name, tab-separated.
split_url() {
    local url="$1" base name query=""
    base="${url%%\?*}"
    [[ $url == *\?* ]] && query="?${url#*\?}"
    name="${base##*/}"
    [[ -n $name && $name != "$base" ]] || die "$url names no database (postgres://user:password@host:port/DATABASE)."
    # The same server and options (sslmode...), its `postgres` database.
    printf '%s/postgres%s\t%s\n' "${base%/*}" "$query" "$name"
}

dump() {
    local url="$1" file="$2" started=$SECONDS
    need pg_dump
    say "dumping $(split_url "$url" | cut -f2) to $file"
    # Into a new file first: a failed dump never truncates the last good one.
    pg_dump --format=custom --no-owner --no-privileges --file="$file.partial" "$url" || {
        rm -f "$file.partial"
        die "pg_dump failed (above); $file was not touched."
    }
    mv -f "$file.partial" "$file"
    say "done in $((SECONDS - started))s: $(du -h "$file" | cut -f1) in $file"
}

restore() {
    local file="$1" url="$2" admin name exists tables started=$SECONDS
    need pg_restore
    need psql
    [[ -r $file ]] || die "cannot read $file."
    IFS=$'\t' read -r admin name < <(split_url "$url")
    # Variables are interpolated in psql's input, not in -c: the name is
    # quoted by psql, never pasted into SQL.
    exists="$(psql -X -q -t -A -v ON_ERROR_STOP=1 -v name="$name" "$admin" \
        <<<"select count(*) from pg_database where datname = :'name'")" ||
        die "cannot reach the server of $url (above)."
    if [[ $exists == 0 ]]; then
        say "creating database $name"
        psql -X -q -v ON_ERROR_STOP=1 -v name="$name" "$admin" <<<'create database :"name"' ||
            die "cannot create database $name (above); the role needs CREATEDB."
    else
        tables="$(psql -X -q -t -A "$url" -c "select count(*) from pg_tables where schemaname = 'public'")"
        [[ $tables == 0 ]] ||
            die "database $name is not empty ($tables tables); restore into a new database, or drop this one first."
    fi
    say "restoring $file into $name"
    pg_restore --no-owner --no-privileges --exit-on-error --dbname="$url" "$file" ||
        die "pg_restore failed (above); drop database $name before trying again."
    say "done in $((SECONDS - started))s; start masters on it (after 'buildmaster upgrade-master' if it is older)"
}

case "${1:-}" in
dump)
    [[ $# -eq 3 ]] || die "usage: deploy/backup.sh dump DATABASE_URL FILE"
    dump "$2" "$3"
    ;;
restore)
    [[ $# -eq 3 ]] || die "usage: deploy/backup.sh restore FILE DATABASE_URL"
    restore "$2" "$3"
    ;;
*)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
