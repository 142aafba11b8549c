#!/usr/bin/env python3
"""Deterministic OCI archives for the scale benchmark (bench/scale.sh).

    bench/scale-image.py files N OUT.tar      one layer of N files of 6 KiB
    bench/scale-image.py big SIZE_MIB OUT.tar one layer holding one file
    bench/scale-image.py layers N OUT.tar     N layers of 200 files each
    bench/scale-image.py fleet N OUT.tar      N images sharing a base layer
    bench/scale-image.py lines SIZE OUT.tar   one layer holding one text file
                                              of SIZE bytes (image v1 only)

Each archive's images are tagged v1 and v2 (fleet: img0 .. img{N-1}):
v2 is v1 with one file in a hundred rewritten (files, layers) or four
16 MiB stretches rewritten (big), so that a v1 -> v2 delta has work of a
realistic share to do. The lines image is the VM test's: a file over
what the splitter holds in memory that still compresses well. The same arguments always give the same bytes:
contents come from a seeded generator, and every timestamp and owner is
fixed. Layers are gzip at level 1, which keeps making the 4 GiB fixture
to about a minute; how fast a layer is inflated does not depend on it
much.
"""

import gzip
import hashlib
import io
import json
import os
import random
import sys
import tarfile
import tempfile

MTIME = 1700000000
SMALL = 6 * 1024
STRETCH = 16 << 20


def content(seed, size):
    """`size` bytes, half random and half a repeated line, as real files
    compress about two to one."""
    rng = random.Random(seed)
    half = size // 2
    line = b"composefs scale fixture %d\n" % seed
    return rng.randbytes(half) + (line * (size // len(line) + 1))[: size - half]


class Stream(io.RawIOBase):
    """A file of `size` random bytes, made as it is read, with `patches`
    (offset -> seed) of STRETCH bytes each rewritten."""

    def __init__(self, seed, size, patches):
        self.rng, self.size, self.pos, self.patches = random.Random(seed), size, 0, patches

    def readable(self):
        return True

    def readinto(self, buf):
        n = min(len(buf), 1 << 20, self.size - self.pos)
        if n <= 0:
            return 0
        data = bytearray(self.rng.randbytes(n))
        for offset, seed in self.patches.items():
            lo, hi = max(offset, self.pos), min(offset + STRETCH, self.pos + n)
            if lo < hi:
                patch = random.Random(seed * 7919 + lo).randbytes(hi - lo)
                data[lo - self.pos : hi - self.pos] = patch
        buf[:n] = data
        self.pos += n
        return n


def entry(name, size, kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.type = size, MTIME, kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.uname = info.gname = "root"
    return info


class Hashing:
    """A writer that hashes what passes through it."""

    def __init__(self, out):
        self.out, self.sha = out, hashlib.sha256()

    def write(self, data):
        self.sha.update(data)
        return self.out.write(data)

    def flush(self):
        self.out.flush()


def layer(work, fill):
    """A gzip layer whose tar `fill(tar)` writes: (path, digest, size,
    diff_id)."""
    fd, path = tempfile.mkstemp(dir=work)
    with os.fdopen(fd, "wb") as raw:
        blob = Hashing(raw)
        with gzip.GzipFile(fileobj=blob, mode="wb", compresslevel=1, mtime=0) as gz:
            tar_out = Hashing(gz)
            with tarfile.open(fileobj=tar_out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                fill(tar)
    return path, "sha256:" + blob.sha.hexdigest(), os.path.getsize(path), "sha256:" + tar_out.sha.hexdigest()


def lines_file(size):
    """A fill of one file of `size` bytes of numbered lines."""

    def fill(tar):
        tar.addfile(entry("usr", 0, tarfile.DIRTYPE))
        data = b"".join(b"line %010d\n" % i for i in range(size // 16 + 1))[:size]
        tar.addfile(entry("usr/lines.txt", size), io.BytesIO(data))

    return fill


def small_files(count, first, changed):
    """A fill of `count` files of SMALL bytes, numbered from `first`, in
    directories of a thousand; the file numbers in `changed` get other
    bytes."""

    def fill(tar):
        # Upstream cfsctl looks into /usr of every image it pulls.
        tar.addfile(entry("usr", 0, tarfile.DIRTYPE))
        for d in range(first // 1000, (first + count + 999) // 1000):
            tar.addfile(entry("d%04d" % d, 0, tarfile.DIRTYPE))
        for i in range(first, first + count):
            data = content(i * 2 + (1 if i in changed else 0), SMALL)
            tar.addfile(entry("d%04d/f%06d" % (i // 1000, i), len(data)), io.BytesIO(data))

    return fill


def big_file(size, patches):
    def fill(tar):
        tar.addfile(entry("usr", 0, tarfile.DIRTYPE))
        tar.addfile(entry("big.bin", size), io.BufferedReader(Stream(1, size, patches)))

    return fill


def main():
    kind, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    work = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(out)))
    blobs = {}

    def add(fill):
        path, digest, size, diff_id = layer(work, fill)
        final = os.path.join(work, digest[7:])
        os.replace(path, final)
        blobs[digest] = final
        return {"digest": digest, "size": size, "diff_id": diff_id}

    images = {}
    if kind == "files":
        changed = set(range(0, count, 100))
        images["v1"] = [add(small_files(count, 0, set()))]
        images["v2"] = [add(small_files(count, 0, changed))]
    elif kind == "big":
        size = count << 20
        patches = {size * k // 5: k for k in range(1, 5)}
        images["v1"] = [add(big_file(size, {}))]
        images["v2"] = [add(big_file(size, patches))]
    elif kind == "layers":
        v1 = [add(small_files(200, n * 200, set())) for n in range(count)]
        images["v1"] = v1
        images["v2"] = v1[:-1] + [add(small_files(200, (count - 1) * 200, set(range(0, 200 * count, 100))))]
    elif kind == "fleet":
        base = add(small_files(10000, 0, set()))
        for n in range(count):
            images["img%d" % n] = [base, add(small_files(1000, 100000 + n * 1000, set()))]
    elif kind == "lines":
        images["v1"] = [add(lines_file(count))]
    else:
        sys.exit("kind must be files, big, layers, fleet or lines")
    write_archive(out, work, blobs, images)


def write_archive(out, work, blobs, images):
    def put(doc):
        data = json.dumps(doc, sort_keys=True).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = os.path.join(work, digest[7:])
        with open(path, "wb") as f:
            f.write(data)
        blobs[digest] = path
        return {"digest": digest, "size": len(data)}

    manifests = []
    for ref, layers in images.items():
        config = put({
            "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in layers]},
        })
        manifest = put({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": dict(config, mediaType="application/vnd.oci.image.config.v1+json"),
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": l["digest"], "size": l["size"]} for l in layers],
        })
        manifests.append(dict(manifest, mediaType="application/vnd.oci.image.manifest.v1+json",
                              annotations={"org.opencontainers.image.ref.name": ref}))
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": manifests}
    with tarfile.open(out + ".part", "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", json.dumps(index, sort_keys=True).encode())):
            tar.addfile(entry(name, len(data)), io.BytesIO(data))
        for name in ("blobs", "blobs/sha256"):
            tar.addfile(entry(name, 0, tarfile.DIRTYPE))
        for digest in sorted(blobs):
            path = blobs.pop(digest)
            with open(path, "rb") as f:
                tar.addfile(entry("blobs/sha256/" + digest[7:], os.path.getsize(path)), f)
            os.unlink(path)
    os.rmdir(work)
    os.replace(out + ".part", out)


if __name__ == "__main__":
    main()
