"""Measure the easy-to-hard ladder under different refine arms and print one table per arm.

    python benchmarks/ladder.py                                   # copy-ladder, arms: vote, oracle, none
    python benchmarks/ladder.py --recipe copy-ladder --arms vote none --rounds 4 --out ladder.json

Each arm is the recipe with a different filter chain; everything else (seed, model, budget) is equal:
    vote    the recipe's own unsupervised chain (length, unanimous 5-sample vote, agreement guard, dedup)
    length  length filter only
    none    no filter (dedup only): the model trains on all of its own answers
    oracle  the task's checker with the true labels (an upper bound, not an unsupervised method)
Columns: round, whether it was promoted, frontier per skill (held-out test split), label precision
of the kept labels (against true labels the unsupervised arms never see), labels kept, wall seconds.
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

ARMS = {
    "vote": [],
    "length": ["refine.chain=[length, dedup]"],
    "none": ["refine.chain=[dedup]"],
    "oracle": ["refine.chain=[oracle, dedup]"],
}


def run_arm(recipe: str, arm: str, rounds: int, extra: list[str], workdir: Path) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cfg = config.load(recipe, ARMS[arm] + [f"rounds={rounds}"] + extra)
    t0 = time.time()
    summary = run_recipe(cfg, Run.create(workdir / arm, cfg), quiet=True)
    summary["bench_wall_seconds"] = round(time.time() - t0, 1)
    return summary


def table(arm: str, summary: dict) -> str:
    skills = summary["skills"]
    head = f"{'round':>5} {'promoted':>8} " + " ".join(f"{'frontier ' + s:>17}" for s in skills) + \
        f" {'label precision':>15} {'kept':>6} {'wall s':>7}"
    lines = [f"arm: {arm}", head]
    for r in summary["rounds"]:
        lp = "-" if r["label_precision"] is None else f"{r['label_precision']:.4f}"
        lines.append(f"{r['round']:>5} {str(r['promoted']):>8} " + " ".join(f"{r['frontier'][s]:>17}" for s in skills)
                     + f" {lp:>15} {r['kept']:>6} {r['seconds']:>7}")
    base, final = summary["rounds"][0]["frontier"], summary["final_frontier"]
    levels = summary["rounds"][0]["levels"]
    lines.append("final frontier " + ", ".join(f"{s} {base[s]} -> {final[s]} ({final[s] / levels[s]:.2f}x trained range {levels[s]})"
                                              for s in skills) + f"; wall {summary['bench_wall_seconds']}s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="copy-ladder")
    ap.add_argument("--arms", nargs="+", default=["vote", "oracle", "none"], choices=sorted(ARMS))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", type=Path, help="also write the summaries as JSON")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every arm")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            results[arm] = run_arm(args.recipe, arm, args.rounds, args.overrides, Path(tmp))
            print(table(arm, results[arm]) + "\n", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
