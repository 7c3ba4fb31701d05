"""Throughput of the pieces a round spends its time in: generation (hf one prompt at a time, hf
batched, vllm where installed on a GPU), adapter sync per round, Ray fan-out of a sampling stage at
several worker counts, and training tokens per second: in this process, and under `accelerate launch`
at each of --train-processes (DDP over processes of 1 thread each; evolvelm.update.parallel).

    python benchmarks/throughput.py [--model zoo:smollm2-135m-instruct] [--prompts 64] [--max-new-tokens 24]
                                    [--workers 1 2] [--batch-size 8] [--train-steps 10] [--train-processes 2]
                                    [--out FILE]

Greedy answers must match across the ways of generating (the table counts them); the Ray rows draw
seeded samples at temperature 1, which must match across worker counts. Each Ray worker has
`cluster.cpus` = 1 core, so "1 worker" is one core and the ratio is the scaling; the one-process
row (every core, torch's threads) is printed beside it for comparison. Run it alone: two torch
processes on the same cores slow each other. Prints one table: what, value, baseline, ratio, wall s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evolvelm.backends.hf import HFBackend  # noqa: E402
from evolvelm.models import resolve  # noqa: E402

QUESTION = "What is {a} + {b}? Answer with just the number."


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def tokens(gens) -> int:
    return sum(len(g.tokens) if g.tokens else len(g.logprobs) for g in gens)


def random_adapter(base: str, out: Path) -> str:
    """A LoRA adapter with random weights (a fresh one's B is zero): a round's adapter, as far as
    loading is concerned."""
    import torch
    from peft import LoraConfig, get_peft_model

    from evolvelm.models import load_model

    torch.manual_seed(0)
    get_peft_model(load_model(base), LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)).save_pretrained(out)
    return str(out)


def generation_rows(path: str, prompts: list[str], max_new: int, batch: int) -> list[tuple]:
    one = HFBackend(path, batch_size=1)
    one.generate(prompts[:1], [0], 0.0, 2)  # warm-up
    ref, t_one = timed(lambda: [g for p in prompts for g in one.generate([p], [0], 0.0, max_new)])
    batched = HFBackend(path, batch_size=batch)
    got, t_b = timed(lambda: batched.generate(prompts, [0] * len(prompts), 0.0, max_new))
    rows = [("hf one prompt at a time: generated tokens/s", tokens(ref) / t_one, tokens(ref) / t_one, t_one),
            (f"hf batched ({batch} per batch): generated tokens/s", tokens(got) / t_b, tokens(ref) / t_one, t_b),
            ("hf batched: greedy answers equal to one at a time", sum(a.text == b.text for a, b in zip(got, ref)),
             len(prompts), t_b)]
    try:
        import torch
        import vllm  # noqa: F401

        if not torch.cuda.is_available():
            raise ImportError("no GPU")
    except ImportError as e:
        print(f"vllm rows skipped: {e}", file=sys.stderr)
        return rows
    from evolvelm.backends import make_backend

    fast = make_backend("vllm", path)
    fast.generate(prompts[:1], [0], 0.0, 2)
    out, t_v = timed(lambda: fast.generate(prompts, [0] * len(prompts), 0.0, max_new))
    rows += [("vllm: generated tokens/s", tokens(out) / t_v, tokens(ref) / t_one, t_v),
             ("vllm: generated tokens/s against hf batched", tokens(out) / t_v, tokens(got) / t_b, t_v),
             ("vllm: greedy answers equal to hf", sum(a.text == b.text for a, b in zip(out, ref)), len(prompts), t_v)]
    fast.close()
    return rows


def sync_rows(path: str, adapter: str, workers: int) -> list[tuple]:
    from evolvelm.backends import cluster

    hf = HFBackend(path)
    _, t_hf = timed(lambda: hf.load_adapter(adapter))
    remote = cluster.RayBackend(path, workers=workers, cpus=1)
    _, t_ray = timed(lambda: remote.load_adapter(adapter))
    _, t_back = timed(remote.unload_adapter)
    _, t_again = timed(lambda: remote.load_adapter(adapter))  # a later round's sync: peft already imported
    remote.close()
    cluster.shutdown()
    return [("adapter load, hf (s)", t_hf, t_hf, t_hf),
            (f"adapter sync to {workers} Ray workers, checked, first (s)", t_ray, t_hf, t_ray),
            (f"back to the base weights on {workers} Ray workers (s)", t_back, t_hf, t_back),
            (f"adapter sync to {workers} Ray workers, checked, later (s)", t_again, t_hf, t_again)]


def ray_rows(path: str, prompts: list[str], max_new: int, batch: int, counts: list[int]) -> list[tuple]:
    from evolvelm.backends import cluster

    seeds = list(range(len(prompts)))
    local = HFBackend(path, batch_size=batch)
    local.generate(prompts[:1], [0], 1.0, 2)
    ref, t_local = timed(lambda: local.generate(prompts, seeds, 1.0, max_new))
    rows, first = [], None
    for w in counts:
        remote = cluster.RayBackend(path, batch_size=batch, workers=w, cpus=1)
        remote.generate(prompts[:w], seeds[:w], 1.0, 2)  # every worker warmed up
        got, wall = timed(lambda: remote.generate(prompts, seeds, 1.0, max_new))
        remote.close()
        cluster.shutdown()
        first = first or wall
        rows += [(f"Ray, {w} worker{'s' * (w > 1)} of 1 core: sampled tokens/s", tokens(got) / wall,
                  tokens(got) / first, wall),
                 (f"Ray, {w} worker{'s' * (w > 1)}: samples equal to one process",
                  sum(a.text == b.text for a, b in zip(got, ref)), len(prompts), wall)]
    rows.append((f"one process, {os.cpu_count()} cores: sampled tokens/s", tokens(ref) / t_local,
                 tokens(ref) / first, t_local))
    return rows


def timed_train(model, *args, **kwargs) -> float:
    """sft.train's wall time (what parallel.fit runs on every process; loading is not timed)."""
    from evolvelm.update import sft

    return timed(lambda: sft.train(model, *args, **kwargs))[1]


def train(path: str, prompts: list[str], steps: int, batch: int) -> tuple[int, float]:
    """LoRA training through parallel.fit (on every launched process): tokens trained on (padding
    excluded) and seconds."""
    from evolvelm.prompts import PromptFormat
    from evolvelm.types import Example
    from evolvelm.update import parallel, sft

    fmt = PromptFormat.load(path, "auto", "", sft.tokenizer(path))
    examples = [Example(p, str(17 * i % 90 + 31 * i % 90 + 20)) for i, p in enumerate(prompts)]
    load = {"base": path, "parent_adapter": None, "method": "lora", "lora_r": 8, "lora_alpha": 16}
    stats: dict = {}
    _, wall = parallel.fit(timed_train, load, fmt, examples, steps, batch, 1e-4, 0, quiet=True, stats=stats)
    return stats["tokens"], wall


def training_rows(a, path: str, prompts: list[str]) -> list[tuple]:
    n, wall = train(path, prompts, a.train_steps, a.batch_size)
    rows = [(f"LoRA training, batches of {a.batch_size}, 1 process: tokens/s", n / wall, n / wall, wall)]
    for p in a.train_processes:
        launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(p),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", __file__, "--train-only",
                  "--model", a.model, "--prompts", str(a.prompts), "--train-steps", str(a.train_steps),
                  "--batch-size", str(a.batch_size)]
        out = subprocess.run(launch, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if out.returncode:
            sys.exit(f"accelerate launch failed:\n{out.stderr[-3000:]}")
        got = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((f"LoRA training, accelerate launch, {p} processes: tokens/s", got["tokens"] / got["wall"],
                     n / wall, got["wall"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="zoo:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8, help="hf batch size (and each Ray worker's)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--train-processes", type=int, nargs="*", default=[2], help="accelerate launch process counts")
    ap.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)  # what each launched process runs
    ap.add_argument("--out", help="also write the rows as JSON")
    a = ap.parse_args()
    path = resolve(a.model)
    prompts = [QUESTION.format(a=17 * i % 90 + 10, b=31 * i % 90 + 10) for i in range(a.prompts)]
    if a.model.startswith("zoo:") and "smollm" not in a.model:  # the character models read their own prompts
        prompts = [f"{'CR'[i % 2]}{'abcdefghijkl'[:4 + i % 8]}{i % 10}=" for i in range(a.prompts)]
    if a.train_only:
        from evolvelm.update import parallel

        if parallel.rank() > 0:
            parallel.follow()
            return
        n, wall = train(path, prompts, a.train_steps, a.batch_size)
        parallel.release()
        print(json.dumps({"tokens": n, "wall": wall}))
        return
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = random_adapter(path, Path(tmp) / "adapter")
        rows = (generation_rows(path, prompts, a.max_new_tokens, a.batch_size) + sync_rows(path, adapter, max(a.workers))
                + ray_rows(path, prompts, a.max_new_tokens, a.batch_size, a.workers)
                + training_rows(a, path, prompts))
    print(f"{a.model}, {a.prompts} prompts, {a.max_new_tokens} new tokens at most, {time.time() - t0:.0f} s in all")
    print(f"{'what':58s} {'value':>9s} {'baseline':>9s} {'ratio':>6s} {'wall s':>7s}")
    for what, value, baseline, wall in rows:
        print(f"{what:58s} {value:9.2f} {baseline:9.2f} {value / baseline:6.2f} {wall:7.1f}")
    if a.out:
        Path(a.out).write_text(json.dumps([dict(zip(["what", "value", "baseline", "wall_s"], r)) for r in rows], indent=1))


if __name__ == "__main__":
    main()
