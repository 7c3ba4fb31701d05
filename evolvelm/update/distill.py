"""Context distillation: the targets are the model's own next-token distributions with a context
(SELF-PARAM's document, semievol's demonstrations) before the prompt; the student learns to give them
without it. `sft.train` does the training (its loss is KL(target || model) for examples with soft
targets); this module computes the targets and stores them.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from evolvelm.types import Example
from evolvelm.update.sft import encode

TOP_K = 64  # sparse targets: the teacher's most likely tokens per position, renormalised


@torch.no_grad()
def distributions(model, fmt, prompts: list[str], answers: list[str], batch_size: int = 256,
                  top_k: int | None = None) -> list:
    """Per (prompt, answer): the model's next-token probabilities at every answer token and at the end
    of sequence (temperature 1, float32, on the CPU): a [len(answer tokens) + 1, vocab] tensor, or with
    `top_k` a (probabilities, token ids) pair of [len + 1, top_k] tensors, the k most likely tokens
    renormalised to sum to 1 (a vocabulary of 50k tokens would not fit a round's answers densely)."""
    ids, starts = encode(fmt, [Example(p, a) for p, a in zip(prompts, answers)])
    device, out = next(model.parameters()).device, []
    model.eval()
    for i in range(0, len(ids), batch_size):
        rows, width = ids[i:i + batch_size], max(len(r) for r in ids[i:i + batch_size])
        x = torch.full((len(rows), width), fmt.pad_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, seq in enumerate(rows):  # right padding: positions stay those of the unpadded sequence
            x[r, :len(seq)], mask[r, :len(seq)] = torch.tensor(seq), 1
        logits = model(input_ids=x.to(device), attention_mask=mask.to(device)).logits
        for r, seq in enumerate(rows):
            probs = logits[r, starts[i + r] - 1:len(seq) - 1].float().softmax(-1)
            if top_k is None:
                out.append(probs.cpu())
            else:
                p, token = probs.topk(min(top_k, probs.shape[-1]), -1)
                out.append(((p / p.sum(-1, keepdim=True)).cpu(), token.cpu()))
    return out


def soft_examples(prompts: list[str], answers: list[str], targets: list, weight: float = 1.0) -> list[Example]:
    """Training examples whose loss is the KL from `targets` (from `distributions`) to the model."""
    return [Example(p, a, weight, t) for p, a, t in zip(prompts, answers, targets)]


def save_sparse(path: Path, keyed: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Sparse targets (from `distributions` with `top_k`) by key, in one safetensors file."""
    save_file({f"{k}.{part}": t.contiguous() for k, pair in keyed.items() for part, t in zip("pi", pair)}, path)


def load_sparse(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """What `save_sparse` wrote."""
    flat = load_file(path)
    return {k[:-2]: (flat[k], flat[k[:-1] + "i"]) for k in flat if k.endswith(".p")}
