"""The update stage over several processes under `accelerate launch` (DDP on CPU, gloo): the weights
equal one process's, a whole run's results too, and only process 0 runs the recipe.

Run as a script (`accelerate launch tests/test_parallel.py OUT.json`), this file trains LoRA SFT,
full SFT and DPO through `parallel.fit` and writes the losses and weights to OUT.json."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
ACCELERATE = Path(sys.executable).parent / "accelerate"
LAUNCH = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]
WORDS = ["abc", "hello", "zzyq", "mnop", "qrs", "tuvwx", "ab", "pqrst"]


def fits(out: str) -> None:
    """Train three ways through parallel.fit (on every launched process) and save process 0's results."""
    import torch

    from evolvelm.models import resolve
    from evolvelm.prompts import PromptFormat
    from evolvelm.types import Example
    from evolvelm.update import dpo, parallel, sft

    base = resolve("zoo:copy-reverse")
    fmt = PromptFormat.load(base, "auto")
    examples = [Example(f"R{w}=", w[::-1] + "x") for w in WORDS]  # a new habit: an x after the reversed word
    pairs = [(f"R{w}=", w[::-1] + "x", w[::-1]) for w in WORDS]
    load = {"base": base, "parent_adapter": None, "lora_r": 4, "lora_alpha": 8, "seed": 3, "device": "cpu", "dtype": "float32"}
    results = {}
    for name, method, fn, data, args in [("lora", "lora", sft.train, examples, (12, 6, 3e-3)),
                                        ("full", "full", sft.train, examples, (12, 6, 1e-3)),
                                        ("dpo", "lora", dpo.train, pairs, (8, 6, 3e-3, 0.5))]:
        model, losses = parallel.fit(fn, load | {"method": method}, fmt, data, *args, seed=1, warmup=2, quiet=True,
                                     **({"rpo_alpha": 1.0} if fn is dpo.train else {}))
        trained = {k: v for k, v in model.state_dict().items() if method == "full" or "lora_" in k}
        results[name] = {"losses": losses, "weights": {k: v.flatten().tolist() for k, v in trained.items()}}
    try:
        parallel.fit(sft.train, load | {"method": "lora"}, fmt, examples, 2, 1, 1e-3, seed=1, quiet=True)
    except ValueError as e:  # a batch of 1 cannot be shared by 2 processes
        results["error"] = str(e)
    if parallel.rank() == 0:
        Path(out).write_text(json.dumps(results))
    torch.distributed.destroy_process_group() if parallel.world() > 1 else None


def launched(*argv, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*LAUNCH, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.mark.integration
def test_two_processes_train_the_weights_one_process_trains(tmp_path):
    fits(str(tmp_path / "one.json"))
    out = launched(str(HERE), str(tmp_path / "two.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert "error" not in one and "smaller than the 2 processes" in two["error"]
    for name in ("lora", "full", "dpo"):
        a, b = one[name], two[name]
        assert len(a["losses"]) == len(b["losses"]) and a["losses"][-1] < a["losses"][0]  # it learned
        assert max(abs(x - y) for x, y in zip(a["losses"], b["losses"])) < 1e-4, name
        assert a["weights"].keys() == b["weights"].keys()
        moved = max(abs(x) for w in a["weights"].values() for x in w)
        diff = max(abs(x - y) for k in a["weights"] for x, y in zip(a["weights"][k], b["weights"][k]))
        assert diff < 1e-4 < moved, (name, diff, moved)  # each process's gradients were shared, and equal one's


@pytest.mark.integration
def test_a_run_under_accelerate_launch_equals_one_process(tmp_path):
    from test_models import LADDER
    from test_resume import outcome

    args = ["run", "copy-ladder", *LADDER, "update.steps=8", "--quiet"]
    one = subprocess.run([sys.executable, "-m", "evolvelm", *args, "--run-dir", "one"], capture_output=True,
                         text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launched("-m", "evolvelm", *args, "--run-dir", "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("run two:") == 1  # one process ran the recipe
    a, b = outcome(tmp_path / "one"), outcome(tmp_path / "two")
    for r in a[0]["rounds"] + b[0]["rounds"]:
        r.pop("model_version")  # a hash of the weights, which agree to float summation order
    assert a == b
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # nothing else was written
    bad = launched("-m", "evolvelm", "run", "copy-ladder", *LADDER, "update.batch_size=1", "--run-dir", "bad", cwd=tmp_path)
    assert bad.returncode != 0 and "update.batch_size 1 is smaller than the 2 processes" in bad.stderr
    assert not (tmp_path / "bad").exists()


if __name__ == "__main__":
    fits(sys.argv[1])
