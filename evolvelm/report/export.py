"""Use the evolved model of a run: export it as Hugging Face directories, or answer prompts with it."""
from __future__ import annotations

import shutil
from pathlib import Path

from evolvelm.backends.incontext import MEMORY
from evolvelm.config import ConfigError
from evolvelm.store.run import Run
from evolvelm.types import State


def last_state(run: Run) -> State:
    """The gate state of the last promoted model (what the run evolved)."""
    gates = [m for m in run.manifest() if m["stage"] == "gate"]
    if not gates:
        raise ConfigError(f"{run.root} has no evaluated rounds yet")
    return State.read(gates[-1]["info"])


def export(run: Run, out: Path, merged: bool = False, module: str | None = None) -> Path:
    """Copy the last promoted model to `out`: full weights, a LoRA adapter, or (merged) base + adapter,
    with `memory.jsonl` beside it when it reads an in-context memory. Modular runs: the base, every module and the router (`out/base`, `out/modules/NAME`,
    `out/router.json`), or with `merged` one module merged into the base."""
    from evolvelm.models import resolve
    from evolvelm.update.modules import merge

    state = last_state(run)
    if out.exists():
        raise ConfigError(f"{out} already exists")
    modules = state.modules
    if module and module not in modules:
        raise ConfigError(f"no module {module!r} in {run.root}; modules: {sorted(modules)}")
    if modules and merged:
        if not module and len(modules) > 1:
            raise ConfigError(f"--merged needs --module NAME: the run has {len(modules)} modules {sorted(modules)}")
        return merge(resolve(state.model, run), resolve(modules[module or next(iter(modules))], run), out)
    if modules:
        shutil.copytree(resolve(state.model, run), out / "base")
        for name, path in modules.items():
            shutil.copytree(resolve(path, run), out / "modules" / name)
        shutil.copy(Path(resolve(state.router, run)) / "router.json", out / "router.json")
        return out
    if state.adapter and merged:
        merge(resolve(state.model, run), resolve(state.adapter, run), out)
    else:
        shutil.copytree(resolve(state.adapter or state.model, run), out)
    if state.memory:  # the examples it answers after (semisup.method memory), as a labeled-set file
        shutil.copy(Path(resolve(state.memory, run)) / MEMORY, out / MEMORY)
    return out


def answerer(run: Run):
    """A function prompts, max_new_tokens -> [(prompt, greedy answer, module)] over the run's
    evolved model; module is the routed module (None: the base) for modular runs, else False."""
    from evolvelm.recipes import modular

    cfg, state = run.config(), last_state(run)
    if cfg.model.backend != "hf":
        raise ConfigError(f"generate needs the hf backend; {run.root} used {cfg.model.backend!r}")
    model = modular.model_for(cfg, run, state)

    def answer(prompts: list[str], max_new_tokens: int):
        seeds = [0] * len(prompts)
        if isinstance(model, modular.ModularModel):
            gens, routes = model.generate(prompts, seeds, 0.0, max_new_tokens)
        else:
            gens, routes = model.generate(prompts, seeds, 0.0, max_new_tokens), [False] * len(prompts)
        return [(p, g.text, r) for p, g, r in zip(prompts, gens, routes)]

    return answer
