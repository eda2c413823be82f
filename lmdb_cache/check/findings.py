"""What ``validate-cache`` finds: typed findings (kind, key, message, fix) and the report.

A finding names the command that mends it by kind (:data:`UPDATE`: re-run the build,
:data:`REBUILD`: build anew, :data:`RECOMMIT`: any commit, for a fault of the manifest alone);
:class:`Fixes` spells that command out with the store's real
paths, once they are known (the walk that finds a problem may run in a child process, before
the manifest says where the store was built from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UPDATE = "update"
REBUILD = "rebuild"
RECOMMIT = "recommit"


@dataclass(frozen=True)
class Finding:
    """One problem or warning.

    Attributes:
        kind: A short category such as ``"checksum"``, ``"stale-changed"``, ``"incomplete"``.
        key: The image key concerned, or None for store-wide findings.
        message: A sentence a person can act on, its fix included.
        fix: The fix alone (``"rebuild it with 'build-cache ...'"``), or None.
    """

    kind: str
    key: str | None
    message: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "message": self.message, "fix": self.fix}


class Fixes:
    """The commands a finding tells the user to run, with the real paths where known."""

    def __init__(self, path: str, source: str | None) -> None:
        self.path = path
        self.source = source or "SRC"

    def learn_source(self, manifest: dict[str, Any]) -> None:
        if self.source == "SRC" and manifest.get("source_root"):
            self.source = manifest["source_root"]

    def text(self, fix: str | None) -> str | None:
        """The sentence of a fix kind (:data:`UPDATE`, :data:`REBUILD`, :data:`RECOMMIT`), or
        None."""
        if fix == RECOMMIT and self.source == "SRC":
            # No folder to update from (a store CacheWriter wrote): build-cache would drop its
            # records; a writer that adds nothing commits the manifest again.
            return (
                f"commit it again with 'lmdb_cache.CacheWriter({self.path!r}).close()' in "
                f"Python (or 'build-cache SRC -o {self.path}' if it was built from a folder)"
            )
        if fix in (UPDATE, RECOMMIT):
            return f"run 'build-cache {self.source} -o {self.path}' to update it"
        if fix == REBUILD:
            return f"rebuild it with 'build-cache {self.source} -o {self.path} --rebuild'"
        return None

    def finding(self, kind: str, key: str | None, message: str, fix: str | None) -> Finding:
        """A :class:`Finding` whose message ends with its fix spelled out."""
        text = self.text(fix)
        return Finding(kind, key, f"{message}; {text}" if text else message, text)


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_cache`; ``ok`` when no problem was found."""

    path: str
    images: int = 0
    checked_bytes: int = 0
    manifest: dict[str, Any] | None = None
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    source: str | None = None
    annotations: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for finding in self.problems:
            out[finding.kind] = out.get(finding.kind, 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "images": self.images,
            "checked_bytes": self.checked_bytes,
            "source": self.source,
            "annotations": self.annotations,
            "problem_counts": self.counts(),
            "problems": [f.as_dict() for f in self.problems],
            "warnings": [f.as_dict() for f in self.warnings],
            "manifest": self.manifest,
        }
