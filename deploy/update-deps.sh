#!/usr/bin/env bash
# `make update-deps`: updates Cargo.lock to the newest versions Cargo.toml
# allows, on a branch of its own (update-deps-YYYY-MM-DD), runs the linters
# and the tests, and commits the new lock file there when they pass. Merge
# the branch (or open a pull request from it) to take the update.
#
#   deploy/update-deps.sh            update, test, commit on the branch
#   deploy/update-deps.sh --no-test  update and commit without testing
set -euo pipefail

say() { printf '[update-deps] %s\n' "$*"; }
die() {
    printf '[update-deps] ERROR: %s\n' "$*" >&2
    exit 1
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
test_too=1
[[ ${1:-} == --no-test ]] && test_too=0

git diff --quiet && git diff --cached --quiet ||
    die "the working tree has changes; commit or stash them first."
start="$(git rev-parse --abbrev-ref HEAD)"
branch="update-deps-$(date +%F)"
git rev-parse --verify --quiet "$branch" >/dev/null &&
    die "branch $branch exists; delete it (git branch -D $branch) or merge it first."

git switch -q -c "$branch"
say "on branch $branch (from $start): cargo update"
cargo update 2>&1 | sed 's/^/    /'
if git diff --quiet Cargo.lock; then
    git switch -q "$start"
    git branch -q -d "$branch"
    say "every dependency is already at its newest allowed version; nothing to do."
    exit 0
fi
say "changed: $(git diff --numstat Cargo.lock | awk '{ print $1 " lines added, " $2 " removed" }')"
if ((test_too)); then
    make lint test || {
        say "the tests fail with the new versions; Cargo.lock is left changed on $branch for you to look at."
        exit 1
    }
fi
git commit -q -m "Update dependencies (cargo update)" Cargo.lock
say "committed on $branch; merge it into $start to take the update: git switch $start && git merge $branch"
git switch -q "$start"
