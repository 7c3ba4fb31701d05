"""Direct preference optimisation (Rafailov et al. 2023) on (prompt, chosen, rejected) triples, with
an optional supervised term on the chosen answers (RPO: Pang et al. 2024, `rpo_alpha`).

The policy is a LoRA adapter; the reference is the same model with the adapter disabled (PEFT's
`disable_adapter`), so no second copy of the weights is held. The same plain loop as `sft.train`
(seeded batches, warm-up and cosine decay), for the same reasons.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from evolvelm.types import Example
from evolvelm.update import parallel
from evolvelm.update.sft import batch, encode, optimizer, prepare, step


def logps(model, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence, the summed log-probability of its answer tokens (labels != -100), and their number."""
    logits = model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
    target = y[:, 1:]
    per_token = logits.log_softmax(-1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    answer = target != -100
    return (per_token * answer).sum(-1), answer.sum(-1)


def train(model, fmt, pairs: list[tuple[str, str, str]], steps: int, batch_size: int, lr: float, beta: float,
          seed: int, warmup: int = 30, desc: str = "dpo", quiet: bool = False, rpo_alpha: float = 0.0) -> list[float]:
    """Train the adapter of `model` (a PeftModel) in place on (prompt, chosen, rejected) pairs; returns
    step losses: -log sigmoid(beta * (policy margin - reference margin)), margins in summed log-probs,
    plus `rpo_alpha` x the chosen answers' negative log-likelihood per token. DPO alone may lower the
    likelihood of both answers of a pair that differ in a few tokens; the supervised term holds the
    chosen one up."""
    if not pairs:
        raise ValueError("no preference pairs")
    parallel.check_batch(batch_size)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    chosen, starts = encode(fmt, [Example(p, c) for p, c, _ in pairs])
    rejected, _ = encode(fmt, [Example(p, r) for p, _, r in pairs])
    net, acc = prepare(model)
    params, opt, sched = optimizer(net, lr, steps, warmup)
    device = next(model.parameters()).device
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=quiet or parallel.rank() > 0, leave=False):
        idx = torch.randint(len(pairs), (batch_size,), generator=gen).tolist()
        chosen_tokens = sum(len(chosen[i]) - starts[i] for i in idx)  # the whole batch's, as in sft.train
        mine = parallel.shard(idx)
        x, y, mask = (t.to(device) for t in batch(fmt.pad_id, [chosen[i] for i in mine] + [rejected[i] for i in mine],
                                                 [starts[i] for i in mine] * 2))
        policy, _ = logps(net, x, y, mask)
        with torch.no_grad(), model.disable_adapter():  # through the wrapper: FSDP holds the weights sharded
            reference, _ = logps(net, x, y, mask)
        n = len(mine)
        margin = (policy - reference)[:n] - (policy - reference)[n:]
        loss = -torch.nn.functional.logsigmoid(beta * margin).sum() / batch_size
        if rpo_alpha:
            loss = loss - rpo_alpha * policy[:n].sum() / chosen_tokens
        step(loss * parallel.world(), params, opt, sched, acc)  # DDP averages over processes; x world sums
        losses.append(parallel.total(loss.item()))
    if acc is not None:
        acc.free_memory()  # drop the accelerator's hold on the wrapper, or every round's model stays
    model.eval()
    return losses
