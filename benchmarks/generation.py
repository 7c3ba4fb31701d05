"""Generation throughput of the hf backend (prompts sorted by length, batched, left-padded) against
one-prompt-at-a-time `model.generate`, on the same prompts with the same greedy answers.

    python benchmarks/generation.py [--model zoo:smollm2-135m-instruct] [--prompts 64] [--batch-sizes 1 16 64]
                                    [--max-new-tokens 32] [--out FILE]

Prompts are word problems of three lengths (short, medium, long) so that the sweep shows what length
sorting buys. The table: per prompt length and batch size, generated tokens per second of each way,
their ratio, wall times, and whether every greedy answer matched.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from evolvelm.backends.hf import HFBackend  # noqa: E402
from evolvelm.models import resolve  # noqa: E402

NAMES = ["Ann", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal"]
THINGS = ["apples", "pens", "cards", "books", "shells", "coins"]


def prompt(rng: random.Random, clauses: int) -> str:
    """A word problem with `clauses` sentences before its question."""
    who, what = rng.choice(NAMES), rng.choice(THINGS)
    parts = [f"{who} has {rng.randint(2, 40)} {what}."]
    for _ in range(clauses - 1):
        parts.append(f"{rng.choice(NAMES)} gives {who} {rng.randint(1, 9)} more {what}.")
    return " ".join(parts) + f" How many {what} does {who} have now? Answer with just the number."


def one_at_a_time(backend: HFBackend, prompts: list[str], max_new: int) -> tuple[list[str], int, float]:
    """Plain `model.generate` on each prompt alone: (answers, generated tokens, seconds)."""
    fmt, answers, tokens, t0 = backend.format, [], 0, time.time()
    for p in prompts:
        ids = torch.tensor([fmt.prompt_ids(p)], device=backend.device)
        out = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                     do_sample=False, eos_token_id=fmt.stop_ids, pad_token_id=fmt.pad_id)
        new = out[0, ids.shape[1]:].tolist()
        n = next((j + 1 for j, t in enumerate(new) if t in fmt.stop_ids), len(new))
        answers.append(backend.tokenizer.decode(new[:n], skip_special_tokens=True))
        tokens += n
    return answers, tokens, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1, 4, 8], help="sentences per problem")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    path = resolve(a.model)
    rows = []
    print(f"{'prompt sentences':>16s} {'batch':>5s} {'batched tok/s':>13s} {'one-by-one tok/s':>16s} {'ratio':>6s} "
          f"{'batched s':>9s} {'one-by-one s':>12s}  same answers")
    for clauses in a.lengths:
        rng = random.Random(clauses)
        prompts = [prompt(rng, rng.randint(max(1, clauses - 1), clauses + 1)) for _ in range(a.prompts)]
        base = HFBackend(path, batch_size=1)
        single, single_tokens, single_s = one_at_a_time(base, prompts, a.max_new_tokens)
        for bs in a.batch_sizes:
            base.batch_size = bs
            t0 = time.time()
            gens = base.generate(prompts, [0] * len(prompts), 0.0, a.max_new_tokens)
            batched_s = time.time() - t0
            tokens = sum(len(g.logprobs) for g in gens)
            same = sum(g.text == s for g, s in zip(gens, single))
            row = {"sentences": clauses, "batch": bs, "batched_tok_s": tokens / batched_s,
                   "single_tok_s": single_tokens / single_s, "batched_s": batched_s, "single_s": single_s,
                   "same": same, "prompts": len(prompts)}
            rows.append(row)
            print(f"{clauses:16d} {bs:5d} {row['batched_tok_s']:13.1f} {row['single_tok_s']:16.1f} "
                  f"{row['batched_tok_s'] / row['single_tok_s']:6.2f} {batched_s:9.1f} {single_s:12.1f}  {same}/{len(prompts)}")
        base.close()
    if a.out:
        a.out.write_text(json.dumps({"model": a.model, "max_new_tokens": a.max_new_tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
