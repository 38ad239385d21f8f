"""Portability benchmark: does ``XRLIB_PORTABLE=1`` make trainings on CPUs of different instruction sets
give the same weights, and what does it cost per step?

One machine stands in for three CPUs by capping the instruction sets its libraries may use, through
the variables the libraries read at load time (set before the training process starts):

- ``this CPU``: nothing capped (torch picks its best kernels, e.g. AVX-512);
- ``AVX2 CPU``: ``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2`` (a CPU without AVX-512);
- ``SSE4.1 CPU``: ``ATEN_CPU_CAPABILITY=default``, ``ONEDNN_MAX_CPU_ISA=SSE41`` (a CPU without AVX2).

``this CPU`` runs with the switch off and on; the capped CPUs run with it off (with it on, the switch
keeps a cap that is already set, which models what such a CPU cannot do, so their torch and oneDNN
settings would be the same). Each of those trains with 1 and with 2 torch threads, in a fresh process. A training is the
study's training step (:func:`xrlib.nets.unet.build_unet`, :func:`xrlib.nets.losses.make_loss`
``"dice"``, Adam, deterministic algorithms, seeded weights and data) for ``--steps`` steps on a fixed
random batch; the table gives the SHA-256 of the final weights, their relative L2 distance to the
first row's (this CPU, switch off, 1 thread), torch's reported capability and the median time per step.

What holds and what does not (on an x86-64 machine with AVX-512; the committed JSON shows the run):

- With the switch on, ``this CPU`` and ``AVX2 CPU`` run the same kernels and give the same weights: a
  machine with AVX-512 and one with only AVX2 agree when both set ``XRLIB_PORTABLE=1``.
- The switch does not make a CPU without AVX2 (``SSE4.1 CPU``) agree: it caps, it cannot raise.
- The thread count changes the bits with or without the switch: results are comparable only at the
  same thread count (a model's cache key records it; the fingerprint records it).
- Not pinned: MKL's BLAS code paths, OpenBLAS and the numba-compiled loops of xrlib (rendering, the
  cohort's warp), and a different torch, oneDNN or numpy build changes results anyway (the fingerprint
  records the builds).

Usage::

    python benchmarks/bench_portability.py [--steps 30] [--size 64] [--out benchmarks/results/portability.json]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The simulated CPUs: the variables that cap the instruction sets.
CPUS = {
    "this CPU": {},
    "AVX2 CPU": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "SSE4.1 CPU": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
#: Variables cleared in every training process before the simulated CPU's are set.
CLEARED = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "NPY_DISABLE_CPU_FEATURES", "XRLIB_PORTABLE")
COLUMNS = ["CPU (simulated)", "XRLIB_PORTABLE", "threads", "torch capability", "weights sha256 (12)",
           "relative L2 to first row", "ms per step"]


def train(steps: int, size: int, threads: int, seed: int = 0, depth: int = 3, base_channels: int = 8,
          batch: int = 4) -> tuple[list[float], "object", str]:
    """Train a small U-Net ``steps`` Adam steps (lr 0.01) on a seeded batch in this process.

    Returns the per-step seconds, the final weights as one float64 numpy vector and their SHA-256
    (of the float32 bytes in state-dict order)."""
    import numpy as np
    import torch

    from xrlib.nets.losses import make_loss
    from xrlib.nets.unet import build_unet

    prev = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(int(threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        torch.manual_seed(seed)
        model = build_unet(depth, base_channels).train()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        loss_fn = make_loss("dice")
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.rand(batch, 1, size, size, generator=g)
        y = (torch.nn.functional.avg_pool2d(x, 5, 1, 2) > 0.5).float()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        tensors = [t.detach().float().contiguous() for t in model.state_dict().values() if t.is_floating_point()]
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.numpy().tobytes())
        flat = np.concatenate([t.numpy().ravel().astype(np.float64) for t in tensors])
        return times, flat, h.hexdigest()
    finally:
        torch.set_num_threads(prev[0])
        torch.use_deterministic_algorithms(prev[1])


def _child(args) -> int:
    """In a training process: train at each thread count and write the results (and weights) to ``--dump``."""
    import xrlib  # noqa: F401  first: with XRLIB_PORTABLE=1 it sets the pin before numpy and torch load

    import numpy as np
    import torch

    from xrlib.core.machine import machine_fingerprint

    out = []
    for threads in args.threads:
        times, flat, digest = train(args.steps, args.size, threads)
        path = Path(args.dump).with_suffix(f".t{threads}.npy")
        np.save(path, flat)
        out.append({"threads": threads, "ms": 1e3 * statistics.median(times[1:] or times), "sha256": digest,
                    "weights": str(path), "capability": torch.backends.cpu.get_cpu_capability()})
    Path(args.dump).write_text(json.dumps({"runs": out, "machine": machine_fingerprint()}), encoding="utf-8")
    return 0


def run_setting(cpu: str, portable: bool, steps: int, size: int, threads: list[int], tmp: Path) -> dict:
    """Train in a fresh process with the simulated ``cpu``'s caps and the switch ``portable``."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(CPUS[cpu], PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(max(threads)))
    if portable:
        env["XRLIB_PORTABLE"] = "1"
    dump = tmp / f"{cpu.split()[0].replace('.', '')}-{int(portable)}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--dump", str(dump), "--steps", str(steps),
           "--size", str(size), "--threads", *map(str, threads)]
    subprocess.run(cmd, env=env, check=True, cwd=str(REPO))
    return json.loads(dump.read_text(encoding="utf-8"))


def measure(steps: int = 30, size: int = 64, threads: tuple[int, ...] = (1, 2), cpus=tuple(CPUS)) -> dict:
    """All settings: ``{"rows": [...], "machine": <fingerprint of the uncapped, switch-off process>}``."""
    import numpy as np

    rows, ref, machine = [], None, None
    with tempfile.TemporaryDirectory(prefix="xrlib-portability-") as tmp:
        for cpu in cpus:
            for portable in ((False, True) if cpu == "this CPU" else (False,)):
                res = run_setting(cpu, portable, steps, size, list(threads), Path(tmp))
                if machine is None:
                    machine = res["machine"]
                for r in res["runs"]:
                    w = np.load(r["weights"])
                    if ref is None:
                        ref = w
                    rel = float(np.linalg.norm(w - ref) / np.linalg.norm(ref))
                    rows.append([cpu, "on" if portable else "off", r["threads"], r["capability"], r["sha256"][:12],
                                 float(f"{rel:.3g}"), round(r["ms"], 1)])
    return {"rows": rows, "machine": machine}


def notes(rows: list[list]) -> list[str]:
    """Statements read off the rows (which settings give the same weights)."""
    by = {(r[0], r[1], r[2]): r[4] for r in rows}
    out = []
    threads = sorted({r[2] for r in rows})
    for t in threads:
        for sw in ("off", "on"):
            a = by.get(("this CPU", sw, t))
            for other in ("AVX2 CPU", "SSE4.1 CPU"):
                b = by.get((other, "off", t))
                if a and b:
                    out.append(f"{t} thread(s): this CPU with the switch {sw} and the {other} "
                               f"give {'the same' if a == b else 'different'} weights")
    for sw in ("off", "on"):
        d = {by.get(("this CPU", sw, t)) for t in threads}
        if len(threads) > 1 and None not in d:
            out.append(f"switch {sw}: {' and '.join(map(str, threads))} threads give "
                       f"{'the same' if len(d) == 1 else 'different'} weights on this CPU")
    return out


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "portability.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dump", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    t0 = time.perf_counter()
    load0 = _load()
    res = measure(args.steps, args.size, tuple(args.threads))
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    record = {"benchmark": "portability",
              "title": "Instruction-set pin (XRLIB_PORTABLE=1): training digests and time per step",
              "command": f"python benchmarks/bench_portability.py {argv_text}".strip(),
              "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
              "machine": res["machine"], "columns": COLUMNS, "rows": res["rows"],
              "notes": [f"U-Net depth 3, 8 base channels, Dice loss, Adam lr 0.01, batch 4 of {args.size}×{args.size}, "
                        f"{args.steps} steps, seeded; simulated CPUs cap torch and oneDNN on one machine",
                        *notes(res["rows"]),
                        f"ms per step: median over steps 2–{args.steps}; load average (1 min) {load0} at the start and "
                        f"{_load()} at the end on {os.cpu_count()} cores — times compare only within one run on an "
                        "otherwise idle machine",
                        f"whole benchmark {time.perf_counter() - t0:.0f} s"]}
    from xrlib.core.atomic import write_json_atomic

    write_json_atomic(args.out, record, indent=1)
    for r in [COLUMNS, *res["rows"]]:
        print(" | ".join(str(v) for v in r))
    print("\n".join(record["notes"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
