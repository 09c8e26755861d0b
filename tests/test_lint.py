"""The code passes ruff with the rules of ``[tool.ruff]`` in pyproject.toml (unused and undefined names, syntax
errors, likely bugs such as closures over loop variables): the same check as ``make lint``."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                         cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, f"ruff check . (exit {out.returncode}):\n{out.stdout}{out.stderr}"


def test_ruff_catches_an_undefined_name(tmp_path):
    """The check is live: the configured rules reject a file with an undefined name and an unused import."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\n\ndef f():\n    return undefined_thing\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                          "--config", str(REPO / "pyproject.toml"), str(bad)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 1
    assert "F821" in out.stdout and "F401" in out.stdout, out.stdout
