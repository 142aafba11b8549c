#!/usr/bin/env bash
# Stage-then-commit benchmark (issue #14 item 1): the Debian image staged
# with `oci pull --stage`, then `oci commit` timed: the commit reads no
# layer, it checks that the image's objects are present and sets a tag.
#
#   bench/stage.sh [IMAGE_DIR]      (default: bench/out/v2)
#
# Env: CFSD, CFSCTL (default target/release/{cfsd,cfsctl}), RUNS (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-bench/out/v2}
runs=${RUNS:-5}
cfsd=${CFSD:-target/release/cfsd}
cfsctl=${CFSCTL:-target/release/cfsctl}
work=$(mktemp -d /tmp/cfsd-stage-bench.XXXXXX)
"$cfsd" --repo "$work/repo" --address "unix:$work/sock" 2>"$work/log" &
daemon=$!
trap 'kill $daemon; wait $daemon 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -S "$work/sock" ] && break; sleep 0.05; done
ctl() { "$cfsctl" --address "unix:$work/sock" "$@"; }
ctl init >/dev/null
for i in $(seq "$runs"); do
    start=$(date +%s.%N)
    stage=$(ctl --progress=none --json oci pull --stage "oci-archive:$image/image.tar" \
        | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["result"]["stage"])')
    pulled=$(date +%s.%N)
    # A call that does next to nothing: cfsctl's own start and connection.
    ctl oci staged >/dev/null
    listed=$(date +%s.%N)
    ctl oci commit "$stage" "debian:$i" >/dev/null
    done_=$(date +%s.%N)
    echo "run $i: stage $(echo "$pulled - $start" | bc) s," \
        "oci staged $(echo "$listed - $pulled" | bc) s, commit $(echo "$done_ - $listed" | bc) s"
    ctl oci untag "debian:$i" >/dev/null
    ctl gc >/dev/null
done
