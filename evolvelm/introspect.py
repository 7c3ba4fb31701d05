"""Self-prediction: the model is asked about its own answer to a prompt without answering it, and is
trained to know (Binder et al. 2024, "Looking Inward").

A property of a model's behaviour on a prompt, read from its greedy answer (and two samples):
    right     will the answer be right (the skill's checker): "1" or "0"
    first     the answer's first character ("" -> "0")
    length    its length in characters, in digits
    agree     would two of its samples at temperature 1 give the same answer: "1" or "0"
An introspection prompt asks for one property of the answer to one prompt. The character-level zoo
models read `+` and the property's letter before the prompt (`+rCabcdefg=`); models with a chat
template read a sentence. With `after`, the question follows the prompt instead (`Cabcdefg=+r`), so a
causal model reads the prompt exactly as when it answers it. The answer is the property's value.

The comparison that says whether a model knows itself better than an observer does: train the model
on its own behaviour (self) and a second model on the first model's behaviour (cross), with the same
examples and the same budget; score both on held-out prompts against the first model's behaviour
(`benchmarks/self_guided.py`). Self-prediction is also scored against the trained model's behaviour
afterwards, since training on introspection prompts may change what it does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from evolvelm.tasks import get_task
from evolvelm.types import Example, Problem

PROPERTIES = {"right": "r", "first": "f", "length": "l", "agree": "a"}
QUESTIONS = {
    "right": "Would your answer to the following be right? Reply 1 for yes, 0 for no.",
    "first": "What is the first character of your answer to the following? Reply with that character.",
    "length": "How many characters long is your answer to the following? Reply with the number.",
    "agree": "If you answered the following twice at random, would both answers be the same? Reply 1 or 0.",
}
AGREE_SEEDS = (1, 2)  # the two samples `agree` compares


@dataclass
class Behaviour:
    """What a model did on some prompts: per property, one value per prompt (in the prompts' order)."""

    version: str                  # the model's content hash (whose behaviour this is)
    values: dict[str, list[str]]  # property -> value per prompt


def ask(prop: str, prompt: str, chat: bool, after: bool = False) -> str:
    """The introspection prompt asking for `prop` of the answer to `prompt`: the question before the
    prompt, or (`after`) after it, where the model has read the prompt exactly as when it answers it."""
    if chat:
        return f"{prompt}\n\n{QUESTIONS[prop].replace('the following', 'the above')}" if after else f"{QUESTIONS[prop]}\n\n{prompt}"
    return f"{prompt}+{PROPERTIES[prop]}" if after else f"+{PROPERTIES[prop]}{prompt}"


def behaviour(backend, problems: list[Problem], props: list[str]) -> Behaviour:
    """Each property of `backend`'s behaviour on `problems` (greedy answers; `agree`: two samples)."""
    values: dict[str, list[str]] = {}
    by_skill: dict[str, list[int]] = {}
    for i, p in enumerate(problems):
        by_skill.setdefault(p.skill, []).append(i)
    answers, right, same = [""] * len(problems), [False] * len(problems), [False] * len(problems)
    for skill, idx in by_skill.items():
        task, group = get_task(skill), [problems[i] for i in idx]
        tokens = max(task.max_new_tokens(p.difficulty) for p in group)
        gens = backend.generate([p.prompt for p in group], [0] * len(group), 0.0, tokens)
        for i, g, ok in zip(idx, gens, task.check_many(group, [g.text for g in gens])):
            answers[i], right[i] = g.text, ok
        if "agree" in props:
            a, b = (backend.generate([p.prompt for p in group], [seed] * len(group), 1.0, tokens) for seed in AGREE_SEEDS)
            for i, x, y in zip(idx, a, b):
                same[i] = task.answer_of(x.text) == task.answer_of(y.text)
    for prop in props:
        values[prop] = {"right": ["01"[r] for r in right], "first": [a[:1] or "0" for a in answers],
                        "length": [str(len(a)) for a in answers], "agree": ["01"[s] for s in same]}[prop]
    return Behaviour(backend.version, values)


def examples(problems: list[Problem], seen: Behaviour, chat: bool, after: bool = False) -> list[Example]:
    """Introspection training examples: each property of each prompt, answered as `seen` behaved."""
    return [Example(ask(prop, p.prompt, chat, after), values[i]) for prop, values in seen.values.items()
            for i, p in enumerate(problems)]


def replay(backend, problems: list[Problem]) -> list[Example]:
    """`backend`'s own greedy answers to `problems` as training examples: mixed into introspection
    training so that the model keeps doing what it did (a small model trained on introspection
    prompts alone forgets its skill, and then there is no self left to predict)."""
    out = []
    for skill in dict.fromkeys(p.skill for p in problems):
        group = [p for p in problems if p.skill == skill]
        tokens = max(get_task(skill).max_new_tokens(p.difficulty) for p in group)
        gens = backend.generate([p.prompt for p in group], [0] * len(group), 0.0, tokens)
        out += [Example(p.prompt, g.text) for p, g in zip(group, gens)]
    return out


def predictions(backend, problems: list[Problem], props: list[str], chat: bool, after: bool = False) -> dict[str, list[str]]:
    """`backend`'s greedy answers to the introspection prompts: its predicted value per property and prompt."""
    out = {}
    for prop in props:
        gens = backend.generate([ask(prop, p.prompt, chat, after) for p in problems], [0] * len(problems), 0.0, 6)
        out[prop] = [g.text.strip() for g in gens]
    return out


def confidence(backend, problems: list[Problem], chat: bool, after: bool = False) -> list[float]:
    """The model's introspective confidence that its answer to each problem is right: its probability
    of replying "1" to the `right` question, against "1" or "0" (evolvelm.evaluate.calibration scores it)."""
    asked = [ask("right", p.prompt, chat, after) for p in problems]
    yes, no = (backend.logprobs(asked, [v] * len(asked)) for v in ("1", "0"))
    return [1 / (1 + math.exp(n[0] - y[0])) for y, n in zip(yes, no)]


def accuracy(predicted: dict[str, list[str]], actual: Behaviour) -> dict[str, float]:
    """Per property, the share of prompts whose predicted value is the actual one."""
    return {prop: round(sum(p == a for p, a in zip(predicted[prop], actual.values[prop])) / len(predicted[prop]), 4)
            for prop in predicted}


def majority(train: Behaviour, held: Behaviour, train_groups: list | None = None,
             held_groups: list | None = None) -> dict[str, float]:
    """The baseline that knows nothing of the prompt beyond its group (e.g. skill and difficulty; no
    groups: one for all): always the training set's most common value in the prompt's group."""
    train_groups = train_groups or [None] * len(next(iter(train.values.values())))
    held_groups = held_groups or [None] * len(next(iter(held.values.values())))
    out = {}
    for prop, values in train.values.items():
        by_group: dict = {}
        for g, v in zip(train_groups, values):
            by_group.setdefault(g, []).append(v)
        top = {g: max(sorted(set(vs)), key=vs.count) for g, vs in by_group.items()}
        out[prop] = round(sum(v == top.get(g) for g, v in zip(held_groups, held.values[prop])) / len(held.values[prop]), 4)
    return out
