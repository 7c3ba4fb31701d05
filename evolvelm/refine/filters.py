"""Filters decide which self-labelled samples are worth learning from, and say why.

Each filter takes the samples still alive in the chain and returns one Verdict per sample.
Only `oracle` reads the true answer: it is the comparison arm, never an unsupervised filter.
"""
from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable

from evolvelm.tasks import get_task
from evolvelm.types import Problem, Sample, Verdict


@dataclass(frozen=True)
class FilterContext:
    """What filters may consult besides the samples."""

    samples_per_problem: int    # k, the number of answers each model draws per problem
    vote_agreement: float       # share of the k answers that must agree for `vote` to keep them
    min_agreement: float = 0.0  # `agreement`: share of a difficulty's problems that must still hold a label
    problems: dict[tuple[str, int], int] = field(default_factory=dict)  # (skill, difficulty) -> problems acquired this round
    members: int = 1            # models in the voting population (the model itself and its voters)
    model_vote_min: int = 0     # `model_vote`: models that must agree on a label (0 = all of them)
    min_diversity: float = 0.0  # `agreement`: share of distinct labels among a skill's labelled problems
    max_per_problem: int = 0    # `cap`: samples kept per problem at most (0 = no cap)
    nll_quantile: float = 0.3   # `consistency`: inconsistent samples kept in this lowest quantile of mean token NLL
    judge: object = None        # `judge`: an audited judge (evolvelm.judges), None when it failed its audit
    judge_mode: str = "score"   # `judge`: score (a rating) | samples (pairwise against the problem's other answers)
                                # | reference (pairwise against the problem's reference answer)
    judge_threshold: float = 4.0  # `judge`, score: the lowest rating kept
    judge_note: str = ""        # `judge`: why there is no judge this round (its failed audit)
    keep_share: float = 0.5     # `confidence`, `random`: share of the samples reaching them that they keep
    keep_as: str = ""           # `confidence`, `random`: keep as many as this filter would keep of the same
                                # samples instead (comparisons at an equal number kept)
    seed: int = 0               # `random`: the seed of its draw (the recipe derives it from the round)


def judged(samples: list[Sample]) -> list[tuple[bool, str]]:
    """The task's own checker on each sample's label, batched per skill: (right, why). Reads the
    benchmark-only true answer unless the task has a judge that needs none (it executes the answer)."""
    out: list[tuple[bool, str]] = [(False, "")] * len(samples)
    by_skill: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_skill[s.skill].append(i)
    for skill, idx in by_skill.items():
        task = get_task(skill)
        probs = [Problem(skill, samples[i].difficulty, samples[i].prompt, samples[i].true_answer) for i in idx]
        answers = [samples[i].completion for i in idx]
        results = task.judge(probs, answers) if task.judge else [
            (ok, "checker accepts" if ok else "checker rejects") for ok in task.check_many(probs, answers)]
        for i, r in zip(idx, results):
            out[i] = r
    return out


def unanimous_share(samples: list[Sample]) -> float:
    """Share of the problems in `samples` whose answers (every sample, every model) are all the same."""
    answers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in samples:
        answers[(s.skill, s.prompt)].add(s.completion)
    return sum(len(a) == 1 for a in answers.values()) / len(answers) if answers else 0.0


def oracle(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Keep samples the task's checker accepts. It reads true labels: a comparison arm beside the
    unsupervised filters; or the supervision itself where the problems come with answers but not
    rationales (the verifier-filtered recipes star and rest-em)."""
    return [Verdict("oracle", "1", ok, why) for ok, why in judged(samples)]


def verify(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Keep samples an executor verifies: the task's judge, which needs no true label (skills with a
    judge only, e.g. expr). Unsupervised: this is what the environment tells the model."""
    for s in samples:
        if get_task(s.skill).judge is None:
            raise ValueError(f"filter 'verify' needs a skill whose checker executes answers; {s.skill!r} "
                             "compares with true labels (use 'oracle' for that comparison arm)")
    return [Verdict("verify", get_task(s.skill).version, ok, why) for s, (ok, why) in zip(samples, judged(samples))]


def length(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Drop answers whose length is implausible for the problem (wrong long answers run short)."""
    out = []
    for s in samples:
        lo, hi = get_task(s.skill).answer_lengths(s.difficulty)
        ok = lo <= len(s.completion) <= hi
        out.append(Verdict("length", "1", ok, f"length {len(s.completion)} {'in' if ok else 'outside'} [{lo}, {hi}]"))
    return out


def final(s: Sample) -> str:
    """The answer a sample gives: its completion, or what follows its scratchpad (tasks with `final`)."""
    return get_task(s.skill).answer_of(s.completion)


def majority(group: list[Sample]) -> tuple[str, Counter]:
    """The most common final answer of `group` (ties: the one drawn first) and all the counts.
    Samples that reach one answer through different scratchpads vote for it together."""
    counts = Counter(final(s) for s in group)
    first = {c: min(s.k for s in group if final(s) == c) for c in counts}
    return max(counts, key=lambda c: (counts[c], -first[c])), counts


def vote(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Keep the majority answer of each problem when enough of one model's k samples agree on it.

    Votes are counted per model (with voters, each member votes among its own samples).
    Agreement is counted over all k samples drawn, so samples dropped earlier in the chain count
    as dissent: a problem whose answers were mostly filtered out is not trusted.
    """
    by_prompt: dict[tuple[str, str, int], list[Sample]] = defaultdict(list)
    for s in samples:
        by_prompt[(s.skill, s.prompt, s.member)].append(s)
    top = {key: majority(group) for key, group in by_prompt.items()}
    out = []
    for s in samples:
        answer, counts = top[(s.skill, s.prompt, s.member)]
        share = counts[answer] / ctx.samples_per_problem
        if final(s) != answer:
            out.append(Verdict("vote", "1", False, f"minority answer (majority has {counts[answer]}/{ctx.samples_per_problem})"))
        elif share < ctx.vote_agreement:
            out.append(Verdict("vote", "1", False, f"agreement {counts[answer]}/{ctx.samples_per_problem} below {ctx.vote_agreement}"))
        else:
            out.append(Verdict("vote", "1", True, f"majority {counts[answer]}/{ctx.samples_per_problem}"))
    return out


def model_vote(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Keep a label when at least `model_vote_min` of the population's models give it (m of n).

    Each model votes with its majority answer among its samples still alive in the chain; a model
    whose samples were all dropped abstains, which counts against the label. Independently seeded
    models make different mistakes, so their agreement is the strongest unsupervised filter of
    Lee, Cai et al. (2025).
    """
    need = ctx.model_vote_min or ctx.members
    by_member: dict[tuple[str, str], dict[int, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        by_member[(s.skill, s.prompt)][s.member].append(s)
    votes = {key: Counter(majority(group)[0] for group in members.values()) for key, members in by_member.items()}
    out = []
    for s in samples:
        n = votes[(s.skill, s.prompt)][final(s)]
        out.append(Verdict("model_vote", "1", n >= need, f"{n} of {ctx.members} models give this answer "
                                                          f"({'>=' if n >= need else 'below'} {need})"))
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


def cap(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Keep at most `max_per_problem` samples of each problem, the first drawn (ReST-EM's cap, so that
    easy problems do not crowd out the hard ones)."""
    seen: Counter = Counter()
    out = []
    for s in samples:
        seen[(s.skill, s.prompt)] += 1
        ok = not ctx.max_per_problem or seen[(s.skill, s.prompt)] <= ctx.max_per_problem
        out.append(Verdict("cap", "1", ok, f"sample {seen[(s.skill, s.prompt)]} of its problem "
                                           f"({'within' if ok else 'over'} the cap {ctx.max_per_problem})"))
    return out


def consistency(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """SemiEvol's selection: every sample of a problem whose final answers all agree is kept; of the
    other problems' samples, those whose mean token negative log-likelihood is in the lowest
    `nll_quantile` of all such samples this round (the model was most confident in them)."""
    answers: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for s in samples:
        answers[(s.skill, s.prompt, s.member)].add(final(s))
    mixed = sorted(-s.mean_logprob for s in samples if len(answers[(s.skill, s.prompt, s.member)]) > 1)
    cut = mixed[max(0, int(ctx.nll_quantile * len(mixed)) - 1)] if mixed and ctx.nll_quantile > 0 else float("-inf")
    out = []
    for s in samples:
        if len(answers[(s.skill, s.prompt, s.member)]) == 1:
            out.append(Verdict("consistency", "1", True, "every answer agrees"))
        else:
            ok = -s.mean_logprob <= cut
            out.append(Verdict("consistency", "1", ok, f"answers disagree; NLL {-s.mean_logprob:.3f} "
                                                       f"{'within' if ok else 'above'} the {ctx.nll_quantile} quantile {cut:.3f}"))
    return out


def agreement(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Drop all of a difficulty's labels this round (per skill) when too few of its problems still
    hold one, or when the labels lost their diversity (many problems given the same answer).

    An unsupervised avalanche guard: when the model's answers stop agreeing on most problems, the
    few that do agree are likely its systematic mistakes, and training on them would snowball.
    """
    reason = {}
    for (skill, d), n in ctx.problems.items():
        labels = {s.prompt: s.completion for s in samples if (s.skill, s.difficulty) == (skill, d)}
        share, diversity = len(labels) / n, len(set(labels.values())) / max(1, len(labels))
        ok = share >= ctx.min_agreement and diversity >= ctx.min_diversity
        reason[(skill, d)] = ok, (f"{skill} {d}: {share:.3f} of problems hold a label (min {ctx.min_agreement}), "
                                  f"{diversity:.2f} of those labels distinct (min {ctx.min_diversity})")
    return [Verdict("agreement", "3", *reason[(s.skill, s.difficulty)]) for s in samples]


def judge(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Keep what an audited judge prefers: answers it rates at least `judge_threshold` (mode score),
    answers preferred to the problem's other distinct answers in more pairwise judgements than they lose
    (mode samples; every pair asked in both orders, a flip is a tie; an answer alone is not compared),
    or answers preferred to the problem's reference answer in both orders (mode reference: recipes
    whose problems come with answers; the reference itself is kept).
    Without a judge (it failed its audit this round) nothing is kept, and the verdicts say why."""
    from evolvelm.judges import pairwise

    if ctx.judge is None:
        return [Verdict("judge", "-", False, ctx.judge_note or "no audited judge") for _ in samples]
    version = ctx.judge.version
    if ctx.judge_mode == "reference":
        differ = [s for s in samples if s.completion != s.true_answer]
        winners = iter(p.winner for p in pairwise(ctx.judge, [(s.prompt, s.completion, s.true_answer) for s in differ]))
        out = []
        for s in samples:
            w = 1 if s.completion == s.true_answer else next(winners)
            out.append(Verdict("judge", version, w == 1, "the reference itself" if s.completion == s.true_answer else
                               {1: "preferred to the reference in both orders", 2: "the reference is preferred"}.get(
                                   w, "tied with the reference (the verdict flips with the order)")))
        return out
    if ctx.judge_mode == "score":
        scores = ctx.judge.score([(s.prompt, s.completion) for s in samples])
        return [Verdict("judge", version, x is not None and x >= ctx.judge_threshold,
                        f"rated {x} (keep >= {ctx.judge_threshold})" if x is not None else "no rating in the judge's answer")
                for x in scores]
    answers: dict[tuple[str, str, int], list[str]] = defaultdict(list)
    for s in samples:
        if s.completion not in answers[(s.skill, s.prompt, s.member)]:
            answers[(s.skill, s.prompt, s.member)].append(s.completion)
    pairs = [(key, a, b) for key, group in answers.items() for i, a in enumerate(group) for b in group[i + 1:]]
    tally: dict[tuple, Counter] = defaultdict(Counter)
    for (key, a, b), p in zip(pairs, pairwise(ctx.judge, [(key[1], a, b) for key, a, b in pairs])):
        for mine, result in ((a, {1: "won", 2: "lost"}), (b, {1: "lost", 2: "won"})):
            tally[(key, mine)][result.get(p.winner, "tied")] += 1
    out = []
    for s in samples:
        t = tally[((s.skill, s.prompt, s.member), s.completion)]
        if not t:
            out.append(Verdict("judge", version, False, "no other answer to compare it with"))
        else:
            out.append(Verdict("judge", version, t["won"] > t["lost"], f"preferred in {t['won']}, beaten in {t['lost']}, "
                                                                     f"tied in {t['tied']} judgements against the problem's other answers"))
    return out


def quota(samples: list[Sample], ctx: FilterContext) -> tuple[int, str]:
    """How many samples `confidence` and `random` keep, and how that was decided."""
    if ctx.keep_as:
        n = sum(v.kept for v in FILTERS[ctx.keep_as](samples, ctx))
        return n, f"as many as {ctx.keep_as} keeps: {n} of {len(samples)}"
    n = round(ctx.keep_share * len(samples))
    return n, f"share {ctx.keep_share}: {n} of {len(samples)}"


def confidence(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Keep the answers the model is most confident in: the highest geometric mean token probability,
    exp(mean token log-prob), `quota` of them (ties broken by acquisition order). Unsupervised: the
    model's own probabilities, the confidence whose calibration every eval reports."""
    n, how = quota(samples, ctx)
    order = sorted(range(len(samples)), key=lambda i: -samples[i].mean_logprob)
    rank = {i: r for r, i in enumerate(order)}
    return [Verdict("confidence", "1", rank[i] < n, f"confidence {math.exp(s.mean_logprob):.3f}, rank {rank[i] + 1} "
                                                    f"({how})") for i, s in enumerate(samples)]


def random_pick(samples: list[Sample], ctx: FilterContext) -> list[Verdict]:
    """Keep `quota` samples drawn at random (seeded by `ctx.seed`): the baseline a selection must beat."""
    n, how = quota(samples, ctx)
    chosen = set(random.Random(ctx.seed).sample(range(len(samples)), n))
    return [Verdict("random", "1", i in chosen, f"{'drawn' if i in chosen else 'not drawn'} ({how})")
            for i in range(len(samples))]


FILTERS: dict[str, Callable[[list[Sample], FilterContext], list[Verdict]]] = {
    "oracle": oracle, "length": length, "vote": vote, "model_vote": model_vote, "dedup": dedup,
    "agreement": agreement, "verify": verify, "cap": cap, "consistency": consistency, "judge": judge,
    "confidence": confidence, "random": random_pick,
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
