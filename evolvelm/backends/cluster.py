"""Ray fan-out: one backend over several worker processes (on this machine or a Ray cluster's), each
holding its own copy of the model behind an ordinary backend (`hf` or `fake`).

Acquisition, evaluation and scoring call `generate` and `logprobs` as they do on one process; the
call is cut into the batches one process would run (`HFBackend.batches`), the batches are handed
to whichever worker is free, and the answers come back in order. A batch's answers depend on its
rows and seeds alone, so a run on W workers stores the samples and verdicts a one-process run with
the same `model.batch_size` stores.

Adapters travel as file contents, so a worker on another machine needs only the base checkpoint
at the same path. After every load each worker reports the version it serves (the content hash of
base + adapter); a worker serving anything else stops the stage with an error. A worker that dies
mid-stage is replaced by a fresh one serving the current adapter, checked the same way, and its
batch is run again: nothing is lost, and since only the calling process writes the store, nothing
is stored twice.

Checking fans out too: while a run has a cluster, a skill from data whose checker runs programs or
a user's function (`code`, `python:`) has each batch of completions checked in `cluster.workers`
shares by Ray tasks, each in a sandbox configured as the run's; a task whose worker dies is run again
by Ray (`max_retries`), and the verdicts are the ones one process gives.

Workers stay up between stages: a pool (one per base checkpoint and backend settings) is kept
after `close` and reused by the next stage on that checkpoint, which then only changes adapters.
`import evolvelm` never imports ray; this module does when a backend is built.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path

from evolvelm.backends.check import ServedWeightsError
from evolvelm.store.hashing import adapter_version
from evolvelm.types import Generation

RETRIES = 2  # a batch whose worker dies this many times more stops the stage
POOLS: list["Pool"] = []  # every live pool of this process, in use or idle


class Worker:
    """A Ray actor holding one backend; adapters arrive as {relative path: bytes}."""

    def __init__(self, backend: str, model_path: str, options: dict, threads: int):
        if threads:
            import torch

            torch.set_num_threads(threads)
        from evolvelm.backends import make_backend

        self.backend = make_backend(backend, model_path, **options)
        self.dir, self.loaded = tempfile.mkdtemp(prefix="evolvelm-adapter-"), None

    def serve(self, adapter: dict | None) -> str:
        """Load this adapter (None: the base weights) and say what is served now."""
        if adapter is None:
            self.backend.unload_adapter()
        else:
            path = Path(tempfile.mkdtemp(dir=self.dir))
            for name, data in adapter.items():
                (path / name).parent.mkdir(parents=True, exist_ok=True)
                (path / name).write_bytes(data)
            self.backend.load_adapter(str(path))
        if self.loaded:  # the previous adapter's weights are in memory no more
            shutil.rmtree(self.loaded, ignore_errors=True)
        self.loaded = None if adapter is None else path
        return self.backend.version

    # each answer comes with the version that produced it, so that the pool can check every batch
    def batches(self, prompts: list[str], size: int, max_new_tokens: int) -> tuple[str, list[list[int]]]:
        plan = getattr(self.backend, "batches", None)
        return self.backend.version, (plan(prompts, max_new_tokens) if plan else
                                      [list(range(i, min(i + size, len(prompts)))) for i in range(0, len(prompts), size)])

    def generate(self, prompts, seeds, temperature, max_new_tokens) -> tuple[str, list[Generation]]:
        return self.backend.version, self.backend.generate(prompts, seeds, temperature, max_new_tokens)

    def logprobs(self, prompts, completions) -> tuple[str, list[list[float]]]:
        return self.backend.version, self.backend.logprobs(prompts, completions)

    def info(self) -> dict:
        import ray

        return {"pid": os.getpid(), "context": getattr(self.backend, "context", None), "adapters": self.dir,
                "node": ray.get_runtime_context().get_node_id()}

    def close(self) -> None:
        """Remove the adapters received (ray.kill gives the process no chance to)."""
        shutil.rmtree(self.dir, ignore_errors=True)


def adapter_files(path: str) -> dict[str, bytes]:
    root = Path(path)
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def connect(address: str) -> None:
    """Join the Ray cluster at `address`, or start one on this machine for `local`, once per process."""
    import ray

    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)


class Pool:
    """`workers` actors on one base checkpoint; used by one backend at a time."""

    def __init__(self, key: tuple, backend: str, model_path: str, options: dict, workers: int, cpus: float, gpus: float):
        import ray

        self.key, self.in_use, self.done, self.restarts = key, True, 0, 0
        self.batch_size = options.get("batch_size", 512)
        self.actor = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(Worker)
        self.args = (backend, model_path, options, max(1, int(cpus)) if not gpus else 0)
        self.adapter, self.adapter_ref = None, None
        self.workers = [self.actor.remote(*self.args) for _ in range(workers)]
        versions = ray.get([w.serve.remote(None) for w in self.workers])
        self.base_version = self.version = self._check(versions, None, versions[0])
        self.homes = self.info()  # per worker: the machine (node) and folder it keeps its adapters in

    def _check(self, versions: list[str], adapter: str | None, base: str | None = None) -> str:
        """The served-version check: every worker serves the base weights, or base + this adapter."""
        base = base or self.base_version
        want = adapter_version(base, adapter) if adapter else base
        if any(v != want for v in versions):
            raise ServedWeightsError(f"Ray workers serve {sorted(set(versions))}, not {want} "
                               f"({'adapter ' + adapter if adapter else 'the base weights'}); the stage stops "
                               f"before any answer is drawn. Run `evolvelm resume` to try again")
        return want

    def serve(self, adapter: str | None) -> str:
        import ray

        if adapter != self.adapter:
            self.adapter_ref = ray.put(adapter_files(adapter)) if adapter else None
            self.version = self._check(ray.get([w.serve.remote(self.adapter_ref) for w in self.workers]), adapter)
            self.adapter = adapter
        return self.version

    def _replace(self, i: int) -> None:
        """A fresh worker for dead worker i, serving the current adapter (checked before it answers)."""
        import ray

        ray.kill(self.workers[i])
        self._remove_files(i)
        self.workers[i] = self.actor.remote(*self.args)
        self._check([ray.get(self.workers[i].serve.remote(self.adapter_ref))], self.adapter)
        self.homes[i] = ray.get(self.workers[i].info.remote())
        self.restarts += 1

    def _remove_files(self, i: int) -> None:
        """Remove the adapters dead worker i received, where it ran on this machine (a killed process
        removes nothing; on another machine they stay until its temporary files are cleared)."""
        import ray

        if self.homes[i]["node"] == ray.get_runtime_context().get_node_id():
            shutil.rmtree(self.homes[i]["adapters"], ignore_errors=True)

    def map(self, method: str, tasks: list[tuple]) -> list:
        """method(*task) for every task, each on the next free worker; results in task order. A batch
        answered by any version but the one served stops the stage (a worker whose weights drifted)."""
        import ray
        from ray.exceptions import RayActorError

        results: list = [None] * len(tasks)
        queue, failures, running = deque(range(len(tasks))), Counter(), {}
        idle = list(range(len(self.workers)))
        while queue or running:
            while queue and idle:
                w, t = idle.pop(0), queue.popleft()
                running[getattr(self.workers[w], method).remote(*tasks[t])] = (w, t)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            w, t = running.pop(ref)
            try:
                version, results[t] = ray.get(ref)
            except RayActorError as e:
                failures[t] += 1
                if failures[t] > RETRIES:
                    raise RuntimeError(f"Ray workers died {failures[t]} times on the same batch of {method}; "
                                       f"last: {e}") from e
                print(f"evolvelm: a Ray worker died ({type(e).__name__}); a fresh one runs its batch again",
                      file=sys.stderr)
                self._replace(w)
                queue.appendleft(t)
            else:
                if version != self.version:  # raises, naming what it serves
                    self._check([version], self.adapter)
                self.done += 1
            idle.append(w)
        return results

    def info(self) -> list[dict]:
        import ray

        return ray.get([w.info.remote() for w in self.workers])

    def shutdown(self) -> None:
        import ray

        try:
            ray.get([w.close.remote() for w in self.workers], timeout=30)
        except Exception:  # a dead or stuck worker: the pool still goes
            pass
        for i, w in enumerate(self.workers):
            ray.kill(w)
            self._remove_files(i)
        POOLS.remove(self)


def pool(backend: str, model_path: str, options: dict, address: str, workers: int, cpus: float, gpus: float) -> Pool:
    """An idle pool on this checkpoint with these settings, or a new one (idle pools on others make room)."""
    import ray

    connect(address)
    key = (backend, str(Path(model_path).resolve()), tuple(sorted((k, str(v)) for k, v in options.items())),
           workers, cpus, gpus)
    for p in POOLS:
        if p.key == key and not p.in_use:
            p.in_use = True
            return p
    for p in [p for p in POOLS if not p.in_use]:
        p.shutdown()
    need = {"CPU": workers * cpus, "GPU": workers * gpus}
    deadline = time.time() + 30  # workers just stopped hand their cores back within seconds
    while True:
        free = ray.available_resources()
        short = {r: n for r, n in need.items() if n and free.get(r, 0) + 1e-9 < n}
        if not short or time.time() > deadline or sum(ray.cluster_resources().get(r, 0) < n for r, n in short.items()):
            break
        time.sleep(0.2)
    if short:
        raise RuntimeError(f"the Ray cluster has {', '.join(f'{free.get(r, 0):g} {r}' for r in short)} free; "
                           f"{workers} workers (cluster.workers) of {cpus:g} CPU and {gpus:g} GPU each "
                           f"(cluster.cpus, cluster.gpus) need {', '.join(f'{n:g}' for n in short.values())}"
                           + (" (other models of this stage hold the rest)" if POOLS else ""))
    p = Pool(key, backend, model_path, options, workers, cpus, gpus)
    POOLS.append(p)
    return p


def shutdown() -> None:
    """Stop every pool's workers (the end of a run); checks run in this process again."""
    from evolvelm.tasks import data

    for p in list(POOLS):
        p.shutdown()
    data.FAN_OUT = None


def _check_share(spec: str, sandbox_cfg, prompts: list[str], completions: list[str], references: list[str],
                 columns: dict[str, list]) -> tuple[int, list[bool] | Exception]:
    """A Ray task: checker `spec` over one share of a batch, in a sandbox configured as the run's. A
    checker's own error comes back as a value, so that the caller can merge every share's failures."""
    from evolvelm import sandbox
    from evolvelm.tasks.checkers import CheckerError, get_checker

    sandbox.configure_from(sandbox_cfg)
    try:
        return os.getpid(), get_checker(spec).check_many(prompts, completions, references, columns)
    except (CheckerError, sandbox.SandboxUnavailable) as e:
        return os.getpid(), e


class CheckFanOut:
    """`evolvelm.tasks.data.FAN_OUT` for a run with a cluster: a batch of checks split into `workers`
    contiguous shares, each a Ray task of `cpus` cores; verdicts in order, as one process gives them."""

    def __init__(self, cfg):
        import ray

        connect(cfg.cluster.address)
        self.shares, self.sandbox = cfg.cluster.workers, cfg.sandbox
        self.task = ray.remote(num_cpus=cfg.cluster.cpus, max_retries=RETRIES)(_check_share)
        self.pids: set[int] = set()  # the processes that checked (what the tests look at)

    def __call__(self, spec: str, prompts: list[str], completions: list[str], references: list[str],
                 columns: dict[str, list]) -> list[bool]:
        import ray

        from evolvelm.tasks.checkers import CheckerError

        size = -(-len(prompts) // self.shares)
        cuts = [(i, i + size) for i in range(0, len(prompts), size)]
        results = ray.get([self.task.remote(spec, self.sandbox, prompts[a:b], completions[a:b], references[a:b],
                                       {k: v[a:b] for k, v in columns.items()}) for a, b in cuts])
        self.pids |= {pid for pid, _ in results}
        errors = [r for _, r in results if isinstance(r, Exception)]
        if any(not isinstance(e, CheckerError) for e in errors):
            raise next(e for e in errors if not isinstance(e, CheckerError))
        if errors:  # every share's failures, as one process names them
            failures = [f for e in errors for f in e.failures]
            raise CheckerError(f"{failures[0]['error'] if failures else errors[0]} (on {len(failures)} of "
                               f"{len(completions)} completions)", failures)
        return [ok for _, r in results for ok in r]


def fan_out_checks(cfg) -> None:
    """Check on the run's cluster (`CheckFanOut`) when it has one; else in this process."""
    from evolvelm.tasks import data

    data.FAN_OUT = CheckFanOut(cfg) if cfg.cluster.address else None


class RayBackend:
    """The backend protocol over a pool of Ray workers, each running backend `inner`."""

    def __init__(self, model_path: str, adapter: str | None = None, inner: str = "hf", address: str = "local",
                 workers: int = 2, cpus: float = 1.0, gpus: float = 0.0, **options):
        self.model_path, self.options = model_path, options
        self.pool = pool(inner, model_path, options, address, workers, cpus, gpus)
        self.version = self.pool.serve(adapter)
        self.context = self.pool.info()[0]["context"]
        self._format = None

    @property
    def format(self):
        """How prompts become tokens (the judges measure prompts with it), built here on first use."""
        if self._format is None:
            from evolvelm.prompts import PromptFormat

            self._format = PromptFormat.load(self.model_path, self.options.get("chat", "auto"),
                                             self.options.get("system", ""))
        return self._format

    def generate(self, prompts: list[str], seeds: list[int], temperature: float,
                 max_new_tokens: int) -> list[Generation]:
        if not prompts:
            return []
        (groups,) = self.pool.map("batches", [(prompts, self.pool.batch_size, max_new_tokens)])
        parts = self.pool.map("generate", [([prompts[i] for i in g], [seeds[i] for i in g], temperature, max_new_tokens)
                                           for g in groups])
        out: list[Generation | None] = [None] * len(prompts)
        for g, gens in zip(groups, parts):
            for i, gen in zip(g, gens):
                out[i] = gen
        return out

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        size = self.pool.batch_size  # the hf backend scores consecutive rows together, as here
        parts = self.pool.map("logprobs", [(prompts[i:i + size], completions[i:i + size]) for i in range(0, len(prompts), size)])
        return [row for part in parts for row in part]

    def load_adapter(self, path: str) -> None:
        self.version = self.pool.serve(path)

    def unload_adapter(self) -> None:
        self.version = self.pool.serve(None)

    def close(self) -> None:
        """Hand the workers back to be reused by the next stage (`shutdown` stops them)."""
        if self.pool is not None:
            self.pool.in_use, self.pool = False, None
