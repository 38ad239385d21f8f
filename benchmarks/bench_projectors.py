"""Projector benchmark: median ms per pose for image + two clavicle-mask channels.

Runs every configuration in its own subprocess so that peak RSS is measured per backend, and
compares each backend with a direct itk-rtk Joseph call on the same geometry (the reference that
the default CPU backend must stay within 1.25× of): time ratio and the relative L2 difference of
the μ image at α = −20°. Where itk-rtk is not installed (e.g. a GPU machine with only
the torch stack), the first backend listed is the reference. On CUDA, ``torch`` is nanodrr's fused
Triton kernel and ``diffdrr`` runs on the GPU too. Usage::

    python benchmarks/bench_projectors.py [--sizes 256 512] [--repeats 5] [--backends rtk torch diffdrr]
        [--save-dir DIR]   # keep each configuration's μ image as DIR/<backend>_<size>.npy
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def _channels():
    from xrlib.anatomy.annotate import clavicles_from_labels
    from xrlib.core.ct import load_example
    from xrlib.drr.materials import naive_mu

    ct, labels = load_example()
    clav = clavicles_from_labels(labels)
    f32 = lambda v: v.with_array(v.array.astype(np.float32))  # noqa: E731
    return ct, [ct.with_array(naive_mu(ct.array)), f32(clav.left), f32(clav.right)]


def run_one(kind: str, size: int, repeats: int, save: str | None = None, batch: int = 1) -> dict:
    """Time one configuration in this process; returns a JSON-able row.

    ``save``: .npy file for the μ image at α = −20° (the untimed warm-up call); ``batch``: poses per projector call
    (the time per pose is the call's time / ``batch``).
    """
    from xrlib.drr.geometry import Geometry, Pose, rays_in_patient_frame

    ct, channels = _channels()
    g = Geometry().resized(size)
    alphas = np.linspace(-20, 20, (repeats + 1) * batch)
    poses = [[Pose(alpha=a) for a in alphas[i * batch:(i + 1) * batch]] for i in range(repeats + 1)]
    if kind == "itk-rtk direct":
        # The plain way to use itk-rtk: one Joseph filter per channel on the full volume.
        from xrlib.drr.projector import RTKProjector

        helper = RTKProjector()  # only for the geometry/stack builders shared with the backend
        itk, rtk = helper._itk, helper._rtk
        images = [helper.itk_volume(c) for c in channels]
        image_type = itk.Image[itk.F, 3]

        def once(batch_poses):
            geo = helper.rtk_geometry([rays_in_patient_frame(g, p, ct.center) for p in batch_poses])
            outs = []
            for img in images:
                stack = helper.empty_stack(g, len(batch_poses))  # keep the source alive while the filter runs
                f = rtk.JosephForwardProjectionImageFilter[image_type, image_type].New()
                f.SetInput(0, stack.GetOutput())
                f.SetInput(1, img)
                f.SetGeometry(geo)
                f.Update()
                outs.append(itk.array_from_image(f.GetOutput()))
            return outs[0][0]  # μ image of the first pose
    else:
        from xrlib.drr.projector import get_projector

        proj = get_projector(kind)

        def once(batch_poses):
            return proj.project(channels, g, batch_poses, ct.center)[0, 0]  # μ image of the first pose

    # Warm-up (lazy ITK template loading, torch kernels); its pose is α = −20° for every
    # configuration, so its μ image is the one compared across backends.
    first = np.asarray(once(poses[0]), np.float32).reshape(size, size)
    if save:
        np.save(save, first)
    times = []
    for p in poses[1:]:
        t0 = time.perf_counter()
        out = once(p)
        times.append((time.perf_counter() - t0) / batch)
        assert float(np.sum(out)) > 0, f"{kind} produced an empty projection"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"backend": kind, "size": size, "median_ms": 1e3 * statistics.median(times), "repeats": len(times),
            "batch": batch, "peak_rss_mb": peak_mb}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slow-repeats", type=int, default=3, help="repeats for torch/diffdrr on a CPU")
    ap.add_argument("--backends", nargs="+", default=["rtk", "torch", "diffdrr"])
    ap.add_argument("--batch", type=int, default=1, help="poses per projector call (time per pose = call / batch)")
    ap.add_argument("--save-dir", help="keep each configuration's μ image as <backend>_<size>.npy here")
    ap.add_argument("--child", nargs=5, metavar=("KIND", "SIZE", "REPEATS", "SAVE", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, size, rep, save, batch = args.child
        print(json.dumps(run_one(kind, int(size), int(rep), save, int(batch))))
        return 0

    import torch

    cuda = torch.cuda.is_available()
    kinds = list(args.backends)
    if importlib.util.find_spec("itk") is None:
        kinds = [k for k in kinds if k != "rtk"]
        print("itk-rtk is not installed here: no rtk rows; the first backend listed is the reference")
    else:
        kinds.insert(0, "itk-rtk direct")
    if not kinds:
        print("nothing to measure", file=sys.stderr)
        return 2
    print(f"device: {'cuda ' + torch.cuda.get_device_name() if cuda else 'cpu'}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}; example CT 512×512×133; channels: μ + clavicle L + R; "
          f"{args.batch} pose(s) per call")
    if args.save_dir:
        os.makedirs(args.save_dir, exist_ok=True)
        return measure(args, kinds, cuda, args.save_dir)
    with tempfile.TemporaryDirectory(prefix="bench_projectors_") as tmp:
        return measure(args, kinds, cuda, tmp)


def measure(args: argparse.Namespace, kinds: list[str], cuda: bool, save_dir: str) -> int:
    """Run every configuration in a child process and print the table (μ images kept in ``save_dir``)."""
    rows = []
    for size in args.sizes:
        for kind in kinds:
            slow = kind in ("torch", "diffdrr") and not cuda
            rep = args.slow_repeats if slow else args.repeats
            save = os.path.join(save_dir, f"{kind.replace(' ', '-')}_{size}.npy")
            cmd = [sys.executable, __file__, "--child", kind, str(size), str(rep), save, str(args.batch)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{kind} at {size}² failed:\n{res.stderr[-2000:]}", file=sys.stderr)
                return 1
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            rows[-1]["image"] = save
            r = rows[-1]
            print(f"  measured {kind:15s} {size:4d}²: {r['median_ms']:9.1f} ms/pose", flush=True)

    print()
    columns = ["detector", "backend", "median ms/pose", f"ratio vs {kinds[0]}", f"μ rel. L2 vs {kinds[0]}", "peak RSS (MB)"]
    table = []
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---:|---:|---:|---:|")
    for size in args.sizes:
        ref = next(r for r in rows if r["size"] == size and r["backend"] == kinds[0])
        ref_img = np.load(ref["image"])
        for r in (r for r in rows if r["size"] == size):
            img = np.load(r["image"])
            rel = float(np.linalg.norm(img - ref_img) / np.linalg.norm(ref_img))
            table.append([f"{size}²", r["backend"], f"{r['median_ms']:.1f}", f"{r['median_ms'] / ref['median_ms']:.2f}×",
                          f"{100 * rel:.2f}%", f"{r['peak_rss_mb']:.0f}"])
            print("| " + " | ".join(table[-1]) + " |")
    from xrlib.publish.performance import write_result

    write_result("projectors" if args.batch == 1 else f"projectors-batch{args.batch}",
                 f"Projector backends, {args.batch} pose(s) per call", columns, table,
                 ["channels: μ + clavicle L + R of the example CT (432 mm field); each configuration in its own process",
                  f"median of {args.repeats} calls ({args.slow_repeats} for torch/diffdrr on a CPU)"], benchmark="bench_projectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
