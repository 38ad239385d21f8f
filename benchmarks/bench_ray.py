"""Ray benchmark: the Ray executor's per-task overhead on this machine, and (``--costs``) the per-task
costs that the book's "Running at scale" page combines into an estimate of a cluster run.

Overhead
    ``--tasks`` no-op tasks (each returns at once) through :class:`xrlib.exec.ray.RayExecutor` and through
    :class:`xrlib.exec.InProcessExecutor`, after a warm-up that starts Ray's worker processes (their
    start, importing torch, is paid once per worker and reported separately). Per-task overhead =
    Ray's wall time per no-op task × the cluster's CPUs (the time a task slot is busy with a task that
    does nothing: submission, scheduling, run_task, returning the result). Also the time to put a CT-sized array into the object store
    (what a shared input costs once). With ``--address`` it joins that cluster; otherwise it starts a
    one-node local cluster of ``--cpus`` CPUs (tests/ray_cluster.py).
Costs (``--costs``)
    On this CPU with the machine's thread count: one radiograph at the paper's 1800² detector, naive
    and realistic physics, rendered and preprocessed to 256² exactly as a shard task does
    (:func:`xrlib.data.recipes.render_subject`, one pose); and one PGD batch (16 images 256², 10 steps,
    L∞) against the paper's study U-Net (depth 5, random weights: the cost does not depend on them).
    One training epoch at paper size is timed by ``benchmarks/bench_training.py --profile paper``.

Usage::

    python benchmarks/bench_ray.py [--tasks 200] [--cpus 2] [--address ADDR] [--costs]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # ray_cluster: a local cluster that starts on a loaded machine


@dataclass
class NoOp:
    key: str
    threads: int = 1

    def run(self):
        return None


def overhead(args) -> list[tuple[str, str]]:
    import ray

    from xrlib.exec import InProcessExecutor
    from xrlib.exec.ray import RayExecutor

    rows = []
    t0 = time.perf_counter()
    cluster = None
    if args.address is None:
        from ray_cluster import start_cluster

        cluster = start_cluster(nodes=1, cpus_per_node=args.cpus)
        ray.init(address=cluster.address, log_to_driver=False)
    ex = RayExecutor(args.address, threads=1)
    rows.append(("start / join the cluster", f"{time.perf_counter() - t0:.1f} s"))
    t0 = time.perf_counter()
    list(ex.map([NoOp(f"warm{i}") for i in range(args.cpus)], progress=False))
    rows.append((f"warm-up: first {args.cpus} tasks (worker processes start, import xrlib + torch)",
                 f"{time.perf_counter() - t0:.1f} s"))
    tasks = [NoOp(f"t{i}") for i in range(args.tasks)]
    times = {}
    for name, executor in (("in process", InProcessExecutor()), ("ray", ex)):
        t0 = time.perf_counter()
        list(executor.map(tasks, progress=False))
        times[name] = time.perf_counter() - t0
    rows.append((f"{args.tasks} no-op tasks in process (run_task: sets torch's threads each time)",
                 f"{times['in process']:.3f} s"))
    rows.append((f"{args.tasks} no-op tasks on Ray ({args.cpus} CPUs)", f"{times['ray']:.3f} s"))
    rows.append(("Ray per-task overhead: wall per task × CPUs (submit, schedule, run_task, return)",
                 f"{times['ray'] / args.tasks * args.cpus * 1e3:.1f} ms"))
    ct = np.zeros((512, 512, 300), np.float32)  # about the size of a chest CT in float32 (300 MB)
    t0 = time.perf_counter()
    ref = ray.put(ct)
    rows.append((f"ray.put of a {ct.nbytes / 1e6:.0f} MB CT (once per shared input)", f"{time.perf_counter() - t0:.2f} s"))
    del ref
    if cluster is not None:
        ray.shutdown()
        cluster.shutdown()
    return rows


def costs() -> list[tuple[str, str]]:
    import torch

    from xrlib.attacks.pgd import pgd_attack
    from xrlib.core.ct import load_example
    from xrlib.core.profiles import load_profile
    from xrlib.core.runs import default_threads
    from xrlib.data.recipes import AnglesRecipe, JitteredRecipe, render_subject
    from xrlib.nets.unet import build_unet
    from xrlib.studies.rotation.models import study_configs

    torch.set_num_threads(default_threads())
    rows = []
    paper = load_profile("paper")
    ct, labels = load_example()
    for physics, recipe in (("naive", AnglesRecipe(physics="naive", alphas=(10.0,))),
                            ("realistic", JitteredRecipe(physics="realistic", dose_mas=paper.surrogate.dose_mas,
                                                         seed=0, jitter=paper.surrogate))):
        t0 = time.perf_counter()
        if physics == "realistic":  # one pose of the surrogate's eight
            recipe = _one_pose(recipe)
        render_subject(ct, labels, paper, recipe, "example")
        rows.append((f"render + preprocess 1 image at {paper.render.detector}² ({physics})", f"{time.perf_counter() - t0:.1f} s"))
    cfg = study_configs(paper)[0]
    model = build_unet(cfg.depth, cfg.base_channels).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, paper.image_size, paper.image_size, generator=g)
    y = (torch.rand(16, 1, paper.image_size, paper.image_size, generator=g) > 0.9).float()
    t0 = time.perf_counter()
    pgd_attack(model, x, y, eps=2 / 255, steps=10, generator=g)
    rows.append((f"PGD batch: 16 × {paper.image_size}², 10 steps, depth-{cfg.depth} U-Net", f"{time.perf_counter() - t0:.1f} s"))
    rows.append(("threads", str(default_threads())))
    return rows


def _one_pose(recipe):
    class OnePose(type(recipe)):
        def poses(self, subject):
            return super().poses(subject)[:1]

    import dataclasses

    return OnePose(**{f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--address", default=None, help="join this Ray cluster instead of starting a local one")
    ap.add_argument("--costs", action="store_true", help="also time the per-task costs (minutes on a CPU)")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print("| measurement | value |\n| --- | --- |")
    rows = []
    for name, value in overhead(args):
        rows.append([name, str(value)])
        print(f"| {name} | {value} |", flush=True)
    if args.costs:
        for name, value in costs():
            rows.append([name, str(value)])
            print(f"| {name} | {value} |", flush=True)
    from xrlib.publish.performance import write_result

    write_result("ray-costs" if args.costs else "ray", "Ray: per-task overhead" + (" and per-task costs" if args.costs else ""),
                 ["measurement", "value"], rows, [f"load average {os.getloadavg()[0]:.1f} at the end of the run"],
                 benchmark="bench_ray")
    return 0


if __name__ == "__main__":
    sys.exit(main())
