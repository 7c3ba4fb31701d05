"""Shared fixtures: offline Hugging Face, a fake checkpoint, and a tiny fake-backend recipe."""
import os
import shutil
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _sandbox():
    """Skills that execute answers use bwrap; on a machine without it (never CI: .ci/run installs
    it) the expression checks, which only ever run digits and '+', fall back to the subprocess level."""
    from evolvelm import sandbox

    sandbox.configure(allow_unsafe=not shutil.which("bwrap") and os.environ.get("CI") != "true")


@pytest.fixture
def fake_model(tmp_path) -> Path:
    from evolvelm.backends import fake

    return fake.write(tmp_path / "fake-model", {"copy": 4, "reverse": 4})


@pytest.fixture
def fake_recipe(tmp_path, fake_model) -> Path:
    """A 3-round ladder on the fake backend: runs in about a second."""
    cfg = {"rounds": 3, "skills": ["copy", "reverse"], "model": {"path": str(fake_model), "backend": "fake"},
           "acquire": {"problems": 60, "samples": 5}, "eval": {"max_difficulty": 9, "problems": 30, "dev_problems": 20}}
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
