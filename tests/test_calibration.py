"""Calibration of the held-out answers' confidence: the metrics on literal inputs, and every round's
numbers in summary.json and the report."""
import json
import math

import pytest

from evolvelm.cli import main
from evolvelm.evaluate.calibration import auroc, calibration, confidences, metrics, recalibrated


def test_confidences_of_an_answer():
    c = confidences([math.log(0.5), math.log(0.5)])
    assert c["sequence"] == pytest.approx(0.25) and c["token"] == pytest.approx(0.5)
    assert confidences([]) == {"sequence": 0.0, "token": 0.0}


def test_metrics_on_literal_inputs():
    sharp = metrics([1.0, 1.0, 0.0, 0.0], [True, True, False, False])
    assert (sharp["ece"], sharp["brier"], sharp["auroc"]) == (0.0, 0.0, 1.0)
    assert [b[0] for b in sharp["bins"]] == [0.0, 0.9]  # a confidence of 1 falls in the last bin
    flat = metrics([0.8] * 10, [True] * 8 + [False] * 2)  # honest on average, no ranking at all
    assert flat["ece"] == 0.0 and flat["brier"] == pytest.approx(0.16) and flat["auroc"] == 0.5
    backwards = metrics([0.9, 0.9, 0.1, 0.1], [False, False, True, True])
    assert backwards["ece"] == pytest.approx(0.9) and backwards["auroc"] == 0.0
    assert backwards["bins"] == [[0.1, 2, 0.1, 1.0], [0.9, 2, 0.9, 0.0]]
    assert metrics([0.3, 0.6], [True, True])["auroc"] is None  # no wrong answer to rank against
    assert metrics([], [])["n"] == 0


def test_auroc_counts_ties_half():
    # right at 0.5 and 0.7; wrong at 0.5 and 0.2: pairs (0.5,0.5) half, (0.5,0.2) 1, (0.7,0.5) 1, (0.7,0.2) 1
    assert auroc([0.5, 0.7, 0.5, 0.2], [True, True, False, False]) == pytest.approx(3.5 / 4)


def test_recalibrated_confidence_is_the_accuracy_of_its_bin_among_answers_already_checked():
    # seen: at 0.9 three answers, one right (overconfident); at 0.15 one answer, right
    seen_conf, seen_right = [0.9, 0.92, 0.95, 0.15], [True, False, False, True]
    out = recalibrated(seen_conf, seen_right, [0.91, 0.12, 0.5])
    assert out[0] == pytest.approx((1 + 0.91) / 4)  # 1 right of 3, shrunk by one pseudo-answer at 0.91
    assert out[1] == pytest.approx((1 + 0.12) / 2)  # a bin of one answer says neither 0 nor 1
    assert out[2] == 0.5  # no answer seen at 0.5: the confidence as it is


def test_a_models_estimate_of_its_accuracy_rests_on_checked_dev_answers_alone():
    from evolvelm.recipes.semisup import estimate

    seen = {"dev_right": {"s": {"1": "10", "2": "0"}},
            "dev_confidence": {"s": {"1": [[0.9, 0.95], [0.9, 0.95]], "2": [[0.3, 0.6]]}}}
    test = {"s": {1: [{"sequence": 0.9, "token": 0.95}], 2: [{"sequence": 0.35, "token": 0.1}]}}
    out = estimate(seen, test)
    # sequence: 0.9 -> (1 right of 2 + 0.9) / 3; 0.35 -> (0 of 1 + 0.35) / 2
    assert out["sequence"]["pooled"] == out["sequence"]["s"] == pytest.approx(((1 + 0.9) / 3 + 0.35 / 2) / 2, abs=1e-4)
    assert out["token"]["s"] == pytest.approx(((1 + 0.95) / 3 + 0.1) / 2, abs=1e-4)  # 0.1: no dev answer there


def test_the_prediction_from_changed_answers_keeps_the_old_verdicts_where_the_final_answer_stayed():
    from evolvelm.recipes.semisup import delta

    # the starting model: right on its first two test answers (finals a, b), wrong on the third (c);
    # of its dev answers at token confidence 0.95, one of two was right
    start = lambda skill: {"dev_right": {skill: {"1": "10"}}, "dev_confidence": {skill: {"1": [[0.9, 0.95], [0.9, 0.95]]}},
                           "test_right": {skill: {"1": "110"}}, "test_finals": {skill: {"1": ["a", "b", "c"]}}}
    # the candidate keeps a, changes b (to x, at 0.95) and c (to y, at 0.1); its confidence in a is not used
    conf = [{"sequence": 0.1, "token": 0.1}, {"sequence": 0.9, "token": 0.95}, {"sequence": 0.1, "token": 0.1}]
    out = delta(start("copy"), {"copy": {1: conf}}, {"copy": {1: ["a", "x", "y"]}})
    # copy has one right answer: b was right, so x is wrong; y counts its recalibrated confidence
    assert out["copy"] == out["pooled"] == pytest.approx((1 + 0 + 0.1) / 3, abs=1e-4)
    assert out["changed"] == pytest.approx(2 / 3, abs=1e-4)
    # expr's judge accepts any expression of the right value: x may be right too
    out = delta(start("expr"), {"expr": {1: conf}}, {"expr": {1: ["a", "x", "y"]}})
    assert out["pooled"] == pytest.approx((1 + (1 + 0.95) / 3 + 0.1) / 3, abs=1e-4)
    assert delta(start("copy"), {"copy": {1: conf}}, {"copy": {1: ["a", "b", "c"]}})["pooled"] == pytest.approx(2 / 3, abs=1e-4)
    # with the model the starting one was trained from: the map comes from the dev answers that update
    # changed on problems it had wrong (here one, at 0.95, wrong), not from every dev answer
    trained, parent = {**start("copy"), "dev_finals": {"copy": {"1": ["p", "q"]}}}, {"dev_right": {"copy": {"1": "10"}},
                                                                                    "dev_finals": {"copy": {"1": ["o", "z"]}}}
    out = delta(trained, {"copy": {1: conf[:2] + [conf[1]]}}, {"copy": {1: ["a", "x", "y"]}}, (trained, parent))
    assert out["pooled"] == pytest.approx((1 + 0 + 0.95 / 2) / 3, abs=1e-4) and out["fitted_on"] == 1


def test_calibration_pools_difficulties_per_skill():
    right = {"copy": {1: [True, True], 2: [False]}}
    conf = {"copy": {1: [{"sequence": 0.9, "token": 0.95}] * 2, 2: [{"sequence": 0.2, "token": 0.6}]}}
    out = calibration(right, conf)["copy"]
    assert out["sequence"]["n"] == 3 and out["sequence"]["auroc"] == 1.0
    assert out["token"]["confidence"] == pytest.approx((0.95 * 2 + 0.6) / 3, abs=1e-4)


def test_every_round_reports_calibration_in_the_summary_and_the_report(tmp_path, fake_recipe):
    run_dir = tmp_path / "run"
    assert main(["run", str(fake_recipe), "rounds=1", "--run-dir", str(run_dir), "-q"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    for r in summary["rounds"]:
        for skill, c in r["calibration"].items():
            assert c["n"] > 0 and sum(b[1] for b in c["bins"]) == c["n"]
            # the fake backend is surer of its right answers (-0.1 per token) than of its wrong ones (-1.0)
            assert c["auroc"] in (None, 1.0) and c["token_auroc"] in (None, 1.0)
    assert any(c["auroc"] == 1.0 for r in summary["rounds"] for c in r["calibration"].values())
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert "Calibration" in page and "Reliability of the test answers" in page
