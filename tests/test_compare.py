"""Stage artifact records and ``xrlib runs compare`` on small constructed run folders."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from xrlib.cli import main
from xrlib.core.artifacts import snapshot, stage_artifacts
from xrlib.core.atomic import save_npz_atomic, sha256_file
from xrlib.core.compare import compare_runs
from xrlib.core.errors import InputError


def _stage(run: Path, name: str, files: dict[str, str | bytes | dict], seconds: float = 1.0) -> None:
    """Write ``files`` (relative path → text, bytes or npz arrays) as stage ``name`` and its record."""
    before = snapshot(run)
    for rel, content in files.items():
        path = run / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            save_npz_atomic(path, content)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    record = {"stage": name, "steps": {"work": seconds}, "total_s": seconds,
              "artifacts": stage_artifacts(run, before)}
    (run / f"{name}.timings.json").write_text(json.dumps(record), encoding="utf-8")


def _build(root: Path, *, loss: str = "0.25", wall: str = "3.5", drop: str | None = None, when: str = "2026-01-01T10:00:00",
           seconds: float = 1.0, image_eps: float = 0.0) -> Path:
    """A run of three stages: a cohort (bytes), a dataset (npz + json) and a training (csv)."""
    run = root / "quick"
    run.mkdir(parents=True)
    _stage(run, "01_cohort", {"cohort/s0/ct.bin": b"\x00\x01\x02", "cohort/cohort.csv": "subject,n\ns0,1\n"}, seconds)
    _stage(run, "04_datasets", {"datasets/shard.npz": {"image": np.linspace(0, 1, 12, dtype=np.float32) + np.float32(image_eps)},
                                "datasets/build.json": json.dumps({"hash": "abc", "complete": True, "built_at": when,
                                                                   "folder": str(run / "datasets"), "wall_s": float(wall)})},
           seconds)
    files = {"models/history.csv": f"epoch,loss,epoch_s\n1,{loss},{wall}\n2,0.125,{wall}\n", "models/info.md": "ok\n"}
    if drop:
        files.pop(drop)
    _stage(run, "05_training", files, seconds)
    return run


def test_stage_artifacts_records_what_changed_relative_and_keeps_cached_entries(tmp_path):
    run = tmp_path / "run"
    (run / "old").mkdir(parents=True)
    (run / "old" / "a.txt").write_text("earlier stage", encoding="utf-8")
    (run / "x.timings.json").write_text("{}", encoding="utf-8")  # a stage record is never an artifact
    before = snapshot(run)
    assert set(before) == {"old/a.txt"}
    (run / "new").mkdir()
    (run / "new" / "b.bin").write_bytes(b"12345")
    (run / "new" / ".b.bin.tmp.part").write_bytes(b"unfinished")
    arts = stage_artifacts(run, before)
    assert list(arts) == ["new/b.bin"]
    assert arts["new/b.bin"]["sha256"] == sha256_file(run / "new" / "b.bin") and arts["new/b.bin"]["bytes"] == 5
    # the same stage again, reusing its artifact: nothing new, the previous entry stays while unchanged
    again = stage_artifacts(run, snapshot(run), previous=arts)
    assert again == arts
    time.sleep(0.01)
    (run / "new" / "b.bin").write_bytes(b"123456")  # changed outside the stage: the stale entry goes
    os.utime(run / "new" / "b.bin", ns=(1, 1))
    assert stage_artifacts(run, snapshot(run), previous=arts) == {}


def test_identical_runs_compare_equal_from_the_cli(tmp_path, capsys):
    a, b = _build(tmp_path / "a"), _build(tmp_path / "b")
    assert main(["runs", "compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "equal" in out and "01_cohort: identical (2 files: 2 identical)" in out


def test_runs_that_differ_in_times_dates_and_paths_only_are_equal(tmp_path):
    a = _build(tmp_path / "a", wall="3.5", when="2026-01-01T10:00:00", seconds=1.0)
    b = _build(tmp_path / "b", wall="9.25", when="2027-05-02T11:30:00", seconds=7.0)
    res = compare_runs(a, b)
    assert res.equal
    status = {f.path: f.status for s in res.stages for f in s.files}
    assert status["models/history.csv"] == "within tolerance"  # its epoch_s column differs
    assert status["datasets/build.json"] == "within tolerance"  # built_at, wall_s and an absolute path differ
    assert status["cohort/s0/ct.bin"] == "identical"


def test_a_numeric_csv_within_and_outside_the_tolerance(tmp_path, capsys):
    a = _build(tmp_path / "a", loss="0.25")
    near = _build(tmp_path / "near", loss="0.2500000001")
    far = _build(tmp_path / "far", loss="0.26")
    res = compare_runs(a, near, rtol=1e-6)
    # 04_datasets: its build.json holds the run folder's absolute path, which is ignored
    assert res.equal and [s.status for s in res.stages] == ["identical", "within tolerance", "within tolerance"]
    res = compare_runs(a, far, rtol=1e-6)
    assert not res.equal and res.first_difference.stage == "05_training"
    bad = [f for f in res.first_difference.files if f.status == "differ"]
    assert [f.path for f in bad] == ["models/history.csv"] and "column 'loss' row 0: 0.25 vs 0.26" in bad[0].detail
    assert compare_runs(a, far, rtol=0.1).equal  # a looser tolerance accepts it
    assert main(["runs", "compare", str(a), str(far)]) == 1
    out = capsys.readouterr().out
    assert "first differing stage: 05_training" in out and "differ: models/history.csv" in out


def test_npz_arrays_within_and_outside_the_tolerance_name_the_earliest_stage(tmp_path):
    a = _build(tmp_path / "a")
    assert compare_runs(a, _build(tmp_path / "b", image_eps=1e-7), rtol=0, atol=1e-6).equal
    res = compare_runs(a, _build(tmp_path / "c", image_eps=1e-2, loss="0.5"), rtol=0, atol=1e-6)
    assert res.first_difference.stage == "04_datasets"  # the training differs too, but later
    assert "image[0]" in res.first_difference.files[1].detail


def test_pt_tensors_compare_numerically(tmp_path):
    import torch

    from xrlib.core.atomic import save_torch_atomic

    runs = []
    for name, eps in (("a", 0.0), ("b", 1e-9), ("c", 1e-3)):
        run = tmp_path / name / "quick"
        run.mkdir(parents=True)
        before = snapshot(run)
        save_torch_atomic(run / "best.pt", {"w": torch.ones(3) + eps, "epoch": 3})
        (run / "05_t.timings.json").write_text(json.dumps({"artifacts": stage_artifacts(run, before)}), encoding="utf-8")
        runs.append(run)
    assert compare_runs(runs[0], runs[1], rtol=1e-6).equal
    assert "w[0]" in compare_runs(runs[0], runs[2], rtol=1e-6).first_difference.files[0].detail


def test_a_missing_file_makes_the_runs_differ(tmp_path):
    a, b = _build(tmp_path / "a"), _build(tmp_path / "b", drop="models/info.md")
    res = compare_runs(a, b)
    assert res.first_difference.stage == "05_training"
    assert {f.path: f.status for f in res.first_difference.files}["models/info.md"] == "missing in B"


def test_bad_paths_exit_2_with_one_line(tmp_path, capsys):
    a = _build(tmp_path / "a")
    missing = tmp_path / "nope"
    assert main(["runs", "compare", str(a), str(missing)]) == 2
    assert capsys.readouterr().err == f"error: {missing}: run B is not a folder\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["runs", "compare", str(empty), str(a)]) == 2
    assert capsys.readouterr().err == (f"error: {empty}: run A has no stage records (*.timings.json); "
                                       "is it a run folder?\n")
    assert main(["runs", "compare", str(a), str(a), "--atol", "-1"]) == 2
    assert capsys.readouterr().err == "error: --atol: must be a finite number ≥ 0, got -1.0\n"
    with pytest.raises(InputError, match="run A is not a folder"):
        compare_runs(missing, a)
