"""Do in-context examples help `zoo:chain`? Greedy pass@1 on held-out dev problems with no examples
before the prompt, and with n labeled examples chosen several ways (SemiEvol's in-context propagation
puts the nearest ones there).

    python benchmarks/semievol_demos.py [--model zoo:chain] [--demos 1 2] [--problems 300]

One row per choice of examples and n; one column per difficulty (operations), plus wall seconds.
    none              the prompt alone (the baseline)
    nearest           the labeled problems with most characters in common, then closest length
                      (`evolvelm.tasks.labeled.demonstrations`, what the semievol recipe uses)
    farthest          labeled problems of the same length with fewest characters in common
    random-same-len   random labeled problems of the same length
    random            random labeled problems
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evolvelm import config  # noqa: E402
from evolvelm.evaluate.suite import splits  # noqa: E402
from evolvelm.models import ZOO  # noqa: E402
from evolvelm.tasks import get_task  # noqa: E402
from evolvelm.tasks.labeled import demonstrations, read_labeled  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="zoo:chain")
    ap.add_argument("--demos", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--problems", type=int, default=300, help="dev problems per difficulty at most")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    from evolvelm.backends.hf import HFBackend

    hf_logging.disable_progress_bar()
    path = ZOO / args.model[4:] if args.model.startswith("zoo:") else Path(args.model)
    labeled, task, e = read_labeled(path / "labeled.jsonl"), get_task("chain"), config.load("semievol").eval
    avoid = frozenset(p.prompt for p in labeled)
    dev = {d: splits(task, d, e.problems, e.dev_problems, e.seed, avoid)["dev"][:args.problems]
           for d in range(1, e.max_difficulty + 1)}
    backend, rng = HFBackend(str(path)), random.Random(0)

    def same_length(prompt: str) -> list:
        return [p for p in labeled if len(p.prompt) == len(prompt)]

    def farthest(prompt: str, n: int) -> list:
        want = Counter(prompt)
        return sorted(same_length(prompt), key=lambda p: (sum((Counter(p.prompt) & want).values()), rng.random()))[:n]

    choices = {
        "nearest": lambda prompt, n: demonstrations(prompt, labeled, n),
        "farthest": lambda prompt, n: "".join(p.prompt + p.answer for p in farthest(prompt, n)),
        "random-same-len": lambda prompt, n: "".join(p.prompt + p.answer for p in rng.sample(same_length(prompt), n)),
        "random": lambda prompt, n: "".join(p.prompt + p.answer for p in rng.sample(labeled, n)),
    }
    print(f"{'examples':20s} " + " ".join(f"{f'{d} ops':>7s}" for d in dev) + f" {'wall s':>7s}")
    rows = [("none", 0, lambda prompt, n: "")] + [(name, n, f) for name, f in choices.items() for n in args.demos]
    for name, n, before in rows:
        t0, cells = time.time(), []
        for d, probs in dev.items():
            prompts = [before(p.prompt, n) + p.prompt for p in probs]
            gens = backend.generate(prompts, [0] * len(prompts), 0.0, task.answer_lengths(d)[1] + 2)
            cells.append(sum(task.check(p, g.text) for p, g in zip(probs, gens)) / len(probs))
        label = name if name == "none" else f"{name} x{n}"
        print(f"{label:20s} " + " ".join(f"{c:7.3f}" for c in cells) + f" {time.time() - t0:7.1f}", flush=True)


if __name__ == "__main__":
    main()
