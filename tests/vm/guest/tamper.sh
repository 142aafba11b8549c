# Tampering with a repository that enforces fs-verity is answered by a
# typed error or EIO, never by wrong bytes: an object's bytes changed on
# the raw disk, an object replaced by a same-named file without verity, an
# image swapped for another valid object, and a repository made insecure
# and opened later with --require-verity.
. /scenarios/lib.sh

remount() {
    cd /
    umount /disk
    mount -t "$CFSD_VM_FS" /dev/vda /disk
}

# fsck_names OBJECT: fsck fails and names the object.
fsck_names() {
    report=$(cfsctl --json fsck || true)
    expect "fsck finds damage ($2)" false "$(echo "$report" | jq -r .ok)"
    echo "$report" | jq -r '.problems[].detail' | grep -q "$1" ||
        fail "fsck does not name $1: $report"
    ok "fsck names the damaged $1"
}

# read_fails IMAGE PATH: reading PATH through a mount of IMAGE fails.
read_fails() {
    mkdir -p /mnt/image
    cfsctl oci mount "$1" /mnt/image || fail "mount $1"
    if cat "/mnt/image$2" >/dev/null 2>/tmp/read.err; then
        umount /mnt/image
        fail "$2 read through the mount of $1 in spite of the damage"
    fi
    ok "reading $2 through the mount fails: $(cat /tmp/read.err)"
    umount /mnt/image
}

start_cfsd --require-verity
cfsctl init >/dev/null
cfsctl --progress none oci pull oci-archive:/fixtures/busybox.tar:demo busybox:demo >/dev/null
cfsctl --progress none oci pull oci-archive:/fixtures/busybox.tar:demo-v2 busybox:v2 >/dev/null
busybox_object=$(ls -S "$repo"/objects/??/* | head -n 1)
busybox_name=objects/${busybox_object#"$repo"/objects/}
stop_cfsd

echo "# 1. an object's bytes changed on the raw disk"
block=$(filefrag -v -b4096 "$busybox_object" | awk '$1 == "0:" { sub(/\.\./, "", $4); print $4 }')
[ -n "$block" ] || fail "no extent for $busybox_object"
cd /
umount /disk
dd if=/dev/urandom of=/dev/vda bs=4096 seek=$((block + 1)) count=1 conv=notrunc oflag=direct 2>/dev/null
mount -t "$CFSD_VM_FS" /dev/vda /disk
if cat "$busybox_object" >/dev/null 2>/tmp/read.err; then
    fail "the damaged object reads without error"
fi
ok "the damaged object fails to read: $(cat /tmp/read.err)"
start_cfsd --require-verity
fsck_names "$busybox_name" "raw disk"
read_fails busybox:demo /bin/busybox
cfsctl --json oci pull oci-archive:/fixtures/busybox.tar:demo busybox:demo >/tmp/pull.out 2>&1 || true
echo "# a fresh pull answered: $(cat /tmp/pull.out)"
cfsctl --json fsck > /tmp/fsck.out 2>&1 || true
echo "# fsck after the pull: $(cat /tmp/fsck.out)"
stop_cfsd

echo "# 2. an object replaced by a same-named file without fs-verity"
cfsctl_reset() { rm -rf "$repo"; start_cfsd --require-verity; cfsctl init >/dev/null; }
cfsctl_reset
cfsctl --progress none oci pull oci-archive:/fixtures/busybox.tar:demo busybox:demo >/dev/null
busybox_object=$(ls -S "$repo"/objects/??/* | head -n 1)
busybox_name=objects/${busybox_object#"$repo"/objects/}
stop_cfsd
cp "$busybox_object" /tmp/plain
rm -f "$busybox_object"
cp /tmp/plain "$busybox_object"
fsverity measure "$busybox_object" 2>/dev/null && fail "the copy has fs-verity"
remount
start_cfsd --require-verity
fsck_names "$busybox_name" "object without verity"
read_fails busybox:demo /bin/busybox
stop_cfsd

echo "# 3. an image swapped for another valid object"
cfsctl_reset
cfsctl --progress none oci pull oci-archive:/fixtures/busybox.tar:demo busybox:demo >/dev/null
cfsctl --progress none oci pull oci-archive:/fixtures/busybox.tar:demo-v2 busybox:v2 >/dev/null
v1=$(cfsctl oci compute-id busybox:demo)
v2=$(cfsctl oci compute-id busybox:v2)
stop_cfsd
ln -sfn "$(readlink "$repo/images/$v2")" "$repo/images/$v1"
start_cfsd --require-verity
fsck_names "$v1" "image swapped"
mkdir -p /mnt/image
if cfsctl oci mount busybox:demo /mnt/image 2>/tmp/mount.err; then
    motd=$(cat /mnt/image/etc/motd)
    umount /mnt/image
    fail "busybox:demo mounted from the swapped image and shows: $motd"
fi
ok "mounting the swapped image is refused: $(cat /tmp/mount.err)"
stop_cfsd

echo "# 4. a repository made insecure, opened later with --require-verity"
rm -rf "$repo"
mkdir -p /tmp/insecure
mount -t tmpfs tmpfs /tmp/insecure
sealed_repo=$repo
repo=/tmp/insecure/repo
start_cfsd
cfsctl init >/dev/null
expect "a repository on tmpfs is insecure" false "$(cfsctl --json info | jq -r .info.verity.enforced)"
cfsctl --progress none oci pull oci-archive:/fixtures/busybox.tar:demo busybox:demo >/dev/null
stop_cfsd
repo=$sealed_repo
cp -a /tmp/insecure/repo "$repo"
umount /tmp/insecure
if cfsd --repo "$repo" --address "$CFSD_ADDRESS" --require-verity >/run/refused.log 2>&1; then
    fail "cfsd --require-verity served the insecure repository"
fi
grep -q -- "--require-verity" /run/refused.log || fail "cfsd's refusal does not say why: $(cat /run/refused.log)"
ok "cfsd --require-verity refuses the insecure repository: $(cat /run/refused.log)"
