"""The easy-to-hard ladder (Lee, Cai et al. 2025): each round the model labels problems one step
beyond the difficulty it was trained through, keeps the labels its filters trust, trains on them
mixed with everything it learned before, and is kept only if it did not regress.

    evolvelm run copy-ladder

The model may come with voters (`model.voters`): independently seeded models that answer the same
problems, vote on the labels (`model_vote`), train on the same data and pass the same gate. Round 0
evaluates the base model (and voters). Every later round runs, in order:
    acquire  k answers per member per new problem at difficulty level+1 .. level+step (fixed or adaptive),
             and with `consolidate`, at the newest self-taught difficulties up to the level
    refine   the configured filter chain; every verdict is stored per sample
    update   every member continues training from its last promoted weights on the data mixture
    eval     greedy exact-match accuracy on the fixed held-out splits (test: reported, dev: gate)
    gate     promote, or keep the previous population; after a rollback, the retry policy picks a
             smaller step or stricter filters for the next round, and records why

The "level" of a skill is the highest difficulty the model has been trained on (the base model's
range, then every promoted round's labels). Steps are taken from the level, never from held-out
accuracy, so the reported test numbers play no part in any decision.
Each stage is skipped when the manifest says it was committed: that is all `resume` does.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from evolvelm import sandbox
from evolvelm.acquire.sampling import derive_seed, draw_problems, retry_with_feedback, sample
from evolvelm.backends.cluster import fan_out_checks
from evolvelm.config import Config, ConfigError
from evolvelm.evaluate.suite import accuracy, frontier, gate, held_out_prompts, splits
from evolvelm.models import backend_for, resolve
from evolvelm.refine.filters import FilterContext, judged, run_chain, unanimous_share
from evolvelm.store.run import Run
from evolvelm.store.summary import write_summary
from evolvelm.tasks import get_task
from evolvelm.types import Member, State
from evolvelm.update.mixture import mixture
from evolvelm.update.rounds import train_round


def start_levels(cfg: Config, run: Run) -> dict[str, int]:
    """Per skill, the highest difficulty the base model was trained on (and every voter must exist)."""
    for v in cfg.model.voters:
        resolve(v, run, "model.voters", convert=False)
    meta_path = Path(resolve(cfg.model.path, run, convert=False)) / "evolvelm.json"
    if cfg.acquire.start_level:
        return {s: cfg.acquire.start_level for s in cfg.skills}
    trained = json.loads(meta_path.read_text())["skills"] if meta_path.is_file() else {}
    trained.update({s: [0, 0] for s in cfg.skills if get_task(s).fixed and s not in trained})  # from data: never trained on
    missing = [s for s in cfg.skills if s not in trained]
    if missing:
        raise ConfigError(f"model.path: {cfg.model.path} carries no trained range for {missing} (no evolvelm.json "
                          f"beside it names them): set acquire.start_level to the difficulty to start above")
    return {s: trained[s][1] for s in cfg.skills}


preflight = start_levels  # what `evolvelm run/validate` checks before anything is created


def evaluate(cfg: Config, run: Run, rnd: int, state: State, quiet: bool) -> dict:
    """The eval stage: the model on the test split (1..max_difficulty) and every member of the
    population on the dev split (1..level+step), which is what the gate reads."""
    t0 = time.time()
    e = cfg.eval
    ranges = {"test": {s: range(1, e.max_difficulty + 1) for s in cfg.skills},
              "dev": {s: range(1, min(e.max_difficulty, state.levels[s] + cfg.acquire.step) + 1) for s in cfg.skills}}
    rows, acc, cal = [], {}, {}
    for i, member in enumerate(state.members):
        backend = backend_for(cfg, run, member)
        for split in (["test", "dev"] if i == 0 else ["dev"]):
            name = split if i == 0 else f"dev:voter{i}"  # voters' dev scores are stored beside the model's
            acc[name] = accuracy(backend, cfg.skills, ranges[split], split, e.problems, e.dev_problems, e.seed, quiet,
                                 calibrated=cal if name == "test" else None)
            rows += [(name, s, d, a, len(splits(get_task(s), d, e.problems, e.dev_problems, e.seed)[split]),
                      backend.version, get_task(s).version) for s in cfg.skills for d, a in acc[name][s].items()]
        if i == 0:
            version = backend.version
        backend.close()
    info = {"frontier": {s: frontier(acc["test"][s], e.threshold) for s in cfg.skills}, "dev": acc["dev"],
            "voters_dev": [acc[f"dev:voter{i}"] for i in range(1, len(state.members))], "calibration": cal,
            "model_version": version, "seconds": round(time.time() - t0, 2), **sandbox.info(cfg.skills)}
    run.commit(rnd, "eval", info, evals=rows)
    return info


def acquire(cfg: Config, run: Run, rnd: int, state: State, held: dict, quiet: bool) -> None:
    """The acquire stage: every member answers the same new problems, level+1 upwards.

    With `consolidate`, the newest self-taught difficulties (up to the level) are labelled again first.
    The fixed schedule labels `step` difficulties ahead. The adaptive one always labels level+1, and
    each further difficulty (up to `step` ahead) only while at least `adaptive_agreement` of its
    problems got one unanimous answer from every sample of every member: an unsupervised signal.
    The answers to a probed difficulty that misses the bar are not stored; its unanimity is.
    """
    t0 = time.time()
    a = cfg.acquire
    backends = [backend_for(cfg, run, m) for m in state.members]
    samples, unanimity, feedback, empty = [], {}, {}, {}
    base_levels = run.done(0, "gate")["levels"]
    for skill in cfg.skills:
        level = state.levels[skill]
        again = range(max(base_levels[skill], level - a.consolidate) + 1, level + 1)
        for d in [*again, *range(level + 1, level + step_of(cfg, state) + 1)]:
            problems = draw_problems(skill, d, a.problems, cfg.seed, rnd, held[skill].get(d, frozenset()))
            if not problems:  # a skill from data whose file has no (unlabeled) problem of this difficulty
                empty.setdefault(skill, []).append(d)
            got = [smp for i, b in enumerate(backends)
                   for smp in sample(b, problems, rnd, cfg.seed, a.samples, a.temperature, a.greedy_first, quiet,
                                     member=i, variants=a.variants)]
            unanimity.setdefault(skill, {})[d] = round(unanimous_share(got), 4)
            if a.feedback and get_task(skill).judge:
                retries = [r for i, b in enumerate(backends)
                           for r in retry_with_feedback(b, [s for s in got if s.member == i], rnd, cfg.seed, quiet)]
                feedback.setdefault(skill, {})[d] = {"first_tries": len(got), "retried": len(retries)}
                got += retries
            stop = d > level and a.schedule == "adaptive" and unanimity[skill][d] < a.adaptive_agreement
            if d <= level + 1 or not stop:
                samples += got
            if stop:
                break
    for b in backends:
        b.close()
    run.commit(rnd, "acquire", {"acquired": len(samples), "problems": len({(s.skill, s.prompt) for s in samples}),
                                "unanimity": unanimity, "feedback": feedback, "no_problems": empty, "model_version": samples[0].model_version if samples else None,
                                "seconds": round(time.time() - t0, 2)}, samples=samples)


def refine(cfg: Config, run: Run, rnd: int, state: State) -> None:
    """The refine stage: the filter chain (at the retry policy's strictness) over the round's samples."""
    t0 = time.time()
    samples = run.samples(rnd)
    strict = strictness(cfg, state.strict)
    ctx = FilterContext(cfg.acquire.samples + cfg.acquire.variants, strict.get("vote_agreement", cfg.refine.vote_agreement),
                        cfg.refine.min_agreement, members=len(state.members),
                        problems=Counter((sk, d) for sk, d, _ in {(s.skill, s.difficulty, s.prompt) for s in samples}),
                        model_vote_min=strict.get("model_vote_min", cfg.refine.model_vote_min),
                        min_diversity=cfg.refine.min_diversity, keep_share=cfg.refine.keep_share,
                        keep_as=cfg.refine.keep_as, seed=derive_seed(cfg.seed, rnd, "refine"))
    counts = run_chain(cfg.refine.chain, samples, ctx)
    right = [ok for ok, _ in judged(samples)]  # judged once: expr answers run in the sandbox

    def precision(alive: list[int]) -> float | None:
        return sum(right[i] for i in alive) / len(alive) if alive else None

    for pos, name in enumerate(cfg.refine.chain):  # precision of what survives each filter
        counts[name]["precision"] = precision([i for i, s in enumerate(samples) if len(s.verdicts) > pos
                                               and all(v.kept for v in s.verdicts[:pos + 1])])
    kept = [s for s in samples if s.kept]
    run.commit(rnd, "refine", {"chain": cfg.refine.chain, "filters": counts, "strictness": strict, "kept": len(kept),
                               "kept_retries": sum(1 for s in kept if s.k >= cfg.acquire.samples + cfg.acquire.variants),
                               "label_precision": precision([i for i, s in enumerate(samples) if s.kept]), "seconds": round(time.time() - t0, 2)},
               samples=samples, verdicts=True)


def update_stage(cfg: Config, run: Run, rnd: int, state: State, quiet: bool) -> None:
    """The update stage: every member continues training on the round's mixture (skipped without new labels)."""
    t0 = time.time()
    examples, n_new = mixture(cfg, run, rnd)
    if n_new == 0:
        kept, empty = state.info(), run.done(rnd, "acquire").get("no_problems")
        why = "no samples kept" + ("".join(f"; {s} has no unlabeled problem of difficulty {', '.join(map(str, ds))} in its data"
                                           for s, ds in sorted(empty.items())) if empty else "")
        info = {"skipped": why, **{k: kept[k] for k in ("model", "adapter", "voters")}}
    else:
        staging = run.staging(rnd, "update")
        trained = [train_round(cfg, run, rnd, m, i, examples, staging, quiet) for i, m in enumerate(state.members)]
        info = {**trained[0], "voters": [{"model": t["model"], "adapter": t["adapter"]} for t in trained[1:]]}
    run.commit(rnd, "update", {**info, "examples": len(examples), "new_examples": n_new,
                               "seconds": round(time.time() - t0, 2)})


def strictness(cfg: Config, strict: int) -> dict:
    """Settings of the chain's voting filters after `strict` retries: each retry asks 0.2 more of a
    model's samples, and one more model, to agree (up to all of them)."""
    n = 1 + len(cfg.model.voters)
    out = {"vote_agreement": round(min(1.0, cfg.refine.vote_agreement + 0.2 * strict), 4),
           "model_vote_min": min(n, (cfg.refine.model_vote_min or n) + strict)}
    return {k: v for k, v in out.items() if {"vote_agreement": "vote", "model_vote_min": "model_vote"}[k] in cfg.refine.chain}


def step_of(cfg: Config, state: State) -> int:
    """How many difficulties ahead the next round labels: the retry policy's, else the configured step."""
    return cfg.acquire.step if state.step is None else state.step


def next_attempt(cfg: Config, state: State, promoted: bool) -> tuple[int, int, str]:
    """The avalanche guard's retry policy: (step, strictness, decision) for the next round."""
    step, strict = step_of(cfg, state), state.strict
    if promoted:
        return cfg.acquire.step, 0, "go on"
    if not cfg.gate.retry:
        return step, strict, "retry unchanged (gate.retry is off)"
    if step > 1:
        return step // 2, strict, f"retry with a smaller step: {step // 2} (was {step})"
    if strictness(cfg, strict + 1) != strictness(cfg, strict):
        return step, strict + 1, f"retry with a stricter filter: {strictness(cfg, strict + 1)}"
    return step, strict, "retry on new problems (step and filters already at their strictest)"


def run_recipe(cfg: Config, run: Run, quiet: bool = False) -> dict:
    """Run (or resume) every round of the ladder in `run`; returns the summary."""
    sandbox.configure_from(cfg.sandbox)
    fan_out_checks(cfg)
    held = {s: held_out_prompts(get_task(s), cfg.eval.max_difficulty, cfg.eval.problems, cfg.eval.dev_problems,
                                cfg.eval.seed) for s in cfg.skills}

    # Round 0: the base model (and its voters), evaluated before any update.
    base = State(cfg.model.path, voters=tuple(Member(v) for v in cfg.model.voters), levels=start_levels(cfg, run),
                 step=cfg.acquire.step)
    if not run.done(0, "eval"):
        evaluate(cfg, run, 0, base, quiet)
    if not run.done(0, "gate"):
        run.commit_gate(0, base, True, "base model", "go on")
    summary = write_summary(run, cfg)

    for rnd in range(1, cfg.rounds + 1):
        if not run.done(rnd, "acquire") and cfg.budget_minutes and summary["wall_seconds"] >= 60 * cfg.budget_minutes:
            if not quiet:
                tqdm.write(f"time budget of {cfg.budget_minutes} min reached after round {rnd - 1}")
            break
        state = State.read(run.done(rnd - 1, "gate"))  # the population currently promoted, its levels and retry policy
        levels = state.levels

        if not run.done(rnd, "acquire"):
            acquire(cfg, run, rnd, state, held, quiet)

        if not run.done(rnd, "refine"):
            refine(cfg, run, rnd, state)
        if not run.done(rnd, "update"):
            update_stage(cfg, run, rnd, state, quiet)

        update = run.done(rnd, "update")
        new_levels = {s: max([levels[s]] + [smp.difficulty for smp in run.samples(rnd) if smp.kept and smp.skill == s])
                      for s in cfg.skills}
        candidate = state.after(update, levels=new_levels, round=rnd)
        if not run.done(rnd, "eval"):
            evaluate(cfg, run, rnd, candidate, quiet)

        if not run.done(rnd, "gate"):
            prev, new = run.done(state.round, "eval"), run.done(rnd, "eval")
            checks = [gate(p, n, cfg.eval.threshold, cfg.gate.tolerance)
                      for p, n in zip([prev["dev"]] + prev.get("voters_dev", []), [new["dev"]] + new.get("voters_dev", []))]
            ok = all(c[0] for c in checks)
            reason = "; ".join(f"voter {i}: {r}" if i else r for i, (good, r) in enumerate(checks) if not good or ok and i == 0)
            if "skipped" in update:
                ok, reason = False, update["skipped"]
            reason += _agreement_reasons(run, rnd)
            step, strict, decision = next_attempt(cfg, state, ok)
            kept = candidate if ok else state
            run.commit_gate(rnd, replace(kept, step=step, strict=strict), ok, reason, decision)
        summary = write_summary(run, cfg)
        if not quiet:
            r = summary["rounds"][-1]
            precision = "n/a" if r["label_precision"] is None else f"{r['label_precision']:.3f}"
            tqdm.write(f"round {rnd}: {'promoted' if r['promoted'] else 'ROLLED BACK'}  frontier {r['frontier']}  "
                       f"kept {r['kept']}/{r['acquired']}  label precision {precision}  ({r['reason']}; {r['decision']})")
    return json.loads((run.root / "summary.json").read_text())


def _agreement_reasons(run: Run, rnd: int) -> str:
    """Why the agreement guard dropped labels of a round, if it did (one reason per skill and difficulty)."""
    reasons = {r["reason"] for r in run.query("SELECT reason FROM verdicts WHERE round=? AND filter='agreement' "
                                               "AND kept=0", (rnd,))}
    return "".join(f"; avalanche guard: {r}" for r in sorted(reasons))
