"""transformers backend: local generation and scoring on CPU or one GPU, PEFT adapters.

Prompts become tokens through the model's `PromptFormat` (raw or its chat template), the same one
training uses. Generation batches prompts of similar length together (sorted by token count, then
left-padded), which is what makes batching pay on real tokenizers; results come back in input order.
"""
from __future__ import annotations

import os

import torch
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList

from evolvelm.models import load_model, torch_device
from evolvelm.prompts import PromptFormat
from evolvelm.store.hashing import adapter_version, dir_hash
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


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask of token rows, padded on the left to the longest."""
    width = max(map(len, rows))
    x = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, seq in enumerate(rows):
        if seq:
            x[r, width - len(seq):], mask[r, width - len(seq):] = torch.tensor(seq), 1
    return x, mask


def batches(lengths: list[int], size: int) -> list[list[int]]:
    """The rows `generate` runs together: sorted by token count (little padding), `size` at a time.
    A batch's answers depend on its rows alone, so whoever runs the same batches (one process, or
    Ray workers sharing them out: evolvelm.backends.cluster) gets the same answers."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + size] for i in range(0, len(order), size)]


def generation_bytes(config, prompt: int, new: int, itemsize: int) -> int:
    """Memory one row of a generation batch takes at most: its KV cache (keys and values of every
    layer over prompt + new tokens), one layer's activations over the prompt (prefill), the logits of
    every new token, kept by generate (model dtype), and one step's made log-probs (float32, twice)."""
    config = config.get_text_config()
    width = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    activations = prompt * (4 * config.hidden_size + 2 * width + config.num_attention_heads * prompt) * itemsize
    logits = (new * itemsize + 8) * config.vocab_size
    return kv_bytes(config, prompt + new, itemsize) + activations + logits


def kv_bytes(config, tokens: int, itemsize: int) -> int:
    """The KV cache of one row of `tokens` tokens: keys and values, every layer, every KV head."""
    config = config.get_text_config()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * tokens * itemsize


class HFBackend:
    """Batched generation with `model.generate`; per-token log-probs from the raw logits."""

    def __init__(self, model_path: str, adapter: str | None = None, device: str = "auto", batch_size: int = 256,
                 dtype: str = "auto", chat: str = "auto", system: str = "", stop: list[str] = ()):
        self.model_path, self.device, self.batch_size = model_path, torch_device(device), batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.format = PromptFormat.load(model_path, chat, system, self.tokenizer)
        self.stop = list(stop)  # stop strings: generation ends once one appears; the answer is cut before it
        self.base = load_model(model_path, self.device, dtype).eval()
        config = self.base.config  # the longest prompt plus answer the model reads
        self.context = next((v for v in (getattr(config, k, None) for k in ("max_position_embeddings", "n_positions"))
                             if isinstance(v, int)), None) or self.tokenizer.model_max_length
        self._base_version = dir_hash(model_path)
        self.model, self.adapter, self.version = self.base, None, self._base_version
        if adapter:
            self.load_adapter(adapter)

    def load_adapter(self, path: str) -> None:
        from peft import PeftModel

        self.unload_adapter()
        self.model, self.adapter = PeftModel.from_pretrained(self.base, path).eval(), path
        self.version = adapter_version(self._base_version, path)

    def unload_adapter(self) -> None:
        if self.adapter:
            self.base = self.model.unload()
            self.model, self.adapter, self.version = self.base, None, self._base_version

    def rows_that_fit(self, longest: int, max_new_tokens: int) -> int:
        """Rows per generation batch: `model.batch_size`, and no more than fit (`generation_bytes` per
        row) in 80% of a GPU's free memory, or on the CPU in half the machine's memory (its total, so
        that a machine always batches alike; a large vocabulary, Gemma's 262k, makes the logits
        generate keeps the most of it). The same for every batch of a call, so the batches stay a
        function of the prompts' lengths."""
        if str(self.device).startswith("cuda"):
            free = 0.8 * torch.cuda.mem_get_info(torch.device(self.device))[0]
        else:
            free = 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        per_row = generation_bytes(self.base.config, longest, max_new_tokens, self.base.dtype.itemsize)
        return max(1, min(self.batch_size, int(free) // per_row))

    def batches(self, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
        """The indices of the prompts `generate` answers together, batch by batch."""
        lengths = [len(self.format.prompt_ids(p)) for p in prompts]
        return batches(lengths, self.rows_that_fit(max(lengths, default=0), max_new_tokens))

    def generate(self, prompts: list[str], seeds: list[int], temperature: float,
                 max_new_tokens: int) -> list[Generation]:
        return self.generate_ids([self.format.prompt_ids(p) for p in prompts], seeds, temperature, max_new_tokens)

    @torch.no_grad()
    def generate_ids(self, ids: list[list[int]], seeds: list[int], temperature: float, max_new_tokens: int,
                     stop: list[str] | None = None, top: int = 0) -> list[Generation]:
        """`generate` from prompts already made tokens (the server's chat turns and raw completions);
        `stop` replaces the configured stop strings; `top` > 0 keeps each token's `top` likeliest."""
        fmt, tok, stop = self.format, self.tokenizer, self.stop if stop is None else list(stop)
        longest = max(map(len, ids), default=0)
        if longest + max_new_tokens > self.context:
            raise ValueError(f"{self.model_path} reads {self.context} tokens; a prompt of {longest} tokens and "
                             f"{max_new_tokens} new ones do not fit")
        out: list[Generation | None] = [None] * len(ids)
        for rows in batches([len(r) for r in ids], self.rows_that_fit(longest, max_new_tokens)):
            x, mask = left_padded([ids[r] for r in rows], fmt.pad_id)
            chunk_seeds = [seeds[r] for r in rows]
            processors = LogitsProcessorList([SeededSampling(chunk_seeds, temperature)] if temperature > 0 else [])
            res = self.model.generate(
                input_ids=x.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=max_new_tokens,
                do_sample=False, num_beams=1, logits_processor=processors, pad_token_id=fmt.pad_id,
                eos_token_id=fmt.stop_ids, output_logits=True, return_dict_in_generate=True,
                **({"stop_strings": stop, "tokenizer": tok} if stop else {}),
            )
            new = res.sequences[:, x.shape[1]:]
            logp, best = [], []  # step by step: a float32 copy of every step's logits at once is rows x tokens x vocabulary
            for t, step in enumerate(res.logits):
                dist = step.float().log_softmax(-1)
                logp.append(dist.gather(-1, new[:, t, None])[:, 0])
                if top:
                    best.append(dist.topk(top, -1))
            logp = torch.stack(logp, 1)
            for k, (r, row, lp) in enumerate(zip(rows, new.tolist(), logp.tolist())):
                n = next((j + 1 for j, t in enumerate(row) if t in fmt.stop_ids), len(row))
                finished = n > 0 and row[n - 1] in fmt.stop_ids
                text = tok.decode(row[:n], skip_special_tokens=True)
                if stop:
                    finished = finished or any(s in text for s in stop)
                    n, text = self._cut(row[:n], text, stop)
                likeliest = [list(zip(b.indices[k].tolist(), b.values[k].tolist())) for b in best[:n]]
                out[r] = Generation(text, lp[:n], seeds[r], tok.decode(ids[r]), row[:n], finished, likeliest)
        return out

    def _cut(self, row: list[int], text: str, stop: list[str]) -> tuple[int, str]:
        """The answer before the first stop string, and the tokens up to the one that completed it."""
        hits = [text.find(s) for s in stop if s in text]
        if not hits:
            return len(row), text
        cut = min(hits)
        n = next(j for j in range(1, len(row) + 1)
                 if any(s in self.tokenizer.decode(row[:j], skip_special_tokens=True)[cut:] for s in stop))
        return n, text[:cut]

    @torch.no_grad()
    def logprobs(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        fmt, out = self.format, []
        for i in range(0, len(prompts), self.batch_size):
            pairs = [fmt.pair_ids(p, c) for p, c in zip(prompts[i:i + self.batch_size], completions[i:i + self.batch_size])]
            x, mask = left_padded([ids for ids, _ in pairs], fmt.pad_id)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as `generate` numbers left-padded rows
            keep = max(len(ids) - start for ids, start in pairs)  # left-padded: every answer ends the row
            logits = self.model(input_ids=x.to(self.device), attention_mask=mask.to(self.device),
                                position_ids=positions.to(self.device), logits_to_keep=keep + 1).logits
            tgt = logits[:, :-1].float().log_softmax(-1).gather(-1, x[:, -keep:, None].to(self.device))[..., 0]
            for row, (ids, start) in zip(tgt.tolist(), pairs):  # the answer's tokens and its end
                out.append(row[len(row) - (len(ids) - start):])
        return out

    def close(self) -> None:
        self.model = self.base = None
