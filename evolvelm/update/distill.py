"""Context distillation (SELF-PARAM): the targets are the model's own next-token distributions with a
document in context; the student learns to give them without it. `sft.train` does the training (its
loss is KL(target || model) for examples with soft targets); this module computes the targets.
"""
from __future__ import annotations

import torch

from evolvelm.types import Example
from evolvelm.update.sft import encode


@torch.no_grad()
def distributions(model, fmt, prompts: list[str], answers: list[str], batch_size: int = 256) -> list[torch.Tensor]:
    """Per (prompt, answer): the model's next-token probabilities at every answer token and at the end
    of sequence, a [len(answer tokens) + 1, vocab] tensor (temperature 1, float32, on the CPU)."""
    ids, starts = encode(fmt, [Example(p, a) for p, a in zip(prompts, answers)])
    device, out = next(model.parameters()).device, []
    model.eval()
    for i in range(0, len(ids), batch_size):
        rows, width = ids[i:i + batch_size], max(len(r) for r in ids[i:i + batch_size])
        x = torch.full((len(rows), width), fmt.pad_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, seq in enumerate(rows):  # right padding: positions stay those of the unpadded sequence
            x[r, :len(seq)], mask[r, :len(seq)] = torch.tensor(seq), 1
        probs = model(input_ids=x.to(device), attention_mask=mask.to(device)).logits.float().softmax(-1).cpu()
        for r, seq in enumerate(rows):
            start = starts[i + r]
            out.append(probs[r, start - 1:len(seq) - 1].clone())
    return out


def soft_examples(prompts: list[str], answers: list[str], targets: list[torch.Tensor], weight: float = 1.0) -> list[Example]:
    """Training examples whose loss is the KL from `targets` (from `distributions`) to the model."""
    return [Example(p, a, weight, t) for p, a, t in zip(prompts, answers, targets)]
