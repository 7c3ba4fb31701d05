"""The core controller: each round of a semisup run, a bandit chooses how experience becomes training
(`controller.arms`), instead of the one strategy the recipe fixes.

An arm is a whole strategy, as the shipped recipe of that name sets it (ARMS): how many answers are
sampled per problem, how they are kept (votes, the checker, consistency) and how they train the model
(SFT on answers and rationales or on the final answers alone, retraining from the base, DPO on
preference pairs, context distillation of the model reading demonstrations, an in-context memory).
The problems acquired and the evaluation stay the run's own.

Each arm's value is its measured dev gain per unit of compute: the share of dev problems the round's
candidate gets right minus the share the model it started from gets right (the gate's paired
comparison, whether or not the round was promoted), per 1,000 sequences processed (answers generated
plus sequences trained on: update.steps x update.batch_size, twice that for preference pairs, plus the
kept answers a context-distillation teacher read). Both come from the store, never from the clock, so a
resumed run makes the same decisions. The default, `controller.policy: stay` (win-stay, lose-shift),
plays the last round's arm again when that round's candidate gained on dev (promoted or not: the value
above, not the gate's verdict) and the arm is not benched, and falls back to UCB1 otherwise: in a short
run, trying every arm before exploiting one costs most of the rounds. With `controller.probe`
(`verified`, the default, or `all`; `none`), an arm that gains yields one round to each arm of that
group not tried yet, and arms outside the group are tried only once no arm tried gains on average; so a
run that found a good arm first still measures the others it trusts, at one round each (measured in
docs/self_guided.md). By default (`controller.same_start`) the probe round trains the probe and the arm
that gained side by side from the round's model, each in a fork of the run (`Run.fork`), and the one
that gains more on dev becomes the round's own (`Run.adopt`; the other's round stays under
RUN_DIR/trials/ and counts as a play, never promoted): the two are compared from the same model.
Without it (the sequential probe) the probe plays the round alone, plays on if the gate promotes it and
hands the next round back to the arm it interrupted if not; that compares one arm's earlier round with
the other's later one. UCB1 (`ucb` alone): arms never tried go first, those whose kept answers the
checker verifies (star, answer-only, rest-em, pairs) before those that keep answers by votes or
consistency (`controller.first: verified`, as a wrong vote that passes the gate can decide a short run;
`listed`: the order of `controller.arms`); then the highest mean value plus `controller.explore` x the
largest value seen x sqrt(2 ln(rounds) / plays), the largest gain if any arm gained (one arm's heavy
loss, answer-only's on chain, would otherwise make the bandit explore every other arm more). `random`
draws the arm by the round's seed (the baseline a choice must beat). An arm whose last two rounds were
both rolled back is benched while any other is not, and the reason says so. Every decision, its
estimates and a one-line reason go to the acquire manifest, summary.json (`rounds[].controller`) and
the report.

In a modular run (`modules.order: controller`) the controller chooses which module trains instead:
the skill whose experience the round learns (`choose_module`).

Predict-the-update: before the update, the share of its remaining dev errors that the chosen arm
fixed on average when it played (`predict`; for an arm not tried yet, the mean over every arm played;
none before any round: no change) predicts the round's candidate's held-out test accuracy, the
starting model's plus that share of its errors. Relative, because a strategy fixes fewer problems
as fewer are left. `summary.json` scores it against "no change" and "the same change as last round"
(`store.summary.predictions`).
"""
from __future__ import annotations

import math

from evolvelm.acquire.sampling import derive_seed
from evolvelm.config import Config, overridden
from evolvelm.evaluate.suite import dev_right
from evolvelm.types import State

ARMS = {  # the strategy each shipped semisup recipe fixes (evolvelm/recipes/<arm>.yaml; a test keeps them equal)
    "lmsi": {"semisup": {"method": "lmsi"}, "acquire": {"samples": 8}, "refine": {"chain": ["vote", "dedup"]}},
    "star": {"semisup": {"method": "star"}, "acquire": {"samples": 4}, "refine": {"chain": ["oracle", "dedup"]}},
    "answer-only": {"semisup": {"method": "star", "learn": "answer"}, "acquire": {"samples": 4},
                    "refine": {"chain": ["oracle", "dedup"]}},
    "rest-em": {"semisup": {"method": "rest-em"}, "acquire": {"samples": 8},
                "refine": {"chain": ["oracle", "dedup", "cap"], "max_per_problem": 4}},
    "semievol": {"semisup": {"method": "semievol"}, "acquire": {"samples": 8}, "refine": {"chain": ["consistency", "dedup"]}},
    "context-distill": {"semisup": {"method": "semievol", "learn": "distill"}, "acquire": {"samples": 8},
                        "refine": {"chain": ["consistency", "dedup"]}},
    "pairs": {"semisup": {"method": "pairs", "beta": 0.1, "pairs_per_problem": 2, "rpo_alpha": 1.0}, "acquire": {"samples": 8},
              "refine": {"chain": ["oracle"]}, "update": {"method": "lora", "lr": 1.0e-4}},
    "memory": {"semisup": {"method": "memory"}, "acquire": {"samples": 8}, "refine": {"chain": ["vote", "dedup"]}},
}
VERIFIED = {a for a, s in ARMS.items() if "oracle" in s["refine"]["chain"]}  # kept answers the checker passed


def config_for(cfg: Config, arm: str) -> Config:
    """The run's config with one arm's strategy in place of the recipe's, and `controller.settings`
    for that arm on top."""
    strategy = {**ARMS[arm], "semisup": {"learn": "completion", **ARMS[arm]["semisup"]}}  # not the recipe's learn
    return overridden(overridden(cfg, strategy), cfg.controller.settings.get(arm, {}))


def measured(cfg: Config, run, rnd: int, arm: str, start: int) -> dict:
    """What round `rnd` of `run` measured of `arm`, trained from round `start`'s model: its dev gain, its
    cost (thousands of sequences) and the share of the remaining dev errors it fixed (`relative`)."""
    acquired, update = run.done(rnd, "acquire"), run.done(rnd, "update")
    old, new = dev_right(run, start), dev_right(run, rnd)
    gain = (sum(new) - sum(old)) / len(new)
    errors = 1 - sum(old) / len(old)  # what was left to gain: relative gains shrink less as the model improves
    u = config_for(cfg, arm).update
    trained = 0 if update.get("skipped") or arm == "memory" else u.steps * u.batch_size * (2 if arm == "pairs" else 1)
    cost = (acquired["acquired"] + trained + update.get("distilled", 0)) / 1000
    return {"gain": round(gain, 4), "cost": round(cost, 3), "relative": gain / errors if errors else 0.0}


def played(cfg: Config, run, before: int) -> list[dict]:
    """Every finished round before `before` that an arm played: its arm, value, gain, cost, promotion;
    in a same-start probe's round, the arm it did not keep first (never promoted)."""
    out = []
    for rnd in range(1, before):
        acquired, gate = run.done(rnd, "acquire"), run.done(rnd, "gate")
        if not (acquired and gate and acquired.get("controller")):
            continue
        decision = acquired["controller"]
        arm = decision["arm"]
        trials = {a: t for a, t in decision.get("trials", {}).items() if a != arm}
        for a, t in [*trials.items(), (arm, measured(cfg, run, rnd, arm, State.read(run.done(rnd - 1, "gate")).round))]:
            out.append({"round": rnd, "arm": a, "gain": t["gain"], "cost": t["cost"], "value": t["gain"] / t["cost"],
                        "relative": t["relative"], "promoted": gate["promoted"] and a == arm})
    return out


def choose(cfg: Config, run, rnd: int) -> tuple[str, dict]:
    """The arm round `rnd` plays, and the decision as stored: arm, reason, estimates per arm, and the
    predicted share of the remaining dev errors the round will fix (`predict`)."""
    history = played(cfg, run, rnd)
    arm, decision = _choose(cfg, history, rnd)
    return arm, {**decision, "predict": predict(history, arm)}


def predict(history: list[dict], arm: str) -> float | None:
    """The share of the remaining dev errors `arm` fixed on average (untried: every arm's; none: None)."""
    mine = [h["relative"] for h in history if h["arm"] == arm] or [h["relative"] for h in history]
    return round(sum(mine) / len(mine), 4) if mine else None


def same_start(decision: dict, trials: dict[str, dict], history: list[dict]) -> dict:
    """A same-start probe's decision once both arms trained from the round's model (`trials`: each arm's
    `measured`): the arm whose candidate gets more dev problems right, the one that gained first on a
    tie, goes on as the round's own."""
    arms = [decision["versus"], decision["arm"]]
    arm = max(arms, key=lambda a: (trials[a]["gain"], -arms.index(a)))
    other = arms[1 - arms.index(arm)]
    g = lambda a: f"{trials[a]['gain']:+.4f}"  # noqa: E731
    return {**decision, "arm": arm, "trials": trials, "predict": predict(history, arm),
            "reason": f"{arm}: dev gain {g(arm)}, {other} {g(other)}, both from the round's model; {decision['reason']}"}


def _estimates(cfg: Config, arms: list[str], history: list[dict]) -> dict:
    """Per arm: plays, mean value, UCB (the mean plus `controller.explore` x the largest value seen, of
    the gains if any, x sqrt(2 ln(rounds) / plays)), benched (its last two rounds both rolled back), mean
    relative gain."""
    plays = {a: [h for h in history if h["arm"] == a] for a in arms}
    scale = max((h["value"] for h in history), default=0.0)  # the largest gain: one arm's big loss must not
    if scale <= 0:                                             # make the bandit explore every other arm more
        scale = max((abs(h["value"]) for h in history), default=0.0) or 1.0
    estimates = {}
    for a in arms:
        values = [h["value"] for h in plays[a]]
        mean = sum(values) / len(values) if values else None
        bonus = (cfg.controller.explore * scale * math.sqrt(2 * math.log(max(len(history), 1)) / len(values))
                 if values else None)
        benched = len(plays[a]) >= 2 and not any(h["promoted"] for h in plays[a][-2:])
        relative = [h["relative"] for h in plays[a]]
        estimates[a] = {"plays": len(values), "mean_value": None if mean is None else round(mean, 5),
                        "ucb": None if mean is None else round(mean + bonus, 5), "benched": benched,
                        "relative_gain": round(sum(relative) / len(relative), 4) if relative else None}
    return estimates


def _drawn(cfg: Config, arms: list[str], rnd: int) -> str:
    """The arm of `controller.policy: random`: drawn by the round's seed."""
    return arms[derive_seed(cfg.seed, rnd, "arm") % len(arms)]


def _best(arms: list[str], estimates: dict, what: str) -> tuple[str, str]:
    """The open arm (not benched; all if every arm is) with the highest UCB, and why."""
    open_arms = [a for a in arms if not estimates[a]["benched"]] or arms
    arm = max(open_arms, key=lambda a: (estimates[a]["ucb"], -arms.index(a)))
    e = estimates[arm]
    reason = (f"{arm}: highest UCB {e['ucb']:.4f} ({what} {e['mean_value']:.4f} per 1k sequences over "
              f"{e['plays']} round{'s' * (e['plays'] > 1)}, plus exploration)")
    benched = [a for a in arms if estimates[a]["benched"]]
    if benched and len(open_arms) < len(arms):
        reason += f"; benched after two rollbacks in a row: {', '.join(benched)}"
    elif benched:
        reason += f"; every arm was rolled back twice in a row ({', '.join(benched)}): chosen among all"
    return arm, reason


def _choose(cfg: Config, history: list[dict], rnd: int) -> tuple[str, dict]:
    arms = cfg.controller.arms
    estimates = _estimates(cfg, arms, history)
    decided = lambda arm, reason, **more: (arm, {"arm": arm, "reason": reason, "estimates": estimates, **more})  # noqa: E731
    if cfg.controller.policy == "random":
        arm = _drawn(cfg, arms, rnd)
        return decided(arm, f"{arm}: drawn at random (controller.policy random, the baseline)")
    untried = [a for a in arms if not estimates[a]["plays"]]
    if cfg.controller.first == "verified":
        untried.sort(key=lambda a: a not in VERIFIED)  # stable: the order listed within each group
    probe, stay = cfg.controller.probe, cfg.controller.policy == "stay"
    group = {"none": set(), "verified": VERIFIED & set(arms), "all": set(arms)}[probe] if stay else set()
    last = history[-1] if history else None
    gained = lambda h: h["arm"] in arms and h["gain"] > 0 and not estimates[h["arm"]]["benched"]  # noqa: E731
    probed = (stay and not cfg.controller.same_start and len(history) > 1 and last["arm"] in group
              and estimates[last["arm"]]["plays"] == 1 and history[-2]["arm"] != last["arm"]
              and gained(history[-2]))  # the last round was a (sequential) probe
    if probed and not last["promoted"]:
        arm = history[-2]["arm"]  # a probe plays on only when the gate promotes it
        why = "did not gain on dev" if last["gain"] <= 0 else "gained too little on dev for the gate"
        return decided(arm, f"{arm}: back after the probe of {last['arm']}, which {why} ({last['gain']:+.4f}); "
                            f"{arm}'s last round gained {history[-2]['gain']:+.4f}")
    if stay and last and gained(last):
        gate = "promoted" if last["promoted"] else "rolled back by the gate, which asks for more"
        probes = [a for a in untried if a in group]
        if probes:
            gained_by = f"{last['arm']}'s last round gained {last['gain']:+.4f} on dev, {gate}"
            if cfg.controller.same_start:  # both from this round's model; run_recipe keeps the better
                return decided(probes[0], f"{probes[0]}: a probe, not tried yet, trained beside {last['arm']} from the "
                                          f"same model ({gained_by}; controller.probe {probe})", versus=last["arm"])
            return decided(probes[0], f"{probes[0]}: a probe, not tried yet ({gained_by}; controller.probe {probe}: while "
                                      f"an arm gains, each arm not tried yet gets one round)")
        return decided(last["arm"], f"{last['arm']}: its last round gained {last['gain']:+.4f} on dev ({gate}; "
                                    f"win-stay: an arm plays again while its rounds gain)")
    tried = [a for a in arms if estimates[a]["plays"]]
    waiting = (bool(group) and not group & set(untried)  # with a probe, arms outside its group wait while one gains
               and any(not estimates[a]["benched"] and estimates[a]["mean_value"] > 0 for a in tried))
    if untried and not waiting:
        order = ("arms whose kept answers the checker verifies first, then the others, each in the order listed"
                 if cfg.controller.first == "verified" else "in the order listed")
        return decided(untried[0], f"{untried[0]}: not tried yet (each arm is tried once, {order})")
    arm, reason = _best(tried, estimates, "mean dev gain")
    if untried:
        reason += (f"; not tried: {', '.join(untried)}, outside controller.probe's group ({probe}), tried only "
                   f"once no arm tried gains on average")
    return decided(arm, reason)


def skill_accuracy(acc: dict) -> dict[str, float]:
    """Mean accuracy over difficulties, per skill (an eval manifest's `dev`, a summary round's `accuracy`)."""
    return {s: sum(a.values()) / len(a) for s, a in acc.items()}


def module_rounds(cfg: Config, run, before: int) -> list[dict]:
    """Every finished round before `before` of a modular run whose skill the controller chose: the
    skill (its arm), the change of that skill's dev accuracy from the model the round started from,
    the share of its dev errors fixed (`relative`), the sequences trained on (thousands), promotion."""
    out, cost = [], cfg.update.steps * cfg.update.batch_size / 1000
    for rnd in range(1, before):
        acquired, gate = run.done(rnd, "acquire"), run.done(rnd, "gate")
        if not (acquired and gate and acquired.get("controller")):
            continue
        skill, start = acquired["skill"], State.read(run.done(rnd - 1, "gate")).round
        old, new = (skill_accuracy(run.done(r, "eval")["dev"])[skill] for r in (start, rnd))
        out.append({"round": rnd, "arm": skill, "gain": round(new - old, 4), "cost": cost,
                    "relative": (new - old) / (1 - old) if old < 1 else 0.0, "promoted": gate["promoted"]})
    return out


def choose_module(cfg: Config, run, rnd: int) -> dict:
    """Which skill's experience round `rnd` of a modular run learns (`modules.order: controller`), and so
    which module trains, as stored: arm (the skill), reason, estimates per skill, and the kept model's
    dev accuracy per skill (`dev`).

    A skill's value is the dev gain a round on it is expected to bring now: the share of its dev errors
    its rounds fixed on average, times the share it still gets wrong, over the number of skills (the
    change of the mean), per 1,000 sequences trained on. Skills never learned go first, in the order
    of `skills`; then, among the skills with dev errors left, the highest UCB on that value, with the
    semisup controller's exploration bonus and bench. Win-stay is not used: the expected gain already
    falls as a skill is learned. Baselines: `controller.policy: random` draws the skill by the round's
    seed; `weakest` takes the skill with the lowest dev accuracy."""
    skills = list(dict.fromkeys(cfg.skills))
    now = skill_accuracy(run.done(State.read(run.done(rnd - 1, "gate")).round, "eval")["dev"])
    history = module_rounds(cfg, run, rnd)
    for h in history:
        h["value"] = h["relative"] * (1 - now[h["arm"]]) / len(skills) / h["cost"]
    estimates = _estimates(cfg, skills, history)
    untried = [s for s in skills if not estimates[s]["plays"]]
    if cfg.controller.policy == "random":
        arm = _drawn(cfg, skills, rnd)
        reason = f"{arm}: drawn at random (controller.policy random, the baseline)"
    elif cfg.controller.policy == "weakest":
        arm = min(skills, key=lambda s: (now[s], skills.index(s)))
        reason = f"{arm}: the lowest dev accuracy, {now[arm]:.4f} (controller.policy weakest, a baseline)"
    elif untried:
        arm = untried[0]
        reason = f"{arm}: not learned yet (each skill is learned once first, in the order of skills)"
    else:
        solved = [s for s in skills if now[s] == 1]
        arm, reason = _best([s for s in skills if s not in solved] or skills, estimates, "expected dev gain")
        if solved and len(solved) < len(skills):
            reason += f"; no dev errors left: {', '.join(solved)}"
    return {"arm": arm, "reason": reason, "estimates": estimates, "dev": {s: round(a, 4) for s, a in now.items()}}
