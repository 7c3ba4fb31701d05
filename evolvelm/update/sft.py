"""Supervised fine-tuning on (prompt, answer) pairs: full fine-tuning or LoRA (PEFT).

A plain PyTorch loop rather than TRL's SFTTrainer: for models of a few hundred thousand parameters
the trainer's per-step overhead costs more than the step itself, and a 40-line loop keeps every
round bit-for-bit reproducible from its seed, which resume equivalence relies on. PEFT builds,
saves and reloads the adapters.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from evolvelm.models import load_model
from evolvelm.prompts import PromptFormat
from evolvelm.types import Example
from evolvelm.update import parallel


def encode(fmt: PromptFormat, examples: list[Example]) -> tuple[list[list[int]], list[int]]:
    """Token ids of each prompt answered and closed, as the model's prompt format writes them (raw:
    "<s> prompt answer </s>" for the zoo; chat: the template's turns), and where each answer starts."""
    pairs = [fmt.pair_ids(ex.prompt, ex.answer) for ex in examples]
    return [ids for ids, _ in pairs], [start for _, start in pairs]


def train(model, fmt: PromptFormat, examples: list[Example], steps: int, batch_size: int, lr: float, seed: int,
          warmup: int = 50, weight_decay: float = 0.0, desc: str = "train", quiet: bool = False,
          stats: dict | None = None) -> list[float]:
    """Train `model` in place for `steps` steps; the loss is on answer tokens only. Returns step losses;
    `stats["tokens"]` counts the tokens trained on (padding excluded), for throughput.

    The loss per answer token is the cross-entropy with the answer's token or, for an example with
    soft targets (`Example.target`), the KL divergence from the target distribution to the model's
    (context distillation). Batches are drawn with replacement, proportionally to `Example.weight`,
    from a generator seeded with `seed`: the same inputs give the same trained weights.
    """
    if not examples:
        raise ValueError("no training examples")
    parallel.check_batch(batch_size)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ids, starts = encode(fmt, examples)
    weights = torch.tensor([ex.weight for ex in examples], dtype=torch.float)
    net, acc = prepare(model)
    params, opt, sched = optimizer(net, lr, steps, warmup, weight_decay)
    device = next(model.parameters()).device
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=quiet or parallel.rank() > 0, leave=False):
        idx = torch.multinomial(weights, batch_size, replacement=True, generator=gen).tolist()
        x, y, mask = batch(fmt.pad_id, [ids[i] for i in idx], [starts[i] for i in idx])
        answer_tokens = int((y[:, 1:] != -100).sum())  # the whole batch's: every shard divides by it
        rows = parallel.shard(list(range(batch_size)))
        soft = [(r, starts[idx[i]], examples[idx[i]].target) for r, i in enumerate(rows) if examples[idx[i]].target is not None]
        loss = _loss(net(input_ids=x[rows].to(device), attention_mask=mask[rows].to(device)).logits, y[rows].to(device),
                     soft) / answer_tokens
        step(loss * parallel.world(), params, opt, sched, acc)  # DDP averages over processes; x world sums
        losses.append(parallel.total(loss.item()))
        if stats is not None:
            stats["tokens"] = stats.get("tokens", 0) + int(mask.sum())
    if acc is not None:
        acc.free_memory()  # drop the accelerator's hold on the wrapper, or every round's model stays
    model.eval()
    return losses


def prepare(model):
    """`model` for training across processes (accelerate's DDP/FSDP wrapper around it; it is still
    trained in place) and the Accelerator; the model itself and None in a single process."""
    acc = parallel.accelerator()
    return (acc.prepare_model(model), acc) if acc is not None else (model, None)


def optimizer(model, lr: float, steps: int, warmup: int, weight_decay: float = 0.0):
    """AdamW over the trainable parameters, with linear warm-up then cosine decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    return params, opt, sched


def step(loss: torch.Tensor, params, opt, sched, acc=None) -> None:
    """One optimiser step on `loss`, gradients clipped to norm 1 (through the Accelerator `acc`, which
    knows how FSDP shards them, when training across processes)."""
    opt.zero_grad(set_to_none=True)
    if acc is None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
    else:
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


def batch(pad_id: int, seqs: list[list[int]], starts: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, labels (-100 outside the answers) and the attention mask."""
    width = max(map(len, seqs))
    x = torch.full((len(seqs), width), pad_id)
    y = torch.full((len(seqs), width), -100)
    for r, (seq, start) in enumerate(zip(seqs, starts)):
        x[r, :len(seq)] = torch.tensor(seq)
        y[r, start:len(seq)] = x[r, start:len(seq)]
    mask = (torch.arange(width)[None] < torch.tensor([len(q) for q in seqs])[:, None]).long()
    return x, y, mask


def _loss(logits: torch.Tensor, labels: torch.Tensor, soft: list[tuple[int, int, torch.Tensor]]) -> torch.Tensor:
    """Sum over answer tokens of the cross-entropy with `labels` ([batch, width], -100 = not trained),
    where rows (row, answer start, target) in `soft` use KL(target || model); a target is [T, vocab]
    probabilities, or a sparse (probabilities, token ids) pair of [T, k] tensors."""
    logp = logits[:, :-1].float().log_softmax(-1)
    target = labels[:, 1:]
    per_token = -logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    for row, start, soft_target in soft:
        probs, token = soft_target if isinstance(soft_target, tuple) else (soft_target, None)  # dense, or sparse: top k
        p = probs.to(logp.device)
        span = slice(start - 1, start - 1 + len(p))  # positions that predict the answer's tokens
        logq = logp[row, span] if token is None else logp[row, span].gather(-1, token.to(logp.device))
        per_token[row, span] = (torch.xlogy(p, p) - p * logq).sum(-1)
    return per_token[target != -100].sum()


def load_for_training(base: str, parent_adapter: str | None, method: str, lora_r: int, lora_alpha: int, seed: int = 0,
                      device: str = "auto", dtype: str = "auto"):
    """The model a round trains: full weights, or base + (continued or fresh) LoRA adapter, whose
    random initialisation is drawn from `seed` (not from whatever the process drew before)."""
    torch.manual_seed(seed)
    model = load_model(base, device, dtype)
    from peft import LoraConfig, PeftModel, get_peft_model

    if method == "full":  # continuing from an adapter (a LoRA round before this one): merged into the weights
        if parent_adapter:  # (PEFT froze them; every weight trains again)
            model = PeftModel.from_pretrained(model, parent_adapter).merge_and_unload().requires_grad_(True)
        return model
    if parent_adapter:
        return PeftModel.from_pretrained(model, parent_adapter, is_trainable=True)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in names] or "all-linear"  # Llama-style names, else every linear layer
    return get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=targets,
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))


def load_args(cfg, base: str, parent_adapter: str | None, method: str, seed: int) -> dict:
    """`load_for_training`'s arguments for a round under the run's `update` and `model` settings."""
    u = cfg.update
    return {"base": base, "parent_adapter": parent_adapter, "method": method, "lora_r": u.lora_r,
            "lora_alpha": u.lora_alpha, "seed": seed, "device": cfg.model.device, "dtype": cfg.model.dtype}


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tokenizer(path: str):
    """The tokenizer saved beside a checkpoint."""
    return AutoTokenizer.from_pretrained(path)


def save(model, tokenizer_dir: str, out: Path, card: dict) -> None:
    """Save weights (or the adapter) and the tokenizer as a standard Hugging Face directory,
    with a short model card: what it was trained from, on what, and how it went."""
    model.save_pretrained(out)
    config = out / "adapter_config.json"
    if config.is_file():  # PEFT writes target_modules from a set, in hash-seed order: sort it, so that
        data = json.loads(config.read_text())  # equal adapters get equal content hashes
        data["target_modules"] = sorted(data["target_modules"])
        config.write_text(json.dumps(data, indent=2, sort_keys=True))
    tokenizer(tokenizer_dir).save_pretrained(out)
    lines = ["# evolvelm round model", "", "Produced by an evolvelm self-improvement round.", ""]
    lines += [f"- **{k}**: `{json.dumps(v)}`" for k, v in card.items()]
    (out / "README.md").write_text("\n".join(lines) + "\n")
