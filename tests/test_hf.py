"""Integration tests on the shipped tiny checkpoints (CPU, transformers + PEFT)."""
import math
import random

import pytest
import torch

from evolvelm import config
from evolvelm.backends.hf import HFBackend
from evolvelm.cli import main
from evolvelm.models import ZOO
from evolvelm.prompts import PromptFormat
from evolvelm.report.export import answerer
from evolvelm.recipes.ladder import run_recipe
from evolvelm.store.run import Run
from evolvelm.tasks import get_task
from evolvelm.types import Example
from evolvelm.update import sft
from test_models import lm_eval_generate

pytestmark = pytest.mark.integration
MODEL = str(ZOO / "copy-reverse")


@pytest.fixture(scope="module")
def backend():
    return HFBackend(MODEL, batch_size=8)


def test_shipped_model_loads_with_from_pretrained_and_is_nope():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(MODEL)
    tok = AutoTokenizer.from_pretrained(MODEL)
    assert model.config.model_type == "smollm3" and not any(model.config.no_rope_layers)
    assert tok.decode(tok("Cabc=", add_special_tokens=False).input_ids) == "Cabc="


def test_greedy_solves_the_training_range(backend):
    task = get_task("reverse")
    probs = task.problems(5, 16, seed=99)
    gens = backend.generate([p.prompt for p in probs], [0] * 16, 0.0, 7)
    assert sum(task.check(p, g.text) for p, g in zip(probs, gens)) >= 15


def test_sampling_depends_only_on_each_rows_seed(backend):
    prompts = [get_task("copy").problem(8, random.Random(i)).prompt for i in range(12)]
    seeds = list(range(100, 112))
    alone = [backend.generate([p], [s], 1.5, 10)[0].text for p, s in zip(prompts, seeds)]
    batched = [g.text for g in backend.generate(prompts, seeds, 1.5, 10)]
    assert alone == batched  # batch composition (and padding) does not change a seeded sample
    other = [g.text for g in backend.generate(prompts, [s + 1000 for s in seeds], 1.5, 10)]
    assert other != batched  # ...but the seed does


def test_generation_logprobs_match_teacher_forced_scores(backend):
    prompts = ["Cabcdefgh=", "Rxyz="]
    gens = backend.generate(prompts, [1, 2], 1.0, 12)
    scored = backend.logprobs(prompts, [g.text for g in gens])
    for g, s in zip(gens, scored):
        assert len(g.logprobs) == len(s)
        assert all(math.isclose(a, b, abs_tol=1e-3) for a, b in zip(g.logprobs, s))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_update_changes_parameters_and_the_loss_falls(method):
    model = sft.load_for_training(MODEL, None, method, lora_r=4, lora_alpha=8)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert (method == "lora") == bool(frozen)
    task = get_task("copy")
    examples = [Example(p.prompt, p.answer) for p in task.problems(9, 200, seed=5)]  # beyond its range
    losses = sft.train(model, PromptFormat.load(MODEL), examples, steps=40, batch_size=16, lr=3e-3, seed=0, warmup=5, quiet=True)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    assert changed
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_two_lora_rounds_on_the_shipped_model_then_export(tmp_path):
    cfg = config.load("copy-ladder", [
        "rounds=2", "skills=[reverse]", "update.method=lora", "update.steps=30", "update.original=200",
        "acquire.problems=40", "acquire.samples=3", "eval.max_difficulty=9", "eval.problems=20", "eval.dev_problems=10",
        "refine.min_agreement=0.0", "acquire.schedule=fixed", "acquire.step=1",
        "model.voters=[zoo:copy-reverse-seed1]"])
    run = Run.create(tmp_path / "run", cfg)
    summary = run_recipe(cfg, run, quiet=True)
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    assert summary["rounds"][0]["frontier"]["reverse"] >= 6
    assert all(r["acquired"] == 2 * 120 for r in summary["rounds"][1:])  # the model and its voter
    for member in ("model", "voter1"):
        adapter = run.root / "rounds" / "0001" / "update" / member
        assert (adapter / "adapter_config.json").is_file() and (adapter / "README.md").is_file()
    assert run.done(2, "gate")["voters"][0]["model"].endswith("copy-reverse-seed1")  # the voter's own base
    assert summary["rounds"][1]["model_version"] != summary["rounds"][0]["model_version"]
    # exported: adapter as is, or merged into a plain checkpoint that loads with from_pretrained
    assert main(["export", str(run.root), str(tmp_path / "merged"), "--merged"]) == 0
    merged = HFBackend(str(tmp_path / "merged"))
    assert merged.generate(["Rabc="], [0], 0.0, 5)[0].text == "cba"
    # ... and another tool reads both as `evolvelm generate` does: lm-eval-harness's `hf` model, its
    # defaults, on the merged directory and on the base with the exported adapter (peft=)
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    assert main(["export", str(run.root), str(tmp_path / "adapter")]) == 0
    prompts = ["Rabcdefg=", "Rqwertyuio=", "Rxyz=", "Rmnbvcxzlkj="]
    ours = [answer for _, answer, _ in answerer(run)(prompts, 14)]
    assert sum(a == p[1:-1][::-1] for a, p in zip(ours, prompts)) >= 2
    for lm in (HFLM(pretrained=str(tmp_path / "merged"), device="cpu", batch_size=4),
               HFLM(pretrained=str(ZOO / "copy-reverse"), peft=str(tmp_path / "adapter"), device="cpu", batch_size=4)):
        assert lm_eval_generate(lm, prompts, 14) == ours


def test_shipped_addition_model_solves_its_training_range():
    task = get_task("addition")
    probs = task.problems(3, 20, seed=11)
    gens = HFBackend(str(ZOO / "addition")).generate([p.prompt for p in probs], [0] * 20, 0.0, 10)
    assert sum(task.check(p, g.text) for p, g in zip(probs, gens)) >= 18


def test_the_addition_models_answers_to_equivalent_prompts_outvote_its_mistakes():
    """One digit past its range, the addition-ladder's model answers 60 sums asked 4 ways each: the
    labels all 4 answers agree on are right, more often than its answers to the prompts alone."""
    from evolvelm.acquire.sampling import sample
    from evolvelm.refine.filters import FilterContext, run_chain

    task = get_task("addition")
    probs = {p.prompt: p for p in task.problems(6, 60, seed=5)}
    samples = sample(HFBackend(str(ZOO / "addition-seed2")), list(probs.values()), 1, 0, 1, 1.0, True,
                     quiet=True, variants=3)
    run_chain(["vote"], samples, FilterContext(samples_per_problem=4, vote_agreement=1.0))
    right = [task.check(probs[s.prompt], s.completion) for s in samples]
    greedy = [ok for s, ok in zip(samples, right) if s.k == 0]
    kept = [ok for s, ok in zip(samples, right) if s.kept]
    assert len(samples) == 240 and len(kept) >= 40
    assert sum(kept) / len(kept) > sum(greedy) / len(greedy)
