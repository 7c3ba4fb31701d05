"""vllm backend: generation and scoring by vLLM's offline engine on a GPU (`pip install 'evolvelm[vllm]'`).

    model: {backend: vllm, path: zoo:smollm2-135m-instruct, vllm_memory: 0.4}

The same protocol as `hf`: prompts become tokens through the model's `PromptFormat` (so the stored
`rendered` prompt and the answer's end are the same), per-request seeds, per-token log-probs of
what is generated and of given completions (`prompt_logprobs`). vLLM's sampler is not the `hf`
backend's: greedy answers agree (up to near-ties in bfloat16), seeded samples do not.

Adapters are `LoRARequest`s whose name and id are made from the adapter's content hash, so a name is
never reused for other weights (vLLM would serve the old ones from its cache). After every load the
served-weights check (evolvelm.backends.check) compares probe answers with the hf backend on the
same adapter before any sample is drawn. One engine per checkpoint is kept for the process and
reused by later stages (a vLLM engine takes seconds to start); a full-model round's new weights
start a new one. `vllm_memory` is the share of GPU memory the engine takes; the update stage
trains on what is left.

`import evolvelm` never imports vllm; this module does when the backend is built.
"""
from __future__ import annotations

import time

from evolvelm.backends.check import PROBES, check_served
from evolvelm.config import ConfigError
from evolvelm.prompts import PromptFormat
from evolvelm.store.hashing import adapter_version, dir_hash
from evolvelm.types import Generation

_ENGINES: dict[tuple, object] = {}  # (path, dtype, memory) -> vllm.LLM, one at a time


def engine(model_path: str, dtype: str, memory: float, max_lora_rank: int):
    key = (model_path, dtype, memory, max_lora_rank)
    if key not in _ENGINES:
        import gc

        import torch
        from vllm import LLM

        for old in list(_ENGINES):  # one engine on the GPU at a time
            del _ENGINES[old]
        gc.collect()
        torch.cuda.empty_cache()
        _ENGINES[key] = LLM(model=model_path, tokenizer=model_path, dtype="auto" if dtype == "auto" else dtype,
                            enable_lora=True, max_lora_rank=max_lora_rank, gpu_memory_utilization=memory, seed=0)
    return _ENGINES[key]


class VLLMBackend:
    """The Backend protocol over a vLLM engine (see the module docstring)."""

    def __init__(self, model_path: str, adapter: str | None = None, dtype: str = "auto", chat: str = "auto",
                 system: str = "", stop: list[str] = (), vllm_memory: float = 0.4, max_lora_rank: int = 64,
                 served_check: bool = True, served_tolerance: float = 0.05, **_local):  # _local: device, batch_size
        try:
            import torch
            import vllm  # noqa: F401
        except ImportError as e:
            raise ConfigError("model.backend vllm needs vllm: pip install 'evolvelm[vllm]' (on a machine with a GPU)") from e
        if not torch.cuda.is_available():
            raise ConfigError("model.backend vllm needs a GPU; on the CPU use model.backend hf")
        from transformers import AutoTokenizer

        self.model_path, self.stop = model_path, list(stop)
        self.check, self.tolerance, self.hf_options = served_check, served_tolerance, {"chat": chat, "system": system}
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.format = PromptFormat.load(model_path, chat, system, self.tokenizer)
        self.llm = engine(model_path, dtype, vllm_memory, max_lora_rank)
        self.context = self.llm.llm_engine.model_config.max_model_len
        self._base_version = dir_hash(model_path)
        self.lora, self.adapter, self.version, self.sync_seconds = None, None, self._base_version, 0.0
        if adapter:
            self.load_adapter(adapter)

    def _params(self, seed: int, temperature: float, max_new_tokens: int, **more):
        from vllm import SamplingParams

        return SamplingParams(temperature=temperature, seed=seed, max_tokens=max_new_tokens, logprobs=1,
                              stop_token_ids=list(self.format.stop_ids), stop=self.stop or None,
                              skip_special_tokens=True, **more)

    def generate(self, prompts: list[str], seeds: list[int], temperature: float,
                 max_new_tokens: int) -> list[Generation]:
        from vllm.inputs import TokensPrompt

        ids = [self.format.prompt_ids(p) for p in prompts]
        if ids and max(map(len, ids)) + max_new_tokens > self.context:
            raise ValueError(f"{self.model_path} reads {self.context} tokens; a prompt of {max(map(len, ids))} "
                             f"tokens and {max_new_tokens} new ones do not fit")
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids],
                                 [self._params(s, temperature, max_new_tokens) for s in seeds],
                                 lora_request=self.lora, use_tqdm=False)
        gens = []
        for row, seed, out in zip(ids, seeds, outs):
            o = out.outputs[0]
            tokens = list(o.token_ids)
            logprobs = [step[t].logprob for t, step in zip(tokens, o.logprobs or [])]
            gens.append(Generation(o.text, logprobs, seed, self.tokenizer.decode(row), tokens, o.finish_reason == "stop"))
        return gens

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        pairs = [self.format.pair_ids(p, c) for p, c in zip(prompts, completions)]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids, _ in pairs],
                                 SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0),
                                 lora_request=self.lora, use_tqdm=False)
        return [[out.prompt_logprobs[i][ids[i]].logprob for i in range(start, len(ids))]
                for (ids, start), out in zip(pairs, outs)]

    def load_adapter(self, path: str) -> None:
        from vllm.lora.request import LoRARequest

        t0 = time.perf_counter()
        digest = dir_hash(path)
        self.lora = LoRARequest(f"evolvelm-{digest}", int(digest[:7], 16) + 1, str(path))
        self.adapter, self.version = path, adapter_version(self._base_version, path)
        if self.check:  # the engine loads the adapter on its first request: the probes
            check_served(self.generate(PROBES, [0] * len(PROBES), 0.0, 1), self.model_path, path, self.tolerance,
                         **self.hf_options)
        self.sync_seconds = time.perf_counter() - t0

    def unload_adapter(self) -> None:
        self.lora, self.adapter, self.version = None, None, self._base_version

    def close(self) -> None:
        """The engine stays up for the next stage on this checkpoint (`engine`)."""
        self.lora = None
