#!/usr/bin/env python3
"""Where a layer import's CPU went, by thread, from `perf script` output.

    perf record -F 999 --call-graph dwarf,32768 -o P.data -- cfsctl ... oci pull ...
    perf script -i P.data > P.txt
    bench/perf-threads.py P.txt [Q.txt]      (two profiles: side by side)

Every cfsd thread is called tokio-rt-worker, so a thread's role is read
from its stacks: the tar-diff applier or decompressor (the producer), the
splitter (the parser, which also computes the diff_id), the object writers
(fs-verity digests and writes), and the rest (runtime, manifest, source
image load, EROFS build, sync). Blocking threads are reused, so a thread
is counted under the role most of its resolved stacks show. libcrypto has
no unwind tables here: its samples are counted by their thread.
"""
import collections
import sys

ROLES = [
    ("tardiff::apply", "producer: tar-diff applier"),
    ("decompress_into", "producer: decompressor"),
    ("split::split", "parser: splitter and diff_id sha256"),
    ("objects::work", "object writers: fs-verity digest and write"),
]
REST = "runtime, source image load, EROFS build, sync"


def details(role, stack, leaf):
    """Finer buckets inside a role, as (name, matches)."""
    crypto = "libcrypto" in leaf
    yield "  parser: sha256 (libcrypto)", role.startswith("parser") and crypto
    yield "  writers: sha512 (libcrypto)", role.startswith("object") and crypto
    if role.startswith("producer"):
        yield "  producer: pread of source files", "filemap_read" in stack
        yield "  producer: ZSTD_createDCtx", "ZSTD_createDCtx" in stack
        yield "  producer: zstd decoding", "ZSTD_decompress" in stack


def load(path):
    samples = [s for s in open(path).read().split("\n\n") if s.strip()]
    votes = collections.defaultdict(collections.Counter)
    parsed = []
    for sample in samples:
        lines = sample.strip().split("\n")
        tid, stack = lines[0].split()[1], "\n".join(lines[1:])
        for key, role in ROLES:
            if key in stack:
                votes[tid][role] += 1
        parsed.append((tid, stack, lines[1] if len(lines) > 1 else ""))
    role_of = {tid: v.most_common(1)[0][0] for tid, v in votes.items()}
    counts = collections.Counter()
    for tid, stack, leaf in parsed:
        role = role_of.get(tid, REST)
        counts[role] += 1
        for name, hit in details(role, stack, leaf):
            counts[name] += hit
    counts["total samples"] = len(parsed)
    return counts


def main():
    profiles = [load(p) for p in sys.argv[1:]]
    seen = {k for p in profiles for k in p}
    roles = [role for _, role in ROLES] + [REST]
    rest = sorted(seen - set(roles) - {"total samples"})
    names = [r for r in roles if r in seen] + rest + ["total samples"]
    print("| thread | " + " | ".join(sys.argv[1:]) + " |")
    print("|---" * (len(profiles) + 1) + "|")
    for name in names:
        print(f"| {name} | " + " | ".join(str(p[name]) for p in profiles) + " |")


if __name__ == "__main__":
    main()
