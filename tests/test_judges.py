"""Judges: verdicts in both orders, the LLMBar audit and its report, the `judge` filter, the audit that
`validate` demands of a judge, and self-rewarding rounds that stop using a judge that fails."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evolvelm import judges
from evolvelm.cli import main
from evolvelm.refine.filters import FilterContext, run_chain
from evolvelm.store.run import Run
from evolvelm.types import Sample

LLMBAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "llmbar"


class Scripted:
    """Prefers (and rates 5) the output holding the instruction's word; `biased`: always the first shown."""

    name, version = "scripted", "scripted-1"

    def __init__(self, biased: bool = False):
        self.biased = biased

    def prefer(self, items):
        word = lambda i: i.split()[-1].rstrip(".")
        return [1 if self.biased else 1 if word(i) in a else 2 if word(i) in b else 0 for i, a, b in items]

    def score(self, items):
        return [5.0 if i.split()[-1].rstrip(".") in r else 1.0 for i, r in items]

    def close(self):
        pass


def test_verdicts_are_read_from_what_a_judge_writes():
    assert [judges.read_verdict(t) for t in ("Output (a)", " output (b) is better", "(b)", "b", "Output (a) or Output (b)",
                                              "Both are good.", "about", "")] == [1, 2, 2, 2, 1, 0, 0, 0]
    assert [judges.read_score(t) for t in ("4", "Rating: 5/5", "none", "0 or 9")] == [4.0, 5.0, None, None]


def test_the_audit_asks_both_orders_and_counts_a_flip_as_a_tie(llmbar_dir):
    fair = judges.audit(Scripted(), llmbar_dir)
    assert set(fair["subsets"]) == {"Natural", "Adversarial/Neighbor", "Adversarial/GPTOut"}
    assert fair["all"] == {"pairs": 6, "accuracy": 1.0, "both_right": 1.0, "agreement": 1.0, "ties": 0.0, "no_verdict": 0.0}
    assert fair["adversarial"]["pairs"] == 4
    biased = judges.audit(Scripted(biased=True), llmbar_dir)  # right in one order of every pair, never both
    assert biased["all"] == {"pairs": 6, "accuracy": 0.5, "both_right": 0.0, "agreement": 0.0, "ties": 1.0, "no_verdict": 0.0}
    assert biased["verdicts"]["Natural"] == [[1, 2], [1, 2]]
    assert judges.audit(judges.FirstJudge(), llmbar_dir)["all"] == biased["all"]
    first, again = (judges.audit(judges.RandomJudge(3), llmbar_dir) for _ in range(2))
    assert first["subsets"] == again["subsets"]  # seeded by the judgement itself
    assert judges.verdict(fair, 0.6, 0.6)[0] and not judges.verdict(biased, 0.5, 0.1)[0]
    p = judges.pairwise(Scripted(), [("Say yes.", "yes", "no"), ("Say yes.", "no", "yes"), ("Say it.", "a", "b")])
    assert [x.winner for x in p] == [1, 2, 0]


def test_judge_audit_writes_a_json_report_and_an_html_table(tmp_path, llmbar_dir, capsys):
    out = tmp_path / "audit.json"
    assert main(["judge", "audit", "first", "--data", str(llmbar_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FAILED: judge first (first): adversarial accuracy 0.5 (below judge.min_accuracy 0.6)" in printed
    report = json.loads(out.read_text())
    for subset in ("Natural", "Adversarial/Neighbor", "Adversarial/GPTOut"):
        assert set(report["subsets"][subset]) >= {"accuracy", "agreement", "ties"}
    assert report["passed"] == {"min_accuracy": 0.6, "min_agreement": 0.6, "passed": False}
    page = out.with_suffix(".html").read_text()
    assert "Adversarial/GPTOut" in page and "<table>" in page


def test_a_malformed_llmbar_row_names_its_file_and_line(tmp_path, llmbar_dir, capsys):
    bad = llmbar_dir / "Natural" / "dataset.jsonl"
    bad.write_text(bad.read_text().splitlines()[0] + '\n{"input": "x", "output_1": "a", "output_2": "b", "label": 3}\n')
    assert main(["judge", "audit", "first", "--data", str(llmbar_dir)]) == 2
    assert f"{bad}:2: expected a JSON object" in capsys.readouterr().err
    assert main(["judge", "audit", "first", "--data", str(tmp_path / "nothing")]) == 2
    assert "no LLMBar subsets" in capsys.readouterr().err


def test_a_judge_filter_runs_only_behind_a_passing_audit_of_that_very_judge(tmp_path, llmbar_dir, capsys):
    for name in ("first", "random"):
        assert main(["judge", "audit", name, "--data", str(llmbar_dir), "--out", str(tmp_path / f"{name}.json")]) == 0
    capsys.readouterr()
    star = ["validate", "star", "refine.chain=[judge]", "judge.model=first"]
    assert main(star) == 2
    assert "judge.audit: a judge other than the model itself filters only after it passes an audit" in capsys.readouterr().err
    assert main([*star, f"judge.audit={tmp_path / 'first.json'}"]) == 2
    assert ("the judge failed its audit: judge first (first): adversarial accuracy 0.5 (below judge.min_accuracy 0.6), "
            "agreement 0.0 (below judge.min_agreement 0.6)") in capsys.readouterr().err
    assert main([*star, f"judge.audit={tmp_path / 'random.json'}"]) == 2
    assert "audits judge version random-0 (random, baseline), but the configured judge (first" in capsys.readouterr().err
    assert main([*star, f"judge.audit={tmp_path / 'first.json'}", "judge.min_accuracy=0.5", "judge.min_agreement=0"]) == 0
    assert main(["validate", "lmsi", "refine.chain=[judge]", "judge.mode=reference", f"judge.data={llmbar_dir}"]) == 2
    assert "judge.mode: reference compares answers with the problem's reference answer" in capsys.readouterr().err
    assert main(["validate", "copy-ladder", "refine.chain=[judge]"]) == 2
    assert "the 'judge' filter runs in the semisup recipes" in capsys.readouterr().err
    assert main(["validate", "star", "refine.chain=[judge]", f"judge.data={tmp_path / 'none'}"]) == 2
    assert "judge.data:" in capsys.readouterr().err


def sample(prompt: str, completion: str, k: int) -> Sample:
    return Sample(1, "copy", 1, prompt, completion, "v", k, k, 1.0, -1.0, "")


def test_the_judge_filter_keeps_what_the_judge_prefers_and_nothing_without_a_judge():
    def chain(**ctx):
        samples = [sample("Say yes.", "yes", 0), sample("Say yes.", "no", 1), sample("Say yes.", "yes", 2),
                   sample("Say it.", "it", 0)]
        run_chain(["judge"], samples, FilterContext(3, 0.5, **ctx))
        return [(s.kept, s.verdicts[0].reason) for s in samples]

    pairwise = chain(judge=Scripted(), judge_mode="samples")
    assert [k for k, _ in pairwise] == [True, False, True, False]
    assert pairwise[0][1].startswith("preferred in 1, beaten in 0") and pairwise[3][1] == "no other answer to compare it with"
    rated = chain(judge=Scripted(), judge_mode="score", judge_threshold=4.0)
    assert rated == [(True, "rated 5.0 (keep >= 4.0)"), (False, "rated 1.0 (keep >= 4.0)"), (True, "rated 5.0 (keep >= 4.0)"),
                     (True, "rated 5.0 (keep >= 4.0)")]
    assert chain(judge=None, judge_note="it failed") == [(False, "it failed")] * 4
    samples = [Sample(1, "copy", 1, "Say yes.", c, "v", k, k, 1.0, -1.0, ref) for k, (c, ref) in
               enumerate([("yes", "no"), ("no", "yes"), ("yes", "yes"), ("maybe", "perhaps")])]
    run_chain(["judge"], samples, FilterContext(1, 0.5, judge=Scripted(), judge_mode="reference"))
    assert [(s.kept, s.verdicts[0].reason) for s in samples] == [
        (True, "preferred to the reference in both orders"), (False, "the reference is preferred"),
        (True, "the reference itself"), (False, "tied with the reference (the verdict flips with the order)")]


def test_a_prompt_longer_than_the_model_reads_gets_no_verdict(chat_model):
    from evolvelm.backends.hf import HFBackend

    judge = judges.Judge(HFBackend(str(chat_model)), "logprobs")
    verdicts = judge.prefer([("Say yes.", "yes", "no"), ("Say yes." * 2000, "yes", "no")])
    assert verdicts[0] in (1, 2) and verdicts[1] == 0
    assert judge.version == judges.judge_version(judge.backend.version, "logprobs")


SELF = ["rounds=1", "acquire.problems=3", "acquire.samples=4", "update.steps=3", "update.batch_size=4", "eval.max_difficulty=2",
        "eval.problems=3", "eval.dev_problems=3", "judge.method=logprobs"]


def test_self_rewarding_uses_its_judgements_only_while_its_audit_passes(tmp_path, chat_model, llmbar_dir):
    """A random-weight model fails the audit: its round builds no pairs. With the pass marks at 0 the
    same round rates its answers and trains DPO on the pairs its ratings make (rated at least the
    threshold against rated lower, of the same problem)."""
    from evolvelm.recipes.semisup import preference_pairs

    args = ["run", "self-rewarding", f"model.path={chat_model}", f"judge.data={llmbar_dir}", *SELF, "-q"]
    assert main([*args, "--run-dir", str(tmp_path / "fail")]) == 0
    run = Run.open(tmp_path / "fail")
    judging = run.done(1, "refine")["judge"]
    assert judging["passed"] is False and judging["audit"]["all"]["pairs"] == 6
    assert all(not s.kept and s.verdicts[0].reason == judging["reason"] for s in run.samples(1))
    assert run.done(1, "update")["skipped"] == "no preference pairs"
    summary = json.loads((run.root / "summary.json").read_text())
    assert summary["rounds"][1]["judge"]["passed"] is False and "judge" not in summary["rounds"][0]
    assert main(["report", str(run.root)]) == 0 and "Judge audits" in (run.root / "report.html").read_text()

    passing = [*args, "judge.min_accuracy=0", "judge.min_agreement=0"]
    assert main([*passing, "--run-dir", str(tmp_path / "all"), "judge.threshold=0"]) == 0  # every rating kept
    ratings = sorted(float(s.verdicts[0].reason.split()[1]) for s in Run.open(tmp_path / "all").samples(1))
    median = ratings[len(ratings) // 2]  # the random model rates its answers alike: split them at the median
    assert main([*passing, "--run-dir", str(tmp_path / "pass"), f"judge.threshold={median}"]) == 0
    run = Run.open(tmp_path / "pass")
    judging, update = run.done(1, "refine")["judge"], run.done(1, "update")
    assert judging["passed"] is True
    samples = run.samples(1)
    version = judges.judge_version(samples[0].model_version, "logprobs")
    assert all(s.verdicts[0].version == version and s.verdicts[0].reason.startswith("rated ") for s in samples)
    assert 0 < sum(s.kept for s in samples) < len(samples)
    assert update["pairs"] == len(preference_pairs(run, 1, 2)) > 0 and "skipped" not in update


@pytest.mark.skipif(not LLMBAR.is_dir(), reason=f"LLMBar is not at {LLMBAR}")
def test_smollm2_is_audited_on_llmbar(tmp_path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    out = tmp_path / "smollm2.json"
    assert main(["judge", "audit", "zoo:smollm2-135m-instruct", "--data", str(LLMBAR), "--limit", "1", "--out", str(out), "-q"]) == 0
    report = json.loads(out.read_text())
    assert set(report["subsets"]) == {"Natural", "Adversarial/Neighbor", "Adversarial/GPTInst", "Adversarial/GPTOut",
                                      "Adversarial/Manual"}
    assert report["all"]["pairs"] == 5 and 0 <= report["all"]["accuracy"] <= 1 and len(report["judge"]["version"]) == 16
    assert report["all"]["no_verdict"] < 1  # it names an output
