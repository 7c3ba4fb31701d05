"""One module per skill behind a router: routing, the forgetting metrics, the recipe end to end on
the shipped modular base, and using the evolved model (generate, export); which module trains, chosen
by the controller; its kill-and-resume: test_models."""
import json
import signal

import pytest
import torch

from evolvelm import config, controller
from evolvelm.config import ConfigError
from evolvelm.store.run import Run
from evolvelm.store.summary import forgetting
from evolvelm.tasks import get_task
from evolvelm.update.modules import Router, char_features
from test_resume import evolvelm, outcome

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


def test_forgetting_counts_a_skill_never_learned_in_the_mean_only():
    acc = lambda *xs: {s: {1: x} for s, x in zip(["p", "q"], xs)}
    f = forgetting([{"promoted": True, "accuracy": acc(0.1, 0.2)}, {"promoted": True, "accuracy": acc(0.9, 0.3)},
                    {"promoted": True, "accuracy": acc(0.8, 0.3)}], ["p", "p"], ["p", "q"])
    assert f["skills"] == ["p", "q"] and f["acc"] == pytest.approx(0.8) and f["mean"] == pytest.approx(0.55)
    assert f["bwt"] == pytest.approx(0.8 - 0.9) and f["fwt"] is None


def test_modular_recipe_needs_one_round_per_skill():
    with pytest.raises(ConfigError, match="rounds must be 3"):
        config.load("modular-skills", ["skills=[reverse, shift, copy]", "rounds=2"])
    with pytest.raises(ConfigError, match="modules.method"):
        config.load("modular-skills", ["modules.method=mixture"])
    # unless the controller chooses each round's skill: then any number of rounds, and only this recipe
    assert config.load("modular-skills", ["skills=[reverse, shift]", "rounds=5", "modules.order=controller"]).rounds == 5
    with pytest.raises(ConfigError, match="modules.order"):
        config.load("lmsi", ["modules.order=controller"])


class Modules:
    """A modular run's manifest as the controller reads it: rounds of (skill, dev accuracy per skill after
    the round, promoted), from a base with dev accuracy `base`."""

    def __init__(self, base, rounds):
        self.info = {(0, "gate"): {"model": "m", "round": 0, "promoted": True},
                     (0, "eval"): {"dev": {s: {"1": a} for s, a in base.items()}}}
        kept = 0
        for rnd, (skill, dev, promoted) in enumerate(rounds, 1):
            self.info[(rnd, "acquire")] = {"skill": skill, "controller": {"arm": skill}}
            self.info[(rnd, "eval")] = {"dev": {s: {"1": a} for s, a in dev.items()}}
            kept = rnd if promoted else kept
            self.info[(rnd, "gate")] = {"model": "m", "round": kept, "promoted": promoted}

    def done(self, rnd, stage):
        return self.info.get((rnd, stage))


def test_the_controller_learns_each_skill_once_then_where_the_expected_gain_is_highest():
    cfg = config.load("modular-skills", ["skills=[reverse, shift, copy]", "rounds=9", "modules.order=controller",
                                         "controller.policy=ucb", "controller.explore=0", "update.steps=10",
                                         "update.batch_size=100"])
    base = {"reverse": 0.2, "shift": 0.0, "copy": 0.5}
    d = controller.choose_module(cfg, Modules(base, []), 1)
    assert d["arm"] == "reverse" and d["reason"].startswith("reverse: not learned yet") and d["dev"] == base
    history = [("reverse", {**base, "reverse": 0.6}, True), ("shift", {**base, "reverse": 0.6, "shift": 0.1}, True)]
    assert controller.choose_module(cfg, Modules(base, history), 3)["arm"] == "copy"
    # each skill learned once: reverse fixed half its errors (0.4 of 0.8) and has 0.4 left, shift 0.1 of its
    # errors with 0.9 left, copy all of them; expected gains over 3 skills per 1k sequences trained on
    history.append(("copy", {"reverse": 0.6, "shift": 0.1, "copy": 1.0}, True))
    d = controller.choose_module(cfg, Modules(base, history), 4)
    e = d["estimates"]
    assert e["reverse"]["mean_value"] == pytest.approx(0.5 * 0.4 / 3, abs=1e-4)
    assert e["shift"]["mean_value"] == pytest.approx(0.1 * 0.9 / 3, abs=1e-4)
    assert d["arm"] == "reverse" and "highest UCB" in d["reason"] and "no dev errors left: copy" in d["reason"]
    # a round on reverse that lost a quarter of its errors' worth (0.6 -> 0.5), rolled back: its mean falls below shift's
    history.append(("reverse", {"reverse": 0.5, "shift": 0.1, "copy": 1.0}, False))
    assert controller.choose_module(cfg, Modules(base, history), 5)["arm"] == "shift"
    # a solved skill is not chosen while another has dev errors left, even where those lost (its value is 0)
    worse = {"reverse": 0.1, "shift": 0.2, "copy": 1.0}
    solved = [("copy", {**base, "shift": 0.3, "copy": 1.0}, True), ("reverse", {**worse, "shift": 0.3}, True),
              ("shift", worse, True)]
    d = controller.choose_module(cfg, Modules({**base, "shift": 0.3}, solved), 4)
    assert d["estimates"]["copy"]["mean_value"] == 0 > max(d["estimates"][s]["mean_value"] for s in ("reverse", "shift"))
    assert d["arm"] == "reverse" and "no dev errors left: copy" in d["reason"]
    random = config.load("modular-skills", ["skills=[reverse, shift, copy]", "rounds=9", "modules.order=controller",
                                            "controller.policy=random"])
    run = Modules(base, [("reverse", base, True)] * 11)
    picks = [controller.choose_module(random, run, rnd) for rnd in range(1, 13)]
    assert {d["arm"] for d in picks} == {"reverse", "shift", "copy"}
    assert all("drawn at random" in d["reason"] for d in picks)
    assert picks == [controller.choose_module(random, run, rnd) for rnd in range(1, 13)]
    weakest = config.load("modular-skills", ["skills=[reverse, shift, copy]", "rounds=9", "modules.order=controller",
                                             "controller.policy=weakest"])
    d = controller.choose_module(weakest, Modules(base, history), 5)
    assert d["arm"] == "shift" and "lowest dev accuracy, 0.1000" in d["reason"]
    with pytest.raises(ConfigError, match="weakest"):
        config.load("lmsi", ["controller.policy=weakest"])


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


CHOSEN = ["skills=[reverse, shift]", "rounds=3", "modules.order=controller", "controller.policy=ucb", *SMALL[2:5],
          "modules.examples=60", "update.steps=10"]


def test_the_controller_chooses_which_module_trains_and_says_why(tmp_path):
    run_dir = tmp_path / "run"
    out = evolvelm("run", "modular-skills", *CHOSEN, "--run-dir", str(run_dir), timeout=600)
    assert out.returncode == 0, out.stderr
    run = Run.open(run_dir)
    decisions = [run.done(r, "acquire")["controller"] for r in (1, 2, 3)]
    assert [d["arm"] for d in decisions[:2]] == ["reverse", "shift"]  # each skill once, in order
    assert "highest UCB" in decisions[2]["reason"] and decisions[2]["estimates"]["reverse"]["plays"] == 1
    third = decisions[2]["arm"]
    assert run.done(3, "acquire")["skill"] == third  # the round's experience is of the chosen skill...
    assert {r["skill"] for r in run.query("SELECT DISTINCT skill FROM samples WHERE round=3")} == {third}
    refined = run.done(3, "refine")
    assert (refined["module"], refined["opened"]) == (third, False)  # ...and trains its module
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["controller"]["arm"] for r in summary["rounds"][1:]] == [d["arm"] for d in decisions]
    f = summary["forgetting"]
    assert f["skills"] == ["reverse", "shift"] and f["mean"] == pytest.approx(sum(f["matrix"][-1]) / 2, abs=1e-4)
    assert evolvelm("report", str(run_dir)).returncode == 0
    page = (run_dir / "report.html").read_text()
    assert "Skill per round" in page and decisions[2]["reason"].split(" (")[0] in page
    killed = tmp_path / "killed"  # killed and resumed: the same decisions, samples and verdicts
    out = evolvelm("run", "modular-skills", *CHOSEN, "--run-dir", str(killed),
                   env={"EVOLVELM_KILL_AT": "3:update:before-manifest"}, timeout=600)
    assert out.returncode == -signal.SIGKILL
    assert evolvelm("resume", str(killed), timeout=600).returncode == 0
    assert outcome(killed) == outcome(run_dir)
