"""RUN_DIR/summary.json: the machine-readable outcome of a run, derived from the store alone."""
from __future__ import annotations

import json

from evolvelm.config import Config
from evolvelm.store.run import Run
from evolvelm.tasks.data import corpus


def summarize(run: Run, cfg: Config) -> dict:
    """One entry per round that has passed its gate (round 0 = the base model before any update)."""
    rounds, seconds = [], {}
    for m in run.manifest():
        seconds[m["round"]] = seconds.get(m["round"], 0.0) + m["info"].get("seconds", 0.0)
    for rnd in sorted({m["round"] for m in run.manifest() if m["stage"] == "gate"}):
        gate, ev = run.done(rnd, "gate"), run.done(rnd, "eval")
        acc: dict[str, dict[int, float]] = {}
        for r in run.query("SELECT skill, difficulty, accuracy FROM evals WHERE round=? AND split='test' "
                           "ORDER BY skill, difficulty", (rnd,)):
            acc.setdefault(r["skill"], {})[r["difficulty"]] = r["accuracy"]
        refine, acquire = run.done(rnd, "refine") or {}, run.done(rnd, "acquire") or {}
        rounds.append({
            "round": rnd, "promoted": gate["promoted"], "reason": gate["reason"], "frontier": ev["frontier"],
            "accuracy": acc, "levels": gate["levels"],
            "acquired": acquire.get("acquired", 0), "kept": refine.get("kept", 0),
            "labeled_only": (run.done(rnd, "update") or {}).get("labeled_only", False),
            "learn": (run.done(rnd, "update") or {}).get("learn"),  # semisup: the kept answers learned whole or bare
            "unanimity": acquire.get("unanimity", {}), "feedback": acquire.get("feedback", {}),
            "kept_retries": refine.get("kept_retries", 0), "strictness": refine.get("strictness"),
            "label_precision": refine.get("label_precision"), "filters": refine.get("filters", {}),
            "rationale_precision": refine.get("rationale_precision"), "monitor": refine.get("monitor"),
            "temperature": acquire.get("temperature"), "vote_agreement": refine.get("vote_agreement"),
            "decision": gate.get("decision", ""), "controller": acquire.get("controller"),
            "curriculum": acquire.get("curriculum"), "module": refine.get("module"), "router": ev.get("router"),
            "calibration": brief(ev.get("calibration", {})), "self_estimate": ev.get("self_estimate"),
            "self_predicted": ev.get("self_predicted"), "self_delta": ev.get("self_delta"),
            "model_version": ev["model_version"], "seconds": round(seconds.get(rnd, 0.0), 1),
            **({"judge": judge_line(refine["judge"])} if refine.get("judge") else {}),
        })
    promoted = [r for r in rounds if r["promoted"]]
    if cfg.recipe == "modular" and rounds:  # the skills in the order the rounds learned them (modules.order)
        extra = {"forgetting": forgetting(rounds, [run.done(r["round"], "acquire")["skill"] for r in rounds[1:]],
                                          cfg.skills)}
    else:
        extra = {}
    if cfg.recipe == "knowledge":
        name = corpus(cfg)
        other = [s for s in cfg.skills if s != name] + ([] if name else ["population"])
        extra = {"knowledge": knowledge(rounds, other, name or "facts")}
    if cfg.recipe == "semisup":
        extra = {"semisup": semisup(run, rounds)}
    return {**extra, "rounds": rounds, "final_frontier": promoted[-1]["frontier"] if promoted else {},
            "sandbox": (run.done(0, "eval") or {}).get("sandbox"),
            "skills": cfg.skills, "wall_seconds": round(sum(seconds.values()), 1)}


def brief(calibration: dict) -> dict:
    """A round's calibration per skill for summary.json: the sequence confidence's metrics and
    reliability bins, and the other kinds' ECE and AUROC (`token_ece`, `recalibrated_auroc`, ...; the
    eval manifest keeps all of every kind)."""
    return {skill: kinds["sequence"] | {f"{kind}_{m}": kinds[kind][m] for kind in kinds if kind != "sequence"
                                        for m in ("ece", "auroc")}
            for skill, kinds in calibration.items()}


def judge_line(judging: dict) -> dict:
    """A round's judge audit in brief: who, which version, passed or not, and its numbers."""
    a = judging["audit"]
    return {"name": a["judge"]["name"], "version": a["judge"]["version"], "passed": judging["passed"],
            "reason": judging["reason"], "adversarial": a["adversarial"], "all": a["all"]}


def forgetting(rounds: list[dict], sequence: list[str], skills: list[str] | None = None) -> dict:
    """GEM's forgetting matrix and metrics over a skill sequence (round r learns sequence[r-1]), on
    `skills` (default: those of the sequence; a skill never learned counts in `mean` only).

    matrix[i][j]: mean test accuracy over difficulties on skill j of the model kept after round i
    (a rolled-back round keeps the previous row; row 0 is the base model). With T skills, learned
    first in round t_j: ACC = mean_j matrix[last][j]; BWT = mean over skills learned before the last
    round of matrix[last][j] - matrix[t_j][j]; FWT = mean over skills after the first of
    matrix[t_j - 1][j] - matrix[0][j] (accuracy before training on j, against the base model).
    mean: mean over every skill of matrix[last][j], learned or not. sequence: as given.
    """
    skills = list(dict.fromkeys(skills or sequence))
    first = {s: sequence.index(s) + 1 for s in skills if s in sequence}
    matrix: list[list[float]] = []
    for r in rounds:
        if r["promoted"] or not matrix:
            matrix.append([round(sum(r["accuracy"][s].values()) / len(r["accuracy"][s]), 4) for s in skills])
        else:
            matrix.append(matrix[-1])
    last = len(matrix) - 1
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None
    learned = [j for j, s in enumerate(skills) if first.get(s, last + 1) <= last]
    return {"skills": skills, "sequence": sequence, "matrix": matrix, "mean": mean(matrix[last]),
            "acc": mean([matrix[last][j] for j in learned]),
            "bwt": mean([matrix[last][j] - matrix[first[skills[j]]][j] for j in learned if first[skills[j]] < last]),
            "fwt": mean([matrix[first[skills[j]] - 1][j] - matrix[0][j] for j in learned if first[skills[j]] > 1])}


def knowledge(rounds: list[dict], other: list[str], batches: str = "facts") -> dict:
    """Efficacy and retention of injected facts (recipe knowledge; round r injects batch r).

    matrix[r-1][j-1]: held-out accuracy on batch j of the model kept after round r (a rolled-back
    round keeps the previous row, and its own batch, never learned, is None). efficacy: on the newest
    batch; retention: on the first batch; upper: the base model with the newest batch's document in
    context; the ratios divide by the upper bound of the batch concerned. other: mean test accuracy
    of the kept model on the other skills and the pretraining population.
    """
    matrix, upper, kept = [], [], []
    for r in rounds[1:]:
        if r["promoted"]:
            matrix.append([r["accuracy"].get(batches, {}).get(j) for j in range(1, r["round"] + 1)])
            kept.append(r)
        else:
            matrix.append((matrix[-1] if matrix else []) + [None])
            kept.append(kept[-1] if kept else rounds[0])
        upper.append(r["accuracy"].get(f"{batches}-icl", {}).get(r["round"]))
    ratio = lambda a, b: None if a is None or not b else round(a / b, 4)
    efficacy, retention = [row[-1] for row in matrix], [row[0] for row in matrix]
    return {"matrix": matrix, "upper": upper, "efficacy": efficacy, "retention": retention,
            "efficacy_ratio": [ratio(a, b) for a, b in zip(efficacy, upper)],
            "retention_ratio": [ratio(a, upper[0]) for a in retention],
            "other": [{s: round(sum(k["accuracy"][s].values()) / len(k["accuracy"][s]), 4) for s in other} for k in kept],
            "other_base": {s: round(sum(rounds[0]["accuracy"][s].values()) / len(rounds[0]["accuracy"][s]), 4) for s in other}}


def semisup(run: Run, rounds: list[dict]) -> dict:
    """Test accuracy pooled over every held-out problem of every skill and difficulty (right answers /
    problems), per round: of the model kept after the round (`accuracy`; a rolled-back round keeps
    the previous one's) and of the round's candidate. Pooled, a difficulty with 25 distinct problems
    weighs 25 problems, not as much as one with a thousand."""
    def pooled(rnd: int) -> float:
        rows = run.query("SELECT accuracy, n FROM evals WHERE round=? AND split='test'", (rnd,))
        return round(sum(r["accuracy"] * r["n"] for r in rows) / sum(r["n"] for r in rows), 4)

    candidate = [pooled(r["round"]) for r in rounds]
    kept = []
    for r, acc in zip(rounds, candidate):
        kept.append(acc if r["promoted"] or not kept else kept[-1])
    out = {"accuracy": kept, "candidate": candidate, "base": kept[0] if kept else None}
    if len(rounds) > 1:
        out["prediction"] = predictions(rounds, kept, candidate)
    return out


PREDICTORS = ("controller", "self", "self_change", "self_delta", "no_change", "last_change")


def predictions(rounds: list[dict], kept: list[float], candidate: list[float]) -> dict:
    """Predict-the-update: each round's candidate test accuracy (pooled) as predicted
        controller   before its update, by the controller: the model it starts from, plus the share of
                     its errors the controller predicted the round would fix (evolvelm.controller; None
                     without a controller)
        self         by the candidate itself, before its answers are checked: its confidence in each
                     answer (the token kind), recalibrated on the starting model's dev answers, averaged
                     (`self_predicted`, evolvelm.recipes.semisup.estimate)
        self_change  the model it starts from, plus the change in the models' own estimates: the
                     candidate's `self` minus the starting model's estimate of itself (`self_estimate`),
                     so that a bias both share cancels
        self_delta   by the candidate, before its answers are checked: the starting model's verdicts on the
                     test answers the update left as they were, and on those it changed, its confidence
                     recalibrated on the dev answers the last update (kept or not) changed (`self_delta`,
                     evolvelm.recipes.semisup.delta)
        no_change    the model it starts from
        last_change  the same change as last round
    per round, and the mean absolute error of each over the rounds that every predictor given predicts."""
    rows, start = [], 0  # start: the index of the model the round starts from (the last promoted)
    clip = lambda x: round(min(1.0, max(0.0, x)), 4)  # an accuracy, whatever a predictor extrapolates
    token = lambda r, field: ((r.get(field) or {}).get("token") or {}).get("pooled")
    for i in range(1, len(rounds)):
        decision, own, before = rounds[i].get("controller"), token(rounds[i], "self_predicted"), token(rounds[start], "self_estimate")
        last = candidate[i - 1] - kept[i - 2] if i >= 2 else None
        rows.append({"round": rounds[i]["round"], "actual": candidate[i], "no_change": kept[i - 1],
                     "last_change": None if last is None else clip(kept[i - 1] + last),
                     "controller": decision and clip(kept[i - 1] + (1 - kept[i - 1]) * (decision.get("predict") or 0.0)),
                     "self": own, "self_change": None if own is None or before is None else clip(kept[i - 1] + own - before),
                     "self_delta": (rounds[i].get("self_delta") or {}).get("pooled")})
        start = i if rounds[i]["promoted"] else start
    given = [k for k in PREDICTORS if any(r[k] is not None for r in rows)]
    scored = [r for r in rows if all(r[k] is not None for k in given)]
    mae = {k: round(sum(abs(r[k] - r["actual"]) for r in scored) / len(scored), 4) if scored and k in given else None
           for k in PREDICTORS}
    return {"rounds": rows, "mae": mae}


def write_summary(run: Run, cfg: Config) -> dict:
    """Rewrite summary.json atomically from the store."""
    summary = summarize(run, cfg)
    tmp = run.root / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(run.root / "summary.json")
    return summary
