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
    truncate -s "$size" "$scratch_image"
    mkfs.ext4 -q -F "$scratch_image"
    mkdir -p "$scratch"
    mount -o loop "$scratch_image" "$scratch"
    trap 'umount "$scratch"; rmdir "$scratch"; rm -f "$scratch_image"' EXIT
}
