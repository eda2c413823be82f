"""What a run's float results depend on besides its config: threads, library versions, CPU.

Two runs of one config give bit-identical losses and metrics only when this environment is the
same too: torch's intra-op thread count splits reductions differently, and library versions and
CPUs can change the order or width of float operations. ``run_environment()`` records it (a
run's ``summary.json`` keeps it under ``"environment"``) and ``environment_line()`` says it in
one line, so that two runs that disagree can be told apart at a glance.
"""

from __future__ import annotations

import os
import platform
from importlib import import_module
from pathlib import Path
from typing import Any

from lmdb_cache import __version__

#: The environment variables that set the thread pools of OpenMP, MKL and OpenBLAS.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

_CPUINFO = Path("/proc/cpuinfo")
# Keys of /proc/cpuinfo that name the processor: x86, then what some ARM and POWER kernels use.
_CPU_KEYS = ("model name", "Model", "Hardware", "cpu")


def run_environment() -> dict[str, Any]:
    """The threads, library versions and machine of this process, as JSON-ready values.

    Returns:
        ``torch_threads`` (``torch.get_num_threads()``, the intra-op pool that splits a
        convolution's work, and so its float sums), ``torch_interop_threads``,
        ``thread_variables`` (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
        ``OPENBLAS_NUM_THREADS``: their text, or None when unset), the versions of ``torch``,
        ``numpy``, ``opencv`` and ``pillow`` (None for a library that is not installed),
        ``lmdb_image_cache`` (this package), ``python``, and the machine: ``platform``,
        ``machine``, ``cpu`` (the model named in /proc/cpuinfo, else what ``platform`` says,
        else None) and ``cpus`` (the CPUs this process may run on).
    """
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "thread_variables": {name: os.environ.get(name) for name in THREAD_VARIABLES},
        "torch": torch.__version__,
        "numpy": _version_of("numpy"),
        "opencv": _version_of("cv2"),
        "pillow": _version_of("PIL"),
        "lmdb_image_cache": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpus": _usable_cpus(),
    }


def environment_line(env: dict[str, Any]) -> str:
    """One short line for a run's log: threads, library versions, CPU.

    Args:
        env: What ``run_environment()`` returned, possibly read back from a ``summary.json``;
            keys it lacks show as ``?``.

    Returns:
        For example ``torch 2.13.0 (2 threads, OMP_NUM_THREADS=unset, MKL_NUM_THREADS=unset),
        numpy 2.2.6, OpenCV 4.12.0, Pillow 11.3.0, lmdb-image-cache 0.1.0, Python 3.11.2 on AMD
        EPYC (2 CPUs)``. ``OPENBLAS_NUM_THREADS`` is shown only when it is set.
    """
    variables = env.get("thread_variables") or {}
    count = env.get("torch_threads", "?")
    threads = [f"{count} thread" + ("" if count == 1 else "s")]
    for name in THREAD_VARIABLES:
        value = variables.get(name)
        if value is not None or name != "OPENBLAS_NUM_THREADS":
            threads.append(f"{name}={'unset' if value is None else value}")
    libraries = ", ".join(
        f"{label} {_shown(env, key)}"
        for label, key in (
            ("numpy", "numpy"),
            ("OpenCV", "opencv"),
            ("Pillow", "pillow"),
            ("lmdb-image-cache", "lmdb_image_cache"),
            ("Python", "python"),
        )
    )
    cpu = env.get("cpu") or env.get("machine") or "an unknown CPU"
    cpus = f" ({env['cpus']} CPUs)" if env.get("cpus") else ""
    return f"torch {_shown(env, 'torch')} ({', '.join(threads)}), {libraries} on {cpu}{cpus}"


def cpu_model(cpuinfo: Path = _CPUINFO) -> str | None:
    """The processor's model name: the first ``model name`` (or ARM/POWER equivalent) line of
    ``cpuinfo`` when that file exists, else ``platform.processor()``, else None.

    Args:
        cpuinfo: The file to read (``/proc/cpuinfo``; another path in tests).
    """
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if sep and value and key in _CPU_KEYS and key not in found:
            found[key] = value
    for key in _CPU_KEYS:
        if key in found:
            return found[key]
    return platform.processor() or None


def _version_of(module: str) -> str | None:
    """``module.__version__``, or None when the module is not installed."""
    try:
        return str(import_module(module).__version__)
    except ImportError:
        return None


def _usable_cpus() -> int | None:
    """The CPUs this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _shown(env: dict[str, Any], key: str) -> str:
    """``env[key]`` as text: ``not installed`` for None, ``?`` when the key is absent."""
    if key not in env:
        return "?"
    value = env[key]
    return "not installed" if value is None else str(value)
