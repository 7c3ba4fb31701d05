"""Where an addition ladder's model fails: its own answers in a run's store, against the true answers.

    python benchmarks/ladder.py --tasks addition --arms oracle --runs runs
    python benchmarks/addition_failures.py runs/addition-oracle

For every round and difficulty the run acquired (each answered by the model kept after the round
before), one row: problems, accuracy, accuracy when the index hints run straight and when they wrap
from z to a, accuracy by the longest carry chain, and the place (0 = units) where wrong answers first
go wrong. Reads the store only; loads no model.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evolvelm.store.run import Run  # noqa: E402
from evolvelm.tasks import LETTERS  # noqa: E402


def operands(prompt: str) -> tuple[list[int], list[int], int]:
    """The digits of both operands (units first) and the index of the first hint letter."""
    a, b = prompt[1:-1].split("+")
    return [int(c) for c in a[1::2]], [int(c) for c in b[1::2]], LETTERS.index(a[0])


def longest_carry(a: list[int], b: list[int]) -> int:
    carry = run = best = 0
    for x, y in zip(a, b):
        carry = int(x + y + carry >= 10)
        run = run + 1 if carry else 0
        best = max(best, run)
    return best


def first_wrong_place(completion: str, answer: str) -> int:
    """The place (0 = units) of the first hinted digit that differs."""
    return next((i for i, (x, y) in enumerate(zip(completion, answer)) if x != y), min(len(completion), len(answer))) // 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--member", type=int, default=0, help="whose answers: 0 the model, i its voter i")
    args = ap.parse_args()
    rows = Run.open(args.run_dir).query(
        "SELECT round, difficulty, prompt, completion, true_answer FROM samples "
        "WHERE skill='addition' AND member=? AND k=0 ORDER BY round, difficulty", (args.member,))
    groups = defaultdict(list)
    for r in rows:
        groups[(r["round"], r["difficulty"])].append(r)
    acc = lambda oks: f"{sum(oks) / len(oks):.3f}" if oks else "    -"
    print(f"{'round':>5} {'digits':>6} {'problems':>8} {'acc':>6} {'straight':>8} {'wrapped':>7}  "
          f"{'by longest carry chain (0 1 2 3 4 5+)':>37}  first wrong place (units = 0)")
    for (rnd, d), group in groups.items():
        straight, wrapped, carry, places = [], [], defaultdict(list), Counter()
        for r in group:
            a, b, start = operands(r["prompt"])
            ok = r["completion"] == r["true_answer"]
            (wrapped if start + len(r["true_answer"]) // 2 > 26 else straight).append(ok)
            carry[min(longest_carry(a, b), 5)].append(ok)
            if not ok:
                places[first_wrong_place(r["completion"], r["true_answer"])] += 1
        by_carry = " ".join(acc(carry[k]) for k in range(6))
        print(f"{rnd:5d} {d:6d} {len(group):8d} {acc(straight + wrapped):>6} {acc(straight):>8} {acc(wrapped):>7}  "
              f"{by_carry:>37}  " + " ".join(f"{p}:{n}" for p, n in sorted(places.items())))


if __name__ == "__main__":
    main()
