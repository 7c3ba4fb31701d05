"""`evolvelm serve` throughput: requests and generated tokens per second through the OpenAI API (the
official client, C clients at once, each sending its next request when the last is answered) against
calling the hf backend directly with the same prompts in batches of C (what C clients are worth when
batched perfectly, with no HTTP in between). Greedy chat answers, which must be the same both ways.

    python benchmarks/serve.py [--model zoo:smollm2-135m-instruct] [--clients 1 8 32] [--requests 32]

The server runs as its own process (`evolvelm serve MODEL --port N`), started after the direct
measurement so the two never share the cores. Prints one table: what, value, baseline, ratio, wall s.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

QUESTION = "What is {a} + {b}? Answer with just the number."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def direct(model: str, prompts: list[str], clients: int, max_tokens: int) -> tuple[list[str], int, float]:
    from evolvelm.backends.hf import HFBackend
    from evolvelm.models import resolve

    backend = HFBackend(resolve(model))
    backend.generate(prompts[:1], [0], 0.0, 2)  # warm-up
    t, texts, tokens = time.perf_counter(), [], 0
    for i in range(0, len(prompts), clients):
        gens = backend.generate(prompts[i:i + clients], [0] * len(prompts[i:i + clients]), 0.0, max_tokens)
        texts += [g.text for g in gens]
        tokens += sum(len(g.tokens) for g in gens)
    return texts, tokens, time.perf_counter() - t


def through_server(url: str, name: str, prompts: list[str], clients: int, max_tokens: int):
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    ask = lambda p: client.chat.completions.create(model=name, messages=[{"role": "user", "content": p}],
                                                   temperature=0, max_tokens=max_tokens)
    ask(prompts[0])  # warm-up
    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(ask, prompts))
    wall = time.perf_counter() - t
    return [a.choices[0].message.content for a in answers], sum(a.usage.completion_tokens for a in answers), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="zoo:smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=32, help="requests per measurement")
    ap.add_argument("--max-tokens", type=int, default=16)
    a = ap.parse_args()
    prompts = [QUESTION.format(a=17 * i % 90 + 10, b=31 * i % 90 + 10) for i in range(a.requests)]

    base = {c: direct(a.model, prompts, c, a.max_tokens) for c in a.clients}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "evolvelm.cli", "serve", a.model, "--port", str(port),
                               "--batch-rows", str(max(a.clients))], env=os.environ | {"HF_HUB_OFFLINE": "1"},
                              stderr=subprocess.DEVNULL)
    url, name = f"http://127.0.0.1:{port}/v1", a.model.removeprefix("zoo:").rstrip("/").split("/")[-1]
    try:
        import openai

        for _ in range(600):
            try:
                openai.OpenAI(base_url=url, api_key="none", max_retries=0).models.list()
                break
            except openai.APIConnectionError:
                time.sleep(0.5)
        rows = []
        for c in a.clients:
            texts, tokens, wall = through_server(url, name, prompts, c, a.max_tokens)
            ref_texts, ref_tokens, ref_wall = base[c]
            same = sum(x == y for x, y in zip(texts, ref_texts))
            rows += [(f"{c} clients: requests/s through the server (direct: batches of {c})", len(prompts) / wall,
                      len(prompts) / ref_wall, wall),
                     (f"{c} clients: generated tokens/s", tokens / wall, ref_tokens / ref_wall, wall),
                     (f"{c} clients: answers equal to direct", same, len(prompts), wall)]
    finally:
        server.terminate()
        server.wait()
    print(f"{'what':62s} {'value':>9s} {'baseline':>9s} {'ratio':>6s} {'wall s':>7s}")
    for what, value, baseline, wall in rows:
        print(f"{what:62s} {value:9.2f} {baseline:9.2f} {value / baseline:6.2f} {wall:7.1f}")


if __name__ == "__main__":
    main()
