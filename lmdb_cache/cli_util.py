"""What the command modules share: progress bars, sizes, JSON output, usage errors."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click
from tqdm import tqdm

_CTX = {"help_option_names": ["-h", "--help"]}


class _Bar:
    """Adapts a tqdm bar on stderr to the builder's progress protocol."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.enabled = enabled
        self.desc = desc
        self.bar: tqdm | None = None

    def start(self, total: int) -> None:
        if self.enabled:
            self.bar = tqdm(
                total=total, desc=self.desc, unit="img", file=sys.stderr, dynamic_ncols=True
            )

    def advance(self, key: str) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _ByteBar:
    """A tqdm bar on stderr for ``(bytes done, bytes total)`` progress callbacks."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.enabled = enabled
        self.desc = desc
        self.bar: tqdm | None = None

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(
                total=total, desc=self.desc, unit="B", unit_scale=True, file=sys.stderr,
                dynamic_ncols=True,
            )  # fmt: skip
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


def _fail_usage(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)
