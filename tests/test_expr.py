"""The expr skill: answers are Python expressions, judged by executing them in the sandbox."""
import shutil

import pytest
import yaml

from evolvelm import config, sandbox
from evolvelm.cli import main as run_cli
from evolvelm.refine.filters import FilterContext, verify
from evolvelm.tasks import get_task
from evolvelm.types import Problem, Sample



def P(n: str) -> Problem:
    return Problem("expr", len(n), f"E{n}=", "")  # the judge needs no true answer


def test_judge_executes_answers_and_explains():
    task = get_task("expr")
    probs = [P("4097")] * 6
    answers = ["4055+42", "42+4055", "4055+43", "4055+042", "4097", "__import__('os')"]
    got = task.judge(probs, answers)
    assert [ok for ok, _ in got] == [True, True, False, False, False, False]
    assert got[2][1] == "evaluates to 4098, not 4097"
    assert got[3][1].startswith("SyntaxError")  # leading zeros: only running it tells
    assert "not allowed" in got[4][1] and "not allowed" in got[5][1]
    assert task.check_many(probs[:2], answers[:2]) == [True, True]


def test_canonical_answers_pass_the_judge():
    task = get_task("expr")
    probs = task.problems(6, 50, seed=3)
    assert all(task.check_many(probs, [p.answer for p in probs]))


def test_an_infrastructure_failure_is_never_scored_wrong(monkeypatch):
    class Broken:
        def map(self, codes):
            return [sandbox.Result("sandbox_error", None, "", "", 0.0, "bwrap", "bwrap: setting up uid map")] * len(codes)

    monkeypatch.setattr(sandbox, "shared", lambda: Broken())
    with pytest.raises(sandbox.SandboxUnavailable, match="no answer was scored"):
        get_task("expr").judge([P("12")], ["12"])


def test_verify_needs_no_true_label():
    samples = [Sample(round=1, skill="expr", difficulty=2, prompt="E79=", completion=c, model_version="v", seed=k,
                      k=k, temperature=1.0, mean_logprob=-0.1, true_answer="") for k, c in enumerate(["55+24", "79", "54+25"])]
    verdicts = verify(samples, FilterContext(3, 0.6))
    assert [v.kept for v in verdicts] == [True, False, True] and verdicts[0].version == "expr-sandbox-1"


def test_verify_refuses_skills_checked_against_labels():
    with pytest.raises(config.ConfigError, match="verify"):
        config.load(None, ["skills=[copy]", "refine.chain=[verify]"])
    with pytest.raises(config.ConfigError, match="sandbox.level"):
        config.load(None, ["sandbox.level=docker"])


def test_ladder_learns_from_executor_verified_answers(tmp_path):
    from evolvelm.backends import fake

    model = fake.write(tmp_path / "fake", {"expr": 3})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "rounds": 3, "skills": ["expr"], "model": {"path": str(model), "backend": "fake"},
        "acquire": {"problems": 60, "samples": 5}, "refine": {"chain": ["length", "verify", "dedup"]},
        "eval": {"max_difficulty": 8, "problems": 30, "dev_problems": 20}}))
    assert run_cli(["run", str(recipe), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    summary = yaml.safe_load((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_frontier"]["expr"] > 3
    assert all(r["label_precision"] == 1.0 for r in summary["rounds"][1:])
    assert summary["sandbox"]["level"] == ("bwrap" if shutil.which("bwrap") else "subprocess")


def test_feedback_retries_rejected_answers_and_learns_from_the_corrections(tmp_path):
    from evolvelm.backends import fake
    from evolvelm.store.run import Run

    model = fake.write(tmp_path / "fake", {"expr": 3})
    run_dir = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "rounds": 1, "skills": ["expr"], "model": {"path": str(model), "backend": "fake"},
        "acquire": {"problems": 60, "samples": 5, "feedback": True}, "refine": {"chain": ["length", "verify", "dedup"]},
        "eval": {"max_difficulty": 6, "problems": 20, "dev_problems": 10}}))
    assert run_cli(["run", str(recipe), "--run-dir", str(run_dir), "--quiet"]) == 0
    run = Run.open(run_dir)
    samples = run.samples(1)
    retries = [s for s in samples if s.context]
    first = [s for s in samples if not s.context]
    judge = get_task("expr").check_many
    rejected = [s for s, ok in zip(first, judge([P(s.prompt[1:-1]) for s in first], [s.completion for s in first])) if not ok]
    assert len(retries) == len(rejected) > 0  # one greedy retry per rejected answer
    assert all(s.context.startswith(s.prompt) and ">" in s.context and s.temperature == 0.0 for s in retries)
    right = [s for s, ok in zip(retries, judge([P(s.prompt[1:-1]) for s in retries], [s.completion for s in retries])) if ok]
    assert right  # some corrections, each kept unless a first try already gave the same label
    assert all(s.kept or [v.filter for v in s.verdicts if not v.kept] == ["dedup"] for s in right)
    kept_retries = [s for s in retries if s.kept]
    assert {s.id for s in kept_retries} <= {s.id for s in right}
    assert run.done(1, "refine")["kept_retries"] == len(kept_retries)
    assert run.done(1, "acquire")["feedback"]["expr"]["4"]["retried"] == len(retries)
    assert run_cli(["report", str(run_dir), "--quiet"]) == 0
    page = (run_dir / "report.html").read_text()
    assert "executed in the sandbox at level" in page and f"{len(retries)} rejected answers were retried" in page
