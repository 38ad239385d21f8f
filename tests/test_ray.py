"""The Ray executor (xrlib.exec.ray) on a simulated two-node cluster started by the tests: byte-identical
cohort, shards, manifests and models to the in-process executor; retries of a killed worker; failures
named; shared inputs put once; the CLI's --executor/--address. One cluster for the whole module."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray", reason="the optional Ray extra (pip install 'xrlib[ray]'; make setup installs it)")

from xrlib.anatomy import cohort  # noqa: E402
from xrlib.cli import main  # noqa: E402
from xrlib.core.atomic import sha256_file  # noqa: E402
from xrlib.data.build import build_datasets  # noqa: E402
from xrlib.data.subjects import SubjectSource  # noqa: E402
from xrlib.exec import get_executor, task_resources  # noqa: E402
from xrlib.exec.ray import MAX_RETRIES, RayExecutor, TaskFailures, check_address  # noqa: E402
from xrlib.core.errors import UsageError  # noqa: E402
from xrlib.training import TrainTask, train_all  # noqa: E402

from ray_cluster import start_cluster  # noqa: E402
from test_cohort import tiny_torso  # noqa: E402
from test_datasets import _small_profile, tiny_subject  # noqa: E402
from test_train import _cfg, _toy_datasets  # noqa: E402
from test_training_recipes import _checksum  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each on this machine; this process is the driver."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's own tasks, by value
    c = start_cluster(nodes=2, cpus_per_node=1)
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def ex(cluster):
    return RayExecutor(threads=1)  # joins the Ray this process is connected to; 1-CPU nodes


# ------------------------------------------------------------------------------ helpers (tasks sent by value)

@dataclass
class Echo:
    key: str
    threads: int = 1
    fail: bool = False
    seconds: float = 0.0  # how long the task holds its CPU

    def run(self):
        if self.seconds:
            import time

            time.sleep(self.seconds)
        if self.fail:
            raise ValueError(f"{self.key} refused")
        import torch

        return self.key, torch.get_num_threads(), ray.get_runtime_context().get_node_id()


@dataclass
class KillOnce:
    """A subject loader that kills its worker process the first time it loads ``victim`` (marker file)."""

    load: object
    victim: str
    marker: str

    def __call__(self, subject_id: str):
        if subject_id == self.victim and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)  # the worker dies mid-task, as on a lost node
        return self.load(subject_id)


def _same_build(a: Path, b: Path, manifest: pd.DataFrame) -> None:
    for rel in manifest.shard:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "manifest.csv").read_text(encoding="utf-8") == (b / "manifest.csv").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def source():
    from xrlib.data.subjects import subjects_from_volumes

    return subjects_from_volumes([(f"tiny-v{i:03d}", *tiny_subject(i)) for i in range(3)])


# ------------------------------------------------------------------------------ tests on the cluster

def test_tasks_run_on_both_nodes_in_plan_order_with_their_thread_count(ex, cluster):
    # Each task holds its node's one CPU for a while, so the queue spills to the second node even when that
    # node's worker starts seconds late (instant tasks could all finish on the head node first: a CI flake).
    out = list(ex.map([Echo(f"t{i}", seconds=1.5) for i in range(6)], progress=False))
    assert [t.key for t, _ in out] == [f"t{i}" for i in range(6)]
    assert all(r[0] == t.key and r[1] == 1 for t, r in out)  # torch threads set where it ran
    assert len({r[2] for _, r in out}) == 2  # both nodes of the simulated cluster did work


def test_failures_are_named_after_the_other_tasks_ran(ex):
    got = []
    with pytest.raises(TaskFailures, match=r"1 of 3 tasks failed: b: ValueError: b refused") as info:
        for task, _ in ex.map([Echo("a"), Echo("b", fail=True), Echo("c")], progress=False):
            got.append(task.key)
    assert got == ["a", "c"] and list(info.value.failures) == ["b"]


def test_a_task_too_big_for_any_node_is_refused_before_running(ex):
    with pytest.raises(UsageError, match=r"task big needs 4 CPUs and 0 GPUs; the largest node of the cluster has 1 and 0"):
        list(ex.map([Echo("big", threads=4)], progress=False))


def test_ray_cohort_and_datasets_are_byte_identical_and_inputs_go_up_once(ex, tmp_path, source, monkeypatch):
    ct, lab = tiny_torso()
    ccfg = cohort.CohortConfig(n_subjects=2, seed=3)
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda v, **k: puts.append(type(v).__name__) or real_put(v, **k))
    local = cohort.build_cohort([("torso", ct, lab)], ccfg, tmp_path / "c-local", progress=False)
    on_ray = cohort.build_cohort([("torso", ct, lab)], ccfg, tmp_path / "c-ray", progress=False, executor=ex)
    assert puts == ["Volume", "Volume"]  # the CT and its labels, once for both subjects
    cols = [c for c in local.columns if c != "seconds"]
    pd.testing.assert_frame_equal(local[cols], on_ray[cols])
    for rel in [*local["ct_path"], *local["labels_path"]]:
        assert sha256_file(tmp_path / "c-ray" / rel) == sha256_file(tmp_path / "c-local" / rel)

    cfg = _small_profile()
    man = build_datasets(cfg, tmp_path / "local", subjects=source, progress=False, threads=1)
    puts.clear()
    man_ray = build_datasets(cfg, tmp_path / "ray", subjects=source, progress=False, threads=1, executor=ex)
    assert puts == ["VolumeTable"]  # every subject's volumes, once for the three shard tasks
    assert man.equals(man_ray)
    _same_build(tmp_path / "local", tmp_path / "ray", man)


def test_a_killed_worker_is_retried_and_the_build_completes(ex, tmp_path, source):
    cfg = _small_profile()
    marker = tmp_path / "killed-once"
    victim = source.ids[1]
    killer = SubjectSource(source.ids, KillOnce(source.load, victim, str(marker)), source.fingerprint, source.source_of)
    man = build_datasets(cfg, tmp_path / "ray", subjects=killer, progress=False, threads=1, executor=ex)
    assert marker.exists()  # the worker did die once
    assert MAX_RETRIES == ex.max_retries == 3
    local = build_datasets(cfg, tmp_path / "local", subjects=source, progress=False, threads=1)
    assert local.equals(man)
    _same_build(tmp_path / "local", tmp_path / "ray", man)


def test_ray_trainings_give_the_same_models(ex, tmp_path):
    toy = _toy_datasets(tmp_path / "toy" / "datasets")
    cfgs = [_cfg(epochs=1), _cfg(epochs=1, name="toy U-Net(Real+Syn_all)", train_sets=["Real", "Syn_all"])]
    here = train_all(cfgs, toy, tmp_path / "here", progress=False)
    there = train_all(cfgs, toy, tmp_path / "ray", executor=ex, progress=False)
    assert list(here) == list(there) == [c.name for c in cfgs]
    for name in here:
        a, b = Path(here[name].folder), Path(there[name].folder)
        assert a.name == b.name
        assert _checksum(a / "best.pt") == _checksum(b / "best.pt")
        pd.testing.assert_frame_equal(here[name].history.drop(columns=["seconds", "images_per_s"]),
                                      there[name].history.drop(columns=["seconds", "images_per_s"]))


# ------------------------------------------------------------------------------ no cluster needed

def test_task_resources_ask_for_a_gpu_only_on_cuda(tmp_path):
    cfg = _cfg(threads=3)
    assert task_resources(TrainTask(cfg, str(tmp_path), str(tmp_path), device="cuda:0")) == {"num_cpus": 3, "num_gpus": 1}
    assert task_resources(TrainTask(cfg, str(tmp_path), str(tmp_path), device="cpu")) == {"num_cpus": 3, "num_gpus": 0}
    assert task_resources(Echo("x", threads=2)) == {"num_cpus": 2, "num_gpus": 0}


def test_bad_addresses_exit_2_with_one_line_naming_address(capsys, tmp_path):
    with pytest.raises(UsageError, match=r"^--address: 'nohost' is not a Ray address"):
        check_address("nohost")
    for address, expect in [("127.0.0.1:1", "no Ray cluster answers at '127.0.0.1:1'"),
                            ("ray://127.0.0.1:1", "no Ray cluster answers"), ("host:99999", "is not a Ray address")]:
        assert main(["dataset", "--profile", "smoke", "--out", str(tmp_path), "--executor", "ray",
                     "--address", address]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: --address: ") and expect in err, err
    assert main(["book", "--profile", "smoke", "--executor", "ray", "--address", "127.0.0.1:1", "--no-html"]) == 2
    assert capsys.readouterr().err.startswith("error: --address: no Ray cluster answers")
    assert main(["robustness", "--profile", "smoke", "--threat", "rotation", "--address", "x:1"]) == 2
    assert capsys.readouterr().err.strip() == "xrlib robustness: --address goes with --executor ray, not with --executor local"
    assert not (tmp_path / "datasets").exists()  # refused before any work


def test_executor_from_the_environment(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("XRLIB_EXECUTOR", "slurm")
    assert main(["dataset", "--profile", "smoke", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == ("xrlib dataset: $XRLIB_EXECUTOR='slurm' is not an executor "
                                               "(local, process, ray)")
    with pytest.raises(ValueError, match="unknown executor 'slurm'; expected one of local, process, ray"):
        get_executor("slurm")


def test_book_passes_the_executor_only_to_notebooks_that_take_it(tmp_path):
    from xrlib.publish.execute import RESERVED, declares_parameter, execute_stages
    from xrlib.publish.errors import BookUsageError

    root = Path(__file__).resolve().parents[1] / "notebooks"
    assert [declares_parameter(root / f"{n}.ipynb", "executor") for n in
            ("01_ct_cohort", "04_datasets", "05_training", "08_simulation_realism", "02_annotation",
             "06_rotation_robustness")] == [True] * 4 + [False] * 2
    assert "executor" in RESERVED
    with pytest.raises(BookUsageError, match="set 'executor' with --executor, not -p"):
        execute_stages("smoke", overrides={"executor": "ray"}, book_dir=tmp_path)


def test_ray_attack_rows_equal_the_local_ones(ex, toy_run):
    from xrlib.studies import robustness

    profile, run, _ = toy_run
    kw = dict(threat="pgd", alphas=[0.0], steps=2, grid=(0.0, 0.05), budgets=[0.05])
    previous = torch.get_num_threads()
    torch.set_num_threads(ex.default_task_threads())  # the tasks' thread count, here too
    try:
        local = robustness.run_threat(profile, run, **kw).results
    finally:
        torch.set_num_threads(previous)
    on_ray = robustness.run_threat(profile, run, executor=ex, **kw).results  # one task per study model
    assert local["model"].nunique() == 3
    pd.testing.assert_frame_equal(local, on_ray)
