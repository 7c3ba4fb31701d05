"""Learn a sequence of skills with one module per skill, against the usual baselines, in several orders.

    python benchmarks/modular.py                                  # 3 orders x 4 methods: ~25 min on 2 cores
    python benchmarks/modular.py --orders 1 --methods modular shared --out modular.json

Every method runs the shipped `modular-skills` recipe on the same sequence and data; only
`modules.method` changes:
    modular   one LoRA module per skill, chosen by the router (hidden-state features)
    shared    one LoRA adapter trained on each skill in turn
    replay    shared, with every earlier round's data mixed in (half the weight to the new skill)
    full      full fine-tuning on each skill in turn
The gate is switched off (gate.tolerance=1) so that every round is kept and forgetting shows; with
the gate on, the baselines' forgetting rounds would be rolled back instead.
"alone" trains one fresh module per skill on its own (no sequence): the reference for ACC.
Printed: ACC, BWT, FWT (GEM; mean test accuracy over difficulties 1-3) per method and order, with
wall time; then, per router feature type, the held-out routing accuracy and the time to answer the
mixed test prompts through the router against calling each prompt's module directly.

    python benchmarks/modular.py --choose                         # which module trains: ~15 min
    python benchmarks/modular.py --choose --steps 150 --seeds 0 1 2 3 4 --out choose.json

`--choose` asks which module should train: `--rounds` rounds of `--steps` steps each, with the
shipped gate, on the four skills, each round's skill chosen by
    sequence    the four in turn, again and again (the fixed order)
    controller  modules.order=controller (evolvelm.controller.choose_module): each skill once, then
                the highest UCB on expected dev gain among the skills with dev errors left
    random      modules.order=controller with controller.policy=random: a skill drawn per round
    weakest     controller.policy=weakest: the skill with the lowest dev accuracy (the simple rule a
                choice must also beat)
Printed per seed: the final mean test accuracy over the four skills and the skills chosen; then
the mean (SE) per ordering and the controller's paired differences. Rounds 1-4 are the same for
sequence and controller (the same skills, data and seeds), so their difference comes from the
rounds after.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.stats import mean_se  # noqa: E402
from evolvelm import config  # noqa: E402
from evolvelm.evaluate.suite import splits  # noqa: E402
from evolvelm.recipes import modular  # noqa: E402
from evolvelm.report.export import last_state  # noqa: E402
from evolvelm.store.run import Run  # noqa: E402
from evolvelm.tasks import get_task  # noqa: E402

SEQUENCE = ["reverse", "shift", "expr", "copy"]
ORDERS = [SEQUENCE, SEQUENCE[::-1], ["expr", "copy", "reverse", "shift"]]
METHODS = ["modular", "shared", "replay", "full"]
ORDERINGS = {"sequence": [], "controller": ["modules.order=controller", "controller.policy=ucb"],
             "random": ["modules.order=controller", "controller.policy=random"],
             "weakest": ["modules.order=controller", "controller.policy=weakest"]}


def run(skills: list[str], overrides: list[str], workdir: Path, gate: bool = False) -> tuple[dict, Run]:
    cfg = config.load("modular-skills", [f"skills=[{', '.join(skills)}]", f"rounds={len(skills)}"]
                      + ([] if gate else ["gate.tolerance=1.0"]) + overrides)
    r = Run.create(Path(tempfile.mkdtemp(dir=workdir)) / "run", cfg)
    t0 = time.time()
    summary = modular.run_recipe(cfg, r, quiet=True)
    summary["bench_seconds"] = round(time.time() - t0, 1)
    return summary, r


def inference_cost(r: Run, repeats: int = 10) -> tuple[float, float]:
    """Seconds to answer every skill's test prompts through the router, and with each prompt's own
    module given directly (best of `repeats`, same batches)."""
    cfg, state = r.config(), last_state(r)
    model = modular.model_for(cfg, r, state)
    owner = {cfg.skills[i]: m for i, m in enumerate(run_modules(r))}
    prompts, truth = [], []
    for s in dict.fromkeys(cfg.skills):
        for d in range(1, cfg.eval.max_difficulty + 1):
            for p in splits(get_task(s), d, cfg.eval.problems, cfg.eval.dev_problems, cfg.eval.seed)["test"]:
                prompts.append(p.prompt)
                truth.append(owner[s])
    seeds = [0] * len(prompts)
    timings = []
    for given in (None, truth):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.generate(prompts, seeds, 0.0, 9, modules=given)
            best = min(best, time.perf_counter() - t0)
        timings.append(best)
    model.close()
    return timings[0], timings[1]


def run_modules(r: Run) -> list[str]:
    """The module each round updated."""
    return [r.done(i, "refine")["module"] for i in range(1, r.config().rounds + 1)]


def choose(args, workdir: Path) -> dict:
    """Which module trains each round: the controller against the fixed order and the baselines."""
    finals: dict[str, list[float]] = {}
    out: dict = {"rounds": args.rounds, "steps": args.steps, "seeds": args.seeds, "runs": {}}
    print(f"{'ordering':10s} {'seed':>4s} {'final':>7s}  {'skills chosen':{9 * args.rounds}s} {'wall s':>7s}")
    for name in args.orderings:
        for seed in args.seeds:
            skills = (SEQUENCE * args.rounds)[:args.rounds] if name == "sequence" else SEQUENCE
            summary, r = run(skills, [f"rounds={args.rounds}", f"seed={seed}", f"update.steps={args.steps}",
                                      f"modules.examples={args.examples}"] + ORDERINGS[name], workdir, gate=True)
            chosen = [r.done(i, "acquire")["skill"] for i in range(1, args.rounds + 1)]
            final = summary["forgetting"]["mean"]
            finals.setdefault(name, []).append(final)
            out["runs"][f"{name}:{seed}"] = {"final": final, "chosen": chosen, "summary": summary}
            print(f"{name:10s} {seed:4d} {final:7.4f}  {' '.join(chosen):{9 * args.rounds}s} "
                  f"{summary['bench_seconds']:7.1f}", flush=True)
    print(f"\n{'ordering':10s} {'mean':>7s} {'SE':>7s}   final mean test accuracy over the four skills, "
          f"{len(args.seeds)} seeds")
    for name, xs in finals.items():
        print(f"{name:10s} {mean_se(xs)[0]:7.4f} {mean_se(xs)[1]:7.4f}")
    for other in [n for n in finals if n != "controller"] if "controller" in finals else []:
        m, se = mean_se([a - b for a, b in zip(finals["controller"], finals[other])])
        out.setdefault("paired", {})[other] = {"mean": m, "se": se}
        print(f"controller - {other}: {m:+.4f} (SE {se:.4f}, paired by seed)")
    out["finals"] = finals
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orders", type=int, default=len(ORDERS), help="how many of the orders to run")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--out", type=Path, help="write every summary and the tables as JSON")
    ap.add_argument("--choose", action="store_true", help="which module trains: the controller against the "
                                                          "fixed order and the baselines (see above)")
    ap.add_argument("--orderings", nargs="+", default=list(ORDERINGS), choices=list(ORDERINGS))
    ap.add_argument("--rounds", type=int, default=8, help="--choose: rounds per run")
    ap.add_argument("--steps", type=int, default=60, help="--choose: update.steps per round")
    ap.add_argument("--examples", type=int, default=600, help="--choose: modules.examples per round")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="--choose: run seeds")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    workdir = Path(tempfile.mkdtemp(prefix="evolvelm-modular-"))
    if args.choose:
        t0 = time.time()
        out = choose(args, workdir)
        print(f"\ntotal wall {time.time() - t0:.0f}s")
        if args.out:
            args.out.write_text(json.dumps(out, indent=2))
        return
    out: dict = {"orders": ORDERS[:args.orders], "runs": {}, "alone": {}}

    t0 = time.time()
    for s in SEQUENCE:
        summary, _ = run([s], [], workdir)
        out["alone"][s] = summary["forgetting"]["matrix"][-1][0]
    alone_acc = sum(out["alone"].values()) / len(out["alone"])
    print(f"alone (one fresh module per skill): {out['alone']}  mean {alone_acc:.4f}  ({time.time() - t0:.0f}s)\n")

    print(f"{'method':8s} {'order':34s} {'ACC':>7s} {'alone':>7s} {'ratio':>6s} {'BWT':>8s} {'FWT':>8s} {'wall s':>7s}")
    modular_run = None
    for method in args.methods:
        for order in ORDERS[:args.orders]:
            extra = [f"modules.method={method}"]
            summary, r = run(order, extra, workdir)
            f = summary["forgetting"]
            out["runs"][f"{method}:{','.join(order)}"] = summary
            print(f"{method:8s} {','.join(order):34s} {f['acc']:7.4f} {alone_acc:7.4f} {f['acc'] / alone_acc:6.3f} "
                  f"{f['bwt']:8.4f} {f['fwt']:8.4f} {summary['bench_seconds']:7.1f}", flush=True)
            if method == "modular" and modular_run is None:
                modular_run = r
        if args.orders > 1:
            rows = [out["runs"][f"{method}:{','.join(o)}"]["forgetting"] for o in ORDERS[:args.orders]]
            mean = {k: sum(x[k] for x in rows) / len(rows) for k in ("acc", "bwt", "fwt")}
            out.setdefault("means", {})[method] = mean
            print(f"{method:8s} {'mean over orders':34s} {mean['acc']:7.4f} {alone_acc:7.4f} "
                  f"{mean['acc'] / alone_acc:6.3f} {mean['bwt']:8.4f} {mean['fwt']:8.4f}")

    if modular_run is not None:  # the first order's modular run with each feature type
        print(f"\n{'router features':16s} {'held-out routing accuracy (final round, per skill)':58s} "
              f"{'routed s':>8s} {'direct s':>8s} {'ratio':>6s}")
        order = ORDERS[0]
        for features in ("hidden", "chars"):
            if features == "hidden":
                summary, r = out["runs"][f"modular:{','.join(order)}"], modular_run
            else:
                summary, r = run(order, ["modules.router=chars"], workdir)
                out["runs"][f"modular-chars:{','.join(order)}"] = summary
            routed, direct = inference_cost(r)
            out.setdefault("inference", {})[features] = {"routed_s": routed, "direct_s": direct, "ratio": routed / direct}
            print(f"{features:16s} {json.dumps(summary['rounds'][-1]['router']):58s} "
                  f"{routed:8.3f} {direct:8.3f} {routed / direct:6.3f}")
        print("routed/direct: answering all test prompts through the router against giving each prompt its module")
    print(f"\ntotal wall {time.time() - t0:.0f}s")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
