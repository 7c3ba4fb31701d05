"""Held-out evaluation: exact-match accuracy per skill and difficulty, the frontier, the gate.

Two fixed splits per difficulty, both drawn from the eval seed and both excluded from training:
`test` is what we report; `dev` is what the gate decides on, so that no decision is made on the
numbers we report.
"""
from __future__ import annotations

from tqdm import tqdm

from evolvelm.tasks import Task, eval_set, get_task
from evolvelm.types import content_id

CHUNK = 512  # prompts per backend call; one progress-bar tick each


def split_set(task: Task, difficulty: int, split: str, n: int, seed: int):
    """The fixed problems of one split; `test` and `dev` come from different seed streams."""
    return eval_set(task, difficulty, n, int(content_id(split, seed), 16) % 2**31)


def held_out_prompts(task: Task, max_difficulty: int, test_n: int, dev_n: int, seed: int) -> dict[int, frozenset[str]]:
    """Per difficulty, every prompt of both splits: training draws must avoid these."""
    return {d: frozenset(p.prompt for split, n in (("test", test_n), ("dev", dev_n))
                         for p in split_set(task, d, split, n, seed)) for d in range(1, max_difficulty + 1)}


def accuracy(backend, skills: list[str], difficulties: dict[str, range], split: str, n: int, seed: int,
             quiet: bool = False) -> dict[str, dict[int, float]]:
    """Greedy exact-match accuracy per skill per difficulty on a fixed split."""
    jobs = [(get_task(s), d, p) for s in skills for d in difficulties[s] for p in split_set(get_task(s), d, split, n, seed)]
    right: dict[tuple[str, int], list[bool]] = {}
    bar = tqdm(total=len(jobs), desc=f"eval {split}", disable=quiet, leave=False)
    # one backend call per (skill, difficulty) group and chunk, so max_new_tokens fits the task
    groups: dict[tuple[str, int], list] = {}
    for task, d, p in jobs:
        groups.setdefault((task.name, d), []).append(p)
    for (skill, d), probs in groups.items():
        task = get_task(skill)
        for i in range(0, len(probs), CHUNK):
            chunk = probs[i:i + CHUNK]
            gens = backend.generate([p.prompt for p in chunk], [0] * len(chunk), 0.0, task.answer_lengths(d)[1] + 2)
            right.setdefault((skill, d), []).extend(task.check(p, g.text) for p, g in zip(chunk, gens))
            bar.update(len(chunk))
    bar.close()
    out: dict[str, dict[int, float]] = {s: {} for s in skills}
    for (skill, d), r in right.items():
        out[skill][d] = sum(r) / len(r)
    return out


def frontier(acc: dict[int, float], threshold: float) -> int:
    """Largest difficulty such that it and every easier one is solved at >= threshold (0 if none)."""
    f = 0
    for d in sorted(acc):
        if d != f + 1 or acc[d] < threshold:
            break
        f = d
    return f


def gate(prev_dev: dict[str, dict[int, float]], new_dev: dict[str, dict[int, float]], threshold: float,
         tolerance: float) -> tuple[bool, str]:
    """Promote unless mean dev accuracy on what the previous model solved drops by more than `tolerance`."""
    reasons = []
    for skill, prev in prev_dev.items():
        solved = [d for d, a in prev.items() if a >= threshold]
        if not solved:
            continue
        before = sum(prev[d] for d in solved) / len(solved)
        after = sum(new_dev[skill].get(d, 0.0) for d in solved) / len(solved)
        if before - after > tolerance:
            reasons.append(f"{skill}: dev accuracy on solved difficulties {before:.3f} -> {after:.3f} "
                           f"(drop {before - after:.3f} > tolerance {tolerance})")
    return (not reasons, "; ".join(reasons) or "no regression on solved difficulties")

