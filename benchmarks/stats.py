"""Statistics the benchmarks share."""
from __future__ import annotations

import math


def mean_se(xs: list[float]) -> tuple[float, float]:
    """The mean of `xs` and its standard error (nan with fewer than two values)."""
    mean = sum(xs) / len(xs)
    se = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else float("nan")
    return mean, se
