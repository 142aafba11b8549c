#!/usr/bin/env python3
"""A bootc-style updater: install or update an OS image through cfsd.

    updater.py [--address unix:/run/cfsd/cfsd.sock] [--tag os] SOURCE

SOURCE is an OCI image or an oci-delta artifact, as an archive
("oci-archive:/path/to/image.tar") or a layout directory
("oci:/path/to/layout"). The updater

1. asks the daemon what the tag names now (io.cfsd.Oci.Inspect);
2. pulls SOURCE (io.cfsd.Oci.Pull, with "more" for progress); when SOURCE
   is a delta, cfsd rebuilds the new image from the one it holds;
3. keeps the old image as TAG-previous, so that a rollback is one
   io.cfsd.Oci.Tag away, while the pull moves TAG to the new one;
4. reports what changed: image ids, bytes written, whether a delta was used.

Errors come back typed (io.cfsd.Oci.DeltaSourceMissing, PermissionDenied,
NoSpace, ...); the updater turns the ones a user can act on into advice
and exits 1, leaving the tag as it was.

Not yet: cfsd has no staged pulls. Once it does, step 2 will stage the new
image and step 3 commit it, so that an interrupted update leaves nothing
half-published; today a pull publishes its image when it finishes, and
the tag moves when the pull succeeds.

It uses the reference Python varlink client (`pip install varlink`). Pull
reads its source from a file descriptor sent with the call; the client
library does not pass descriptors, so this program hands it a socket that
does (FdPassingSocket below).
"""

import argparse
import os
import socket
import sys

import varlink

OCI = "io.cfsd.Oci"
DEFAULT_ADDRESS = "unix:/run/cfsd/cfsd.sock"


class FdPassingSocket:
    """A Unix socket that sends the descriptors given to pass_fds() along
    with the next message; the varlink client sees an ordinary socket."""

    def __init__(self, sock):
        self._sock = sock
        self._fds = []

    def pass_fds(self, fds):
        self._fds = list(fds)

    def sendall(self, data):
        fds, self._fds = self._fds, []
        if fds:
            sent = socket.send_fds(self._sock, [data], fds)
            data = data[sent:]
        if data:
            self._sock.sendall(data)

    def recv(self, size):
        return self._sock.recv(size)

    def shutdown(self, how):
        self._sock.shutdown(how)

    def close(self):
        self._sock.close()


def connect(address):
    """The io.cfsd.Oci interface of the daemon at address, on a connection
    that can pass file descriptors."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address.removeprefix("unix:"))
    wire = FdPassingSocket(sock)
    client = varlink.Client(address=address)
    return client.open(OCI, connection=wire), wire


def open_source(source):
    """The transport and an open descriptor of SOURCE, opened with this
    user's permissions: cfsd never opens a path a client names."""
    transport, sep, path = source.partition(":")
    if not sep or transport not in ("oci", "oci-archive"):
        sys.exit(f"updater: {source!r} is not oci:DIR or oci-archive:FILE")
    flags = os.O_RDONLY | (os.O_DIRECTORY if transport == "oci" else 0)
    return transport, os.open(path, flags)


def current(oci, tag):
    """(manifest digest, image id) of the image tag names, or None."""
    try:
        image = oci.Inspect(image=tag)
    except varlink.VarlinkError as e:
        if e.error() == f"{OCI}.ImageNotFound":
            return None
        raise
    return image["manifestDigest"], image.get("imageId")


def show_progress(progress):
    done, total = progress["done"], progress["total"]
    percent = 100 * done // total if total else 100
    print(f"  {progress['layer'][:19]}  {progress['stage']:<9} {percent:3}%", flush=True)


def pull(oci, wire, source, tag):
    """Pull source under tag, printing progress; the PullResult."""
    transport, fd = open_source(source)
    try:
        wire.pass_fds([fd])
        for reply in oci.Pull(transport=transport, tag=tag, _more=True):
            if reply.get("progress"):
                show_progress(reply["progress"])
            if reply.get("result"):
                return reply["result"]
    finally:
        os.close(fd)
    raise RuntimeError("the daemon ended the pull without a result")


ADVICE = {
    "DeltaSourceMissing": "the delta applies to an image this machine does not have; pull the full image instead",
    "PermissionDenied": "updating needs root or the daemon's admin group",
    "NoSpace": "the repository's filesystem is full; free space (cfsctl gc) and retry",
    "InvalidSource": "the source is not an OCI image layout",
}


def update(oci, wire, source, tag):
    before = current(oci, tag)
    print(f"updating {tag} from {source}")
    if before:
        oci.Tag(image=before[0], tag=tag + "-previous")
    # A pull that fails publishes nothing: the tag keeps the old image.
    result = pull(oci, wire, source, tag)
    report(tag, before, result)


def report(tag, before, result):
    old_id = before[1] if before else None
    changed = old_id != result["imageId"]
    delta = result.get("delta")
    print(f"tag: {tag}")
    print(f"previous image: {old_id or 'none'}")
    print(f"image: {result['imageId']}")
    print(f"manifest: {result['manifestDigest']}")
    print(f"changed: {'yes' if changed else 'no'}")
    print(f"layers: {result['layers']} ({result['layersPresent']} already present)")
    print(f"bytes new: {result['bytesNew']}")
    print(f"delta: {delta['manifestDigest'] if delta else 'none'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=os.environ.get("CFSD_ADDRESS", DEFAULT_ADDRESS))
    parser.add_argument("--tag", default="os")
    parser.add_argument("source")
    args = parser.parse_args()
    oci, wire = connect(args.address)
    try:
        update(oci, wire, args.source, args.tag)
    except varlink.VarlinkError as e:
        name = e.error().rpartition(".")[2]
        print(f"updater: {e.error()} {e.parameters()}", file=sys.stderr)
        if name in ADVICE:
            print(f"hint: {ADVICE[name]}", file=sys.stderr)
        return 1
    finally:
        oci.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
