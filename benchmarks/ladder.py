"""Measure the easy-to-hard ladder under each refine arm, per task, for a fixed time budget per arm.

    python benchmarks/ladder.py                                       # every task and arm: hours
    python benchmarks/ladder.py --tasks reverse --arms model-vote none --budget-minutes 30 --out ladder.json

Each task runs its shipped recipe (`copy-ladder`, `reverse-ladder`, `addition-ladder`); each arm changes
only how labels are filtered (and drops the voters where it does not use them). Every arm gets the
same wall-clock budget on this machine: it starts rounds until the budget is spent.
    model-vote   the model and its independently seeded voters must agree (copy- and reverse-ladder)
    sample-vote  no voters; greedy and 4 samples at T=1 of the one model must agree (+ length, guard)
    variant-vote no voters; greedy answers to the problem and to 7 equivalent prompts (skills with
                 variants: addition), 6 of the 8 must agree (+ length, guard; addition-ladder)
    length       length filter only
    none         no filter (dedup only): the model trains on all of its own answers
    oracle       the task's checker with the true labels (an upper bound, not an unsupervised method)
One table per task and arm: round, promoted, frontier (held-out test split), label precision of the
kept labels (against true labels the unsupervised arms never see), labels kept, wall seconds; then
the final frontier as a multiple of the trained range. `--out` writes the run summaries as JSON;
`--runs DIR` keeps each arm's run directory (`evolvelm report DIR/TASK-ARM` renders it).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evolvelm import config  # noqa: E402
from evolvelm.recipes.ladder import run_recipe  # noqa: E402
from evolvelm.store.run import Run  # noqa: E402
from evolvelm.tasks import get_task  # noqa: E402

ALONE = ["model.voters=[]", "acquire.samples=1", "acquire.variants=0"]
ARMS = {
    "model-vote": ["acquire.variants=0"],
    "variant-vote": ["model.voters=[]", "acquire.samples=1", "acquire.variants=7", "refine.vote_agreement=0.75",
                     "refine.chain=[length, vote, agreement, dedup]"],
    "sample-vote": ["model.voters=[]", "acquire.variants=0", "acquire.samples=5", "refine.vote_agreement=1.0",
                    "refine.chain=[length, vote, agreement, dedup]"],
    "length": ALONE + ["refine.chain=[length, dedup]"],
    "none": ALONE + ["refine.chain=[dedup]"],
    "oracle": ALONE + ["refine.chain=[oracle, dedup]"],
}
# copy-ladder and reverse-ladder are the model-vote arm; addition-ladder votes across equivalent prompts,
# and its model-vote arm is zoo:addition with its two independently seeded copies, at the 6000 problems
# per difficulty their rare agreement needs
VOTERS = {"addition": ["model.path=zoo:addition", "model.voters=[zoo:addition-seed1, zoo:addition-seed2]",
                       "acquire.problems=6000", "refine.chain=[length, model_vote, agreement, dedup]"]}
TASKS = ["copy", "reverse", "addition"]


def run_arm(task: str, arm: str, budget: float, extra: list[str], workdir: Path) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    overrides = ARMS[arm] + (VOTERS.get(task, []) if arm == "model-vote" else [])
    cfg = config.load(f"{task}-ladder", overrides + ["rounds=1000", f"budget_minutes={budget}"] + extra)
    t0 = time.time()
    summary = run_recipe(cfg, Run.create(workdir / f"{task}-{arm}", cfg), quiet=True)
    summary["bench_wall_seconds"] = round(time.time() - t0, 1)
    return summary


def table(task: str, arm: str, summary: dict) -> str:
    skills = summary["skills"]
    head = f"{'round':>5} {'promoted':>8} " + " ".join(f"{'frontier ' + s:>17}" for s in skills) + \
        f" {'label precision':>15} {'kept':>6} {'wall s':>7}"
    lines = [f"task: {task}  arm: {arm}", head]
    for r in summary["rounds"]:
        lp = "-" if r["label_precision"] is None else f"{r['label_precision']:.4f}"
        lines.append(f"{r['round']:>5} {str(r['promoted']):>8} " + " ".join(f"{r['frontier'][s]:>17}" for s in skills)
                     + f" {lp:>15} {r['kept']:>6} {r['seconds']:>7}")
    base, final = summary["rounds"][0]["frontier"], summary["final_frontier"]
    levels = summary["rounds"][0]["levels"]
    promoted = [r["label_precision"] for r in summary["rounds"][1:] if r["promoted"] and r["label_precision"] is not None]
    lines.append("final frontier " + ", ".join(f"{s} {base[s]} -> {final[s]} ({final[s] / levels[s]:.2f}x trained range {levels[s]})"
                                              for s in skills)
                 + f"; lowest label precision of a promoted round {min(promoted) if promoted else float('nan'):.4f}"
                 + f"; wall {summary['bench_wall_seconds']}s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help="per arm; default 30 (copy, reverse) and 45 (addition), the issue's targets")
    ap.add_argument("--out", type=Path, help="also write the summaries as JSON")
    ap.add_argument("--runs", type=Path, help="keep every arm's run directory under this folder (default: a temporary one)")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every arm")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.runs or Path(tmp)
        for task in args.tasks:
            budget = args.budget_minutes or (45.0 if task == "addition" else 30.0)
            for arm in args.arms:
                if arm == "variant-vote" and get_task(task).variant is None:
                    print(f"task: {task}  arm: {arm}: skipped, the task has no equivalent prompts\n", flush=True)
                    continue
                results.setdefault(task, {})[arm] = run_arm(task, arm, budget, args.overrides, workdir)
                print(table(task, arm, results[task][arm]) + "\n", flush=True)
                if args.out:
                    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
