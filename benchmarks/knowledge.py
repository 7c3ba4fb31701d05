"""Inject batches of new people one after another and measure what each method keeps.

    python benchmarks/knowledge.py                                   # 6 arms x 20 injections on 2 cores
    python benchmarks/knowledge.py --methods distill sft-doc --injections 5 --out knowledge.json

Every arm runs the shipped `knowledge-distill` recipe on the same people, documents and questions;
only `knowledge.method` (and, for `distill-no-replay`, `update.new_weight=1`) changes:
    distill            KL from the model with the document in context to the model without it
    distill-no-replay  the same, learning each injection alone (SELF-PARAM's sequential setting)
    sft-qa             SFT on the questions the model asked itself and its own in-context answers
    sft-doc            SFT on the raw documents (the "plain fine-tuning" baseline)
    icl                no update; the document in the prompt (the upper bound)
    retrieval          no update; the best BM25 match among all stored documents in the prompt
Questions are asked in a phrasing never trained on. Printed per arm, after injections 1, 5, 10, 20:
efficacy (accuracy on the newest batch) and retention (on the first batch), each as a fraction of the
in-context upper bound of that batch; the other skills (copy/reverse, the pretraining population) at
the end against the base model; and the wall time per injection.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evolvelm import config  # noqa: E402
from evolvelm.recipes import knowledge  # noqa: E402
from evolvelm.store.run import Run  # noqa: E402

ARMS = {"distill": [], "distill-no-replay": ["knowledge.method=distill", "update.new_weight=1.0"],
        "sft-qa": [], "sft-doc": [], "icl": [], "retrieval": []}
POINTS = [1, 5, 10, 20]


def run_arm(arm: str, injections: int, overrides: list[str], workdir: Path) -> dict:
    extra = ARMS[arm] or [f"knowledge.method={arm}"]
    cfg = config.load("knowledge-distill", [f"rounds={injections}", *extra, *overrides])
    r = Run.create(Path(tempfile.mkdtemp(dir=workdir)) / "run", cfg)
    t0 = time.time()
    summary = knowledge.run_recipe(cfg, r, quiet=True)
    summary["bench_seconds"] = round(time.time() - t0, 1)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--injections", type=int, default=20)
    ap.add_argument("--out", type=Path, help="write the tables as JSON")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. update.steps=100")
    args = ap.parse_args()
    points = [p for p in POINTS if p <= args.injections] or [args.injections]
    results, fmt = {}, lambda x: "   -  " if x is None else f"{x:6.3f}"
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.methods:
            s = run_arm(arm, args.injections, args.overrides, Path(tmp))
            k = s["knowledge"]
            results[arm] = {"efficacy": k["efficacy"], "retention": k["retention"], "upper": k["upper"],
                            "efficacy_ratio": k["efficacy_ratio"], "retention_ratio": k["retention_ratio"],
                            "other_final": k["other"][-1], "other_base": k["other_base"],
                            "promoted": [r["promoted"] for r in s["rounds"][1:]],
                            "seconds_per_injection": round(s["bench_seconds"] / args.injections, 1)}
            print(f"{arm}: done in {s['bench_seconds']:.0f}s", file=sys.stderr, flush=True)
            if args.out:  # after every arm, so that a stopped benchmark keeps what it measured
                args.out.write_text(json.dumps({"injections": args.injections, "overrides": args.overrides,
                                                "arms": results}, indent=2))
    head = "".join(f"  eff@{p:<3d}" for p in points) + "".join(f"  ret@{p:<3d}" for p in points)
    print(f"\nfraction of the in-context upper bound (mean upper bound {sum(results[args.methods[0]]['upper']) / args.injections:.3f});"
          " eff = newest batch, ret = first batch")
    print(f"{'method':18s}{head}  {'rolled back':>11s}  {'s/injection':>11s}")
    for arm, r in results.items():
        cells = "".join(f"  {fmt(r['efficacy_ratio'][p - 1])}" for p in points)
        cells += "".join(f"  {fmt(r['retention_ratio'][p - 1])}" for p in points)
        print(f"{arm:18s}{cells}  {r['promoted'].count(False):11d}  {r['seconds_per_injection']:11.1f}")
    print("\nother skills after the last injection (mean test accuracy) vs the base model")
    for arm, r in results.items():
        print(f"{arm:18s}" + "  ".join(f"{s} {a:.3f} (base {r['other_base'][s]:.3f})" for s, a in r["other_final"].items()))


if __name__ == "__main__":
    main()
