"""Objects from config mappings that name an importable callable (the Hydra ``_target_`` form).

``{_target_: pkg.module.Callable, a: 1, b: [2, 3]}`` imports ``pkg.module.Callable`` and calls it
as ``Callable(a=1, b=[2, 3])``. Only the top-level mapping is instantiated: nested mappings,
even ones with their own ``_target_``, reach the callable as plain data. Every failure (the
target cannot be imported, is not callable, or its call fails) is a ``ValueError`` whose
message starts with the config key it came from.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

#: The key that names the callable.
TARGET = "_target_"


def is_target_spec(spec: Any) -> bool:
    """Whether ``spec`` is a mapping in the ``_target_`` form."""
    return isinstance(spec, Mapping) and TARGET in spec


def locate(path: str, key: str = TARGET) -> Any:
    """The object a dotted path names: ``pkg.module.Name`` or ``pkg.module.Class.attribute``.

    The first name is imported, each next one looked up as an attribute or, on a module,
    imported as its submodule.

    Args:
        path: The dotted path.
        key: The config key the path comes from, for messages.

    Raises:
        ValueError: the path is malformed, its first name is not an importable module, a module
            on the way fails to import (a missing dependency, say), or an attribute is missing.
    """
    parts = path.split(".") if isinstance(path, str) else []
    if not parts or not all(part.isidentifier() for part in parts):
        raise ValueError(
            f"{key}: _target_ must be a dotted path such as 'package.module.Callable', got {path!r}"
        )
    obj = _import(parts[0], key, path)
    for depth in range(1, len(parts)):
        name = parts[depth]
        if hasattr(obj, name):
            obj = getattr(obj, name)
            continue
        found = ".".join(parts[:depth])
        if inspect.ismodule(obj):
            submodule = _import(f"{found}.{name}", key, path, missing_ok=True)
            if submodule is not None:
                obj = submodule
                continue
        raise ValueError(
            f"{key}: cannot import _target_ {path!r}: {found!r} has no attribute {name!r}; "
            f"check the spelling of the name after {found!r}"
        )
    return obj


def _import(module_name: str, key: str, path: str, missing_ok: bool = False) -> Any:
    """The module, or None when it does not exist and ``missing_ok``.

    Raises:
        ValueError: it does not exist (the top-level package), or it exists but fails to
            import (a missing dependency, say).
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:  # not a failure inside the module: there is none
            if missing_ok:
                return None
            raise ValueError(
                f"{key}: cannot import _target_ {path!r}: no module named {module_name!r}; "
                "give the dotted path of a callable in an installed package (or one on "
                "PYTHONPATH), e.g. 'ocr.data.albumentations.from_config'"
            ) from e
        raise _import_error(key, path, module_name, e) from e
    except Exception as e:  # the module exists but fails to import
        raise _import_error(key, path, module_name, e) from e


def instantiate(spec: Mapping[str, Any], key: str = "transform") -> Any:
    """Import ``spec[_target_]`` and call it with the other keys as keyword arguments.

    Args:
        spec: A mapping with a ``_target_`` key.
        key: Where ``spec`` sits in the config (``datasets.train_dataset.transform``), for
            messages.

    Returns:
        What the call returns.

    Raises:
        ValueError: the target cannot be imported, is not callable, or its call raises (the
            original error is the cause).
    """
    if not is_target_spec(spec):
        raise ValueError(f"{key}: expected a mapping with a {TARGET!r} key, got {spec!r:.80}")
    path = spec[TARGET]
    kwargs = {str(name): value for name, value in spec.items() if name != TARGET}
    target = locate(path, key)
    if not callable(target):
        raise ValueError(
            f"{key}: _target_ {path!r} is a {type(target).__name__}, not a callable; name a "
            "class or a function that returns the object"
        )
    try:
        return target(**kwargs)
    except Exception as e:
        raise ValueError(
            f"{key}: calling _target_ {path!r} with {_names(kwargs)} failed: "
            f"{type(e).__name__}: {e}; its signature is {_signature(target)}, fix the keys "
            "next to _target_"
        ) from e


def _import_error(key: str, path: str, module_name: str, error: BaseException) -> ValueError:
    return ValueError(
        f"{key}: cannot import _target_ {path!r}: importing {module_name!r} failed with "
        f"{type(error).__name__}: {error}; install what it needs or fix the module"
    )


def _names(kwargs: Mapping[str, Any]) -> str:
    if not kwargs:
        return "no arguments"
    return "arguments " + ", ".join(sorted(kwargs))


def _signature(target: Callable[..., Any]) -> str:
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return "unknown"
    try:  # the annotations as written, not as strings (``from __future__ import annotations``)
        signature = inspect.signature(target, eval_str=True)
    except Exception:
        pass
    signature = signature.replace(return_annotation=inspect.Signature.empty)
    return f"{getattr(target, '__name__', 'target')}{signature}"
