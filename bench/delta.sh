#!/usr/bin/env bash
# Delta benchmark on two real Debian images (bench/build-image.sh):
#   v1: bookworm minbase + ca-certificates, curl, python3, openssl,
#       iputils-ping, libcap2-bin, and a small app layer;
#   v2: the same with bookworm-updates and -security enabled and vim-tiny,
#       less, iproute2 and procps added.
# It creates the v1->v2 delta with cfsd, then, each from a repository that
# holds only v1, applies it with cfsd and with upstream cfsctl 0.9.4, and
# pulls v2 whole with cfsd; it also sets the delta's size beside
# zstd --patch-from, xdelta3 and bsdiff on the base layer tars.
#
#   bench/delta.sh [OUT]   (default bench/out; images built if absent)
#
# Env: CFSCTL and UPSTREAM (see bench/scratch.sh), COMPARE=0 to skip
# zstd, xdelta3 and bsdiff, BSDIFF=0 to skip only bsdiff (minutes on 2
# cores), RUNS (default 1) rounds of the three updates, taken in turn so
# that a busy machine weighs on each alike; each figure is then the
# median of its rounds, and the wall times of every round are listed.
# CPU s is user + system time of the command and its private daemon: on a
# shared machine it moves less than the wall time.
# Repositories go on a fresh ext4 loop filesystem (bench/scratch.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out}
. bench/scratch.sh
scratch_fs cfsd-delta 8G

bench_images "$out"
bench_tools
[ "${COMPARE:-1}" = 0 ] || bench_need zstd xdelta3 bsdiff

# Peak extra disk: the most the filesystem's use rose above its use once
# the command finished, sampled every 20 ms.
fs_used() { df --output=used -B1 "$scratch" | tail -1; }
timed() { # timed LABEL CMD... ; prints "wall_s rss_mib peak_extra_mib cpu_s"
    local label=$1; shift
    : >"$scratch/samples"
    ( while :; do fs_used >>"$scratch/samples"; sleep 0.02; done ) &
    local sampler=$!
    /usr/bin/time -f '%e %M %U %S' -o "$scratch/time" "$@" >"$scratch/$label.out" 2>&1 || {
        kill $sampler; cat "$scratch/$label.out" >&2; return 1; }
    kill $sampler; wait $sampler 2>/dev/null || true
    local after; after=$(fs_used)
    local peak; peak=$(sort -n "$scratch/samples" | tail -1)
    read -r wall rss user sys <"$scratch/time"
    local extra=$(( (peak > after ? peak - after : 0) / 1048576 ))
    echo "$wall $(( rss / 1024 )) $extra $(python3 -c "print(f'{$user + $sys:.2f}')")"
}

base_of() { python3 - "$1" <<'PY'
import json, sys
root = sys.argv[1]
index = json.load(open(f"{root}/index.json"))
m = json.load(open(f"{root}/blobs/sha256/{index['manifests'][0]['digest'][7:]}"))
print(m["layers"][0]["digest"][7:], m["layers"][0]["size"])
PY
}

# The delta, made in a repository holding both images.
both=$scratch/both
"$cfsctl" --repo "$both" init >/dev/null
"$cfsctl" --repo "$both" oci pull "oci-archive:$out/v1/image.tar:v1" v1 >/dev/null
"$cfsctl" --repo "$both" oci pull "oci-archive:$out/v2/image.tar:v1" v2 >/dev/null
read -r create_wall create_rss _ _ < <(timed create "$cfsctl" --repo "$both" oci delta create v1 v2 "oci-archive:$scratch/delta.tar")
delta_bytes=$(stat -c %s "$scratch/delta.tar")

fresh_v1() { # fresh_v1 REPO TOOL
    rm -rf "$1"
    if [ "$2" = upstream ]; then
        "$upstream" --repo "$1" init --insecure >/dev/null
        "$upstream" --repo "$1" oci pull "oci-archive:$out/v1/image.tar:v1" v1 >/dev/null
    else
        "$cfsctl" --repo "$1" init >/dev/null
        "$cfsctl" --repo "$1" oci pull "oci-archive:$out/v1/image.tar:v1" v1 >/dev/null
    fi
    sync
}
repo=$scratch/repo
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
declare -A walls rsss disks cpus
for round in $(seq "${RUNS:-1}"); do
    fresh_v1 "$repo" cfsd
    read -r w r d c < <(timed apply "$cfsctl" --repo "$repo" oci pull "oci-archive:$scratch/delta.tar" v2)
    walls[apply]+=" $w"; rsss[apply]+=" $r"; disks[apply]+=" $d"; cpus[apply]+=" $c"
    ours_id=$("$cfsctl" --repo "$repo" oci compute-id v2)
    fresh_v1 "$repo" upstream
    read -r w r d c < <(timed upstream "$upstream" --repo "$repo" oci pull "oci-archive:$scratch/delta.tar" v2)
    walls[up]+=" $w"; rsss[up]+=" $r"; disks[up]+=" $d"; cpus[up]+=" $c"
    up_id=$("$upstream" --repo "$repo" oci compute-id v2)
    fresh_v1 "$repo" cfsd
    read -r w r d c < <(timed full "$cfsctl" --repo "$repo" oci pull "oci-archive:$out/v2/image.tar:v1" v2)
    walls[full]+=" $w"; rsss[full]+=" $r"; disks[full]+=" $d"; cpus[full]+=" $c"
    full_id=$("$cfsctl" --repo "$repo" oci compute-id v2)
done
for k in apply up full; do
    # shellcheck disable=SC2086 # the lists split on purpose
    printf -v "${k}_wall" %s "$(median ${walls[$k]})"
    # shellcheck disable=SC2086
    printf -v "${k}_rss" %s "$(median ${rsss[$k]})"
    # shellcheck disable=SC2086
    printf -v "${k}_disk" %s "$(median ${disks[$k]})"
    # shellcheck disable=SC2086
    printf -v "${k}_cpu" %s "$(median ${cpus[$k]})"
done
target_bytes=$(du -sb "$repo" | cut -f1)

# The base layers as tars, for the general-purpose differs.
read -r b1 _ < <(base_of "$out/v1/oci")
read -r b2 b2size < <(base_of "$out/v2/oci")
gzip -dc "$out/v1/oci/blobs/sha256/$b1" >"$scratch/v1.tar"
gzip -dc "$out/v2/oci/blobs/sha256/$b2" >"$scratch/v2.tar"
seconds() { /usr/bin/time -f %e -o "$scratch/t" "$@" >/dev/null 2>&1; cat "$scratch/t"; }
if [ "${COMPARE:-1}" = 1 ]; then
    zstd_s=$(seconds zstd -q -19 --long=28 --patch-from="$scratch/v1.tar" "$scratch/v2.tar" -o "$scratch/v2.zst")
    xdelta_s=$(seconds xdelta3 -9 -e -f -s "$scratch/v1.tar" "$scratch/v2.tar" "$scratch/v2.xd3")
    zstd_b=$(stat -c %s "$scratch/v2.zst"); xdelta_b=$(stat -c %s "$scratch/v2.xd3")
else
    zstd_s=-; xdelta_s=-; zstd_b=-; xdelta_b=-
fi
if [ "${BSDIFF:-1}" = 1 ] && [ "${COMPARE:-1}" = 1 ]; then
    bsdiff_s=$(seconds bsdiff "$scratch/v1.tar" "$scratch/v2.tar" "$scratch/v2.bsdiff")
    bsdiff_b=$(stat -c %s "$scratch/v2.bsdiff")
else
    bsdiff_s=-; bsdiff_b=-
fi
mb() { python3 -c "print(f'{$1/1e6:.2f}')"; }

echo "image ids of v2: delta $ours_id"
echo "                 upstream delta $up_id"
echo "                 full pull $full_id"
echo
echo "| v1 -> v2 update from a repository holding v1 | wall s | CPU s | peak RSS MiB | peak extra disk MiB |"
echo "|---|---|---|---|---|"
echo "| cfsd applies the delta | $apply_wall | $apply_cpu | $apply_rss | $apply_disk |"
echo "| upstream cfsctl 0.9.4 applies the delta | $up_wall | $up_cpu | $up_rss | $up_disk |"
echo "| cfsd pulls v2 whole (oci-archive:) | $full_wall | $full_cpu | $full_rss | $full_disk |"
echo
echo "Rounds: ${RUNS:-1}; wall s of each: apply${walls[apply]}; upstream${walls[up]}; full${walls[full]}"
echo "cfsd's apply / cfsd's full pull (medians): $(python3 -c "print(f'wall {$apply_wall/$full_wall:.2f}, CPU {$apply_cpu/$full_cpu:.2f}')")"
echo
echo "Target repository size after the update: $(mb "$target_bytes") MB"
echo
echo "| base layer v1 -> v2 | bytes (MB) | time s |"
echo "|---|---|---|"
echo "| v2 base layer, gzip (as shipped) | $(mb "$b2size") | - |"
echo "| whole cfsd delta archive (every changed layer; create: peak RSS $create_rss MiB) | $(mb "$delta_bytes") | $create_wall |"
echo "| zstd -19 --long=28 --patch-from | $( [ "$zstd_b" = - ] && echo - || mb "$zstd_b") | $zstd_s |"
echo "| xdelta3 -9 | $( [ "$xdelta_b" = - ] && echo - || mb "$xdelta_b") | $xdelta_s |"
echo "| bsdiff | $( [ "$bsdiff_b" = - ] && echo - || mb "$bsdiff_b") | $bsdiff_s |"
echo
echo "cfsd's encoding of each changed layer:"
grep -E 'tar-diff|whole' "$scratch/create.out" || true
