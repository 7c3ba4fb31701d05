"""openai backend: generation by any OpenAI-compatible endpoint (`evolvelm serve`, `vllm serve`,
llama.cpp's server, a hosted API) through the official `openai` client.

    model: {backend: openai, path: zoo:smollm2-135m-instruct, base_url: http://127.0.0.1:8000/v1}

`model.path` is still read here: its tokenizer says whether prompts go to /chat/completions (the model
has a chat template, `model.chat` not off) or /completions (raw text), and renders the prompt that
every sample stores; its hash is the weights version, as with `hf`. The endpoint must serve those
weights. An adapter (a round's update) is loaded into the endpoint by vLLM's
`POST /load_lora_adapter` under a name made of its content hash, so a name never serves stale weights;
the endpoint must read the run directory's paths (same machine, or a shared disk). After each load,
the served-weights check (evolvelm.backends.check) compares the endpoint's answers to probe prompts
with this process's hf backend on the same adapter; a stale adapter stops the stage.

Every response is cached in the run directory (`requests.sqlite`), keyed by the request itself, so a
run resumed after a crash never sends a request twice. Requests go out `concurrency` at a time; the
client retries 408/409/429/5xx and timeouts with exponential backoff (5 retries). The key is read from
the environment variable `model.api_key_env` and is never written anywhere.

Log-probabilities are the endpoint's per-token ones for the answer's tokens; OpenAI-style endpoints
leave out the end-of-turn token that the `hf` backend counts too, and none scores a given completion,
so `logprobs()` is not available here.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed

from evolvelm.config import ConfigError
from evolvelm.prompts import PromptFormat
from evolvelm.backends.check import PROBES, check_served
from evolvelm.store.hashing import adapter_version, dir_hash
from evolvelm.types import Generation


class RequestCache:
    """Responses by request, in one sqlite file; each is committed as it arrives."""

    def __init__(self, path: str | None):
        self.db = sqlite3.connect(path or ":memory:", check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT)")
        self.lock = threading.Lock()

    @staticmethod
    def key(endpoint: str, body: dict) -> str:
        return hashlib.sha256(json.dumps([endpoint, body], sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        with self.lock:
            row = self.db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, response: dict) -> None:
        with self.lock, self.db:
            self.db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, json.dumps(response)))


class OpenAIBackend:
    """The Backend protocol over an OpenAI-compatible endpoint (see the module docstring)."""

    def __init__(self, model_path: str, adapter: str | None = None, base_url: str = "", api_key_env: str = "",
                 served_name: str = "", concurrency: int = 8, timeout_s: float = 120.0, cache: str | None = None,
                 chat: str = "auto", system: str = "", stop: list[str] = (), served_check: bool = True,
                 served_tolerance: float = 0.05, **local):  # local: device, dtype, ... (the check's hf reference)
        try:
            import openai
        except ImportError as e:
            raise ConfigError("model.backend openai needs the openai package: pip install 'evolvelm[serve]'") from e
        key = os.environ.get(api_key_env) if api_key_env else "none"
        if not key:
            raise ConfigError(f"model.api_key_env: the environment variable {api_key_env} is not set or empty")
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=5)
        self.format = PromptFormat.load(model_path, chat, system)
        self.stop, self.concurrency, self.cache = list(stop), concurrency, RequestCache(cache)
        self.model_path, self.check, self.tolerance = model_path, served_check, served_tolerance
        self.hf_options = {k: v for k, v in local.items() if k in ("device", "dtype")} | {"chat": chat, "system": system}
        self.base_name = served_name or self._only_model(base_url)
        self._base_version = dir_hash(model_path)
        self.name, self.adapter, self.version = self.base_name, None, self._base_version
        if adapter:
            self.load_adapter(adapter)

    def _only_model(self, base_url: str) -> str:
        names = [m.id for m in self.client.models.list().data if not getattr(m, "parent", None)]  # not adapters
        if len(names) != 1:
            raise ConfigError(f"model.served_name: {base_url} serves {names}; name the one that is model.path")
        return names[0]

    def load_adapter(self, path: str) -> None:
        digest = dir_hash(path)
        name = f"evolvelm-{digest}"
        self.client.post("/load_lora_adapter", body={"lora_name": name, "lora_path": str(path)}, cast_to=str)
        self.name, self.adapter, self.version = name, path, adapter_version(self._base_version, path)
        if self.check:  # evolvelm.backends.check: asked afresh, never from the cache
            probes = [self._send(*self._request(p, 0, 0.0, 1)) for p in PROBES]
            check_served([Generation(r["text"], r["logprobs"], 0) for r in probes], self.model_path, path,
                         self.tolerance, **self.hf_options)

    def unload_adapter(self) -> None:
        self.name, self.adapter, self.version = self.base_name, None, self._base_version

    def _request(self, prompt: str, seed: int, temperature: float, max_new_tokens: int) -> tuple[str, dict]:
        body = {"model": self.name, "temperature": temperature, "seed": seed, "max_tokens": max_new_tokens,
                "logprobs": True if self.format.chat else 0}
        if self.stop:
            body["stop"] = self.stop
        if self.format.chat:
            system = [{"role": "system", "content": self.format.system}] if self.format.system else []
            return "chat", body | {"messages": system + [{"role": "user", "content": prompt}]}
        return "completions", body | {"prompt": prompt}

    def _send(self, endpoint: str, body: dict) -> dict:
        """One request; the answer's text, per-token logprobs and whether it ended by itself."""
        if endpoint == "chat":
            choice = self.client.chat.completions.create(**body).choices[0]
            text = choice.message.content or ""
            logprobs = [t.logprob for t in (choice.logprobs.content or [])] if choice.logprobs else []
        else:
            choice = self.client.completions.create(**body).choices[0]
            text = choice.text
            logprobs = list(choice.logprobs.token_logprobs or []) if choice.logprobs else []
        return {"text": text, "logprobs": logprobs, "finished": choice.finish_reason == "stop"}

    def generate(self, prompts: list[str], seeds: list[int], temperature: float,
                 max_new_tokens: int) -> list[Generation]:
        requests = [self._request(p, s, temperature, max_new_tokens) for p, s in zip(prompts, seeds)]
        keys = [RequestCache.key(*r) for r in requests]
        done = {k: r for k in set(keys) if (r := self.cache.get(k)) is not None}
        todo = {k: r for k, r in zip(keys, requests) if k not in done}
        def fetch(key: str, request: tuple[str, dict]) -> dict:
            response = self._send(*request)
            self.cache.put(key, response)  # kept as it arrives: a run that dies after it never asks again
            return response

        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = {pool.submit(fetch, k, r): k for k, r in todo.items()}
            for f in as_completed(futures):
                done[futures[f]] = f.result()
        return [Generation(done[k]["text"], done[k]["logprobs"], s, self.format.render(p), [], done[k]["finished"])
                for k, p, s in zip(keys, prompts, seeds)]

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[list[float]]:
        raise NotImplementedError("the openai backend cannot score a given completion: OpenAI-compatible "
                                  "endpoints return log-probabilities only of what they generate")

    def close(self) -> None:
        self.client.close()
