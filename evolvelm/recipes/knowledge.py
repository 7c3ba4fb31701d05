"""Knowledge internalisation: new people are injected one batch per round, and the model must learn
their facts into its weights (SELF-PARAM's context distillation), measured for efficacy and retention.

    evolvelm run knowledge-distill

Round 0 evaluates the base model. Every later round injects `knowledge.people` new people, in order:
    acquire  their documents (`knowledge.documents` phrasings each, stored in the experience store),
             the questions the model asks itself about each document (the `facts.ASK` phrasings), and
             its own answers with the document in context (the teacher: the model as it was before
             this round, greedy); for `distill`, its next-token distributions at those answers too
    refine   `grounded`: an answer is kept only when it occurs, as whole words, in the document it was read from
             (unsupervised; its precision against the true answers is recorded)
    update   distill: KL from the teacher (document in context) to the model without the document;
             sft-qa: SFT on the kept question-answer pairs; sft-doc: SFT on the raw documents;
             icl, retrieval: no update. Every trained method mixes in earlier injections' experience
             (`update.new_weight` is the newest one's share; 1.0 = no replay) and `knowledge.anchors`
             unrelated inputs (the other skills, the pretraining population) whose outputs are held to
             what the base model gives (KL, share `knowledge.anchor_weight`)
    eval     accuracy on every injected batch so far, asked in the held-out phrasing (`facts.EVAL`),
             closed book (icl: with the document; retrieval: with the best BM25 match among all stored
             documents); the in-context upper bound for the newest batch (the base model with its
             document); the other skills (test and dev) and the population's facts
    gate     promote, or keep the previous model when dev accuracy on any other skill or on the
             population fell more than gate.tolerance below the base model's (not just the last
             round's: 20 small losses must not add up)
`evolvelm.store.summary` writes the efficacy/retention matrix to summary.json.

Your own documents: a skill from data with `document: FIELD` (rows of document, question, answer) is
injected instead of zoo:facts' people, `knowledge.people` documents per round in an order drawn by
the seed. The model asks itself every question of a document outside the skill's test split; the
questions in the test split are the held-out ones; the skill's checker scores them, and `grounded`
looks for what it extracts from an answer in the document. The other skills listed are what the gate
protects and the anchors hold in place (there is no pretraining population then).
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass

from safetensors.torch import load_file, save_file
from tqdm import tqdm

from evolvelm.acquire.sampling import derive_seed, draw_problems
from evolvelm.config import Config, ConfigError
from evolvelm.evaluate.suite import accuracy, frontier, gate, held_out_prompts, splits
from evolvelm.models import backend_for, base_state, prompt_format, resolve
from evolvelm.store.memory import Memory
from evolvelm.store.run import Run
from evolvelm.store.summary import write_summary
from evolvelm.tasks import facts, get_task
from evolvelm.tasks.checkers import CHECKERS
from evolvelm.tasks.data import DRAWN, corpus, documents
from evolvelm.types import Example, Problem, Sample, State, Verdict
from evolvelm.update import distill, parallel, sft
from evolvelm.update.mixture import weighted

TRAINED = ("distill", "sft-qa", "sft-doc")  # the methods that change parameters


def preflight(cfg: Config, run: Run) -> None:
    """Fail on a missing model, or a corpus with too few documents for the rounds, before anything is created."""
    resolve(cfg.model.path, run)
    name = corpus(cfg)
    if name and len(documents(name, cfg.seed)) < cfg.rounds * cfg.knowledge.people:
        raise ConfigError(f"skills[{name}]: {len(documents(name, cfg.seed))} distinct documents; {cfg.rounds} rounds of "
                          f"knowledge.people={cfg.knowledge.people} inject {cfg.rounds * cfg.knowledge.people}")


@dataclass(frozen=True)
class Subject:
    """What one injection teaches about one subject (a person of zoo:facts, or a document of a skill from
    data): its documents, the questions the model asks itself about them, and the held-out questions it
    is measured on (closed-book prompts with their reference answers)."""

    key: str
    documents: tuple[str, ...]
    ask: tuple[Problem, ...]
    held: tuple[Problem, ...]


def batch_skill(cfg: Config) -> str:
    """The skill name the injected questions are stored and evaluated under."""
    return corpus(cfg) or "facts"


def others(cfg: Config) -> list[str]:
    """The skills whose accuracy the injections must not hurt (every skill but the corpus)."""
    return [s for s in cfg.skills if s != corpus(cfg)]


def subjects(cfg: Config, rnd: int) -> list[Subject]:
    """Round `rnd`'s subjects: `knowledge.people` new people (zoo:facts: their documents in
    `knowledge.documents` phrasings; asked in the ASK phrasings, held out in EVAL), or the next
    `knowledge.people` documents of the corpus (asked: its questions outside the test split; held out:
    those in it)."""
    name, k = corpus(cfg), cfg.knowledge
    if name is None:
        ask = lambda p, phrasings: tuple(Problem("facts", rnd, q.prompt, q.answer) for q in facts.questions(p, phrasings))
        return [Subject(p.name, tuple(facts.document(p, (cfg.seed, rnd, j)) for j in range(k.documents)),
                        ask(p, facts.ASK), ask(p, facts.EVAL)) for p in batch(cfg, rnd)]
    test = {r.prompt for r in DRAWN[name]["test"]}
    problem = lambda r: Problem(name, rnd, r.prompt, r.answer)
    return [Subject(hashlib.sha256(doc.encode()).hexdigest()[:16], (doc,),
                    tuple(problem(r) for r in rows if r.prompt not in test), tuple(problem(r) for r in rows if r.prompt in test))
            for doc, rows in documents(name, cfg.seed)[(rnd - 1) * k.people:rnd * k.people]]


def in_context(cfg: Config, document: str, prompt: str) -> str:
    """The prompt with the document before it (the teacher's, and the upper bound's); the closed-book
    prompt is its suffix, which is what distillation needs."""
    return document + prompt if corpus(cfg) is None else f"{document}\n\n{prompt}"


def right(cfg: Config, problems: list[Problem], completions: list[str]) -> list[bool]:
    """The injected questions' checker: exact match (zoo:facts), or the corpus skill's own."""
    name = corpus(cfg)
    return get_task(name).check_many(problems, completions) if name else [c == p.answer for p, c in zip(problems, completions)]


def batch(cfg: Config, rnd: int) -> list[facts.Person]:
    """The people injected in round `rnd`: none of the pretraining population, none injected before."""
    seen = frozenset(p.name for p in facts.population())
    for r in range(1, rnd + 1):
        people = facts.people(cfg.knowledge.people, ("injection", cfg.seed, r), exclude=seen)
        seen |= {p.name for p in people}
    return people


def population_split(cfg: Config, split: str) -> list[facts.Question]:
    """The population's facts asked in the held-out phrasing (of its first `knowledge.population`
    people): even people for test, odd for dev."""
    people = facts.population()[:cfg.knowledge.population]
    return [q for i, p in enumerate(people) if i % 2 == (split == "dev") for q in facts.questions(p, facts.EVAL)]


def held_out(cfg: Config, j: int) -> tuple[list[Problem], list[str]]:
    """Batch j's held-out questions, and beside each its subject's first document."""
    pairs = [(q, s.documents[0]) for s in subjects(cfg, j) for q in s.held]
    return [q for q, _ in pairs], [d for _, d in pairs]


def answer_tokens(cfg: Config) -> int:
    """How long an answer to an injected question may be."""
    name = corpus(cfg)
    return get_task(name).max_new_tokens(1) if name else facts.max_answer_length() + 2


def answer(cfg: Config, model, prompts: list[str]):
    """Greedy answers to injected questions."""
    return model.generate(prompts, [0] * len(prompts), 0.0, answer_tokens(cfg))


def acquire(cfg: Config, run: Run, rnd: int, state: State) -> None:
    """Documents of the round's people, and the model's own answers to its questions about them."""
    t0, k, skill = time.time(), cfg.knowledge, batch_skill(cfg)
    docs = [(s, j, doc) for s in subjects(cfg, rnd) for j, doc in enumerate(s.documents)]
    samples = [Sample(rnd, "document", rnd, s.key, doc, "given", 0, j, 0.0, 0.0, doc) for s, j, doc in docs]
    asked = [(doc, j, q) for s, j, doc in docs for q in s.ask]
    teacher = backend_for(cfg, run, state)
    gens = answer(cfg, teacher, [in_context(cfg, doc, q.prompt) for doc, _, q in asked])
    qa = [Sample(rnd, skill, rnd, q.prompt, g.text, teacher.version, 0, j, 0.0,
                 sum(g.logprobs) / max(1, len(g.logprobs)), q.answer, context=doc, rendered=g.rendered) for (doc, j, q), g in zip(asked, gens)]
    staging = run.staging(rnd, "acquire")
    if k.method == "distill":  # the teacher's distributions, keyed by sample id, for the update
        targets = distill.distributions(teacher.model, teacher.format, [in_context(cfg, s.context, s.prompt) for s in qa],
                                        [s.completion for s in qa], cfg.model.batch_size)
        save_file({s.id: t.contiguous() for s, t in zip(qa, targets)}, staging / "targets.safetensors")
    teacher.close()
    ok = right(cfg, [Problem(skill, rnd, s.prompt, s.true_answer) for s in qa], [s.completion for s in qa])
    run.commit(rnd, "acquire", {"people": len({s.key for s, _, _ in docs}), "documents": len(docs), "questions": len(qa),
                                "teacher_accuracy": round(sum(ok) / len(qa), 4) if qa else None,
                                "seconds": round(time.time() - t0, 2)},
               samples=samples + qa)


def grounded(answer: str, document: str) -> bool:
    """The answer occurs in the document as whole words (a cut-off "dulm" of "dulmar" does not)."""
    return bool(answer.strip()) and re.search(rf"\b{re.escape(answer)}\b", document) is not None


def supported(cfg: Config, completion: str, document: str) -> bool:
    """The `grounded` filter: zoo:facts' answer as it is, or what the corpus checker extracts from a
    written-out answer (case, punctuation and spacing aside), occurs in the document as whole words."""
    name = corpus(cfg)
    if name is None:
        return grounded(completion, document)
    norm = CHECKERS["normalized"].extract
    return grounded(norm(get_task(name).answer_of(completion)), norm(document))


def refine(cfg: Config, run: Run, rnd: int) -> None:
    """Keep the teacher's answers that occur in the document they were read from."""
    t0, samples, skill = time.time(), run.samples(rnd), batch_skill(cfg)
    for s in samples:
        if s.skill == "document":
            s.verdicts = [Verdict("given", "1", True, "a document to learn")]
        else:
            ok = supported(cfg, s.completion, s.context)
            s.verdicts = [Verdict("grounded", "1", ok, "answer occurs in the document" if ok else "answer not in the document")]
    qa = [s for s in samples if s.skill == skill]
    kept = [s for s in qa if s.verdicts[0].kept]
    precision = round(sum(right(cfg, [Problem(skill, rnd, s.prompt, s.true_answer) for s in kept], [s.completion for s in kept]))
                      / len(kept), 4) if kept else None
    run.commit(rnd, "refine", {"chain": ["grounded"], "kept": len(kept), "label_precision": precision,
                               "filters": {"grounded": {"kept": len(kept), "dropped": len(qa) - len(kept),
                                                        "precision": precision}},
                               "seconds": round(time.time() - t0, 2)}, samples=samples, verdicts=True)


def experience(cfg: Config, run: Run, rnd: int) -> list[Example]:
    """What the method learns from one injection (round `rnd`), as read back from the store."""
    method, samples = cfg.knowledge.method, run.samples(rnd)
    if method == "sft-doc":
        return [Example("", s.completion) for s in samples if s.skill == "document"]
    kept = [s for s in samples if s.skill == batch_skill(cfg) and s.kept]
    if method == "sft-qa":
        return [Example(s.prompt, s.completion) for s in kept]
    targets = load_file(run.stage_dir(rnd, "acquire") / "targets.safetensors")
    return distill.soft_examples([s.prompt for s in kept], [s.completion for s in kept], [targets[s.id] for s in kept])


def anchors(cfg: Config, run: Run, rnd: int, held: dict) -> list[Example]:
    """Unrelated inputs with the base model's answers and distributions: the KL that holds them in
    place. Half are the other skills' problems, half the population's questions in the trained
    phrasings (all of them once `knowledge.anchors` / 2 covers them: with half, measured, the population
    lost about 5% per injection). The teacher is the base, not the model before the round: anchored to
    the last round, the population drifted about 0.5% per injection and rounds after the sixth were
    rolled back."""
    n, e, skills = cfg.knowledge.anchors, cfg.eval, others(cfg)
    per_skill = max(1, n // (2 * max(1, len(skills)) * e.max_difficulty))
    prompts = [p.prompt for s in skills for d in range(1, e.max_difficulty + 1)
               for p in draw_problems(s, d, per_skill, cfg.seed, rnd, held[s][d])]
    if corpus(cfg) is None:  # zoo:facts' pretraining population
        pop = [q.prompt for p in facts.population() for q in facts.questions(p, facts.ASK)]
        order = sorted(range(len(pop)), key=lambda i: derive_seed(cfg.seed, rnd, "anchor", i))
        prompts += [pop[i] for i in sorted(order[:n - len(prompts)])]
    if not prompts:
        return []
    tokens = max([answer_tokens(cfg)] + [get_task(s).max_new_tokens(d) for s in skills for d in range(1, e.max_difficulty + 1)])
    model = backend_for(cfg, run, base_state(cfg))
    answers = [g.text for g in model.generate(prompts, [0] * len(prompts), 0.0, tokens)]
    targets = distill.distributions(model.model, model.format, prompts, answers, cfg.model.batch_size)
    model.close()
    return distill.soft_examples(prompts, answers, targets)


def update_stage(cfg: Config, run: Run, rnd: int, state: State, held: dict, quiet: bool) -> None:
    """Train the method on this injection, earlier ones (replay) and the anchors; or nothing (icl, retrieval)."""
    t0, u, k = time.time(), cfg.update, cfg.knowledge
    info = {"model": state.model, "adapter": state.adapter}
    if k.method not in TRAINED:
        run.commit(rnd, "update", {**info, "examples": 0, "seconds": 0.0})
        return
    new, old = experience(cfg, run, rnd), [x for r in run.promoted_rounds(rnd) for x in experience(cfg, run, r)]
    share = 1.0 - k.anchor_weight
    new_share = share * (u.new_weight if old else 1.0)
    anchor = anchors(cfg, run, rnd, held) if k.anchors else []
    mixture = weighted([(new, new_share), (old, share - new_share), (anchor, k.anchor_weight)])
    if not mixture:  # every answer dropped, nothing learned before, no anchors: nothing to train on
        run.commit(rnd, "update", {**info, "examples": 0, "skipped": "no experience kept", "seconds": round(time.time() - t0, 2)})
        return
    base_dir, seed = resolve(state.model, run), derive_seed(cfg.seed, rnd, "train")
    model, losses = parallel.fit(sft.train, sft.load_args(cfg, base_dir, resolve(state.adapter, run) if state.adapter else None,
                                                          u.method, seed),
                                 prompt_format(cfg, base_dir), mixture, u.steps, u.batch_size, u.lr, seed=seed,
                                 warmup=u.warmup, desc=f"update round {rnd}", quiet=quiet)
    staging, final = run.staging(rnd, "update"), run.stage_dir(rnd, "update").relative_to(run.root)
    (staging / "model").mkdir(parents=True)
    sft.save(model, base_dir, staging / "model", card={"round": rnd, "method": k.method, "base": state.model,
                                                        "parent": state.adapter, "examples": len(mixture),
                                                        "loss_first": losses[0], "loss_last": losses[-1]})
    info["adapter" if u.method == "lora" else "model"] = str(final / "model")
    run.commit(rnd, "update", {**info, "examples": len(mixture), "new_examples": len(new), "replayed": len(old),
                               "anchors": len(anchor), "loss_first": round(losses[0], 5),
                               "loss_last": round(sum(losses[-20:]) / len(losses[-20:]), 5),
                               "seconds": round(time.time() - t0, 2)})


def facts_accuracy(cfg: Config, model, questions: list[Problem], contexts: list[str]) -> float:
    """Greedy accuracy on injected questions, each after its context ("" = closed book)."""
    gens = answer(cfg, model, [in_context(cfg, c, q.prompt) if c else q.prompt for q, c in zip(questions, contexts)])
    return sum(right(cfg, questions, [g.text for g in gens])) / len(questions)


def evaluate(cfg: Config, run: Run, rnd: int, state: State, quiet: bool) -> dict:
    """Every injected batch (held-out questions), the newest batch's in-context upper bound, the other
    skills and (zoo:facts) the population's facts; the evals table holds batch j as skill "facts" (or
    the corpus skill's name), difficulty j."""
    t0, e, method, skills, name = time.time(), cfg.eval, cfg.knowledge.method, others(cfg), batch_skill(cfg)
    version = get_task(name).version if corpus(cfg) else facts.VERSION
    model = backend_for(cfg, run, state)
    ranges = {s: range(1, e.max_difficulty + 1) for s in skills}
    cal: dict = {}
    acc = {split: accuracy(model, skills, ranges, split, e.problems, e.dev_problems, e.seed, quiet,
                           calibrated=cal if split == "test" else None) for split in ("test", "dev")}
    rows = [(split, s, d, a, len(splits(get_task(s), d, e.problems, e.dev_problems, e.seed)[split]), model.version,
             get_task(s).version) for split in acc for s in skills for d, a in acc[split][s].items()]
    for split in ("test", "dev") if corpus(cfg) is None else ():
        qs = population_split(cfg, split)
        acc[split]["population"] = {1: facts_accuracy(cfg, model, qs, [""] * len(qs))}
        rows.append((split, "population", 1, acc[split]["population"][1], len(qs), model.version, facts.VERSION))
    memory = Memory.from_run(run, rnd) if method == "retrieval" and rnd else None
    for j in range(1, rnd + 1):
        qs, docs = held_out(cfg, j)
        if not qs:  # a corpus batch whose documents have no question in the test split: nothing to measure
            continue
        if method == "icl":
            contexts = docs
        elif method == "retrieval":
            contexts = [memory.retrieve(q.prompt) for q in qs]
        else:
            contexts = [""] * len(qs)
        rows.append(("test", name, j, facts_accuracy(cfg, model, qs, contexts), len(qs), model.version, version))
    model_version = model.version
    model.close()
    qs, docs = held_out(cfg, rnd) if rnd else ([], [])
    if qs:  # the upper bound: the base model with the newest batch's (first) document in context
        model = backend_for(cfg, run, base_state(cfg))
        rows.append(("test", f"{name}-icl", rnd, facts_accuracy(cfg, model, qs, docs), len(qs), model.version, version))
        model.close()
    info = {"frontier": {s: frontier(acc["test"][s], e.threshold) for s in skills}, "dev": acc["dev"],
            "calibration": cal, "model_version": model_version, "seconds": round(time.time() - t0, 2)}
    run.commit(rnd, "eval", info, evals=rows)
    return info


def run_recipe(cfg: Config, run: Run, quiet: bool = False) -> dict:
    """Run (or resume) every injection in `run`; returns the summary."""
    held = {s: held_out_prompts(get_task(s), cfg.eval.max_difficulty, cfg.eval.problems, cfg.eval.dev_problems,
                                cfg.eval.seed) for s in others(cfg)}
    if not run.done(0, "eval"):
        evaluate(cfg, run, 0, base_state(cfg), quiet)
    if not run.done(0, "gate"):
        run.commit_gate(0, base_state(cfg), True, "base model")
    write_summary(run, cfg)

    for rnd in range(1, cfg.rounds + 1):
        state = State.read(run.done(rnd - 1, "gate"))
        if not run.done(rnd, "acquire"):
            acquire(cfg, run, rnd, state)
        if not run.done(rnd, "refine"):
            refine(cfg, run, rnd)
        if not run.done(rnd, "update"):
            update_stage(cfg, run, rnd, state, held, quiet)
        update = run.done(rnd, "update")
        candidate = state.after(update, round=rnd)
        if not run.done(rnd, "eval"):
            evaluate(cfg, run, rnd, candidate, quiet)
        if not run.done(rnd, "gate"):
            ok, reason = gate(run.done(0, "eval")["dev"], run.done(rnd, "eval")["dev"], 0.0, cfg.gate.tolerance)
            run.commit_gate(rnd, candidate if ok else state, ok, reason)
        summary = write_summary(run, cfg)
        if not quiet:
            kn = summary["knowledge"]
            tqdm.write(f"injection {rnd}: {'promoted' if summary['rounds'][-1]['promoted'] else 'ROLLED BACK'}  "
                       f"efficacy {kn['efficacy'][-1]} (upper bound {kn['upper'][-1]})  retention of batch 1 "
                       f"{kn['retention'][-1]}  other skills {kn['other'][-1]}")
    return json.loads((run.root / "summary.json").read_text())
