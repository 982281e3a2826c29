#!/usr/bin/env bash
# Keeps ARCHITECTURE.md true: every repository path it names (in backticks)
# must exist, and every function its walkthrough ("The life of a build, in
# functions") names must be defined. Run by `make lint`, and so by CI.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
doc=ARCHITECTURE.md
problems=()

# Paths: spans with a `/` made of path characters, not URLs (`/api/...`) and
# not patterns with placeholders (`…:worker:{w}:…`).
while IFS= read -r span; do
    [[ $span == /* || $span == *'{'* || $span == *'…'* || $span == *' '* ]] && continue
    [[ $span =~ ^[A-Za-z0-9_./-]+$ ]] || continue
    [[ -e $span ]] || problems+=("path \`$span\` does not exist")
done < <(grep -o '`[^`]*/[^`]*`' "$doc" | tr -d '`' | sort -u)

# Functions and types of the walkthrough: `Type::function`, `module::function`
# or a bare name; each must be defined in a Rust source file.
sources=$(git ls-files '*.rs')
walkthrough=$(sed -n '/^## The life of a build, in functions/,/^## /p' "$doc")
while IFS= read -r span; do
    name=${span##*::}
    if [[ $name =~ ^[a-z_][a-z0-9_]*$ ]]; then
        # shellcheck disable=SC2086
        grep -qE "fn ${name}\b" $sources || problems+=("function \`$span\` is not defined")
    elif [[ $name =~ ^[A-Z][A-Za-z0-9]*$ ]]; then
        # shellcheck disable=SC2086
        grep -qwE "(struct|enum|trait|type) ${name}|${name} \{|${name}\(" $sources ||
            problems+=("type or variant \`$span\` is not defined")
    fi
done < <(grep -o '`[A-Za-z_:]*`' <<<"$walkthrough" | tr -d '`' | sort -u)

if ((${#problems[@]} > 0)); then
    echo "tools/check-architecture.sh: ARCHITECTURE.md names what is not in the code:" >&2
    printf '  %s\n' "${problems[@]}" >&2
    echo "Fix the document (or the code) so the map stays true." >&2
    exit 1
fi
echo "architecture: every path and walkthrough function in ARCHITECTURE.md exists"
