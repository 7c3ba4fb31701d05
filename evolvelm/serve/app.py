"""The OpenAI-compatible HTTP side of `evolvelm serve` (FastAPI; uvicorn runs it).

    GET  /v1/models                 the served names
    POST /v1/completions            raw text prompts (no chat template), `logprobs` = top-k per token
    POST /v1/chat/completions       messages through the model's chat template, `logprobs`/`top_logprobs`
    POST /v1/load_lora_adapter      {"lora_name", "lora_path"}: serve an adapter (with --allow-loading)
    POST /v1/unload_lora_adapter    {"lora_name"}

Sampling is seeded like every evolvelm backend: `seed` (default 0 when greedy, random otherwise) and
choice k of `n` uses seed + k, so a request repeated with its seed gets the same answers. Errors come
back as OpenAI's error object with a 4xx status; a failure inside generation is a 500 for that
request, never a crash of the server.
"""
from __future__ import annotations

import asyncio
import hmac
import random
import time
import uuid
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from evolvelm.serve import Batcher, Row, Served, Settings


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Sampling(BaseModel):
    """The fields both endpoints share. Unsupported OpenAI options are refused, not ignored."""

    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=64)
    stream: bool = False
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


class CompletionRequest(Sampling):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class LoadAdapter(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: str = ""


def make_app(served: Served, api_key: str | None = None, allow_loading: bool = False,
             batch_rows: int = 64) -> FastAPI:
    """The server over `served`; with `api_key`, every request must carry it as a bearer token."""
    batcher = Batcher(served, rows=batch_rows)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="evolvelm", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.served, app.state.batcher = served, batcher

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError):
        kind = {401: "authentication_error", 404: "invalid_request_error"}.get(e.status, "invalid_request_error")
        return JSONResponse(error_body(e.message, kind, e.code, e.param), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError):
        first = e.errors()[0]
        param = ".".join(str(x) for x in first["loc"] if x != "body")
        return JSONResponse(error_body(f"{param}: {first['msg']}", "invalid_request_error", "invalid_value", param),
                            status_code=400)

    async def authorized(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "a valid API key is required (Authorization: Bearer KEY)", "invalid_api_key")

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        base = next(iter(served.names))  # loaded adapters name their parent, as vLLM's model cards do
        return {"object": "list", "data": [{"id": name, "object": "model", "created": served.created,
                                            "owned_by": "evolvelm", "parent": base if name in served.loaded else None}
                                           for name in served.names]}

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(req: CompletionRequest):
        check(req, served)
        if req.echo:
            raise ApiError(400, "echo is not supported by evolvelm serve", "unsupported", "echo")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise ApiError(400, "prompt: at least one prompt is needed", "invalid_value", "prompt")
        ids = [served.format.raw_ids(p) for p in prompts]
        gens = await generate(req, ids, prompts, req.max_tokens, req.logprobs or 0)
        choices = [{"index": i, "text": g.text, "finish_reason": "stop" if g.finished else "length",
                    "logprobs": None if req.logprobs is None else text_logprobs(served, g)}
                   for i, g in enumerate(gens)]
        return response("cmpl", "text_completion", req.model, choices, ids, gens, req.n)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat(req: ChatRequest):
        check(req, served)
        messages = [m.model_dump() for m in req.messages]
        try:
            ids = [served.format.chat_ids(messages)]
        except ValueError as e:
            raise ApiError(400, f"{e}; use /v1/completions", "no_chat_template") from e
        last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
        limit = req.max_completion_tokens or req.max_tokens or max(1, min(512, served.context - len(ids[0])))
        top = (req.top_logprobs or 0) if req.logprobs else 0
        gens = await generate(req, ids, [last], limit, top)
        choices = [{"index": i, "message": {"role": "assistant", "content": g.text},
                    "finish_reason": "stop" if g.finished else "length",
                    "logprobs": {"content": chat_logprobs(served, g)} if req.logprobs else None}
                   for i, g in enumerate(gens)]
        return response("chatcmpl", "chat.completion", req.model, choices, ids, gens, req.n)

    async def generate(req: Sampling, ids: list[list[int]], texts: list[str], max_tokens: int, top: int):
        for row in ids:
            if len(row) + max_tokens > served.context:
                raise ApiError(400, f"this model's context is {served.context} tokens; the prompt has {len(row)} "
                                    f"and max_tokens asks for {max_tokens} more", "context_length_exceeded")
        seed = req.seed if req.seed is not None else (0 if req.temperature == 0 else random.randrange(2**31))
        rows = [Row(i, seed + k, t) for i, t in zip(ids, texts) for k in range(req.n)]
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        settings = Settings(req.model, req.temperature, max_tokens, stop, top)
        try:
            return await asyncio.wrap_future(batcher.submit(settings, rows))
        except ApiError:
            raise
        except Exception as e:
            raise ApiError(500, f"generation failed: {type(e).__name__}: {e}", "internal_error") from e

    @app.post("/v1/load_lora_adapter", dependencies=[Depends(authorized)])
    async def load_adapter(req: LoadAdapter):
        if not allow_loading:
            raise ApiError(403, "adapter loading is off; start the server with --allow-loading", "forbidden")
        try:
            await asyncio.wrap_future(batcher.call(lambda: served.add(req.lora_name, req.lora_path)))
        except (ValueError, OSError) as e:
            raise ApiError(400, f"cannot load {req.lora_path!r}: {e}", "invalid_adapter", "lora_path") from e
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter", dependencies=[Depends(authorized)])
    async def unload_adapter(req: LoadAdapter):
        if not allow_loading:
            raise ApiError(403, "adapter loading is off; start the server with --allow-loading", "forbidden")
        if not await asyncio.wrap_future(batcher.call(lambda: served.remove(req.lora_name))):
            raise ApiError(404, f"no loaded adapter {req.lora_name!r}", "model_not_found", "lora_name")
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    return app


def check(req: Sampling, served: Served) -> None:
    """4xx for a request this server cannot answer as asked."""
    if req.model not in served.names:
        raise ApiError(404, f"the model {req.model!r} does not exist; served: {sorted(served.names)}",
                       "model_not_found", "model")
    for name, default in (("stream", False), ("top_p", 1.0), ("presence_penalty", 0.0), ("frequency_penalty", 0.0)):
        if getattr(req, name) != default:
            raise ApiError(400, f"{name} is not supported by evolvelm serve (leave it at {default})", "unsupported", name)


def response(prefix: str, kind: str, model: str, choices: list[dict], ids: list[list[int]], gens, n: int) -> dict:
    prompt = sum(len(i) for i in ids) * n
    done = sum(len(g.tokens) for g in gens)
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model,
            "choices": choices, "usage": {"prompt_tokens": prompt, "completion_tokens": done,
                                          "total_tokens": prompt + done}}


def _tokens(served: Served, g):
    """The answer's tokens as (text, logprob, the likeliest [(text, logprob)]), its end token left out."""
    n = len(g.tokens) - (1 if g.tokens and g.tokens[-1] in served.format.stop_ids else 0)
    piece = lambda i: served.tokenizer.decode([i])
    top = g.top or [[] for _ in g.tokens]
    return [(piece(t), lp, [(piece(i), v) for i, v in best]) for t, lp, best in zip(g.tokens[:n], g.logprobs, top)]


def text_logprobs(served: Served, g) -> dict:
    """Completions' logprobs object: tokens, token_logprobs, top_logprobs, text_offset."""
    toks = _tokens(served, g)
    offsets, at = [], 0
    for text, _, _ in toks:
        offsets.append(at)
        at += len(text)
    return {"tokens": [t for t, _, _ in toks], "token_logprobs": [lp for _, lp, _ in toks],
            "top_logprobs": [dict(best) for _, _, best in toks] if g.top else None, "text_offset": offsets}


def chat_logprobs(served: Served, g) -> list[dict]:
    """Chat's logprobs.content: per token its text, logprob, bytes and top_logprobs."""
    item = lambda t, lp: {"token": t, "logprob": lp, "bytes": list(t.encode())}
    return [item(t, lp) | {"top_logprobs": [item(a, v) for a, v in best]} for t, lp, best in _tokens(served, g)]
