"""Sandbox throughput: executions per second (and per core) of a trivial program at each isolation
level, against a bare ``subprocess.run([python, -c, code])`` with no isolation at all (what the usual
evaluation harnesses do), the overhead of bwrap over the plain subprocess level, and the cost of the
per-program cgroup (bwrap with it against bwrap without it: the cgroups made unavailable).

    python benchmarks/sandbox.py [--programs 200] [--workers 1 2]

Prints one table: what, value, baseline, ratio, wall seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from evolvelm import cgroup
from evolvelm.sandbox import Sandbox, SandboxUnavailable, interpreter

CODE = "print(sum(range(100)))"


def bare(n: int, workers: int) -> float:
    python = interpreter()
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: subprocess.run([python, "-I", "-c", CODE], capture_output=True),
                      range(n)))
    return time.perf_counter() - t


def boxed(level: str, n: int, workers: int, cgroups: bool = True) -> float:
    available = cgroup.available
    if not cgroups:
        cgroup.available = lambda: (None, "turned off by the benchmark")
    try:
        box = Sandbox(level, workers=workers)
    finally:
        cgroup.available = available
    if cgroups and not box.cgroups:
        raise SandboxUnavailable(f"no cgroups here: {box.no_cgroups}")
    t = time.perf_counter()
    results = box.map([CODE] * n, ["4950"] * n)
    wall = time.perf_counter() - t
    bad = [r for r in results if r.verdict != "pass"]
    if bad:
        raise SystemExit(f"{level}: {len(bad)} of {n} trivial programs did not pass: {bad[0]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--programs", type=int, default=200)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, min(2, os.cpu_count() or 1)])
    a = ap.parse_args()
    rows = []
    for w in dict.fromkeys(a.workers):
        base = bare(a.programs, w)
        rows.append((f"bare subprocess, {w} worker(s): exec/s/core", a.programs / base / w, None, base))
        walls = {}
        for level in ("subprocess", "bwrap"):
            try:
                walls[level] = boxed(level, a.programs, w)
            except SandboxUnavailable as e:
                print(f"[{level} unavailable: {e}]")
                continue
            rate = a.programs / walls[level] / w
            rows.append((f"{level} level, {w} worker(s): exec/s/core", rate, a.programs / base / w,
                         walls[level]))
        if len(walls) == 2:
            rows.append((f"bwrap vs subprocess level, {w} worker(s): wall for all programs", walls["bwrap"],
                         walls["subprocess"], walls["bwrap"]))
        if "bwrap" in walls:
            plain = boxed("bwrap", a.programs, w, cgroups=False)
            rows.append((f"bwrap without cgroups, {w} worker(s): exec/s/core", a.programs / plain / w, None, plain))
            rows.append((f"bwrap with vs without cgroups, {w} worker(s): wall", walls["bwrap"], plain, walls["bwrap"]))
    print(f"{'what':<58} {'value':>9} {'baseline':>9} {'ratio':>7} {'wall s':>7}")
    for what, value, baseline, wall in rows:
        ratio = f"{value / baseline:7.2f}" if baseline else f"{'-':>7}"
        base = f"{baseline:9.2f}" if baseline else f"{'-':>9}"
        print(f"{what:<58} {value:9.2f} {base} {ratio} {wall:7.2f}")


if __name__ == "__main__":
    main()
