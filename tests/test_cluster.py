"""Ray fan-out on a local Ray cluster: the answers of one process, a killed worker loses nothing, and a
worker serving the wrong weights stops the stage."""
import os
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray fan-out needs ray (pip install 'evolvelm[ray]')")

from evolvelm import config  # noqa: E402
from evolvelm.backends import cluster  # noqa: E402
from evolvelm.backends.check import ServedWeightsError  # noqa: E402
from evolvelm.backends.hf import HFBackend  # noqa: E402
from evolvelm.cli import main  # noqa: E402
from evolvelm.config import ConfigError  # noqa: E402
from evolvelm.models import resolve  # noqa: E402
from test_models import LADDER  # noqa: E402
from test_resume import outcome  # noqa: E402
from test_serve import random_adapter  # noqa: E402

PROMPTS = [f"{'CR'[i % 2]}{'abcdefgh'[:1 + i % 8]}{'xyz'[i % 3]}=" for i in range(160)]
SEEDS = list(range(len(PROMPTS)))


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    cluster.connect("local")
    yield
    cluster.shutdown()
    ray.shutdown()


def kill_worker_after(pool_of, batches: int, which: int = 1) -> threading.Thread:
    """SIGKILL one worker process once `batches` batches of the stage are done (a real crash mid-stage)."""
    def kill():
        while not (pool := pool_of()) or pool.done < batches:
            time.sleep(0.002)
        info = pool.info()[which]
        os.kill(info["pid"], signal.SIGKILL)
        kill.killed, kill.adapters = True, info["adapters"]
    kill.killed = False
    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    thread.result = kill
    return thread


def same(a, b):
    assert [(g.text, g.seed, g.tokens) for g in a] == [(g.text, g.seed, g.tokens) for g in b]
    # one process runs 2 torch threads, a worker 1: the log-probs agree to float rounding, not bit for bit
    assert max(abs(x - y) for g, h in zip(a, b) for x, y in zip(g.logprobs, h.logprobs)) < 1e-4


def test_two_workers_answer_as_one_process_and_a_killed_worker_is_replaced_serving_the_adapter(tmp_path):
    base = resolve("zoo:copy-reverse")
    adapter = str(random_adapter(base, tmp_path / "adapter"))
    local = HFBackend(base, adapter=adapter, batch_size=8)
    want, scores = local.generate(PROMPTS, SEEDS, 1.0, 12), local.logprobs(PROMPTS, [p[1:-1] for p in PROMPTS])
    remote = cluster.RayBackend(base, batch_size=8, workers=2, cpus=1)
    assert remote.version == local._base_version
    remote.load_adapter(adapter)
    assert remote.version == local.version
    same(remote.generate(PROMPTS, SEEDS, 1.0, 12), want)
    assert max(abs(x - y) for r, s in zip(remote.logprobs(PROMPTS, [p[1:-1] for p in PROMPTS]), scores)
               for x, y in zip(r, s)) < 1e-4
    # a worker dies mid-generation; its replacement must serve the adapter, not the base it starts from
    pool, done = remote.pool, remote.pool.done
    killer = kill_worker_after(lambda: pool, done + 3)
    again = remote.generate(PROMPTS, SEEDS, 1.0, 12)
    killer.join(5)
    assert killer.result.killed and pool.restarts == 1
    assert not Path(killer.result.adapters).exists()  # what the killed worker received goes with it
    same(again, want)
    assert again != HFBackend(base, batch_size=8).generate(PROMPTS, SEEDS, 1.0, 12)  # the adapter matters
    remote.close()


def test_a_worker_serving_other_weights_stops_the_stage(tmp_path):
    base = resolve("zoo:copy-reverse")
    adapter = str(random_adapter(base, tmp_path / "adapter"))
    remote = cluster.RayBackend(base, adapter=adapter, batch_size=8, workers=2, cpus=1)
    ray.get(remote.pool.workers[0].serve.remote(None))  # its adapter lost behind the pool's back (a failed sync)
    with pytest.raises(ServedWeightsError, match="Ray workers serve .* not .*adapter"):
        remote.generate(PROMPTS, SEEDS, 0.0, 12)
    received = [w["adapters"] for w in remote.pool.info()]
    assert all(Path(d).is_dir() for d in received)
    remote.close()
    cluster.shutdown()
    assert not any(Path(d).exists() for d in received)  # the adapters the workers received go with them


def test_a_run_on_two_workers_stores_what_one_process_stores_even_when_a_worker_dies(tmp_path):
    args = ["run", "copy-ladder", "model.path=zoo:copy-reverse", *LADDER, "rounds=1", "model.batch_size=4", "-q"]
    assert main([*args, "--run-dir", str(tmp_path / "one")]) == 0
    killer = kill_worker_after(lambda: cluster.POOLS[0] if cluster.POOLS else None, 2, which=0)
    assert main([*args, "cluster.address=local", "cluster.workers=2", "--run-dir", str(tmp_path / "two")]) == 0
    killer.join(5)
    assert killer.result.killed and not Path(killer.result.adapters).exists()
    assert outcome(tmp_path / "two") == outcome(tmp_path / "one")
    assert not cluster.POOLS  # the run's workers stop with it


def test_validate_refuses_what_ray_workers_cannot_do():
    for bad, why in [(["model.backend=openai", "model.base_url=http://x/v1"], "hf or fake backend"),
                     (["cluster.workers=0"], "workers must be >= 1")]:
        with pytest.raises(ConfigError, match=why):
            config.load("copy-ladder", ["cluster.address=local", *bad])
    with pytest.raises(ConfigError, match="reads the model's weights"):
        config.load("modular-skills", ["cluster.address=local"])
    with pytest.raises(RuntimeError, match="need"):
        cluster.RayBackend(resolve("zoo:copy-reverse"), workers=64, cpus=1)


def test_a_code_checker_runs_on_the_cluster_with_the_verdicts_and_errors_of_one_process():
    """A run with a cluster checks programs on it (`cluster.fan_out_checks`): the same verdicts as this
    process, from other processes; a checker's errors from every share are merged as one process names them."""
    from evolvelm.tasks import data
    from evolvelm.tasks.checkers import CheckerError, get_checker

    rows = [data.Row(f"add {i}", "", None, {"test_list": [f"assert add({i}, 1) == {i + 1}"]}) for i in range(6)]
    programs = ["def add(a, b):\n    return a - b" if i % 3 == 0 else "def add(a, b):\n    return a + b" for i in range(6)]
    untested = [data.Row(r.prompt, "", None, {"other": 1}) for r in rows]
    code = get_checker("code")
    here = data.check(code, rows, programs)
    with pytest.raises(CheckerError) as one:
        data.check(code, untested, programs)
    cluster.fan_out_checks(config.load("lmsi", ["cluster.address=local", "cluster.workers=2"]))
    try:
        assert data.check(code, rows, programs) == here == [i % 3 != 0 for i in range(6)]
        assert data.FAN_OUT.pids and os.getpid() not in data.FAN_OUT.pids
        with pytest.raises(CheckerError) as both:
            data.check(code, untested, programs)
    finally:
        cluster.fan_out_checks(config.load("lmsi"))
    assert str(both.value) == str(one.value) and both.value.failures == one.value.failures and len(one.value.failures) == 6
    assert data.FAN_OUT is None
