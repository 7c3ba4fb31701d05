"""How well the model's confidence in its held-out answers tracks whether they are right.

A confidence per greedy answer, from its token log-probabilities:
    sequence   the probability of the whole answer, exp(sum of its tokens' log-probs)
    token      the geometric mean of its tokens' probabilities, exp(mean log-prob): what the
               `confidence` filter and SemiEvol's `consistency` rank sampled answers by
Per skill and kind of confidence, over the test split's answers (every difficulty pooled):
    ece        expected calibration error: answers binned by confidence (BINS equal-width bins), the
               mean over answers of |accuracy of its bin - mean confidence of its bin|
    brier      mean squared difference between the confidence and the answer being right (1) or not (0)
    auroc      the chance that a right answer has a higher confidence than a wrong one (ties count
               half; None when every answer is right, or none is)
    bins       the reliability diagram: per non-empty bin, [lower edge, answers, mean confidence, accuracy]

`recalibrated` maps confidences through the reliability diagram of answers already checked
(histogram binning): recipe semisup scores a third kind, `recalibrated`, the token confidence mapped
by the model's own dev answers (fitted on dev, scored on test), and the model's estimates of its own
accuracy rest on it (predict-the-update, evolvelm.recipes.semisup).
"""
from __future__ import annotations

import math

BINS = 10
KINDS = ("sequence", "token")


def confidences(logprobs: list[float]) -> dict[str, float]:
    """Both kinds of confidence of one answer from its tokens' log-probabilities (an empty answer: 0)."""
    if not logprobs:
        return {"sequence": 0.0, "token": 0.0}
    return {"sequence": math.exp(sum(logprobs)), "token": math.exp(sum(logprobs) / len(logprobs))}


def metrics(conf: list[float], right: list[bool], bins: int = BINS) -> dict:
    """ECE, Brier score, AUROC and the reliability bins of confidences against right answers."""
    n = len(conf)
    if n == 0:
        return {"n": 0, "accuracy": None, "confidence": None, "ece": None, "brier": None, "auroc": None, "bins": []}
    table: dict[int, list[tuple[float, bool]]] = {}
    for c, r in zip(conf, right):
        table.setdefault(min(int(c * bins), bins - 1), []).append((c, r))
    rows, ece = [], 0.0
    for b in sorted(table):
        group = table[b]
        mean_c, acc = sum(c for c, _ in group) / len(group), sum(r for _, r in group) / len(group)
        ece += len(group) / n * abs(acc - mean_c)
        rows.append([b / bins, len(group), round(mean_c, 4), round(acc, 4)])
    return {"n": n, "accuracy": round(sum(right) / n, 4), "confidence": round(sum(conf) / n, 4),
            "ece": round(ece, 4), "brier": round(sum((c - r) ** 2 for c, r in zip(conf, right)) / n, 4),
            "auroc": auroc(conf, right), "bins": rows}


def recalibrated(seen_conf: list[float], seen_right: list[bool], conf: list[float], bins: int = BINS) -> list[float]:
    """Each confidence in `conf` as the accuracy of the seen answers whose confidence fell in the same
    bin (histogram binning, Zadrozny and Elkan 2001), shrunk toward the confidence itself by one
    pseudo-answer so that a bin of one answer does not say 0 or 1; a bin no seen answer fell in
    keeps the confidence as it is."""
    table: dict[int, list[int]] = {}
    for c, r in zip(seen_conf, seen_right):
        n_right = table.setdefault(min(int(c * bins), bins - 1), [0, 0])
        n_right[0] += 1
        n_right[1] += r
    out = []
    for c in conf:
        n, right = table.get(min(int(c * bins), bins - 1), (0, 0))
        out.append((right + c) / (n + 1))
    return out


def auroc(conf: list[float], right: list[bool]) -> float | None:
    """Area under the ROC curve of confidence for right vs wrong answers (Mann-Whitney, ties half)."""
    pos = sorted(c for c, r in zip(conf, right) if r)
    neg = sorted(c for c, r in zip(conf, right) if not r)
    if not pos or not neg:
        return None
    wins, i, j = 0.0, 0, 0
    for c in pos:  # negatives below c count 1, equal to c count 1/2
        while i < len(neg) and neg[i] < c:
            i += 1
        j = max(j, i)
        while j < len(neg) and neg[j] == c:
            j += 1
        wins += i + (j - i) / 2
    return round(wins / (len(pos) * len(neg)), 4)


def calibration(right: dict[str, dict[int, list[bool]]], conf: dict[str, dict[int, list[dict]]]) -> dict:
    """Per skill and kind of confidence (KINDS, and any other the answers' confidences carry), `metrics`
    over every difficulty's answers pooled."""
    out = {}
    for skill, by_d in right.items():
        r = [x for d in sorted(by_d) for x in by_d[d]]
        c = [x for d in sorted(by_d) for x in conf[skill][d]]
        out[skill] = {kind: metrics([x[kind] for x in c], r) for kind in (c[0] if c else KINDS)}
    return out
