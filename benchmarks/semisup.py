"""Learning from unlabeled data: every semisup recipe on the same labeled set, unlabeled pool and
held-out splits, against the base model and SFT on the labeled set alone.

    python benchmarks/semisup.py                                      # every arm x 5 rounds on 2 cores
    python benchmarks/semisup.py --methods labeled lmsi --rounds 3 --out semisup.json
    python benchmarks/semisup.py --methods lmsi-T1.2 bstar-T --seeds 0 1 2    # final accuracy: mean of 3 seeds
    python benchmarks/semisup.py --load seeds01.json seeds23.json     # the tables of earlier --out files, merged

Arms (the shipped recipes; `labeled` is lmsi.yaml with semisup.method=labeled: the same update on
the labeled set alone, the baseline):
    labeled    SFT on the 350 labeled problems, the same steps per round as every other arm
    lmsi       8 scratchpads per unlabeled problem, the majority final answer's rationales (>= 6 of 8),
               at temperature 1.0; lmsi-T0.6, -T0.8, -T1.2, -T1.4, -T1.6: the same at a fixed other temperature
    bstar      lmsi with temperature and vote agreement chosen each round by B-STaR's balance score;
               bstar-T: the temperature alone (agreement 6 of 8, as in lmsi)
    star       4 scratchpads; the checker keeps the right ones; failures rationalised with a hint
    rest-em    8 scratchpads; the checker keeps the right ones (4 per problem); retrained from the base
    semievol   8 scratchpads after the 2 nearest labeled examples; consistent or low-NLL answers;
               semievol-noctx: the same without the examples in context (in-weight propagation only)
    pairs      DPO (LoRA) on right-vs-wrong answers of the same problem
    lmsi-confidence, lmsi-random
               lmsi's samples, but instead of the vote, as many answers as the vote would keep of them,
               the most confident (highest mean token probability) or drawn at random
    controller each round a UCB1 bandit chooses among lmsi, star, semievol and pairs by measured dev gain
               per 1k sequences (evolvelm.controller); controller-random: the arm drawn at random
Printed per arm and round: test accuracy pooled over every held-out problem (kept model, and the
round's candidate), pass@1, pass@k,
distinct right rationales per problem, answer diversity, precision of the kept labels (final answer)
and of their whole scratchpads, the calibration of the model's confidence in its test answers (ECE
and AUROC of P(greedy answer), first skill), the controller's arm, wall time (per seed with --seeds).
Then per arm: final accuracy (the
mean over seeds, and each seed's), its error against the labeled baseline's, how many promoted rounds
lowered test accuracy (and the largest drop); with several seeds, every two arms' paired difference
(the same seed gives both arms the same unlabeled draws and splits); for lmsi, the precision of the
majority answer by its number of votes (all rounds); for the controller arms, predict-the-update's
mean absolute error against no change and the same change as last round.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evolvelm import config  # noqa: E402
from evolvelm.recipes import semisup  # noqa: E402
from evolvelm.store.run import Run  # noqa: E402

ARMS = {"labeled": ("lmsi", ["semisup.method=labeled"]), "lmsi": ("lmsi", []),
        **{f"lmsi-T{t}": ("lmsi", [f"acquire.temperature={t}"]) for t in (0.6, 0.8, 1.2, 1.4, 1.6)}, "bstar": ("bstar", []),
        "bstar-T": ("bstar", ["semisup.thresholds=[0.75]"]),
        "star": ("star", []), "rest-em": ("rest-em", []), "semievol": ("semievol", []),
        "semievol-noctx": ("semievol", ["semisup.demos=0"]), "pairs": ("pairs", []),
        "lmsi-confidence": ("lmsi", ["refine.chain=[confidence,dedup]", "refine.keep_as=vote"]),
        "lmsi-random": ("lmsi", ["refine.chain=[random,dedup]", "refine.keep_as=vote"]),
        "controller": ("lmsi", ["controller.arms=[lmsi,star,semievol,pairs]"]),
        "controller-random": ("lmsi", ["controller.arms=[lmsi,star,semievol,pairs]", "controller.policy=random"])}


def run_arm(arm: str, rounds: int, overrides: list[str], workdir: Path) -> dict:
    recipe, extra = ARMS[arm]
    cfg = config.load(recipe, [f"rounds={rounds}", *extra, *overrides])
    r = Run.create(Path(tempfile.mkdtemp(dir=workdir)) / "run", cfg)
    t0 = time.time()
    summary = semisup.run_recipe(cfg, r, quiet=True)
    summary["bench_seconds"] = round(time.time() - t0, 1)
    return summary


def rows(summary: dict) -> list[dict]:
    s, out = summary["semisup"], []
    for i, r in enumerate(summary["rounds"]):
        m = r["monitor"] or {}
        out.append({"round": r["round"], "promoted": r["promoted"], "accuracy": s["accuracy"][i],
                    "candidate": s["candidate"][i], "pass@1": m.get("pass@1"),
                    "pass@k": next((v for k, v in m.items() if k.startswith("pass@") and k != "pass@1"), None),
                    "distinct_right": m.get("distinct_right"), "diversity": m.get("diversity"),
                    "kept": r["kept"], "label_precision": r["label_precision"],
                    "rationale_precision": r["rationale_precision"],
                    "filters": {n: f.get("precision") for n, f in r["filters"].items()}, "seconds": r["seconds"],
                    "temperature": r["temperature"], "vote_agreement": r["vote_agreement"],
                    "ece": next(iter(r["calibration"].values()), {}).get("ece"),
                    "auroc": next(iter(r["calibration"].values()), {}).get("auroc"),
                    "arm": (r.get("controller") or {}).get("arm")})
    return out


def measure(arm: str, seed: int, rounds: int, overrides: list[str], workdir: Path) -> dict:
    """One arm at one run seed: its rounds, final accuracy and vote-margin precision."""
    s = run_arm(arm, rounds, [f"seed={seed}", *overrides], workdir)
    margin = defaultdict(lambda: [0, 0.0])
    for r in s["rounds"]:
        for m, v in ((r["monitor"] or {}).get("precision_by_margin") or {}).items():
            margin[int(m)][0] += v["problems"]
            margin[int(m)][1] += v["problems"] * v["precision"]
    return {"rounds": rows(s), "base": s["semisup"]["base"], "final": s["semisup"]["accuracy"][-1],
            "precision_by_margin": {m: round(c / n, 4) for m, (n, c) in sorted(margin.items())},
            "prediction": s["semisup"].get("prediction"), "seconds": s["bench_seconds"]}


def drops(rounds: list[dict]) -> list[float]:
    """How much each promoted round lowered the kept model's test accuracy (0 when it did not)."""
    return [max(0.0, round(a["accuracy"] - b["accuracy"], 4)) for a, b in zip(rounds, rounds[1:]) if b["promoted"]]


def print_rounds(name: str, res: dict) -> None:
    fmt = lambda x: "    -" if x is None else f"{x:.3f}"
    print(f"\n{name}  (wall time {res['seconds']:.0f}s)")
    print(f"{'round':>5s} {'promoted':>8s} {'acc':>6s} {'cand':>6s} {'temp':>5s} {'agree':>5s} {'pass@1':>6s} {'pass@k':>6s} "
          f"{'dist.ok':>7s} {'divers':>6s} {'kept':>6s} {'prec':>6s} {'ratprec':>7s} {'ece':>6s} {'auroc':>6s} {'s':>6s}  arm")
    for r in res["rounds"]:
        print(f"{r['round']:5d} {'yes' if r['promoted'] else 'NO':>8s} {fmt(r['accuracy']):>6s} {fmt(r['candidate']):>6s} "
              f"{fmt(r['temperature']):>5s} {fmt(r['vote_agreement']):>5s} {fmt(r['pass@1']):>6s} {fmt(r['pass@k']):>6s} "
              f"{fmt(r['distinct_right']):>7s} {fmt(r['diversity']):>6s} {r['kept']:6d} {fmt(r['label_precision']):>6s} "
              f"{fmt(r['rationale_precision']):>7s} {fmt(r.get('ece')):>6s} {fmt(r.get('auroc')):>6s} {r['seconds']:6.1f}  {r.get('arm') or ''}")


def arm_result(runs: dict[int, dict]) -> dict:
    """One arm's runs by seed, with its base accuracy, its final accuracy (mean over seeds) and each seed's."""
    finals = [runs[seed]["final"] for seed in sorted(runs)]
    return {"seeds": dict(sorted(runs.items())), "base": next(iter(runs.values()))["base"],
            "final": round(sum(finals) / len(finals), 4), "finals": finals}


def load(paths: list[Path]) -> dict:
    """Merge the `--out` files of earlier runs (same rounds and overrides, seeds told apart) into one result."""
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    first = None
    for path in paths:
        data = json.loads(path.read_text())
        setting = {"rounds": data["rounds"], "overrides": data["overrides"]}
        if first is not None and setting != first:
            sys.exit(f"{path}: measured with {setting}, not {first} like {paths[0]}; merge like with like")
        first = setting
        for arm, res in data["arms"].items():
            for seed, run in res["seeds"].items():
                if int(seed) in runs[arm]:
                    sys.exit(f"{path}: {arm} seed {seed} is already in an earlier file")
                runs[arm][int(seed)] = run
    return {arm: arm_result(r) for arm, r in runs.items()}


def paired(a: dict, b: dict) -> dict | None:
    """Arm a's final accuracy minus arm b's over the seeds both ran (runs of one seed share their unlabeled
    draws, dev and test splits): the mean difference, its standard error, and how many seeds a was higher,
    equal, lower. None with fewer than two seeds in common."""
    common = sorted(set(a["seeds"]) & set(b["seeds"]))
    if len(common) < 2:
        return None
    d = [a["seeds"][s]["final"] - b["seeds"][s]["final"] for s in common]
    mean = sum(d) / len(d)
    se = (sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5
    return {"seeds": len(d), "mean": round(mean, 4), "se": round(se, 4), "higher": sum(x > 0 for x in d),
            "equal": sum(x == 0 for x in d), "lower": sum(x < 0 for x in d)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="run seeds (sampling, training, unlabeled draws); the final accuracy is their mean")
    ap.add_argument("--out", type=Path, help="write the tables as JSON")
    ap.add_argument("--load", nargs="+", type=Path, metavar="JSON",
                    help="run nothing: print the tables of earlier --out files, their seeds merged")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, e.g. acquire.problems=200")
    args = ap.parse_args()
    if args.load:
        results = load(args.load)
    else:
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            for arm in args.methods:
                runs = {}
                for seed in args.seeds:
                    runs[seed] = measure(arm, seed, args.rounds, args.overrides, Path(tmp))
                    print(f"{arm} seed {seed}: done in {runs[seed]['seconds']:.0f}s", file=sys.stderr, flush=True)
                results[arm] = arm_result(runs)
                if args.out:  # after every arm, so that a stopped benchmark keeps what it measured
                    args.out.write_text(json.dumps({"rounds": args.rounds, "seeds": args.seeds, "overrides": args.overrides,
                                                    "arms": results}, indent=2))
    for arm, res in results.items():
        for seed, run in res["seeds"].items():
            print_rounds(arm if len(res["seeds"]) == 1 else f"{arm}, seed {seed}", run)
    base_err = 1 - results["labeled"]["final"] if "labeled" in results else None
    print(f"\n{'method':14s} {'base':>6s} {'final':>6s} {'error':>6s} {'error / labeled-only error':>26s} "
          f"{'promoted rounds lowering test':>29s}  finals per seed")
    for arm, res in results.items():
        ratio = "" if not base_err else f"{(1 - res['final']) / base_err:.3f}"
        fell = [d for run in res["seeds"].values() for d in drops(run["rounds"])]
        lowered = f"{sum(d > 0 for d in fell)} of {len(fell)}" + (f" (max {max(fell):.4f})" if any(fell) else "")
        print(f"{arm:14s} {res['base']:6.3f} {res['final']:6.3f} {1 - res['final']:6.3f} {ratio:>26s} {lowered:>29s}  "
              + " ".join(f"{f:.3f}" for f in res["finals"]))
    pairs = [(a, b, paired(results[a], results[b])) for i, a in enumerate(results) for b in list(results)[i + 1:]]
    if any(p for _, _, p in pairs):
        print("\npaired difference of final accuracy over the seeds both arms ran: mean (standard error), seeds higher/equal/lower")
        for a, b, p in pairs:
            if p:
                print(f"{a + ' - ' + b:30s} {p['mean']:+.4f} ({p['se']:.4f})  {p['higher']}/{p['equal']}/{p['lower']} of {p['seeds']}")
    if "lmsi" in results:
        seeds = results["lmsi"]["seeds"]
        print("\nlmsi: precision of the majority answer by its votes (of k), all rounds" + (", first seed" if len(seeds) > 1 else ""))
        print("  ".join(f"{m}: {p:.3f}" for m, p in next(iter(seeds.values()))["precision_by_margin"].items()))
    for arm, res in results.items():  # the controller's arms: predict-the-update, mean absolute error over seeds
        scored = [run["prediction"]["mae"] for run in res["seeds"].values() if run.get("prediction")]
        if scored and all(m["controller"] is not None for m in scored):
            print(f"\n{arm}: predict-the-update, mean absolute error of the candidate's test accuracy (mean of "
                  f"{len(scored)} seeds): " + ", ".join(f"{k} {sum(m[k] for m in scored) / len(scored):.4f}"
                                                   for k in ("controller", "no_change", "last_change")))


if __name__ == "__main__":
    main()
