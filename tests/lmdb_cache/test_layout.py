"""The package's shape, from its import graph and syntax trees: which room may import which,
codec names compared only by the codec registry, classes of a readable size, every module
saying first what it owns. Each rule fails on the first module that breaks it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lmdb_cache"
ROOMS = ("format", "read", "write", "check", "cli")
# room -> the rooms it must never import
FORBIDDEN = {
    "format": {"read", "write", "check", "cli"},
    "read": {"write", "check", "cli"},
    "write": {"read", "cli"},
    "check": {"cli"},
}
MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of the ``lmdb_cache`` modules (or names) ``path`` imports."""
    tree = ast.parse(source if source is not None else path.read_text())
    package = _name(path) if path.name == "__init__.py" else _name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("lmdb_cache")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("lmdb_cache"):
                found.add(module)
                found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def room_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else None


def broken_rules(path: Path, source: str | None = None) -> list[str]:
    """``importer -> imported`` for each import of ``path`` its room may not make."""
    room = room_of(_name(path))
    banned = FORBIDDEN.get(room or "", set())
    return sorted(
        f"{_name(path)} -> {name}" for name in imported(path, source) if room_of(name) in banned
    )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_room_imports_only_what_it_may(path):
    assert broken_rules(path) == []


def test_the_rule_catches_a_read_module_importing_write():
    reader = PACKAGE / "read" / "reader.py"
    source = reader.read_text() + "\nfrom ..write.store import WriteStore\n"
    assert broken_rules(reader, source) == [
        "lmdb_cache.read.reader -> lmdb_cache.write.store",
        "lmdb_cache.read.reader -> lmdb_cache.write.store.WriteStore",
    ]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_cli_imports_cli(path):
    if room_of(_name(path)) != "cli":
        assert [n for n in imported(path) if room_of(n) == "cli"] == []


CODEC_NAMES = re.compile(r"ZSTD|== \"zstd\"|== 'zstd'|RAW\b")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_codec_names_are_compared_only_in_the_codec_package(path):
    if "codecs" in path.relative_to(PACKAGE).parts:
        return
    hits = [line for line in path.read_text().splitlines() if CODEC_NAMES.search(line)]
    assert hits == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_class_runs_past_about_250_lines(path):
    tree = ast.parse(path.read_text())
    sizes = {
        node.name: node.end_lineno - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.end_lineno is not None
    }
    assert {name: n for name, n in sizes.items() if n > 260} == {}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_says_first_what_it_owns(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.splitlines()[0]) > 20, "a module docstring whose first line says it"


def test_build_uses_no_underscored_member_of_another_class():
    tree = ast.parse((PACKAGE / "write" / "build.py").read_text())
    reached = sorted(
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    )
    assert reached == []


def test_the_package_shows_five_rooms_and_its_shared_modules():
    rooms = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert rooms == sorted(ROOMS)
    assert len([p for p in PACKAGE.glob("*.py")]) <= 10
