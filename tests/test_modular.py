"""One module per skill behind a router: routing, the forgetting metrics, the recipe end to end on
the shipped modular base, and using the evolved model (generate, export); its kill-and-resume: test_models."""
import json

import pytest
import torch

from evolvelm import config
from evolvelm.config import ConfigError
from evolvelm.store.run import Run
from evolvelm.store.summary import forgetting
from evolvelm.tasks import get_task
from evolvelm.update.modules import Router, char_features
from test_resume import evolvelm

SMALL = ["skills=[reverse, shift, reverse]", "rounds=3", "eval.max_difficulty=2", "eval.problems=30",
         "eval.dev_problems=20", "modules.examples=400", "update.steps=150"]


def test_router_routes_known_inputs_and_rejects_novel_ones():
    feats = torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.0, 0.2], [5.0, 5.0], [5.2, 5.0], [5.0, 5.2]])
    router = Router.fit("chars", feats, ["a", "a", "a", "b", "b", "b"], novelty=2.0)
    assert router.route(torch.tensor([[0.1, 0.1], [5.1, 5.1], [-20.0, 30.0]])) == ["a", "b", None]


def test_router_save_load_round_trip(tmp_path):
    reverse, shift, expr = (get_task(s).problems(3, 80, seed=1) for s in ("reverse", "shift", "expr"))
    router = Router.fit("chars", char_features([p.prompt for p in reverse[:60] + shift[:60]]),
                        ["r"] * 60 + ["s"] * 60, 2.0)
    router.save(tmp_path / "router.json")
    again = Router.load(tmp_path / "router.json")
    probe = char_features([p.prompt for p in reverse[60:] + shift[60:] + expr])  # n-grams: novelty is weak
    assert again.route(probe) == router.route(probe)
    assert again.route(probe)[:40] == ["r"] * 20 + ["s"] * 20


def test_char_features_separate_task_markers():
    a, b = char_features(["Rabc=", "Sabc="])
    assert torch.allclose(a.norm(), torch.tensor(1.0)) and not torch.allclose(a, b)


def test_forgetting_metrics_follow_gem():
    acc = lambda *xs: {s: {1: x} for s, x in zip(["p", "q"], xs)}
    rounds = [{"promoted": True, "accuracy": acc(0.1, 0.2)},   # base
              {"promoted": True, "accuracy": acc(0.9, 0.3)},   # learned p
              {"promoted": False, "accuracy": acc(0.0, 0.0)},  # rolled back: the kept model is round 1's
              {"promoted": True, "accuracy": acc(0.7, 0.8)}]   # learned q
    f = forgetting(rounds, ["p", "p", "q"])
    assert f["matrix"][2] == f["matrix"][1] == [0.9, 0.3]
    assert f["acc"] == pytest.approx(0.75)
    assert f["bwt"] == pytest.approx(0.7 - 0.9)  # p after the sequence vs right after it was learned
    assert f["fwt"] == pytest.approx(0.3 - 0.2)  # q before it was trained vs the base


def test_modular_recipe_needs_one_round_per_skill():
    with pytest.raises(ConfigError, match="rounds must be 3"):
        config.load("modular-skills", ["skills=[reverse, shift, copy]", "rounds=2"])
    with pytest.raises(ConfigError, match="modules.method"):
        config.load("modular-skills", ["modules.method=mixture"])


@pytest.fixture(scope="module")
def modular_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("modular") / "run"
    out = evolvelm("run", "modular-skills", *SMALL, "--run-dir", str(run_dir), timeout=600)
    assert out.returncode == 0, out.stderr
    return run_dir


def test_router_opens_a_module_per_new_skill_and_updates_the_known_one(modular_run):
    run = Run.open(modular_run)
    refine = [run.done(r, "refine") for r in (1, 2, 3)]
    assert [(x["module"], x["opened"]) for x in refine] == [("reverse", True), ("shift", True), ("reverse", False)]
    assert refine[2]["routes"] == {"reverse": refine[2]["kept"]}  # every reverse input found its module
    states = [run.done(r, "update") for r in (2, 3)]
    assert states[1]["modules"]["shift"] == states[0]["modules"]["shift"]  # round 3 left shift alone
    assert states[1]["modules"]["reverse"] != states[0]["modules"]["reverse"]
    assert states[1]["loss_last"] < states[1]["loss_first"]
    assert (modular_run / states[1]["modules"]["reverse"] / "adapter_config.json").is_file()
    assert (modular_run / states[1]["router"] / "router.json").is_file()
    reasons = {r["reason"] for r in run.query("SELECT reason FROM verdicts WHERE round=3 AND filter='router'")}
    assert reasons == {"routes to reverse"}


def test_modular_summary_has_the_forgetting_matrix_and_router_accuracy(modular_run):
    summary = json.loads((modular_run / "summary.json").read_text())
    f = summary["forgetting"]
    assert f["skills"] == ["reverse", "shift"] and len(f["matrix"]) == 4
    assert f["acc"] > 0.9 and f["bwt"] > -0.05  # both learned; a frozen base and separate modules keep reverse
    assert summary["rounds"][-1]["router"] == {"reverse": 1.0, "shift": 1.0}
    assert summary["rounds"][1]["router"]["shift"] == 1.0  # before shift was learned: routed to no module


def test_generate_answers_through_the_router(modular_run):
    out = evolvelm("generate", str(modular_run), "Rab=", "Sab=")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["Rab=\tba\t[reverse]", "Sab=\tbc\t[shift]"]


def test_export_modules_and_a_merged_module(modular_run, tmp_path):
    assert evolvelm("export", str(modular_run), str(tmp_path / "all")).returncode == 0
    assert {p.name for p in (tmp_path / "all" / "modules").iterdir()} == {"reverse", "shift"}
    assert (tmp_path / "all" / "router.json").is_file() and (tmp_path / "all" / "base" / "config.json").is_file()
    ambiguous = evolvelm("export", str(modular_run), str(tmp_path / "m"), "--merged")
    assert ambiguous.returncode == 2 and "--module" in ambiguous.stderr
    assert evolvelm("export", str(modular_run), str(tmp_path / "m"), "--merged", "--module", "shift").returncode == 0
    from evolvelm.backends.hf import HFBackend

    assert HFBackend(str(tmp_path / "m")).generate(["Sab="], [0], 0.0, 5)[0].text == "bc"


def test_shared_adapter_baseline_forgets(tmp_path):
    out = evolvelm("run", "modular-skills", "skills=[reverse, shift]", "rounds=2", *SMALL[2:],
                   "modules.method=shared", "gate.tolerance=1", "--run-dir", str(tmp_path / "run"), timeout=600)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    state = Run.open(tmp_path / "run").done(2, "gate")
    assert state["modules"] == {} and state["adapter"].endswith("0002/update/model")
    assert summary["forgetting"]["bwt"] < -0.5  # one adapter trained on shift loses reverse
