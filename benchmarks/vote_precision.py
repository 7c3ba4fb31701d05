"""How precise are a model's own labels one step beyond its training range, under unsupervised filters?

    python benchmarks/vote_precision.py                          # zoo:copy-reverse, copy@7 and reverse@8
    python benchmarks/vote_precision.py --model zoo:copy-reverse --cases copy:7 --problems 400

For each (skill, difficulty) it draws fresh problems, takes the greedy answer and k sampled answers,
and prints one row per filter: how many problems keep a label, the precision of those labels against
the true answers (which the filters never see), that precision relative to the unfiltered greedy
labels (the baseline), and the wall time of the row. Filters measured:
    greedy                 every greedy answer (the baseline)
    unanimous T=t k=k      greedy and k samples at temperature t all agree
    min-logprob >= x       greedy answers whose least likely token has log-probability >= x
    models m/n             with --voters: the greedy answer of at least m of the n models (the model
                           and its independently seeded voters) agrees with the model's own
    variants m/n           skills with equivalent prompts (addition): at least m of the greedy answers
                           to the problem and to its n - 1 variants (`acquire.variants`) agree with the
                           answer to the problem itself
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evolvelm.acquire.sampling import derive_seed  # noqa: E402
from evolvelm.models import ZOO  # noqa: E402
from evolvelm.tasks import get_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="zoo:copy-reverse")
    ap.add_argument("--cases", nargs="+", default=["copy:7", "reverse:8"], help="skill:difficulty")
    ap.add_argument("--problems", type=int, default=400)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    ap.add_argument("--samples", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--logprob", type=float, nargs="+", default=[-0.05, -0.1, -0.3])
    ap.add_argument("--voters", nargs="*", default=["zoo:copy-reverse-seed1", "zoo:copy-reverse-seed2"],
                    help="independently seeded models for the cross-model vote (none: skip it)")
    ap.add_argument("--variants", type=int, nargs="+", default=[3, 7],
                    help="equivalent prompts per problem, for skills that have them")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    from evolvelm.backends.hf import HFBackend

    hf_logging.disable_progress_bar()
    def load(ref: str) -> HFBackend:
        return HFBackend(str(ZOO / ref[4:]) if ref.startswith("zoo:") else ref)

    backend, voters = load(args.model), [load(v) for v in args.voters]
    print(f"{'case':12s} {'filter':24s} {'kept':>9s} {'precision':>9s} {'vs greedy':>9s} {'wall s':>7s}")
    for case in args.cases:
        skill, d = case.split(":")
        task, d = get_task(skill), int(d)
        probs = task.problems(d, args.problems, seed=derive_seed("bench", skill, d))
        prompts, max_new = [p.prompt for p in probs], task.answer_lengths(d)[1] + 2

        def row(name: str, kept: list[int], seconds: float, base: float | None = None) -> float:
            precision = sum(task.check(probs[i], greedy[i].text) for i in kept) / len(kept) if kept else float("nan")
            ratio = "" if base is None else f"{precision / base:.3f}"
            print(f"{case:12s} {name:24s} {len(kept):4d}/{len(probs):<4d} {precision:9.3f} {ratio:>9s} {seconds:7.1f}", flush=True)
            return precision

        t0 = time.time()
        greedy = backend.generate(prompts, [0] * len(prompts), 0.0, max_new)
        base = row("greedy", list(range(len(probs))), time.time() - t0)
        for temp in args.temperatures:
            t0 = time.time()
            draws = [backend.generate(prompts, [derive_seed("bench", p, j) for p in prompts], temp, max_new)
                     for j in range(max(args.samples))]
            for k in args.samples:
                kept = [i for i in range(len(probs)) if all(draws[j][i].text == greedy[i].text for j in range(k))]
                row(f"unanimous T={temp} k={k}", kept, time.time() - t0, base)
        t0 = time.time()
        scores = backend.logprobs(prompts, [g.text for g in greedy])
        for x in args.logprob:
            row(f"min-logprob >= {x}", [i for i, s in enumerate(scores) if min(s) >= x], time.time() - t0, base)
        if voters:
            t0 = time.time()
            others = [v.generate(prompts, [0] * len(prompts), 0.0, max_new) for v in voters]
            n = 1 + len(voters)
            for m in range(2, n + 1):
                kept = [i for i in range(len(probs)) if 1 + sum(o[i].text == greedy[i].text for o in others) >= m]
                row(f"models {m}/{n}", kept, time.time() - t0, base)
        if task.variant and args.variants:
            t0 = time.time()
            asked = [[task.variant(p, i) for p in prompts] for i in range(1, max(args.variants) + 1)]
            others = [[back(g.text) for (_, back), g in zip(vs, backend.generate([q for q, _ in vs], [0] * len(vs), 0.0, max_new))]
                      for vs in asked]
            for v in args.variants:
                n = 1 + v
                for m in range(-(-3 * n // 4), n + 1):  # from three quarters of the answers to all of them
                    kept = [i for i in range(len(probs)) if 1 + sum(o[i] == greedy[i].text for o in others[:v]) >= m]
                    row(f"variants {m}/{n}", kept, time.time() - t0, base)


if __name__ == "__main__":
    main()
