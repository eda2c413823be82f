"""The README's examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example(name: str) -> str:
    """The code block that follows ``<!-- readme-example: NAME -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- readme-example: {name} -->\n```\w*\n(.*?)```", text, re.S)
    assert match, f"README.md has no example marked {name!r}"
    return match.group(1)


def test_classification_example_runs_and_learns(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example("classification"), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("epoch 2:") and last.endswith("accuracy 1.00"), done.stdout
    assert (tmp_path / "data" / "shapes.lmdb" / "data.mdb").is_file()
