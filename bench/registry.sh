#!/usr/bin/env bash
# Registry benchmark (issue #11 item 7): the Debian v1 image of the pull
# benchmark, pushed by skopeo to a local registry (Debian's
# docker-registry on 127.0.0.1, plain HTTP), pulled into a fresh
# repository three ways:
#   - cfsd, from docker:// itself;
#   - upstream cfsctl 0.9.4, whose registry pulls go through skopeo;
#   - `skopeo copy` to an oci: layout, then a cfsd pull of that layout
#     (the layout is deleted at the end of the timed command, so it shows
#     as extra disk);
# and, for reference, cfsd's own oci-archive: pull of the same image. Then
# v2 on top of v1, from a repository holding only v1: through the delta
# cfsd finds beside v2 in the registry, and as a full pull (--no-delta).
#
#   bench/registry.sh [OUT]    (default bench/out; images built if absent)
#
# Env: CFSCTL and UPSTREAM (see bench/scratch.sh), RUNS (default 3),
# DELTA=0 to leave out the delta and the v2 rows, PARTIAL=0 the partial
# pull rows: v2 pushed as zstd:chunked (skopeo's legacy variant) and
# pulled on top of v1 in part, beside the same pull with --no-partial;
# and in part on top of v1 pulled from the registry as zstd:chunked too,
# whose TOC recorded the chunks of its files: what chunk-level reuse adds
# over whole-file reuse.
# Each figure is the median of RUNS runs after an untimed warm-up, into a
# fresh repository on a fresh journaled ext4 loop filesystem
# (bench/scratch.sh), with the page cache dropped first. Bytes received
# are the loopback interface's (both directions: requests are a few KiB).
#
# Bookworm's skopeo (and so upstream cfsctl) reads only the system
# registries.conf: a drop-in marking the local registry insecure is
# written for the run and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out}
runs=${RUNS:-3}
. bench/scratch.sh
scratch_fs cfsd-registry 8G

bench_images "$out"
bench_tools
bench_need docker-registry skopeo openssl

# start_registry DIR: a registry storing under DIR, on a free port of
# 127.0.0.1, marked insecure for skopeo; sets $started_host.
registry_pids=()
dropins=()
start_registry() {
    local dir=$1 port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    started_host=127.0.0.1:$port
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
http:
  addr: $started_host
EOF
    docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
    registry_pids+=($!)
    local dropin=/etc/containers/registries.conf.d/99-cfsd-bench-$port.conf
    dropins+=("$dropin")
    mkdir -p "$(dirname "$dropin")"
    printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$started_host" >"$dropin"
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
}
registry_dir=$(mktemp -d /var/tmp/cfsd-registry-bench.XXXXXX)
mkdir "$registry_dir/gzip" "$registry_dir/chunked"
cleanup() {
    for pid in "${registry_pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$registry_dir" "${dropins[@]}"
    umount "$scratch" 2>/dev/null && rmdir "$scratch" && rm -f "${scratch_image:-}"
    [ -n "${scratch_image:-}" ] || rm -rf "$scratch"
}
trap cleanup EXIT
start_registry "$registry_dir/gzip"
host=$started_host
# The zstd:chunked images go to a registry of their own: skopeo 1.9's
# blob cache would otherwise push the gzip blobs the first registry
# already holds instead of recompressing.
start_registry "$registry_dir/chunked"
chunked_host=$started_host

skopeo copy --quiet --dest-tls-verify=false "oci:$out/v1/oci:v1" "docker://$host/bench:v1"
skopeo copy --quiet --dest-tls-verify=false "oci:$out/v2/oci:v1" "docker://$host/bench:v2"
# The delta, made in a repository holding both images and pushed beside
# v2 (with the referrers tag-schema index that lets cfsd find it).
delta=${DELTA:-1}
if [ "$delta" = 1 ]; then
both=$scratch/both
"$cfsctl" --repo "$both" init >/dev/null
"$cfsctl" --repo "$both" oci pull --progress=none --tls-verify=false "docker://$host/bench:v1" v1 >/dev/null
"$cfsctl" --repo "$both" oci pull --progress=none --tls-verify=false "docker://$host/bench:v2" v2 >/dev/null
"$cfsctl" --repo "$both" oci delta create --tls-verify=false v1 v2 "docker://$host/bench:v1-to-v2" >/dev/null
rm -rf "$both"
else
    echo "note: DELTA=0, no delta and no v2 rows" >&2
fi

lo_bytes() { echo $(( $(cat /sys/class/net/lo/statistics/rx_bytes) )); }
fs_used() { df --output=used -B1 "$scratch" | tail -1; }

# One measurement of CMD...: "wall_s cpu_s rss_kib lo_bytes extra_bytes".
# PREPARE (a shell function name, or :) runs first, untimed.
measure() {
    local prepare=$1; shift
    rm -rf "$scratch/repo" "$scratch/layout"
    "$prepare"
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    # The sources in the page cache, as on a warm server: the archive and
    # the registry's blobs.
    cat "$out/v1/image.tar" >/dev/null
    find "$registry_dir" -type f -exec cat {} + >/dev/null
    : >"$scratch/samples"
    ( while :; do fs_used >>"$scratch/samples"; sleep 0.02; done ) &
    local sampler=$! before; before=$(lo_bytes)
    /usr/bin/time -f '%e %U %S %M' -o "$scratch/time" "$@" >"$scratch/out" 2>&1 || {
        kill $sampler; cat "$scratch/out" >&2; return 1; }
    local received=$(( $(lo_bytes) - before ))
    kill $sampler; wait $sampler 2>/dev/null || true
    local after peak; after=$(fs_used); peak=$(sort -n "$scratch/samples" | tail -1)
    read -r wall user sys rss <"$scratch/time"
    echo "$wall $(echo "$user + $sys" | bc) $rss $received $(( peak > after ? peak - after : 0 ))"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# bench NAME PREPARE CMD...: one table row of medians.
bench() {
    local name=$1; shift
    measure "$@" >/dev/null # warm-up, untimed
    : >"$scratch/rows"
    for _ in $(seq "$runs"); do measure "$@" >>"$scratch/rows"; done
    col() { cut -d' ' -f"$1" "$scratch/rows" | median; }
    printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$(col 1)" "$(col 2)" \
        "$(( $(col 3) / 1024 ))" \
        "$(python3 -c "print(f'{$(col 4)/1e6:.1f}')")" \
        "$(python3 -c "print(f'{$(col 5)/1048576:.1f}')")"
}

repo=$scratch/repo
new_ours() { "$cfsctl" --repo "$repo" init >/dev/null; }
new_upstream() { "$upstream" --repo "$repo" init --insecure >/dev/null; }
ours_with_v1() {
    new_ours
    "$cfsctl" --repo "$repo" oci pull --progress=none "oci-archive:$out/v1/image.tar:v1" v1 >/dev/null
}
# time(1) runs programs, not shell functions.
copy_then_pull="skopeo copy --quiet --src-tls-verify=false docker://$host/bench:v1 oci:$scratch/layout:v1 \
    && $cfsctl --repo $repo oci pull oci:$scratch/layout:v1 v1 && rm -rf $scratch/layout"

echo "| v1 into a fresh repository | wall s | CPU s | peak RSS MiB | MB received | peak extra disk MiB |"
echo "|---|---|---|---|---|---|"
bench "cfsd, docker://" new_ours \
    "$cfsctl" --repo "$repo" oci pull --tls-verify=false "docker://$host/bench:v1" v1
bench "upstream cfsctl 0.9.4, docker:// (skopeo)" new_upstream \
    "$upstream" --repo "$repo" oci pull "docker://$host/bench:v1" v1
bench "skopeo copy to oci:, then cfsd oci:" new_ours bash -c "$copy_then_pull"
bench "cfsd, oci-archive: (reference)" new_ours \
    "$cfsctl" --repo "$repo" oci pull "oci-archive:$out/v1/image.tar:v1" v1
if [ "${PARTIAL:-1}" = 1 ]; then
    skopeo copy --quiet --dest-tls-verify=false --dest-compress-format zstd:chunked \
        "oci:$out/v2/oci:v1" "docker://$chunked_host/bench:v2-chunked"
    skopeo copy --quiet --dest-tls-verify=false --dest-compress-format zstd:chunked \
        "oci:$out/v1/oci:v1" "docker://$chunked_host/bench:v1-chunked"
    ours_with_chunked_v1() {
        new_ours
        "$cfsctl" --repo "$repo" oci pull --progress=none --tls-verify=false --no-delta \
            "docker://$chunked_host/bench:v1-chunked" v1 >/dev/null
    }
    echo
    echo "| v2 as zstd:chunked on top of v1 | wall s | CPU s | peak RSS MiB | MB received | peak extra disk MiB |"
    echo "|---|---|---|---|---|---|"
    bench "cfsd, docker:// in part" ours_with_v1 \
        "$cfsctl" --repo "$repo" oci pull --tls-verify=false --no-delta "docker://$chunked_host/bench:v2-chunked" v2
    partial_id=$(grep '^Image ID' "$scratch/out")
    files_only=$(grep "^Partial pull: [1-9]" "$scratch/out") || { cat "$scratch/out" >&2; echo "the pull was not partial" >&2; exit 1; }
    bench "cfsd, docker:// in part, v1 pulled as zstd:chunked" ours_with_chunked_v1 \
        "$cfsctl" --repo "$repo" oci pull --tls-verify=false --no-delta "docker://$chunked_host/bench:v2-chunked" v2
    chunks_id=$(grep '^Image ID' "$scratch/out")
    with_chunks=$(grep "^Partial pull: [1-9]" "$scratch/out") || { cat "$scratch/out" >&2; echo "the pull was not partial" >&2; exit 1; }
    bench "cfsd, docker:// --no-partial" ours_with_v1 \
        "$cfsctl" --repo "$repo" oci pull --tls-verify=false --no-delta --no-partial "docker://$chunked_host/bench:v2-chunked" v2
    whole_id=$(grep '^Image ID' "$scratch/out")
    [ "$partial_id" = "$whole_id" ] || { echo "the partial pull gave another image" >&2; exit 1; }
    [ "$chunks_id" = "$whole_id" ] || { echo "the pull reusing chunks gave another image" >&2; exit 1; }
    echo
    echo "on v1 from oci-archive: $files_only"
    echo "on v1 as zstd:chunked:  $with_chunks"
    chunked_blobs=$(python3 - "$registry_dir/chunked/storage/docker/registry/v2" <<'PY'
import json, os, sys
root = sys.argv[1]
tag = os.path.join(root, "repositories/bench/_manifests/tags/v2-chunked/current/link")
blob = lambda d: os.path.join(root, "blobs/sha256", d[7:9], d[7:], "data")
manifest = json.load(open(blob(open(tag).read().strip())))
print(sum(l["size"] for l in manifest["layers"]) + manifest["config"]["size"])
PY
)
    echo "v2's zstd:chunked blobs: $(python3 -c "print(f'{$chunked_blobs/1e6:.1f}')") MB"
fi
[ "$delta" = 1 ] || exit 0
echo
echo "| v2 on top of v1 | wall s | CPU s | peak RSS MiB | MB received | peak extra disk MiB |"
echo "|---|---|---|---|---|---|"
bench "cfsd, docker:// with the delta it finds" ours_with_v1 \
    "$cfsctl" --repo "$repo" oci pull --tls-verify=false "docker://$host/bench:v2" v2
discovery=$(grep '^Delta discovery' "$scratch/out" || echo "Delta discovery: not reported")
delta_id=$(grep '^Image ID' "$scratch/out")
bench "cfsd, docker:// --no-delta" ours_with_v1 \
    "$cfsctl" --repo "$repo" oci pull --tls-verify=false --no-delta "docker://$host/bench:v2" v2
full_id=$(grep '^Image ID' "$scratch/out")
echo
echo "$discovery"
echo "v2 through the delta: $delta_id"
echo "v2 pulled whole:      $full_id"
[ "$delta_id" = "$full_id" ] || { echo "the delta gave another image than the full pull" >&2; exit 1; }
v2_blobs=$(python3 - "$out/v2/oci" <<'PY'
import json, sys
root = sys.argv[1]
index = json.load(open(f"{root}/index.json"))
m = json.load(open(f"{root}/blobs/sha256/{index['manifests'][0]['digest'][7:]}"))
print(sum(l["size"] for l in m["layers"]) + m["config"]["size"])
PY
)
echo "v2's blobs: $(python3 -c "print(f'{$v2_blobs/1e6:.1f}')") MB"
