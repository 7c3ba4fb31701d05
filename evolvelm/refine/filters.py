"""Filters decide which self-labelled samples are worth learning from, and say why.

Each filter takes the samples still alive in the chain and returns one Verdict per sample.
Only `oracle` reads the true answer: it is the comparison arm, never an unsupervised filter.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable

from evolvelm.tasks import get_task
from evolvelm.types import Problem, Sample, Verdict


@dataclass(frozen=True)
class FilterContext:
    """What filters may consult besides the samples."""

    samples_per_problem: int    # k, the number of answers drawn per problem
    vote_agreement: float       # share of the k answers that must agree for `vote` to keep them
    min_agreement: float = 0.0  # `agreement`: share of a skill's problems that must still hold a label
    problems: dict[str, int] = field(default_factory=dict)  # skill -> problems acquired this round


def is_correct(s: Sample) -> bool:
    """The task's own checker applied to a sample's label (reads the benchmark-only true answer)."""
    return get_task(s.skill).check(Problem(s.skill, s.difficulty, s.prompt, s.true_answer), s.completion)


def label_precision(samples: list[Sample]) -> float | None:
    """Share of `samples` whose label is correct; None for an empty list."""
    return sum(map(is_correct, samples)) / len(samples) if samples else None


def oracle(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Keep samples the task's checker accepts (needs true labels: comparison arm only)."""
    return [Verdict("oracle", "1", ok, "checker accepts" if ok else "checker rejects") for ok in map(is_correct, samples)]


def length(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Drop answers whose length is implausible for the problem (wrong long answers run short)."""
    out = []
    for s in samples:
        lo, hi = get_task(s.skill).answer_lengths(s.difficulty)
        ok = lo <= len(s.completion) <= hi
        out.append(Verdict("length", "1", ok, f"length {len(s.completion)} {'in' if ok else 'outside'} [{lo}, {hi}]"))
    return out


def vote(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Keep the majority answer of each problem when enough of its k samples agree on it.

    Agreement is counted over all k samples drawn, so samples dropped earlier in the chain count
    as dissent: a problem whose answers were mostly filtered out is not trusted.
    """
    by_prompt: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in samples:
        by_prompt[(s.skill, s.prompt)].append(s)
    majority = {}
    for key, group in by_prompt.items():
        # ties are broken by the earliest sample index, so the verdict does not depend on list order
        counts = Counter(s.completion for s in group)
        first = {c: min(s.k for s in group if s.completion == c) for c in counts}
        majority[key] = max(counts, key=lambda c: (counts[c], -first[c])), counts
    out = []
    for s in samples:
        answer, counts = majority[(s.skill, s.prompt)]
        share = counts[answer] / ctx.samples_per_problem
        if s.completion != answer:
            out.append(Verdict("vote", "1", False, f"minority answer (majority has {counts[answer]}/{ctx.samples_per_problem})"))
        elif share < ctx.vote_agreement:
            out.append(Verdict("vote", "1", False, f"agreement {counts[answer]}/{ctx.samples_per_problem} below {ctx.vote_agreement}"))
        else:
            out.append(Verdict("vote", "1", True, f"majority {counts[answer]}/{ctx.samples_per_problem}"))
    return out


def dedup(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Keep the first sample of each (prompt, answer) in acquisition order; drop later copies."""
    first: dict[tuple[str, str, str], str] = {}
    out = []
    for s in samples:
        key = (s.skill, s.prompt, s.completion)
        out.append(Verdict("dedup", "1", key not in first, f"duplicate of {first[key]}" if key in first else "first occurrence"))
        first.setdefault(key, s.id)
    return out


def agreement(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Drop all of a skill's labels this round when too few of its problems still hold one.

    An unsupervised avalanche guard: when the model's answers stop agreeing on most problems, the
    few that do agree are likely its systematic mistakes, and training on them would snowball.
    """
    share = {skill: len({s.prompt for s in samples if s.skill == skill}) / n for skill, n in ctx.problems.items()}
    return [Verdict("agreement", "1", share[s.skill] >= ctx.min_agreement,
                    f"{s.skill}: {share[s.skill]:.2f} of problems hold a label "
                    f"({'>=' if share[s.skill] >= ctx.min_agreement else 'below'} {ctx.min_agreement})") for s in samples]


FILTERS: dict[str, Callable[[list[Sample], FilterContext], list[Verdict]]] = {
    "oracle": oracle, "length": length, "vote": vote, "dedup": dedup, "agreement": agreement,
}


def run_chain(chain: list[str], samples: list[Sample], ctx: FilterContext) -> dict[str, dict[str, int]]:
    """Apply filters in order, appending verdicts to each sample and updating `kept`.

    Returns per filter the number of samples it kept and dropped.
    """
    counts = {}
    alive = list(samples)
    for name in chain:
        verdicts = FILTERS[name](alive, ctx)
        for s, v in zip(alive, verdicts):
            s.verdicts.append(v)
            s.kept = s.kept and v.kept
        counts[name] = {"kept": sum(v.kept for v in verdicts), "dropped": sum(not v.kept for v in verdicts)}
        alive = [s for s in alive if s.kept]
    return counts
