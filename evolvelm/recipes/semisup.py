"""Learning from unlabeled data: a few labeled problems, a stream of unlabeled ones, and the model's own
written-out reasoning (a scratchpad) as the experience it learns from.

    evolvelm run lmsi          # or star, answer-only, rest-em, semievol, context-distill, pairs, memory;
                               # semisup.method=labeled: the baseline

The base model was trained on the labeled set alone (`labeled.jsonl` beside it, or `semisup.labeled_file`;
a model from elsewhere gets the zoo's labeled set of its skills, which it was not trained on).
Round 0 evaluates it. Every later round runs, in order:
    acquire  `acquire.problems` unlabeled problems per difficulty 1..eval.max_difficulty, none held out
             and none labeled; k answers each (scratchpad, then the answer). semievol: each problem
             after its `semisup.demos` nearest labeled examples, stored under the plain prompt with
             what the model saw as `context`. star: every problem none of whose answers is right gets
             one more, greedy, with the answer as a hint (rationalisation). With
             `semisup.temperatures` (and `thresholds`), B-STaR first chooses the temperature (and
             vote agreement) with the best balance score on a slice of the dev split
    refine   the filter chain: lmsi votes on the final answers (`vote`); star, rest-em and pairs keep
             what the checker accepts (`oracle`: they see answers, never rationales); rest-em caps the
             kept answers per problem (`cap`); semievol keeps consistent answers and confident
             inconsistent ones (`consistency`). Monitoring for every method, from the true answers the
             benchmark knows: pass@1, pass@k, distinct right rationales per problem (B-STaR's
             exploration), the diversity of the answers, the precision of what each filter keeps, of
             the whole scratchpads, and of the majority answer at each vote margin
    update   lmsi, star, semievol: continue from the last promoted model on the labeled set
             (`semisup.labeled_weight`), this round's labels (`update.new_weight` of the rest) and
             earlier promoted rounds' labels (whole scratchpads, or with `semisup.learn: answer`, as
             answer-only sets, the final answers alone; with `distill`, semievol's, as the next-token
             distributions of the model that answered, reading its demonstrations, learned by KL:
             `teach`; each round's as it learned them: `learned`);
             rest-em: from the base model, on the labeled set and this round's labels only;
             semievol: the labeled set also after its demonstrations, so the model keeps reading
             them; pairs: DPO on (right, wrong) answers of the same problem, the LoRA adapter
             continued, the reference the base with the adapter disabled; memory: no training, the
             round's kept answers join an in-context memory (`remember`): from then on every prompt
             is answered after its `semisup.demos` nearest memory examples (the labeled set and the
             kept answers); labeled: the labeled set alone (the baseline)
    eval     greedy accuracy of the final answer per difficulty on the fixed test and dev splits
    gate     promote, or keep the previous model, on the dev split (never the reported test split),
             pooled over difficulties: promote when the candidate's net gain in right dev answers
             reaches gate.z standard errors of the paired difference, less gate.tolerance x problems
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from evolvelm import controller, judges, sandbox
from evolvelm.acquire.sampling import CHUNK, derive_seed, sample
from evolvelm.backends.cluster import fan_out_checks
from evolvelm.backends.incontext import MEMORY
from evolvelm.config import Config, ConfigError
from evolvelm.evaluate.calibration import KINDS, calibration, confidences, recalibrated
from evolvelm.evaluate.suite import dev_right, frontier, held_out_prompts, paired_gate, rates, right_answers, splits
from evolvelm.models import ZOO, backend_for, base_state, prompt_format, resolve
from evolvelm.refine.filters import FilterContext, final, judged, majority, run_chain
from evolvelm.store.run import Run
from evolvelm.store.summary import write_summary
from evolvelm.tasks import get_task, hint_prompt
from evolvelm.tasks.labeled import demonstrations, read_labeled, write_labeled
from evolvelm.types import Example, Problem, Sample, State
from evolvelm.update.mixture import weighted
from evolvelm.update.rounds import train_round

TARGETS = "targets.safetensors"  # semisup.learn distill: the teacher's distributions, in the update's folder


def preflight(cfg: Config, run: Run) -> None:
    """Fail on a missing model or a missing or malformed labeled set before anything is created."""
    labeled_set(cfg, run)


def held(cfg: Config, run: Run) -> dict[str, dict[int, frozenset[str]]]:
    """Per skill and difficulty, the prompts of the fixed test and dev splits (none of them labeled)."""
    e, avoid = cfg.eval, labeled_prompts(cfg, run)
    return {s: held_out_prompts(get_task(s), e.max_difficulty, e.problems, e.dev_problems, e.seed, avoid) for s in cfg.skills}


def labeled_set(cfg: Config, run: Run) -> list[Problem]:
    """The few labeled problems of the run's skills: `semisup.labeled_file`, or the `labeled.jsonl`
    the base model was trained on. The held-out splits are drawn around them (`labeled_prompts`)."""
    from_data = [s for s in cfg.skills if get_task(s).fixed]  # skills from data: their labeled split
    out = [p for s in from_data for p in get_task(s).split("labeled")]
    if len(from_data) < len(cfg.skills):
        path = labeled_path(cfg, run)
        out += [p for p in read_labeled(path) if p.skill in cfg.skills and p.skill not in from_data]
    if not out:
        where = "their splits.labeled" if len(from_data) == len(cfg.skills) else labeled_path(cfg, run)
        raise ConfigError(f"{where}: no labeled problem of the skills {cfg.skills}")
    return out


def labeled_prompts(cfg: Config, run: Run) -> frozenset[str]:
    """The labeled prompts, which the test and dev splits skip: the base model was trained on them."""
    return frozenset(p.prompt for p in labeled_set(cfg, run))


def labeled_path(cfg: Config, run: Run) -> Path:
    """Where the labeled set is read from: `semisup.labeled_file`, else the `labeled.jsonl` beside the
    model, else (a model from elsewhere, such as SmolLM2) the zoo's labeled set of the run's skills."""
    if cfg.semisup.labeled_file:
        return Path(cfg.semisup.labeled_file)
    beside = Path(resolve(cfg.model.path, run)) / "labeled.jsonl"
    shipped = [p for p in sorted(ZOO.glob("*/labeled.jsonl")) if any(q.skill in cfg.skills for q in read_labeled(p))]
    return beside if beside.is_file() or not shipped else shipped[0]


def unlabeled(cfg: Config, rnd: int, exclude: dict, per: int = 0) -> list[Problem]:
    """This round's draw from the unlabeled pool, `per` (default acquire.problems) per skill and
    difficulty: none held out, none labeled."""
    return [p for s in cfg.skills for d in range(1, cfg.eval.max_difficulty + 1)
            for p in get_task(s).problems(d, per or cfg.acquire.problems, derive_seed(cfg.seed, rnd, "unlabeled", s, d),
                                          exclude=exclude[s][d])]


def curriculum(cfg: Config, run: Run, model, rnd: int, state: State, exclude: dict, quiet: bool) -> tuple[list[Problem], dict]:
    """The curriculum option: `acquire.curriculum_pool` times as many unlabeled problems as a round
    uses, each answered once greedily; per skill and difficulty, the `acquire.problems` whose predicted
    success lies in the band `acquire.curriculum`, then the nearest to it, in draw order among equals.
    The predicted success of an answer is its token confidence recalibrated on the model's own dev
    answers (`recalibrate`: a probability of being right, calibrated on problems it was checked on;
    an eval from before dev confidences were stored: the probability of the answer). Returns them
    and what the manifest records of the choice."""
    (lo, hi), n = cfg.acquire.curriculum, cfg.acquire.problems
    pool, conf = unlabeled(cfg, rnd, exclude, n * cfg.acquire.curriculum_pool), []
    for i in tqdm(range(0, len(pool), CHUNK), desc=f"curriculum round {rnd}", disable=quiet, leave=False):
        chunk = pool[i:i + CHUNK]
        gens = model.generate([p.prompt for p in chunk], [derive_seed(cfg.seed, rnd, "curriculum")] * len(chunk), 0.0,
                              max(get_task(p.skill).max_new_tokens(p.difficulty) for p in chunk))
        conf += [confidences(g.logprobs) for g in gens]
    seen = run.done(state.round, "eval")
    predicted = [c["sequence"] for c in conf]
    if seen.get("dev_confidence"):
        for skill in dict.fromkeys(p.skill for p in pool):
            idx = [i for i, p in enumerate(pool) if p.skill == skill]
            for i, x in zip(idx, recalibrate(seen, skill, [conf[i]["token"] for i in idx])):
                predicted[i] = x
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, p in enumerate(pool):
        groups[(p.skill, p.difficulty)].append(i)
    chosen = sorted(i for idx in groups.values() for i in sorted(idx, key=lambda i: max(lo - predicted[i], predicted[i] - hi, 0.0))[:n])
    mean = lambda idx: round(sum(predicted[i] for i in idx) / len(idx), 4) if idx else None
    return [pool[i] for i in chosen], {"band": [lo, hi], "candidates": len(pool), "chosen": len(chosen),
                                       "in_band": sum(lo <= predicted[i] <= hi for i in chosen),
                                       "predicted": mean(chosen), "predicted_candidates": mean(range(len(pool)))}


def rationalize(backend, samples: list[Sample], rnd: int, run_seed: int, quiet: bool) -> list[Sample]:
    """STaR's rationalisation: for every problem none of whose answers is right, one more greedy answer
    with the right answer given as a hint. Stored under the plain prompt (what the model should learn
    to answer unaided), with the hint prompt it saw as `context` and k past the first tries."""
    right = defaultdict(bool)
    for s, (ok, _) in zip(samples, judged(samples)):
        right[(s.skill, s.prompt)] |= ok
    first = {}
    for s in samples:
        if not right[(s.skill, s.prompt)]:
            first.setdefault((s.skill, s.prompt), s)
    failed, shift = list(first.values()), 1 + max((s.k for s in samples), default=0)
    out = []
    for i in tqdm(range(0, len(failed), CHUNK), desc=f"rationalise round {rnd}", disable=quiet, leave=False):
        chunk = failed[i:i + CHUNK]
        prompts = [(get_task(s.skill).hint or hint_prompt)(s.prompt, get_task(s.skill).answer_of(s.true_answer)) for s in chunk]
        seeds = [derive_seed(run_seed, rnd, s.prompt, "hint") for s in chunk]
        max_new = max(get_task(s.skill).max_new_tokens(s.difficulty) for s in chunk)
        for s, prompt, g in zip(chunk, prompts, backend.generate(prompts, seeds, 0.0, max_new)):
            out.append(replace(s, completion=g.text, model_version=backend.version, seed=g.seed, k=s.k + shift,
                               temperature=0.0, mean_logprob=sum(g.logprobs) / max(1, len(g.logprobs)),
                               context=prompt, rendered=g.rendered, verdicts=[], kept=True))
    return out


def balance(samples: list[Sample], right: list[bool], n_star: int) -> float:
    """B-STaR's balance score of one selection, averaged over problems: min(n'/n*, 1) (exploration)
    times n'/n (exploitation), where n' counts the distinct right answers kept for the problem and n the
    distinct answers kept; 0 when none is kept. Repeats count once, as in the authors' code, which
    scores the selection after deduplication."""
    kept: dict[tuple[str, str], dict[str, bool]] = defaultdict(dict)
    for s, ok in zip(samples, right):
        if s.kept:
            kept[(s.skill, s.prompt)][s.completion] = ok
    problems = {(s.skill, s.prompt) for s in samples}
    return sum(min(sum(g.values()) / n_star, 1.0) * sum(g.values()) / len(g) for g in kept.values()) / len(problems)


def choose(cfg: Config, run: Run, model, rnd: int, quiet: bool) -> dict:
    """B-STaR: the sampling temperature and vote agreement with the best balance score on a slice of
    the dev split (labeled, never trained on), each candidate scored on the same problems, on what the
    chain keeps."""
    e, s, avoid = cfg.eval, cfg.semisup, labeled_prompts(cfg, run)
    per = max(1, s.dev_slice // e.max_difficulty)
    dev = [p for sk in cfg.skills for d in range(1, e.max_difficulty + 1)
           for p in splits(get_task(sk), d, e.problems, e.dev_problems, e.seed, avoid)["dev"][:per]]
    scores = {}
    for t in s.temperatures or [cfg.acquire.temperature]:
        drawn = sample(model, dev, rnd, derive_seed(cfg.seed, "bstar"), cfg.acquire.samples, t, cfg.acquire.greedy_first, quiet)
        right = [ok for ok, _ in judged(drawn)]
        for a in s.thresholds or [cfg.refine.vote_agreement]:
            trial = copy.deepcopy(drawn)
            run_chain(cfg.refine.chain, trial, FilterContext(cfg.acquire.samples, a, max_per_problem=cfg.refine.max_per_problem,
                                                             nll_quantile=cfg.refine.nll_quantile))
            scores[(t, a)] = round(balance(trial, right, s.balance_n), 4)
    t, a = max(scores, key=lambda key: (scores[key], -abs(key[0] - cfg.acquire.temperature)))
    return {"temperature": t, "vote_agreement": a, "balance": {f"T={t} agreement={a}": v for (t, a), v in scores.items()}}


def acquire(cfg: Config, run: Run, rnd: int, state: State, exclude: dict, quiet: bool, decision: dict | None = None) -> None:
    """k answers per unlabeled problem (semievol: after its nearest labeled examples; star: and
    rationalisations), at the temperature B-STaR chose when `semisup.temperatures` is set; the
    controller's `decision`, if any, is stored with them."""
    t0, a, method = time.time(), cfg.acquire, cfg.semisup.method
    model = backend_for(cfg, run, state)
    chosen = choose(cfg, run, model, rnd, quiet) if cfg.semisup.temperatures or cfg.semisup.thresholds else {}
    problems, chosen_by = curriculum(cfg, run, model, rnd, state, exclude, quiet) if a.curriculum else (unlabeled(cfg, rnd, exclude), None)
    if method == "semievol":  # answered with demonstrations in context, stored under the plain prompt
        labeled = labeled_set(cfg, run)
        plain = {demonstrations(p.prompt, labeled, cfg.semisup.demos) + p.prompt: p.prompt for p in problems}
        problems = [replace(p, prompt=shown) for shown, p in zip(plain, problems)]
    temperature = chosen.pop("temperature", a.temperature)
    samples = sample(model, problems, rnd, cfg.seed, a.samples, temperature, a.greedy_first, quiet)
    if method == "semievol":
        samples = [replace(s, prompt=plain[s.prompt], context=s.prompt) for s in samples]
    hinted = rationalize(model, samples, rnd, cfg.seed, quiet) if method == "star" else []
    model.close()
    run.commit(rnd, "acquire", {"acquired": len(samples) + len(hinted), "rationalised": len(hinted),
                                "problems": len({(s.skill, s.prompt) for s in samples}), "temperature": temperature, **chosen,
                                "model_version": samples[0].model_version, "seconds": round(time.time() - t0, 2),
                                **({"controller": decision} if decision else {}), **({"curriculum": chosen_by} if chosen_by else {})},
               samples=samples + hinted)


def monitor(samples: list[Sample], right: list[bool], k: int) -> dict:
    """Exploration and exploitation of one round's first tries, against the true answers (benchmark only):
    pass@1, pass@k, distinct right rationales per problem, the share of distinct answers, and the
    precision of the majority answer at each vote margin (how many of the k samples gave it)."""
    groups: dict[tuple[str, str], list[tuple[Sample, bool]]] = defaultdict(list)
    for s, ok in zip(samples, right):
        if s.k < k:  # first tries, not star's rationalisations
            groups[(s.skill, s.prompt)].append((s, ok))
    margin: dict[int, list[bool]] = defaultdict(list)
    for group in groups.values():
        top, counts = majority([s for s, _ in group])
        margin[counts[top]].append(any(ok for s, ok in group if final(s) == top))
    n = sum(len(g) for g in groups.values())
    return {"pass@1": round(sum(ok for g in groups.values() for _, ok in g) / n, 4),
            f"pass@{k}": round(sum(any(ok for _, ok in g) for g in groups.values()) / len(groups), 4),
            "distinct_right": round(sum(len({s.completion for s, ok in g if ok}) for g in groups.values()) / len(groups), 4),
            "diversity": round(len({(s.prompt, s.completion) for g in groups.values() for s, _ in g}) / n, 4),
            "precision_by_margin": {m: {"problems": len(v), "precision": round(sum(v) / len(v), 4)}
                                    for m, v in sorted(margin.items())}}


def refine(cfg: Config, run: Run, rnd: int, state: State, quiet: bool) -> None:
    """The filter chain over the round's answers, with the precision of what each filter keeps. With the
    `judge` filter, the judge's audit first (self: the round's model audited now) and what it decided."""
    t0, samples = time.time(), run.samples(rnd)
    agreement = run.done(rnd, "acquire").get("vote_agreement", cfg.refine.vote_agreement)  # B-STaR's choice, if any
    judge, judging = (judges.for_round(cfg, run, state, quiet) if "judge" in cfg.refine.chain else (None, {}))
    ctx = FilterContext(cfg.acquire.samples, agreement, max_per_problem=cfg.refine.max_per_problem,
                        nll_quantile=cfg.refine.nll_quantile, judge=judge, judge_mode=cfg.judge.mode,
                        judge_threshold=cfg.judge.threshold, judge_note=judging.get("reason", ""),
                        keep_share=cfg.refine.keep_share, keep_as=cfg.refine.keep_as,
                        seed=derive_seed(cfg.seed, rnd, "refine"))
    counts = run_chain(cfg.refine.chain, samples, ctx)
    if judge is not None:
        judge.close()
    right = [ok for ok, _ in judged(samples)]
    valid = {sk: get_task(sk).rationale for sk in cfg.skills}  # the whole scratchpad right, not just the answer
    gold = [valid[s.skill](s.prompt, s.completion) if valid[s.skill] else None for s in samples]  # None: no scratchpad check
    for pos, name in enumerate(cfg.refine.chain):
        alive = [i for i, s in enumerate(samples) if all(v.kept for v in s.verdicts[:pos + 1])]
        counts[name]["precision"] = round(sum(right[i] for i in alive) / len(alive), 4) if alive else None
    kept = [i for i, s in enumerate(samples) if s.kept]
    checked = [gold[i] for i in kept if gold[i] is not None]
    run.commit(rnd, "refine", {
        "chain": cfg.refine.chain, "filters": counts, "kept": len(kept), "vote_agreement": agreement,
        "kept_rationalised": sum(1 for i in kept if samples[i].k >= cfg.acquire.samples),
        "label_precision": round(sum(right[i] for i in kept) / len(kept), 4) if kept else None,
        "rationale_precision": round(sum(checked) / len(checked), 4) if checked else None,
        "monitor": monitor(samples, right, cfg.acquire.samples), **({"judge": judging} if judging else {}),
        "seconds": round(time.time() - t0, 2)}, samples=samples, verdicts=True)


def training_mixture(cfg: Config, run: Run, rnd: int, targets: dict | None = None) -> tuple[list[Example], int]:
    """The update's weighted examples and how many of them are this round's labels (with `semisup.learn:
    distill`, this round's `targets` from `teach`)."""
    s, method, problems = cfg.semisup, cfg.semisup.method, labeled_set(cfg, run)
    labeled = [Example(p.prompt, p.answer) for p in problems]
    if method == "semievol" and s.demos:  # and after their demonstrations, so the model keeps reading them
        labeled += [Example(demonstrations(p.prompt, problems, s.demos) + p.prompt, p.answer) for p in problems]
    if method == "labeled":
        return labeled, 0
    new = learned(run, rnd, s.learn, targets)
    old = [] if method == "rest-em" else [x for r in run.promoted_rounds(rnd)
                                          for x in learned(run, r, run.done(r, "update").get("learn", "completion"))]
    rest = 1.0 - s.labeled_weight
    new_share = rest * cfg.update.new_weight if old else rest
    return weighted([(labeled, s.labeled_weight), (new, new_share), (old, rest - new_share)]), len(new)


def learned(run: Run, rnd: int, learn: str, targets: dict | None = None) -> list[Example]:
    """Round `rnd`'s kept answers as training examples, as that round learned them (`semisup.learn`):
    whole, the final answer alone (`Task.bare`; whole where the skill would not read it back), or whole
    with the teacher's distributions as soft targets (`targets`, else those its update stored: `teach`)."""
    kept = [x for x in run.samples(rnd) if x.kept]
    if learn == "distill" and kept:
        from evolvelm.update import distill

        targets = targets if targets is not None else distill.load_sparse(run.stage_dir(rnd, "update") / TARGETS)
        return [Example(x.prompt, x.completion, 1.0, targets[x.id]) for x in kept]
    if learn == "answer":
        return [Example(x.prompt, get_task(x.skill).bare(x.completion) or x.completion) for x in kept]
    return [Example(x.prompt, x.completion) for x in kept]


def teach(cfg: Config, run: Run, rnd: int, state: State, staging: Path) -> dict:
    """Context distillation's targets for the round's kept answers, keyed by sample id and saved under
    `staging`: the next-token distributions (the top `distill.TOP_K` per token) of the model that
    answered, reading what it answered after (`Sample.context`: semievol's demonstrations)."""
    from evolvelm.update import distill

    kept = [x for x in run.samples(rnd) if x.kept]
    if not kept:
        return {}
    teacher = backend_for(cfg, run, state)
    found = distill.distributions(teacher.model, teacher.format, [x.context for x in kept], [x.completion for x in kept],
                                  cfg.update.batch_size, distill.TOP_K)
    teacher.close()
    targets = {x.id: t for x, t in zip(kept, found)}
    distill.save_sparse(staging / TARGETS, targets)
    return targets


def preference_pairs(run: Run, rnd: int, per_problem: int) -> list[tuple[str, str, str]]:
    """(prompt, right answer, wrong answer) from the round's checked samples: per problem, up to
    `per_problem` pairs of distinct kept and dropped answers, in the order they were drawn."""
    right: dict[str, list[str]] = defaultdict(list)
    wrong: dict[str, list[str]] = defaultdict(list)
    for x in run.samples(rnd):
        group = right if x.kept else wrong
        if x.completion not in group[x.prompt]:
            group[x.prompt].append(x.completion)
    return [(p, c, r) for p in right for c, r in list(zip(right[p], wrong[p]))[:per_problem]]


def update_stage(cfg: Config, run: Run, rnd: int, state: State, quiet: bool) -> None:
    """Train: SFT on the mixture from the last promoted model, or from the base (rest-em); or DPO on
    right-vs-wrong pairs, continuing the adapter against the base with it disabled (pairs)."""
    t0 = time.time()
    if cfg.semisup.method == "memory":  # no training: the kept answers join the memory the model reads
        run.commit(rnd, "update", {**remember(cfg, run, rnd, state), "from": state.round, "seconds": round(time.time() - t0, 2)})
        return
    if cfg.semisup.method == "pairs":
        pairs = preference_pairs(run, rnd, cfg.semisup.pairs_per_problem)
        trained = train_pairs(cfg, run, rnd, state, pairs, quiet) if pairs else {
            "model": state.model, "adapter": state.adapter, "skipped": "no preference pairs"}
        run.commit(rnd, "update", {**trained, "pairs": len(pairs), "new_examples": len(pairs), "from": state.round,
                                   "seconds": round(time.time() - t0, 2)})
        return
    staging = run.staging(rnd, "update")
    targets = teach(cfg, run, rnd, state, staging) if cfg.semisup.learn == "distill" else None
    examples, n_new = training_mixture(cfg, run, rnd, targets)
    start = base_state(cfg) if cfg.semisup.method == "rest-em" else state
    trained = train_round(cfg, run, rnd, start.members[0], 0, examples, staging, quiet)
    if targets is not None:  # the answers the teacher read, for the controller's cost
        trained["distilled"] = len(targets)
    if cfg.semisup.learn == "answer":  # kept answers the skill would not read back alone were learned whole
        trained["learned_whole"] = sum(1 for x in run.samples(rnd) if x.kept and get_task(x.skill).bare(x.completion) is None)
    run.commit(rnd, "update", {**trained, "examples": len(examples), "new_examples": n_new, "from": start.round,
                               "learn": cfg.semisup.learn,
                               "labeled_only": n_new == 0 and cfg.semisup.method != "labeled",  # the round kept nothing
                               "seconds": round(time.time() - t0, 2)})


def remember(cfg: Config, run: Run, rnd: int, state: State) -> dict:
    """The memory after this round: the one the model read (at first, the labeled set) and the round's
    kept answers, one per problem, written as a labeled-set file that every later stage reads in
    context (`models.backend_for`). The weights stay as they are."""
    kept = {s.prompt: Problem(s.skill, s.difficulty, s.prompt, s.completion) for s in reversed(run.samples(rnd)) if s.kept}
    info = {"model": state.model, "adapter": state.adapter, "examples": 0, "new_examples": len(kept)}
    if not kept:
        return {**info, "skipped": "no samples kept"}
    before = read_labeled(Path(resolve(state.memory, run)) / MEMORY) if state.memory else labeled_set(cfg, run)
    memory = {p.prompt: p for p in before} | kept
    folder = run.staging(rnd, "update") / "memory"
    folder.mkdir()
    write_labeled(folder / MEMORY, list(memory.values()))
    return {**info, "memory": str(run.stage_dir(rnd, "update").relative_to(run.root) / "memory"), "memory_size": len(memory)}


def train_pairs(cfg: Config, run: Run, rnd: int, state: State, pairs: list, quiet: bool) -> dict:
    """DPO on `pairs`, continuing the promoted adapter (or a fresh one); saved under the stage's staging."""
    from evolvelm.update import dpo, parallel, sft

    u, seed = cfg.update, derive_seed(cfg.seed, rnd, "dpo")
    base_dir = resolve(state.model, run)
    model, losses = parallel.fit(dpo.train, sft.load_args(cfg, base_dir, resolve(state.adapter, run) if state.adapter else None,
                                                          "lora", seed),
                                 prompt_format(cfg, base_dir), pairs, u.steps, u.batch_size, u.lr, cfg.semisup.beta, seed,
                                 u.warmup, desc=f"dpo round {rnd}", quiet=quiet, rpo_alpha=cfg.semisup.rpo_alpha)
    sft.save(model, base_dir, run.staging(rnd, "update") / "model",
             card={"round": rnd, "method": "dpo", "parent": state.adapter, "pairs": len(pairs), "beta": cfg.semisup.beta,
                   "rpo_alpha": cfg.semisup.rpo_alpha,
                   "loss_first": losses[0], "loss_last": losses[-1]})
    return {"model": state.model, "adapter": str(run.stage_dir(rnd, "update").relative_to(run.root) / "model"),
            "loss_first": round(losses[0], 5), "loss_last": round(sum(losses[-20:]) / len(losses[-20:]), 5)}


def evaluate(cfg: Config, run: Run, rnd: int, state: State, quiet: bool) -> dict:
    """Greedy accuracy of the final answer on the test (reported) and dev (gate) splits; which dev
    problems it gets right goes in the manifest, for the gate's paired comparison."""
    t0, e, avoid = time.time(), cfg.eval, labeled_prompts(cfg, run)
    model = backend_for(cfg, run, state)
    ranges = {s: range(1, e.max_difficulty + 1) for s in cfg.skills}
    conf: dict = {"test": {}, "dev": {}}  # each answer's confidences
    finals: dict = {"test": {}, "dev": {}}  # a hash of each answer's final answer
    right = {split: right_answers(model, cfg.skills, ranges, split, e.problems, e.dev_problems, e.seed, quiet, avoid,
                                  conf[split], finals[split]) for split in ("test", "dev")}
    acc = {split: rates(r) for split, r in right.items()}
    rows = [(split, s, d, a, len(right[split][s][d]), model.version, get_task(s).version)
            for split in acc for s in cfg.skills for d, a in acc[split][s].items()]
    model.close()
    marks = lambda split: {s: {d: "".join("01"[x] for x in r) for d, r in by_d.items()} for s, by_d in right[split].items()}
    stored = lambda split: {s: {d: [[round(c[k], 4) for k in KINDS] for c in cs] for d, cs in by_d.items()}
                            for s, by_d in conf[split].items()}
    seen = {"dev_right": marks("dev"), "dev_confidence": stored("dev"), "dev_finals": finals["dev"]}
    for skill, by_d in conf["test"].items():  # the token confidence recalibrated on this model's dev answers
        mapped = iter(recalibrate(seen, skill, [c["token"] for d in sorted(by_d) for c in by_d[d]]))
        for d in sorted(by_d):
            by_d[d] = [{**c, "recalibrated": next(mapped)} for c in by_d[d]]
    start = run.done(started_from(run, rnd), "eval") if rnd else None
    info = {"frontier": {s: frontier(acc["test"][s], e.threshold) for s in cfg.skills}, "dev": acc["dev"], **seen,
            "self_estimate": estimate(seen, conf["test"]),
            "self_predicted": estimate(start, conf["test"]) if start and start.get("dev_confidence") else None,
            "self_delta": delta(start, conf["test"], finals["test"], last_update(run, rnd)) if start and start.get("test_finals") else None,
            "test_right": marks("test"), "test_finals": finals["test"], "test_confidence": stored("test"),
            "calibration": calibration(right["test"], conf["test"]), "model_version": rows[0][5],
            "seconds": round(time.time() - t0, 2), **sandbox.info(cfg.skills)}
    run.commit(rnd, "eval", info, evals=rows)
    return info


def estimate(seen: dict, test_conf: dict) -> dict:
    """A model's own estimate of its test accuracy, made without its test verdicts: per kind of
    confidence, its confidence in each greedy test answer (`test_conf`), recalibrated by the dev answers
    in `seen` (an eval manifest's `dev_confidence` against its `dev_right`, per skill), averaged per
    skill and pooled over every answer.

    Stored with every eval: `self_estimate`, recalibrated by the model's own dev answers (its estimate
    of itself, known once it is evaluated), and from round 1 `self_predicted`, recalibrated by the dev
    answers of the model the round started from (none of the candidate's own verdicts: its prediction
    of its accuracy after the update, scored by predict-the-update in evolvelm.store.summary)."""
    out = {}
    for kind in KINDS:
        per_skill, every = {}, []
        for skill, by_d in test_conf.items():
            predicted = recalibrate(seen, skill, [c[kind] for d in sorted(by_d) for c in by_d[d]], kind)
            per_skill[skill] = round(sum(predicted) / len(predicted), 4)
            every += predicted
        out[kind] = {"pooled": round(sum(every) / len(every), 4), **per_skill}
    return out


def delta(start: dict, test_conf: dict, finals: dict, last: tuple[dict, dict] | None = None) -> dict:
    """The updated model's prediction of its test accuracy from the answers its update changed, made
    without its test verdicts: a test answer whose final answer is the one the starting model gave
    keeps that model's verdict (`start`: its eval manifest, whose accuracy "no change" predicts); a
    changed one is wrong where the old one was right and the skill has one right answer
    (`Task.one_answer`); any other changed one counts the candidate's token confidence in it,
    recalibrated on the dev answers the last update changed (`last`: the eval manifests of its
    candidate and of the model it was trained from, `last_update`; where the skill has one right
    answer, those to problems that model had wrong), or, with no such answer, on all the starting
    model's dev answers (`recalibrate`). Per skill and pooled, with the share changed and how many
    changed dev answers the map was fitted on."""
    per_skill, every, changed, fitted = {}, [], 0, 0
    for skill, by_d in test_conf.items():
        order, task = sorted(by_d), get_task(skill)
        single = task.one_answer and not task.judge
        conf = [c["token"] for d in order for c in by_d[d]]
        seen = changed_dev(*last, skill, single) if last and all(e and e.get("dev_finals") for e in last) else ([], [])
        fitted += len(seen[0])
        mapped = iter(recalibrated(*seen, conf) if seen[0] else recalibrate(start, skill, conf))
        predicted = []
        for d in order:
            old, before = start["test_right"][skill][str(d)], start["test_finals"][skill][str(d)]
            for now, was, right, p in zip(finals[skill][d], before, old, mapped):
                changed += now != was
                predicted.append(float(right == "1") if now == was else 0.0 if single and right == "1" else p)
        per_skill[skill] = round(sum(predicted) / len(predicted), 4)
        every += predicted
    return {"pooled": round(sum(every) / len(every), 4), **per_skill, "changed": round(changed / len(every), 4),
            "fitted_on": fitted}


def started_from(run: Run, rnd: int) -> int:
    """The round whose model round `rnd` started from: the one kept by round rnd - 1's gate."""
    return State.read(run.done(rnd - 1, "gate")).round


def last_update(run: Run, rnd: int) -> tuple[dict, dict] | None:
    """The eval manifests of the last update before round `rnd`, kept by the gate or rolled back: round
    rnd - 1's candidate and the model that round started from (None in round 1: no update came before).
    Its dev verdicts were known before round `rnd` began."""
    if rnd < 2:
        return None
    return run.done(rnd - 1, "eval"), run.done(started_from(run, rnd - 1), "eval")


def changed_dev(start: dict, parent: dict, skill: str, single: bool) -> tuple[list[float], list[bool]]:
    """The token confidences and verdicts of the dev answers of `skill` that the update from `parent` to
    `start` (eval manifests) changed; with `single` (one right answer), only those to problems `parent`
    had wrong."""
    conf, right, i = [], [], KINDS.index("token")
    for d in sorted(start["dev_right"][skill], key=int):
        for c, r, now, was, old in zip(start["dev_confidence"][skill][d], start["dev_right"][skill][d], start["dev_finals"][skill][d],
                                       parent["dev_finals"][skill][d], parent["dev_right"][skill][d]):
            if now != was and not (single and old == "1"):
                conf.append(c[i])
                right.append(r == "1")
    return conf, right


def recalibrate(seen: dict, skill: str, conf: list[float], kind: str = "token") -> list[float]:
    """Confidences of one kind in answers of `skill`, each mapped to the accuracy of the dev answers of
    the same confidence in `seen` (an eval manifest's `dev_confidence` against its `dev_right`:
    evolvelm.evaluate.calibration.recalibrated)."""
    dev, marks, i = seen["dev_confidence"][skill], seen["dev_right"][skill], KINDS.index(kind)
    order = sorted(dev, key=int)
    return recalibrated([c[i] for d in order for c in dev[d]], [m == "1" for d in order for m in marks[d]], conf)


def same_start(cfg: Config, run: Run, rnd: int, state: State, exclude: dict, quiet: bool, decision: dict) -> dict:
    """A same-start probe (`controller.same_start`): round `rnd` of the arm that gained and of the probe,
    each in a fork of the run under RUN_DIR/trials/, both from the round's model; the one that gains
    more on dev becomes the round's own (its stages adopted, the decision with both measurements in
    its acquire manifest), the other stays under trials/ with its samples. Redone whole if the run
    stops before the adoption."""
    trials, forks = {}, {}
    for arm in (decision["versus"], decision["arm"]):
        rcfg, fork = controller.config_for(cfg, arm), run.fork(run.root / "trials" / f"{rnd:04d}-{arm}", rnd)
        if not quiet:
            tqdm.write(f"round {rnd}: {arm} from round {state.round}'s model (a same-start probe)")
        acquire(rcfg, fork, rnd, state, exclude, quiet, {**decision, "arm": arm})
        refine(rcfg, fork, rnd, state, quiet)
        update_stage(rcfg, fork, rnd, state, quiet)
        evaluate(rcfg, fork, rnd, state.after(fork.done(rnd, "update"), round=rnd), quiet)
        trials[arm], forks[arm] = controller.measured(cfg, fork, rnd, arm, state.round), fork
    final = controller.same_start(decision, trials, controller.played(cfg, run, rnd))
    kept = forks[final["arm"]]
    run.adopt(kept, rnd, ["acquire", "refine", "update", "eval"], {"acquire": {**kept.done(rnd, "acquire"), "controller": final}})
    shutil.rmtree(kept.root)
    return final


def run_recipe(cfg: Config, run: Run, quiet: bool = False) -> dict:
    """Run (or resume) every round in `run`; returns the summary."""
    sandbox.configure_from(cfg.sandbox)  # for skills whose checker runs the answers (`code`)
    fan_out_checks(cfg)
    exclude, labeled = held(cfg, run), labeled_set(cfg, run)
    for p in labeled:
        if p.difficulty in exclude[p.skill]:
            exclude[p.skill][p.difficulty] |= {p.prompt}
    if not run.done(0, "eval"):
        evaluate(cfg, run, 0, base_state(cfg), quiet)
    if not run.done(0, "gate"):  # the labeled set's provenance goes with the base model
        run.commit_gate(0, base_state(cfg), True, "base model",
                        labeled={"file": str(labeled_path(cfg, run)), "problems": len(labeled)})
    write_summary(run, cfg)

    for rnd in range(1, cfg.rounds + 1):
        state = State.read(run.done(rnd - 1, "gate"))
        rcfg, decision = cfg, None  # with controller.arms, this round's strategy (evolvelm.controller)
        if cfg.controller.arms:  # decided once: a resumed round reads the decision its acquisition stored
            acquired = run.done(rnd, "acquire")
            decision = acquired["controller"] if acquired else controller.choose(cfg, run, rnd)[1]
            if "versus" in decision and not acquired:
                decision = same_start(cfg, run, rnd, state, exclude, quiet, decision)
            elif "trials" in decision:  # the kept arm's fork, if the run stopped right after adopting it
                shutil.rmtree(run.root / "trials" / f"{rnd:04d}-{decision['arm']}", ignore_errors=True)
            rcfg = controller.config_for(cfg, decision["arm"])
        if not run.done(rnd, "acquire"):
            acquire(rcfg, run, rnd, state, exclude, quiet, decision)
        if not run.done(rnd, "refine"):
            refine(rcfg, run, rnd, state, quiet)
        if not run.done(rnd, "update"):
            update_stage(rcfg, run, rnd, state, quiet)
        update = run.done(rnd, "update")
        candidate = state.after(update, round=rnd)
        if not run.done(rnd, "eval"):
            evaluate(rcfg, run, rnd, candidate, quiet)
        if not run.done(rnd, "gate"):
            ok, reason = paired_gate(dev_right(run, state.round), dev_right(run, rnd), cfg.gate.z, cfg.gate.tolerance)
            run.commit_gate(rnd, candidate if ok else state, ok, reason)
        summary = write_summary(run, cfg)
        if not quiet:
            r = summary["rounds"][-1]
            tqdm.write(("" if decision is None else f"round {rnd} chose {decision['reason']}\n") +
                       f"round {rnd}: {'promoted' if r['promoted'] else 'ROLLED BACK'}  test accuracy "
                       f"{summary['semisup']['accuracy'][-1]}  kept {r['kept']}/{r['acquired']}  "
                       f"label precision {r['label_precision']}" + ("  (nothing kept: trained on the labeled set alone)"
                                                                    if r["labeled_only"] else ""))
    return json.loads((run.root / "summary.json").read_text())
