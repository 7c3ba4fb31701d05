"""Shared fixtures: offline Hugging Face, a fake checkpoint, and a tiny fake-backend recipe."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# pytest-xdist workers share the cores: each gets its share of threads (the tiny models gain little
# from a second thread, and two workers at full threads slow each other several times over)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))
# converted GGUF models (SmolLM2) are cached here across test sessions, never in the user's cache
os.environ.setdefault("EVOLVELM_CACHE", os.path.join(tempfile.gettempdir(), "evolvelm-test-cache"))


@pytest.fixture(autouse=True)
def _sandbox(monkeypatch):
    """Skills that execute answers use bwrap; on a machine without it (never CI: .ci/run installs
    it) the expression checks, which only ever run digits and '+', fall back to the subprocess level,
    and where no cgroup can be made (not root, no controller) they run without the per-program totals,
    also when a recipe configures the sandbox from its config (test_sandbox skips its cgroup tests)."""
    from evolvelm import sandbox

    no_cgroups = os.geteuid() != 0 or sandbox.cgroup.available()[0] is None
    sandbox.configure(allow_unsafe=(not shutil.which("bwrap") and os.environ.get("CI") != "true") or no_cgroups)
    if no_cgroups:
        configure = sandbox.configure
        monkeypatch.setattr(sandbox, "configure", lambda level="auto", allow_unsafe=False, *a, **kw:
                            configure(level, True, *a, **kw))


@pytest.fixture
def fake_model(tmp_path) -> Path:
    from evolvelm.backends import fake

    return fake.write(tmp_path / "fake-model", {"copy": 4, "reverse": 4})


@pytest.fixture
def fake_recipe(tmp_path, fake_model) -> Path:
    """A 3-round ladder on the fake backend: runs in about a second."""
    cfg = {"rounds": 3, "skills": ["copy", "reverse"], "model": {"path": str(fake_model), "backend": "fake"},
           "acquire": {"problems": 60, "samples": 5}, "eval": {"max_difficulty": 9, "problems": 30, "dev_problems": 20}}
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


CHAT_TEMPLATE = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
                 "You are a tiny test model.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory) -> Path:
    """A tiny random-weight Llama with a real byte-level BPE tokenizer and a ChatML chat template, like
    SmolLM2's: no BOS added, no pad token, <|im_end|> ends a turn. Built in a second or two."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from evolvelm.tasks import ALPHABET, CHAIN_ALPHABET, facts

    out = tmp_path_factory.mktemp("chat-model")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [ALPHABET + CHAIN_ALPHABET + facts.CHARS + "ESQ", "You are a tiny test model. system user assistant"] * 50
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE)
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      eos_token_id=tok.eos_token_id, bos_token_id=None, pad_token_id=None, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture
def llmbar_dir(tmp_path) -> Path:
    """A tiny folder in LLMBar's layout: Natural and two Adversarial subsets, 2 pairs each, where the
    better output is the one that contains the instruction's word (label 1 then 2)."""
    import json

    for sub in ("Natural", "Adversarial/Neighbor", "Adversarial/GPTOut"):
        d = tmp_path / "llmbar" / sub
        d.mkdir(parents=True)
        rows = [{"input": f"Say {w}.", "output_1": good, "output_2": bad, "label": label}
                for w, good, bad, label in (("yes", "yes", "no", 1), ("blue", "red", "blue", 2))]
        (d / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "llmbar"
