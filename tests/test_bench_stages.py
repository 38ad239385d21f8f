"""The stage benchmark (``benchmarks/bench_stages.py``) at a tiny size (no timing asserted).

The harness — a temporary git worktree as "before", one subprocess per timed run, the table, the result
comparison and the per-epoch row — runs end to end on the two stages that need no CT (evaluation and
training); the CT stages (rendering, cohort) run in this process through the same stage functions, twice,
and their results must be identical (what the harness compares between the two trees).
"""

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from xdist_threads import one_core_env

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "bench_stages.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_stages", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_stage_bench_prints_the_table_and_compares_results():
    # "before" is HEAD in a temporary git worktree, "after" this checkout: both must give the same table.
    res = subprocess.run([sys.executable, str(SCRIPT), "--before", "HEAD", "--repeats", "1", "--size", "32",
                          "--subjects", "1", "--real", "2", "--models", "1", "--epochs", "2",
                          "--stages", "evaluation", "training", "--profile", "smoke"],
                         cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600,
                         env={**os.environ, **one_core_env()})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| stage | before (median s) | after (median s) | ratio |" in res.stdout
    for stage in ("evaluation", "training"):  # same Dice/HD rows; same losses per epoch
        assert re.search(rf"^\| {stage} \| [\d.]+ \| [\d.]+ \| [\d.]+× \|$", res.stdout, re.M), res.stdout
        assert f"{stage}: results identical" in res.stdout, res.stdout
    # the epochs after the first, from the models' histories
    assert re.search(r"^\| training per epoch \| [\d.]+ \| [\d.]+ \| [\d.]+× \|$", res.stdout, re.M), res.stdout
    assert re.search(r"^training per epoch: the first epoch \(median\) took [\d.]+ s before, [\d.]+ s after$", res.stdout, re.M)
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace").stdout
    assert "bench_stages_" not in worktrees  # the temporary checkout is removed


@pytest.mark.parametrize("stage", ["rendering-synthetic", "cohort"])
def test_ct_stages_time_their_work_and_give_the_same_result_twice(stage, tmp_path, monkeypatch):
    for key, value in one_core_env().items():  # the timed tasks' threads (bench_stages._threads)
        monkeypatch.setenv(key, value)
    bench = _bench_module()
    args = argparse.Namespace(profile="smoke", cohort_subjects=1)
    folder = tmp_path / "inputs"
    folder.mkdir()
    bench.STAGES[stage].build(args, folder)
    seconds = [bench.STAGES[stage].run(folder, tmp_path / f"run{k}.pkl") for k in (1, 2)]
    assert all(s > 0 for s in seconds), seconds
    assert bench._same_result(tmp_path / "run1.pkl", tmp_path / "run2.pkl")
    rows = pd.read_pickle(tmp_path / "run1.pkl")
    if stage == "cohort":  # one subject after the warm-up, its voxels checksummed
        assert len(rows) == 1 and rows["ct_path"].str.fullmatch(r"[0-9a-f]{40}").all()
    else:  # every α of the profile's synthetic set, one checksum per image
        assert len(rows) == 21 and rows["image_sha1"].nunique() == 21


@pytest.mark.parametrize("flags, message", [
    (["--after-env", "XRLIB_BENCH_COMPILE"], "--after-env: expected KEY=VALUE, got 'XRLIB_BENCH_COMPILE'"),
    (["--before-tree", ".", "--before-env", "XRLIB_REUSE_HEAP"], "--before-env: expected KEY=VALUE, got 'XRLIB_REUSE_HEAP'"),
])
def test_stage_bench_rejects_a_bad_environment_pair(flags, message):
    res = subprocess.run([sys.executable, str(SCRIPT), *flags],
                         cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert res.returncode == 2
    assert message in res.stderr
