"""``make bench``'s scripts run end to end at tiny sizes (no timing is asserted, only what they report)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from xdist_threads import one_core_env

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"


def _result(name: str) -> dict:
    """A results file the benchmark wrote (the tests' results folder: ``XRLIB_BENCH_RESULTS``, see conftest)."""
    return json.loads((Path(os.environ["XRLIB_BENCH_RESULTS"]) / f"{name}.json").read_text(encoding="utf-8"))


def _run(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], cwd=REPO, env={**os.environ, **one_core_env()},
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=900)


def test_projector_bench_reports_time_and_agreement_against_itk_rtk(tmp_path):
    res = _run("bench_projectors.py", "--sizes", 32, "--repeats", 1, "--slow-repeats", 1,
               "--backends", "rtk", "torch", "--save-dir", tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {m[0]: (float(m[1]), float(m[2])) for m in
            re.findall(r"^\| 32² \| (\S+(?: direct)?) \| [\d.]+ \| ([\d.]+)× \| ([\d.]+)% \|", res.stdout, re.M)}
    assert set(rows) == {"itk-rtk direct", "rtk", "torch"}, res.stdout
    assert rows["itk-rtk direct"] == (1.0, 0.0)
    assert rows["rtk"][1] < 0.01      # the backend is the same Joseph projector on cropped channels
    assert 0.0 < rows["torch"][1] < 5.0  # a different ray marcher: close, not identical
    assert [r[1] for r in _result("projectors")["rows"]] == ["itk-rtk direct", "rtk", "torch"]  # the Performance page's
    for name in ("itk-rtk-direct", "rtk", "torch"):
        img = np.load(tmp_path / f"{name}_32.npy")
        assert img.shape == (32, 32) and img.sum() > 0


def test_diffrender_bench_reports_overhead_times_and_agreement_next_to_rtk():
    res = _run("bench_diffrender.py", "--sizes", 16, "--repeats", 1, "--batch", 2, "--steps", "slice", "1.4")
    assert res.returncode == 0, res.stderr[-2000:]
    num = r"(-?[\d.]+)"
    rows = re.findall(rf"^\| 16² \| (rtk \(projector\)|torch Joseph \(\w+\)) \| (slice|1\.4 mm) \| {num} \| {num} \| "
                      rf"(?:–|{num}) \| (-?[\d.]+)× \| ([\d.]+)% \|$", res.stdout, re.M)
    assert [(r[0].split()[0], r[1]) for r in rows] == [("rtk", "slice"), ("torch", "slice"), ("torch", "1.4 mm")], res.stdout
    assert float(rows[1][-1]) < 3.0  # every slice: the Joseph projector that rtk runs
    record = _result("diffrender")  # the Performance page's source: the same rows as printed
    assert [r[:3] for r in record["rows"]] == [["16²", "rtk (projector)", "slice"], ["16²", rows[1][0], "slice"],
                                               ["16²", rows[2][0], "1.4 mm"]]
    assert record["command"].startswith("python benchmarks/bench_diffrender.py --sizes 16")


def _bench_training():
    spec = importlib.util.spec_from_file_location("bench_training", BENCH / "bench_training.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_training_bench_runs_on_the_smoke_profile():
    res = _run("bench_training.py", "--profile", "smoke", "--steps", 1, "--warmup", 0)
    assert res.returncode == 0, res.stderr[-2000:]
    assert re.search(r"^\| smoke \| 64² \| 5 \| dice \| 4 \| as train\.py \| [\d.]+ \| 1\.00× \|$", res.stdout, re.M), res.stdout
    assert re.search(r"^\| smoke \| U-Net\(Real\+Syn_all\) \| \d+ \| [\d.]+ \| 2 \| [\d.]+ \|$", res.stdout, re.M), res.stdout
    assert _result("training-throughput")["rows"][0][:6] == ["smoke", "64²", 5, "dice", 4, "as train.py"]
    assert "U-Net(Real+Syn_all)" in [r[1] for r in _result("training-cost")["rows"]]


def test_stage_profile_reports_every_part():
    """``profile_stages.py``: the training-step settings side by side, the first-touch calls, the cohort and
    rendering breakdowns (smoke sizes; only the reported structure is asserted)."""
    res = _run("profile_stages.py", "--profile", "smoke", "--rounds", 3, "--prefilter")
    assert res.returncode == 0, res.stderr[-3000:]
    for setting in ("as the loop trains eagerly (deterministic, no NaN fill)", "NaN fill of new tensors (the loop before)",
                    "channels-last", "non-deterministic algorithms"):
        assert re.search(rf"^\| {re.escape(setting)} \| [\d.]+ \| [\d.]+× \|$", res.stdout, re.M), res.stdout
    assert re.search(r"^\| as the loop trains eagerly \(deterministic, no NaN fill\) \| [\d.]+ \| 1\.00× \|$", res.stdout, re.M)
    # what bounds the eager step: the convolutions' share and the thread layouts
    share = re.search(r"^eager step: convolutions \(forward and backward\) (\d+) % of its CPU time", res.stdout, re.M)
    assert share and 0 < int(share.group(1)) <= 100, res.stdout
    for layout in ("1 thread", r"\d+ threads", "2 trainings side by side, 1 thread each"):
        assert re.search(rf"^\| {layout} \| [\d.]+ \|$", res.stdout, re.M), res.stdout
    assert re.search(r"^default allocator: [\d.]+, [\d.]+, [\d.]+$", res.stdout, re.M), res.stdout
    assert re.search(r"^inside reuse_heap \(took effect: True\): [\d.]+, [\d.]+, [\d.]+$", res.stdout, re.M)
    for part in ("warps (CT linear, labels nearest; xrlib.anatomy.warp)", "NIfTI writes (ITK header and voxels, ISA-L gzip)",
                 "displacement field and folding guard"):
        found = re.search(rf"^\| {re.escape(part)} \| ([\d.]+) \| \d+ % \|$", res.stdout, re.M)
        assert found and float(found.group(1)) > 0, res.stdout  # the profiled function was found
    # the compiled warps and the ISA-L file against the ITK calls they replaced: same voxels / bytes
    for step in (r"CT, linear, whole grid: warp vs sitk\.Warp", r"labels, nearest: warp in reach_box vs sitk\.Warp of the grid",
                 r"CT as int16 \.nii\.gz: ISA-L \([\d.]+ MB\) vs ITK's gzip \([\d.]+ MB\)"):
        assert re.search(rf"^\| {step} \| [\d.]+ \| [\d.]+ \| [\d.]+× \| yes \|$", res.stdout, re.M), res.stdout
    # 4 material channels and the 2 clavicle masks of the realistic chain, each projected once, without
    # and with the prefilter; with it the material channels are block means (smoke: 8 × 8 × 2 voxels)
    shapes = re.findall(r"^\| \((\d+), (\d+), (\d+)\) \| [\d.]+ \|$", res.stdout, re.M)
    assert len(shapes) == 12 and "prefilter off" in res.stdout and "prefilter on" in res.stdout, res.stdout
    assert all(int(c) < int(a) / 4 for (_, _, a), (_, _, c) in zip(shapes[:4], shapes[6:10])), shapes
    assert re.search(r"^block mean of the example CT's μ in blocks of \(8, 8, 2\) voxels: xrlib\.core\.ct\.block_mean "
                     r"[\d.]+ s, skimage\.measure\.block_reduce [\d.]+ s \([\d.]+×\)$", res.stdout, re.M), res.stdout
    written = {p.stem for p in Path(os.environ["XRLIB_BENCH_RESULTS"]).glob("profile-*.json")}
    assert {"profile-train-step-U-Net-Real", "profile-thread-layouts-U-Net-Real", "profile-first-touch", "profile-cohort-smoke",
            "profile-cohort-itk", "profile-rendering-smoke", "profile-rendering-smoke-prefilter"} <= written, written
    assert len(_result("profile-rendering-smoke")["rows"]) == 6  # the 6 projected channels, as printed

