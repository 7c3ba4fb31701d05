"""Export the evolved model of a run as a standard Hugging Face directory."""
from __future__ import annotations

import shutil
from pathlib import Path

from evolvelm.config import ConfigError
from evolvelm.store.run import Run


def export(run: Run, out: Path, merged: bool = False) -> Path:
    """Copy the last promoted model to `out`: full weights, a LoRA adapter, or (merged) base + adapter."""
    from evolvelm.recipes.ladder import resolve

    gates = [m for m in run.manifest() if m["stage"] == "gate"]
    if not gates:
        raise ConfigError(f"{run.root} has no evaluated rounds yet")
    state = gates[-1]["info"]
    if out.exists():
        raise ConfigError(f"{out} already exists")
    if state["adapter"] and merged:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base = AutoModelForCausalLM.from_pretrained(resolve(state["model"], run))
        model = PeftModel.from_pretrained(base, resolve(state["adapter"], run)).merge_and_unload()
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(resolve(state["adapter"], run)).save_pretrained(out)
    else:
        shutil.copytree(resolve(state["adapter"] or state["model"], run), out)
    return out
