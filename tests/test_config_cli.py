"""Bad input gets exit code 2 and a message naming the problem; shipped recipes validate."""
import importlib
import sqlite3
import subprocess
import sys

import pytest

from evolvelm import config
from evolvelm.cli import main
from evolvelm.store.run import Run


@pytest.mark.parametrize("name", config.shipped_recipes())
def test_every_shipped_recipe_validates_without_loading_weights(name, llmbar_dir):
    cfg = config.load(name, [f"judge.data={llmbar_dir}"])  # self-rewarding audits its model on LLMBar
    importlib.import_module(f"evolvelm.recipes.{cfg.recipe}").preflight(cfg, Run("."))  # reads evolvelm.json only
    assert cfg.rounds >= 1


def test_shipped_recipes_open_with_the_command_that_runs_them():
    for name in config.shipped_recipes():
        assert config.recipe_path(name).read_text().startswith(f"# evolvelm run {name}\n")


def test_unknown_key_names_the_valid_keys():
    with pytest.raises(config.ConfigError, match=r"'update.stepz'.*valid keys in update: \[.*'steps'"):
        config.load("copy-ladder", ["update.stepz=3"])


def test_wrong_type_names_the_key():
    with pytest.raises(config.ConfigError, match="update.steps: expected int, got 'many'"):
        config.load("copy-ladder", ["update.steps=many"])
    with pytest.raises(config.ConfigError, match="rounds: expected int, got True"):
        config.load(None, ["rounds=true"])
    assert config.load(None, ["update.lr=1"]).update.lr == 1.0  # ints are fine where floats are expected


def test_bad_choices_and_ranges():
    with pytest.raises(config.ConfigError, match="update.method: 'qlora' is not one of"):
        config.load(None, ["update.method=qlora"])
    with pytest.raises(config.ConfigError, match="skills: unknown task 'sorting'"):
        config.load(None, ["skills=[sorting]"])
    with pytest.raises(config.ConfigError, match="rounds: must be >= 1"):
        config.load(None, ["rounds=0"])
    with pytest.raises(config.ConfigError, match="gate.z: the paired dev gate is the semisup recipe's"):
        config.load("copy-ladder", ["gate.z=1.0"])
    assert config.load("lmsi", ["gate.z=2.0"]).gate.z == 2.0
    for recipe, extra in [("copy-ladder", []), ("lmsi", []), ("addition-ladder", ["skills=[addition, copy]"])]:
        with pytest.raises(config.ConfigError, match=r"acquire.variants: .* of skills \['addition'\]"):
            config.load(recipe, ["acquire.variants=3", *extra])
    assert config.load("addition-ladder", ["acquire.variants=3"]).acquire.variants == 3


def run_cli(*args):
    return main(list(args))


def test_cli_exit_code_2_for_bad_config_key(capsys, tmp_path):
    assert run_cli("run", "copy-ladder", "acquire.sample=3", "--run-dir", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert "acquire.sample" in err and "'samples'" in err
    assert not (tmp_path / "r").exists()  # nothing was created


def test_cli_exit_code_2_for_missing_files(capsys, tmp_path):
    assert run_cli("run", str(tmp_path / "nope.yaml")) == 2
    assert "recipe file not found" in capsys.readouterr().err
    assert run_cli("run", "no-such-recipe") == 2
    assert "'copy-ladder'" in capsys.readouterr().err
    assert run_cli("validate", "copy-ladder", "model.path=/nonexistent/model") == 2
    assert "directory not found: /nonexistent/model" in capsys.readouterr().err
    assert run_cli("validate", "copy-ladder", "model.voters=[zoo:nope]") == 2
    assert "model.voters: no zoo model 'zoo:nope'" in capsys.readouterr().err
    assert run_cli("resume", str(tmp_path / "missing-run")) == 2


def test_cli_exit_code_2_for_corrupt_run_dirs(capsys, tmp_path, fake_recipe):
    run_dir = tmp_path / "run"
    assert run_cli("run", str(fake_recipe), "rounds=1", "--run-dir", str(run_dir), "-q") == 0
    (run_dir / "store.sqlite").write_bytes(b"this is not a database" * 100)
    assert run_cli("resume", str(run_dir)) == 2
    assert "corrupt" in capsys.readouterr().err
    (run_dir / "store.sqlite").unlink()
    assert run_cli("report", str(run_dir)) == 2
    assert "missing config.yaml or store.sqlite" in capsys.readouterr().err
    sqlite3.connect(run_dir / "store.sqlite").execute("CREATE TABLE x (a)")
    assert run_cli("inspect", str(run_dir)) == 2
    assert "missing tables" in capsys.readouterr().err
    (run_dir / "config.yaml").write_text("rounds: [not, an, int]\n")
    assert run_cli("resume", str(run_dir)) == 2


def test_console_script_reports_errors_with_exit_code_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "evolvelm.cli", "validate", "copy-ladder", "bogus=1"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unknown config key 'bogus'" in out.stderr


def test_validate_and_env_succeed(capsys):
    assert run_cli("validate", "copy-ladder") == 0
    assert "ok: copy-ladder" in capsys.readouterr().out
    assert run_cli("env") == 0
    assert "transformers" in capsys.readouterr().out
