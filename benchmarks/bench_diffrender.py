"""Differentiable renderer benchmark: per-call overhead and per-pose time, forward and forward+backward, next to ``rtk``.

Renders the example CT (image + both clavicle masks, ``fov="pad"``) with
:class:`xrlib.drr.DifferentiableRenderer` at each detector size and sampling step, and with the
``rtk`` projector on the channels that :func:`xrlib.drr.render.render_batch` projects (padded μ and
masks, prepared once; the projector still crops them on every call, as ``xrlib render`` does), at
the same poses in the same process. Medians over ``--repeats`` calls of ``--batch`` poses each:

* overhead: one call with one pose on an 8×8 detector (everything but the sampling; for ``rtk``
  the per-call crop and ITK set-up). ``render_batch``'s own overhead (padding, μ conversion, crop
  on every call) is printed above the table;
* fwd / fwd+bwd: marginal time per pose, (call time − overhead) / batch (backward: the gradient
  of the image and mask sums w.r.t. α, tilt and shift);
* ratio: torch fwd per pose / ``rtk`` per pose; rel L2: the image's difference to ``rtk`` over the
  complete-ray field (%), at the first pose.

Both sides project the μ volume without the detector prefilter (``prefilter=False``,
:func:`xrlib.drr.render.detector_prefilter`), so the table compares the marching kernels on the
same 0.70 mm grid at every detector size; with the prefilter both march a coarser grid.

Usage::

    python benchmarks/bench_diffrender.py [--sizes 128 256] [--repeats 5] [--batch 4] [--steps slice 1.4]
        [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, first-call costs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4, help="poses per call")
    ap.add_argument("--steps", nargs="+", default=["slice", "1.4"],
                    help="sampling steps along the marching axis: 'slice' (every CT slice, Joseph) or mm")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    import torch

    from xrlib.anatomy.annotate import clavicles_from_labels
    from xrlib.core.ct import load_example
    from xrlib.drr import DifferentiableRenderer
    from xrlib.drr.geometry import Geometry, Pose
    from xrlib.drr.projector import get_projector
    from xrlib.drr.render import render_batch, render_channels

    ct, labels = load_example()
    clav = clavicles_from_labels(labels)
    alphas = np.linspace(-15.0, 15.0, args.batch)
    poses = [Pose(float(a), 2.0, (4.0, -3.0, 5.0)) for a in alphas]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, batch {args.batch}, repeats {args.repeats}")
    tiny = Geometry().resized(8)
    rb = _median_time(lambda: render_batch(ct, clav, tiny, poses[:1], backend="rtk", prefilter=False), args.repeats) * 1e3
    print(f"render_batch(backend='rtk') overhead per call (8², one pose): {rb:.0f} ms")
    columns = ["size", "renderer", "step", "overhead ms", "fwd ms/pose", "fwd+bwd ms/pose", "ratio fwd/rtk", "rel L2 vs rtk"]
    table = []
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|")
    padded, channels, _ = render_channels(ct, clav, "naive")
    proj = get_projector("rtk")
    rtk_call = lambda geo, ps: proj.project(channels, geo, ps, ct.center)  # noqa: E731
    rtk_overhead = _median_time(lambda: rtk_call(tiny, poses[:1]), args.repeats)
    for size in args.sizes:
        g = Geometry().resized(size)
        ref = render_batch(ct, clav, g, poses[:1], backend="rtk", prefilter=False)[0]
        rtk = (_median_time(lambda: rtk_call(g, poses), args.repeats) - rtk_overhead) / args.batch * 1e3
        table.append([f"{size}²", "rtk (projector)", "slice", f"{rtk_overhead * 1e3:.1f}", f"{rtk:.1f}", "–", "1.00×", "0.00%"])
        print("| " + " | ".join(table[-1]) + " |")
        for step in args.steps:
            step_mm = None if step == "slice" else float(step)
            small = DifferentiableRenderer(ct, clav, tiny, device=args.device, step_mm=step_mm, prefilter=False)
            one = [torch.tensor([p]) for p in (poses[0].alpha, poses[0].tilt)] + [torch.tensor([poses[0].shift])]
            overhead = _median_time(lambda: small(*one), args.repeats)
            del small
            r = DifferentiableRenderer(ct, clav, g, device=args.device, step_mm=step_mm, prefilter=False)
            dev = r.device
            a0 = torch.tensor(alphas, dtype=torch.float32, device=dev)
            t0 = torch.full_like(a0, 2.0)
            s0 = torch.tensor([[4.0, -3.0, 5.0]] * args.batch, device=dev)
            sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)  # noqa: E731

            def forward():
                with torch.no_grad():
                    r(a0, t0, s0)
                sync()

            def backward():
                a, t, s = (x.clone().requires_grad_(True) for x in (a0, t0, s0))
                out = r(a, t, s)
                (out.image.sum() + out.mask_left.sum() + out.mask_right.sum()).backward()
                sync()

            fwd = (_median_time(forward, args.repeats) - overhead) / args.batch * 1e3
            bwd = (_median_time(backward, args.repeats) - overhead) / args.batch * 1e3
            with torch.no_grad():
                img = r(a0[:1], t0[:1], s0[:1]).image[0].cpu().numpy()
            f = ref.field
            rel = np.linalg.norm(img[f] - ref.image[f]) / np.linalg.norm(ref.image[f]) * 100
            label = "slice" if step_mm is None else f"{step_mm:g} mm"
            table.append([f"{size}²", f"torch Joseph ({dev.type})", label, f"{overhead * 1e3:.1f}", f"{fwd:.1f}", f"{bwd:.1f}",
                          f"{fwd / rtk:.2f}×", f"{rel:.2f}%"])
            print("| " + " | ".join(table[-1]) + " |")
            del r
    from xrlib.publish.performance import write_result

    write_result("diffrender", f"Differentiable renderer next to the rtk projector ({args.device}, {args.batch} poses per call)",
                 columns, table, [f"render_batch(backend='rtk') overhead per call (8², one pose): {rb:.0f} ms",
                                  f"marginal ms per pose: call time minus the per-call overhead of an 8² one-pose call, "
                                  f"divided by the batch; medians of {args.repeats}; torch threads {torch.get_num_threads()}"],
                 benchmark="bench_diffrender")


if __name__ == "__main__":
    main()
