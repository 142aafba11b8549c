# fs-verity enforced end to end: a repository on a filesystem with verity,
# opened with --require-verity, pulls a real image and applies a delta;
# every object is sealed with the digest its name claims, the mount checks
# digests, and fsck is clean.
. /scenarios/lib.sh
expected=$(cat /fixtures/ids)

start_cfsd --require-verity
cfsctl init >/dev/null
enforced=$(cfsctl --json info | jq -r .info.verity.enforced)
expect "Info says fs-verity is enforced" true "$enforced"

cfsctl --progress none oci pull oci-archive:/fixtures/busybox.tar:demo busybox:demo >/dev/null
ok "pulled busybox:demo"
cfsctl --progress none oci pull oci-archive:/fixtures/delta.tar busybox:v2 >/dev/null
ok "applied the v1->v2 delta"
for tag in demo v2; do
    id=$(cfsctl oci compute-id "busybox:$tag")
    want=$(echo "$expected" | sed -n "s/^$tag //p")
    expect "busybox:$tag has the image id of the host's pull" "$want" "$id"
done
# A file too large to hold in memory: written beside the parsing, then
# sealed, its digest the kernel's measurement.
cfsctl --progress none oci pull oci-archive:/fixtures/lines.tar:v1 lines >/dev/null
ok "pulled an image holding a 64 MiB file"
expect "lines has the image id of the host's pull" \
    "$(echo "$expected" | sed -n "s/^lines //p")" "$(cfsctl oci compute-id lines)"
check_objects_sealed

mkdir -p /mnt/v2
cfsctl oci mount busybox:v2 /mnt/v2 || fail "mount busybox:v2"
options=$(awk '$5 == "/mnt/v2" { print $0 }' /proc/self/mountinfo)
case "$options" in
*verity=require*) ok "the overlay mount checks digests (verity=require)" ;;
*) fail "the overlay mount does not require verity: $options" ;;
esac
expect "a file read through the mount" "hello from version 2, rebuilt from a delta" "$(cat /mnt/v2/etc/motd)"
umount /mnt/v2
mkdir -p /mnt/lines
cfsctl oci mount lines /mnt/lines || fail "mount lines"
expect "the large file, read through the mount, has the host's sha256" \
    "$(echo "$expected" | sed -n "s/^lines-sha256 //p")" \
    "$(sha256sum /mnt/lines/usr/lines.txt | cut -d' ' -f1)"
umount /mnt/lines

fsck=$(cfsctl --json fsck)
expect "fsck is clean" true "$(echo "$fsck" | jq -r .ok)"
expect "fsck checked the objects" true "$(echo "$fsck" | jq '.objectsChecked > 0')"
stop_cfsd
