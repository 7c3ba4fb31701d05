"""transformers backend: local generation and scoring on CPU or one GPU, PEFT adapters."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from evolvelm.store.hashing import dir_hash
from evolvelm.types import Generation


class SeededSampling(LogitsProcessor):
    """Per-row seeded sampling inside greedy `generate`, by the Gumbel-max trick.

    argmax(log_softmax(logits / T) + Gumbel noise) is an exact sample from softmax(logits / T).
    Each row draws its noise from its own generator, so a sample depends only on its own seed,
    not on which other prompts share its batch.
    """

    def __init__(self, seeds: list[int], temperature: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = (scores.float() / self.temperature).log_softmax(-1)
        u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))
        return logp + gumbel.to(logp.device)


class HFBackend:
    """Batched generation with `model.generate`; per-token log-probs from the raw logits."""

    def __init__(self, model_path: str, adapter: str | None = None, device: str = "cpu", batch_size: int = 256):
        self.model_path, self.device, self.batch_size = model_path, device, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        self.base = AutoModelForCausalLM.from_pretrained(model_path).to(device).eval()
        self._base_version = dir_hash(model_path)
        self.model, self.adapter, self.version = self.base, None, self._base_version
        if adapter:
            self.load_adapter(adapter)

    def load_adapter(self, path: str) -> None:
        from peft import PeftModel

        self.unload_adapter()
        self.model, self.adapter = PeftModel.from_pretrained(self.base, path).eval(), path
        self.version = f"{self._base_version}+{dir_hash(path)}"

    def unload_adapter(self) -> None:
        if self.adapter:
            self.base = self.model.unload()
            self.model, self.adapter, self.version = self.base, None, self._base_version

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], temperature: float,
                 max_new_tokens: int) -> list[Generation]:
        out: list[Generation] = []
        tok = self.tokenizer
        for i in range(0, len(prompts), self.batch_size):
            chunk, chunk_seeds = prompts[i:i + self.batch_size], seeds[i:i + self.batch_size]
            enc = tok([tok.bos_token + p for p in chunk], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(self.device)
            processors = LogitsProcessorList([SeededSampling(chunk_seeds, temperature)] if temperature > 0 else [])
            res = self.model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, logits_processor=processors,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                output_logits=True, return_dict_in_generate=True,
            )
            new = res.sequences[:, enc.input_ids.shape[1]:]
            logp = torch.stack(res.logits, 1).float().log_softmax(-1).gather(-1, new[..., None])[..., 0]
            for row, lp, seed in zip(new.tolist(), logp.tolist(), chunk_seeds):
                n = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
                out.append(Generation(tok.decode(row[:n], skip_special_tokens=True), lp[:n], seed))
        return out

    @torch.no_grad()
    def logprobs(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        tok, out = self.tokenizer, []
        for i in range(0, len(prompts), self.batch_size):
            ps, cs = prompts[i:i + self.batch_size], completions[i:i + self.batch_size]
            enc = tok([tok.bos_token + p + c + tok.eos_token for p, c in zip(ps, cs)], return_tensors="pt",
                      padding=True, add_special_tokens=False).to(self.device)
            logp = self.model(**enc).logits[:, :-1].float().log_softmax(-1)
            tgt = logp.gather(-1, enc.input_ids[:, 1:, None])[..., 0]
            for row, c in zip(tgt.tolist(), cs):
                n = len(tok(c, add_special_tokens=False).input_ids) + 1
                out.append(row[-n:])
        return out

    def close(self) -> None:
        self.model = self.base = None
