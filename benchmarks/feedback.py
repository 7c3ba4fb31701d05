"""Executor feedback and self-discrimination on the expr skill, on held-out test problems.

    python benchmarks/feedback.py [--model zoo:expr] [--difficulties 5 6 7] [--samples 8] [--out FILE.json]

Per difficulty (number of digits of the target):
- first try: greedy answers the sandbox accepts;
- after feedback: the share right after one greedy retry of each rejected answer, with the failed
  attempt and the executor's feedback in context (tasks.retry_prompt), and the share of rejected
  answers the retry fixed;
- generation: the share of `--samples` answers at temperature 1 that are right, and pass@k;
- discrimination: how well the model's own likelihood (mean token log-probability at T=1) tells right
  from wrong among those answers: pairwise accuracy over (right, wrong) pairs of one problem, and the
  accuracy of picking the most likely of the k answers (compare with the first try).

Prints one table (what, value per difficulty, wall time).
"""
from __future__ import annotations

import argparse
import json
import time

from evolvelm.acquire.sampling import derive_seed
from evolvelm.backends.hf import HFBackend
from evolvelm.evaluate.suite import splits
from evolvelm.models import resolve
from evolvelm.tasks import get_task, retry_prompt


def measure(backend, d: int, n: int, k: int) -> dict:
    task = get_task("expr")
    probs = list(splits(task, d, n, 50, 1234)["test"])
    max_new = task.answer_lengths(d)[1] + 2
    t = time.time()
    first = backend.generate([p.prompt for p in probs], [0] * len(probs), 0.0, max_new)
    judged = task.judge(probs, [g.text for g in first])
    wrong = [(p, g.text, why) for p, g, (ok, why) in zip(probs, first, judged) if not ok]
    retry = backend.generate([retry_prompt(p.prompt, a, why) for p, a, why in wrong], [0] * len(wrong), 0.0, max_new)
    fixed = sum(task.check_many([p for p, _, _ in wrong], [g.text for g in retry])) if wrong else 0

    jobs = [(p, j) for p in probs for j in range(k)]
    samples = backend.generate([p.prompt for p, _ in jobs], [derive_seed("feedback", p.id, j) for p, j in jobs], 1.0, max_new)
    right = task.check_many([p for p, _ in jobs], [g.text for g in samples])
    scores = [sum(lp) / max(1, len(lp)) for lp in backend.logprobs([p.prompt for p, _ in jobs], [g.text for g in samples])]
    pairs = wins = picked = solved = 0
    for i in range(len(probs)):
        cand = list(zip(right[i * k:(i + 1) * k], scores[i * k:(i + 1) * k]))
        solved += any(r for r, _ in cand)
        picked += max(cand, key=lambda c: c[1])[0]
        for r1, s1 in cand:
            for r2, s2 in cand:
                if r1 and not r2:
                    pairs += 1
                    wins += s1 > s2 or 0.5 * (s1 == s2)
    n_ok = len(probs) - len(wrong)
    return {"difficulty": d, "problems": len(probs), "first_try": n_ok / len(probs),
            "after_feedback": (n_ok + fixed) / len(probs), "fixed_by_retry": fixed / len(wrong) if wrong else None,
            "sample_right": sum(right) / len(right), f"pass@{k}": solved / len(probs),
            "most_likely_of_k_right": picked / len(probs),
            "pairwise_discrimination": wins / pairs if pairs else None, "pairs": pairs,
            "seconds": round(time.time() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:expr")
    ap.add_argument("--difficulties", type=int, nargs="+", default=[5, 6, 7])
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    backend = HFBackend(resolve(a.model, None) if a.model.startswith("zoo:") else a.model)
    rows = [measure(backend, d, a.problems, a.samples) for d in a.difficulties]
    keys = [key for key in rows[0] if key != "difficulty"]
    print(f"model {a.model}\n{'what':<26}" + "".join(f"{'d=' + str(r['difficulty']):>9}" for r in rows))
    for key in keys:
        cells = "".join(f"{r[key]:9.3f}" if isinstance(r[key], float) else f"{str(r[key]):>9}" for r in rows)
        print(f"{key:<26}{cells}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"model": a.model, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
