"""The served-weights check: a model served elsewhere (an OpenAI-compatible endpoint, vLLM) must
serve the weights a round trained, not an adapter cached under a reused name, a sync that silently
failed, or the initial weights of a restarted server.

After each adapter load the backend answers a few fixed probe prompts greedily, bypassing every
cache, and the log-probability of each first answer token is compared with the `hf` backend's on the
same base and adapter in this process (the weights the update stage wrote). The first token is read
from the same context on both sides, so the comparison holds even where a near-tie makes the rest of
two greedy answers part; a wrong adapter moves it far more than numerics do (bfloat16 on a GPU
against float32 here: a few hundredths).
"""
from __future__ import annotations

PROBES = ["Cabcde=", "Rhello=", "What is 12 + 30? Answer with just the number.", "Name a colour."]


class ServedWeightsError(RuntimeError):
    """What a backend serves is not the round's model; the stage stops before any answer is used."""


def check_served(answers: list, model_path: str, adapter: str | None, tolerance: float, **hf_options) -> float:
    """Raise ServedWeightsError unless `answers` (greedy generations of PROBES by the served model)
    start as the hf backend's do on `model_path` + `adapter`, within `tolerance` in log-probability.
    Returns the largest difference."""
    from evolvelm.backends.hf import HFBackend

    reference = HFBackend(model_path, adapter=adapter, **hf_options)
    want = reference.generate(PROBES, [0] * len(PROBES), 0.0, 1)
    reference.close()
    diffs = [abs(a.logprobs[0] - b.logprobs[0]) for a, b in zip(answers, want) if a.logprobs and b.logprobs]
    worst = max(diffs, default=float("inf"))
    if worst > tolerance:
        raise ServedWeightsError(
            f"the served model is not {'adapter ' + adapter if adapter else 'the base weights'} of {model_path}: "
            f"first-token log-probs of {len(PROBES)} probe prompts differ by up to {worst:.3f} from this process's "
            f"(model.served_tolerance {tolerance}; model.served_check false skips the check). Nothing of the "
            f"stage was used; fix the server, then continue with evolvelm resume")
    return worst
