"""The stage benchmark (``benchmarks/bench_stages.py``) runs end to end at a tiny size (no timing asserted)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_stage_bench_prints_the_table_and_compares_results():
    # "before" is HEAD in a temporary git worktree, "after" this checkout: both must give the same table.
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_stages.py"), "--before", "HEAD",
                          "--repeats", "1", "--size", "32", "--subjects", "1", "--real", "2", "--models", "1",
                          "--epochs", "2", "--cohort-subjects", "1",
                          "--stages", "evaluation", "rendering-synthetic", "training", "cohort", "--profile", "smoke"],
                         cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| stage | before (median s) | after (median s) | ratio |" in res.stdout
    assert re.search(r"^\| evaluation \| [\d.]+ \| [\d.]+ \| [\d.]+× \|$", res.stdout, re.M), res.stdout
    assert "evaluation: results identical" in res.stdout, res.stdout
    assert re.search(r"^\| rendering-synthetic \| [\d.]+ \| [\d.]+ \| [\d.]+× \|$", res.stdout, re.M), res.stdout
    assert "rendering-synthetic: results identical" in res.stdout, res.stdout
    for stage in ("training", "cohort"):  # same losses per epoch; same voxels
        assert re.search(rf"^\| {stage} \| [\d.]+ \| [\d.]+ \| [\d.]+× \|$", res.stdout, re.M), res.stdout
        assert f"{stage}: results identical" in res.stdout, res.stdout
    # the epochs after the first, from the models' histories
    assert re.search(r"^\| training per epoch \| [\d.]+ \| [\d.]+ \| [\d.]+× \|$", res.stdout, re.M), res.stdout
    assert re.search(r"^training per epoch: the first epoch \(median\) took [\d.]+ s before, [\d.]+ s after$", res.stdout, re.M)
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace").stdout
    assert "bench_stages_" not in worktrees  # the temporary checkout is removed


def test_stage_bench_rejects_a_bad_environment_pair():
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_stages.py"), "--after-env", "XRLIB_BENCH_COMPILE"],
                         cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert res.returncode == 2
    assert "--after-env: expected KEY=VALUE, got 'XRLIB_BENCH_COMPILE'" in res.stderr
