#!/usr/bin/env bash
# The CI guard on CPU per message: user-space instructions per message (bench/instructions.sh,
# callgrind, repeatable to 0.3%) may not exceed bench/instructions.budget by more than 5%.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
    echo "== installing valgrind"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null; }
fi
budget=$(grep -v '^#' bench/instructions.budget | head -1)
out=$(bash bench/instructions.sh "" 10)
echo "$out"
count=$(sed -n 's/^user-space instructions per message: \([0-9]*\)$/\1/p' <<<"$out")
[ -n "$count" ] || { echo "no instruction count measured" >&2; exit 1; }
limit=$(( budget * 105 / 100 ))
if (( count > limit )); then
    echo "FAIL: $count instructions per message, more than 5% over the budget of $budget (limit $limit)"
    exit 1
fi
echo "ok: $count instructions per message; budget $budget, limit $limit ($(python3 -c "print(f'{$count / $budget:.3f}')")x the budget)"
