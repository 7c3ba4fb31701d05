"""Self-prediction against cross-prediction (evolvelm.introspect; Binder et al. 2024, "Looking Inward").

    python benchmarks/self_guided.py                           # the zoo's copy/reverse models, both orders
    python benchmarks/self_guided.py --pairs copy-reverse:copy-reverse-seed1 --steps 800 --out self.json
    python benchmarks/self_guided.py --after                   # the question after the prompt, not before it
    python benchmarks/self_guided.py --survey 7 8 9 10 11 12   # where the models' behaviour is their own
    python benchmarks/self_guided.py --after --skills reverse --lengths 9 10 11   # there

For each pair A:B of zoo models (same architecture and data, different seeds): A answers training
and held-out prompts (copy and reverse at --lengths, where A is partly right); its behaviour gives
the targets of four properties (right, first character, length, whether two samples agree). A is
fine-tuned on its own behaviour (self), B on A's behaviour (cross), with the same introspection
examples, steps, batch size, learning rate and seed. Each also replays its own greedy answers to
the training prompts (as many examples; --no-replay: none), so that neither forgets its skill: B
learns nothing of A's answers beyond the introspection targets. Printed per pair and property, on the held-out prompts:
    majority   always the most common training value (knows nothing of the prompt)
    by group   the most common training value of the prompt's skill and length (the surface a
               predictor can learn without knowing the model)
    cross      B's predictions against A's behaviour
    self       A's predictions against A's behaviour before its introspection training
               (--against trained: every column scores against the self-trained A's behaviour, and B
               learns that behaviour, not A's from before: where introspection training moves what A
               does, both then predict the same target)
    self-now   A's predictions against its own behaviour after that training (it may have changed)
    changed    share of held-out prompts whose property value the introspection training changed
Then calibration on the held-out prompts, per skill: the confidence that A's greedy answer is right,
as A's probability of that answer before any introspection training (sequence), and as the trained
models' probability of replying "1" to the `right` question (self, cross): ECE, Brier, AUROC.
Last, self minus cross per property, pooled over pairs (over every skill, and per skill), with its
standard error (paired by prompt).
With --update-steps N, the self-trained model is then changed by N steps of training on one skill's
true answers (--update-skill) and asked about itself again: does its self-prediction follow its new
behaviour, where its old predictions and the observer's cannot (`after_update`)?

    python benchmarks/self_guided.py --pairs copy-reverse:copy-reverse-seed1 --update-steps 300

The controller and predict-the-update are measured by benchmarks/semisup.py (docs/self_guided.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.stats import mean_se  # noqa: E402
from evolvelm import introspect  # noqa: E402
from evolvelm.backends.hf import HFBackend  # noqa: E402
from evolvelm.evaluate import calibration  # noqa: E402
from evolvelm.models import resolve  # noqa: E402
from evolvelm.prompts import PromptFormat  # noqa: E402
from evolvelm.tasks import get_task  # noqa: E402
from evolvelm.types import Example  # noqa: E402
from evolvelm.update import sft  # noqa: E402


def draw(skills: list[str], lengths: list[int], n: int, seed: int, exclude: frozenset = frozenset()):
    return [p for s in skills for d in lengths for p in get_task(s).problems(d, n, seed + 31 * d, exclude=exclude)]


def trained(path: str, data, a, out: Path, steps: int | None = None) -> HFBackend:
    """`path` fully fine-tuned on `data` (a.steps, or `steps`), served from `out`."""
    model = sft.load_for_training(path, None, "full", 8, 16, seed=a.seed)
    sft.train(model, PromptFormat.load(path, "off"), data, steps or a.steps, a.batch_size, a.lr, seed=a.seed, warmup=50, quiet=True)
    sft.save(model, path, out, card={"introspection": len(data)})
    return HFBackend(str(out), batch_size=512)


def pair(a, first: str, second: str, tmp: Path) -> dict:
    t0 = time.time()
    props = list(introspect.PROPERTIES)
    train = draw(a.skills, a.lengths, a.train, a.seed)
    held = draw(a.skills, a.lengths, a.held, a.seed + 1, frozenset(p.prompt for p in train))
    pa, pb = resolve(f"zoo:{first}"), resolve(f"zoo:{second}")
    model_a = HFBackend(pa, batch_size=512)
    seen_train, seen_held = introspect.behaviour(model_a, train, props), introspect.behaviour(model_a, held, props)
    data = introspect.examples(train, seen_train, chat=False, after=a.after)
    keep = (lambda backend: introspect.replay(backend, train)) if a.replay else (lambda backend: [])
    me = trained(pa, data + keep(model_a), a, tmp / f"{first}-self")  # A's own answers: its loaded backend
    now = introspect.behaviour(me, held, props)
    changed = {p: round(sum(x != y for x, y in zip(seen_held.values[p], now.values[p])) / len(held), 4) for p in props}
    target = model_a
    if a.against == "trained":  # the behaviour to predict is the self-trained A's, and B learns that
        target, seen_train, seen_held = me, introspect.behaviour(me, train, props), now
    other = trained(pb, introspect.examples(train, seen_train, chat=False, after=a.after) + keep(HFBackend(pb, batch_size=512)),
                    a, tmp / f"{second}-on-{first}")
    pred_self, pred_cross = (introspect.predictions(m, held, props, chat=False, after=a.after) for m in (me, other))
    hits = {arm: {p: [int(x == y) for x, y in zip(pred[p], seen_held.values[p])] for p in props}
            for arm, pred in (("self", pred_self), ("cross", pred_cross))}
    right = [v == "1" for v in seen_held.values["right"]]
    base = [calibration.confidences(g.logprobs)["sequence"] for g in target.generate(
        [p.prompt for p in held], [0] * len(held), 0.0, max(get_task(p.skill).max_new_tokens(p.difficulty) for p in held))]
    conf = {"sequence": base, "self": introspect.confidence(me, held, False, a.after), "cross": introspect.confidence(other, held, False, a.after)}
    calibrated = {kind: {s: calibration.metrics([c for c, p in zip(values, held) if p.skill == s],
                                                [r for r, p in zip(right, held) if p.skill == s]) for s in a.skills}
                  for kind, values in conf.items()}
    group = lambda ps: [(p.skill, p.difficulty) for p in ps]
    moved = after_update(a, me, now, pred_self, pred_cross, train, held, tmp / f"{first}-self-updated") if a.update_steps else None
    return {"pair": f"{first}:{second}", "held": len(held), "skills": [p.skill for p in held], "examples": len(data), "update": moved,
            "majority": introspect.majority(seen_train, seen_held),
            "by group": introspect.majority(seen_train, seen_held, group(train), group(held)), "cross": introspect.accuracy(pred_cross, seen_held),
            "self": introspect.accuracy(pred_self, seen_held), "self-now": introspect.accuracy(pred_self, now),
            "changed": changed, "calibration": calibrated, "hits": hits, "seconds": round(time.time() - t0, 1)}


def after_update(a, me: HFBackend, before, pred_self: dict, pred_cross: dict, train, held, out: Path) -> dict:
    """The self-trained model changed by a round of training on one skill (`--update-skill`: SFT on the
    true answers to its training prompts, `--update-steps`, no introspection examples), then asked
    about itself again. Per property, on the held-out prompts: how many values the update changed,
    and against the new behaviour the updated model's own predictions ("updated self"), its
    predictions from before the update ("old self") and the observer's ("cross"), on every prompt and
    on the changed ones alone; and the updated model's predictions against its old behaviour (a
    prediction that did not follow the change scores higher there)."""
    props = list(introspect.PROPERTIES)
    data = [Example(p.prompt, p.answer) for p in train if p.skill == a.update_skill]
    moved = trained(me.model_path, data, a, out, a.update_steps)
    new, pred_new = introspect.behaviour(moved, held, props), introspect.predictions(moved, held, props, chat=False, after=a.after)
    changed = {p: [i for i, (x, y) in enumerate(zip(before.values[p], new.values[p])) if x != y] for p in props}
    score = lambda pred, seen, idx: round(sum(pred[p][i] == seen.values[p][i] for i in idx) / len(idx), 4) if idx else None
    every = range(len(held))
    out = {"skill": a.update_skill, "steps": a.update_steps, "examples": len(data),
           "right_before": {s: round(sum(v == "1" for v, q in zip(before.values["right"], held) if q.skill == s)
                                     / sum(q.skill == s for q in held), 4) for s in a.skills},
           "right_after": {s: round(sum(v == "1" for v, q in zip(new.values["right"], held) if q.skill == s)
                                    / sum(q.skill == s for q in held), 4) for s in a.skills}}
    for p in props:
        out[p] = {"changed": round(len(changed[p]) / len(held), 4),
                  **{f"{arm} {where}": score(pred, new, idx) for arm, pred in (("updated self", pred_new), ("old self", pred_self),
                                                                               ("cross", pred_cross))
                     for where, idx in (("all", every), ("changed", changed[p]))},
                  "updated self against old behaviour, changed": score(pred_new, before, changed[p])}
    return out


def difference(results: list[dict], prop: str, skill: str | None) -> str:
    """Self minus cross accuracy on `prop`, pooled over the pairs' held-out prompts (of one skill, or
    all), with the standard error of the difference paired by prompt."""
    d = [s - c for r in results for s, c, k in zip(r["hits"]["self"][prop], r["hits"]["cross"][prop], r["skills"])
         if skill in (None, k)]
    mean, se = mean_se(d)
    return f"{mean:+.3f} ({se:.3f})"


def survey(a) -> None:
    """Where is a model's behaviour its own? Per skill and length (`--survey`), each model's share of
    right answers and of answers whose first character is the right one, and per pair how often A's
    and B's first characters and lengths agree (greedy, `--held` prompts per skill and length). Where
    the models agree with the truth and each other, an observer learns the behaviour from the prompt;
    where they agree with neither, it is the model's own."""
    pairs = list(dict.fromkeys(tuple(sorted(spec.split(":"))) for spec in a.pairs))  # A:B and B:A agree alike
    models = list(dict.fromkeys(m for p in pairs for m in p))
    backends = {m: HFBackend(resolve(f"zoo:{m}"), batch_size=512) for m in models}
    print(f"{'skill':9s} {'length':>6s} " + " ".join(f"{m + ' right/first':>28s}" for m in models)
          + " " + " ".join(f"{x + ':' + y + ' first/length':>40s}" for x, y in pairs))
    for skill in a.skills:
        for d in a.survey:
            held = draw([skill], [d], a.held, a.seed + 1)
            seen = {m: introspect.behaviour(b, held, ["right", "first", "length"]).values for m, b in backends.items()}
            share = lambda xs: sum(xs) / len(held)
            cells = [f"{share(v == '1' for v in seen[m]['right']):.2f} / "
                     f"{share(f == p.answer[:1] for f, p in zip(seen[m]['first'], held)):.2f}" for m in models]
            agree = [f"{share(u == v for u, v in zip(seen[x]['first'], seen[y]['first'])):.2f} / "
                     f"{share(u == v for u, v in zip(seen[x]['length'], seen[y]['length'])):.2f}" for x, y in pairs]
            print(f"{skill:9s} {d:6d} " + " ".join(f"{c:>28s}" for c in cells) + " " + " ".join(f"{c:>40s}" for c in agree))


def fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", nargs="+", default=["copy-reverse:copy-reverse-seed1", "copy-reverse-seed1:copy-reverse",
                                                   "copy-reverse:copy-reverse-seed2", "copy-reverse-seed2:copy-reverse"])
    ap.add_argument("--skills", nargs="+", default=["copy", "reverse"])
    ap.add_argument("--lengths", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--train", type=int, default=400, help="training prompts per skill and length")
    ap.add_argument("--held", type=int, default=150, help="held-out prompts per skill and length")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--after", action="store_true", help="ask after the prompt (`Cabc=+r`), not before it (`+rCabc=`)")
    ap.add_argument("--against", choices=["before", "trained"], default="before",
                    help="whose behaviour both predict: A's before its introspection training (B learns A's answers "
                         "from before), or the self-trained A's, which that training may have changed (B learns it)")
    ap.add_argument("--no-replay", dest="replay", action="store_false", help="introspection examples alone")
    ap.add_argument("--update-steps", type=int, default=0,
                    help="then change the self-trained model by this many steps on --update-skill's true answers "
                         "and score its self-prediction against its new behaviour (0: not)")
    ap.add_argument("--update-skill", default="reverse")
    ap.add_argument("--out")
    ap.add_argument("--survey", type=int, nargs="+", metavar="LENGTH",
                    help="only survey the models' behaviour at these lengths (where is it their own?), then stop")
    a = ap.parse_args()
    if a.survey:
        return survey(a)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.pairs:
            first, second = spec.split(":")
            results.append(pair(a, first, second, Path(tmp)))
            r = results[-1]
            print(f"\n{r['pair']}: {r['examples']} training examples, {r['held']} held-out prompts, {r['seconds']:.0f}s")
            print(f"{'property':10s} {'majority':>9s} {'by group':>9s} {'cross':>7s} {'self':>7s} {'self-now':>9s} {'changed':>8s}")
            for p in r["self"]:
                print(f"{p:10s} {r['majority'][p]:9.3f} {r['by group'][p]:9.3f} {r['cross'][p]:7.3f} {r['self'][p]:7.3f} "
                      f"{r['self-now'][p]:9.3f} {r['changed'][p]:8.3f}")
            print(f"{'confidence':10s} {'skill':8s} {'ECE':>6s} {'Brier':>6s} {'AUROC':>6s}")
            for kind, by_skill in r["calibration"].items():
                for skill, c in by_skill.items():
                    print(f"{kind:10s} {skill:8s} {c['ece']:6.3f} {c['brier']:6.3f} {fmt(c['auroc']):>6s}")
            u = r["update"]
            if u:
                print(f"after {u['steps']} steps on {u['examples']} {u['skill']} answers (right before -> after: "
                      + ", ".join(f"{s} {u['right_before'][s]:.3f} -> {u['right_after'][s]:.3f}" for s in a.skills) + ")")
                cols = ["updated self", "old self", "cross"]
                print(f"{'property':10s} {'changed':>8s} " + " ".join(f"{c + ' ' + w:>20s}" for c in cols for w in ("all", "changed"))
                      + f" {'updated self vs old, changed':>29s}")
                for p in introspect.PROPERTIES:
                    print(f"{p:10s} {u[p]['changed']:8.3f} " + " ".join(f"{fmt(u[p][c + ' ' + w]):>20s}" for c in cols
                                                                    for w in ("all", "changed"))
                          + f" {fmt(u[p]['updated self against old behaviour, changed']):>29s}")
    print("\nself minus cross, pooled over pairs (held-out prompts; standard error of the paired difference)")
    print(f"{'property':10s} {'every skill':>16s} " + " ".join(f"{s:>16s}" for s in a.skills))
    for p in introspect.PROPERTIES:
        print(f"{p:10s} " + " ".join(f"{difference(results, p, skill):>16s}" for skill in [None, *a.skills]))
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "pairs": results}, indent=1))


if __name__ == "__main__":
    main()
