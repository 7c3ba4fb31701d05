"""One LoRA module per skill on a frozen base, and the router that picks a module for each input.

The router is a nearest-centroid classifier over prompt features: either the frozen base model's
last hidden state at the prompt's first token and averaged over the prompt (`hidden`), or hashed character uni- and bigrams
(`chars`, no model needed). Each module keeps the centroid of the inputs it was trained on and a
radius (the 99th percentile of their distances to it). An input farther than `novelty` radii from
every centroid fits no module: the base model answers it, and experience made of such inputs opens
a new module. Features are standardised with statistics fitted on the training inputs.

Modules are ordinary PEFT adapter directories; `ModularModel` loads all of them onto one base
and switches between them per group of routed prompts (PEFT's `set_adapter`), so hot-swapping
costs no reload.
"""
from __future__ import annotations

import json
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

FEATURES = ("hidden", "chars")
CHAR_DIM = 512  # hashed n-gram buckets of the `chars` features


def char_features(prompts: list[str]) -> torch.Tensor:
    """(len(prompts), CHAR_DIM) L2-normalised counts of each prompt's character uni- and bigrams."""
    out = torch.zeros(len(prompts), CHAR_DIM)
    for i, p in enumerate(prompts):
        for gram in list(p) + [p[j:j + 2] for j in range(len(p) - 1)] + ["^" + p[:1]]:
            out[i, zlib.crc32(gram.encode()) % CHAR_DIM] += 1
    return torch.nn.functional.normalize(out, dim=1)


@torch.no_grad()
def hidden_features(model, fmt, prompts: list[str], batch_size: int = 512) -> torch.Tensor:
    """(len(prompts), 2 * hidden) the base model's last hidden state at each prompt's first token of
    its own text (where a task marker sits: `PromptFormat.content_start`) and averaged over the whole
    input the model reads.
    `model` may be a PeftModel: its adapters are disabled, so features never drift as modules train."""
    from contextlib import nullcontext

    from evolvelm.backends.hf import left_padded

    device = next(model.parameters()).device
    # the decoder alone: the LM head's logits over a large vocabulary (SmolLM2: 49k) for every position
    # of 512 prompts would take gigabytes, and only the last hidden state is read
    body = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()
    rows = []
    ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    with ctx:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            x, attention = left_padded([fmt.prompt_ids(p) for p in chunk], fmt.pad_id)
            h = body(input_ids=x.to(device), attention_mask=attention.to(device)).last_hidden_state.float()
            mask = attention.to(device)[..., None].float()
            first = attention.argmax(1) + torch.tensor([fmt.content_start(p) for p in chunk])  # after left padding
            opening = h[torch.arange(len(h)), first.clamp_max(h.shape[1] - 1).to(device)]
            rows.append(torch.cat([opening, (h * mask).sum(1) / mask.sum(1)], 1).cpu())
    return torch.cat(rows)


@dataclass
class Router:
    """Nearest-centroid routing over standardised prompt features, with novelty detection."""

    features: str                 # "hidden" | "chars"
    names: list[str]              # module names, one per centroid
    centroids: torch.Tensor       # (modules, dim), in standardised feature space
    radius: torch.Tensor          # (modules,) 99th-percentile distance of a module's training inputs
    mean: torch.Tensor            # (dim,) feature standardisation
    std: torch.Tensor             # (dim,)
    novelty: float = 2.0          # an input beyond novelty x radius of every module fits none

    @classmethod
    def fit(cls, features: str, feats: torch.Tensor, labels: list[str], novelty: float) -> "Router":
        """Centroids and radii from training inputs `feats` labelled with their module names."""
        # A hidden dimension constant over the training inputs (the opening marker's state) makes
        # any input that differs there far from every module: that is what detects a new skill.
        mean, std = feats.mean(0), feats.std(0).clamp_min(1e-4)
        if features == "chars":  # sparse and already unit length: most n-grams never occur in training
            mean, std = torch.zeros_like(mean), torch.ones_like(std)
        z = (feats - mean) / std
        names = sorted(set(labels))
        cents, radii = [], []
        for n in names:
            zn = z[[i for i, lab in enumerate(labels) if lab == n]]
            c = zn.mean(0)
            cents.append(c)
            radii.append(torch.quantile((zn - c).norm(dim=1), 0.99).clamp_min(1e-3))
        return cls(features, names, torch.stack(cents), torch.stack(radii), mean, std, novelty)

    def route(self, feats: torch.Tensor) -> list[str | None]:
        """The module for each input, or None where no module fits (the base model answers)."""
        if not self.names:
            return [None] * len(feats)
        dist = torch.cdist((feats - self.mean) / self.std, self.centroids)  # (inputs, modules)
        best = dist.argmin(1)
        fits = dist.gather(1, best[:, None])[:, 0] <= self.novelty * self.radius[best]
        return [self.names[b] if ok else None for b, ok in zip(best.tolist(), fits.tolist())]

    def save(self, path: Path) -> None:
        data = {"features": self.features, "names": self.names, "novelty": self.novelty,
                **{k: getattr(self, k).tolist() for k in ("centroids", "radius", "mean", "std")}}
        path.write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path) -> "Router":
        d = json.loads(path.read_text())
        return cls(d["features"], d["names"], *(torch.tensor(d[k]) for k in ("centroids", "radius", "mean", "std")),
                   d["novelty"])


class ModularModel:
    """A frozen base with every module loaded as a named PEFT adapter, answering through a router.

    `generate` routes the prompts (or takes `modules` given by the caller: the direct path the
    router is measured against), then generates each group with its adapter active.
    """

    def __init__(self, base: str, modules: dict[str, str], router: Router | None, **options):
        from peft import PeftModel

        from evolvelm.backends.hf import HFBackend
        from evolvelm.store.hashing import dir_hash

        self.backend = HFBackend(base, **options)  # options: those of the hf backend (models.backend_options)
        self.router, self.names = router, sorted(modules)
        if modules:
            first, *rest = self.names
            model = PeftModel.from_pretrained(self.backend.base, modules[first], adapter_name=first)
            for name in rest:
                model.load_adapter(modules[name], adapter_name=name)
            self.backend.model = model.eval()
        self.version = "+".join([self.backend.version] + [f"{n}:{dir_hash(modules[n])}" for n in self.names])

    def add(self, name: str, path: str) -> None:
        """Load one more module (the server's adapters)."""
        from peft import PeftModel

        if self.names:
            self.backend.model.load_adapter(path, adapter_name=name)
            self.backend.model.eval()  # its new layers start in training mode (dropout)
        else:
            self.backend.model = PeftModel.from_pretrained(self.backend.base, path, adapter_name=name).eval()
        self.names = sorted(self.names + [name])

    def remove(self, name: str) -> None:
        """Unload module `name`, weights and all."""
        self.names = [n for n in self.names if n != name]
        if self.names:
            self.backend.model.delete_adapter(name)
        else:
            self.backend.model = self.backend.base = self.backend.model.unload()

    def features(self, prompts: list[str]) -> torch.Tensor:
        """The router's features of `prompts`."""
        if self.router.features == "chars":
            return char_features(prompts)
        return hidden_features(self.backend.model, self.backend.format, prompts, self.backend.batch_size)

    def route(self, prompts: list[str]) -> list[str | None]:
        return self.router.route(self.features(prompts)) if self.router and prompts else [None] * len(prompts)

    def generate(self, prompts: list[str], seeds: list[int], temperature: float, max_new_tokens: int,
                 modules: list[str | None] | None = None):
        """(generations, module per prompt); each group of prompts runs with its module's adapter."""
        from evolvelm.types import Generation

        routes = self.route(prompts) if modules is None else modules
        out: list[Generation | None] = [None] * len(prompts)
        for name in sorted(set(routes), key=str):
            idx = [i for i, r in enumerate(routes) if r == name]
            gens = self._with(name, [prompts[i] for i in idx], [seeds[i] for i in idx], temperature, max_new_tokens)
            for i, g in zip(idx, gens):
                out[i] = g
        return out, routes

    def _with(self, name: str | None, prompts, seeds, temperature, max_new_tokens):
        with self.using(name):
            return self.backend.generate(prompts, seeds, temperature, max_new_tokens)

    @contextmanager
    def using(self, name: str | None):
        """The backend answers with module `name` active (None: the base alone) inside the block."""
        model = self.backend.model
        if name is None and self.names:  # no module fits: the base answers
            with model.disable_adapter():
                yield self.backend
            return
        if name is not None:
            model.set_adapter(name)
        yield self.backend

    def close(self) -> None:
        self.backend.close()


class Routed:
    """The Backend protocol's `generate` over a ModularModel, for code that expects one model."""

    def __init__(self, modular: ModularModel):
        self.modular, self.version = modular, modular.version

    def generate(self, prompts, seeds, temperature, max_new_tokens):
        return self.modular.generate(prompts, seeds, temperature, max_new_tokens)[0]

    def close(self) -> None:
        self.modular.close()


def merge(base: str, adapter: str, out: Path) -> Path:
    """One module merged into the base weights, saved as a plain Hugging Face model directory."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out
