"""The round engine end to end on the fake backend: output tree, summary, gate, provenance."""
import json

import pytest

from evolvelm import config
from evolvelm.backends import fake
from evolvelm.cli import main
from evolvelm.recipes.ladder import next_attempt, run_recipe, strictness
from evolvelm.store.run import Run
from evolvelm.tasks import get_task
from evolvelm.update.mixture import mixture, original_data
from evolvelm.types import Member, State


def start(tmp_path, recipe, *overrides):
    cfg = config.load(recipe, list(overrides))
    return cfg, Run.create(tmp_path / "run", cfg)


def test_output_tree_and_summary_schema(tmp_path, fake_recipe):
    cfg, run = start(tmp_path, fake_recipe)
    summary = run_recipe(cfg, run, quiet=True)
    root = run.root
    assert (root / "config.yaml").is_file() and (root / "store.sqlite").is_file()
    assert json.loads((root / "summary.json").read_text()) == summary
    for rnd in (1, 2, 3):
        assert (root / "rounds" / f"{rnd:04d}" / "update" / "model" / "fake.json").is_file()
    assert not list(root.rglob(".staging-*"))
    stages = [(m["round"], m["stage"]) for m in run.manifest()]
    assert stages[:2] == [(0, "eval"), (0, "gate")] and len(stages) == 2 + 5 * 3

    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3] and rounds[0]["acquired"] == 0
    for r in rounds:
        assert set(r) >= {"round", "promoted", "frontier", "accuracy", "acquired", "kept", "label_precision"}
        assert set(r["frontier"]) == {"copy", "reverse"}
        assert set(r["accuracy"]["copy"]) == {str(d) for d in range(1, 10)}  # JSON keys
    assert rounds[0]["frontier"] == {"copy": 4, "reverse": 4}
    # the fake learns one level per round from precise labels, and the summary sees it
    assert summary["final_frontier"] == {"copy": 7, "reverse": 7}
    assert all(r["promoted"] and r["label_precision"] >= 0.95 for r in rounds[1:])
    assert summary["wall_seconds"] >= 0


def test_every_sample_has_provenance_and_verdicts(tmp_path, fake_recipe):
    cfg, run = start(tmp_path, fake_recipe, "rounds=1")
    run_recipe(cfg, run, quiet=True)
    samples = run.samples(1)
    assert len(samples) == 2 * 60 * 5 == run.done(1, "acquire")["acquired"]
    version = run.done(0, "eval")["model_version"]
    for s in samples:
        assert s.model_version == version and s.round == 1 and s.difficulty == 5
        assert s.verdicts and s.verdicts[0].filter == "length"
        assert (s.temperature == 0.0) == (s.k == 0)
    assert len({s.seed for s in samples}) == len(samples)  # seeds derived per (round, problem, k)
    assert sum(s.kept for s in samples) == run.done(1, "refine")["kept"]


def test_no_filter_arm_lets_bad_labels_in_and_the_gate_rolls_back(tmp_path, fake_recipe):
    """Without filters the fake learns from ~50% wrong labels, loses a level, and the gate refuses it."""
    cfg, run = start(tmp_path, fake_recipe, "refine.chain=[dedup]", "rounds=2")
    summary = run_recipe(cfg, run, quiet=True)
    r1 = summary["rounds"][1]
    assert r1["label_precision"] < 0.8
    assert not r1["promoted"] and "drop" in r1["reason"]
    assert summary["final_frontier"] == summary["rounds"][0]["frontier"]
    assert run.done(1, "gate")["levels"] == run.done(0, "gate")["levels"]  # the previous model stays


def test_a_rollback_retries_with_a_smaller_step_then_a_stricter_filter(tmp_path, fake_recipe):
    cfg, run = start(tmp_path, fake_recipe, "refine.chain=[dedup]", "acquire.step=2", "rounds=2")
    r = run_recipe(cfg, run, quiet=True)["rounds"]
    assert not r[1]["promoted"] and r[1]["decision"] == "retry with a smaller step: 1 (was 2)"
    assert {s.difficulty for s in run.samples(1)} == {5, 6} and {s.difficulty for s in run.samples(2)} == {5}
    assert not r[2]["promoted"] and r[2]["decision"].startswith("retry on new problems")  # no filter to tighten

    cfg = config.load(fake_recipe, ["refine.chain=[vote, model_vote, dedup]", "refine.vote_agreement=0.6",
                                    "model.voters=[a, b]", "refine.model_vote_min=2"])
    state = State("m", step=1)
    assert strictness(cfg, 0) == {"vote_agreement": 0.6, "model_vote_min": 2}
    step, strict, decision = next_attempt(cfg, state, promoted=False)
    assert (step, strict) == (1, 1) and strictness(cfg, 1) == {"vote_agreement": 0.8, "model_vote_min": 3}
    assert next_attempt(cfg, State("m", step=1, strict=1), promoted=False)[1] == 2  # all samples, all 3 models
    assert next_attempt(cfg, State("m", step=1, strict=2), promoted=False)[1:] == (2, "retry on new problems (step and "
                                                                             "filters already at their strictest)")
    assert next_attempt(cfg, State("m", step=1, strict=2), promoted=True)[:2] == (1, 0)


def test_voters_evolve_beside_the_model_and_vote(tmp_path, fake_recipe):
    from evolvelm.backends import fake

    voters = [str(fake.write(tmp_path / f"voter{i}", {"copy": 4, "reverse": 4}, seed=i)) for i in (1, 2)]
    cfg, run = start(tmp_path, fake_recipe, f"model.voters={voters}", "acquire.samples=1",
                     "refine.chain=[length, model_vote, dedup]", "rounds=2")
    summary = run_recipe(cfg, run, quiet=True)
    samples = run.samples(1)
    assert {s.member for s in samples} == {0, 1, 2} and len(samples) == 3 * 2 * 60
    assert len({s.model_version for s in samples}) == 3  # three independently seeded models
    assert {v.filter for s in samples for v in s.verdicts} == {"length", "model_vote", "dedup"}
    for rnd in (1, 2):
        assert summary["rounds"][rnd]["promoted"] and summary["rounds"][rnd]["label_precision"] >= 0.99
        assert (run.root / f"rounds/000{rnd}/update/voter2/fake.json").is_file()
    assert len(run.done(2, "eval")["voters_dev"]) == 2 and run.done(2, "gate")["voters"][1]["model"].endswith("voter2")
    assert summary["final_frontier"] == {"copy": 6, "reverse": 6}


def test_adaptive_schedule_labels_further_only_while_answers_agree(tmp_path, fake_recipe):
    cfg, run = start(tmp_path, fake_recipe, "acquire.schedule=adaptive", "acquire.step=3", "rounds=1",
                     "acquire.adaptive_agreement=0.1")
    run_recipe(cfg, run, quiet=True)
    unanimity = run.done(1, "acquire")["unanimity"]["copy"]
    assert unanimity["5"] >= 0.1 > unanimity["6"] and "7" not in unanimity  # stopped where agreement fell
    assert {s.difficulty for s in run.samples(1)} == {5}  # and did not keep the probe of 6
    cfg, run = start(tmp_path / "lax", fake_recipe, "acquire.schedule=adaptive", "acquire.step=3", "rounds=1",
                     "acquire.adaptive_agreement=0.0")
    run_recipe(cfg, run, quiet=True)
    assert {s.difficulty for s in run.samples(1)} == {5, 6, 7}


def test_variants_answer_the_same_problem_asked_other_ways_and_vote(tmp_path, fake_recipe):
    """Every problem is also asked 3 other ways; the answers map back and count in the vote."""
    base = ["skills=[addition]", "acquire.samples=1", "rounds=1", "refine.chain=[length, vote, dedup]",
            f"model.path={fake.write(tmp_path / 'adder', {'addition': 3})}"]
    cfg, run = start(tmp_path, fake_recipe, *base, "acquire.variants=3", "refine.vote_agreement=1.0")
    run_recipe(cfg, run, quiet=True)
    samples = run.samples(1)
    assert len(samples) == 4 * 60 and [s.k for s in samples[:4]] == [0, 1, 2, 3]
    for s in samples:
        assert (s.context == "") == (s.k == 0) and s.context != s.prompt and s.temperature == 0.0
        assert s.context in ("", get_task("addition").variant(s.prompt, s.k)[0])
    assert run.done(1, "refine")["kept_retries"] == 0
    alone = start(tmp_path / "alone", fake_recipe, *base)
    run_recipe(*alone, quiet=True)
    with_variants, without = (r.done(1, "refine")["label_precision"] for r in (run, alone[1]))
    assert with_variants == 1.0 > without


def test_consolidate_labels_the_newest_self_taught_difficulties_again(tmp_path, fake_recipe):
    cfg, run = start(tmp_path, fake_recipe, "acquire.consolidate=2", "rounds=3", "skills=[copy]")
    run_recipe(cfg, run, quiet=True)
    # base level 4 is never labelled again; then 5, then 5 and 6 again beside the next difficulty
    assert [sorted({s.difficulty for s in run.samples(r)}) for r in (1, 2, 3)] == [[5], [5, 6], [5, 6, 7]]
    assert run.done(3, "gate")["levels"] == {"copy": 7}


def test_original_weight_keeps_the_base_ranges_share_of_the_mixture(tmp_path, fake_recipe):
    cfg, run = start(tmp_path, fake_recipe, "rounds=2", "update.original_weight=0.3")
    run_recipe(cfg, run, quiet=True)
    examples, n_new = mixture(cfg, run, 2)
    original = {p for p, _ in original_data(cfg, run.done(0, "gate")["levels"])}
    total = sum(x.weight for x in examples)
    assert n_new > 0 and sum(x.weight for x in examples if x.prompt in original) / total == pytest.approx(0.3)
    assert sum(x.weight for x in examples[-n_new:]) / total == pytest.approx(cfg.update.new_weight)
    with pytest.raises(config.ConfigError, match="original_weight"):
        config.load(fake_recipe, ["update.original_weight=0.6"])


def test_time_budget_stops_starting_rounds(tmp_path, fake_recipe):
    cfg, run = start(tmp_path, fake_recipe, "budget_minutes=1e-9")  # spent by round 0 or, if that ran in 0.0s, round 1
    assert [r["round"] for r in run_recipe(cfg, run, quiet=True)["rounds"]] in ([0], [0, 1])


def test_oracle_arm_has_perfect_precision(tmp_path, fake_recipe):
    cfg, run = start(tmp_path, fake_recipe, "refine.chain=[oracle, dedup]", "rounds=1")
    assert run_recipe(cfg, run, quiet=True)["rounds"][1]["label_precision"] == 1.0


def test_cli_run_then_report_inspect_export_ls(tmp_path, fake_recipe, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    assert main(["run", str(fake_recipe), "rounds=1", "--run-dir", str(run_dir), "-q"]) == 0
    assert main(["run", str(fake_recipe), "--run-dir", str(run_dir)]) == 2  # never overwrite a run
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert page.count("data:image/png;base64") == 4 and "Frontier per round" in page
    assert main(["inspect", str(run_dir), "--dropped", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    sample_id = out.strip().splitlines()[-1].split()[0]
    assert main(["inspect", str(run_dir), sample_id[:10]]) == 0
    assert "DROPPED" in capsys.readouterr().out
    assert main(["export", str(run_dir), str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "fake.json").is_file()
    monkeypatch.chdir(tmp_path)
    assert main(["ls", str(tmp_path)]) == 0
    assert "copy-ladder" in capsys.readouterr().out


def test_resume_of_a_finished_run_changes_nothing(tmp_path, fake_recipe):
    cfg, run = start(tmp_path, fake_recipe, "rounds=2")
    first = run_recipe(cfg, run, quiet=True)
    n = len(run.query("SELECT id FROM samples"))
    assert run_recipe(cfg, Run.open(run.root), quiet=True)["rounds"] == first["rounds"]
    assert len(run.query("SELECT id FROM samples")) == n


def test_a_sample_cannot_be_stored_twice(tmp_path, fake_recipe):
    cfg, run = start(tmp_path, fake_recipe, "rounds=1")
    run_recipe(cfg, run, quiet=True)
    with pytest.raises(Exception, match="UNIQUE"):
        run.commit(9, "acquire", {}, samples=run.samples(1)[:1])
    assert run.done(9, "acquire") is None  # the failed commit left no manifest entry


def test_engine_imports_stay_light():
    """`import evolvelm` and the fake-backend engine path never import torch, vllm or ray."""
    import subprocess
    import sys

    code = ("import sys, evolvelm, evolvelm.cli, evolvelm.recipes.ladder, evolvelm.backends.fake; "
            "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_model_versions_are_remembered_until_a_file_changes(tmp_path, monkeypatch):
    from evolvelm.store import hashing

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"a" * 100)
    first = hashing.dir_hash(tmp_path / "m")
    reads = []
    real = hashing.Path.read_bytes
    monkeypatch.setattr(hashing.Path, "read_bytes", lambda self: reads.append(self) or real(self))
    assert hashing.dir_hash(tmp_path / "m") == first and reads == []  # remembered: not read again
    (tmp_path / "m" / "w.bin").write_bytes(b"b" * 101)
    assert hashing.dir_hash(tmp_path / "m") != first and reads


def test_the_gate_state_reads_back_typed_from_the_manifest(tmp_path, fake_recipe):
    voter = str(fake.write(tmp_path / "voter", {"copy": 4, "reverse": 4}, seed=1))
    cfg, run = start(tmp_path, fake_recipe, f"model.voters=[{voter}]", "rounds=1")
    run_recipe(cfg, run, quiet=True)
    state = State.read(run.done(1, "gate"))  # beside the state, the manifest holds promoted, reason, ...
    assert state.round == 1 and run.done(1, "gate")["promoted"]
    assert min(state.levels.values()) > 4 and state.step == 1 and state.strict == 0
    assert state.members[1] == Member("rounds/0001/update/voter1") and State.read(state.info()) == state
    old = {"model": "zoo:copy-reverse", "adapter": None, "levels": {"copy": 6}, "round": 0, "promoted": True}
    assert State.read(old) == State("zoo:copy-reverse", levels={"copy": 6})  # a state stored before step/strict existed
