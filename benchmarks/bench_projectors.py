"""Projector benchmark: median ms per pose for image + two clavicle-mask channels.

Runs every configuration in its own subprocess so that peak RSS is measured per backend, and
compares each backend with a direct itk-rtk Joseph call on the same geometry (the reference that
the default CPU backend must stay within 1.25× of). Usage::

    python benchmarks/bench_projectors.py [--sizes 256 512] [--repeats 5] [--backends rtk torch diffdrr]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def _channels():
    from xrlib.annotate import clavicles_from_labels
    from xrlib.ct import load_example
    from xrlib.physics import naive_mu

    ct, labels = load_example()
    clav = clavicles_from_labels(labels)
    f32 = lambda v: v.with_array(v.array.astype(np.float32))  # noqa: E731
    return ct, [ct.with_array(naive_mu(ct.array)), f32(clav.left), f32(clav.right)]


def run_one(kind: str, size: int, repeats: int) -> dict:
    """Time one configuration in this process; returns a JSON-able row."""
    from xrlib.geometry import Geometry, Pose, rays_in_patient_frame

    ct, channels = _channels()
    g = Geometry().resized(size)
    poses = [Pose(alpha=a) for a in np.linspace(-20, 20, repeats + 1)]
    if kind == "itk-rtk direct":
        # The plain way to use itk-rtk: one Joseph filter per channel on the full volume.
        from xrlib.projector import RTKProjector

        helper = RTKProjector()  # only for the geometry/stack builders shared with the backend
        itk, rtk = helper._itk, helper._rtk
        images = [helper.itk_volume(c) for c in channels]
        image_type = itk.Image[itk.F, 3]

        def once(pose):
            geo = helper.rtk_geometry([rays_in_patient_frame(g, pose, ct.center)])
            outs = []
            for img in images:
                stack = helper.empty_stack(g, 1)  # keep the source alive while the filter runs
                f = rtk.JosephForwardProjectionImageFilter[image_type, image_type].New()
                f.SetInput(0, stack.GetOutput())
                f.SetInput(1, img)
                f.SetGeometry(geo)
                f.Update()
                outs.append(itk.array_from_image(f.GetOutput()))
            return outs
    else:
        from xrlib.projector import get_projector

        proj = get_projector(kind)

        def once(pose):
            return proj.project(channels, g, [pose], ct.center)

    once(poses[0])  # warm-up: lazy ITK template loading, torch kernels
    times = []
    for p in poses[1:]:
        t0 = time.perf_counter()
        out = once(p)
        times.append(time.perf_counter() - t0)
        assert float(np.sum(out[0])) > 0, f"{kind} produced an empty projection"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"backend": kind, "size": size, "median_ms": 1e3 * statistics.median(times), "repeats": len(times),
            "peak_rss_mb": peak_mb}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slow-repeats", type=int, default=3, help="repeats for torch/diffdrr on a CPU")
    ap.add_argument("--backends", nargs="+", default=["rtk", "torch", "diffdrr"])
    ap.add_argument("--child", nargs=3, metavar=("KIND", "SIZE", "REPEATS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, size, rep = args.child
        print(json.dumps(run_one(kind, int(size), int(rep))))
        return 0

    import torch

    print(f"device: {'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, "
          f"{os.cpu_count()} CPU cores; example CT 512×512×133; channels: μ + clavicle L + R")
    rows = []
    for size in args.sizes:
        for kind in ["itk-rtk direct", *args.backends]:
            slow = kind in ("torch", "diffdrr") and not torch.cuda.is_available()
            rep = args.slow_repeats if slow else args.repeats
            cmd = [sys.executable, __file__, "--child", kind, str(size), str(rep)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{kind} at {size}² failed:\n{res.stderr[-2000:]}", file=sys.stderr)
                return 1
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  measured {kind:15s} {size:4d}²: {r['median_ms']:9.1f} ms/pose", flush=True)

    print()
    print("| detector | backend | median ms/pose | ratio vs itk-rtk direct | peak RSS (MB) |")
    print("|---|---|---:|---:|---:|")
    for size in args.sizes:
        ref = next(r for r in rows if r["size"] == size and r["backend"] == "itk-rtk direct")
        for r in (r for r in rows if r["size"] == size):
            print(f"| {size}² | {r['backend']} | {r['median_ms']:.1f} | {r['median_ms'] / ref['median_ms']:.2f}× "
                  f"| {r['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
