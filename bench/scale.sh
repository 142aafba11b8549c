#!/usr/bin/env bash
# Scale benchmark (issue #15 item 4): cfsd beside upstream composefs-rs
# cfsctl 0.9.4 on deterministic images that stress one dimension each
# (bench/scale-image.py makes them):
#   files-N  one layer of N files of 6 KiB (N = 10000, 30000, 100000);
#   big      one layer holding one file of BIG_MIB MiB (default 4096);
#   layers   30 layers of 200 files;
#   fleet    a repository holding 20 images that share a base layer.
# For each image: pull v1, fsck, delta create v1 -> v2 (cfsd only:
# upstream has no delta create), delta apply from a repository holding v1,
# and gc once v1 is removed from a repository holding v1 and v2. For the
# fleet: the 20 pulls, fsck and gc (one image removed), and the time to
# read every object once, the yardstick for fsck and gc. One run each; the
# source archive is in the page cache, the repository's objects are not
# when fsck and gc start.
#
#   bench/scale.sh [CASE...]   (default: every case, in the order above)
#
# Env: CFSCTL and UPSTREAM (see bench/scratch.sh), BIG_MIB, DELTA=0 to
# leave out delta create and apply (upstream then pulls v2 whole before
# its gc), FIXTURES
# (default bench/out/scale; images made there if absent). Repositories go
# on a fresh ext4 loop filesystem (bench/scratch.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
fixtures=${FIXTURES:-bench/out/scale}
big_mib=${BIG_MIB:-4096}
deltas=${DELTA:-1}
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(files-10000 files-30000 files-100000 big layers fleet)
. bench/scratch.sh
scratch_fs cfsd-scale 20G
bench_tools
mkdir -p "$fixtures"

fixture() { # fixture CASE: the archive of CASE, made if absent
    local kind=${1%%-*} n
    case $1 in
        files-*) n=${1#files-} ;;
        big) n=$big_mib ;;
        layers) n=30 ;;
        fleet) n=20 ;;
        *) echo "unknown case $1" >&2; exit 1 ;;
    esac
    local tar=$fixtures/$kind-$n.tar
    [ -f "$tar" ] || python3 bench/scale-image.py "$kind" "$n" "$tar"
    echo "$tar"
}

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# timed ROW CMD...: one table row of wall s, CPU s, peak RSS MiB and
# the size of the repository $repo afterwards.
timed() {
    local row=$1; shift
    /usr/bin/time -f '%e %U %S %M' -o "$scratch/time" "$@" >"$scratch/out" 2>&1 || {
        cat "$scratch/out" >&2; return 1; }
    read -r wall user sys rss <"$scratch/time"
    printf '| %s | %s | %s | %s | %s |\n' "$row" "$wall" \
        "$(python3 -c "print(f'{$user + $sys:.2f}')")" "$((rss / 1024))" \
        "$(($(du -sb "$repo" | cut -f1) / 1048576))"
}
fresh() { # fresh TOOL: an empty repository $repo for TOOL
    rm -rf "$repo"
    if [ "$1" = upstream ]; then "$upstream" --repo "$repo" init --insecure >/dev/null
    else "$cfsctl" --repo "$repo" init >/dev/null; fi
}
pull() { # pull TOOL SOURCE NAME, untimed
    if [ "$1" = upstream ]; then "$upstream" --repo "$repo" oci pull "$2" "$3" >/dev/null
    else "$cfsctl" --repo "$repo" --progress none oci pull "$2" "$3" >/dev/null; fi
}
warm() { cat "$1" >/dev/null; }
repo=$scratch/repo

image_case() { # image_case CASE: the rows of an image with v1 and v2
    local tar; tar=$(fixture "$1")
    local delta=$scratch/delta.tar
    warm "$tar"
    fresh cfsd
    timed "cfsd: pull v1" "$cfsctl" --repo "$repo" --progress none oci pull "oci-archive:$tar:v1" v1
    cold
    timed "cfsd: fsck" "$cfsctl" --repo "$repo" fsck
    warm "$tar"
    pull cfsd "oci-archive:$tar:v2" v2
    rm -f "$delta"
    [ "$deltas" = 0 ] || timed "cfsd: delta create v1 -> v2" "$cfsctl" --repo "$repo" \
        --progress none oci delta create v1 v2 "oci-archive:$delta"
    local ours; ours=$("$cfsctl" --repo "$repo" oci compute-id v2)
    "$cfsctl" --repo "$repo" oci rm v1 >/dev/null
    cold
    timed "cfsd: gc with v1 removed" "$cfsctl" --repo "$repo" gc
    if [ "$deltas" != 0 ]; then
        fresh cfsd
        pull cfsd "oci-archive:$tar:v1" v1
        warm "$delta"
        timed "cfsd: delta apply" "$cfsctl" --repo "$repo" --progress none oci pull "oci-archive:$delta" v2
        [ "$("$cfsctl" --repo "$repo" oci compute-id v2)" = "$ours" ] || {
            echo "cfsd's delta gave another v2" >&2; exit 1; }
    fi

    warm "$tar"
    fresh upstream
    timed "upstream: pull v1" "$upstream" --repo "$repo" oci pull "oci-archive:$tar:v1" v1
    cold
    timed "upstream: fsck" "$upstream" --repo "$repo" fsck
    if [ "$deltas" != 0 ]; then
        warm "$delta"
        timed "upstream: delta apply" "$upstream" --repo "$repo" oci pull "oci-archive:$delta" v2
    else
        warm "$tar"
        pull upstream "oci-archive:$tar:v2" v2
    fi
    local theirs; theirs=$("$upstream" --repo "$repo" oci compute-id v2)
    "$upstream" --repo "$repo" oci untag v1 >/dev/null
    cold
    timed "upstream: gc with v1 removed" "$upstream" --repo "$repo" gc
    [ "$ours" = "$theirs" ] || { echo "v2's image ids differ: $ours, $theirs" >&2; exit 1; }
    local what="no delta (DELTA=0)"
    [ "$deltas" = 0 ] || what="delta: $(($(stat -c %s "$delta") / 1024)) KiB"
    echo "| $what; v2 image id $ours, the same for both | | | | |"
}

fleet_case() {
    local tar; tar=$(fixture fleet)
    local tool label
    for tool in cfsd upstream; do
        warm "$tar"
        fresh "$tool"
        timed "$tool: pull 20 images" bash -c '
            for n in $(seq 0 19); do
                if [ "$0" = upstream ]; then "$1" --repo "$2" oci pull "oci-archive:$3:img$n" "img$n"
                else "$1" --repo "$2" --progress none oci pull "oci-archive:$3:img$n" "img$n"; fi
            done >/dev/null' "$tool" "$([ "$tool" = upstream ] && echo "$upstream" || echo "$cfsctl")" "$repo" "$tar"
        cold
        if [ "$tool" = upstream ]; then
            timed "upstream: fsck" "$upstream" --repo "$repo" fsck
            "$upstream" --repo "$repo" oci untag img0 >/dev/null
            cold
            timed "upstream: gc with img0 removed" "$upstream" --repo "$repo" gc
        else
            timed "cfsd: fsck" "$cfsctl" --repo "$repo" fsck
            "$cfsctl" --repo "$repo" oci rm img0 >/dev/null
            cold
            timed "cfsd: gc with img0 removed" "$cfsctl" --repo "$repo" gc
        fi
    done
    cold
    label="read every object once (cold): find objects -type f -exec cat"
    timed "$label" bash -c 'find "$0/objects" -type f -exec cat {} + >/dev/null' "$repo"
}

echo "| case: operation | wall s | CPU s | peak RSS MiB | repository MiB |"
echo "|---|---|---|---|---|"
for c in "${cases[@]}"; do
    echo "| **$c** | | | | |"
    case $c in
        fleet) fleet_case ;;
        *) image_case "$c" ;;
    esac
done
