"""The vllm backend on a GPU: the same greedy answers as hf, a recipe unchanged, the served-weights
check. Skipped (with the reason) where vLLM or a GPU is missing: always in CI."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm", reason="the vllm backend needs vllm (pip install 'evolvelm[vllm]', GPU machines)")
if not torch.cuda.is_available():
    pytest.skip("the vllm backend needs a GPU", allow_module_level=True)

from evolvelm import config  # noqa: E402
from evolvelm.backends.check import PROBES, ServedWeightsError, check_served  # noqa: E402
from evolvelm.backends.hf import HFBackend  # noqa: E402
from evolvelm.backends.vllm import VLLMBackend  # noqa: E402
from evolvelm.models import resolve  # noqa: E402
from evolvelm.store.run import Run  # noqa: E402
from test_models import LADDER  # noqa: E402
from test_serve import random_adapter  # noqa: E402

SMOL = "zoo:smollm2-135m-instruct"
QUESTIONS = [f"What is {a} + {b}? Answer with just the number." for a, b in [(2, 3), (17, 25), (120, 43), (9, 9)]]


def test_greedy_answers_and_scores_match_hf_and_adapters_are_checked(tmp_path):
    path = resolve(SMOL)
    hf, fast = HFBackend(path, device="cuda"), VLLMBackend(path)
    want, got = hf.generate(QUESTIONS, [0] * 4, 0.0, 16), fast.generate(QUESTIONS, [0] * 4, 0.0, 16)
    assert [g.text for g in got] == [g.text for g in want]
    ref, ours = hf.logprobs(QUESTIONS, ["5", "42"] * 2), fast.logprobs(QUESTIONS, ["5", "42"] * 2)
    assert all(abs(x - y) < 0.1 for r, o in zip(ref, ours) for x, y in zip(r, o))
    adapter = str(random_adapter(path, tmp_path / "adapter"))
    fast.load_adapter(adapter)  # checked against hf on the same adapter
    assert fast.version.endswith(HFBackend(path, adapter=adapter, device="cuda").version.split("+")[1])
    other = str(random_adapter(path, tmp_path / "other", seed=7))
    with pytest.raises(ServedWeightsError):  # what vLLM serves is told apart from another adapter
        check_served(fast.generate(PROBES, [0] * len(PROBES), 0.0, 1), path, other, 0.05)


def test_a_recipe_runs_unchanged_on_vllm(tmp_path):
    from evolvelm.recipes.ladder import run_recipe

    cfg = config.load("copy-ladder", [*LADDER, f"model.path={SMOL}", "model.backend=vllm", "skills=[copy]"])
    summary = run_recipe(cfg, Run.create(tmp_path / "run", cfg), quiet=True)
    assert len(summary["rounds"]) == 3
