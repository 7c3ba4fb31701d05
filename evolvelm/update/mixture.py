"""The training mixture of a round: the newest round's labels against everything learned before.

Following Lee, Cai et al. (2025), the newest round's kept labels get `update.new_weight` of the
sampling probability (0.5 by default) and the older data shares the rest evenly: labelled
problems from the base model's own training range, and the kept labels of every promoted round.
With `update.original_weight`, the base range keeps that share of its own however many labels the
rounds add, so that short problems are not crowded out and forgotten.
Labels from rolled-back rounds are never trained on again.
"""
from __future__ import annotations

from dataclasses import replace

from evolvelm.acquire.sampling import derive_seed
from evolvelm.config import Config
from evolvelm.evaluate.suite import held_out_prompts
from evolvelm.tasks import get_task
from evolvelm.types import Example


def original_data(cfg: Config, levels: dict[str, int]) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from the base model's trained range, drawn away from the held-out splits;
    for a skill from data, its labeled split (the only labels it has)."""
    out = []
    for skill, top in levels.items():
        task = get_task(skill)
        if task.fixed or not top:
            out += [(p.prompt, p.answer) for p in task.split("labeled")]
            continue
        held = held_out_prompts(task, top, cfg.eval.problems, cfg.eval.dev_problems, cfg.eval.seed)
        per = max(1, cfg.update.original // top)
        for d in range(1, top + 1):
            out += [(p.prompt, p.answer) for p in task.problems(d, per, derive_seed(cfg.seed, "original", skill, d), held[d])]
    return out


def mixture(cfg: Config, run, rnd: int) -> tuple[list[Example], int]:
    """Weighted examples for round `rnd` and how many of them are new this round."""
    base_levels = run.done(0, "gate")["levels"]
    promoted = [r["round"] for r in run.manifest() if r["stage"] == "gate" and r["round"] > 0
                and r["info"]["promoted"] and r["round"] < rnd]
    original = [Example(p, a) for p, a in original_data(cfg, base_levels)]
    earlier = [Example(s.prompt, s.completion) for r in promoted for s in run.samples(r) if s.kept]
    new = [Example(s.prompt, s.completion) for s in run.samples(rnd) if s.kept]
    if not new:
        return original + earlier, 0
    u = cfg.update
    old = [(original, u.original_weight), (earlier, 1 - u.new_weight - u.original_weight)] if u.original_weight \
        else [(original + earlier, 1 - u.new_weight)]
    return weighted(old + [(new, u.new_weight)]), len(new)


def weighted(parts: list[tuple[list[Example], float]]) -> list[Example]:
    """One list of examples from (examples, share) parts: each part's examples split its share of the
    sampling weight evenly; empty parts drop out and the shares of the others are renormalised."""
    total = sum(share for xs, share in parts if xs)
    return [replace(x, weight=share / total / len(xs)) for xs, share in parts if xs for x in xs]
