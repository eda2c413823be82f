"""What the command modules share: the progress bar, JSON output and usage errors."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click
from tqdm import tqdm

CONTEXT = {"help_option_names": ["-h", "--help"]}


class Bar:
    """A tqdm bar on stderr as the package's progress protocol (``reporting.Progress``).

    Args:
        enabled: False shows nothing (``--quiet``, ``--json``).
        desc: The bar's label.
        unit: ``"img"`` for images, ``"B"`` for bytes (shown scaled).
    """

    def __init__(self, enabled: bool, desc: str, unit: str = "img") -> None:
        self.enabled = enabled
        self.desc = desc
        self.unit = unit
        self.bar: tqdm | None = None

    def start(self, total: int) -> None:
        if self.enabled and self.bar is None:
            self.bar = tqdm(
                total=total,
                desc=self.desc,
                unit=self.unit,
                unit_scale=self.unit == "B",
                file=sys.stderr,
                dynamic_ncols=True,
            )

    def advance(self, amount: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(amount)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def emit_json(doc: Any) -> None:
    """Print ``doc`` as the command's one JSON document on stdout."""
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


def fail_usage(message: str) -> NoReturn:
    """Say what was wrong with the command line and exit with status 2."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)
