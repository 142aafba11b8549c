#!/usr/bin/env bash
# Every benchmark in one go (issue #15 item 5): bench/pull.sh,
# bench/delta.sh, bench/registry.sh and bench/scale.sh, each writing its
# own tables to OUT/<name>.md, then one table of the ratios that the
# issues set goals for (bench/summary.py), printed and written to
# OUT/summary.md. The images are built first if absent (bench/out/v1 and
# v2, bench/out/scale).
#
#   bench/run-all.sh [OUT]     (default bench/out/run-all)
#
# Env: as the scripts it runs (CFSCTL, UPSTREAM, RUNS, BIG_MIB, ...);
# ONLY="pull delta" runs a subset, and the summary then leaves out the
# rows of the others.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out/run-all}
mkdir -p "$out"
only=${ONLY:-pull delta registry scale}
began=$(date +%s)
for name in $only; do
    [ -x "bench/$name.sh" ] || { echo "no benchmark bench/$name.sh" >&2; exit 1; }
    start=$(date +%s)
    echo "== bench/$name.sh" >&2
    bash "bench/$name.sh" >"$out/$name.md"
    echo "   $(($(date +%s) - start)) s" >&2
done
python3 bench/summary.py "$out" | tee "$out/summary.md"
echo
echo "bench/run-all.sh took $(($(date +%s) - began)) s ($only)"
