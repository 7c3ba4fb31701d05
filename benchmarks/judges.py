"""The judge audit table: every judge available here on LLMBar (Natural and the four Adversarial subsets),
each pair in both orders, against the baselines `random` and `first` (always the output shown first).

    python benchmarks/judges.py [--models random first zoo:smollm2-135m-instruct zoo:chain]
                                [--methods generate logprobs] [--data ../shared/data/llmbar] [--limit N] [--out FILE]

A zoo model reads 1024 characters at most (one token each), fewer than most LLMBar judge prompts: those
get no verdict (`no_verdict`), which counts as wrong. Prints one table: what, value, baseline (random),
ratio, wall s. `--out` writes every report as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["random", "first", "zoo:smollm2-135m-instruct", "zoo:chain"])
    ap.add_argument("--methods", nargs="+", default=["generate", "logprobs"])
    ap.add_argument("--data", default="../shared/data/llmbar")
    ap.add_argument("--limit", type=int, default=0, help="the first N pairs of each subset (default all)")
    ap.add_argument("--out")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from evolvelm.judges import audit, make_judge

    if not Path(a.data).is_dir():
        sys.exit(f"{a.data}: LLMBar is not there (../shared/data/llmbar); pass --data")
    reports = []
    for model in a.models:
        for method in (["baseline"] if model in ("random", "first") else a.methods):
            judge = make_judge(model, method if method != "baseline" else "generate", quiet=False)
            t = time.time()
            report = audit(judge, a.data, a.limit)
            judge.close()
            report["wall_s"] = round(time.time() - t, 1)
            reports.append(report)
            print(f"{model} {method}: adversarial accuracy {report['adversarial']['accuracy']}, agreement "
                  f"{report['all']['agreement']} ({report['wall_s']} s)", file=sys.stderr)
    base = next((r for r in reports if r["judge"]["name"] == "random"), None)
    print(f"{'what':<72} {'value':>7} {'baseline':>8} {'ratio':>6} {'wall s':>7}")
    for r in reports:
        who = f"{r['judge']['name']} ({r['judge']['method']})"
        rows = [*r["subsets"].items(), ("Adversarial pooled", r["adversarial"]), ("all", r["all"])]
        for subset, s in rows:
            b = (base["subsets"].get(subset) if subset in base["subsets"] else base["adversarial"] if subset.startswith("Adv")
                 else base["all"]) if base else None
            for metric in ("accuracy", "both_right", "agreement", "ties", "no_verdict"):
                ref = b[metric] if b else None
                ratio = f"{s[metric] / ref:.2f}" if ref else "-"
                what = f"{who} {subset} {metric} (n={s['pairs']})"
                print(f"{what:<72} {s[metric]:>7.3f} {ref if ref is not None else '-':>8} {ratio:>6} {r['wall_s']:>7}")
    if a.out:
        Path(a.out).write_text(json.dumps({"reports": reports}, indent=1))


if __name__ == "__main__":
    main()
