"""The core controller (evolvelm.controller): which arm a round plays and why, on a literal history;
a semisup run whose strategy a bandit chooses, stored and reported, killed and resumed identically;
a full fine-tuning round after a LoRA round continues from the adapter's weights."""
import json
import math
import signal
from dataclasses import asdict

import pytest

from evolvelm import config, controller
from evolvelm.config import ConfigError
from evolvelm.recipes.semisup import changed_dev, last_update
from evolvelm.store.run import Run
from evolvelm.store.summary import PREDICTORS
from test_resume import evolvelm, outcome
from test_semisup import SMALL


class History:
    """A run's manifest as the controller reads it: rounds of (arm, dev right answers, promoted)."""

    def __init__(self, rounds, dev=10, base=0):
        self.info = {(0, "gate"): {"model": "m", "round": 0, "promoted": True},
                     (0, "eval"): {"round": 0, "dev_right": {"s": {"1": "1" * base + "0" * (dev - base)}}}}
        kept = 0
        for rnd, (arm, right, promoted, *trials) in enumerate(rounds, 1):  # trials: a same-start probe's
            decision = {"arm": arm, **({"trials": trials[0]} if trials else {})}
            self.info[(rnd, "acquire")] = {"acquired": 1000, "controller": decision}
            self.info[(rnd, "update")] = {}
            self.info[(rnd, "eval")] = {"round": rnd, "dev_right": {"s": {"1": "1" * right + "0" * (dev - right)}}}
            kept = rnd if promoted else kept
            self.info[(rnd, "gate")] = {"model": "m", "round": kept, "promoted": promoted}

    def done(self, rnd, stage):
        return self.info.get((rnd, stage))


def test_the_last_update_is_the_last_rounds_candidate_kept_or_rolled_back():
    """self_delta's map comes from the last update: round r - 1's candidate against the model that round
    started from, also where the gate rolled it back (then round r starts from that same older model)."""
    run = History([("lmsi", 3, True), ("star", 2, False), ("star", 4, True)])
    rounds = lambda run, rnd: tuple(e["round"] for e in last_update(run, rnd))
    assert last_update(run, 1) is None
    assert rounds(run, 2) == (1, 0)
    assert rounds(run, 3) == (2, 1)  # round 2, rolled back, was trained from round 1's model
    assert rounds(run, 4) == (3, 1)  # round 3 started from round 1's model too
    never = History([("lmsi", 0, False), ("lmsi", 0, False)])  # every round rolled back: each starts from the base
    assert rounds(never, 3) == (2, 0)  # and learns from the last try


def test_untried_arms_first_then_the_best_value_and_no_arm_rolled_back_twice_in_a_row():
    cfg = config.load("lmsi", ["controller.arms=[lmsi,star,semievol]", "controller.policy=ucb", "update.steps=10",
                               "update.batch_size=10", "controller.first=listed"])
    arm, d = controller.choose(cfg, History([]), 1)
    assert arm == "lmsi" and d["reason"].startswith("lmsi: not tried yet (each arm is tried once, in the order listed)")
    arm, d = controller.choose(cfg, History([("lmsi", 3, True)]), 2)
    assert arm == "star"
    # lmsi gained 3 of 10 dev problems for 1.1k sequences; star 1 from the same start; semievol lost one
    history = History([("lmsi", 3, True), ("star", 4, True), ("semievol", 2, False)])
    arm, d = controller.choose(cfg, history, 4)
    e = d["estimates"]
    assert e["lmsi"]["mean_value"] == pytest.approx(0.3 / 1.1, abs=1e-4) and e["star"]["mean_value"] == pytest.approx(0.1 / 1.1, abs=1e-4)
    assert e["semievol"]["mean_value"] < 0 and arm == "lmsi" and "highest UCB" in d["reason"]
    # lmsi rolled back twice in a row: benched, though its value is still the highest, and the reason says so
    history = History([("lmsi", 8, True), ("star", 4, False), ("semievol", 4, False), ("lmsi", 8, False), ("lmsi", 8, False)])
    arm, d = controller.choose(cfg, history, 6)
    e = d["estimates"]
    assert e["lmsi"]["ucb"] > max(e["star"]["ucb"], e["semievol"]["ucb"])  # it would win...
    assert e["lmsi"]["benched"] and arm == "star" and "benched after two rollbacks in a row: lmsi" in d["reason"]


def test_the_exploration_bonus_is_sized_by_the_largest_gain_not_by_a_heavy_loss():
    """answer-only on chain loses most of the dev set in its one round; that must not make UCB explore every
    other arm more: the bonus is the largest gain seen (star's) x sqrt(2 ln(rounds) / plays)."""
    cfg = config.load("lmsi", ["controller.arms=[star,answer-only,pairs]", "controller.policy=ucb", "update.steps=10",
                               "update.batch_size=10"])
    history = History([("star", 9, True), ("answer-only", 2, False)], base=8)  # +1 of 10 dev, then -7
    _, d = controller.choose(cfg, history, 3)
    star, lost = 0.1 / 1.1, -0.7 / 1.1  # per 1k sequences: 1k answers and 10 x 10 trained
    e = d["estimates"]
    assert e["star"]["ucb"] == pytest.approx(star + star * math.sqrt(2 * math.log(2)), abs=1e-4)
    assert e["answer-only"]["ucb"] == pytest.approx(lost + star * math.sqrt(2 * math.log(2)), abs=1e-4)
    _, d = controller.choose(cfg, History([("star", 6, False), ("answer-only", 2, False)], base=8), 3)  # no gain yet:
    assert d["estimates"]["star"]["ucb"] == pytest.approx(-0.2 / 1.1 + 0.6 / 1.1 * math.sqrt(2 * math.log(2)), abs=1e-4)


@pytest.mark.parametrize("recipe", ["lmsi", "star", "answer-only", "context-distill"])
def test_each_arm_is_its_shipped_recipes_strategy(recipe):
    run = config.load(recipe, [f"controller.arms=[{','.join(controller.ARMS)}]"])
    for arm in controller.ARMS:
        shipped, played = asdict(config.load(arm, [])), asdict(controller.config_for(run, arm))
        assert {k: v for k, v in played.items() if k != "controller"} == {k: v for k, v in shipped.items() if k != "controller"}, arm


def test_an_arms_own_settings_go_on_top_of_its_strategy(tmp_path):
    """controller.settings: an arm played as its recipe would run with them; a recipe's settings and the
    command line's merge; the cost the controller charges an arm follows its own update."""
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("recipe: semisup\nskills: [chain]\nmodel: {path: zoo:chain}\nupdate: {steps: 10, batch_size: 10}\n"
                      "controller: {arms: [lmsi, pairs], settings: {lmsi: {acquire: {samples: 6}}}}\n")
    cfg = config.load(recipe, ["controller.settings.pairs.update.lr=2e-4", "controller.settings.pairs.update.steps=50"])
    assert cfg.controller.settings == {"lmsi": {"acquire": {"samples": 6}}, "pairs": {"update": {"lr": "2e-4", "steps": 50}}}
    pairs, lmsi = controller.config_for(cfg, "pairs"), controller.config_for(cfg, "lmsi")
    assert (pairs.update.lr, pairs.update.steps, pairs.update.method, pairs.acquire.samples) == (2e-4, 50, "lora", 8)
    assert (lmsi.acquire.samples, lmsi.update.lr, lmsi.update.steps) == (6, cfg.update.lr, 10)
    assert config.load(recipe, []).controller.settings == {"lmsi": {"acquire": {"samples": 6}}}
    assert controller.config_for(config.load(recipe, []), "pairs").update.lr == 1e-4  # the pairs recipe's
    _, d = controller.choose(cfg, History([("pairs", 3, True), ("lmsi", 6, True)]), 3)
    e = d["estimates"]  # 1k answers each, plus 50 x 10 pairs of two sequences (pairs) or 10 x 10 (lmsi)
    assert e["pairs"]["mean_value"] == pytest.approx(0.3 / 2.0, abs=1e-4) and e["lmsi"]["mean_value"] == pytest.approx(0.3 / 1.1, abs=1e-4)
    for bad, match in [(["controller.settings.star.update.lr=1e-3"], r"'star' is not one of controller.arms \['lmsi', 'pairs'\]"),
                       (["controller.settings.pairs.update.lrr=1"], r"controller.settings.pairs: unknown config key 'update.lrr'"),
                       (["controller.settings.pairs.model.path=x"], r"controller.settings.pairs: a mapping of the sections"),
                       (["controller.settings.pairs.update.method=full"], "update.method must stay lora"),
                       (["controller.settings.pairs.semisup.learn=answer"], "controller.settings.pairs: semisup.learn=answer is "
                                                                            "for the methods that fine-tune .* learns preferences")]:
        with pytest.raises(ConfigError, match=bad and match):
            config.load(recipe, bad)


def test_arms_whose_answers_the_checker_verifies_are_tried_first_by_default():
    cfg = config.load("lmsi", ["controller.arms=[lmsi,semievol,pairs,star]", "controller.probe=none"])
    assert cfg.controller.first == "verified"
    arm, d = controller.choose(cfg, History([]), 1)
    assert arm == "pairs" and "checker verifies first" in d["reason"]
    assert controller.choose(cfg, History([("pairs", 0, False)]), 2)[0] == "star"
    assert controller.choose(cfg, History([("pairs", 0, False), ("star", 0, False)]), 3)[0] == "lmsi"
    assert controller.choose(cfg, History([("pairs", 2, True)]), 2)[0] == "pairs"  # win-stay comes first
    with pytest.raises(ConfigError, match="controller.first"):
        config.load("lmsi", ["controller.arms=[lmsi,star]", "controller.first=best"])


def test_win_stay_plays_an_arm_again_while_it_gains_and_shifts_when_it_does_not():
    cfg = config.load("lmsi", ["controller.arms=[lmsi,star,semievol]", "controller.probe=none"])  # stay: the default
    assert cfg.controller.policy == "stay"
    arm, d = controller.choose(cfg, History([("lmsi", 3, True)]), 2)
    assert arm == "lmsi" and d["reason"].startswith("lmsi: its last round gained +0.3000 on dev (promoted; win-stay")
    arm, d = controller.choose(cfg, History([("lmsi", 3, True), ("lmsi", 5, True)]), 3)
    assert arm == "lmsi"
    arm, d = controller.choose(cfg, History([("lmsi", 3, True), ("lmsi", 3, True)]), 3)  # promoted, no gain: shift
    assert arm == "star" and d["reason"].startswith("star: not tried yet")
    arm, d = controller.choose(cfg, History([("lmsi", 0, False)]), 2)  # no gain: shift
    assert arm == "star"
    arm, d = controller.choose(cfg, History([("lmsi", 3, False)]), 2)  # a gain the gate did not take: stay
    assert arm == "lmsi" and "rolled back by the gate" in d["reason"]
    arm, d = controller.choose(cfg, History([("lmsi", 3, False), ("lmsi", 4, False)]), 3)  # but never a third time
    assert arm == "star" and d["estimates"]["lmsi"]["benched"]
    ucb = config.load("lmsi", ["controller.arms=[lmsi,star,semievol]", "controller.policy=ucb"])
    assert controller.choose(ucb, History([("lmsi", 3, True)]), 2)[0] == "star"  # plain UCB1 tries every arm first


def test_a_probe_gives_each_checked_arm_one_round_while_the_first_still_gains():
    cfg = config.load("lmsi", ["controller.arms=[lmsi,star,semievol,pairs]", "controller.same_start=false"])
    assert cfg.controller.probe == "verified" and controller.choose(cfg, History([]), 1)[0] == "star"
    arm, d = controller.choose(cfg, History([("star", 3, True)]), 2)  # star gains, yet pairs gets a round
    assert arm == "pairs" and d["reason"].startswith("pairs: a probe, not tried yet (star's last round gained +0.3000")
    assert controller.choose(cfg, History([("star", 3, True), ("pairs", 5, True)]), 3)[0] == "pairs"  # it gained: stay
    arm, d = controller.choose(cfg, History([("star", 3, True), ("pairs", 2, False)]), 3)  # it lost: back to star
    assert arm == "star" and d["reason"].startswith("star: back after the probe of pairs, which did not gain")
    arm, d = controller.choose(cfg, History([("star", 3, True), ("pairs", 4, False)]), 3)  # a gain the gate did not take
    assert arm == "star" and "which gained too little on dev for the gate (+0.1000)" in d["reason"]
    assert controller.choose(cfg, History([("star", 3, True), ("pairs", 2, False), ("star", 5, True)]), 4)[0] == "star"
    arm, d = controller.choose(cfg, History([("star", 3, True), ("pairs", 2, False), ("star", 2, False)]), 4)
    assert arm == "star" and "not tried: lmsi, semievol, outside controller.probe's group (verified)" in d["reason"]
    assert controller.choose(cfg, History([("star", 3, True), ("pairs", 2, False), ("star", 0, False)]), 4)[0] == "lmsi"
    assert controller.choose(cfg, History([("star", 0, False)]), 2)[0] == "pairs"  # lose-shift, as without probes
    assert controller.choose(cfg, History([("star", 0, False), ("pairs", 0, False)]), 3)[0] == "lmsi"  # not a probe
    every = config.load("lmsi", ["controller.arms=[lmsi,star,semievol,pairs]", "controller.probe=all"])
    assert controller.choose(every, History([("star", 3, True), ("pairs", 2, False), ("star", 5, True)]), 4)[0] == "lmsi"
    none = config.load("lmsi", ["controller.arms=[lmsi,star,semievol,pairs]", "controller.probe=none"])
    assert controller.choose(none, History([("star", 3, True)]), 2)[0] == "star"
    ucb = config.load("lmsi", ["controller.arms=[lmsi,star,semievol,pairs]", "controller.policy=ucb"])
    assert controller.choose(ucb, History([("star", 3, True), ("pairs", 3, True)]), 3)[0] == "lmsi"  # probes are policy stay's: ucb waits for none
    with pytest.raises(ConfigError, match="controller.probe"):
        config.load("lmsi", ["controller.arms=[lmsi,star]", "controller.probe=some"])


def test_a_same_start_probe_trains_beside_the_arm_that_gained_and_the_better_goes_on():
    cfg = config.load("lmsi", ["controller.arms=[lmsi,star,semievol,pairs]", "update.steps=10", "update.batch_size=10"])
    assert (cfg.controller.probe, cfg.controller.same_start) == ("verified", True)  # the default
    arm, d = controller.choose(cfg, History([("star", 3, True)]), 2)  # star gains: pairs is trained beside it
    assert (arm, d["versus"]) == ("pairs", "star") and "trained beside star from the same model" in d["reason"]
    trials = {"star": {"gain": 0.0, "cost": 1.1, "relative": 0.0}, "pairs": {"gain": 0.2, "cost": 1.2, "relative": 0.2857}}
    final = controller.same_start(d, trials, [])
    assert final["arm"] == "pairs"
    assert final["reason"].startswith("pairs: dev gain +0.2000, star +0.0000, both from the round's model; pairs: a probe")
    assert controller.same_start(d, {**trials, "pairs": trials["star"]}, [])["arm"] == "star"  # a tie: the arm that gained
    # the round as stored: pairs' own (5 of 10 dev right from 3) and star's trial, never promoted
    history = History([("star", 3, True), ("pairs", 5, True, {"star": trials["star"]})])
    rows = controller.played(cfg, history, 3)
    assert [(h["round"], h["arm"], h["promoted"]) for h in rows] == [(1, "star", True), (2, "star", False), (2, "pairs", True)]
    assert rows[1]["value"] == 0.0 and rows[2]["gain"] == 0.2
    arm, d = controller.choose(cfg, history, 3)  # pairs gained: it stays; star's trial counts as a play
    assert arm == "pairs" and d["estimates"]["star"]["plays"] == 2 and "versus" not in d
    # the probe lost and star was kept: star goes on, no arm of the group is left to probe
    kept = History([("star", 3, True), ("star", 5, True, {"pairs": {"gain": 0.0, "cost": 2.0, "relative": 0.0}})])
    arm, d = controller.choose(cfg, kept, 3)
    assert arm == "star" and "versus" not in d and d["reason"].startswith("star: its last round gained +0.2000")


def test_in_context_memory_is_an_arm_that_costs_no_training():
    cfg = config.load("lmsi", ["controller.arms=[lmsi,memory]", "controller.policy=ucb", "update.steps=10", "update.batch_size=10"])
    assert controller.config_for(cfg, "memory").semisup.method == "memory"
    _, d = controller.choose(cfg, History([("lmsi", 3, True), ("memory", 6, False)]), 3)
    e = d["estimates"]  # each gained 3 dev problems: lmsi paid 1k answers + 100 trained sequences, memory 1k answers
    assert e["memory"]["mean_value"] == pytest.approx(0.3 / 1.0, abs=1e-4) and e["lmsi"]["mean_value"] == pytest.approx(0.3 / 1.1, abs=1e-4)


def test_controller_settings_are_checked():
    with pytest.raises(ConfigError, match="controller.arms: .* among"):
        config.load("lmsi", ["controller.arms=[lmsi,magic]"])
    with pytest.raises(ConfigError, match="recipe 'ladder'"):
        config.load("copy-ladder", ["controller.arms=[lmsi]"])
    with pytest.raises(ConfigError, match="B-STaR"):
        config.load("bstar", ["controller.arms=[lmsi,star]"])
    with pytest.raises(ConfigError, match="controller.policy"):
        config.load("lmsi", ["controller.arms=[lmsi,star]", "controller.policy=greedy"])


def test_the_random_policy_draws_by_the_rounds_seed():
    cfg = config.load("lmsi", ["controller.arms=[lmsi,star,semievol]", "controller.policy=random"])
    picks = [controller.choose(cfg, History([]), rnd) for rnd in range(1, 13)]
    assert {arm for arm, _ in picks} == {"lmsi", "star", "semievol"} and all("drawn at random" in d["reason"] for _, d in picks)
    assert picks == [controller.choose(cfg, History([]), rnd) for rnd in range(1, 13)]


ARMS = ["controller.arms=[pairs,lmsi,star]", "controller.policy=ucb", "controller.first=listed", "rounds=4", "gate.z=0", "gate.tolerance=1.0"]  # every round promoted


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("controlled") / "run"
    out = evolvelm("run", "lmsi", *SMALL, *ARMS, "--run-dir", str(run_dir), timeout=600)
    assert out.returncode == 0, out.stderr
    return run_dir


def test_a_controlled_run_plays_each_arm_then_chooses_and_says_why(controlled):
    run = Run.open(controlled)
    decisions = [run.done(r, "acquire")["controller"] for r in range(1, 5)]
    assert [d["arm"] for d in decisions[:3]] == ["pairs", "lmsi", "star"]  # each tried once, in order
    assert decisions[3]["arm"] in ("pairs", "lmsi", "star") and "highest UCB" in decisions[3]["reason"]
    assert all(d["estimates"][d["arm"]]["plays"] == 1 for d in decisions[3:])
    # each round ran its arm's strategy: DPO on an adapter, votes, the checker with rationalisation
    assert run.done(1, "update")["adapter"] and run.done(1, "update")["pairs"] > 0
    filters = [{r["filter"] for r in run.query("SELECT DISTINCT filter FROM verdicts WHERE round=?", (rnd,))} for rnd in (1, 2, 3)]
    assert filters == [{"oracle"}, {"vote", "dedup"}, {"oracle", "dedup"}]
    assert run.done(3, "acquire")["rationalised"] > 0 and run.done(2, "acquire")["rationalised"] == 0
    # round 2 fine-tunes all weights on top of round 1's adapter: merged, a full model, no adapter
    assert run.done(2, "update")["adapter"] is None and run.done(2, "update")["model"].endswith("update/model")
    summary = json.loads((controlled / "summary.json").read_text())
    assert [r["controller"]["arm"] for r in summary["rounds"][1:]] == [d["arm"] for d in decisions]
    assert summary["rounds"][0]["controller"] is None
    # predict-the-update: nothing played before round 1 (no change); then the share of errors its arm fixed
    # on average (an arm not tried yet: every arm's), applied to the model the round starts from
    p, kept = summary["semisup"]["prediction"], summary["semisup"]["accuracy"]
    assert decisions[0]["predict"] is None and p["rounds"][0]["controller"] == p["rounds"][0]["no_change"]
    relative = [decisions[3]["estimates"][a]["relative_gain"] for a in ("pairs", "lmsi", "star")]
    assert decisions[2]["predict"] == pytest.approx(sum(relative[:2]) / 2, abs=1e-3)  # star untried: the mean
    assert decisions[3]["predict"] == relative[("pairs", "lmsi", "star").index(decisions[3]["arm"])]
    assert p["rounds"][3]["controller"] == pytest.approx(kept[3] + (1 - kept[3]) * decisions[3]["predict"], abs=1e-4)
    assert p["rounds"][0]["last_change"] is None and p["rounds"][3]["actual"] == summary["semisup"]["candidate"][4]
    assert set(p["mae"]) == set(PREDICTORS) and all(v >= 0 for v in p["mae"].values())
    # the updated model's own estimate, from its confidences recalibrated on the starting model's dev answers
    # (every round here is promoted: round r starts from round r - 1); the change: minus that model's estimate
    evals = [run.done(rnd, "eval") for rnd in range(5)]
    assert evals[0]["self_predicted"] is None and all(0 <= e["self_predicted"]["token"]["pooled"] <= 1 for e in evals[1:])
    assert [r["self"] for r in p["rounds"]] == [e["self_predicted"]["token"]["pooled"] for e in evals[1:]]
    # the model's estimate of itself is the mean of its test answers' recalibrated confidence, which every
    # round's calibration scores as a third kind
    for e in evals:
        for skill, c in e["calibration"].items():
            assert c["recalibrated"]["confidence"] == pytest.approx(e["self_estimate"]["token"][skill], abs=2e-4)
    assert all("recalibrated_ece" in c for r in summary["rounds"] for c in r["calibration"].values())
    own = lambda e, field: e[field]["token"]["pooled"]
    assert p["rounds"][2]["self_change"] == pytest.approx(
        kept[2] + own(evals[3], "self_predicted") - own(evals[2], "self_estimate"), abs=2e-4)
    # from the changed answers: the starting model's verdicts where the final answer stayed, a confidence
    # in [0, 1] where it changed; so it lies between those verdicts alone and those plus every change
    for before, after, row in zip(evals, evals[1:], p["rounds"]):
        flat = lambda e, field: [x for d in sorted(e[field]["chain"], key=int) for x in e[field]["chain"][d]]
        same = [a == b for a, b in zip(flat(before, "test_finals"), flat(after, "test_finals"))]
        kept_right = sum(s and r == "1" for s, r in zip(same, flat(before, "test_right")))
        assert after["self_delta"]["changed"] == pytest.approx(1 - sum(same) / len(same), abs=1e-4)
        assert kept_right / len(same) - 1e-4 <= row["self_delta"] <= (kept_right + len(same) - sum(same)) / len(same) + 1e-4
    assert 0 < max(e["self_delta"]["changed"] for e in evals[1:])  # the updates changed some answers
    # from round 2, its map is fitted on the dev answers the last update changed (round 1: none came before)
    assert evals[1]["self_delta"]["fitted_on"] == 0 and max(e["self_delta"]["fitted_on"] for e in evals[2:]) > 0
    assert [e["self_delta"]["fitted_on"] for e in evals[2:]] == [len(changed_dev(after, before, "chain", True)[0])
                                                                for before, after in zip(evals, evals[1:-1])]
    assert evolvelm("report", str(controlled)).returncode == 0
    page = (controlled / "report.html").read_text()
    assert "Strategy per round" in page and decisions[3]["reason"].split(" (")[0] in page
    assert "Predict-the-update" in page


def test_a_controlled_run_killed_and_resumed_decides_the_same(controlled, tmp_path):
    run_dir = tmp_path / "run"
    killed = evolvelm("run", "lmsi", *SMALL, *ARMS, "--run-dir", str(run_dir),
                      env={"EVOLVELM_KILL_AT": "3:update:before-manifest"}, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    assert evolvelm("resume", str(run_dir), timeout=600).returncode == 0
    assert outcome(run_dir) == outcome(controlled)


def test_full_fine_tuning_from_an_adapter_starts_from_its_merged_weights(tmp_path):
    import torch
    from peft import PeftModel

    from evolvelm.models import load_model, resolve
    from evolvelm.update import sft
    from test_serve import random_adapter

    base = resolve("zoo:copy-reverse")
    adapter = str(random_adapter(base, tmp_path / "adapter"))
    x = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        want = PeftModel.from_pretrained(load_model(base), adapter)(input_ids=x).logits
        got = sft.load_for_training(base, adapter, "full", 8, 16)(input_ids=x).logits
        plain = load_model(base)(input_ids=x).logits
    assert (got - want).abs().max() < 1e-4 < (plain - want).abs().max()


@pytest.mark.integration
def test_the_curriculum_acquires_the_problems_whose_predicted_success_lies_in_the_band(tmp_path):
    """zoo:chain: of 4x the problems, the 15 per difficulty whose greedy answer is likeliest (band [0.7, 1])
    or least likely ([0, 0.3]); the model is then right more often on the first than on the second."""
    small = ["rounds=1", "acquire.problems=15", "acquire.samples=4", "update.steps=5", "eval.problems=20", "eval.dev_problems=10"]
    got = {}
    for name, band in (("easy", "[0.7,1.0]"), ("hard", "[0.0,0.3]")):
        out = evolvelm("run", "lmsi", *small, f"acquire.curriculum={band}", "--run-dir", str(tmp_path / name), timeout=600)
        assert out.returncode == 0, out.stderr
        run = Run.open(tmp_path / name)
        got[name] = (run.done(1, "acquire"), run.done(1, "refine")["monitor"]["pass@1"], run.samples(1))
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["rounds"][1]["curriculum"] == got[name][0]["curriculum"]
    for name, (acq, _, samples) in got.items():
        c = acq["curriculum"]
        # 4 x 15 candidates per difficulty (one operation has fewer distinct problems left), 15 chosen of each
        assert 2 * 60 < c["candidates"] <= 4 * 60 and c["chosen"] == 60 == acq["problems"]
        assert len({s.prompt for s in samples}) == 60
    easy, hard = got["easy"][0]["curriculum"], got["hard"][0]["curriculum"]
    assert easy["predicted"] > easy["predicted_candidates"] == hard["predicted_candidates"] > hard["predicted"]
    assert got["easy"][1] > got["hard"][1] + 0.08  # predicted success is success: pass@1 0.89 vs 0.73 when written


def test_curriculum_settings_are_checked():
    with pytest.raises(ConfigError, match="acquire.curriculum: a band"):
        config.load("lmsi", ["acquire.curriculum=[0.8,0.2]"])
    with pytest.raises(ConfigError, match="for recipe semisup"):
        config.load("copy-ladder", ["acquire.curriculum=[0.2,0.8]"])
    with pytest.raises(ConfigError, match="curriculum_pool 1"):
        config.load("lmsi", ["acquire.curriculum=[0.2,0.8]", "acquire.curriculum_pool=1"])


SAME_START = ["controller.arms=[star,pairs]", "controller.probe=verified", "controller.same_start=true"]


def test_a_same_start_probe_keeps_the_arm_that_gained_more_and_resumes_identically(tmp_path):
    """Round 1's star gains on dev (with these settings), so round 2 trains star and pairs from the same
    model in forks of the run; the one that gains more is adopted as round 2, the other stays under
    trials/. Killed inside the first fork's update, the resumed run redoes the probe, and killed right
    after the adoption it goes on from there; either ends as an uninterrupted run does."""
    whole = tmp_path / "whole"
    assert evolvelm("run", "lmsi", *SMALL, *SAME_START, "--run-dir", str(whole), timeout=600).returncode == 0
    run = Run.open(whole)
    first, d = run.done(1, "acquire")["controller"], run.done(2, "acquire")["controller"]
    assert first["arm"] == "star" and d["versus"] == "star" and set(d["trials"]) == {"star", "pairs"}
    gains = {a: t["gain"] for a, t in d["trials"].items()}
    assert d["arm"] == ("pairs" if gains["pairs"] > gains["star"] else "star")
    loser = ({"star", "pairs"} - {d["arm"]}).pop()
    assert d["reason"].startswith(f"{d['arm']}: dev gain {gains[d['arm']]:+.4f}, {loser} {gains[loser]:+.4f}, both from the round's")
    # round 2 is the winner's own: its gain as measured in its fork, its filters, its update from round 1's start
    start = run.done(1, "gate")["round"]
    assert controller.measured(run.config(), run, 2, d["arm"], start)["gain"] == gains[d["arm"]]
    filters = {r["filter"] for r in run.query("SELECT DISTINCT filter FROM verdicts WHERE round=2")}
    assert filters == ({"oracle", "dedup"} if d["arm"] == "star" else {"oracle"})
    assert ("pairs" in run.done(2, "update")) == (d["arm"] == "pairs")
    trials = whole / "trials"
    assert [p.name for p in trials.iterdir()] == [f"0002-{loser}"]
    other = Run(trials / f"0002-{loser}")
    assert other.done(2, "acquire")["controller"]["arm"] == loser and other.samples(2)
    assert len(run.samples(2)) == run.done(2, "acquire")["acquired"]  # the winner's samples alone
    assert [h["arm"] for h in controller.played(run.config(), run, 3)] == ["star", loser, d["arm"]]
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["rounds"][2]["controller"]["arm"] == d["arm"]
    for moment in ("2:update:before-manifest", "2:adopt:after-manifest"):  # within the first fork; after adopting
        killed = tmp_path / moment.replace(":", "-")
        out = evolvelm("run", "lmsi", *SMALL, *SAME_START, "--run-dir", str(killed), env={"EVOLVELM_KILL_AT": moment},
                       timeout=600)
        assert out.returncode == -signal.SIGKILL and (killed / "trials" / "0002-star").is_dir()
        assert evolvelm("resume", str(killed), timeout=600).returncode == 0
        assert outcome(killed) == outcome(whole)
        assert [p.name for p in (killed / "trials").iterdir()] == [f"0002-{loser}"]
        assert Run(killed / "trials" / f"0002-{loser}").done(2, "eval")["dev"] == other.done(2, "eval")["dev"]
