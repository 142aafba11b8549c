#!/usr/bin/env bash
# What `cfsctl oci idmap` costs: the time to make an ID-mapped variant of
# the Debian v1 image (bench/build-image.sh), and the bytes it adds to the
# repository, which should be its EROFS image and two small streams.
#
#   CFSCTL=target/release/cfsctl RUNS=5 bench/idmap.sh IMAGE_DIR
#
# IMAGE_DIR holds image.tar (an oci-archive:). Each run makes a variant
# of the one pulled image with other maps (the same maps would give the
# same variant, adding nothing but a tag); the page cache is dropped
# first. Times include cfsctl starting its private daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/scratch.sh
src=${1:?usage: idmap.sh IMAGE_DIR}
runs=${RUNS:-5}
cfsctl=${CFSCTL:-target/release/cfsctl}
scratch_fs cfsd-idmap 2G
repo=$scratch/repo
"$cfsctl" --repo "$repo" init >/dev/null
sync
echo 3 >/proc/sys/vm/drop_caches
start=$(date +%s.%N)
"$cfsctl" --repo "$repo" --progress=none oci pull "oci-archive:$src/image.tar" v1 >/dev/null
printf 'the pull, for comparison: %.2f s\n' "$(echo "$(date +%s.%N) - $start" | bc)"
files=$(find "$repo/objects" -type f | wc -l)
bytes() { du -sb --apparent-size "$repo/objects" | cut -f1; }
id=$("$cfsctl" --repo "$repo" --json oci inspect v1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["imageId"])')
echo "objects after the pull: $files, $(bytes) bytes; its EROFS image: $(stat -L -c %s "$repo/images/$id") bytes"
for i in $(seq "$runs"); do
    sync
    echo 3 >/proc/sys/vm/drop_caches
    before=$(bytes)
    before_files=$(find "$repo/objects" -type f | wc -l)
    start=$(date +%s.%N)
    "$cfsctl" --repo "$repo" oci idmap v1 "v1-mapped-$i" \
        --uidmap "0:$((100000 * i)):65536" --gidmap "0:$((100000 * i)):65536" >/dev/null
    end=$(date +%s.%N)
    after=$(bytes)
    after_files=$(find "$repo/objects" -type f | wc -l)
    printf 'run %d: %.2f s, %d bytes in %d new objects\n' "$i" "$(echo "$end - $start" | bc)" \
        "$((after - before))" "$((after_files - before_files))"
done
