import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_opens_with_exactly_two_commands_and_ci_runs_the_test_one():
    top = (ROOT / "README.md").read_text().split("---")[0]
    commands = re.findall(r"```bash\n(.+?)\n```", top)
    assert len(commands) == 2 and "evolvelm run copy-ladder" in commands[0] and "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
    assert all("torch==2.13.0" in c for c in commands)  # never an unpinned CUDA download
