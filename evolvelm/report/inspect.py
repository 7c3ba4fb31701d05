"""Answers to "why was this sample kept or dropped?", read from the store."""
from __future__ import annotations

from evolvelm.config import ConfigError
from evolvelm.store.run import Run


def _last_round(run: Run) -> int:
    row = run.query("SELECT MAX(round) AS r FROM verdicts")[0]
    if row["r"] is None:
        raise ConfigError(f"{run.root} has no refined samples yet")
    return row["r"]


def explain(run: Run, sample_id: str | None, rnd: int | None = None) -> str:
    """Provenance and every verdict of one sample; without an id, the per-filter tally of a round."""
    if sample_id is None:
        rnd = _last_round(run) if rnd is None else rnd
        rows = run.query("SELECT filter, SUM(kept) AS kept, COUNT(*) - SUM(kept) AS dropped, MIN(position) AS pos "
                         "FROM verdicts WHERE round=? GROUP BY filter ORDER BY pos", (rnd,))
        lines = [f"round {rnd}: filter verdicts (in chain order)"]
        lines += [f"  {r['filter']:10s} kept {r['kept']:6d}  dropped {r['dropped']:6d}" for r in rows]
        return "\n".join(lines + ["use --dropped to list dropped samples, or pass a sample id"])
    rows = run.query("SELECT * FROM samples WHERE id LIKE ?", (sample_id + "%",))
    if len(rows) != 1:
        raise ConfigError(f"sample id {sample_id!r} matches {len(rows)} samples in {run.root}")
    s = rows[0]
    verdicts = run.query("SELECT * FROM verdicts WHERE sample_id=? ORDER BY position", (s["id"],))
    kept = all(v["kept"] for v in verdicts) if verdicts else None
    lines = [f"sample {s['id']}  round {s['round']}  {s['skill']} difficulty {s['difficulty']}",
             f"  prompt       {s['prompt']!r}", f"  completion   {s['completion']!r}",
             f"  true answer  {s['true_answer']!r} (benchmark only)",
             f"  produced by  model {s['model_version']}, seed {s['seed']}, k={s['k']}, temperature {s['temperature']}",
             f"  mean logprob {s['mean_logprob']:.4f}",
             "  verdicts:" if verdicts else "  verdicts: none (round not refined yet)"]
    lines += [f"    {v['filter']:8s} v{v['version']}  {'KEPT   ' if v['kept'] else 'DROPPED'} {v['reason']}" for v in verdicts]
    if verdicts:
        lines.append(f"  => {'kept' if kept else 'dropped by ' + next(v['filter'] for v in verdicts if not v['kept'])}")
    return "\n".join(lines)


def list_dropped(run: Run, rnd: int | None, limit: int) -> str:
    """The dropped samples of a round with the filter that dropped each and why."""
    rnd = _last_round(run) if rnd is None else rnd
    rows = run.query("SELECT s.id, s.prompt, s.completion, v.filter, v.reason FROM verdicts v JOIN samples s "
                     "ON s.id = v.sample_id WHERE v.round=? AND v.kept=0 ORDER BY s.rowid LIMIT ?", (rnd, limit))
    total = run.query("SELECT COUNT(*) AS n FROM verdicts WHERE round=? AND kept=0", (rnd,))[0]["n"]
    lines = [f"round {rnd}: {total} dropped samples (showing {len(rows)})"]
    lines += [f"  {r['id']}  {r['prompt']!r:24s} -> {r['completion']!r:20s} {r['filter']}: {r['reason']}" for r in rows]
    return "\n".join(lines)
