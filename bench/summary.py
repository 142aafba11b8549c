#!/usr/bin/env python3
"""One table of the ratios the issues set goals for, read from the tables
bench/run-all.sh had each benchmark write to OUT/<name>.md.

    bench/summary.py OUT

A row whose benchmark did not run, or whose figures are missing, is left
out; a goal is met when the figure is at most the goal.
"""

import re
import sys
from pathlib import Path


def cells(line):
    """The cells of a table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def rows(text):
    """The table rows of `text`, by their first cell: the other cells."""
    found = {}
    for line in text.splitlines():
        row = cells(line)
        if line.startswith("|") and len(row) > 1:
            found.setdefault(row[0], row[1:])
    return found


def number(cells, column):
    try:
        return float(cells[column])
    except (IndexError, TypeError, ValueError):
        return None


def sections(text):
    """The scale benchmark's rows, by case, then by operation."""
    cases, case = {}, None
    for line in text.splitlines():
        bold = re.match(r"\| \*\*(.+?)\*\* \|", line)
        if bold:
            case = bold.group(1)
            cases[case] = {}
        elif case and line.startswith("| "):
            row = cells(line)
            cases[case][row[0]] = row[1:]
    return cases


class Table:
    def __init__(self):
        self.lines = []

    def ratio(self, what, ours, anchor, goal=None, unit="x"):
        if ours is None or anchor in (None, 0):
            return
        self.figure(what, ours / anchor, goal, unit)

    def figure(self, what, value, goal=None, unit=""):
        if value is None:
            return
        met = "" if goal is None else ("yes" if value <= goal else "no")
        shown_goal = "" if goal is None else f"<= {goal:g}{unit}"
        self.lines.append(f"| {what} | {value:.2f}{unit} | {shown_goal} | {met} |")


def pull(t, text):
    r = rows(text)
    wall = lambda name: number(r.get(name), 0)
    t.ratio("pull oci-archive: wall, cfsd / upstream", wall("cfsd, oci-archive:"),
            wall("upstream cfsctl 0.9.4, oci-archive:"), 0.45)
    t.ratio("pull oci: wall, cfsd / upstream", wall("cfsd, oci:"), wall("upstream cfsctl 0.9.4, oci:"))


def delta(t, text):
    r = rows(text)
    apply, full = number(r.get("cfsd applies the delta"), 0), number(r.get("cfsd pulls v2 whole (oci-archive:)"), 0)
    t.ratio("delta apply wall / full pull of v2, cfsd", apply, full, 0.4)
    t.ratio("delta apply wall, cfsd / upstream", apply, number(r.get("upstream cfsctl 0.9.4 applies the delta"), 0))
    created = next((v for k, v in r.items() if k.startswith("whole cfsd delta archive")), None)
    t.figure("delta create v1 -> v2, wall s", number(created, 1), 10, " s")
    t.figure("delta v1 -> v2, MB", number(created, 0), 7.70, " MB")


def registry(t, text):
    r = rows(text)
    wall = lambda name: number(r.get(name), 0)
    ours = wall("cfsd, docker://")
    t.ratio("registry pull wall, cfsd / upstream (skopeo)", ours, wall("upstream cfsctl 0.9.4, docker:// (skopeo)"), 0.4)
    t.ratio("registry pull wall, docker:// / oci-archive:, cfsd", ours, wall("cfsd, oci-archive: (reference)"), 1.2)
    t.ratio("v2 on v1 wall, the delta it finds / --no-delta", wall("cfsd, docker:// with the delta it finds"),
            wall("cfsd, docker:// --no-delta"))
    t.ratio("v2 zstd:chunked on v1 wall, in part / --no-partial", wall("cfsd, docker:// in part"),
            wall("cfsd, docker:// --no-partial"))


def scale(t, text):
    cases = sections(text)
    col = lambda case, op, c: number(cases.get(case, {}).get(op), c)
    for case in cases:
        if case == "fleet":
            continue
        goal = 0.6 if case == "big" else None
        t.ratio(f"scale {case}: pull wall, cfsd / upstream", col(case, "cfsd: pull v1", 0),
                col(case, "upstream: pull v1", 0), goal)
        for op in ("fsck", "delta apply", "gc with v1 removed"):
            t.ratio(f"scale {case}: {op} wall, cfsd / upstream", col(case, f"cfsd: {op}", 0),
                    col(case, f"upstream: {op}", 0))
        t.figure(f"scale {case}: pull peak RSS, cfsd", col(case, "cfsd: pull v1", 2),
                 100 if case == "files-100000" else None, " MiB")
    small = col("files-10000", "cfsd: pull v1", 2)
    big = col("big", "cfsd: pull v1", 2)
    if small is not None and big is not None:
        t.figure("scale: pull peak RSS, big file - files-10000", big - small, 64, " MiB")
    for n in ("30000", "100000"):
        per = lambda case: (col(case, "cfsd: pull v1", 0) or 0) / int(case.split("-")[1])
        if col(f"files-{n}", "cfsd: pull v1", 0) and col("files-10000", "cfsd: pull v1", 0):
            t.figure(f"scale: pull wall per file, {n} / 10000 files", per(f"files-{n}") / per("files-10000"))
    read = col("fleet", "read every object once (cold): find objects -type f -exec cat", 0)
    for op in ("fsck", "gc with img0 removed"):
        t.ratio(f"scale fleet: {op} wall / reading every object once, cfsd", col("fleet", f"cfsd: {op}", 0), read, 2)


def main():
    out = Path(sys.argv[1])
    t = Table()
    for name, read in (("pull", pull), ("delta", delta), ("registry", registry), ("scale", scale)):
        path = out / f"{name}.md"
        if path.exists():
            read(t, path.read_text())
    print("| figure | measured | goal | met |")
    print("|---|---|---|---|")
    print("\n".join(t.lines))


if __name__ == "__main__":
    main()
