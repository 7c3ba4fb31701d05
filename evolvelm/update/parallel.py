"""The update stage over several processes: `evolvelm run` (or `resume`) under `accelerate launch`.

    accelerate launch --multi_gpu --num_processes 2 -m evolvelm run RECIPE [key=value ...]

Process 0 runs the recipe exactly as a single process would: it alone generates, checks, evaluates
and writes the run directory and the store. Every other process only trains: it waits for the jobs
process 0 sends (`call`: a function and its arguments, broadcast by torch.distributed), runs its
share of each, and exits when process 0 says the run is over (`release`). Inside a job, `sft.train`
and `dpo.train` split each batch's rows over the processes and wrap the model with accelerate's
`prepare` (DDP; FSDP or DeepSpeed when accelerate's own config asks for them), scaling each shard's
loss so that the averaged gradient is the whole batch's: the trained weights equal one process's up
to float summation order. On one process (no WORLD_SIZE in the environment) nothing here runs.

Every process reads the model and the examples from the same paths, so the processes share a file
system (one machine, or a shared one across machines).
"""
from __future__ import annotations

import os
from datetime import timedelta

# Process 0 may generate for hours between two updates while the others wait in a broadcast.
WAIT = timedelta(hours=24)
_accelerator = None


def world() -> int:
    """How many processes train (WORLD_SIZE, set by accelerate launch or torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's index among them (0: the one that runs the recipe)."""
    return int(os.environ.get("RANK", "0"))


def accelerator():
    """The process group's `accelerate.Accelerator`, made on first use; None in a single process."""
    global _accelerator
    if world() == 1:
        return None
    if _accelerator is None:
        import torch
        from accelerate import Accelerator, InitProcessGroupKwargs

        # without cpu=True, accelerate takes CPU-only processes for one process (no DDP: wrong gradients)
        _accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[InitProcessGroupKwargs(timeout=WAIT)])
        if _accelerator.num_processes != world():
            raise RuntimeError(f"accelerate sees {_accelerator.num_processes} process(es) of the {world()} launched "
                               f"({_accelerator.distributed_type}); the gradients would not be shared")
    return _accelerator


def call(fn, *args, **kwargs):
    """Run `fn(*args, **kwargs)` on every process (process 0 sends it to the others) and return
    process 0's result. `fn` must be importable by name: it travels pickled."""
    if world() > 1:
        _send((fn, args, kwargs))
    return fn(*args, **kwargs)


def fit(train_fn, load: dict, *args, **kwargs):
    """Load the model a round trains (`sft.load_for_training(**load)`) and train it in place with
    `train_fn(model, *args, **kwargs)`, on every process; returns process 0's (model, losses)."""
    return call(_fit, train_fn, load, args, kwargs)


def _fit(train_fn, load: dict, args: tuple, kwargs: dict):
    from evolvelm.update.sft import load_for_training

    model = load_for_training(**load)
    return model, train_fn(model, *args, **kwargs)


def follow() -> int:
    """A process other than 0: run the jobs process 0 sends until it releases the group."""
    while (job := _receive()) is not None:
        fn, args, kwargs = job
        fn(*args, **kwargs)
    _leave()
    return 0


def release() -> None:
    """Process 0, at the end of a run (or when it fails): tell the others to exit."""
    if world() > 1:
        _send(None)
        _leave()


def _leave() -> None:
    """Take this process out of the group before it exits: a process group still up at interpreter
    exit can abort it (SIGABRT, "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def check(cfg) -> None:
    """Refuse a run whose batches cannot be shared by the launched processes (before anything runs)."""
    check_batch(cfg.update.batch_size)


def check_batch(batch_size: int) -> None:
    """Each process trains on at least one row of every batch."""
    from evolvelm.config import ConfigError

    if batch_size < world():
        raise ConfigError(f"update.batch_size {batch_size} is smaller than the {world()} processes that share "
                          f"each batch; raise it or launch fewer processes")


def shard(rows: list) -> list:
    """This process's rows of a batch: every world()-th one, starting at rank()."""
    return rows[rank()::world()]


def total(value: float) -> float:
    """The sum over processes of a number each one computed (a shard's share of a loss)."""
    acc = accelerator()
    if acc is None:
        return value
    import torch

    t = torch.tensor([value], dtype=torch.float64, device=acc.device)
    torch.distributed.all_reduce(t)
    return t.item()


def _send(job) -> None:
    import torch.distributed as dist

    accelerator()
    dist.broadcast_object_list([job], src=0)


def _receive():
    import torch.distributed as dist

    accelerator()
    box = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
