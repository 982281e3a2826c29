#!/usr/bin/env bash
# Fails when a master module below the HTTP edge reaches up into it, or
# when SQL is written outside the store.
#
# Domain code (submitting, changes and schedulers, the read model, live
# events, accounts, recording, the store) knows nothing of HTTP: only the
# modules under services/master/src/http/ may name `http::` or axum. The one
# exception is lib.rs, which starts the server (`axum::serve` of
# `http::router`). Run by `make lint`, and so by CI.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
src=services/master/src

# `http::` of this crate (crate::http, super::http, or a bare `http::` path
# in lib.rs's children), and axum, outside http/ and lib.rs. Lines that are
# comments are not code.
violations=$(
    grep -rnE '(\bcrate::http\b|\bsuper::http\b|^\s*use\s+http::|\baxum\b)' "$src" --include='*.rs' |
        grep -v "^$src/http/" |
        grep -v "^$src/http\.rs:" |
        grep -vE "^$src/lib\.rs:[0-9]+:\s*let serving = axum::serve\(listener, http::router\(master\)\)" |
        grep -vE '^[^:]+:[0-9]+:\s*//' || true
)
if [[ -n $violations ]]; then
    echo "tools/check-layers.sh: modules below the HTTP edge must not use http:: or axum:" >&2
    echo "$violations" >&2
    echo "Move the HTTP part into services/master/src/http/, or the shared part into a domain module it calls." >&2
    exit 1
fi
# SQL lives in the store: no query text outside services/master/src/store/.
sql=$(grep -rnE '\bsqlx::query' "$src" --include='*.rs' | grep -v "^$src/store/" | grep -vE '^[^:]+:[0-9]+:\s*//' || true)
if [[ -n $sql ]]; then
    echo "tools/check-layers.sh: SQL outside services/master/src/store/:" >&2
    echo "$sql" >&2
    echo "Add a Store method (in the file of its aggregate) and call it." >&2
    exit 1
fi
echo "layers: no module below services/master/src/http/ uses it, and SQL stays in the store"
