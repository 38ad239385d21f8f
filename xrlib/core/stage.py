"""The notebooks' stage header and stage timing.

Each notebook is one study stage. It starts with :class:`Stage`, which prints what the stage reads
and writes, the profile, the device and the package versions, the dataset build's patient-leakage
line when its test subjects share patients with training subjects (:func:`dataset_note`), and ends with
:meth:`Stage.summary`, which prints how long each step took on that device (also saved as
``<run>/<stage>.timings.json`` for the book's appendix).

That record is the stage's stamp: besides the step times it holds the machine fingerprint
(:func:`xrlib.core.machine.machine_fingerprint`) and the SHA-256 and size of every artifact the stage
wrote (:mod:`xrlib.core.artifacts`, paths relative to the run folder), which ``xrlib runs compare``
compares between two runs.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from xrlib.core.artifacts import snapshot, stage_artifacts
from xrlib.core.atomic import write_json_atomic
from xrlib.core.machine import machine_fingerprint
from xrlib.core.profiles import load_profile
from xrlib.core.runs import device_description, run_dir


def dataset_note(run: str | Path) -> str:
    """The one-line patient-leakage note that the run's dataset build recorded in ``<run>/datasets/build.json``
    (``leakage_note``, written by :func:`xrlib.data.build.build_datasets`); "" when there is none or no build."""
    try:
        info = json.loads((Path(run) / "datasets" / "build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    note = info.get("leakage_note") if isinstance(info, dict) else None
    return " ".join(str(note).split()) if note else ""


class Stage:
    """Header, timing and summary of one notebook stage.

    Args:
        name: stage name (the notebook's file stem).
        profile: profile name or path (see ``book/profiles``).
        reads, writes: what the stage consumes and produces (shown to the reader).
        run_root: artifacts root (default ``<repo>/runs``).
    """

    def __init__(self, name: str, profile: str, reads: list[str], writes: list[str], run_root: str | Path | None = None):
        self.name = name
        self.profile_name = Path(str(profile)).stem
        self.cfg = load_profile(profile)
        self.run = run_dir(profile, run_root)
        self.device = device_description()
        self.times: dict[str, float] = {}
        self._before = snapshot(self.run)
        self.machine = machine_fingerprint()
        self._t0 = time.perf_counter()
        print(f"stage    : {name}")
        print(f"profile  : {self.profile_name}  (book/profiles/{self.profile_name}.yml)")
        print(f"device   : {self.device}")
        print(f"machine  : {self.machine['id']} ({self.machine['cpu_model']}, torch {self.machine['torch_cpu_capability']}, "
              f"{self.machine['threads']['torch_intra_op']} threads{', portable' if self.machine['portable'] else ''})")
        print(f"run dir  : {self.run}")
        print("reads    : " + "; ".join(reads))
        print("writes   : " + "; ".join(writes))
        note = dataset_note(self.run)
        if note:
            print(f"data     : {note}")

    @contextmanager
    def step(self, label: str):
        """Time a block: ``with stage.step("render"): ...``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[label] = self.times.get(label, 0.0) + time.perf_counter() - t0

    def summary(self) -> pd.DataFrame:
        """Table of step times; also written, with the machine fingerprint and the digests of the stage's
        artifacts, to ``<run>/<stage>.timings.json``."""
        total = time.perf_counter() - self._t0
        df = pd.DataFrame({"step": [*self.times, "total (whole notebook)"],
                           "seconds": [*self.times.values(), total]})
        path = self.run / f"{self.name}.timings.json"
        previous = _read_record(path).get("artifacts")
        record = {"stage": self.name, "profile": self.profile_name, "device": self.device,
                  "steps": self.times, "total_s": total, "machine": self.machine,
                  "artifacts": stage_artifacts(self.run, self._before, previous=previous)}
        write_json_atomic(path, record, indent=2)
        print(f"{self.name} ran in {total:.1f} s on {self.device} (profile {self.profile_name})")
        return df.round(2)


def _read_record(path: Path) -> dict:
    """A stage record (``{}`` when missing or unreadable)."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
