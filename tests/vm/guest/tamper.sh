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
# A pull of an image that is already present reads none of its objects
# (an update to an image already held costs nothing), so it changes
# nothing here: the damage stays, answered by EIO, and fsck still names it.
present=$(cfsctl --json --progress none oci pull oci-archive:/fixtures/busybox.tar:demo busybox:demo)
expect "a fresh pull of the present image answers alreadyPresent" true "$(echo "$present" | jq -r .result.alreadyPresent)"
fsck_names "$busybox_name" "after a fresh pull"
# The repair: remove what refers to the damaged object, let GC remove it,
# and pull again, which writes it anew.
cfsctl oci rm busybox:v2 >/dev/null
cfsctl oci rm busybox:demo >/dev/null
cfsctl gc >/dev/null
[ ! -e "$busybox_object" ] || fail "gc kept the damaged object"
cfsctl --progress none oci pull oci-archive:/fixtures/busybox.tar:demo busybox:demo >/dev/null
expect "after rm, gc and a pull, fsck is clean" true "$(cfsctl --json fsck | jq -r .ok)"
mkdir -p /mnt/image
cfsctl oci mount busybox:demo /mnt/image >/dev/null || fail "mount the repaired image"
cmp "/mnt/image/bin/busybox" /bin/busybox || fail "the repaired busybox differs from Debian's"
ok "the repaired image serves Debian's busybox again"
umount /mnt/image
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
# v2 holds the same busybox: its import finds the object unsealed and
# refuses, rather than trusting it by its name.
if cfsctl --progress none oci pull oci-archive:/fixtures/busybox.tar:demo-v2 busybox:v2 2>/tmp/pull.err; then
    fail "a pull trusted the unsealed object"
fi
grep -q "not sealed with its digest" /tmp/pull.err || fail "the refusal does not say why: $(cat /tmp/pull.err)"
ok "a pull that needs the unsealed object is refused: $(cat /tmp/pull.err)"
expect "nothing was tagged" "busybox:demo" "$(cfsctl --json oci images | jq -r '[.images[].name] | join(" ")')"
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
