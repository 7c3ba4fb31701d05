"""The easy-to-hard ladder (Lee, Cai et al. 2025): each round the model labels problems one step
beyond the difficulty it was trained through, keeps the labels its filters trust, trains on them
mixed with everything it learned before, and is kept only if it did not regress.

    evolvelm run copy-ladder

Round 0 evaluates the base model. Every later round runs, in order:
    acquire  sample k answers per new problem at difficulty level+1 .. level+step
    refine   the configured filter chain; every verdict is stored per sample
    update   continue training the last promoted model on the data mixture
    eval     greedy exact-match accuracy on the fixed held-out splits (test: reported, dev: gate)
    gate     promote, or keep the previous model and record why

The "level" of a skill is the highest difficulty the model has been trained on (the base model's
range, then every promoted round's labels). Steps are taken from the level, never from held-out
accuracy, so the reported test numbers play no part in any decision.
Each stage is skipped when the manifest says it was committed: that is all `resume` does.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from evolvelm.acquire.ladder import draw_problems, sample
from evolvelm.backends import make_backend
from evolvelm.config import Config, ConfigError
from evolvelm.evaluate.suite import accuracy, frontier, gate, held_out_prompts, splits
from evolvelm.refine.filters import FilterContext, label_precision, run_chain
from evolvelm.store.run import Run
from evolvelm.store.summary import write_summary
from evolvelm.tasks import CHECKER_VERSION, get_task
from evolvelm.types import Problem
from evolvelm.update.mixture import mixture

ZOO = Path(__file__).resolve().parent.parent / "zoo"


def resolve(ref: str, run: Run) -> str:
    """A model reference -> a local path: zoo:NAME, an absolute path, or a path inside the run."""
    if ref.startswith("zoo:"):
        path = ZOO / ref[4:]
        if not path.is_dir():
            raise ConfigError(f"model.path: no shipped model {ref!r}; shipped: {sorted('zoo:' + p.parent.name for p in ZOO.glob('*/config.json'))}")
        return str(path)
    path = Path(ref) if Path(ref).is_absolute() else run.root / ref
    if not path.is_dir():
        raise ConfigError(f"model.path: directory not found: {path}")
    return str(path)


def start_levels(cfg: Config, run: Run) -> dict[str, int]:
    """Per skill, the highest difficulty the base model was trained on."""
    if cfg.acquire.start_level:
        return {s: cfg.acquire.start_level for s in cfg.skills}
    meta_path = Path(resolve(cfg.model.path, run)) / "evolvelm.json"
    trained = json.loads(meta_path.read_text())["skills"] if meta_path.is_file() else {}
    missing = [s for s in cfg.skills if s not in trained]
    if missing:
        raise ConfigError(f"{meta_path} does not say which range {missing} were trained on; set acquire.start_level")
    return {s: trained[s][1] for s in cfg.skills}


def backend_for(cfg: Config, run: Run, state: dict):
    """A backend serving the model described by a gate state."""
    return make_backend(cfg.model.backend, resolve(state["model"], run),
                        adapter=resolve(state["adapter"], run) if state["adapter"] else None,
                        device=cfg.model.device, batch_size=cfg.model.batch_size)


def evaluate(cfg: Config, run: Run, rnd: int, state_levels: dict[str, int], backend, quiet: bool) -> dict:
    """The eval stage: test split on 1..max_difficulty, dev split on 1..level+step."""
    t0 = time.time()
    e = cfg.eval
    test = accuracy(backend, cfg.skills, {s: range(1, e.max_difficulty + 1) for s in cfg.skills}, "test",
                    e.problems, e.dev_problems, e.seed, quiet)
    dev_range = {s: range(1, min(e.max_difficulty, state_levels[s] + cfg.acquire.step) + 1) for s in cfg.skills}
    dev = accuracy(backend, cfg.skills, dev_range, "dev", e.problems, e.dev_problems, e.seed, quiet)
    rows = [(split, s, d, a, len(splits(get_task(s), d, e.problems, e.dev_problems, e.seed)[split]), backend.version,
             CHECKER_VERSION) for split, acc in (("test", test), ("dev", dev)) for s in cfg.skills for d, a in acc[s].items()]
    info = {"frontier": {s: frontier(test[s], e.threshold) for s in cfg.skills}, "dev": dev,
            "model_version": backend.version, "seconds": round(time.time() - t0, 2)}
    run.commit(rnd, "eval", info, evals=rows)
    return info


def run_recipe(cfg: Config, run: Run, quiet: bool = False) -> dict:
    """Run (or resume) every round of the ladder in `run`; returns the summary."""
    held = {s: held_out_prompts(get_task(s), cfg.eval.max_difficulty, cfg.eval.problems, cfg.eval.dev_problems,
                                cfg.eval.seed) for s in cfg.skills}

    # Round 0: the base model, evaluated before any update.
    base = {"model": cfg.model.path, "adapter": None, "levels": start_levels(cfg, run), "round": 0}
    if not run.done(0, "eval"):
        evaluate(cfg, run, 0, base["levels"], backend_for(cfg, run, base), quiet)
    if not run.done(0, "gate"):
        run.commit(0, "gate", {**base, "promoted": True, "reason": "base model", "seconds": 0.0})
    write_summary(run, cfg)

    for rnd in range(1, cfg.rounds + 1):
        state = run.done(rnd - 1, "gate")  # the model currently promoted, and its levels
        levels = state["levels"]

        if not run.done(rnd, "acquire"):
            t0 = time.time()
            backend = backend_for(cfg, run, state)
            n_per = max(1, cfg.acquire.problems // cfg.acquire.step)
            problems: list[Problem] = [p for s in cfg.skills for d in range(levels[s] + 1, levels[s] + cfg.acquire.step + 1)
                                       for p in draw_problems(s, d, n_per, cfg.seed, rnd, held[s].get(d, frozenset()))]
            samples = sample(backend, problems, rnd, cfg.seed, cfg.acquire.samples, cfg.acquire.temperature,
                             cfg.acquire.greedy_first, quiet)
            backend.close()
            run.commit(rnd, "acquire", {"acquired": len(samples), "problems": len(problems),
                                        "model_version": samples[0].model_version if samples else None,
                                        "seconds": round(time.time() - t0, 2)}, samples=samples)

        if not run.done(rnd, "refine"):
            t0 = time.time()
            samples = run.samples(rnd)
            ctx = FilterContext(cfg.acquire.samples, cfg.refine.vote_agreement, cfg.refine.min_agreement,
                                problems={sk: len({s.prompt for s in samples if s.skill == sk}) for sk in cfg.skills})
            counts = run_chain(cfg.refine.chain, samples, ctx)
            for pos, name in enumerate(cfg.refine.chain):  # precision of what survives each filter
                alive = [s for s in samples if len(s.verdicts) > pos and all(v.kept for v in s.verdicts[:pos + 1])]
                counts[name]["precision"] = label_precision(alive)
            kept = [s for s in samples if s.kept]
            run.commit(rnd, "refine", {"chain": cfg.refine.chain, "filters": counts, "kept": len(kept),
                                       "label_precision": label_precision(kept),
                                       "seconds": round(time.time() - t0, 2)}, samples=samples, verdicts=True)

        if not run.done(rnd, "update"):
            t0 = time.time()
            examples, n_new = mixture(cfg, run, rnd, state)
            out = run.staging(rnd, "update") / "model"
            if n_new == 0:
                info = {"skipped": "no samples kept", "model": state["model"], "adapter": state["adapter"]}
            else:
                info = train_round(cfg, run, rnd, state, examples, out, quiet)
            run.commit(rnd, "update", {**info, "examples": len(examples), "new_examples": n_new,
                                       "seconds": round(time.time() - t0, 2)})

        update = run.done(rnd, "update")
        candidate = {"model": update["model"], "adapter": update["adapter"]}
        new_levels = {s: max([levels[s]] + [smp.difficulty for smp in run.samples(rnd) if smp.kept and smp.skill == s])
                      for s in cfg.skills}
        if not run.done(rnd, "eval"):
            evaluate(cfg, run, rnd, new_levels, backend_for(cfg, run, candidate), quiet)

        if not run.done(rnd, "gate"):
            prev_dev = run.done(state["round"], "eval")["dev"]
            new_dev = run.done(rnd, "eval")["dev"]
            ok, reason = gate(_int_keys(prev_dev), _int_keys(new_dev), cfg.eval.threshold, cfg.gate.tolerance)
            if "skipped" in update:
                ok, reason = False, update["skipped"]
            info = ({**candidate, "levels": new_levels, "round": rnd} if ok else
                    {"model": state["model"], "adapter": state["adapter"], "levels": levels, "round": state["round"]})
            run.commit(rnd, "gate", {**info, "promoted": ok, "reason": reason, "seconds": 0.0})
        summary = write_summary(run, cfg)
        if not quiet:
            r = summary["rounds"][-1]
            precision = "n/a" if r["label_precision"] is None else f"{r['label_precision']:.3f}"
            tqdm.write(f"round {rnd}: {'promoted' if r['promoted'] else 'ROLLED BACK'}  frontier {r['frontier']}  "
                       f"kept {r['kept']}/{r['acquired']}  label precision {precision}  ({r['reason']})")
    return json.loads((run.root / "summary.json").read_text())


def train_round(cfg: Config, run: Run, rnd: int, state: dict, examples, out: Path, quiet: bool) -> dict:
    """The update stage's work: continue training the promoted model and save it to `out`.

    Returns the stage's manifest info; model paths in it are where `out` lands once committed.
    """
    final = str(run.stage_dir(rnd, "update").relative_to(run.root) / out.name)
    if cfg.model.backend == "fake":
        from evolvelm.backends import fake

        losses = fake.train(resolve(state["model"], run), examples, out)
        return {"model": final, "adapter": None, "loss_first": losses[0], "loss_last": losses[-1]}
    from evolvelm.update import sft

    u = cfg.update
    lora = u.method == "lora"
    model = sft.load_for_training(resolve(state["model"], run),
                                  resolve(state["adapter"], run) if state["adapter"] else None,
                                  u.method, u.lora_r, u.lora_alpha)
    base_dir = resolve(state["model"], run)
    losses = sft.train(model, sft.tokenizer(base_dir), examples, u.steps, u.batch_size, u.lr,
                       seed=cfg.seed * 1000 + rnd, warmup=u.warmup, desc=f"update round {rnd}", quiet=quiet)
    sft.save(model, base_dir, out, card={"round": rnd, "parent": state, "method": u.method,
                                         "examples": len(examples), "loss_first": losses[0], "loss_last": losses[-1]})
    return {"model": state["model"] if lora else final, "adapter": final if lora else None,
            "loss_first": round(losses[0], 5), "loss_last": round(sum(losses[-20:]) / len(losses[-20:]), 5)}


def _int_keys(acc: dict) -> dict[str, dict[int, float]]:
    """JSON turns difficulty keys into strings; turn them back."""
    return {s: {int(d): a for d, a in row.items()} for s, row in acc.items()}
