"""Which update should self_delta's map learn from? Three choices, scored on kept semisup runs.

    python benchmarks/semisup.py --task sums --methods controller-stay star --seeds 5 6 7 8 9 --keep runs
    python benchmarks/self_delta_maps.py runs

`self_delta` (evolvelm.recipes.semisup.delta) recalibrates the candidate's confidence in its changed
test answers on the dev answers that an earlier update changed. Recomputed from each run's eval
manifests (which keep every answer's verdict, final-answer hash and confidence), rounds 2 on, with
the map from:
    last update   round r - 1's candidate against the model it started from, kept or rolled back
                  (`last_update`, as shipped)
    made start    the update that made the starting model; all dev answers where that is the base
    made, else last   the update that made the starting model; where that is the base, the last update
Printed: the mean absolute error of each against the candidate's pooled test accuracy, per arm (the
runs' semisup method, or controller policy), over every scored round, with "no change" beside them.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evolvelm.evaluate.calibration import KINDS  # noqa: E402
from evolvelm.recipes.semisup import delta, last_update, started_from  # noqa: E402
from evolvelm.store.run import Run  # noqa: E402
from evolvelm.tasks import data  # noqa: E402

MAPS = ("last update", "made start", "made, else last")


def accuracy(ev: dict) -> float:
    marks = "".join(m for by_d in ev["test_right"].values() for m in by_d.values())
    return marks.count("1") / len(marks)


def scored(run: Run) -> list[dict]:
    """Per round from 2: the candidate's accuracy, "no change" and self_delta with each map."""
    token, out, rnd = KINDS.index("token"), [], 2
    while (ev := run.done(rnd, "eval")) and ev.get("test_finals"):
        begun = started_from(run, rnd)
        start = run.done(begun, "eval")
        conf = {s: {int(d): [{"token": c[token]} for c in cs] for d, cs in by_d.items()} for s, by_d in ev["test_confidence"].items()}
        finals = {s: {int(d): f for d, f in by_d.items()} for s, by_d in ev["test_finals"].items()}
        made = (start, run.done(started_from(run, begun), "eval")) if begun else None
        lasts = {"last update": last_update(run, rnd), "made start": made, "made, else last": made or last_update(run, rnd)}
        out.append({"actual": accuracy(ev), "no change": accuracy(start),
                    **{k: delta(start, conf, finals, last)["pooled"] for k, last in lasts.items()}})
        rnd += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="folders holding run directories (benchmarks/semisup.py --keep)")
    a = ap.parse_args()
    by_arm = defaultdict(list)
    for root in a.dirs:
        for path in sorted(p.parent for p in root.rglob("config.yaml")):
            run = Run.open(path)
            cfg = run.config()
            data.pin(cfg, run.root)  # a skill from data: registered on the splits the run kept
            arm = f"controller ({cfg.controller.policy})" if cfg.controller.arms else cfg.semisup.method
            by_arm[arm] += scored(run)
    print(f"{'arm':28s} {'rounds':>6s} " + " ".join(f"{k:>16s}" for k in (*MAPS, "no change")))
    for arm, rows in by_arm.items():
        mae = {k: sum(abs(r[k] - r["actual"]) for r in rows) / len(rows) for k in (*MAPS, "no change")}
        print(f"{arm:28s} {len(rows):6d} " + " ".join(f"{mae[k]:16.4f}" for k in mae))


if __name__ == "__main__":
    main()
