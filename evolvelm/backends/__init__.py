"""Generation backends behind one small protocol. Heavy modules are imported only when chosen."""
from __future__ import annotations

import importlib
from typing import Protocol

from evolvelm.types import Generation

# name -> "module:Class"; resolved lazily so `import evolvelm` never imports torch, vllm or ray.
BACKENDS = {
    "hf": "evolvelm.backends.hf:HFBackend",
    "openai": "evolvelm.backends.openai:OpenAIBackend",
    "vllm": "evolvelm.backends.vllm:VLLMBackend",
    "fake": "evolvelm.backends.fake:FakeBackend",
}
RAY = "evolvelm.backends.cluster:RayBackend"  # `cluster.address`: another backend on Ray workers


class Backend(Protocol):
    """What every stage needs from a model: batched generation and scoring, adapters, shutdown."""

    version: str  # content hash of the weights (base + adapter) currently loaded

    def generate(self, prompts: list[str], seeds: list[int], temperature: float,
                 max_new_tokens: int) -> list[Generation]:
        """One completion per prompt; temperature 0 is greedy. Same (prompt, seed) -> same text."""

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        """Per-token log-probabilities of each completion (plus end-of-sequence) given its prompt."""

    def load_adapter(self, path: str) -> None:
        """Apply the adapter saved at `path` on top of the base weights."""

    def unload_adapter(self) -> None:
        """Return to the base weights."""

    def close(self) -> None:
        """Free memory and worker processes."""


def make_backend(name: str, model_path: str, **kwargs) -> Backend:
    """Instantiate backend `name` on the checkpoint at `model_path`."""
    if name not in BACKENDS and name != "ray":
        raise KeyError(f"unknown backend {name!r}; valid backends: {sorted(BACKENDS)}")
    module, cls = (RAY if name == "ray" else BACKENDS[name]).split(":")
    return getattr(importlib.import_module(module), cls)(model_path, **kwargs)
