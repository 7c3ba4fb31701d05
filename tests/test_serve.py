"""`evolvelm serve`: the official `openai` client against the server on loopback, over a run's
evolved model (a LoRA round on the shipped reverse model) and over SmolLM2 with its chat template."""
from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from evolvelm import config  # noqa: E402
from evolvelm.config import ConfigError  # noqa: E402
from evolvelm.models import resolve  # noqa: E402
from evolvelm.report.export import answerer, last_state  # noqa: E402
from evolvelm.serve import open_served  # noqa: E402
from evolvelm.serve.app import make_app  # noqa: E402
from evolvelm.store.run import Run  # noqa: E402

pytestmark = pytest.mark.integration
SMOL = "zoo:smollm2-135m-instruct"


@contextmanager
def serving(served, **options):
    """A uvicorn server over `served` on a free loopback port, and a client for it."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(make_app(served, **options), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    try:
        yield openai.OpenAI(base_url=url, api_key=options.get("api_key") or "none", max_retries=0), url
    finally:
        server.should_exit = True
        thread.join()


@pytest.fixture(scope="module")
def smol():
    try:
        resolve(SMOL)
    except ConfigError as e:
        pytest.skip(str(e))
    return open_served(SMOL)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """One promoted LoRA round of the reverse ladder on zoo:copy-reverse."""
    from evolvelm.recipes.ladder import run_recipe

    cfg = config.load("copy-ladder", [
        "rounds=1", "skills=[reverse]", "update.method=lora", "update.steps=30", "update.original=200",
        "acquire.problems=40", "acquire.samples=2", "eval.max_difficulty=9", "eval.problems=20",
        "eval.dev_problems=10", "acquire.schedule=fixed", "acquire.step=1"])
    run = Run.create(tmp_path_factory.mktemp("serve") / "run", cfg)
    run_recipe(cfg, run, quiet=True)
    assert last_state(run).adapter, "the round was meant to be promoted"
    return run


PROMPTS = ["Rabcdefg=", "Rqwertyuio=", "Rxyz=", "Rmnbvcxzlkj="]


def test_a_runs_evolved_model_answers_as_evolvelm_generate_does_and_adapters_load_by_name(lora_run, tmp_path):
    ours = [answer for _, answer, _ in answerer(lora_run)(PROMPTS, 14)]
    served = open_served(str(lora_run.root))
    with serving(served, allow_loading=True) as (client, _):
        assert sorted(m.id for m in client.models.list().data) == sorted([lora_run.root.name, "base"])
        got = client.completions.create(model=lora_run.root.name, prompt=PROMPTS, max_tokens=14, temperature=0)
        assert [c.text for c in got.choices] == ours
        base = client.completions.create(model="base", prompt=PROMPTS, max_tokens=14, temperature=0)
        assert [c.text for c in base.choices] != ours  # the adapter is what answers under the run's name
        # an adapter loaded under a name answers as that adapter; reloading the name replaces its weights
        adapter = resolve(last_state(lora_run).adapter, lora_run)
        client.post("/load_lora_adapter", body={"lora_name": "again", "lora_path": adapter}, cast_to=str)
        again = client.completions.create(model="again", prompt=PROMPTS, max_tokens=14, temperature=0)
        assert [c.text for c in again.choices] == ours
        other = random_adapter(resolve("zoo:copy-reverse"), tmp_path / "random")
        client.post("/load_lora_adapter", body={"lora_name": "again", "lora_path": str(other)}, cast_to=str)
        fresh = client.completions.create(model="again", prompt=PROMPTS, max_tokens=14, temperature=0)
        assert [c.text for c in fresh.choices] == reference(resolve("zoo:copy-reverse"), other, PROMPTS, 14)
        assert [c.text for c in fresh.choices] != ours
        with pytest.raises(openai.BadRequestError, match="one of the models this server started with"):
            client.post("/load_lora_adapter", body={"lora_name": "base", "lora_path": str(other)}, cast_to=str)


def random_adapter(base: str, out, seed: int = 1):
    """A LoRA adapter whose weights are random (not the zero B of a fresh one): it changes answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    from evolvelm.models import load_model

    torch.manual_seed(seed)
    model = get_peft_model(load_model(base), LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(out)
    return out


def reference(base: str, adapter, prompts, max_tokens):
    from evolvelm.backends.hf import HFBackend

    return [g.text for g in HFBackend(base, adapter=str(adapter)).generate(prompts, [0] * len(prompts), 0.0, max_tokens)]


def test_chat_completions_are_the_hf_backends_answers_for_the_same_seeds(smol):
    from evolvelm.backends.hf import HFBackend

    questions = ["What is 12 + 7? Answer with just the number.", "Name a colour."]
    hf = HFBackend(resolve(SMOL))
    greedy = hf.generate(questions, [0, 0], 0.0, 12)
    sampled = hf.generate([questions[1]] * 3, [5, 6, 7], 0.8, 12)
    with serving(smol) as (client, _):
        for q, g in zip(questions, greedy):
            r = client.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": q}],
                                               temperature=0, max_tokens=12, logprobs=True, top_logprobs=3)
            choice = r.choices[0]
            assert choice.message.content == g.text and r.usage.completion_tokens == len(g.tokens)
            tokens = choice.logprobs.content
            assert "".join(t.token for t in tokens) == g.text
            assert [t.logprob for t in tokens] == pytest.approx(g.logprobs[:len(tokens)], abs=1e-4)
            assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-6 and len(t.top_logprobs) == 3 for t in tokens)
        r = client.chat.completions.create(model="smollm2-135m-instruct", n=3, seed=5, temperature=0.8, max_tokens=12,
                                           messages=[{"role": "user", "content": questions[1]}])
        assert [c.message.content for c in r.choices] == [g.text for g in sampled]
        r = client.completions.create(model="smollm2-135m-instruct", prompt="The capital of France is",
                                      max_tokens=4, temperature=0, logprobs=2)
        raw = hf.generate_ids([hf.format.raw_ids("The capital of France is")], [0], 0.0, 4)[0]
        assert r.choices[0].text == raw.text and r.choices[0].finish_reason == "length"
        assert r.choices[0].logprobs.token_logprobs == pytest.approx(raw.logprobs, abs=1e-4)


def test_concurrent_clients_are_batched_into_fewer_generate_calls_with_the_same_answers(smol):
    calls = []
    original = smol.generate
    smol.generate = lambda s, rows: calls.append(len(rows)) or original(s, rows)
    try:
        questions = [f"What is {a} + {a + 1}? Answer with just the number." for a in range(8)]
        with serving(smol) as (client, _):
            ask = lambda q: client.chat.completions.create(
                model="smollm2-135m-instruct", messages=[{"role": "user", "content": q}], temperature=0,
                max_tokens=6).choices[0].message.content
            alone = [ask(q) for q in questions]
            calls.clear()
            with ThreadPoolExecutor(8) as pool:
                together = list(pool.map(ask, questions))
    finally:
        smol.generate = original
    assert together == alone and sum(calls) == 8 and len(calls) < 8, calls


def test_bad_requests_get_4xx_with_a_message_and_the_server_goes_on(smol):
    model = "smollm2-135m-instruct"
    with serving(smol, api_key="s3cret") as (client, url):
        denied = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="valid API key"):
            denied.models.list()
        with pytest.raises(openai.NotFoundError, match="'gpt-9' does not exist; served"):
            client.completions.create(model="gpt-9", prompt="hi")
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            client.completions.create(model=model, prompt="hi", max_tokens=-1)
        with pytest.raises(openai.BadRequestError, match="context is 8192 tokens; the prompt has"):
            client.completions.create(model=model, prompt="hi " * 9000, max_tokens=4)
        with pytest.raises(openai.BadRequestError, match="stream is not supported"):
            client.completions.create(model=model, prompt="hi", stream=True)
        with pytest.raises(openai.BadRequestError, match="messages"):
            client.chat.completions.create(model=model, messages=[])
        with pytest.raises(openai.PermissionDeniedError, match="--allow-loading"):
            client.post("/load_lora_adapter", body={"lora_name": "x", "lora_path": "/tmp"}, cast_to=str)
        r = client.completions.create(model=model, prompt="1, 2, 3,", max_tokens=3, temperature=0)
        assert r.choices[0].text


LADDER = ["rounds=2", "skills=[reverse]", "model.voters=[]", "update.method=lora", "update.steps=20",
          "update.original=100", "acquire.problems=12", "acquire.samples=2", "eval.max_difficulty=9",
          "eval.problems=10", "eval.dev_problems=6", "acquire.schedule=fixed", "acquire.step=1"]


def comparable(summary: dict) -> list[dict]:
    """What two runs of one recipe must agree on (timings left out)."""
    keep = ("round", "promoted", "frontier", "accuracy", "acquired", "kept", "model_version")
    return [{k: r[k] for k in keep if k in r} for r in summary["rounds"]]


def test_the_openai_backend_runs_a_recipe_against_evolvelm_serve_as_hf_does_and_a_resumed_run_asks_nothing_twice(
        tmp_path, monkeypatch):
    """A 2-round LoRA ladder through the endpoint (each round's adapter loaded into it by name) gives
    the summary and the samples of the same recipe on the hf backend. Killed mid-acquisition and
    resumed, it sends every request once: the responses it had are read from the run's cache."""
    from evolvelm.backends.openai import OpenAIBackend
    from evolvelm.recipes.ladder import run_recipe

    cfg = config.load("copy-ladder", LADDER)
    hf = Run.create(tmp_path / "hf", cfg)
    expected = run_recipe(cfg, hf, quiet=True)

    served = open_served("zoo:copy-reverse")
    asked, original = [], served.generate
    served.generate = lambda s, rows: asked.extend((s, tuple(r.ids), r.seed) for r in rows) or original(s, rows)
    with serving(served, allow_loading=True) as (_, url):
        cfg = config.load("copy-ladder", LADDER + ["model.backend=openai", f"model.base_url={url}"])
        run = Run.create(tmp_path / "openai", cfg)
        send, calls = OpenAIBackend._send, []

        def crash_after_40(self, endpoint, body):
            calls.append(1)
            if len(calls) > 40:
                raise KeyboardInterrupt  # the process dies with requests in flight
            return send(self, endpoint, body)

        monkeypatch.setattr(OpenAIBackend, "_send", crash_after_40)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(cfg, run, quiet=True)
        monkeypatch.setattr(OpenAIBackend, "_send", send)
        before = len(asked)
        got = run_recipe(cfg, Run.open(run.root), quiet=True)
    assert before >= 40 and len(asked) > before
    probes = [a for a in asked if a[0].max_tokens == 1]  # the served-weights check's, asked afresh at each load
    assert probes and len(probes) % 4 == 0
    asked = [a for a in asked if a[0].max_tokens != 1]
    assert len(set(asked)) == len(asked), "a request was sent twice"
    assert comparable(got) == comparable(expected)
    assert any(r["promoted"] for r in got["rounds"][1:])  # an adapter was loaded into the endpoint and used
    for r in (1, 2):
        ours = [(s.prompt, s.completion, s.seed, s.rendered) for s in Run.open(run.root).samples(r)]
        assert ours == [(s.prompt, s.completion, s.seed, s.rendered) for s in hf.samples(r)]


def test_validate_names_what_the_openai_backend_needs(capsys):
    from evolvelm.cli import main

    assert main(["validate", "copy-ladder", "model.backend=openai"]) == 2
    assert "model.base_url: the openai backend needs the endpoint's URL" in capsys.readouterr().err
    assert main(["validate", "modular-skills", "model.backend=openai", "model.base_url=http://127.0.0.1:1/v1"]) == 2
    assert "it needs the hf backend" in capsys.readouterr().err
    assert main(["validate", "copy-ladder", "model.backend=openai", "model.base_url=http://127.0.0.1:1/v1"]) == 0


def test_an_endpoint_serving_a_stale_adapter_under_the_rounds_name_stops_the_backend(tmp_path, monkeypatch):
    """vLLM's stale-LoRA bug, played by `evolvelm serve`: a name loaded before keeps its old weights
    when loaded again. The served-weights check catches it; on an honest server the check passes."""
    from evolvelm.backends.check import ServedWeightsError
    from evolvelm.backends.openai import OpenAIBackend
    from evolvelm.store.hashing import dir_hash

    base = resolve("zoo:copy-reverse")
    right, stale = random_adapter(base, tmp_path / "right"), tmp_path / "stale"
    served = open_served("zoo:copy-reverse")
    with serving(served, allow_loading=True) as (client, url):
        OpenAIBackend(base, adapter=str(right), base_url=url).close()  # an honest load passes the check
        random_adapter(base, stale, seed=7)  # other weights, loaded under the right adapter's name
        client.post("/load_lora_adapter", body={"lora_name": f"evolvelm-{dir_hash(right)}", "lora_path": str(stale)},
                    cast_to=str)
        add = served.add
        monkeypatch.setattr(served, "add", lambda name, path: None if name in served.loaded else add(name, path))
        with pytest.raises(ServedWeightsError, match="is not adapter"):
            OpenAIBackend(base, adapter=str(right), base_url=url)
