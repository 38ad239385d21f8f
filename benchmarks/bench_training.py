"""Training benchmark: images/s of one U-Net training step, and what a profile's training costs.

Times the step that :func:`xrlib.training.loop.train_model` runs (forward, loss, backward, Adam step) for
the study U-Net of a profile (``study_configs``: depth 5, Dice loss, the profile's batch size and
image size) on random inputs of the profile's shape, on CUDA when available, else on the CPU.
Three settings are compared in the same run:

- ``as train.py``: fp32, ``torch.use_deterministic_algorithms(True)``, ``cudnn.benchmark = False``
  — what the study uses, so that a profile and seed give the same numbers;
- ``cudnn.benchmark``: fp32, non-deterministic, cuDNN autotuning (GPU only);
- ``bf16 autocast``: mixed precision on top of the previous one (GPU only).

From the measured rate and the profile's pool sizes it prints the time of one epoch of each study
model and of the profile's maximum number of epochs (an upper bound: early stopping ends sooner;
validation passes are not included). Usage::

    python benchmarks/bench_training.py [--profile quick paper] [--steps 20] [--warmup 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as train.py: deterministic cuBLAS on CUDA


def train_images(cfg) -> dict[str, int]:
    """Training images of each study model (:func:`xrlib.studies.rotation.models.study_configs`) planned by a profile.

    Counted from the pool sizes (subjects × poses), since a benchmark has no built manifest; a
    configured folder of real radiographs is not counted.
    """
    from xrlib.studies.rotation.models import study_configs

    pools, syn = cfg.pools, cfg.synthetic
    per_set = {"Real": pools.surrogate.train * cfg.surrogate.poses_per_subject,
               "Syn_cen": pools.syn_train.train * len(syn.cen_alphas),
               "Syn_all": pools.syn_train.train * len(syn.alphas)}
    return {c.name: sum(per_set[s] for s in c.train_sets) for c in study_configs(cfg)}


def images_per_s(depth: int, loss: str, size: int, batch: int, dev: torch.device, mode: str,
                 steps: int, warmup: int) -> float:
    """Median images/s over ``steps`` timed training steps (after ``warmup`` untimed ones)."""
    from xrlib.nets.losses import make_loss
    from xrlib.nets.unet import build_unet

    prev = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(mode == "as train.py", warn_only=True)
    torch.backends.cudnn.benchmark = mode != "as train.py"
    try:
        torch.manual_seed(0)
        model = build_unet(depth).to(dev).train()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        loss_fn = make_loss(loss)
        x = torch.rand(batch, 1, size, size, device=dev)
        y = (torch.rand(batch, 1, size, size, device=dev) > 0.9).float()
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if mode == "bf16 autocast"
               else contextlib.nullcontext())
        times = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with amp:
                out = model(x)
            loss_fn(out.float(), y).backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return batch / statistics.median(times)
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=True)
        torch.backends.cudnn.benchmark = prev[1]


def main() -> int:
    from xrlib.core.profiles import load_profile
    from xrlib.studies.rotation.models import study_configs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", nargs="+", default=["quick", "paper"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    modes = ["as train.py", "cudnn.benchmark", "bf16 autocast"] if cuda else ["as train.py"]
    print(f"device: {'cuda ' + torch.cuda.get_device_name() if cuda else f'cpu ({torch.get_num_threads()} threads)'}, "
          f"torch {torch.__version__}; {args.steps} timed steps after {args.warmup} warm-up steps")
    print()
    print("| profile | input | depth | loss | batch | setting | median images/s | ratio |")
    print("|---|---|---:|---|---:|---|---:|---:|")
    costs, throughput = [], []
    for name in args.profile:
        cfg = load_profile(name)
        study = study_configs(cfg)[0]
        size = cfg.image_size
        rates = {}
        for mode in modes:
            rates[mode] = images_per_s(study.depth, study.loss, size, study.batch_size, dev, mode,
                                       args.steps, args.warmup)
            throughput.append([name, f"{size}²", study.depth, study.loss, study.batch_size, mode, f"{rates[mode]:.1f}",
                               f"{rates[mode] / rates['as train.py']:.2f}×"])
            print("| " + " | ".join(map(str, throughput[-1])) + " |", flush=True)
        costs.append((name, study.epochs, rates["as train.py"], train_images(cfg)))
    print()
    print("Training cost at the 'as train.py' rate (no validation; early stopping ends sooner):")
    print()
    print("| profile | model | train images | s/epoch | max epochs | hours at max epochs |")
    print("|---|---|---:|---:|---:|---:|")
    cost_rows = []
    for name, epochs, rate, counts in costs:
        for model, n in counts.items():
            cost_rows.append([name, model, n, f"{n / rate:.1f}", epochs, f"{n / rate * epochs / 3600:.2f}"])
            print("| " + " | ".join(map(str, cost_rows[-1])) + " |")
    from xrlib.publish.performance import write_result

    steps = f"{args.steps} timed steps after {args.warmup} warm-up steps, random inputs; 'as train.py' is what the study runs"
    write_result("training-throughput", "Training step throughput of the study U-Net",
                 ["profile", "input", "depth", "loss", "batch", "setting", "median images/s", "ratio"], throughput, [steps],
                 benchmark="bench_training")
    write_result("training-cost", "Training time per epoch at the 'as train.py' rate",
                 ["profile", "model", "train images", "s/epoch", "max epochs", "hours at max epochs"], cost_rows,
                 ["no validation; early stopping ends sooner"], benchmark="bench_training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
