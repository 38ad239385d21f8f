"""Trainings as executor tasks: :class:`TrainTask` and :func:`train_all` (plan → run → collect).

Each :class:`TrainTask` trains (or loads from cache) one configuration wherever an
:mod:`xrlib.exec` executor runs it, with the configuration's thread count (which
:func:`xrlib.training.loop.train_model` sets itself, too); only the driver collects the results.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xrlib.training.checkpoint import TrainResult
from xrlib.training.config import TrainConfig


@dataclass
class TrainTask:
    """One training (picklable): ``config``, ``datasets_dir``, ``out_root``, ``device`` (``None``:
    the default device where it runs), ``progress``, and ``imports`` — modules to import before
    training so that recipes they register exist in a fresh worker process."""

    config: TrainConfig
    datasets_dir: str
    out_root: str
    device: str | None = None
    progress: bool = False
    imports: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.config.folder_name(self.datasets_dir)

    @property
    def threads(self) -> int:
        return int(self.config.threads)

    @property
    def num_gpus(self) -> int:
        """GPUs a scheduler must give this task: 1 when it trains on CUDA (``device`` ``None``: the
        default device of the machine that plans it, :func:`xrlib.core.runs.default_device`), else 0."""
        from xrlib.core.runs import default_device

        device = self.device if self.device is not None else default_device()
        return 1 if str(device).startswith("cuda") else 0

    def run(self) -> TrainResult:
        from xrlib.training.loop import train_model

        for module in self.imports:
            importlib.import_module(module)
        return train_model(self.config, self.datasets_dir, self.out_root, device=self.device, progress=self.progress)


def train_all(configs: Sequence[TrainConfig], datasets_dir: str | Path, out_root: str | Path, device=None,
              executor=None, progress: bool = True, imports: Sequence[str] = ()) -> dict[str, TrainResult]:
    """Train (or load from cache) every configuration; results by model name, in plan order.

    ``executor``: ``None`` runs the tasks one after another in this process; otherwise an
    :class:`xrlib.exec.base.Executor` (anything with ``map(tasks, progress=, desc=)`` yielding
    ``(task, result)``), e.g. ``xrlib.exec.get_executor("process", workers=2)`` or
    ``get_executor("ray", address=...)`` (a task asks for a GPU when it trains on CUDA). Training does not
    import :mod:`xrlib.exec` (it sits below it in the layers).
    """
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be distinct, got {names}")
    tasks = [TrainTask(c, str(datasets_dir), str(out_root), None if device is None else str(device),
                       progress and executor is None, tuple(imports)) for c in configs]
    if executor is None:
        return {t.config.name: t.run() for t in tasks}
    return {t.config.name: r for t, r in executor.map(tasks, progress=progress, desc="training")}
