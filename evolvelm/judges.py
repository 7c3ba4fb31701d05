"""Judges: a model asked which of two outputs better follows an instruction (pairwise), or how well one
output follows it (pointwise, a 1-5 score against a rubric); and the audit on LLMBar (Zeng et al. 2024)
that a judge must pass before it may choose what a run learns from.

    evolvelm judge audit zoo:smollm2-135m-instruct --out audit.json     # or `random`, `first`

Every pairwise judgement is asked in both orders; one that flips with the order is a tie. A judge is
any backend (`hf`, `openai`, `fake`) and a method: `generate` (greedy, the verdict read from the text;
any backend) or `logprobs` (the likelier of the verdict strings "Output (a)" / "Output (b)", or of the
scores 1-5, weighted; backends that score given completions). Its version hashes the templates below,
the method and the weights, so an audit speaks for exactly one judge. A prompt longer than the model
reads gets no verdict (a wrong one, in an audit), never a truncated reading.
"""
from __future__ import annotations

import hashlib
import html
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from evolvelm.config import ConfigError

PAIRWISE = """You are evaluating two outputs for an instruction. Select the output that follows the instruction better: \
it must do exactly what the instruction asks, and be honest, precise and harmless. Do not prefer an output for its \
length or its style. Do not explain your choice, and do not say that both or neither are good.

# Instruction:
{instruction}

# Output (a):
{a}

# Output (b):
{b}

# Which output follows the instruction better? Answer with only "Output (a)" or "Output (b)"."""

POINTWISE = """Rate how well the response follows the instruction, from 1 to 5:
1: it ignores the instruction or is wrong; 2: it addresses the instruction but is mostly wrong or unhelpful;
3: it is partly right or incomplete; 4: it is right and helpful with small flaws; 5: it is right, complete and precise.

# Instruction:
{instruction}

# Response:
{response}

# Your rating? Answer with only the number."""

TEMPLATES = {"pairwise-v1": PAIRWISE, "pointwise-v1": POINTWISE}
VERDICTS = ("Output (a)", "Output (b)")
CHUNK = 16  # judgements per backend call, for the progress bar
_VERDICT = re.compile(r"output\s*\(?\s*([ab])\b|^\W*\(?([ab])\)?\W*$", re.IGNORECASE)


def judge_version(weights: str, method: str) -> str:
    """The version of a judge: its weights, its method and the text of its templates."""
    return hashlib.sha256(json.dumps([weights, method, TEMPLATES], sort_keys=True).encode()).hexdigest()[:16]


def read_verdict(text: str) -> int:
    """1 or 2 for the output a generated verdict names first ("Output (a)", "(b)", "a"); 0 for none."""
    m = _VERDICT.search(text.strip())
    return 0 if m is None else "ab".index((m.group(1) or m.group(2)).lower()) + 1


def read_score(text: str) -> float | None:
    """The first rating 1-5 in a generated text, or None."""
    m = re.search(r"[1-5]", text)
    return float(m.group()) if m else None


class Judge:
    """A backend asked for verdicts. `prefer` judges in the order given; `pairwise` in both orders."""

    def __init__(self, backend, method: str = "generate", name: str = "", quiet: bool = True):
        if method not in ("generate", "logprobs"):
            raise ConfigError(f"judge.method: {method!r} is not one of ['generate', 'logprobs']")
        self.backend, self.method, self.name, self.quiet = backend, method, name, quiet

    @property
    def version(self) -> str:
        return judge_version(self.backend.version, self.method)

    def _fits(self, prompt: str) -> bool:
        """Whether the model reads the whole prompt and a verdict (backends that say their context)."""
        context = getattr(self.backend, "context", None)
        return context is None or len(self.backend.format.prompt_ids(prompt)) + 8 <= context

    def _batched(self, prompts: list[str], desc: str, fn) -> list:
        """fn over chunks of the prompts taken shortest first (little padding), in the prompts' order;
        None for a prompt longer than the model reads (no verdict)."""
        order = sorted((i for i in range(len(prompts)) if self._fits(prompts[i])), key=lambda i: len(prompts[i]))
        out: list = [None] * len(prompts)
        for i in tqdm(range(0, len(order), CHUNK), desc=desc, disable=self.quiet or len(order) <= CHUNK, leave=False):
            rows = order[i:i + CHUNK]
            for r, value in zip(rows, fn([prompts[r] for r in rows])):
                out[r] = value
        return out

    def _ask(self, prompts: list[str], desc: str) -> list[str]:
        return self._batched(prompts, desc, lambda chunk: [g.text for g in self.backend.generate(chunk, [0] * len(chunk), 0.0, 8)])

    def _likelihoods(self, prompts: list[str], options: list[str], desc: str) -> list[list[float]]:
        """Per prompt, the log-probability of each option as the whole answer."""
        def score(chunk):
            lp = self.backend.logprobs([p for p in chunk for _ in options], [o for _ in chunk for o in options])
            return [[sum(lp[i * len(options) + j]) for j in range(len(options))] for i in range(len(chunk))]
        return self._batched(prompts, desc, score)

    def prefer(self, items: list[tuple[str, str, str]]) -> list[int]:
        """(instruction, a, b) -> 1 (a is better), 2 (b is better) or 0 (no verdict)."""
        prompts = [PAIRWISE.format(instruction=i, a=a, b=b) for i, a, b in items]
        if self.method == "generate":
            return [0 if t is None else read_verdict(t) for t in self._ask(prompts, "judge")]
        return [0 if x is None or x[0] == x[1] else 1 if x[0] > x[1] else 2
                for x in self._likelihoods(prompts, list(VERDICTS), "judge")]

    def score(self, items: list[tuple[str, str]]) -> list[float | None]:
        """(instruction, response) -> a rating in [1, 5] (logprobs: the expected rating), or None."""
        prompts = [POINTWISE.format(instruction=i, response=r) for i, r in items]
        if self.method == "generate":
            return [None if t is None else read_score(t) for t in self._ask(prompts, "score")]
        out = []
        for lps in self._likelihoods(prompts, ["1", "2", "3", "4", "5"], "score"):
            w = None if lps is None else [math.exp(x - max(lps)) for x in lps]
            out.append(None if w is None else round(sum((k + 1) * x for k, x in enumerate(w)) / sum(w), 4))
        return out

    def close(self) -> None:
        self.backend.close()


class FirstJudge:
    """Baseline: always the output shown first (every verdict flips with the order: all ties)."""

    name = version = "first"

    def prefer(self, items):
        return [1] * len(items)

    def close(self):
        pass


class RandomJudge(FirstJudge):
    """Baseline: a coin per judgement, seeded by the judgement itself."""

    def __init__(self, seed: int = 0):
        self.seed, self.name = seed, "random"
        self.version = f"random-{seed}"

    def prefer(self, items):
        return [random.Random(json.dumps([self.seed, *item])).choice((1, 2)) for item in items]


@dataclass(frozen=True)
class Pairwise:
    """One pair judged in both orders, each verdict naming the output as given (1, 2; 0: no verdict)."""

    shown: int      # the verdict with the outputs in the given order
    swapped: int    # the verdict with them swapped, mapped back to the given order

    @property
    def winner(self) -> int:
        """The output preferred in both orders; 0 (a tie) when the verdict flips or one is missing."""
        return self.shown if self.shown == self.swapped else 0


def pairwise(judge, items: list[tuple[str, str, str]]) -> list[Pairwise]:
    """Judge every (instruction, output 1, output 2) in both orders, in one batch."""
    verdicts = judge.prefer(list(items) + [(i, b, a) for i, a, b in items])
    n = len(items)
    return [Pairwise(verdicts[k], {1: 2, 2: 1}.get(verdicts[n + k], 0)) for k in range(n)]


def make_judge(ref: str, method: str = "generate", backend: str = "hf", quiet: bool = True, **options):
    """A judge by name: `first`, `random` (baselines), or a model reference on a backend."""
    if ref == "first":
        return FirstJudge()
    if ref == "random":
        return RandomJudge(options.get("seed", 0))
    from evolvelm.backends import make_backend
    from evolvelm.models import resolve

    options.pop("seed", None)
    return Judge(make_backend(backend, resolve(ref, key="judge.model"), **options), method, ref, quiet)


def llmbar(folder: str | Path, limit: int = 0) -> dict[str, list[dict]]:
    """LLMBar's subsets (Natural, Adversarial/*) from `folder`: rows of input, output_1, output_2,
    label (1 or 2), the first `limit` of each (0: all). Errors name the file and line."""
    root = Path(folder)
    files = sorted(root.glob("Natural/dataset.jsonl")) + sorted(root.glob("Adversarial/*/dataset.jsonl"))
    if not files:
        raise FileNotFoundError(f"{root}: no LLMBar subsets (Natural/dataset.jsonl, Adversarial/*/dataset.jsonl); "
                                "LLMBar is in ../shared/data/llmbar here; name its folder with --data or judge.data")
    out = {}
    for f in files:
        rows = []
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ok = all(isinstance(row.get(k), str) for k in ("input", "output_1", "output_2")) and row.get("label") in (1, 2)
            except json.JSONDecodeError:
                ok = False
            if not ok:
                raise ConfigError(f"{f}:{n}: expected a JSON object with input, output_1, output_2 (strings) and label (1 or 2)")
            rows.append(row)
        out[str(f.parent.relative_to(root))] = rows[:limit] if limit else rows
    return out


def _rates(labels: list[int], judged: list[Pairwise]) -> dict:
    n = len(labels)
    return {"pairs": n,
            "accuracy": round(sum((p.shown == y) + (p.swapped == y) for y, p in zip(labels, judged)) / (2 * n), 4),
            "both_right": round(sum(p.winner == y for y, p in zip(labels, judged)) / n, 4),
            "agreement": round(sum(p.winner != 0 for p in judged) / n, 4),
            "ties": round(sum(p.winner == 0 for p in judged) / n, 4),
            "no_verdict": round(sum((p.shown == 0) + (p.swapped == 0) for p in judged) / (2 * n), 4)}


def audit(judge, folder: str | Path, limit: int = 0) -> dict:
    """The judge on LLMBar, in both orders. Per subset: `accuracy` (share of the single-order verdicts
    that pick the better output; a missing verdict counts as wrong), `both_right` (pairs right in both
    orders), `agreement` (share of pairs judged the same in both orders), `ties` (pairs whose verdict
    flips or is missing) and `no_verdict`; then the Adversarial subsets pooled (`adversarial`) and
    everything pooled (`all`). `verdicts` keeps every pair's two verdicts (given order, swapped)."""
    t0, data = time.time(), llmbar(folder, limit)
    items = [(r["input"], r["output_1"], r["output_2"]) for rows in data.values() for r in rows]
    judged = iter(pairwise(judge, items))
    per = {name: [next(judged) for _ in rows] for name, rows in data.items()}
    labels = {name: [r["label"] for r in rows] for name, rows in data.items()}
    adv = [n for n in data if n.startswith("Adversarial")]
    pooled = lambda names: _rates([y for n in names for y in labels[n]], [p for n in names for p in per[n]])
    return {"judge": {"name": judge.name, "version": judge.version, "method": getattr(judge, "method", "baseline")},
            "data": str(folder), "limit": limit, "subsets": {n: _rates(labels[n], per[n]) for n in data},
            "adversarial": pooled(adv) if adv else None, "all": pooled(list(data)), "seconds": round(time.time() - t0, 1),
            "verdicts": {n: [[p.shown, p.swapped] for p in per[n]] for n in data}}


def verdict(report: dict, min_accuracy: float, min_agreement: float) -> tuple[bool, str]:
    """Whether an audit passes: accuracy on the Adversarial subsets (all subsets where there are none)
    and positional agreement over all pairs at least the minimums; and why, with the numbers."""
    acc = (report["adversarial"] or report["all"])["accuracy"]
    agree = report["all"]["agreement"]
    ok = acc >= min_accuracy and agree >= min_agreement
    return ok, (f"judge {report['judge']['name']} ({report['judge']['version']}): adversarial accuracy {acc} "
                f"({'>=' if acc >= min_accuracy else 'below'} judge.min_accuracy {min_accuracy}), agreement {agree} "
                f"({'>=' if agree >= min_agreement else 'below'} judge.min_agreement {min_agreement})")


def html_table(reports: list[dict]) -> str:
    """One row per judge and subset: the audit table as a self-contained HTML page."""
    head = ("<tr><th>judge</th><th>version</th><th>subset</th><th>pairs</th><th>accuracy</th><th>right in both orders</th>"
            "<th>agreement</th><th>ties</th><th>no verdict</th></tr>")
    rows = []
    for r in reports:
        for name, s in [*r["subsets"].items(), ("Adversarial (pooled)", r["adversarial"]), ("all", r["all"])]:
            if s:
                rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                    r["judge"]["name"], r["judge"]["version"], name, s["pairs"], s["accuracy"], s["both_right"], s["agreement"], s["ties"],
                    s["no_verdict"])) + "</tr>")
    return ("<!doctype html><meta charset=utf-8><title>evolvelm judge audit</title><style>body{font-family:sans-serif}"
            "td,th{padding:2px 8px;text-align:left}</style><h1>Judge audit (LLMBar)</h1><table>" + head + "".join(rows) + "</table>")


def read_audit(path: str | Path) -> dict:
    """An audit report written by `evolvelm judge audit --out`."""
    try:
        report = json.loads(Path(path).read_text())
        report["judge"]["version"], report["all"]["agreement"]
    except FileNotFoundError as e:
        raise ConfigError(f"judge.audit: {path} not found; write it with `evolvelm judge audit MODEL --out {path}`") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"judge.audit: {path} is not an audit report of `evolvelm judge audit --out` ({e})") from e
    return report


def configured_version(j) -> str:
    """The version of the judge a `judge` config section names (not self), without loading its weights."""
    if j.model in ("first", "random"):
        return make_judge(j.model).version
    from evolvelm.models import resolve
    from evolvelm.store.hashing import dir_hash

    return judge_version(dir_hash(resolve(j.model, key="judge.model")), j.method)


def check_config(cfg) -> None:
    """`validate` for a chain with the `judge` filter: the recipe builds it, and the judge passed an
    audit of exactly its version (self: the LLMBar data that every round's audit reads is there)."""
    j = cfg.judge
    if cfg.recipe != "semisup":
        raise ConfigError(f"refine.chain: the 'judge' filter runs in the semisup recipes (lmsi, star, pairs, "
                          f"self-rewarding, ...); recipe {cfg.recipe!r} does not build it")
    if j.mode == "reference" and cfg.semisup.method not in ("star", "rest-em", "pairs"):
        raise ConfigError(f"judge.mode: reference compares answers with the problem's reference answer, which only "
                          f"star, rest-em and pairs read; semisup.method {cfg.semisup.method!r} learns without them")
    if cfg.semisup.temperatures or cfg.semisup.thresholds:
        raise ConfigError("semisup.temperatures: B-STaR chooses its settings by the chain on a dev slice, without a "
                          "judge; the 'judge' filter cannot be in that chain")
    if j.model == "self":
        try:
            llmbar(j.data, 1)
        except FileNotFoundError as e:
            raise ConfigError(f"judge.data: {e}") from e
        return
    if not j.audit:
        raise ConfigError("judge.audit: a judge other than the model itself filters only after it passes an audit; "
                          f"run `evolvelm judge audit {j.model} --method {j.method} --out FILE` and set judge.audit=FILE")
    report = read_audit(j.audit)
    want = configured_version(j)
    if report["judge"]["version"] != want:
        raise ConfigError(f"judge.audit: {j.audit} audits judge version {report['judge']['version']} "
                          f"({report['judge']['name']}, {report['judge']['method']}), but the configured judge "
                          f"({j.model}, method {j.method}) is version {want}; audit this judge")
    ok, why = verdict(report, j.min_accuracy, j.min_agreement)
    if not ok:
        raise ConfigError(f"judge.audit: the judge failed its audit: {why}")


def for_round(cfg, run, state, quiet: bool = True) -> tuple[object | None, dict]:
    """The judge a round's `judge` filter asks, and its audit: self (the round's own model) is audited
    now; another judge's audit is the configured report, checked against the judge loaded. The judge is
    None when it failed (the round then uses no judgement of it)."""
    from evolvelm.models import backend_for

    j = cfg.judge
    if j.model == "self":
        judge = Judge(backend_for(cfg, run, state), j.method, "self", quiet)
        report = audit(judge, j.data, j.audit_limit)
    else:
        options = {"cache": str(run.root / "requests.sqlite"), "base_url": j.base_url, "api_key_env": j.api_key_env} \
            if j.backend == "openai" else {"device": cfg.model.device, "dtype": cfg.model.dtype}
        judge = make_judge(j.model, j.method, j.backend, quiet, **options)
        report = read_audit(j.audit)
        if report["judge"]["version"] != judge.version:
            raise ConfigError(f"judge.audit: {j.audit} audits judge version {report['judge']['version']}; the judge "
                              f"loaded is version {judge.version}")
    ok, why = verdict(report, j.min_accuracy, j.min_agreement)
    if not ok:
        judge.close()
    return judge if ok else None, {"audit": report, "passed": ok, "reason": why}
