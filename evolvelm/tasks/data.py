"""Skills defined by a dataset: rows read from a file, a prompt and an answer drawn from their fields,
a checker (`evolvelm.tasks.checkers`), and fixed splits.

    name: svamp
    data: path/to/svamp.jsonl           # JSONL, a JSON list, CSV, Parquet, or a `datasets` save_to_disk folder
    prompt: "{Body} {Question}"         # a field name, or a template over fields ({a.b} reads nested fields)
    answer: Answer                      # the field holding the reference answer
    checker: number
    difficulty: null                    # optional field (the ladder needs one)
    splits: {test: 300, dev: 100, labeled: 50}   # counts or fractions of the rows; the rest is the unlabeled pool
    max_new_tokens: 256
    document: null                      # knowledge-distill only: the field with the document a question is about

Empty `prompt`/`answer` follow the conventions of TRL (`prompt`/`completion`, or `messages`: the last
user turn and the assistant turn after it) and verl (`prompt` and `reward_model.ground_truth`, or
`ground_truth`). Splits are drawn by seed and never share a prompt. `config.validate` registers each
such skill as a Task (`register`); `pin` stores its splits in the run directory when a run starts and
reads them back whenever it is opened, so a resumed run sees the same ones.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
import string
from dataclasses import dataclass, field, replace
from pathlib import Path

from evolvelm.config import ConfigError
from evolvelm.tasks import TASKS, Task
from evolvelm.tasks.checkers import Checker, get_checker
from evolvelm.types import Problem

SPLITS = ("test", "dev", "labeled")  # drawn in this order; what is left is "unlabeled"


@dataclass(frozen=True)
class Row:
    """One problem of a data-defined skill: its prompt, reference answer, and every field of its row."""

    prompt: str
    answer: str
    difficulty: int | None
    columns: dict = field(default_factory=dict, compare=False)
    where: str = ""        # file:line, for errors
    document: str = ""     # the document the question is about (`document: FIELD`; knowledge-distill)

    @property
    def id(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DataSkill:
    name: str
    data: str
    prompt: str = ""
    answer: str = ""
    checker: str = "exact"
    difficulty: str | None = None
    splits: dict = field(default_factory=lambda: {"test": 0.2, "dev": 0.1, "labeled": 0.05})
    max_new_tokens: int = 256
    document: str | None = None

    @classmethod
    def parse(cls, entry: dict) -> DataSkill:
        """A `skills:` mapping, checked: its keys, its splits and its checker (exit 2 naming what is wrong)."""
        valid = [f for f in cls.__dataclass_fields__]
        unknown = sorted(set(entry) - set(valid))
        if unknown or "name" not in entry or "data" not in entry:
            raise ConfigError(f"skills: a data-defined skill needs name and data; {('unknown keys ' + str(unknown) + '; ') if unknown else ''}"
                              f"valid keys: {valid}")
        spec = cls(**{k: v if k in ("splits", "max_new_tokens") or v is None else str(v) for k, v in entry.items()})
        bad = sorted(set(spec.splits) - set(SPLITS))
        if bad:
            raise ConfigError(f"skills[{spec.name}].splits: unknown splits {bad}; splits: {list(SPLITS)} (the rest is unlabeled)")
        get_checker(spec.checker)
        return spec


def read_records(path: Path) -> list[tuple[str, dict]]:
    """(file:line, record) for every record of a JSONL, JSON list, CSV or Parquet file, or a `datasets`
    folder; a record that is not an object names its file and line."""
    if not path.exists():
        raise ConfigError(f"{path}: dataset not found")
    if path.is_dir() or path.suffix == ".parquet":
        try:
            import datasets
        except ImportError as e:
            raise ConfigError(f"{path}: reading a datasets folder or Parquet file needs `pip install datasets`") from e
        table = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.Dataset.from_parquet(str(path))
        return [(f"{path}:{i}", dict(r)) for i, r in enumerate(table, 1)]
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return [(f"{path}:{i}", r) for i, r in enumerate(csv.DictReader(f), 2)]
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from e
        records = [(f"{path}:[{i}]", r) for i, r in enumerate(data if isinstance(data, list) else [data])]
    else:
        records = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append((f"{path}:{i}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{i}: not valid JSON: {e.msg}") from e
    for where, r in records:
        if not isinstance(r, dict):
            raise ConfigError(f"{where}: expected a JSON object with fields, got {type(r).__name__}")
    return records


def value(record: dict, name: str, where: str):
    """A field of a record; `a.b` reads a nested one. A missing field names the file, line and field."""
    node = record
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{where}: no field {name!r}; fields: {sorted(record)}")
        node = node[part]
    return node


def _text(v) -> str:
    """A field as text: numbers as written (145.0 stays 145.0; checkers compare numbers by value)."""
    return v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def render(template: str, record: dict, where: str) -> str:
    """A field name, or a template over fields ("{Body} {Question}")."""
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    if not names:
        return _text(value(record, template, where))
    return re.sub(r"\{([^{}]+)\}", lambda m: _text(value(record, m.group(1), where)), template)


def rows(spec: DataSkill) -> list[Row]:
    """The skill's problems, in file order."""
    out = []
    for where, r in read_records(Path(spec.data)):
        prompt_field, answer_field = spec.prompt, spec.answer
        if not prompt_field and "messages" in r:  # TRL's conversational format
            turns = value(r, "messages", where)
            users = [i for i, t in enumerate(turns) if t.get("role") == "user"]
            if not users or users[-1] + 1 >= len(turns):
                raise ConfigError(f"{where}: field 'messages' needs a user turn followed by an assistant turn")
            prompt, answer = turns[users[-1]]["content"], turns[users[-1] + 1]["content"]
        else:
            prompt = render(prompt_field or "prompt", r, where)
            if not answer_field:
                answer_field = next((f for f in ("completion", "reward_model.ground_truth", "ground_truth", "answer")
                                     if _has(r, f)), "answer")
            answer = render(answer_field, r, where)
        level = None
        if spec.difficulty:
            try:
                level = int(value(r, spec.difficulty, where))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}: field {spec.difficulty!r} is not an integer difficulty") from e
            if level < 1:
                raise ConfigError(f"{where}: field {spec.difficulty!r} is {level}; difficulties count from 1")
        out.append(Row(prompt, answer, level, r, where, render(spec.document, r, where) if spec.document else ""))
    return out


FAN_OUT = None  # while a run has a Ray cluster: evolvelm.backends.cluster.CheckFanOut


def check(checker: Checker, problems: list[Row], completions: list[str]) -> list[bool]:
    """A checker over completions to `problems`, with every field of their rows (for `code`, `python:`);
    a checker that runs programs or a user's function runs on the cluster when the run has one."""
    names = list(dict.fromkeys(k for r in problems for k in r.columns))
    columns = {k: [r.columns.get(k) for r in problems] for k in names}
    args = ([r.prompt for r in problems], completions, [r.answer for r in problems], columns)
    return FAN_OUT(checker.name, *args) if FAN_OUT is not None and checker.batch is not None else checker.check_many(*args)


def _has(record: dict, name: str) -> bool:
    try:
        value(record, name, "")
        return True
    except ConfigError:
        return False


def split(spec: DataSkill, problems: list[Row], seed: int) -> dict[str, list[Row]]:
    """test, dev, labeled and unlabeled: disjoint by prompt (a prompt that occurs twice goes to one split
    only), drawn by `seed`; a split larger than what is left names both numbers. A split given as a file
    (`test: other.jsonl`, read with the skill's fields) is that file's problems, and its prompts leave
    the skill's own data; two such files sharing a prompt are refused."""
    given: dict[str, list[Row]] = {}
    for name, path in spec.splits.items():
        if isinstance(path, str):
            part = list({r.prompt: r for r in rows(replace(spec, data=path))}.values())
            for other, earlier in given.items():
                shared = {r.prompt for r in part} & {r.prompt for r in earlier}
                if shared:
                    raise ConfigError(f"skills[{spec.name}].splits: {path} ({name}) and {spec.splits[other]} ({other}) "
                                      f"share {len(shared)} prompts, e.g. {sorted(shared)[0]!r}; splits never overlap")
            given[name] = part
    taken = {r.prompt for part in given.values() for r in part}
    unique = [r for r in {r.prompt: r for r in problems}.values() if r.prompt not in taken]
    order = sorted(unique, key=lambda r: hashlib.sha256(f"{seed}:{r.id}".encode()).hexdigest())  # a shuffle by seed
    out, start = dict(given), 0
    for name in (n for n in SPLITS if n not in given):
        want = spec.splits.get(name, 0)
        n = round(want * len(unique)) if isinstance(want, float) and want < 1 else int(want)
        if n < 0 or start + n > len(unique):
            raise ConfigError(f"skills[{spec.name}].splits.{name}: {want} problems asked, {len(unique) - start} left "
                              f"of the {len(unique)} distinct prompts in {spec.data}")
        out[name], start = order[start:start + n], start + n
    out["unlabeled"] = order[start:]
    return out


def save_splits(path: Path, splits: dict[str, list[Row]]) -> None:
    """The splits as drawn, one JSON line per problem: what a resumed run reads instead of drawing again."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for name, problems in splits.items():
            for r in problems:
                f.write(json.dumps({"split": name, "prompt": r.prompt, "answer": r.answer, "difficulty": r.difficulty,
                                    "where": r.where, "columns": r.columns, "document": r.document},
                                   sort_keys=True, default=str) + "\n")
    tmp.rename(path)


def load_splits(path: Path) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {name: [] for name in (*SPLITS, "unlabeled")}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[r["split"]].append(Row(r["prompt"], r["answer"], r["difficulty"], r["columns"], r["where"], r.get("document", "")))
    return out


DRAWN: dict[str, dict[str, list[Row]]] = {}  # a registered skill's splits, as `pin` stores them


def task(spec: DataSkill, drawn: dict[str, list[Row]]) -> Task:
    """The skill as a Task: problems drawn from the unlabeled pool, test/dev/labeled fixed, the checker
    on every answer (with its row's fields), votes on what the checker extracts."""
    checker, level = get_checker(spec.checker), (lambda r: r.difficulty or 1)
    by_prompt = {r.prompt: r for part in drawn.values() for r in part}
    pool: dict[int, list[Row]] = {}
    for r in drawn["unlabeled"]:
        pool.setdefault(level(r), []).append(r)
    fixed = tuple((name, d, tuple(Problem(spec.name, d, r.prompt, r.answer) for r in drawn[name] if level(r) == d))
                  for name in SPLITS for d in sorted({level(r) for r in drawn[name]}))

    def make(d: int, rng) -> tuple[str, str]:
        r = rng.choice(pool[d])
        return r.prompt, r.answer

    def check_problems(problems: list[Problem], completions: list[str]) -> list[bool]:
        return check(checker, [by_prompt.get(p.prompt) or Row(p.prompt, p.answer, p.difficulty) for p in problems], completions)

    return Task(spec.name, make, answer_lengths=lambda d: (1, 10**6), space=lambda d: len(pool.get(d, [])),
                version=f"{spec.name}:{checker.version}", final=checker.extract, checker=check_problems,
                max_tokens=lambda d: spec.max_new_tokens, fixed=fixed, executes=spec.checker == "code",
                hint=hint, one_answer=checker.same is None and checker.batch is None)


def hint(prompt: str, answer: str) -> str:
    """STaR's rationalisation prompt for a skill from data: the question, then its answer as a hint."""
    return f"{prompt}\n(The answer is {answer}. Explain how to reach it.)"


def register(spec: DataSkill, seed: int, drawn: dict[str, list[Row]] | None = None) -> Task:
    """Make the skill known by name (`get_task`), its splits drawn by `seed` unless given (a run's own)."""
    if spec.name in TASKS and not TASKS[spec.name].fixed:
        raise ConfigError(f"data.{spec.name}: the name of a built-in task; name the skill otherwise")
    drawn = drawn or split(spec, rows(spec), seed)
    DRAWN[spec.name] = drawn
    TASKS[spec.name] = task(spec, drawn)
    return TASKS[spec.name]


def corpus(cfg) -> str | None:
    """The run's skill from data whose rows carry documents (`document: FIELD`): what knowledge-distill
    injects instead of zoo:facts' people. None when it has none."""
    return next((s for s in cfg.skills if (cfg.data.get(s) or {}).get("document")), None)


def documents(name: str, seed: int) -> list[tuple[str, list[Row]]]:
    """A corpus skill's distinct documents, each with its rows (questions), in an order drawn by `seed`."""
    by_doc: dict[str, list[Row]] = {}
    for part in DRAWN[name].values():
        for r in part:
            by_doc.setdefault(r.document, []).append(r)
    return sorted(by_doc.items(), key=lambda kv: hashlib.sha256(f"{seed}:{kv[0]}".encode()).hexdigest())


def pin(cfg, root: Path) -> None:
    """Keep a run on the splits it started with: stored in `root/data/NAME.jsonl` at its start, read
    back (and the skill registered on them) whenever it is opened again, whatever the file holds now."""
    for name, entry in cfg.data.items():
        path = root / "data" / f"{name}.jsonl"
        if path.is_file():
            register(DataSkill.parse({"name": name, **entry}), cfg.seed, load_splits(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_splits(path, DRAWN[name])
