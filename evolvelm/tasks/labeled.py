"""Labeled problems: a labeled set read from JSON lines, drawn for a zoo model, and written out before a
prompt as examples (SemiEvol's demonstrations; the base model's training in `zoo.train`). Below the
recipes, since both the semisup recipe and the zoo's training script use them."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from evolvelm.acquire.sampling import derive_seed
from evolvelm.config import ConfigError
from evolvelm.tasks import get_task
from evolvelm.types import Problem


def draw_labeled(skill: str, n: int, max_difficulty: int, exclude: dict[int, frozenset[str]]) -> list[Problem]:
    """`n` labeled problems spread evenly over difficulties 1..max_difficulty, none in `exclude` (fewer
    where a difficulty has too few distinct problems left). How zoo:chain's labeled.jsonl was drawn."""
    per = max(1, n // max_difficulty)
    return [p for d in range(1, max_difficulty + 1)
            for p in get_task(skill).problems(d, per, derive_seed("labeled", skill, d), exclude=exclude[d])]


def read_labeled(path: Path) -> list[Problem]:
    """A labeled set: JSON lines of {"skill", "difficulty", "prompt", "answer"}; errors name the line."""
    if not path.is_file():
        raise ConfigError(f"semisup.labeled_file: labeled set not found: {path}")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(Problem(str(row["skill"]), int(row["difficulty"]), str(row["prompt"]), str(row["answer"])))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}:{i}: not a labeled problem ({type(e).__name__}: {e}); expected JSON with "
                              f"skill, difficulty, prompt, answer") from e
    return out


def write_labeled(path: Path, problems: list[Problem]) -> None:
    """Problems as `read_labeled` reads them back."""
    path.write_text("".join(json.dumps(asdict(p)) + "\n" for p in problems))


def demonstrations(prompt: str, labeled: list[Problem], n: int) -> str:
    """SemiEvol's in-context propagation: the `n` labeled problems nearest to `prompt` (most characters
    in common, then closest length), written out with their answers, to go before it."""
    want = Counter(prompt)
    near = sorted((i for i, p in enumerate(labeled) if p.prompt != prompt),
                  key=lambda i: (-sum((Counter(labeled[i].prompt) & want).values()), abs(len(labeled[i].prompt) - len(prompt)), i))
    return written([labeled[i] for i in near[:n]])


def written(problems: list[Problem]) -> str:
    """Labeled problems with their answers, one after another: how examples go before a prompt, both
    in SemiEvol's demonstrations and in the base model's training (`zoo.train`). Character-level
    built-ins run on (prompt + answer); a skill from data's are natural language, so each example is
    its prompt, its answer on the next line, and a blank line."""
    return "".join(example_text(p.prompt, p.answer) if get_task(p.skill).fixed else p.prompt + p.answer for p in problems)


def example_text(prompt: str, answer: str) -> str:
    """One example in natural language, as it goes before a prompt: the prompt, its answer, a blank line."""
    return f"{prompt}\n{answer}\n\n"
