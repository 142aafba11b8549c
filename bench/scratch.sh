# Sourced by the benchmarks: put the repositories on a fresh, journaled
# ext4 filesystem of their own (a loop mount), as on a real machine.
#
# Why not a plain directory: this VM's root filesystem is ext4 without a
# journal, where creating files right after deleting thousands (the
# previous run's repository) makes ext4 scan for inodes that were not
# recently deleted; that cost, not the tool, then dominates the timings.
# A dedicated filesystem also lets `df` measure exactly what a run wrote.
#
#   scratch_fs NAME SIZE   sets $scratch to a mounted empty filesystem and
#                          arranges its removal on exit. Not root, or
#                          SCRATCH set: a plain directory instead.
scratch_fs() {
    local name=$1 size=$2
    if [ -n "${SCRATCH:-}" ] || [ "$(id -u)" != 0 ]; then
        scratch=${SCRATCH:-$(mktemp -d "/var/tmp/$name.XXXXXX")}
        echo "note: repositories in the plain directory $scratch" >&2
        trap 'rm -rf "$scratch"' EXIT
        return
    fi
    scratch_image=$(mktemp "/var/tmp/$name.XXXXXX.ext4")
    scratch=${scratch_image%.ext4}.mnt
    # Preallocated: in a sparse file, the first write to each block costs
    # an allocation in the host filesystem, and the tool that runs first
    # on the fresh filesystem would pay it for the ones after it.
    fallocate -l "$size" "$scratch_image" 2>/dev/null || truncate -s "$size" "$scratch_image"
    mkfs.ext4 -q -F "$scratch_image"
    mkdir -p "$scratch"
    mount -o loop "$scratch_image" "$scratch"
    trap 'umount "$scratch"; rmdir "$scratch"; rm -f "$scratch_image"' EXIT
}

# bench_tools      sets $cfsctl (CFSCTL, default target/release/cfsctl,
#                  built if absent) and $upstream (UPSTREAM, default
#                  upstream cfsctl 0.9.4 as `cargo install --locked
#                  composefs-ctl --version 0.9.4 --root /opt/upstream-cfsctl`
#                  puts it), which must exist.
bench_tools() {
    cfsctl=${CFSCTL:-target/release/cfsctl}
    upstream=${UPSTREAM:-$(command -v cfsctl-upstream || echo /opt/upstream-cfsctl/bin/cfsctl)}
    [ -x "$cfsctl" ] || cargo build --release --bins
    [ -x "$upstream" ] || { echo "upstream cfsctl not found at $upstream" >&2; exit 1; }
}

# bench_need PKG...   installs the Debian packages PKG (each named after
#                  the command a benchmark runs) whose command is
#                  missing, or stops if it cannot: not root, or no apt.
bench_need() {
    local missing=() pkg
    for pkg in "$@"; do command -v "$pkg" >/dev/null || missing+=("$pkg"); done
    [ ${#missing[@]} -gt 0 ] || return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "missing: ${missing[*]} (apt-get install ${missing[*]})" >&2; exit 1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# bench_images OUT builds the Debian v1 and v2 images into OUT/v1 and
#                  OUT/v2 unless they are there (bench/build-image.sh).
bench_images() {
    [ -d "$1/v1/oci" ] || bench/build-image.sh "$1/v1"
    [ -d "$1/v2/oci" ] || bench/build-image.sh "$1/v2" vim-tiny,less,iproute2,procps \
        "bookworm bookworm-updates bookworm-security"
}
