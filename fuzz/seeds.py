#!/usr/bin/env python3
"""Write the seed corpora of the cfsd fuzz targets into DIR/<target>/.

Seeds are generated rather than committed: small real tars in each tar
format, OCI and Docker indexes, manifests, configs and an oci-delta
artifact, and tar-diff op streams. Usage: seeds.py DIR
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DELTA = "application/vnd.io.github.containers.oci-delta.v1"


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(members, fmt=tarfile.GNU_FORMAT):
    """members: (name, kind, data-or-target, pax-headers) tuples."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, kind, payload, pax in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            info.pax_headers = pax or {}
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                         "chr": tarfile.CHRTYPE}[kind]
            if kind == "dir":
                info.mode = 0o755
            if kind in ("symlink", "hardlink"):
                info.linkname = payload
            tar.addfile(info)
    return out.getvalue()


def layer_tars():
    long_name = "usr/share/" + "d" * 120 + "/file"
    cap = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
    return {
        "small": [("etc/", "dir", None, None), ("etc/conf", "file", b"key=1\n", None)],
        "large-object": [("usr/", "dir", None, None), ("usr/big", "file", bytes(range(256)) * 20, None)],
        "links": [("a", "file", b"x" * 100, None), ("b", "hardlink", "a", None),
                  ("c", "symlink", "a", None), ("fifo", "fifo", None, None),
                  ("null", "chr", None, None)],
        "long-name": [(long_name, "file", b"long", None)],
        "whiteout": [("etc/.wh.conf", "file", b"", None), ("usr/.wh..wh..opq", "file", b"", None)],
        "xattr": [("bin/ping", "file", b"\x7fELF" + bytes(60), cap)],
        "empty": [],
    }


def write(directory, name, data):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def layer_import(out):
    for name, members in layer_tars().items():
        for fmt_name, fmt in (("gnu", tarfile.GNU_FORMAT), ("pax", tarfile.PAX_FORMAT),
                              ("ustar", tarfile.USTAR_FORMAT)):
            try:
                tar = tar_bytes(members, fmt)
            except ValueError:  # ustar cannot hold long names or xattrs
                continue
            for mode in (0, 1, 2):
                write(out, f"{name}-{fmt_name}-{mode}", bytes([mode]) + tar)


def chunked(out):
    """Writer seeds (mode 0): the layer tars. Reader seeds (mode 1): the
    same tars as current-variant zstd:chunked blobs, made with the zstd
    tool when it is installed: a frame per run of headers and per file
    content, then the TOC, the tar-split and the footer."""
    for name, members in layer_tars().items():
        tar = tar_bytes(members, tarfile.PAX_FORMAT)
        write(out, f"{name}-write", bytes([0]) + tar)
        try:
            blob = chunked_blob(tar)
        except (OSError, subprocess.CalledProcessError):
            continue
        write(out, f"{name}-read", bytes([1]) + blob)


def chunked_blob(tar):
    import base64
    import struct
    blob, entries, split, between = bytearray(), [], [], bytearray()
    def frame(data):
        blob.extend(zstd_compress(bytes(data), None))
    def segment(data):
        if data:
            split.append({"type": 2, "payload": base64.b64encode(bytes(data)).decode()})
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        members = t.getmembers()
    # Walk the tar by its members' offsets.
    at = 0
    for m in members:
        between.extend(tar[at:m.offset_data])
        segment(tar[at:m.offset_data])
        at = m.offset_data
        kind = {tarfile.REGTYPE: "reg", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
                tarfile.LNKTYPE: "hardlink", tarfile.FIFOTYPE: "fifo",
                tarfile.CHRTYPE: "char"}.get(m.type, "reg")
        entry = {"type": kind, "name": m.name, "mode": m.mode}
        if m.linkname:
            entry["linkName"] = m.linkname
        line = {"type": 1, "name": m.name, "payload": None}
        if m.isreg() and m.size > 0:
            content = tar[at:at + m.size]
            frame(between)
            between = bytearray()
            entry.update(size=m.size, digest="sha256:" + hashlib.sha256(content).hexdigest(),
                         offset=len(blob))
            frame(content)
            entry["endOffset"] = len(blob)
            line.update(size=m.size)
            at += m.size
        entries.append(entry)
        split.append(line)
    between.extend(tar[at:])
    segment(tar[at:])
    frame(between)
    lines = "".join(json.dumps(dict(l, position=i)) + "\n" for i, l in enumerate(split))
    split_frame = zstd_compress(lines.encode(), None)
    toc = json.dumps({"version": 1, "entries": entries,
                      "tarSplitDigest": "sha256:" + hashlib.sha256(split_frame).hexdigest()})
    toc_frame = zstd_compress(toc.encode(), None)
    positions = []
    for content, size in ((toc_frame, len(toc)), (split_frame, len(lines))):
        blob.extend(struct.pack("<4sI", b"\x50\x2a\x4d\x18", len(content)))
        positions.append((len(blob), len(content), size))
        blob.extend(content)
    (toc_at, toc_len, toc_size), (split_at, split_len, split_size) = positions
    footer = struct.pack("<QQQQQQQ8s", toc_at, toc_len, toc_size, 1, split_at, split_len,
                         split_size, b"GNUlInUx")
    blob.extend(struct.pack("<4sI", b"\x50\x2a\x4d\x18", len(footer)) + footer)
    return bytes(blob)


def archive_index(out):
    layout = [("oci-layout", "file", b'{"imageLayoutVersion":"1.0.0"}', None),
              ("./index.json", "file", b'{"manifests":[]}', None),
              ("blobs/", "dir", None, None),
              ("blobs/sha256/" + "a" * 64, "file", bytes(700), None),
              ("/blobs/sha256/" + "b" * 64, "file", b"", None),
              ("index.json", "file", b"{}", None)]
    for fmt_name, fmt in (("gnu", tarfile.GNU_FORMAT), ("pax", tarfile.PAX_FORMAT),
                          ("ustar", tarfile.USTAR_FORMAT)):
        write(out, f"layout-{fmt_name}", tar_bytes(layout, fmt))
    for name, members in layer_tars().items():
        write(out, f"layer-{name}", tar_bytes(members, tarfile.PAX_FORMAT))


def docs(*documents):
    """NUL-separated documents; @N and #N name document N's digest and size."""
    return b"\0".join(json.dumps(d, separators=(",", ":")).encode()
                      .replace(b'"SIZE', b"").replace(b'SIZE"', b"")
                      for d in documents)


def size(n):
    # A JSON number placeholder: "SIZE#1SIZE" becomes #1 after dumping.
    return f"SIZE#{n}SIZE"


def config(n_layers):
    return {"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(bytes([i])) for i in range(n_layers)]}}


def manifest(media_type, config_type, layer_types):
    m = {"schemaVersion": 2,
         "config": {"mediaType": config_type, "digest": "@2", "size": size(2)},
         "layers": [{"mediaType": t, "digest": sha(b"layer%d" % i), "size": 10 + i}
                    for i, t in enumerate(layer_types)]}
    if media_type:
        m["mediaType"] = media_type
    return m


def manifests(out):
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "@1", "size": size(1),
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    layers = [OCI_LAYER, OCI_LAYER + "+gzip", OCI_LAYER + "+zstd"]
    write(out, "oci", docs(index, manifest(OCI_MANIFEST, OCI_CONFIG, layers), config(3)))
    write(out, "oci-untyped", docs(index, manifest(None, OCI_CONFIG, [OCI_LAYER]), config(1)))
    docker_index = {"schemaVersion": 2, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": "@1", "size": size(1)}]}
    write(out, "docker", docs(docker_index,
                              manifest(DOCKER_MANIFEST, DOCKER_CONFIG, [DOCKER_LAYER] * 2),
                              config(2)))
    platforms = lambda kind: {"schemaVersion": 2, "mediaType": kind, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "@3", "size": size(3),
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": OCI_MANIFEST, "digest": "@2", "size": size(2),
         "platform": {"os": "linux", "architecture": "amd64"}}]}
    nested = {"schemaVersion": 2, "manifests": [{"mediaType": OCI_INDEX, "digest": "@1", "size": size(1)}]}
    m = manifest(OCI_MANIFEST, OCI_CONFIG, [OCI_LAYER])
    m["config"] = {"mediaType": OCI_CONFIG, "digest": "@4", "size": size(4)}
    for name, kind in (("nested-oci", OCI_INDEX), ("nested-docker", DOCKER_LIST)):
        write(out, name, docs(nested, platforms(kind), m, m, config(1)))
    write(out, "delta", docs(index, delta_manifest(), target_manifest(), config(1), {"tardiff": 1}))


def delta_manifest():
    content = "io.github.containers.delta.content"
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": DELTA,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": sha(b"{}"), "size": 2},
            "annotations": {"io.github.containers.delta.source-config": sha(b"source config")},
            "layers": [
                {"mediaType": OCI_MANIFEST, "digest": "@2", "size": size(2),
                 "annotations": {content: "image-manifest"}},
                {"mediaType": OCI_CONFIG, "digest": "@3", "size": size(3),
                 "annotations": {content: "image-config"}},
                {"mediaType": "application/vnd.tar-diff", "digest": "@4", "size": size(4),
                 "annotations": {content: "image-layer",
                                 "io.github.containers.delta.to": sha(b"layer0")}}]}


def target_manifest():
    m = manifest(OCI_MANIFEST, OCI_CONFIG, [OCI_LAYER + "+gzip"])
    m["config"] = {"mediaType": OCI_CONFIG, "digest": "@3", "size": size(3)}
    return m


def uvarint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ops(*triples):
    return b"".join(bytes([op]) + uvarint(n) + data for op, n, data in triples)


def tardiff(out):
    def open_(path):
        return (1, len(path), path)
    streams = {
        "copy": ops(open_(b"usr/bin/tool"), (2, 4, b""), (0, 3, b"abc"), (4, 10, b""), (2, 6, b"")),
        "add": ops(open_(b"/etc/conf"), (3, 8, bytes(8)), (0, 1, b"\n")),
        "big": ops(open_(b"./usr/lib/../lib/big"), (4, 1000, b""), (2, 3000, b"")),
        "paths": ops(open_(b"a/b/c"), (2, 1, b""), open_(b"empty"), (2, 0, b"")),
        "empty": b"",
    }
    for name, stream in streams.items():
        for header in (0, 1):
            write(out, f"{name}-v{header + 1}", bytes([header]) + stream)
            write(out, f"{name}-v{header + 1}-raw",
                  bytes([header | 2]) + zstd_compress(stream, None))
    big = bytes((i * 7 % 251) for i in range(4096))
    frame = zstd_compress(big[:2000] + b"changed" + big[2000:], big)
    if frame is not None:
        write(out, "zstd-dict", bytes([1]) + ops(open_(b"usr/lib/big"), (5, len(frame), frame)))


def zstd_compress(data, patch_from):
    """zstd-compress with the zstd tool, if it is installed."""
    if shutil.which("zstd") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, "target")
        with open(target, "wb") as f:
            f.write(data)
        args = ["zstd", "-q", "-c", "--no-check", target]
        if patch_from is not None:
            source = os.path.join(tmp, "source")
            with open(source, "wb") as f:
                f.write(patch_from)
            args += ["--patch-from", source]
        return subprocess.run(args, check=True, capture_output=True).stdout


def main():
    root = sys.argv[1]
    layer_import(os.path.join(root, "layer_import"))
    archive_index(os.path.join(root, "archive_index"))
    manifests(os.path.join(root, "manifest"))
    tardiff(os.path.join(root, "tardiff"))
    chunked(os.path.join(root, "chunked"))


if __name__ == "__main__":
    main()
