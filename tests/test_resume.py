"""Kill a run with SIGKILL at any moment, resume it, and get the same results with no sample lost or duplicated."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from evolvelm.store.run import STAGES, Run


def evolvelm(*args, env=None, timeout=120):
    """The CLI with the default SIGINT handling a terminal gives (a shell's background job, such as a
    suite started with `&`, ignores SIGINT, and Python then leaves it ignored)."""
    return subprocess.run([sys.executable, "-m", "evolvelm.cli", *args, "-q"], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def outcome(run_dir):
    """Summary without timings, and every stored sample id and verdict."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("wall_seconds")
    for r in summary["rounds"]:
        r.pop("seconds")
    run = Run.open(run_dir)
    ids = [r["id"] for r in run.query("SELECT id FROM samples ORDER BY id")]
    verdicts = [tuple(r) for r in run.query("SELECT sample_id, filter, kept FROM verdicts ORDER BY 1, 2")]
    return summary, ids, verdicts


@pytest.fixture
def reference(tmp_path, fake_recipe):
    out = evolvelm("run", str(fake_recipe), "--run-dir", str(tmp_path / "ref"))
    assert out.returncode == 0, out.stderr
    return outcome(tmp_path / "ref")


@pytest.mark.parametrize("point", ["before-rename", "before-manifest", "after-manifest"])
def test_kill_at_every_stage_boundary_then_resume(tmp_path, fake_recipe, reference, point):
    for stage in STAGES:
        run_dir = tmp_path / f"run-{stage}-{point}"
        killed = evolvelm("run", str(fake_recipe), "--run-dir", str(run_dir), env={"EVOLVELM_KILL_AT": f"2:{stage}:{point}"})
        assert killed.returncode == -signal.SIGKILL
        resumed = evolvelm("resume", str(run_dir))
        assert resumed.returncode == 0, resumed.stderr
        assert outcome(run_dir) == reference
        assert not list(run_dir.rglob(".staging-*"))


def test_kill_at_random_moments_then_resume(tmp_path, fake_recipe):
    bigger = ["rounds=5", "acquire.problems=300", "eval.problems=100"]  # a few seconds uninterrupted
    assert evolvelm("run", str(fake_recipe), *bigger, "--run-dir", str(tmp_path / "ref")).returncode == 0
    reference = outcome(tmp_path / "ref")
    rng = random.Random(0)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "evolvelm.cli", "run", str(fake_recipe), *bigger, "--run-dir", str(run_dir), "-q"]
    kills = 0
    for attempt in range(60):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.2) + 0.2 * attempt)  # growing, so a slow machine still progresses
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if (run_dir / "config.yaml").exists():
            cmd = [sys.executable, "-m", "evolvelm.cli", "resume", str(run_dir), "-q"]
    assert proc.returncode == 0 and kills >= 2
    assert outcome(run_dir) == reference


def test_ctrl_c_exits_130_and_the_run_resumes(tmp_path, fake_recipe, reference):
    """A Ctrl-C just after round 1's acquisition is committed (sent by the run to itself, so that it
    always arrives mid-run): exit 130, the resume command printed, and the resumed run is the reference."""
    run_dir = tmp_path / "run"
    out = evolvelm("run", str(fake_recipe), "--run-dir", str(run_dir),
                   env={"EVOLVELM_KILL_AT": "1:acquire:after-manifest", "EVOLVELM_KILL_SIGNAL": "SIGINT"})
    assert out.returncode == 130 and f"evolvelm resume {run_dir}" in out.stderr
    assert not (run_dir / "rounds/0001/refine").exists()
    assert evolvelm("resume", str(run_dir)).returncode == 0
    assert outcome(run_dir) == reference


def test_kill_a_run_with_voters_then_resume(tmp_path, fake_recipe):
    """Every member's weights of an update stage land together, or none do."""
    from evolvelm.backends import fake

    voters = [str(fake.write(tmp_path / f"voter{i}", {"copy": 4, "reverse": 4}, seed=i)) for i in (1, 2)]
    extra = [f"model.voters={voters}", "refine.chain=[length, model_vote, dedup]", "acquire.samples=1"]
    assert evolvelm("run", str(fake_recipe), *extra, "--run-dir", str(tmp_path / "ref")).returncode == 0
    for point in ("2:update:before-rename", "2:update:before-manifest", "2:eval:before-manifest"):
        run_dir = tmp_path / point.replace(":", "-")
        killed = evolvelm("run", str(fake_recipe), *extra, "--run-dir", str(run_dir), env={"EVOLVELM_KILL_AT": point})
        assert killed.returncode == -signal.SIGKILL
        assert evolvelm("resume", str(run_dir)).returncode == 0
        assert outcome(run_dir) == outcome(tmp_path / "ref")
        assert (run_dir / "rounds/0002/update/voter2/fake.json").is_file()
