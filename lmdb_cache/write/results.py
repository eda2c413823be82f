"""What a build or a writer did: :class:`BuildResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..format import codecs


@dataclass
class BuildResult:
    """What a build did.

    Attributes:
        output: Path of the store.
        added: Images decoded and stored that the store did not hold.
        updated: Images whose source changed and were decoded again.
        touched: Images whose file was touched but whose content is unchanged (metadata only).
        unchanged: Images skipped because size and mtime match the record.
        recoded: Records encoded again from their stored pixels (the codec or level changed).
        removed: Records deleted because their source is gone.
        failures: ``(key, reason)`` for each source that could not be stored.
        images: Records in the store at the end.
        total_bytes: Pixel bytes in the store at the end.
        settings: ``max_side`` and ``resample`` the store's pixels are made with.
        seconds: Wall time of the build.
        warnings: Notes that do not make the build fail.
    """

    output: str
    added: int = 0
    updated: int = 0
    touched: int = 0
    unchanged: int = 0
    recoded: int = 0
    removed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    images: int = 0
    total_bytes: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def decoded(self) -> int:
        return self.added + self.updated

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "ok": self.ok,
            "images": self.images,
            "total_bytes": self.total_bytes,
            "max_side": self.settings.get("max_side"),
            "resample": self.settings.get("resample"),
            "codec": self.settings.get("codec", codecs.DEFAULT),
            "level": self.settings.get("level"),
            "added": self.added,
            "updated": self.updated,
            "touched": self.touched,
            "unchanged": self.unchanged,
            "recoded": self.recoded,
            "removed": self.removed,
            "failed": len(self.failures),
            "failures": [{"key": k, "reason": r} for k, r in self.failures],
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.decoded / self.seconds, 2) if self.seconds else None,
            "warnings": self.warnings,
        }
