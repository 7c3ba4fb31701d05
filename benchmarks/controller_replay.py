"""Would today's controller have decided as the stored runs did? Every controlled round of the kept runs
under the given folders (`benchmarks/semisup.py --keep DIR`, or any run directory) is decided again
from its store with the code on the path; the rounds whose arm differs are printed, then a count.

    python benchmarks/controller_replay.py runs/ more-runs/

A same-start probe round is compared by its probe, the arm its decision asked for. Decisions come from
the store, never the clock (evolvelm.controller), so a run made by unchanged code decides the same on
replay; a changed rule shows here which of the measured runs it would have changed, without running
them again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evolvelm import controller  # noqa: E402
from evolvelm.store.run import Run  # noqa: E402


def replay(root: Path) -> list[tuple[int, str, str, str, str]]:
    """(round, the arm it chose, the arm chosen now, stored reason, reason now) for every controlled round
    of `root`; in a same-start probe's round, the probe (the arm the decision asked for)."""
    run = Run.open(root)
    cfg, out = run.config(), []
    for rnd in range(1, cfg.rounds + 1):
        acquired = run.done(rnd, "acquire")
        if not (acquired and acquired.get("controller") and run.done(rnd, "gate")):
            continue
        stored = acquired["controller"]
        asked = next((a for a in stored.get("trials", ()) if a != stored.get("versus")), stored["arm"])  # the probe
        arm, now = controller.choose(cfg, run, rnd)
        out.append((rnd, asked, arm, stored["reason"], now["reason"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    args = ap.parse_args()
    roots = sorted({p.parent for f in args.folders for p in f.rglob("summary.json") if "trials" not in p.parts})
    runs = rounds = differ = 0
    for root in roots:
        if not Run.open(root).config().controller.arms:
            continue
        runs += 1
        for rnd, old, new, was, now in replay(root):
            rounds += 1
            if old != new:
                differ += 1
                print(f"{root} round {rnd}: stored {old}, now {new}\n  stored: {was}\n  now:    {now}")
    print(f"\n{'what':40s} {'value':>6s}\n{'controlled runs':40s} {runs:6d}\n{'controlled rounds':40s} {rounds:6d}\n"
          f"{'rounds decided otherwise now':40s} {differ:6d}")


if __name__ == "__main__":
    main()
