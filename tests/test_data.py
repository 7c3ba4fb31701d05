"""Skills from data, the first part: checkers (on real references from ../shared/data where present) and
datasets read into problems and fixed splits, with the errors bad rows get."""
import json
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest

from evolvelm.config import ConfigError
from evolvelm.tasks.checkers import CHECKERS, CheckerError, get_checker
from evolvelm.tasks.data import DataSkill, check, load_splits, rows, save_splits, split

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
NEEDS_DATA = pytest.mark.skipif(not DATA.is_dir(), reason=f"real datasets not found at {DATA} (see the project's shared/data)")


def right(checker: str, completions: list[str], references: list[str]) -> list[bool]:
    return get_checker(checker).check_many([""] * len(completions), completions, references)


def test_builtin_checkers_extract_the_answer_and_compare_it():
    assert right("exact", [" cba\n", "cb"], ["cba", "cba"]) == [True, False]
    assert right("normalized", ["  The Eiffel tower!", "eiffel"], ["the eiffel Tower", "the eiffel tower"]) == [True, False]
    assert right("number", ["So she has 1,234.50 left.", "145", "It is 3/4.", "-7 degrees", "none", "72 then 71"],
                 ["1234.5", "145.0", "0.75", "#### -7", "0", "#### 72"]) == [True, True, True, True, False, False]
    assert right("choice", ["The answer is B.", "(C) because", "D", "I think a cat", "answer: 3"],
                 ["B", "C", "D", "A", "3"]) == [True, True, True, False, True]
    assert right("math", ["The answer is $\\frac{1}{2}$.", "$\\sqrt{9}$", "$x^2+2x$", "2"],
                 ["0.5", "3", "x(x+2)", "3"]) == [True, True, True, False]
    assert right("regex:ANSWER: (\\w+)", ["so ANSWER: yes", "ANSWER: no ... ANSWER: yes", "yes"], ["yes"] * 3) == [True, True, False]
    assert {c.version for c in CHECKERS.values()} == {"exact-1", "normalized-1", "number-1", "choice-1",
                                                       "math-verify-1", "code-1"}


def test_a_skill_has_one_right_answer_only_where_its_checker_compares_for_equality():
    from evolvelm.tasks.data import task

    drawn = {name: [] for name in ("test", "dev", "labeled", "unlabeled")}
    one = {c: task(DataSkill("s", "unused.jsonl", checker=c), drawn).one_answer for c in (*CHECKERS, "regex:(\\d+)")}
    assert one == {"exact": True, "normalized": True, "number": True, "choice": True, "math": False, "code": False,
                   "regex:(\\d+)": True}


def test_a_python_checker_has_trls_reward_signature_and_its_failures_are_not_wrong_answers(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def contains(prompts, completions, keyword, **kw):\n"
        "    return [1.0 if k in c else 0.0 for c, k in zip(completions, keyword)]\n"
        "def broken(prompts, completions, **kw):\n"
        "    raise ValueError('no')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    check = get_checker("python:my_rewards:contains")
    assert check.check_many(["p", "q"], ["a cat", "a dog"], ["", ""], {"keyword": ["cat", "cat"]}) == [True, False]
    with pytest.raises(CheckerError, match="my_rewards:broken raised ValueError: no"):
        get_checker("python:my_rewards:broken").check_many(["p"], ["x"], [""])
    with pytest.raises(ConfigError, match="unknown checker 'nope'; checkers: \\['choice', 'code', 'exact', 'math', 'normalized', 'number'\\]"):
        get_checker("nope")
    with pytest.raises(ConfigError, match="cannot import 'missing'"):
        get_checker("python:my_rewards:missing")
    sys.modules.pop("my_rewards", None)


@NEEDS_DATA
def test_checkers_on_real_references():
    gsm = rows(DataSkill("gsm8k", str(DATA / "gsm8k/test.jsonl"), "question", "answer", "number"))
    finals = [r.answer.split("####")[-1].strip() for r in gsm]
    assert len(gsm) == 1319 and all(right("number", [f"The answer is {f}." for f in finals], [r.answer for r in gsm]))
    assert sum(right("number", [f"The answer is {int(f.replace(',', '')) + 1}." for f in finals[:200]],
                     [r.answer for r in gsm[:200]])) == 0
    arc = rows(DataSkill("arc", str(DATA / "arc/ARC-Easy-dev.jsonl"), "question.stem", "answerKey", "choice"))
    assert all(right("choice", [f"The answer is {r.answer}." for r in arc], [r.answer for r in arc]))
    math500 = rows(DataSkill("math", str(DATA / "math500/test.jsonl"), "problem", "answer", "math"))[:100]
    boxed = [f"So the answer is $\\boxed{{{r.answer}}}$." for r in math500]
    assert all(right("math", boxed, [r.answer for r in math500]))  # "\\$18.90" included: a dollar sign, not math mode
    assert sum(right("math", boxed[1:], [r.answer for r in math500[:-1]])) <= 3  # each against its neighbour's


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_datasets_in_every_format_read_into_the_same_problems(tmp_path):
    records = [{"q": f"What is {i} + 1?", "a": i + 1, "level": 1 + i % 3} for i in range(30)]
    jsonl = write(tmp_path / "d.jsonl", records)
    (tmp_path / "d.json").write_text(json.dumps(records))
    (tmp_path / "d.csv").write_text("q,a,level\n" + "".join(f"{r['q']},{r['a']},{r['level']}\n" for r in records))
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "folder"))
    want = [(r.prompt, r.answer, r.difficulty) for r in rows(DataSkill("s", str(jsonl), "q", "a", difficulty="level"))]
    assert want[1] == ("What is 1 + 1?", "2", 2)
    for name in ("d.json", "d.csv", "d.parquet", "folder"):
        got = rows(DataSkill("s", str(tmp_path / name), "q", "a", difficulty="level"))
        assert [(r.prompt, r.answer, r.difficulty) for r in got] == want, name


def test_trl_and_verl_columns_are_understood_as_they_are(tmp_path):
    trl = write(tmp_path / "trl.jsonl", [{"prompt": "2+2?", "completion": "4"},
                                         {"messages": [{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]}])
    verl = write(tmp_path / "verl.jsonl", [{"prompt": "5+5?", "reward_model": {"ground_truth": "10"}},
                                           {"prompt": "1+1?", "ground_truth": "2"}])
    assert [(r.prompt, r.answer) for r in rows(DataSkill("t", str(trl)))] == [("2+2?", "4"), ("3+3?", "6")]
    assert [(r.prompt, r.answer) for r in rows(DataSkill("v", str(verl)))] == [("5+5?", "10"), ("1+1?", "2")]


def test_bad_rows_and_specs_name_the_file_line_and_field(tmp_path):
    data = write(tmp_path / "d.jsonl", [{"question": "a", "answer": "1"}, {"question": "b"}])
    with pytest.raises(ConfigError, match=f"{tmp_path / 'd.jsonl'}:2: no field 'answer'; fields: \\['question'\\]"):
        rows(DataSkill("s", str(data), "question", "answer"))
    (tmp_path / "bad.jsonl").write_text('{"question": "a"}\n{not json\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2: not valid JSON"):
        rows(DataSkill("s", str(tmp_path / "bad.jsonl"), "question", "answer"))
    with pytest.raises(ConfigError, match="unknown checker 'numbers'"):
        DataSkill.parse({"name": "s", "data": str(data), "checker": "numbers"})
    with pytest.raises(ConfigError, match="unknown keys \\['promt'\\]"):
        DataSkill.parse({"name": "s", "data": str(data), "promt": "question"})
    with pytest.raises(ConfigError, match="dataset not found"):
        rows(DataSkill("s", str(tmp_path / "missing.jsonl")))
    spec = DataSkill("s", str(data), "question", "question", splits={"test": 5})
    with pytest.raises(ConfigError, match="splits.test: 5 problems asked, 2 left of the 2 distinct prompts"):
        split(spec, rows(spec), 0)


def test_splits_are_disjoint_by_prompt_fixed_by_seed_and_stored(tmp_path):
    records = [{"q": f"q{i % 90}", "a": str(i)} for i in range(100)]  # 10 prompts occur twice
    spec = DataSkill.parse({"name": "s", "data": str(write(tmp_path / "d.jsonl", records)), "prompt": "q", "answer": "a",
                            "splits": {"test": 20, "dev": 0.1, "labeled": 5}})
    drawn = split(spec, rows(spec), seed=3)
    assert {k: len(v) for k, v in drawn.items()} == {"test": 20, "dev": 9, "labeled": 5, "unlabeled": 56}
    prompts = [r.prompt for part in drawn.values() for r in part]
    assert len(prompts) == len(set(prompts)) == 90
    assert split(spec, rows(spec), seed=3) == drawn and split(spec, rows(spec), seed=4)["test"] != drawn["test"]
    save_splits(tmp_path / "splits.jsonl", drawn)
    assert load_splits(tmp_path / "splits.jsonl") == drawn




def test_a_split_given_as_a_file_is_that_file_and_leaves_the_skills_own_data(tmp_path):
    records = [{"q": f"q{i}", "a": str(i)} for i in range(50)]
    own = write(tmp_path / "d.jsonl", records)
    test = write(tmp_path / "test.jsonl", records[:5] + [{"q": "only in test", "a": "x"}])  # 5 prompts also in d.jsonl
    spec = DataSkill.parse({"name": "s", "data": str(own), "prompt": "q", "answer": "a",
                            "splits": {"test": str(test), "dev": 10}})
    drawn = split(spec, rows(spec), seed=0)
    assert [r.prompt for r in drawn["test"]] == [f"q{i}" for i in range(5)] + ["only in test"]
    assert drawn["test"][-1].where == f"{test}:6"
    assert len(drawn["dev"]) == 10 and len(drawn["unlabeled"]) == 35  # 45 of d.jsonl's prompts are left
    assert not {r.prompt for r in drawn["test"]} & {r.prompt for part in ("dev", "unlabeled") for r in drawn[part]}
    dev = write(tmp_path / "dev.jsonl", records[4:8])
    with pytest.raises(ConfigError, match="dev.jsonl \\(dev\\) and .*test.jsonl \\(test\\) share 1 prompts, e.g. 'q4'"):
        split(DataSkill.parse({"name": "s", "data": str(own), "prompt": "q", "answer": "a",
                               "splits": {"test": str(test), "dev": str(dev)}}), rows(spec), seed=0)
@NEEDS_DATA
def test_the_code_checker_runs_each_rows_unit_tests_in_the_sandbox():
    code = get_checker("code")
    human = rows(DataSkill("humaneval", str(DATA / "humaneval/HumanEval.jsonl"), "prompt", "canonical_solution", "code"))[:12]
    assert all(check(code, human, [r.answer for r in human]))  # the canonical bodies complete the prompts
    fenced = [f"Here it is:\n```python\n{r.prompt}{r.answer}```\nDone." for r in human[:4]]
    assert all(check(code, human[:4], fenced))  # a whole function in a fenced block
    assert not any(check(code, human[:6], ["    return None\n"] * 6))
    mbpp = rows(DataSkill("mbpp", str(DATA / "mbpp/mbpp.jsonl"), "text", "code", "code"))[:12]
    assert all(check(code, mbpp, [r.answer for r in mbpp]))
    assert sum(check(code, mbpp, [mbpp[(i + 1) % 12].answer for i in range(12)])) == 0  # another task's program


def sums(path: Path, n: int = 120, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    pairs = [(rng.randint(1, 9), rng.randint(1, 9)) for _ in range(n)]
    return write(path, [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"} for a, b in pairs])


def skill(path: Path, **changes) -> str:
    spec = {"name": "add", "data": str(path), "prompt": "question", "answer": "answer", "checker": "number",
            "splits": {"test": 10, "dev": 10, "labeled": 10}, "max_new_tokens": 8, **changes}
    return "skills=[" + json.dumps(spec) + "]"


SEMISUP = ["eval.max_difficulty=1", "rounds=2", "acquire.problems=5", "acquire.samples=2", "update.steps=3",
           "update.batch_size=4", "semisup.dev_slice=3", "semisup.temperatures=[0.5,1.0]"]


@pytest.mark.integration
def test_a_skill_from_data_runs_lmsi_killed_and_resumed_identically_on_its_stored_splits(tmp_path, chat_model):
    from test_resume import evolvelm, outcome

    from evolvelm.store.run import Run
    from evolvelm.tasks import get_task

    data = sums(tmp_path / "sums.jsonl")
    args = ["run", "lmsi", f"model.path={chat_model}", skill(data), *SEMISUP]
    ref = evolvelm(*args, "--run-dir", str(tmp_path / "ref"), timeout=300)
    assert ref.returncode == 0, ref.stderr
    run = Run.open(tmp_path / "ref")
    stored = [json.loads(line) for line in (tmp_path / "ref" / "data" / "add.jsonl").read_text().splitlines()]
    held = {r["prompt"] for r in stored if r["split"] != "unlabeled"}
    assert sum(r["split"] == "test" for r in stored) == 10 and len(held) == 30
    asked = run.samples(1)
    assert asked and not {s.prompt for s in asked} & held and all(s.rendered.endswith("<|im_start|>assistant\n") for s in asked)
    assert run.query("SELECT SUM(n) AS n FROM evals WHERE round=0 AND split='test'")[0]["n"] == 10
    assert run.done(0, "gate")["labeled"]["problems"] == 10
    killed = evolvelm(*args, "--run-dir", str(tmp_path / "run"), env={"EVOLVELM_KILL_AT": "2:update:before-manifest"},
                      timeout=300)
    assert killed.returncode == -signal.SIGKILL
    sums(data, seed=1)  # the file changes under the run: it keeps the splits it started with
    assert evolvelm("resume", str(tmp_path / "run"), timeout=300).returncode == 0
    assert outcome(tmp_path / "run") == outcome(tmp_path / "ref")
    Run.open(tmp_path / "run").config()
    assert {p.prompt for p in get_task("add").split("test")} == {r["prompt"] for r in stored if r["split"] == "test"}


@pytest.mark.integration
@pytest.mark.parametrize("recipe", ["star", "rest-em", "pairs", "semievol", "bstar", "memory"])
def test_every_other_semisup_recipe_runs_on_a_skill_from_data(tmp_path, chat_model, recipe):
    from evolvelm.cli import main
    from evolvelm.store.run import Run

    assert main(["run", recipe, f"model.path={chat_model}", skill(sums(tmp_path / "sums.jsonl")), *SEMISUP, "rounds=1",
                 "--run-dir", str(tmp_path / "r"), "-q"]) == 0
    assert Run.open(tmp_path / "r").samples(1)


def test_bad_data_skills_exit_2_naming_what_is_wrong(tmp_path, capsys):
    from evolvelm.cli import main

    data = sums(tmp_path / "sums.jsonl")
    assert main(["validate", "lmsi", skill(data, answer="solution")]) == 2
    assert f"{data}:1: no field 'solution'; fields: ['answer', 'question']" in capsys.readouterr().err
    assert main(["validate", "lmsi", skill(data, checker="numbr")]) == 2
    assert "unknown checker 'numbr'; checkers: ['choice', 'code'," in capsys.readouterr().err
    assert main(["validate", "lmsi", skill(data, splits={"test": 100})]) == 2
    assert "splits.test: 100 problems asked, 62 left of the 62 distinct prompts in" in capsys.readouterr().err
    assert main(["validate", "lmsi", skill(data, name="copy")]) == 2
    assert "the name of a built-in task" in capsys.readouterr().err
    assert main(["validate", "copy-ladder", skill(data)]) == 2
    assert "skills[add]: the ladder climbs difficulties and this skill has none" in capsys.readouterr().err
    assert main(["validate", "lmsi", skill(data, document="question")]) == 2
    assert "skills[add].document: documents are what knowledge-distill injects; recipe 'semisup' does not read them" \
        in capsys.readouterr().err
    docs = skill(documents_file(tmp_path / "docs.jsonl"), document="doc", answer="answer", splits={"test": 6})
    assert main(["validate", "knowledge-distill", docs, "rounds=4", "knowledge.people=2"]) == 2
    assert "skills[add]: 6 distinct documents; 4 rounds of knowledge.people=2 inject 8" in capsys.readouterr().err
    levels = write(tmp_path / "levels.jsonl", [{"question": "1+1", "answer": "2", "digits": 0}])
    assert main(["validate", "copy-ladder", skill(levels, difficulty="digits")]) == 2
    assert f"{levels}:1: field 'digits' is 0; difficulties count from 1" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["lmsi", "star", "semievol"])
def test_the_fake_backend_answers_skills_from_data_from_their_rows(tmp_path, fake_model, recipe):
    from evolvelm.cli import main
    from evolvelm.store.run import Run

    assert main(["run", recipe, f"model.path={fake_model}", "model.backend=fake",
                 skill(sums(tmp_path / "sums.jsonl", n=400), max_new_tokens=32), *SEMISUP, "acquire.problems=40",
                 "--run-dir", str(tmp_path / "r"), "-q"]) == 0
    run = Run.open(tmp_path / "r")
    base = run.query("SELECT accuracy FROM evals WHERE round=0 AND split='test'")[0]["accuracy"]
    assert 0.3 <= base <= 0.95  # difficulty 1 beyond the fake's level 0: about 70% right
    samples = run.samples(1)
    right = [s.completion.split("####")[-1].strip() == s.true_answer.split("####")[-1].strip() for s in samples]
    assert 0 < sum(right) < len(right)
    if recipe == "star":  # rationalised with the answer as a hint, which the fake reads its row through
        assert any(s.context.startswith(s.prompt + "\n(The answer is") for s in samples)
    if recipe == "semievol":  # natural-language examples: prompt, answer on the next line, a blank line
        assert all(s.context.endswith(s.prompt) and s.context != s.prompt for s in samples)
        assert all(re.match(r"What is \d \+ \d\?\n\d \+ \d = \d+\n#### \d+\n\nWhat is", s.context) for s in samples)


def test_a_checker_that_raises_stops_the_round_records_the_completions_and_resume_finishes(tmp_path, fake_model, capsys):
    from evolvelm.cli import main
    from evolvelm.store.run import Run

    flag = tmp_path / "broken"
    (tmp_path / "flaky_rewards.py").write_text(
        "from pathlib import Path\n"
        "def reward(prompts, completions, answer, **kw):\n"
        f"    if Path({str(flag)!r}).exists() and any('7' in c for c in completions):\n"
        "        raise ZeroDivisionError('seven')\n"
        "    return [c.split('#')[-1].strip() == a.split('#')[-1].strip() for c, a in zip(completions, answer)]\n")
    sys.path.insert(0, str(tmp_path))
    try:
        args = ["run", "lmsi", f"model.path={fake_model}", "model.backend=fake", *SEMISUP, "--run-dir", str(tmp_path / "r"), "-q",
                skill(sums(tmp_path / "sums.jsonl"), checker="python:flaky_rewards:reward", max_new_tokens=32)]
        assert main(args) == 0
        reference = json.loads((tmp_path / "r" / "summary.json").read_text())["semisup"]
        shutil.rmtree(tmp_path / "r")
        flag.touch()
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "checker python:flaky_rewards:reward raised ZeroDivisionError: seven (on " in err
        assert f"evolvelm resume {tmp_path / 'r'}" in err
        errors = [json.loads(line) for line in (tmp_path / "r" / "checker_errors.jsonl").read_text().splitlines()]
        assert errors and all("7" in e["completion"] and e["after"] == "nothing" for e in errors)  # round 0's eval raised
        assert Run.open(tmp_path / "r").done(0, "eval") is None  # nothing of it scored, wrong or right
        flag.unlink()
        assert main(["resume", str(tmp_path / "r"), "-q"]) == 0
        assert json.loads((tmp_path / "r" / "summary.json").read_text())["semisup"] == reference
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("flaky_rewards", None)


def digit_sums(path: Path, per_level: int = 60, seed: int = 0) -> Path:
    """n-digit + n-digit sums, n = 1..3, with the number of digits as the difficulty field."""
    import random

    rng, records = random.Random(seed), []
    for n in (1, 2, 3):
        for _ in range(per_level):
            a, b = rng.randint(10 ** (n - 1), 10 ** n - 1), rng.randint(10 ** (n - 1), 10 ** n - 1)
            records.append({"question": f"{a}+{b}=", "answer": str(a + b), "digits": n})
    return write(path, records)


def test_the_ladder_climbs_a_skill_from_data_by_its_difficulty_field(tmp_path, fake_model):
    from evolvelm.cli import main
    from evolvelm.store.run import Run

    spec = skill(digit_sums(tmp_path / "sums.jsonl"), difficulty="digits", max_new_tokens=8,
                 splits={"test": 30, "dev": 30})
    assert main(["run", "copy-ladder", f"model.path={fake_model}", "model.backend=fake", "model.voters=[]", spec,
                 "rounds=4", "eval.max_difficulty=3", "acquire.problems=20", "acquire.samples=5", "acquire.step=1",
                 "acquire.schedule=fixed", "refine.chain=[vote, dedup]", "--run-dir", str(tmp_path / "r"), "-q"]) == 0
    run = Run.open(tmp_path / "r")
    assert run.done(0, "gate")["levels"] == {"add": 0}  # never trained on: the ladder starts below difficulty 1
    levels = [run.done(r, "gate")["levels"]["add"] for r in range(5)]
    assert levels[-1] == 3 and levels == sorted(levels)
    for r in range(1, 5):  # each round labels one difficulty above the level it started from, while the data has it
        assert {s.difficulty for s in run.samples(r)} == ({levels[r - 1] + 1} if levels[r - 1] < 3 else set())
    top = levels.index(3) + 1  # the first round that starts at the data's last difficulty: nothing to climb to
    assert run.done(top, "gate")["reason"] == "no samples kept; add has no unlabeled problem of difficulty 4 in its data"
    held = {p for (p,) in run.query("SELECT DISTINCT prompt FROM samples")} & {
        json.loads(line)["prompt"] for line in (tmp_path / "r" / "data" / "add.jsonl").read_text().splitlines()
        if json.loads(line)["split"] != "unlabeled"}
    assert not held


@pytest.mark.integration
def test_modular_skills_learn_a_module_per_dataset(tmp_path, chat_model):
    from evolvelm.cli import main
    from evolvelm.store.run import Run
    from evolvelm.tasks.data import DRAWN

    words = write(tmp_path / "words.jsonl", [{"word": w, "reversed": w[::-1]} for w in
                                             ["".join(chr(97 + (i * 7 + j * 3) % 26) for j in range(3 + i % 4)) for i in range(60)]])
    rev = {"name": "rev", "data": str(words), "prompt": "Reverse: {word}", "answer": "reversed", "checker": "exact",
           "splits": {"test": 6, "dev": 6}, "max_new_tokens": 8}
    add = json.loads(skill(sums(tmp_path / "sums.jsonl"))[len("skills="):])[0]
    assert main(["run", "modular-skills", f"model.path={chat_model}", f"skills={json.dumps([add, rev])}", "rounds=2",
                 "modules.examples=12", "modules.router=chars", "update.steps=3", "update.batch_size=4", "eval.max_difficulty=1",
                 "--run-dir", str(tmp_path / "r"), "-q"]) == 0
    run = Run.open(tmp_path / "r")
    assert [run.done(r, "refine")["module"] for r in (1, 2)] == ["add", "rev"]  # a module per dataset
    arrived = run.samples(2)
    references = {r.prompt: r.answer for r in DRAWN["rev"]["unlabeled"]}
    assert arrived and all(references[s.prompt] == s.completion for s in arrived)  # the rows' answers: labelled experience
    forgetting = json.loads((tmp_path / "r" / "summary.json").read_text())["forgetting"]
    assert forgetting["skills"] == ["add", "rev"] and len(forgetting["matrix"]) == 3

    # served: each module by name, the base, and `auto` through the router, as `evolvelm generate` answers
    from test_serve import serving

    from evolvelm.report.export import answerer
    from evolvelm.serve import open_served

    ours = answerer(run)(["What is 3 + 4?", "Reverse: abc", "Reverse: qwerty"], 8)
    served = open_served(str(run.root))
    with serving(served) as (client, _):
        assert sorted(m.id for m in client.models.list().data) == ["add", "auto", "base", "rev"]
        for prompt, answer, module in ours:
            for name in ("auto", module or "base"):
                got = client.chat.completions.create(model=name, messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=8, temperature=0)
                assert got.choices[0].message.content == answer, (name, prompt)
    served.close()


NAMES = ["Mira", "Tobin", "Asha", "Lev", "Noor", "Ravi"]
CITIES = ["Oslo", "Lima", "Pune", "Graz", "Kobe", "Turin"]
JOBS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay"]


def documents_file(path: Path) -> Path:
    """Six documents, each with four questions about it (two phrasings of two facts)."""
    rows = []
    for name, city, job in zip(NAMES, CITIES, JOBS):
        doc = f"{name} lives in {city}. {name} works for {job}."
        rows += [{"doc": doc, "question": q, "answer": a} for q, a in [
            (f"Where does {name} live?", city), (f"Which city is {name}'s home?", city),
            (f"Who employs {name}?", job), (f"Where does {name} work?", job)]]
    return write(path, rows)


@pytest.mark.integration
def test_knowledge_distill_injects_the_documents_of_a_user_file(tmp_path, chat_model):
    from evolvelm.cli import main
    from evolvelm.store.run import Run

    corpus = {"name": "people", "data": str(documents_file(tmp_path / "docs.jsonl")), "prompt": "question",
              "answer": "answer", "document": "doc", "checker": "normalized", "splits": {"test": 0.25}, "max_new_tokens": 6}
    assert main(["run", "knowledge-distill", f"model.path={chat_model}", f"skills={json.dumps([corpus, 'copy'])}",
                 "rounds=2", "knowledge.people=2", "knowledge.anchors=6", "update.steps=3", "update.batch_size=4",
                 "eval.max_difficulty=2", "eval.problems=3", "eval.dev_problems=3", "--run-dir", str(tmp_path / "r"), "-q"]) == 0
    run = Run.open(tmp_path / "r")
    docs = [s for s in run.samples(1) if s.skill == "document"]
    asked = [s for s in run.samples(1) if s.skill == "people"]
    assert len(docs) == 2 and {d.completion for d in docs} < {f"{n} lives in {c}. {n} works for {j}." for n, c, j in zip(NAMES, CITIES, JOBS)}
    test = {json.loads(line)["prompt"] for line in (tmp_path / "r" / "data" / "people.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "test"}
    assert asked and all(s.context in {d.completion for d in docs} and s.prompt not in test for s in asked)
    assert all(s.rendered.endswith("<|im_start|>assistant\n") and s.context + "\n\n" + s.prompt in s.rendered for s in asked)
    round2 = {s.completion for s in run.samples(2) if s.skill == "document"}
    assert len(round2) == 2 and not round2 & {d.completion for d in docs}  # the next documents, never the same
    k = json.loads((tmp_path / "r" / "summary.json").read_text())["knowledge"]
    assert len(k["matrix"]) == 2 and len(k["upper"]) == 2 and set(k["other_base"]) == {"copy"}  # no zoo:facts population
    held = run.query("SELECT difficulty, n FROM evals WHERE skill='people' AND round=2 ORDER BY difficulty")
    assert [r["n"] for r in held] == [sum(1 for line in (tmp_path / "r" / "data" / "people.jsonl").read_text().splitlines()
                                           if json.loads(line)["split"] == "test" and json.loads(line)["document"] in ds)
                                      for ds in ({d.completion for d in docs}, round2)]


def quickstart(folder: Path, monkeypatch) -> None:
    """The quickstart's dataset script and recipe as the README prints them, run and written in `folder`."""
    import subprocess

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    script = re.search(r"python3 - <<'PY'[^\n]*\n(.*?)\nPY\n", readme, re.S).group(1)
    recipe = re.search(r"cat > sums.yaml <<'YAML'\n(.*?)\nYAML\n", readme, re.S).group(1)
    monkeypatch.chdir(folder)
    subprocess.run([sys.executable, "-c", script], check=True)
    (folder / "sums.yaml").write_text(recipe)


def test_the_readme_quickstart_runs_on_the_fake_backend(tmp_path, monkeypatch):
    """The quickstart's dataset script and recipe, as the README prints them, with the fake as the model."""
    from evolvelm.cli import main

    quickstart(tmp_path, monkeypatch)
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "fake.json").write_text('{"levels": {}}')
    assert main(["run", "sums.yaml", "model.backend=fake", "model.path=fake", "--run-dir", "runs/sums", "-q"]) == 0
    summary = json.loads((tmp_path / "runs" / "sums" / "summary.json").read_text())
    assert len(summary["rounds"]) == 4 and summary["semisup"]["accuracy"][-1] > summary["semisup"]["base"]


@pytest.mark.integration
def test_the_readme_quickstart_runs_on_the_zoo_sized_chat_model(tmp_path, monkeypatch):
    """The quickstart's recipe, unchanged but for model.path and sizes, on zoo:sums-chat: a BPE tokenizer
    and a chat template like SmolLM2's, trained on a few sums; partly right before any round."""
    from evolvelm.cli import main
    from evolvelm.store.run import Run

    quickstart(tmp_path, monkeypatch)
    assert main(["run", "sums.yaml", "model.path=zoo:sums-chat", "rounds=1", "acquire.problems=20", "update.steps=5",
                 "--run-dir", "runs/zoo", "-q"]) == 0
    run = Run.open(tmp_path / "runs" / "zoo")
    samples = run.samples(1)
    assert samples and all(s.rendered.startswith("<|im_start|>user\n") and s.rendered.endswith("<|im_start|>assistant\n")
                           for s in samples)
    base = json.loads((tmp_path / "runs" / "zoo" / "summary.json").read_text())["rounds"][0]["accuracy"]["sums"]
    assert base["2"] > 0.5 and 0 < base["3"] < 0.5  # right on most 2-digit sums, on some 3-digit ones


def test_generated_sums_are_distinct_and_leave_out_what_the_zoo_model_learned():
    from evolvelm.models import resolve
    from evolvelm.zoo.train import sums_rows

    trained = [json.loads(line) for line in (Path(resolve("zoo:sums-chat")) / "trained.jsonl").read_text().splitlines()]
    seen = frozenset(r["question"] for r in trained)
    rows = sums_rows({1: 500, 2: 300, 3: 300}, 0, seen)
    by = {d: [r for r in rows if r["digits"] == d] for d in (1, 2, 3)}
    assert len(by[1]) == 100 - sum(r["digits"] == 1 for r in trained) and len(by[2]) == len(by[3]) == 300  # 1 digit: all left
    assert len({r["question"] for r in rows}) == len(rows) and not seen & {r["question"] for r in rows}
    assert all(r["answer"] == sum(map(int, re.findall(r"\d+", r["question"]))) for r in rows)
    assert sums_rows({1: 500, 2: 300, 3: 300}, 0, seen) == rows != sums_rows({1: 500, 2: 300, 3: 300}, 1, seen)
