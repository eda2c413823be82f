"""The README's code blocks run as pasted.

Every fenced block tagged ``bash`` or ``python`` is run, in README order, in one sandbox folder
(``configs/`` and ``tools/`` linked from the repository, the installed commands on PATH), so a
block may use what an earlier one made, as a reader following the README would. Blocks without
a language show output and are not run. A block preceded by ``<!-- readme: not run: REASON -->``
is skipped with that reason (the install commands, which CI runs itself, and what needs a GPU
or several machines).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
_NOT_RUN = re.compile(r"<!-- readme: not run: (.+?) -->\s*$")
_NAMED = re.compile(r"<!-- readme-example: (\S+) -->\s*$")


@dataclass
class Block:
    line: int
    language: str
    code: str
    skip: str | None
    name: str | None


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _NOT_RUN.search(before)
        named = _NAMED.search(before)
        blocks.append(
            Block(
                line=text.count("\n", 0, match.start()) + 1,
                language=match.group(1),
                code=match.group(2),
                skip=skip.group(1) if skip else None,
                name=named.group(1) if named else None,
            )
        )
    return blocks


def readme_example(name: str) -> str:
    """The code of the block marked ``<!-- readme-example: NAME -->``."""
    for block in readme_blocks():
        if block.name == name:
            return block.code
    raise AssertionError(f"README.md has no example marked {name!r}")


def test_every_block_is_run_or_says_why_not():
    for block in readme_blocks():
        assert block.language in ("", "bash", "python", "yaml", "text"), (
            f"README.md line {block.line}: language {block.language!r} is neither run nor output"
        )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    for name in ("configs", "tools"):
        (folder / name).symlink_to(ROOT / name)
    return folder


def _run(block: Block, folder: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    if block.language == "bash":
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        command = [sys.executable, "-c", block.code]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


RUNNABLE = [b for b in readme_blocks() if b.language in ("bash", "python")]


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=[f"line{b.line}" for b in RUNNABLE])
def test_readme_block_runs_as_pasted(block, sandbox):
    if block.skip:
        pytest.skip(f"README.md line {block.line}: {block.skip}")
    done = _run(block, sandbox)
    assert done.returncode == 0, (
        f"README.md line {block.line} ({block.language}) failed with exit {done.returncode}:\n"
        f"{block.code}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )


def test_classification_example_learns(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example("classification"), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("epoch 2:") and last.endswith("accuracy 1.00"), done.stdout
    assert (tmp_path / "data" / "shapes.lmdb" / "data.mdb").is_file()
