"""Where the seconds of the CPU stages go: the profiles behind the stage benchmark.

``bench_stages.py`` says how much faster a stage became; this script says what is left in it (this
checkout only, no "before"; every table also goes to ``benchmarks/results/`` for the book's
Performance page):

- ``train-step``: one optimiser step of the profile's study U-Net (depth 5, Dice loss, Adam) at its
  batch and input size on random inputs, median over interleaved rounds, for the eager settings the
  training loop uses (deterministic algorithms without their NaN fill of new tensors) and the
  alternatives: the NaN fill, channels-last memory format, non-deterministic algorithms and, with
  ``--compile``, ``torch.compile`` alone and as a profile's ``train.compile`` trains (compiled,
  channels-last, fused Adam); each compiled variant's first step, the compilation, is printed apart
  (set ``TORCHINDUCTOR_CACHE_DIR`` to an empty folder for a cold compile); then what bounds the eager
  step: the convolutions' share of its CPU time (``torch.profiler``) and its time on 1 thread, on the
  training's threads and as two 1-thread trainings side by side;
- ``first-touch``: :func:`xrlib.drr.materials.material_densities` of the example CT three times in a row
  with the default allocator, then three times inside :func:`xrlib.core.memory.reuse_heap`;
- ``cohort``: one virtual subject of the example CT under ``cProfile``, after an untimed one (imports,
  the compiled warp loaded or compiled): its total and the share of the two warps
  (:func:`xrlib.anatomy.warp.warp`), the NIfTI writes and the displacement field; then subject 0's
  two warps and its CT file against the ITK calls they replaced (``sitk.Warp``, ITK's own gzip):
  times, ratio, and whether the voxels (for the file: the decompressed bytes) are identical;
- ``rendering``: one realistic shard (the surrogate's jittered poses) after an untimed one, with the
  time of each channel the RTK projector projects; with ``--prefilter`` also with the profile's
  ``render.prefilter`` switched on (:func:`xrlib.drr.render.detector_prefilter`).

Usage::

    python benchmarks/profile_stages.py [--parts train-step first-touch cohort rendering] [--profile quick]
        [--rounds 12] [--compile] [--prefilter]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import re
import statistics
import tempfile
import time
from pathlib import Path

PARTS = ("train-step", "first-touch", "cohort", "rendering")


def train_step(profile_name: str, rounds: int, compile_too: bool) -> None:
    import torch

    from xrlib.core.profiles import load_profile
    from xrlib.nets.losses import make_loss
    from xrlib.nets.unet import build_unet
    from xrlib.studies.rotation.models import study_configs

    cfg = study_configs(load_profile(profile_name))[0]
    size = load_profile(profile_name).image_size
    torch.set_num_threads(cfg.threads)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(cfg.batch_size, 1, size, size, generator=g)
    y = (torch.rand(x.shape, generator=g) > 0.7).float()
    loss_fn = make_loss(cfg.loss)
    # name -> (deterministic, NaN fill, channels-last, compiled, fused Adam)
    variants = {"as the loop trains eagerly (deterministic, no NaN fill)": (True, False, False, False, False),
                "NaN fill of new tensors (the loop before)": (True, True, False, False, False),
                "channels-last": (True, False, True, False, False),
                "non-deterministic algorithms": (False, False, False, False, False)}
    if compile_too:
        variants["torch.compile"] = (True, False, False, True, False)
        variants["train.compile: torch.compile, channels-last, fused Adam"] = (True, False, True, True, True)
    state = {}
    prev = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    for name, (_, _, cl, comp, fused) in variants.items():
        torch.manual_seed(0)
        model = build_unet(cfg.depth, cfg.base_channels)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=float(cfg.lr), fused=fused)
        xx = x.contiguous(memory_format=torch.channels_last) if cl else x
        fwd = model
        if comp:
            t0 = time.perf_counter()
            fwd = torch.compile(model, dynamic=False)
            opt.zero_grad()
            loss_fn(fwd(xx), y).backward()
            print(f"{name}: first step (compilation) {time.perf_counter() - t0:.1f} s", flush=True)
        state[name] = (fwd, opt, xx)
    times = {k: [] for k in variants}
    try:
        for r in range(rounds):
            for name, (det, fill, *_) in variants.items():
                torch.use_deterministic_algorithms(det, warn_only=True)
                torch.utils.deterministic.fill_uninitialized_memory = fill
                fwd, opt, xx = state[name]
                t0 = time.perf_counter()
                for _ in range(3):
                    opt.zero_grad(set_to_none=True)
                    loss_fn(fwd(xx), y).backward()
                    opt.step()
                times[name].append((time.perf_counter() - t0) / 3)
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = prev[1]
    ref = statistics.median(times[next(iter(variants))][2:])
    print(f"\ntraining step of {cfg.name}'s U-Net, batch {cfg.batch_size} at {size}², {cfg.threads} threads "
          f"(median of {rounds - 2} interleaved rounds of 3 steps)\n")
    print("| setting | ms per step | speed vs the loop's setting |\n|---|---:|---:|")
    table = []
    for name in variants:
        m = statistics.median(times[name][2:])
        table.append([name, f"{1000 * m:.1f}", f"{ref / m:.2f}×"])
        print(f"| {name} | {1000 * m:.1f} | {ref / m:.2f}× |")
    _save(f"profile-train-step-{cfg.name}" + ("-compile" if compile_too else ""),
          f"Training step settings side by side ({cfg.name}: batch {cfg.batch_size} at {size}², {cfg.threads} threads)",
          ["setting", "ms per step", "speed vs the loop's setting"], table,
          [f"median of {rounds - 2} interleaved rounds of 3 steps"])
    _eager_step_limits(cfg, x, y, loss_fn, rounds)


def _eager_step_limits(cfg, x, y, loss_fn, rounds: int) -> None:
    """What bounds the eager step: the convolutions' share of its CPU time (``torch.profiler``), and
    its time on 1 thread, on ``cfg.threads`` and as two trainings side by side on 1 thread each
    (two Python threads; torch releases the GIL inside its operators)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from torch.profiler import ProfilerActivity, profile

    from xrlib.nets.unet import build_unet

    def make():
        torch.manual_seed(0)
        model = build_unet(cfg.depth, cfg.base_channels)
        return model, torch.optim.Adam(model.parameters(), lr=float(cfg.lr))

    def steps(pair, n: int = 3) -> None:
        model, opt = pair
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

    a, b = make(), make()
    prev = torch.get_num_threads()
    labels = ("1 thread", f"{cfg.threads} threads", "2 trainings side by side, 1 thread each")
    times = {k: [] for k in labels}
    try:
        torch.set_num_threads(cfg.threads)
        steps(a)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            steps(a)
        events = prof.key_averages()
        conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
        total = sum(e.self_cpu_time_total for e in events)
        with ThreadPoolExecutor(2) as pool:
            for label, threads in zip(labels, (1, cfg.threads, 1)):  # in blocks: a thread-count change respins the pool
                torch.set_num_threads(threads)
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    if label.startswith("2 trainings"):
                        list(pool.map(steps, (a, b)))
                    else:
                        steps(a)
                    times[label].append((time.perf_counter() - t0) / 3)
    finally:
        torch.set_num_threads(prev)
    print(f"\neager step: convolutions (forward and backward) {100 * conv / total:.0f} % of its CPU time (torch.profiler)\n")
    print(f"| eager step (median of {rounds - 2} rounds of 3 steps after 2) | ms per step of each training |\n|---|---:|")
    table = []
    for label in labels:
        table.append([label, f"{1000 * statistics.median(times[label][2:]):.1f}"])
        print(f"| {label} | {1000 * statistics.median(times[label][2:]):.1f} |")
    _save(f"profile-thread-layouts-{cfg.name}", f"Eager training step: thread layouts ({cfg.name})",
          ["eager step layout", "ms per step of each training"], table,
          [f"convolutions (forward and backward) {100 * conv / total:.0f} % of the eager step's CPU time (torch.profiler)",
           f"median of {rounds - 2} rounds of 3 steps after 2"])


def _save(name: str, title: str, columns: list[str], rows: list[list], notes: list[str] | None = None) -> None:
    """Write one table to the benchmark results (``xrlib.publish.performance``: the book's Performance page)."""
    from xrlib.publish.performance import write_result

    name = re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9_-]", "-", name)).strip("-")  # e.g. a model name in it
    write_result(name, title, columns, rows, notes, benchmark="profile_stages")


def first_touch() -> None:
    from xrlib.core.ct import load_example
    from xrlib.core.memory import reuse_heap
    from xrlib.drr.materials import material_densities

    ct, _ = load_example()

    def three() -> list[float]:
        out = []
        for _ in range(3):
            t0 = time.perf_counter()
            material_densities(ct.array)
            out.append(time.perf_counter() - t0)
        return out

    plain = three()
    with reuse_heap() as took:
        kept = three()
    print(f"\nmaterial_densities of the example CT ({ct.array.size / 1e6:.0f} M voxels), three calls in a row, s:")
    print("default allocator:", ", ".join(f"{t:.2f}" for t in plain))
    print(f"inside reuse_heap (took effect: {took}):", ", ".join(f"{t:.2f}" for t in kept))
    _save("profile-first-touch", "material_densities of the example CT, three calls in a row (s)",
          ["allocator", "call 1", "call 2", "call 3"],
          [["default", *(f"{t:.2f}" for t in plain)], [f"inside reuse_heap (took effect: {took})", *(f"{t:.2f}" for t in kept)]])


def _shares(stats: pstats.Stats, total: float, parts: dict[str, str]) -> list[list[str]]:
    found = {k: 0.0 for k in parts}
    for (_, _, func), (_, _, _, cum, _) in stats.stats.items():
        for label, name in parts.items():
            if func == name:
                found[label] = max(found[label], cum)
    rows = []
    for label, t in found.items():
        rows.append([label, f"{t:.2f}", f"{100 * t / total:.0f} %"])
        print(f"| {label} | {t:.2f} | {100 * t / total:.0f} % |")
    return rows


def cohort(profile_name: str) -> None:
    import os

    from xrlib.anatomy import cohort as C
    from xrlib.core.ct import load_example
    from xrlib.core.profiles import load_profile

    ct, labels = load_example()
    cfg = C.CohortConfig.from_profile(load_profile(profile_name))
    with tempfile.TemporaryDirectory() as out:
        C.SubjectTask("example", 1, ct, labels, cfg, Path(out), "profile", "profile", threads=os.cpu_count() or 1).run()
        task = C.SubjectTask("example", 0, ct, labels, cfg, Path(out), "profile", "profile", threads=os.cpu_count() or 1)
        pr = cProfile.Profile()
        t0 = time.perf_counter()
        pr.runcall(task.run)
        total = time.perf_counter() - t0
    print(f"\none virtual subject of the example CT ({profile_name} settings, {task.threads} threads) after an untimed one: {total:.2f} s\n")
    print("| part | s | share |\n|---|---:|---:|")
    rows = _shares(pstats.Stats(pr), total, {"warps (CT linear, labels nearest; xrlib.anatomy.warp)": "warp",
                                             "NIfTI writes (ITK header and voxels, ISA-L gzip)": "write_image_atomic",
                                             "displacement field and folding guard": "_displacement_field"})
    _save(f"profile-cohort-{profile_name}", f"One virtual subject ({profile_name} settings, {task.threads} threads): its parts",
          ["part", "s", "share"], rows, [f"the whole subject after an untimed one: {total:.2f} s"])
    _cohort_against_itk(ct, labels, cfg, os.cpu_count() or 1)


def _median_time(fn, repeats: int = 3) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls of ``fn`` (after one untimed call) and its last result."""
    result, times = fn(), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _cohort_against_itk(ct, labels, cfg, threads: int) -> None:
    """Subject 0's two warps and its CT file, each against the ITK call it replaced, on ``threads`` threads."""
    import gzip

    import numpy as np
    import SimpleITK as sitk

    from xrlib.anatomy import deformation as D
    from xrlib.anatomy.cohort import _ct_to_int16
    from xrlib.anatomy.warp import reach_box, warp
    from xrlib.core.atomic import write_image_atomic

    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        params = D.sample_params(D.subject_seed(cfg.seed, "example", 0, 0), cfg)
        field, u, _ = D._displacement_field(ct, labels, params, cfg)
        axes = {"air": [], "edge": [0, 1, 2], "continue_si": [ct.si_axis]}[cfg.outside]
        src_ct, src_lab = (D._continued(v, axes, u) for v in (ct, labels))
        grid = (ct.shape_ijk, ct.origin, ct.spacing, tuple(float(d) for d in np.asarray(ct.direction).ravel()))
        ct_img, lab_img = sitk.Cast(src_ct.to_sitk(), sitk.sitkFloat32), src_lab.to_sitk()
        box = reach_box(field, u, src_lab, ct)
        rows = []
        ours, warped = _median_time(lambda: warp(src_ct, field, u, ct, linear=True, fill=D.AIR_HU))
        itk, b = _median_time(lambda: sitk.GetArrayFromImage(sitk.Warp(ct_img, field, sitk.sitkLinear, *grid, D.AIR_HU)))
        rows.append(("CT, linear, whole grid: warp vs sitk.Warp", ours, itk, np.array_equal(warped, b)))
        ours, a = _median_time(lambda: warp(src_lab, field, u, ct, linear=False, fill=0, box=box))
        itk, b = _median_time(lambda: sitk.GetArrayFromImage(sitk.Warp(lab_img, field, sitk.sitkNearestNeighbor, *grid, 0.0)))
        rows.append(("labels, nearest: warp in reach_box vs sitk.Warp of the grid", ours, itk, np.array_equal(a, b)))
        img = _ct_to_int16(ct.with_array(warped))  # the subject's CT file
        with tempfile.TemporaryDirectory() as d:
            ours, _ = _median_time(lambda: write_image_atomic(Path(d) / "a.nii.gz", img))
            itk, _ = _median_time(lambda: sitk.WriteImage(img, str(Path(d) / "b.nii.gz"), True))
            same = gzip.decompress((Path(d) / "a.nii.gz").read_bytes()) == gzip.decompress((Path(d) / "b.nii.gz").read_bytes())
            sizes = [(Path(d) / n).stat().st_size / 1e6 for n in ("a.nii.gz", "b.nii.gz")]
        rows.append((f"CT as int16 .nii.gz: ISA-L ({sizes[0]:.1f} MB) vs ITK's gzip ({sizes[1]:.1f} MB)", ours, itk, same))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
    print(f"\nsubject 0 against the ITK calls it replaced ({threads} threads, medians of 3 after one untimed call)\n")
    print("| step | xrlib s | ITK s | ratio | identical |\n|---|---:|---:|---:|---|")
    for name, ours, itk, same in rows:
        print(f"| {name} | {ours:.2f} | {itk:.2f} | {itk / ours:.2f}× | {'yes' if same else 'NO'} |")
    _save("profile-cohort-itk", f"A subject's steps against the ITK calls they replaced ({threads} threads)",
          ["step", "xrlib s", "ITK s", "ratio", "identical"],
          [[n, f"{o:.2f}", f"{i:.2f}", f"{i / o:.2f}×", "yes" if same else "NO"] for n, o, i, same in rows],
          ["medians of 3 after one untimed call"])


def rendering(profile_name: str, prefilter: bool = False) -> None:
    from xrlib.core.ct import load_example
    from xrlib.core.memory import reuse_heap
    from xrlib.core.profiles import load_profile
    from xrlib.data.recipes import JitteredRecipe, render_subject
    from xrlib.drr.projector import RTKProjector

    profile = load_profile(profile_name)
    if prefilter:
        import dataclasses

        profile = dataclasses.replace(profile, render=dataclasses.replace(profile.render, prefilter=True))
    ct, labels = load_example()
    recipe = JitteredRecipe(physics="realistic", dose_mas=profile.surrogate.dose_mas, seed=profile.seed,
                            jitter=profile.surrogate)
    calls: list[tuple[tuple, float]] = []
    original = RTKProjector._project_volume

    def timed(self, vol, rays):
        t0 = time.perf_counter()
        out = original(self, vol, rays)
        calls.append((vol.array.shape, time.perf_counter() - t0))
        return out

    RTKProjector._project_volume = timed
    try:
        with reuse_heap():  # as the in-process executor runs shards
            render_subject(ct, labels, profile, recipe, "warm-up")
            calls.clear()
            t0 = time.perf_counter()
            render_subject(ct, labels, profile, recipe, "example")
            total = time.perf_counter() - t0
    finally:
        RTKProjector._project_volume = original
    proj = sum(t for _, t in calls)
    print(f"\none realistic shard ({profile.surrogate.poses_per_subject} jittered poses, "
          f"prefilter {'on' if profile.render.prefilter else 'off'}, "
          f"{profile.render.detector}² detector) after an untimed one: {total:.2f} s, of it the RTK projector "
          f"{proj:.2f} s ({100 * proj / total:.0f} %)\n")
    print("| projected channel (k, j, i voxels) | s |\n|---|---:|")
    for shape, t in calls:
        print(f"| {shape} | {t:.2f} |")
    _save(f"profile-rendering-{profile_name}" + ("-prefilter" if profile.render.prefilter else ""),
          f"One realistic shard ({profile_name}, prefilter {'on' if profile.render.prefilter else 'off'}): projector calls",
          ["projected channel (k, j, i voxels)", "s"], [[str(shape), f"{t:.2f}"] for shape, t in calls],
          [f"{profile.surrogate.poses_per_subject} jittered poses, {profile.render.detector}² detector, after an untimed "
           f"shard: {total:.2f} s, of it the RTK projector {proj:.2f} s ({100 * proj / total:.0f} %)"])
    if profile.render.prefilter:
        _block_mean_against_skimage(ct, profile)


def _block_mean_against_skimage(ct, profile) -> None:
    """The prefilter's block mean of the example CT's μ next to skimage's ``block_reduce`` (medians of 3)."""
    import numpy as np
    from skimage.measure import block_reduce

    from xrlib.core.ct import block_mean
    from xrlib.drr.geometry import Geometry
    from xrlib.drr.materials import naive_mu
    from xrlib.drr.render import detector_prefilter_factors

    mu = ct.with_array(naive_mu(ct.array))
    fi, fj, fk = detector_prefilter_factors(mu, Geometry.from_render(profile.render))

    def median_s(fn) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    ours = median_s(lambda: block_mean(mu, (fi, fj, fk)))
    ref = median_s(lambda: block_reduce(mu.array, (fk, fj, fi), np.mean, cval=0))
    print(f"\nblock mean of the example CT's μ in blocks of {(fi, fj, fk)} voxels: xrlib.core.ct.block_mean "
          f"{ours:.3f} s, skimage.measure.block_reduce {ref:.3f} s ({ref / ours:.1f}×)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--rounds", type=int, default=12, help="train-step: interleaved rounds (the first 2 are dropped)")
    ap.add_argument("--compile", action="store_true", help="train-step: also torch.compile (about a minute to compile)")
    ap.add_argument("--prefilter", action="store_true", help="rendering: also with the profile's render.prefilter on")
    args = ap.parse_args(argv)
    if args.rounds < 3:
        ap.error("--rounds: expected at least 3 (the first 2 are warm-up)")
    for part in args.parts:
        if part == "train-step":
            train_step(args.profile, args.rounds, args.compile)
        elif part == "first-touch":
            first_touch()
        elif part == "cohort":
            cohort(args.profile)
        else:
            rendering(args.profile)
            if args.prefilter:
                rendering(args.profile, prefilter=True)


if __name__ == "__main__":
    main()
