"""A deterministic stand-in for a model, for fast engine tests.

A fake "checkpoint" is a directory with `fake.json` = {"levels": {skill: L}}: the fake answers
every problem of difficulty <= L correctly, difficulty L+1 correctly 70% of the time, L+2 30%, and
beyond that never. Wrong answers are corrupted copies of the truth (some too short, which the
length filter can catch; some with one wrong character, which it cannot). Outcomes depend only on
(weights version, prompt, seed), like a real seeded sampler.

`train` is the fake's update: training on labels of difficulty L+1 raises L when at least 95% of
them are right, and training on bad labels lowers L (the error avalanche in miniature).

Skills from data are answered the same way from their rows' reference answers (a prompt of a
registered data skill, alone, after examples, or followed by STaR's hint), so every skill has a
fast fake path.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from evolvelm.store.hashing import dir_hash
from evolvelm.tasks import LETTERS, TASKS, addition_prompt, chain_steps, expr_answer, shift_letters
from evolvelm.types import Generation

SKILL_OF = {"C": "copy", "R": "reverse", "A": "addition", "E": "expr", "S": "shift", "M": "chain", "": "echo"}  # echo: no marker
P_RIGHT = {1: 0.7, 2: 0.3}  # chance of a right answer at distance d beyond the level


_INDEX: dict = {}  # the registered data skills' prompts, rebuilt when a skill is registered


def from_data(prompt: str) -> tuple[str, int, str] | None:
    """(skill, difficulty, reference answer) of a registered data skill's prompt, asked alone, after
    examples (SemiEvol's demonstrations) or before a hint (STaR's rationalisation); None otherwise."""
    from evolvelm.tasks.data import DRAWN

    key = tuple((skill, id(parts)) for skill, parts in DRAWN.items())
    if _INDEX.get("key") != key:
        _INDEX.update(key=key, rows={r.prompt: (skill, r.difficulty or 1, r.answer)
                                     for skill, parts in DRAWN.items() for part in parts.values() for r in part})
    rows = _INDEX["rows"]
    if prompt in rows:
        return rows[prompt]
    return next((v for p, v in rows.items() if prompt.endswith(p) or prompt.startswith(p + "\n")), None)


def solve(prompt: str) -> tuple[str, int, str]:
    """(skill, difficulty, true answer) of a built-in task prompt or a data skill's."""
    known = from_data(prompt)
    if known:
        return known
    if prompt[0] not in SKILL_OF:
        return "echo", len(prompt) - 1, prompt[:-1]
    skill, body = SKILL_OF[prompt[0]], prompt[1:-1]
    if skill == "shift":
        return skill, len(body), shift_letters(body)
    if skill == "addition":  # hinted: a letter before every digit
        a, b = (x[1::2] for x in body.split("+"))
        return skill, len(a), addition_prompt(int(a[::-1]), int(b[::-1]), LETTERS.index(body[0]))[1]
    if skill == "expr":  # a second try reads E<n>=<attempt>><feedback>=; the target is n either way
        n = body.split("=")[0]
        return skill, len(n), expr_answer(n)
    if skill == "chain":  # a hinted prompt reads M<digits>?<answer>=; the steps go left to right
        digits = body.split("?")[0]
        return skill, len(digits) - 1, chain_steps(digits, list(range(len(digits))))
    return skill, len(body), body if skill == "copy" else body[::-1]


def write(path: Path, levels: dict[str, int], seed: int = 0) -> Path:
    """Create a fake checkpoint directory; fakes of different `seed` make different mistakes."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "fake.json").write_text(json.dumps({"levels": levels, "seed": seed}, sort_keys=True))
    (path / "evolvelm.json").write_text(json.dumps({"skills": {s: [1, lvl] for s, lvl in levels.items()}}))
    return path


class FakeBackend:
    """Backend protocol over a fake checkpoint."""

    def __init__(self, model_path: str, adapter: str | None = None, **_ignored):
        self.model_path = model_path
        self.levels = json.loads((Path(model_path) / "fake.json").read_text())["levels"]
        self.version = dir_hash(model_path)

    def generate(self, prompts: list[str], seeds: list[int], temperature: float,
                 max_new_tokens: int) -> list[Generation]:
        out = []
        for prompt, seed in zip(prompts, seeds):
            skill, d, truth = solve(prompt)
            rng = random.Random(f"{self.version}:{prompt}:{seed if temperature > 0 else 'greedy'}")
            beyond = d - self.levels.get(skill, 0)
            if beyond <= 0 or rng.random() < P_RIGHT.get(beyond, 0.0):
                text = truth
            elif rng.random() < 0.5:
                text = truth[:-1]
            else:
                i = rng.randrange(len(truth))
                text = truth[:i] + ("x" if truth[i] != "x" else "y") + truth[i + 1:]
            text = text[:max_new_tokens]
            out.append(Generation(text, [-0.1 if text == truth else -1.0] * (len(text) + 1), seed))
        return out

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        return [[-0.1 if c == solve(p)[2] else -1.0] * (len(c) + 1) for p, c in zip(prompts, completions)]

    def load_adapter(self, path: str) -> None:
        raise NotImplementedError("the fake backend has no adapters")

    def unload_adapter(self) -> None:
        pass

    def close(self) -> None:
        pass


def train(parent: str, examples: list, out: Path) -> list[float]:
    """Fake update: move each skill's level by the precision of its labels one step ahead."""
    meta = json.loads((Path(parent) / "fake.json").read_text())
    levels = dict(meta["levels"])
    by_skill: dict[str, list[bool]] = {}
    for ex in examples:
        skill, d, truth = solve(ex.prompt)
        if d == levels.get(skill, 0) + 1:
            by_skill.setdefault(skill, []).append(ex.answer == truth)
    losses = []
    for skill, right in by_skill.items():
        precision = sum(right) / len(right)
        levels[skill] = levels.get(skill, 0) + (1 if precision >= 0.95 else (-1 if precision < 0.8 else 0))
        losses.append(1.0 - precision)
    write(out, levels, meta.get("seed", 0))
    return losses or [0.0]


assert set(SKILL_OF.values()) == {n for n, t in TASKS.items() if not t.fixed}, "fake.solve must know every built-in task"
