"""RUN_DIR/summary.json: the machine-readable outcome of a run, derived from the store alone."""
from __future__ import annotations

import json

from evolvelm.config import Config
from evolvelm.store.run import Run


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
            "unanimity": acquire.get("unanimity", {}), "feedback": acquire.get("feedback", {}),
            "kept_retries": refine.get("kept_retries", 0), "strictness": refine.get("strictness"),
            "label_precision": refine.get("label_precision"), "filters": refine.get("filters", {}),
            "decision": gate.get("decision", ""),
            "model_version": ev["model_version"], "seconds": round(seconds.get(rnd, 0.0), 1),
        })
    promoted = [r for r in rounds if r["promoted"]]
    return {"rounds": rounds, "final_frontier": promoted[-1]["frontier"] if promoted else {},
            "sandbox": (run.done(0, "eval") or {}).get("sandbox"),
            "skills": cfg.skills, "wall_seconds": round(sum(seconds.values()), 1)}


def write_summary(run: Run, cfg: Config) -> dict:
    """Rewrite summary.json atomically from the store."""
    summary = summarize(run, cfg)
    tmp = run.root / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(run.root / "summary.json")
    return summary
