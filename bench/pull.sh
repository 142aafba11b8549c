#!/usr/bin/env bash
# Pull benchmark: the same real Debian image (bench/build-image.sh), pulled
# from oci-archive: and oci: by cfsd (through `cfsctl --repo`, whose
# private cfsd is a waited-for child, so time(1) counts it) and by upstream
# composefs-rs cfsctl 0.9.4, each into a fresh repository. One untimed
# warm-up, then the median of RUNS timed runs.
#
#   bench/pull.sh [IMAGE_DIR]       (default: bench/out/v1, built if absent)
#
# Env: CFSCTL (ours, default target/release/cfsctl), UPSTREAM (upstream
# cfsctl; `cargo install --locked composefs-ctl --version 0.9.4`), RUNS
# (default 5), SCRATCH (where repositories go; default a fresh journaled
# ext4 loop filesystem, see bench/scratch.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-bench/out/v1}
runs=${RUNS:-5}
. bench/scratch.sh
scratch_fs cfsd-bench 4G

[ -d "$image/oci" ] || bench/build-image.sh "$image"
bench_tools

# One measurement: wall s, user+sys s, peak RSS KiB, repository bytes.
measure() {
    local repo=$1; shift
    rm -rf "$repo"
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    # Keep the source in the page cache, as after a download.
    cat "$image/image.tar" >/dev/null
    find "$image/oci" -type f -exec cat {} + >/dev/null
    /usr/bin/time -f '%e %U %S %M' -o "$scratch/time" "$@" >/dev/null 2>"$scratch/err" || {
        cat "$scratch/err" >&2; return 1; }
    read -r wall user sys rss <"$scratch/time"
    echo "$wall $(echo "$user + $sys" | bc) $rss $(du -sb "$repo" | cut -f1)"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

bench() {
    local name=$1; shift
    local repo=$scratch/repo
    measure "$repo" "$@" >/dev/null # warm-up, untimed
    : >"$scratch/rows"
    for _ in $(seq "$runs"); do measure "$repo" "$@" >>"$scratch/rows"; done
    printf '| %s | %s | %s | %s | %s |\n' "$name" \
        "$(cut -d' ' -f1 "$scratch/rows" | median)" \
        "$(cut -d' ' -f2 "$scratch/rows" | median)" \
        "$(( $(cut -d' ' -f3 "$scratch/rows" | median) / 1024 ))" \
        "$(( $(cut -d' ' -f4 "$scratch/rows" | median) / 1048576 ))"
}

ours() { # ours TRANSPORT_SOURCE
    local repo=$scratch/repo
    "$cfsctl" --repo "$repo" init >/dev/null && "$cfsctl" --repo "$repo" oci pull "$1" bench
}
theirs() {
    local repo=$scratch/repo
    "$upstream" --repo "$repo" init --insecure >/dev/null
    "$upstream" --repo "$repo" oci pull "$1" bench
}
export -f ours theirs
export cfsctl upstream scratch

echo "| pull | wall s (median of $runs) | CPU s | peak RSS MiB | repository MiB |"
echo "|---|---|---|---|---|"
bench "cfsd, oci-archive:" bash -c 'ours "oci-archive:$0:v1"' "$image/image.tar"
bench "upstream cfsctl 0.9.4, oci-archive:" bash -c 'theirs "oci-archive:$0:v1"' "$image/image.tar"
bench "cfsd, oci:" bash -c 'ours "oci:$0:v1"' "$image/oci"
bench "upstream cfsctl 0.9.4, oci:" bash -c 'theirs "oci:$0:v1"' "$image/oci"
floor=$( { /usr/bin/time -f '%e' bash -c '
    d=$(mktemp -d "$1/floor.XXXXXX"); for b in $(python3 -c "
import json,sys
m=json.load(open(sys.argv[1]+\"/oci/blobs/sha256/\"+json.load(open(sys.argv[1]+\"/oci/index.json\"))[\"manifests\"][0][\"digest\"][7:]))
print(\" \".join(l[\"digest\"][7:] for l in m[\"layers\"]))" "$0"); do tar -C "$d" -xzf "$0/oci/blobs/sha256/$b"; done; rm -rf "$d"' "$image" "$scratch"; } 2>&1 >/dev/null | tail -1)
echo
echo "Floor: \`tar -xzf\` of the same layers: ${floor} s"
