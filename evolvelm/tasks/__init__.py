"""Built-in skills. Each task generates problems by difficulty and owns the one checker that scores
a completion, for training rewards and for evaluation alike.

Prompt formats (character level, one token per character):
    copy      "C" + s + "="            -> s
    reverse   "R" + s + "="            -> s reversed
    addition  "A" + a + "+" + b + "="  -> a + b, all numbers written least-significant digit first
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from evolvelm.types import Problem

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
CHECKER_VERSION = "exact-1"  # stored beside every score this checker produces


@dataclass(frozen=True)
class Task:
    """A skill: how to draw a problem of a given difficulty, and how to check an answer."""

    name: str
    make: Callable[[int, random.Random], tuple[str, str]]   # (difficulty, rng) -> (prompt, answer)
    answer_lengths: Callable[[int], tuple[int, int]]         # difficulty -> plausible (min, max) answer length
    space: Callable[[int], int]                              # difficulty -> number of distinct prompts

    def problem(self, difficulty: int, rng: random.Random) -> Problem:
        prompt, answer = self.make(difficulty, rng)
        return Problem(self.name, difficulty, prompt, answer)

    def problems(self, difficulty: int, n: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[Problem]:
        """`n` distinct problems of `difficulty` drawn with `seed`, skipping prompts in `exclude`.

        Short difficulties have few distinct prompts; we stop after a bounded number of draws
        rather than loop forever, so fewer than `n` may come back.
        """
        rng = random.Random(f"{self.name}:{difficulty}:{seed}")
        out: dict[str, Problem] = {}
        for _ in range(20 * n):
            p = self.problem(difficulty, rng)
            if p.prompt not in exclude:
                out.setdefault(p.prompt, p)
            if len(out) == n:
                break
        return list(out.values())

    def check(self, problem: Problem, completion: str) -> bool:
        """The task's single checker: exact match of the completion with the true answer."""
        return completion == problem.answer


def _copy(d: int, rng: random.Random) -> tuple[str, str]:
    s = "".join(rng.choice(LETTERS) for _ in range(d))
    return f"C{s}=", s


def _reverse(d: int, rng: random.Random) -> tuple[str, str]:
    s = "".join(rng.choice(LETTERS) for _ in range(d))
    return f"R{s}=", s[::-1]


def _addition(d: int, rng: random.Random) -> tuple[str, str]:
    lo, hi = (0 if d == 1 else 10 ** (d - 1)), 10**d - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    return f"A{str(a)[::-1]}+{str(b)[::-1]}=", str(a + b)[::-1]


TASKS: dict[str, Task] = {
    "copy": Task("copy", _copy, lambda d: (d, d), lambda d: 26**d),
    "reverse": Task("reverse", _reverse, lambda d: (d, d), lambda d: 26**d),
    "addition": Task("addition", _addition, lambda d: (d, d + 1), lambda d: 100 if d == 1 else (9 * 10 ** (d - 1)) ** 2),
}

# Every character any task can emit; the zoo tokenizer is built from this.
ALPHABET = LETTERS + DIGITS + "CRA+="


def get_task(name: str) -> Task:
    """Look a task up by name, with the valid names in the error."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[name]
