"""Held-out evaluation: exact-match accuracy per skill and difficulty, the frontier, the gate.

Two fixed splits per difficulty, both drawn from the eval seed and both excluded from training:
`test` is what we report; `dev` is what the gate decides on, so that no decision is made on the
numbers we report.
"""
from __future__ import annotations

from functools import lru_cache

from tqdm import tqdm

from evolvelm.evaluate.calibration import calibration, confidences
from evolvelm.tasks import Task, get_task
from evolvelm.types import Problem, content_id

CHUNK = 512  # prompts per backend call; one progress-bar tick each


@lru_cache(maxsize=4096)
def splits(task: Task, difficulty: int, test_n: int, dev_n: int, seed: int,
           avoid: frozenset[str] = frozenset()) -> dict[str, tuple[Problem, ...]]:
    """The fixed `test` and `dev` problems of one difficulty, disjoint from each other and from the
    prompts in `avoid` (a labeled set the model was trained on).

    Each split takes at most a quarter of the difficulty's distinct prompts, so that training
    (which excludes both) always keeps at least half of them: otherwise tiny difficulties, such as
    the 26 strings of length 1, would vanish from training and be forgotten.
    """
    if task.fixed:  # a skill from data: the splits drawn from its rows (evolvelm.tasks.data)
        return {"test": tuple(task.split("test", difficulty)), "dev": tuple(task.split("dev", difficulty))}
    cap = max(1, task.space(difficulty) // 4)
    test = task.problems(difficulty, min(test_n, cap), int(content_id("test", seed), 16) % 2**31, exclude=avoid)
    dev = task.problems(difficulty, min(dev_n, cap), int(content_id("dev", seed), 16) % 2**31,
                        exclude=avoid | frozenset(p.prompt for p in test))
    return {"test": tuple(test), "dev": tuple(dev)}


def held_out_prompts(task: Task, max_difficulty: int, test_n: int, dev_n: int, seed: int,
                     avoid: frozenset[str] = frozenset()) -> dict[int, frozenset[str]]:
    """Per difficulty, every prompt of both splits: training draws must avoid these."""
    return {d: frozenset(p.prompt for split in splits(task, d, test_n, dev_n, seed, avoid).values() for p in split)
            for d in range(1, max_difficulty + 1)}


def right_answers(backend, skills: list[str], difficulties: dict[str, range], split: str, test_n: int, dev_n: int,
                  seed: int, quiet: bool = False, avoid: frozenset[str] = frozenset(),
                  confidence: dict | None = None, finals: dict | None = None) -> dict[str, dict[int, list[bool]]]:
    """Per skill and difficulty, whether the greedy answer to each problem of one fixed split ("test" or
    "dev") is right, in the split's order; `confidence`, when given, receives each answer's
    confidences in the same shape (evolvelm.evaluate.calibration), and `finals` a short hash of each
    answer's final answer (what the checker and the vote read: `Task.answer_of`)."""
    groups = {(s, d): splits(get_task(s), d, test_n, dev_n, seed, avoid)[split] for s in skills for d in difficulties[s]}
    bar = tqdm(total=sum(map(len, groups.values())), desc=f"eval {split}", disable=quiet, leave=False)
    out: dict[str, dict[int, list[bool]]] = {s: {} for s in skills}
    # one backend call per (skill, difficulty) and chunk, so max_new_tokens fits the task
    for (skill, d), probs in groups.items():
        task, right, conf, ends = get_task(skill), [], [], []
        for i in range(0, len(probs), CHUNK):
            chunk = probs[i:i + CHUNK]
            gens = backend.generate([p.prompt for p in chunk], [0] * len(chunk), 0.0, task.max_new_tokens(d))
            right += task.check_many(list(chunk), [g.text for g in gens])
            conf += [confidences(g.logprobs) for g in gens]
            ends += [content_id(task.answer_of(g.text))[:8] for g in gens]
            bar.update(len(chunk))
        out[skill][d] = right
        if confidence is not None:
            confidence.setdefault(skill, {})[d] = conf
        if finals is not None:
            finals.setdefault(skill, {})[d] = ends
    bar.close()
    return out


def accuracy(backend, skills: list[str], difficulties: dict[str, range], split: str, test_n: int, dev_n: int,
             seed: int, quiet: bool = False, avoid: frozenset[str] = frozenset(),
             calibrated: dict | None = None) -> dict[str, dict[int, float]]:
    """Greedy exact-match accuracy per skill per difficulty on one fixed split ("test" or "dev");
    `calibrated`, when given, receives the calibration of the answers' confidences per skill."""
    conf: dict = {}
    right = right_answers(backend, skills, difficulties, split, test_n, dev_n, seed, quiet, avoid, conf)
    if calibrated is not None:
        calibrated.update(calibration(right, conf))
    return rates(right)


def rates(right: dict[str, dict[int, list[bool]]]) -> dict[str, dict[int, float]]:
    """Per skill and difficulty, the share of right answers."""
    return {s: {d: sum(r) / len(r) for d, r in by_d.items() if r} for s, by_d in right.items()}


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
    """Promote unless dev accuracy on some difficulty the previous model solved drops by more than `tolerance`.

    Compared per difficulty, not on average: a collapse on one short length must not hide behind
    many unchanged ones. Difficulty keys may be ints or, as read back from a manifest, strings.
    """
    reasons = []
    for skill, prev in prev_dev.items():
        new = {int(d): a for d, a in new_dev[skill].items()}
        for d, before in sorted((int(d), a) for d, a in prev.items()):
            after = new.get(d, 0.0)
            if before >= threshold and before - after > tolerance + 1e-9:  # 1e-9: float noise
                reasons.append(f"{skill} difficulty {d}: dev accuracy {before:.3f} -> {after:.3f} "
                               f"(drop {before - after:.3f} > tolerance {tolerance})")
    return (not reasons, "; ".join(reasons) or "no regression on solved difficulties")


def paired_gate(before: list[bool], after: list[bool], z: float, tolerance: float) -> tuple[bool, str]:
    """Promote when the candidate's gain on the same dev problems, pooled over skills and difficulties,
    reaches `z` standard errors of the paired difference, less `tolerance` x problems:
    b - c >= z * sqrt(b + c) - tolerance * n, where b counts the problems only the candidate gets
    right and c those only the kept model does (the sign test behind McNemar's). z = 0 and
    tolerance = 0: promote when it gets at least as many right. Pooled, a difficulty with few distinct
    problems weighs what its problems weigh, not as much as one with thousands."""
    b = sum(a and not p for p, a in zip(before, after))
    c = sum(p and not a for p, a in zip(before, after))
    need = z * (b + c) ** 0.5 - tolerance * len(before)
    ok = b - c >= need - 1e-9  # 1e-9: float noise
    return (ok, f"{'gain' if ok else 'too little gain'} on {len(before)} dev problems: {b} newly right, {c} newly wrong "
            f"(net {b - c:+d}; needed {need:+.1f} = {z} x sqrt({b + c}) - {tolerance} x {len(before)})")


def dev_right(run, rnd: int) -> list[bool]:
    """Which dev problems round `rnd`'s model got right, pooled over skills and difficulties in a fixed
    order (recipes whose eval stores `dev_right`: semisup)."""
    marks = run.done(rnd, "eval")["dev_right"]
    return [c == "1" for s in sorted(marks) for d in sorted(marks[s], key=int) for c in marks[s][d]]
