"""The update stage's work for one member of a voting population, shared by the recipes that train
one model (and its voters) per round: continue from the promoted weights, save beside the run."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from evolvelm.acquire.sampling import derive_seed
from evolvelm.config import Config
from evolvelm.models import prompt_format, resolve
from evolvelm.types import Member


def train_round(cfg: Config, run, rnd: int, state: Member, member: int, examples, staging: Path, quiet: bool) -> dict:
    """Continue training a member's promoted weights on `examples` and save them under `staging`.
    Returns where they land once the stage is committed, and the losses."""
    name = "model" if member == 0 else f"voter{member}"
    out = staging / name
    final = str(run.stage_dir(rnd, "update").relative_to(run.root) / name)
    if cfg.model.backend == "fake":
        from evolvelm.backends import fake

        losses = fake.train(resolve(state.model, run), examples, out)
        return {"model": final, "adapter": None, "loss_first": losses[0], "loss_last": losses[-1]}
    from evolvelm.update import parallel, sft

    u = cfg.update
    lora = u.method == "lora"
    seed = cfg.seed * 1000 + rnd if member == 0 else derive_seed(cfg.seed, rnd, "train", member)
    base_dir = resolve(state.model, run)
    stats: dict = {}
    model, losses = parallel.fit(sft.train, sft.load_args(cfg, base_dir, resolve(state.adapter, run) if state.adapter else None,
                                                          u.method, seed),
                                 prompt_format(cfg, base_dir), examples, u.steps, u.batch_size, u.lr, seed=seed,
                                 warmup=u.warmup, desc=f"update round {rnd}" + (f" ({name})" if member else ""),
                                 quiet=quiet, stats=stats)
    sft.save(model, base_dir, out, card={"round": rnd, "member": member, "parent": asdict(state), "method": u.method,
                                         "examples": len(examples), "loss_first": losses[0], "loss_last": losses[-1]})
    return {"model": state.model if lora else final, "adapter": final if lora else None,
            "loss_first": round(losses[0], 5), "loss_last": round(sum(losses[-20:]) / len(losses[-20:]), 5),
            "tokens": stats["tokens"]}
