#!/usr/bin/env bash
# fuzz/long_run.sh [RUNS] -- the long atheris run behind docs/reliability.md.
#
# Runs each target in turn (one process at a time, at the lowest CPU priority, so it
# can share a small machine), RUNS inputs each (default 1,000,000), each with its own
# corpus under $FUZZ_DIR (default /tmp/imap-proxy-fuzz), and writes one log per target
# there. TARGETS (default: all four) and MAX_LEN (default 4096 octets) may be set in
# the environment. A crash stops that target's run and leaves crash-* in $FUZZ_DIR;
# each target's final libFuzzer statistics are appended to $FUZZ_DIR/summary.txt.
set -uo pipefail
RUNS=${1:-1000000}
FUZZ_DIR=${FUZZ_DIR:-/tmp/imap-proxy-fuzz}
TARGETS=${TARGETS:-framer command response session}
MAX_LEN=${MAX_LEN:-4096}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$FUZZ_DIR"
cd "$FUZZ_DIR"
for target in $TARGETS; do
    mkdir -p "corpus-$target"
    echo "== $target: $RUNS runs, max_len $MAX_LEN, started $(date -u +%H:%M:%S)" | tee -a summary.txt
    PYTHONPATH="$ROOT" nice -n 19 python -m fuzz.run "$target" --runs "$RUNS" \
        --max-len "$MAX_LEN" --corpus "corpus-$target" >"$target.log" 2>&1
    status=$?
    grep -E "^(Done|stat::)" "$target.log" | tee -a summary.txt
    echo "== $target: exit $status, ended $(date -u +%H:%M:%S)" | tee -a summary.txt
done
