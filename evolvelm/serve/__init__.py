"""What `evolvelm serve` answers with: the models of a run (or of one model reference) by name, on
one backend, and the batcher that joins concurrent clients' requests into one generate call.

    evolvelm serve RUN_DIR | MODEL [--host 127.0.0.1] [--port 8000] [--api-key-env VAR] [--allow-loading]

Served names: a run's evolved model under the run directory's name and its starting model as `base`;
a modular run's modules by their names, `base`, and `auto` for the router; a model reference under
its own name. Every name is the same base weights with a PEFT adapter active (or none), so adding one
(`POST /v1/load_lora_adapter`, vLLM's call) loads only the adapter. The HTTP side is `serve/app.py`.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from evolvelm.config import ConfigError
from evolvelm.types import Generation

ROUTER = "auto"  # the served name whose prompts the router sends to a module


@dataclass
class Row:
    """One prompt to answer: its tokens, its seed, and the text the router reads."""

    ids: list[int]
    seed: int
    text: str


@dataclass(frozen=True)
class Settings:
    """What one generate call shares: requests with equal settings are batched together."""

    name: str             # the served model
    temperature: float
    max_tokens: int
    stop: tuple[str, ...]
    top: int              # likeliest tokens kept per position (logprobs)


class Served:
    """Names -> a module of one `ModularModel` (None: the base alone; ROUTER: the router chooses)."""

    def __init__(self, model, names: dict[str, str | None], stop: list[str] = ()):
        self.model, self.names, self.stop = model, names, list(stop)  # stop: the run's, always applied
        self.backend = model.backend
        self.format, self.tokenizer = self.backend.format, self.backend.tokenizer
        self.context = self.backend.context
        self.created, self.loaded = int(time.time()), set()

    def add(self, name: str, path: str) -> None:
        """Serve the LoRA adapter at `path` as `name`; a name loaded before is replaced, weights and all
        (never a stale adapter under a reused name). The run's own names cannot be replaced."""
        if name in self.names and name not in self.loaded:
            raise ValueError(f"{name!r} is one of the models this server started with; choose another name")
        self.remove(name)
        self.model.add(name, path)
        self.names[name] = name
        self.loaded.add(name)

    def remove(self, name: str) -> bool:
        """Stop serving an adapter loaded with `add`; False when `name` is not one."""
        if name not in self.loaded:
            return False
        self.model.remove(name)
        del self.names[name]
        self.loaded.discard(name)
        return True

    def generate(self, s: Settings, rows: list[Row]) -> list[Generation]:
        module = self.names[s.name]
        routes = self.model.route([r.text for r in rows]) if module == ROUTER else [module] * len(rows)
        out: list[Generation | None] = [None] * len(rows)
        for name in sorted(set(routes), key=str):
            idx = [i for i, r in enumerate(routes) if r == name]
            with self.model.using(name) as backend:
                gens = backend.generate_ids([rows[i].ids for i in idx], [rows[i].seed for i in idx], s.temperature,
                                            s.max_tokens, stop=self.stop + list(s.stop), top=s.top)
            for i, g in zip(idx, gens):
                out[i] = g
        return out

    def close(self) -> None:
        self.model.close()


def open_served(target: str, device: str = "auto", dtype: str = "auto", chat: str = "auto", system: str = "",
                batch_size: int = 64) -> Served:
    """The models `evolvelm serve TARGET` answers with: a run directory's last promoted model, or any
    model reference `model.path` accepts (zoo:NAME, a directory, a .gguf file, a cached hub id)."""
    from evolvelm.models import backend_options, resolve
    from evolvelm.report.export import last_state
    from evolvelm.store.run import Run
    from evolvelm.update.modules import ModularModel, Router

    path = Path(target)
    if not (path / "config.yaml").is_file():
        model = ModularModel(resolve(target), {}, None, device=device, dtype=dtype, chat=chat, system=system,
                             batch_size=batch_size)
        return Served(model, {target.removeprefix("zoo:").rstrip("/").split("/")[-1]: None})
    run = Run.open(path)
    cfg, state = run.config(), last_state(run)
    if state.memory:
        raise ConfigError(f"{run.root}: its model answers after examples from an in-context memory "
                          f"({state.memory}), which serve does not put in context; answer with `evolvelm generate "
                          f"{run.root}`, or `evolvelm export` it (memory.jsonl goes beside the model)")
    options = backend_options(cfg) | {"batch_size": batch_size}
    stop = options.pop("stop")
    if state.modules or state.router:
        router = Router.load(Path(resolve(state.router, run)) / "router.json") if state.router else None
        model = ModularModel(resolve(state.model, run), {n: resolve(p, run) for n, p in state.modules.items()},
                             router, **options)
        return Served(model, {n: n for n in state.modules} | {"base": None, ROUTER: ROUTER}, stop)
    adapters = {"evolved": resolve(state.adapter, run)} if state.adapter else {}
    names = {run.root.name: "evolved" if adapters else None}
    if state.model == cfg.model.path:  # the weights the run started from are served too
        names["base"] = None
    return Served(ModularModel(resolve(state.model, run), adapters, None, **options), names, stop)


@dataclass
class _Job:
    settings: Settings | None   # None: `call`, run alone
    rows: list[Row]
    future: Future = field(default_factory=Future)
    fn: object = None


class Batcher:
    """One thread runs the model. Requests whose settings are equal wait `wait_s` for each other and
    go through one generate call, up to `rows` prompts; the others wait their turn in arrival order."""

    def __init__(self, served: Served, rows: int = 64, wait_s: float = 0.02):
        self.served, self.rows, self.wait_s = served, rows, wait_s
        self.pending: list[_Job] = []
        self.cv, self.closed = threading.Condition(), False
        self.thread = threading.Thread(target=self._loop, name="evolvelm-model", daemon=True)
        self.thread.start()

    def submit(self, settings: Settings, rows: list[Row]) -> Future:
        """A future of the rows' generations, in order."""
        return self._put(_Job(settings, rows))

    def call(self, fn) -> Future:
        """fn() on the model's thread, between batches (adapter loading)."""
        return self._put(_Job(None, [], fn=fn))

    def _put(self, job: _Job) -> Future:
        with self.cv:
            if self.closed:
                raise ConfigError("the server is shutting down")
            self.pending.append(job)
            self.cv.notify()
        return job.future

    def _take(self) -> list[_Job]:
        with self.cv:
            first = self.pending[0]
            if first.settings is None:
                return [self.pending.pop(0)]
            batch, n = [], 0
            for job in list(self.pending):
                if job.settings == first.settings and (not batch or n + len(job.rows) <= self.rows):
                    batch.append(job)
                    n += len(job.rows)
                    self.pending.remove(job)
            return batch

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.pending and not self.closed:
                    self.cv.wait()
                if self.closed:
                    return
            time.sleep(self.wait_s)  # the other clients' requests arrive meanwhile
            batch = self._take()
            try:
                if batch[0].settings is None:
                    batch[0].future.set_result(batch[0].fn())
                    continue
                gens = self.served.generate(batch[0].settings, [r for job in batch for r in job.rows])
            except Exception as e:  # the request fails, the server goes on
                for job in batch:
                    job.future.set_exception(e)
                continue
            for job in batch:
                job.future.set_result(gens[:len(job.rows)])
                gens = gens[len(job.rows):]

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify()
        self.thread.join()
