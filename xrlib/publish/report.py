"""What one ``xrlib book`` invocation reports: the status of each stage and of the HTML build."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageResult:
    name: str
    status: str = "skipped"          # ran | cached | failed | skipped
    wall_s: float | None = None
    device: str = ""
    note: str = ""


@dataclass
class BookReport:
    profile: str
    stages: list[StageResult] = field(default_factory=list)
    html: Path | None = None
    html_note: str = ""
    error: str = ""
    html_s: float | None = None      # wall time of the jupyter-book build
    executor: str = "local"          # where the chapters' independent tasks ran (``xrlib book --executor``)

    @property
    def ok(self) -> bool:
        return not self.error

    def table(self) -> str:
        rows = [("stage", "status", "wall", "device")]
        for s in self.stages:
            wall = "-" if s.wall_s is None else f"{s.wall_s:.1f} s"
            rows.append((s.name, s.status + (f" ({s.note})" if s.note else ""), wall, s.device or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)
