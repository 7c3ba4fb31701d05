"""Skills learned in sequence, one LoRA module per skill behind a router, with the forgetting matrix.

    evolvelm run modular-skills

`skills` is the sequence: round r receives `modules.examples` labelled problems of skills[r-1]
(the experience that arrives; drawn away from every held-out split). With `modules.order:
controller`, `skills` is a set and `rounds` any number: each round the controller chooses the skill
whose experience arrives, and so the module that trains (evolvelm.controller.choose_module). Round 0
evaluates the base model. Every later round runs, in order:
    acquire  the round's experience, stored as samples with its provenance ("labelled" data), and the
             controller's decision with its reason
    refine   the router decides where it belongs: the module most of its inputs route to, or, when
             most inputs fit no module, a new module named after the skill; one verdict per sample
    update   modular: train only that module (continued, or fresh from the frozen base), then refit
             the router on every promoted round's inputs. Baselines on the same sequence:
             shared (one adapter trained on each round in turn), replay (shared, with earlier rounds'
             data mixed in), full (full fine-tuning in turn)
    eval     greedy accuracy on every skill of the sequence (test: reported, dev: gate), answered
             through the router; router accuracy on the held-out test prompts
    gate     promote, or keep the previous model when dev accuracy on something solved dropped by
             more than gate.tolerance
The forgetting matrix (accuracy on every skill after every round) and GEM's ACC, BWT and FWT are
written to summary.json by `evolvelm.store.summary`. Each stage is skipped when the manifest says
it was committed: that is all `resume` does.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from evolvelm import controller, sandbox
from evolvelm.acquire.sampling import derive_seed, draw_problems
from evolvelm.backends.hf import HFBackend
from evolvelm.config import Config
from evolvelm.evaluate.suite import accuracy, frontier, gate, held_out_prompts, splits
from evolvelm.models import backend_for, backend_options, base_state, prompt_format, resolve
from evolvelm.store.run import Run
from evolvelm.store.summary import write_summary
from evolvelm.tasks import get_task
from evolvelm.types import Example, Sample, State, Verdict
from evolvelm.update import parallel, sft
from evolvelm.update.modules import ModularModel, Routed, Router, char_features, hidden_features

ROUTER_INPUTS = 400  # prompts per round that the router is fitted on


def preflight(cfg: Config, run: Run) -> None:
    """Fail on a missing model before anything is created."""
    resolve(cfg.model.path, run)


def sequence(cfg: Config) -> list[str]:
    """The distinct skills of the sequence, in the order they first arrive."""
    return list(dict.fromkeys(cfg.skills))


def model_for(cfg: Config, run: Run, state: State):
    """What answers for a gate state: the base with its modules behind the router, or one model
    (the baselines, and the gate states of other recipes)."""
    if cfg.recipe == "modular" and cfg.modules.method == "modular":
        router = Router.load(Path(resolve(state.router, run)) / "router.json") if state.router else None
        return ModularModel(resolve(state.model, run), {n: str(resolve(p, run)) for n, p in state.modules.items()},
                            router, **backend_options(cfg))
    return backend_for(cfg, run, state)


def acquire(cfg: Config, run: Run, rnd: int, held: dict) -> None:
    """The round's experience: labelled problems of its skill (skills[rnd-1], or the controller's choice
    with its decision), spread over the difficulties it has (a skill from data may have fewer than
    eval.max_difficulty, or none: all at difficulty 1)."""
    t0 = time.time()
    decision = controller.choose_module(cfg, run, rnd) if cfg.modules.order == "controller" else None
    skill = decision["arm"] if decision else cfg.skills[rnd - 1]
    fmt = prompt_format(cfg, resolve(cfg.model.path, run))  # stored: how training will render each prompt
    levels = [d for d in range(1, cfg.eval.max_difficulty + 1) if get_task(skill).space(d)]
    samples = [Sample(rnd, skill, p.difficulty, p.prompt, p.answer, "labelled", 0, 0, 0.0, 0.0, p.answer,
                      rendered=fmt.render(p.prompt))
               for d in levels
               for p in draw_problems(skill, d, max(1, cfg.modules.examples // len(levels)), cfg.seed, rnd, held[skill][d])]
    run.commit(rnd, "acquire", {"skill": skill, "acquired": len(samples), "seconds": round(time.time() - t0, 2),
                                **({"controller": decision} if decision else {})}, samples=samples)


def skill_of(run: Run, rnd: int) -> str:
    """The skill round `rnd` learned (as its acquisition stored it)."""
    return run.done(rnd, "acquire")["skill"]


def refine(cfg: Config, run: Run, rnd: int, state: State) -> None:
    """Route the round's experience: the module it updates, or a new one when it fits none."""
    t0, skill = time.time(), skill_of(run, rnd)
    samples = run.samples(rnd)
    routes = [None] * len(samples)
    if cfg.modules.method == "modular" and state.router:
        model = model_for(cfg, run, replace(state, modules={}))  # routing needs the base and the router only
        routes = model.route([s.prompt for s in samples])
        model.close()
    counts = Counter(routes)
    target, _ = counts.most_common(1)[0]
    opened = target is None and cfg.modules.method == "modular"  # the baselines have no modules
    if opened:
        target = skill if skill not in state.modules else f"{skill}-{rnd}"
    for s, r in zip(samples, routes):
        s.verdicts = [Verdict("router", cfg.modules.router, True, f"routes to {r}" if r else "fits no module")]
    run.commit(rnd, "refine", {"chain": ["router"], "kept": len(samples), "module": target, "opened": opened,
                               "routes": {str(k): v for k, v in counts.items()}, "seconds": round(time.time() - t0, 2)},
               samples=samples, verdicts=True)


def update_stage(cfg: Config, run: Run, rnd: int, state: State, quiet: bool) -> None:
    """Train what the method trains on the round's experience, and refit the router (modular)."""
    t0, method, u = time.time(), cfg.modules.method, cfg.update
    new = [Example(s.prompt, s.completion) for s in run.samples(rnd) if s.kept]
    examples = new
    if method == "replay" and run.promoted_rounds(rnd):
        old = [Example(s.prompt, s.completion) for r in run.promoted_rounds(rnd) for s in run.samples(r) if s.kept]
        examples = ([Example(e.prompt, e.answer, u.new_weight / len(new)) for e in new] +
                    [Example(e.prompt, e.answer, (1 - u.new_weight) / len(old)) for e in old])
    staging, final = run.staging(rnd, "update"), run.stage_dir(rnd, "update").relative_to(run.root)
    info = {"model": state.model, "adapter": state.adapter, "modules": state.modules, "router": state.router}
    if method == "modular":
        module = run.done(rnd, "refine")["module"]
        parent = state.modules.get(module)
        losses = _train(cfg, run, state.model, parent, "lora", examples, staging / "modules" / module, rnd, quiet)
        info["modules"] = {**state.modules, module: str(final / "modules" / module)}
        fit_router(cfg, run, rnd, resolve(state.model, run), staging / "router")
        info["router"] = str(final / "router")
    else:
        lora = method != "full"
        losses = _train(cfg, run, state.model, state.adapter, "lora" if lora else "full", examples,
                        staging / "model", rnd, quiet)
        info["adapter" if lora else "model"] = str(final / "model")
    run.commit(rnd, "update", {**info, "examples": len(examples), "new_examples": len(new),
                               "loss_first": round(losses[0], 5), "loss_last": round(sum(losses[-20:]) / len(losses[-20:]), 5),
                               "seconds": round(time.time() - t0, 2)})


def _train(cfg: Config, run: Run, model_ref: str, adapter_ref: str | None, method: str, examples: list[Example],
           out: Path, rnd: int, quiet: bool) -> list[float]:
    """Continue training (full weights, or a LoRA adapter: `adapter_ref`, or fresh) and save to `out`."""
    u, base_dir, seed = cfg.update, resolve(model_ref, run), derive_seed(cfg.seed, rnd, "train")
    model, losses = parallel.fit(sft.train, sft.load_args(cfg, base_dir, resolve(adapter_ref, run) if adapter_ref else None,
                                                          method, seed),
                                 prompt_format(cfg, base_dir), examples, u.steps, u.batch_size, u.lr,
                                 seed=seed, warmup=u.warmup, desc=f"update round {rnd}", quiet=quiet)
    out.mkdir(parents=True)
    sft.save(model, base_dir, out, card={"round": rnd, "method": method, "base": model_ref, "parent": adapter_ref,
                                         "skill": skill_of(run, rnd), "examples": len(examples),
                                         "loss_first": losses[0], "loss_last": losses[-1]})
    return losses


def fit_router(cfg: Config, run: Run, rnd: int, base_dir: str, out: Path) -> None:
    """Fit the router on up to ROUTER_INPUTS inputs of every promoted round and this one, each labelled
    with the module its round updated (read back from the experience store)."""
    prompts, labels = [], []
    for r in run.promoted_rounds(rnd) + [rnd]:
        module = run.done(r, "refine")["module"]
        rows = run.query("SELECT prompt FROM samples WHERE round=? ORDER BY id LIMIT ?", (r, ROUTER_INPUTS))
        prompts += [row["prompt"] for row in rows]
        labels += [module] * len(rows)
    if cfg.modules.router == "chars":
        feats = char_features(prompts)
    else:
        backend = HFBackend(base_dir, **backend_options(cfg))
        feats = hidden_features(backend.model, backend.format, prompts, cfg.model.batch_size)
        backend.close()
    out.mkdir(parents=True)
    Router.fit(cfg.modules.router, feats, labels, cfg.modules.novelty).save(out / "router.json")


def evaluate(cfg: Config, run: Run, rnd: int, state: State, quiet: bool) -> dict:
    """Test and dev accuracy on every skill of the sequence, and the router's accuracy on the test prompts."""
    t0, e, skills = time.time(), cfg.eval, sequence(cfg)
    model = model_for(cfg, run, state)
    answerer = Routed(model) if isinstance(model, ModularModel) else model
    rng = {s: range(1, e.max_difficulty + 1) for s in skills}
    cal: dict = {}
    acc = {split: accuracy(answerer, skills, rng, split, e.problems, e.dev_problems, e.seed, quiet,
                           calibrated=cal if split == "test" else None) for split in ("test", "dev")}
    rows = [(split, s, d, a, len(splits(get_task(s), d, e.problems, e.dev_problems, e.seed)[split]),
             answerer.version, get_task(s).version) for split in acc for s in skills for d, a in acc[split][s].items()]
    info = {"frontier": {s: frontier(acc["test"][s], e.threshold) for s in skills}, "dev": acc["dev"],
            "calibration": cal, "model_version": answerer.version, **sandbox.info(skills)}
    if isinstance(model, ModularModel):
        learned = run.promoted_rounds(rnd) + ([rnd] if rnd else [])  # the rounds this state was trained on
        owner = {skill_of(run, r): run.done(r, "refine")["module"] for r in learned}
        info["router"] = router_accuracy(model, skills, owner, e)
    answerer.close()
    run.commit(rnd, "eval", {**info, "seconds": round(time.time() - t0, 2)}, evals=rows)
    return info


def router_accuracy(model: ModularModel, skills: list[str], owner: dict[str, str], e) -> dict:
    """Share of held-out test prompts routed to their skill's module (skills not learned yet: to no module)."""
    out = {}
    for s in skills:
        prompts = [p.prompt for d in range(1, e.max_difficulty + 1)
                   for p in splits(get_task(s), d, e.problems, e.dev_problems, e.seed)["test"]]
        routes = model.route(prompts)
        out[s] = round(sum(r == owner.get(s) for r in routes) / len(prompts), 4)
    return out


def run_recipe(cfg: Config, run: Run, quiet: bool = False) -> dict:
    """Run (or resume) every round of the sequence in `run`; returns the summary."""
    sandbox.configure_from(cfg.sandbox)
    held = {s: held_out_prompts(get_task(s), cfg.eval.max_difficulty, cfg.eval.problems, cfg.eval.dev_problems,
                                cfg.eval.seed) for s in sequence(cfg)}
    base = base_state(cfg)
    if not run.done(0, "eval"):
        evaluate(cfg, run, 0, base, quiet)
    if not run.done(0, "gate"):
        run.commit_gate(0, base, True, "base model")
    write_summary(run, cfg)

    for rnd in range(1, cfg.rounds + 1):
        state = State.read(run.done(rnd - 1, "gate"))
        if not run.done(rnd, "acquire"):
            acquire(cfg, run, rnd, held)
        if not run.done(rnd, "refine"):
            refine(cfg, run, rnd, state)
        if not run.done(rnd, "update"):
            update_stage(cfg, run, rnd, state, quiet)
        update = run.done(rnd, "update")
        candidate = state.after(update, round=rnd)
        if not run.done(rnd, "eval"):
            evaluate(cfg, run, rnd, candidate, quiet)
        if not run.done(rnd, "gate"):
            prev, new = run.done(state.round, "eval"), run.done(rnd, "eval")
            ok, reason = gate(prev["dev"], new["dev"], cfg.eval.threshold, cfg.gate.tolerance)
            run.commit_gate(rnd, candidate if ok else state, ok, reason)
        summary = write_summary(run, cfg)
        if not quiet:
            r, refined = summary["rounds"][-1], run.done(rnd, "refine")
            decision = run.done(rnd, "acquire").get("controller")
            if decision:
                tqdm.write(f"round {rnd} chose {decision['reason']}")
            where = f"{'opened' if refined['opened'] else 'updated'} module {refined['module']}" \
                if cfg.modules.method == "modular" else cfg.modules.method
            mean = {s: round(a, 3) for s, a in controller.skill_accuracy(r["accuracy"]).items()}
            tqdm.write(f"round {rnd} ({skill_of(run, rnd)}, {where}): {'promoted' if r['promoted'] else 'ROLLED BACK'}  "
                       f"accuracy {mean}  ({r['reason']})")
    return json.loads((run.root / "summary.json").read_text())
