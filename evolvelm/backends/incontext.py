"""In-context memory: a backend that reads examples from a memory before every prompt, the way SemiEvol
puts labeled examples in context. The `memory` strategy's update (`semisup.method: memory`) changes no
weight; it adds the round's kept answers to the memory, and every later stage answers through this.
"""
from __future__ import annotations

import hashlib
import json

from evolvelm.tasks.labeled import demonstrations
from evolvelm.types import Generation, Problem

MEMORY = "memory.jsonl"  # in a gate state's `memory` folder: the examples, as a labeled-set file (read_labeled)


class InContext:
    """`inner` with the `n` memory examples nearest to each prompt written before it. Its version names
    the weights and the memory, so answers given with different memories are never confused."""

    def __init__(self, inner, memory: list[Problem], n: int):
        self.inner, self.memory, self.n = inner, memory, n
        digest = hashlib.sha256(json.dumps([(p.skill, p.prompt, p.answer) for p in memory]).encode()).hexdigest()[:12]
        self.version = f"{inner.version}+memory:{len(memory)}:{digest}"

    def shown(self, prompt: str) -> str:
        return demonstrations(prompt, self.memory, self.n) + prompt

    def generate(self, prompts: list[str], seeds: list[int], temperature: float, max_new_tokens: int) -> list[Generation]:
        return self.inner.generate([self.shown(p) for p in prompts], seeds, temperature, max_new_tokens)

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        return self.inner.logprobs([self.shown(p) for p in prompts], completions)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str):  # the tokenizer, the format and the rest are the inner backend's
        return getattr(self.inner, name)
