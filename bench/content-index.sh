#!/usr/bin/env bash
# Content index benchmark (issue #12 item 1): what filling the index adds
# to a full pull, and how long opening it and looking files up takes.
#
#   bench/content-index.sh BEFORE_DIR AFTER_DIR [IMAGE_DIR]
#
# BEFORE_DIR and AFTER_DIR each hold a release cfsctl and cfsd (before and
# after the index); IMAGE_DIR (default bench/out/v2) is a bench image
# (bench/build-image.sh). The pulls alternate between the two builds, each
# into a fresh repository on a scratch ext4 (bench/scratch.sh) after the
# page cache was dropped and the source read back; RUNS (default 7) of
# each, medians. Then, with AFTER_DIR's build: open + lookups on a
# repository holding IMAGE_DIR's v1 and v2 (if IMAGE_DIR/../v1 exists),
# and on made-up ones of LAYERS x PER_LAYER entries (target/release/
# examples/content_index, `cargo build --release -p cfsd-repo --example
# content_index`).
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1 after=$2 image=${3:-bench/out/v2}
runs=${RUNS:-7}
probe=${PROBE:-target/release/examples/content_index}
. bench/scratch.sh
scratch_fs cfsd-cindex 4G

pull() { # pull BUILD_DIR REPO SOURCE
    "$1/cfsctl" --repo "$2" init >/dev/null
    "$1/cfsctl" --repo "$2" --progress none oci pull "$3" bench >/dev/null
}

timed_pull() { # timed_pull BUILD_DIR: wall seconds, user+sys seconds
    local repo=$scratch/repo
    rm -rf "$repo"; sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    cat "$image/image.tar" >/dev/null
    /usr/bin/time -f '%e %U %S' -o "$scratch/time" bash -c "$(declare -f pull); pull \"\$@\"" _ \
        "$1" "$repo" "oci-archive:$image/image.tar" 2>/dev/null
    read -r wall user sys <"$scratch/time"
    echo "$wall $(echo "$user + $sys" | bc)"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
row() { # row NAME FILE
    printf '| %s | %s | %s | %s |\n' "$1" "$(cut -d' ' -f1 "$2" | median)" \
        "$(cut -d' ' -f2 "$2" | median)" "$(cut -d' ' -f1 "$2" | sort -n | tr '\n' ' ')"
}

timed_pull "$before" >/dev/null; timed_pull "$after" >/dev/null # warm-up
: >"$scratch/before"; : >"$scratch/after"
for _ in $(seq "$runs"); do
    timed_pull "$before" >>"$scratch/before"
    timed_pull "$after" >>"$scratch/after"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| pull of $(basename "$image"), oci-archive: | wall s (median of $runs) | CPU s (median) | wall s, all runs |"
echo "|---|---|---|---|"
row "before the index" "$scratch/before"
row "with the index" "$scratch/after"

[ -x "$probe" ] || { echo "no $probe: lookups not measured"; exit 0; }
echo
repo=$scratch/repo; rm -rf "$repo"
v1=$(dirname "$image")/v1
[ -d "$v1" ] && pull "$after" "$repo" "oci-archive:$v1/image.tar"
"$after/cfsctl" --repo "$repo" --progress none oci pull "oci-archive:$image/image.tar" bench2 >/dev/null
echo "v1 + v2: $("$probe" "$repo")"
for shape in "100 1000" "400 250" "1000 1000"; do
    rm -rf "$repo"; "$after/cfsctl" --repo "$repo" init >/dev/null
    # shellcheck disable=SC2086
    "$probe" "$repo" $shape >/dev/null
    sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    echo "made up, $shape (cold cache): $("$probe" "$repo")"
    echo "made up, $shape (warm cache): $("$probe" "$repo")"
done
