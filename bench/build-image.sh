#!/usr/bin/env bash
# Build the benchmark's real Debian image with mmdebstrap and umoci:
# bookworm minbase plus ca-certificates, curl, python3, openssl,
# iputils-ping and libcap2-bin as the base layer, and a small app layer,
# both gzip-compressed. Writes OUT/oci (an oci: layout, tag "v1") and
# OUT/image.tar (the same as an uncompressed oci-archive:).
#
#   bench/build-image.sh OUT [EXTRA_PACKAGES] [SUITES]
#
# EXTRA_PACKAGES (comma-separated) and SUITES (e.g. "bookworm
# bookworm-updates") let bench/delta.sh build the v2 image the same way.
set -euo pipefail
out=${1:?usage: build-image.sh OUT [EXTRA_PACKAGES] [SUITES]}
extra=${2:-}
suites=${3:-bookworm}
packages=ca-certificates,curl,python3,openssl,iputils-ping,libcap2-bin${extra:+,$extra}

. "$(dirname "$0")/scratch.sh"
bench_need mmdebstrap umoci skopeo
rm -rf "$out"
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The suites' mirror lines, so that -updates and -security can be added.
mirrors=()
for suite in $suites; do
    case $suite in
        *-security) mirrors+=("deb http://deb.debian.org/debian-security $suite main") ;;
        *) mirrors+=("deb http://deb.debian.org/debian $suite main") ;;
    esac
done

SOURCE_DATE_EPOCH=1700000000 mmdebstrap --quiet --variant=minbase --include="$packages" \
    --format=tar bookworm "$work/base.tar" "${mirrors[@]}"

mkdir -p "$work/app/opt/app"
printf '#!/usr/bin/python3\nprint("hello from the app layer")\n' >"$work/app/opt/app/hello.py"
chmod 755 "$work/app/opt/app/hello.py"
# Incompressible but the same in every build, so that v1 and v2 share the
# app layer (same bytes, same mtimes) and deltas reuse it.
head -c 4M /dev/zero | openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:cfsd-bench \
    >"$work/app/opt/app/data.bin"
tar -C "$work/app" --sort=name --mtime=@1700000000 --numeric-owner --owner=0 --group=0 \
    -cf "$work/app.tar" opt

umoci init --layout "$out/oci"
umoci new --image "$out/oci:v1"
umoci raw add-layer --image "$out/oci:v1" "$work/base.tar"
umoci raw add-layer --image "$out/oci:v1" "$work/app.tar"
umoci config --image "$out/oci:v1" --config.cmd /opt/app/hello.py
skopeo copy --quiet "oci:$out/oci:v1" "oci-archive:$out/image.tar:v1"
echo "built $out: $(du -sh "$out/oci" | cut -f1) layout, uncompressed rootfs $(du -sh "$work/base.tar" | cut -f1)"
