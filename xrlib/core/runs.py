"""Where a run lives and what it runs on: run folders, the torch device, package versions.

Every stage reads and writes under ``<run_root>/<profile>/`` (default ``<repo>/runs``); the device
is CUDA when a GPU is usable, else the CPU — one choice for rendering, training and evaluation.
"""

from __future__ import annotations

import functools

import importlib.metadata as md
import os
import platform
from collections.abc import Sequence
from pathlib import Path

#: The repository checkout this package was installed from (editable install).
REPO_ROOT = Path(__file__).resolve().parents[2]


def run_dir(profile: str, run_root: str | Path | None = None) -> Path:
    """Artifacts folder of a profile: ``<run_root>/<profile>`` (default ``<repo>/runs``).

    An empty ``run_root`` means the default; ``XRLIB_RUNS`` overrides the default root.
    """
    root = Path(run_root) if run_root else Path(os.environ.get("XRLIB_RUNS", REPO_ROOT / "runs"))
    path = root / Path(str(profile)).stem
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_device() -> str:
    """``"cuda"`` when a GPU is usable, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device=None):
    """``device`` as a :class:`torch.device`; ``None`` means :func:`default_device`."""
    import torch

    return torch.device(default_device() if device is None else device)


def device_description(device=None) -> str:
    """``cuda (<GPU name>)`` or ``cpu (<n> cores, <machine>)`` for ``device`` (default: the default device)."""
    import torch

    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu":
        return f"cpu ({os.cpu_count()} cores, {platform.machine()})"
    return str(dev)


def default_threads() -> int:
    """Threads a CPU computation uses unless told otherwise: ``XRLIB_THREADS`` if set, else the core count.

    Fixed per machine (not the process's current torch setting, which tasks and libraries change), so
    that configurations that record it — a training task's cache key — are the same in every process.
    """
    value = os.environ.get("XRLIB_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            from xrlib.core.errors import InputError

            raise InputError("XRLIB_THREADS", f"must be a positive integer, got {value!r}")
        return int(value)
    return os.cpu_count() or 1


def versions(packages: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``packages`` (``"not installed"`` for a missing one)."""
    return {name: _version(name) for name in packages}


@functools.lru_cache(maxsize=None)
def _version(name: str) -> str:
    # Read once per process: every rendered radiograph records them, and reading a distribution's
    # metadata parses files (≈ 70 ms per radiograph for the renderer's nine packages).
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"
