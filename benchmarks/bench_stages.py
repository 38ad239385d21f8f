"""Stage benchmark: whole-stage wall time of the book's CPU-bound stages, before and after a change.

"Before" is the code of a git revision (``--before``, default :data:`BEFORE`, main before the speed-ups), checked out as a
temporary git worktree (or an existing checkout, ``--before-tree``); "after" is this checkout.
``--before-env KEY=VALUE`` and ``--after-env KEY=VALUE`` set environment variables for one side
only: with ``--before-tree .`` they measure one switch of this checkout (``--before-env
XRLIB_REUSE_HEAP=0``: the allocator left alone, :mod:`xrlib.core.memory`; ``--after-env
XRLIB_BENCH_COMPILE=1``: the training stage with ``TrainConfig.compile``).
Each timed run is a fresh Python subprocess that imports ``xrlib`` from one of the two trees
(``PYTHONPATH=<tree>``) and runs one stage on the same inputs, which the parent builds once. The
cohort, training and rendering stages run their work as the book does — tasks of the in-process
executor, one after another, on every core (``XRLIB_THREADS`` if set, as in the book) — after one untimed task of the same kind (the warm-up: imports, caches,
the process's first use of CT-sized memory), so the time is the stage's cost per further item.
Runs of the two sides are interleaved (before, after, after, before, …) so that a shared machine's
load falls on both; the table gives the median over ``--repeats`` of each and the ratio
before/after::

    | stage | before (median s) | after (median s) | ratio |

Both sides also write the stage's result, and the benchmark says whether they are identical.

Stages (:data:`STAGES`, name → :class:`Stage`: a function that builds the inputs once and a
function that times one run in the worker):

- ``cohort``: ``--cohort-subjects`` virtual subjects (after the untimed first) of the example CT with the ``--profile``'s cohort
  settings (deformation, resampling and the compressed NIfTI files of one subject after another,
  ITK on every core); results identical means the same voxels.
- ``training``: :func:`xrlib.training.loop.train_model` of the profile's U-Net(Real+Syn_all) for
  ``--epochs`` epochs (after an untimed 1-epoch training) including every validation pass and checkpoint, on synthetic shards of the
  quick study's training-set sizes (124 train / 31 val images at ``--size``²); the per-epoch ratio is
  the stage's ratio. Identical means the same loss and validation Dice in every epoch. A second row,
  ``training per epoch``, is the median of the epochs after the first (each epoch's ``seconds`` in
  the model's history: its steps, validation and checkpoints), and the first epoch's median is
  printed below the table: a compiled training (``XRLIB_BENCH_COMPILE=1`` in a side's environment)
  pays its compilation (from Inductor's cache, warmed by the untimed training) in its first epoch.

- ``evaluation``: prediction and Dice/HD/HD95 of every test image for every model
  (:func:`xrlib.eval.predict.evaluate_model` on each test set), the models loaded from disk.
  By default on synthetic inputs of the quick profile's sizes: ``--subjects`` test subjects × 21 α
  plus ``--real`` Real test images, ``--size``² images with clavicle-like masks, ``--models``
  random-initialised depth-5 U-Nets (their predictions are noisy masks, many edge pixels: a hard
  case for the distances). With ``--run RUN`` it times
  :func:`xrlib.studies.rotation.study.evaluate_all` on a built run's test sets and trained models
  (``--model-glob``) instead.
- ``rendering-synthetic``: one dataset shard (after an untimed render of the same shard) of a synthetic subject — the example CT at the profile's
  21 α, naive physics, at the ``--profile``'s detector, post-processed and preprocessed
  (:func:`xrlib.data.recipes.render_subject`); the images must be identical (the profile's optional
  ``render.prefilter`` is off in the shipped profiles).
- ``rendering-surrogate``: the same for the realistic chain at the surrogate's jittered poses (fixed
  setting, a recipe both trees have). The images also differ by design when "before" predates dataset
  version 2 (its quantum noise was drawn after the detector blur).

Usage::

    python benchmarks/bench_stages.py [--before REV] [--repeats 3] [--stages cohort training evaluation …]
        [--size 128] [--subjects 4] [--real 12] [--models 3] [--run RUN --profile quick]
        [--epochs 4] [--cohort-subjects 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: main when the speed-ups of issue 11 began: the default "before".
BEFORE = "cf47bbba86bb0fc369be048847a39c35f1869940"
ALPHAS = [float(a) for a in range(-20, 21, 2)]


@dataclass(frozen=True)
class Stage:
    """One benchmarked stage: ``build(args, folder)`` writes the inputs (once, in the parent);
    ``run(folder, out)`` runs the stage once in a worker, writes its result to ``out`` and returns
    the seconds it took (only the stage itself is timed)."""

    build: Callable[[argparse.Namespace, Path], None]
    run: Callable[[Path, Path], float]


# --------------------------------------------------------------------------------- evaluation


def _clavicle_masks(rng, n: int, size: int):
    """``n`` masks with two curved, tilted bands where the clavicles lie (uint8 0/1)."""
    import numpy as np

    yy, xx = np.mgrid[:size, :size] / size
    out = np.zeros((n, size, size), np.uint8)
    for k in range(n):
        for side in (-1, 1):
            cx, cy = 0.5 + side * rng.uniform(0.15, 0.23), rng.uniform(0.22, 0.35)
            th = side * rng.uniform(0.1, 0.4)
            a, b = rng.uniform(0.14, 0.2), rng.uniform(0.025, 0.045)
            u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
            v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
            out[k] |= ((u / a) ** 2 + ((v - 0.5 * u ** 2) / b) ** 2 <= 1).astype(np.uint8)
    return out


def _radiograph_like(rng, n: int, size: int):
    """``n`` uint8 images (smooth background, brighter clavicle bands, noise) and their masks (uint8 0/1)."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    masks = _clavicle_masks(rng, n, size)
    smooth = gaussian_filter(rng.random((n, size, size)), (0, 4, 4))
    images = np.clip(0.3 + 0.4 * masks + 0.5 * (smooth - 0.5) + 0.05 * rng.standard_normal(masks.shape), 0, 1)
    return (images * 255).astype(np.uint8), masks


def build_evaluation(args: argparse.Namespace, folder: Path) -> None:
    """Shards, manifest rows and model weights of the evaluation stage (or a pointer to ``--run``)."""
    import numpy as np
    import pandas as pd
    import torch

    if args.run:
        (folder / "run.json").write_text(json.dumps({"run": str(Path(args.run).resolve()), "profile": args.profile,
                                                     "model_glob": args.model_glob}))
        return
    from xrlib.nets.unet import build_unet

    rng = np.random.default_rng(0)
    (folder / "shards").mkdir()
    rows = []
    subjects = [(f"syn-{i:03d}", "Syn_test", ALPHAS) for i in range(args.subjects)]
    subjects += [("real-000", "Real_test", [0.0] * args.real)] if args.real else []
    for subject, test_set, alphas in subjects:
        images, masks = _radiograph_like(rng, len(alphas), args.size)
        shard = f"shards/{subject}.npz"
        np.savez(folder / shard, image=images, mask=masks)
        rows += [{"subject": subject, "pool": test_set, "split": "test", "alpha": a, "shard": shard, "index": j,
                  "test_set": test_set} for j, a in enumerate(alphas)]
    pd.DataFrame(rows).to_csv(folder / "rows.csv", index=False)
    (folder / "models").mkdir()
    for m in range(args.models):
        torch.manual_seed(m)
        torch.save(build_unet(5, 16).state_dict(), folder / "models" / f"model{m}.pt")


def _threads() -> int:
    """Threads of every timed task, as the book's local executor gives them:
    :func:`xrlib.core.runs.default_threads` (``XRLIB_THREADS`` if set, else every core; the same function in
    both trees since before the speed-ups)."""
    from xrlib.core.runs import default_threads

    return default_threads()


@dataclass
class _Call:
    """A task for the book's in-process executor: ``key``, ``threads`` and ``fn()`` as its work."""

    key: str
    fn: Callable[[], object]
    threads: int = field(default_factory=_threads)

    def run(self):
        return self.fn()


def _as_the_book_runs(calls: list[_Call]) -> tuple[list, float]:
    """Run ``calls`` one after another as tasks of :class:`xrlib.exec.local.InProcessExecutor` — how a
    book stage runs its subjects, shards and trainings — and return their results and the seconds of
    all but the first (a warm-up of the same kind: imports, caches and the process's first use of its
    memory are not the stage's per-item cost)."""
    from xrlib.exec.local import InProcessExecutor

    results, stamps = [], []
    for _, result in InProcessExecutor().map(calls, progress=False):
        results.append(result)
        stamps.append(time.perf_counter())
    return results, stamps[-1] - stamps[0]


def _warm_up_torch() -> None:
    """One untimed forward of a small U-Net: the process's one-off oneDNN/thread start-up cost."""
    import torch

    from xrlib.nets.unet import build_unet

    with torch.no_grad():
        build_unet(5, 16).eval()(torch.zeros(2, 1, 64, 64))


def run_evaluation(folder: Path, out: Path) -> float:
    import pandas as pd

    _warm_up_torch()
    if (folder / "run.json").exists():
        from xrlib.core.profiles import load_profile
        from xrlib.studies.rotation.study import evaluate_all

        spec = json.loads((folder / "run.json").read_text())
        run = Path(spec["run"])
        results = {p.name: p for p in sorted((run / "models").glob(spec["model_glob"]))}
        t0 = time.perf_counter()
        df, _ = evaluate_all(load_profile(spec["profile"]), run, results, include_baseline=False)
        seconds = time.perf_counter() - t0
    else:
        import torch

        from xrlib.data.shards import ShardDataset
        from xrlib.eval.predict import evaluate_model
        from xrlib.nets.unet import build_unet

        rows = pd.read_csv(folder / "rows.csv")
        t0 = time.perf_counter()
        frames = []
        for path in sorted((folder / "models").glob("*.pt")):
            model = build_unet(5, 16)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            for test_set, sub in rows.groupby("test_set", sort=True):
                sub = sub.reset_index(drop=True)
                ds = ShardDataset(sub, root=folder)
                frames.append(evaluate_model(model, ds, sub, path.stem, 0.7).assign(test_set=test_set))
        df = pd.concat(frames, ignore_index=True)
        seconds = time.perf_counter() - t0
    df.to_pickle(out)
    return seconds


# --------------------------------------------------------------------------------- rendering


def build_rendering(args: argparse.Namespace, folder: Path) -> None:
    """The rendering stages load the example CT in the worker (untimed); only the profile is recorded here."""
    (folder / "spec.json").write_text(json.dumps({"profile": args.profile}))


def _render_stage(recipe_of):
    """A worker timing :func:`xrlib.data.recipes.render_subject` of one subject (the example CT and its
    clavicles) with ``recipe_of(profile)``: render at the profile's detector, post-process, preprocess —
    the work of one dataset shard. The same recipe class exists in both trees; the result is a table of
    per-image checksums, so "identical" means bit-identical images and masks."""

    def run(folder: Path, out: Path) -> float:
        import hashlib

        import pandas as pd

        from xrlib.core.ct import load_example
        from xrlib.core.profiles import load_profile
        from xrlib.data.recipes import render_subject

        profile = load_profile(json.loads((folder / "spec.json").read_text())["profile"])
        ct, labels = load_example()
        recipe = recipe_of(profile)
        calls = [_Call(f"{name}", lambda name=name: render_subject(ct, labels, profile, recipe, name))
                 for name in ("warm-up", "example")]  # the same shard twice: the second is timed
        (_, arrays), seconds = _as_the_book_runs(calls)
        rows = [{"index": i, "image_sha1": hashlib.sha1(arrays["image"][i].tobytes()).hexdigest(),
                 "mask_sha1": hashlib.sha1(arrays["mask"][i].tobytes()).hexdigest(),
                 "image_mean": float(arrays["image"][i].mean())} for i in range(len(arrays["image"]))]
        pd.DataFrame(rows).to_pickle(out)
        return seconds

    return run


def _synthetic_recipe(profile):
    from xrlib.data.recipes import AnglesRecipe

    return AnglesRecipe(physics="naive", alphas=tuple(profile.synthetic.alphas))


def _surrogate_recipe(profile):
    # the fixed-setting realistic chain at the surrogate's jittered poses: a recipe both trees have (the
    # study's varied surrogate does more work per image — a spectrum per tube voltage — and did not exist before)
    from xrlib.data.recipes import JitteredRecipe

    return JitteredRecipe(physics="realistic", dose_mas=profile.surrogate.dose_mas, seed=profile.seed,
                          jitter=profile.surrogate)


# --------------------------------------------------------------------------------- training


def build_training(args: argparse.Namespace, folder: Path) -> None:
    """Shards of the quick study's U-Net(Real+Syn_all) training sets: ``syn_train`` 4 + 1 subjects × 21 α and
    ``surrogate`` 4 + 1 subjects × 10 poses (train + val), ``--size``² images with clavicle-like masks. The
    manifest is written by the worker with its own tree's columns."""
    import numpy as np

    rng = np.random.default_rng(1)
    (folder / "datasets" / "shards").mkdir(parents=True)
    plan = [("syn_train", split, ALPHAS) for split in ("train",) * 4 + ("val",)]
    plan += [("surrogate", split, [0.0] * 10) for split in ("train",) * 4 + ("val",)]
    rows = []
    for k, (pool, split, alphas) in enumerate(plan):
        images, masks = _radiograph_like(rng, len(alphas), args.size)
        shard = f"shards/{pool}-{k:02d}.npz"
        np.savez(folder / "datasets" / shard, image=images, mask=masks, mask_left=masks, mask_right=masks * 0)
        rows += [{"subject": f"{pool}-{k:02d}", "pool": pool, "split": split, "alpha": a, "shard": shard, "index": j}
                 for j, a in enumerate(alphas)]
    (folder / "rows.json").write_text(json.dumps({"rows": rows, "epochs": args.epochs, "profile": args.profile}))


def run_training(folder: Path, out: Path) -> float:
    """``train_model`` of the profile's U-Net(Real+Syn_all) for a fixed number of epochs (no early stop)."""
    import dataclasses

    import pandas as pd

    from xrlib.core.atomic import sha256_file
    from xrlib.core.profiles import load_profile
    from xrlib.data.shards import MANIFEST_COLUMNS
    from xrlib.studies.rotation.models import study_configs
    from xrlib.training.loop import train_model

    spec = json.loads((folder / "rows.json").read_text())
    data = folder / "datasets"
    defaults = {"source": "bench", "tilt": 0.0, "shift_x": 0.0, "shift_y": 0.0, "shift_z": 0.0, "physics": "naive",
                "dose_mas": 2.0}
    rows = [{**defaults, **r, "checksum": sha256_file(data / r["shard"])} for r in spec["rows"]]
    pd.DataFrame(rows).reindex(columns=MANIFEST_COLUMNS).to_csv(data / "manifest.csv", index=False)
    (data / "build.json").write_text(json.dumps({"hash": "bench-training", "complete": True}))
    profile = load_profile(spec["profile"])
    cfg = next(c for c in study_configs(profile, threads=_threads()) if c.name == "U-Net(Real+Syn_all)")
    cfg = dataclasses.replace(cfg, epochs=int(spec["epochs"]), patience=int(spec["epochs"]) + 1)
    if os.environ.get("XRLIB_BENCH_COMPILE") == "1":  # only on a tree whose TrainConfig has the field
        cfg = dataclasses.replace(cfg, compile=True)
    models = Path(tempfile.mkdtemp(prefix="bench_training_"))
    warm = dataclasses.replace(cfg, name="warm-up", epochs=1)
    try:
        (_, res), seconds = _as_the_book_runs([_Call(c.name, lambda c=c: train_model(c, data, models, device="cpu", progress=False))
                                               for c in (warm, cfg)])
        hist = pd.read_csv(Path(res.folder) / "history.csv")
    finally:
        shutil.rmtree(models, ignore_errors=True)
    hist[["epoch", "train_loss", "val_loss", "val_dice"]].to_pickle(out)
    out.with_suffix(".epochs.json").write_text(json.dumps([float(t) for t in hist["seconds"]]))
    return seconds


# --------------------------------------------------------------------------------- cohort


def build_cohort_stage(args: argparse.Namespace, folder: Path) -> None:
    (folder / "spec.json").write_text(json.dumps({"profile": args.profile, "subjects": args.cohort_subjects}))


def run_cohort(folder: Path, out: Path) -> float:
    """``--cohort-subjects`` virtual subjects of the example CT with the profile's cohort settings, one
    :class:`~xrlib.anatomy.cohort.SubjectTask` after another with every core's ITK threads (the local
    executor's layout); the result is a checksum of each subject's voxels (not of the compressed files)."""
    import hashlib

    import pandas as pd
    import SimpleITK as sitk

    from xrlib.anatomy import cohort
    from xrlib.core.ct import load_example
    from xrlib.core.profiles import load_profile

    spec = json.loads((folder / "spec.json").read_text())
    ct, labels = load_example()
    cfg = cohort.CohortConfig.from_profile(load_profile(spec["profile"]))
    target = Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    try:
        tasks = [cohort.SubjectTask("example", i, ct, labels, cfg, target, "bench", "bench", threads=_threads())
                 for i in range(int(spec["subjects"]) + 1)]  # subject 0: the untimed warm-up
        made, seconds = _as_the_book_runs(tasks)
        made = made[1:]
        rows = []
        for r in made:
            vox = {k: hashlib.sha1(sitk.GetArrayFromImage(sitk.ReadImage(str(target / r[k]))).tobytes()).hexdigest()
                   for k in ("ct_path", "labels_path")}
            rows.append({"subject": r["subject"], "attempt": r["attempt"], "min_jacobian": r["min_jacobian"], **vox})
    finally:
        shutil.rmtree(target, ignore_errors=True)
    pd.DataFrame(rows).to_pickle(out)
    return seconds


STAGES: dict[str, Stage] = {
    "cohort": Stage(build_cohort_stage, run_cohort),
    "training": Stage(build_training, run_training),
    "evaluation": Stage(build_evaluation, run_evaluation),
    "rendering-synthetic": Stage(build_rendering, _render_stage(_synthetic_recipe)),
    "rendering-surrogate": Stage(build_rendering, _render_stage(_surrogate_recipe)),
}

# --------------------------------------------------------------------------------- harness


def _worker(stage: str, folder: Path, out: Path) -> None:
    print(json.dumps({"seconds": STAGES[stage].run(folder, out)}))


def _time_once(tree: Path, stage: str, folder: Path, out: Path, extra_env: dict | None = None) -> float:
    """Seconds of one run of ``stage`` in a subprocess importing ``xrlib`` from ``tree`` (``extra_env`` set)."""
    env = {**os.environ, "PYTHONPATH": str(tree), **(extra_env or {})}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", stage, "--inputs", str(folder), "--out", str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    if res.returncode != 0:
        raise RuntimeError(f"{stage} on {tree} failed:\n{res.stderr[-3000:]}")
    return float(json.loads(res.stdout.strip().splitlines()[-1])["seconds"])


def _same_result(a: Path, b: Path) -> bool:
    import pandas as pd

    try:
        pd.testing.assert_frame_equal(pd.read_pickle(a), pd.read_pickle(b), check_exact=True)
    except AssertionError:
        return False
    return True


def measure(stages: list[str], before: Path, repeats: int, args: argparse.Namespace, work: Path) -> list[dict]:
    """Interleaved before/after timings of each stage; one row per stage with the medians."""
    rows = []
    for stage in stages:
        folder = work / stage
        folder.mkdir()
        STAGES[stage].build(args, folder)
        times = {"before": [], "after": []}
        epochs = {"before": [], "after": []}  # per-epoch seconds of each run (the training stage)
        trees = {"before": before, "after": REPO}
        for r in range(repeats):
            for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                env = args.before_env if side == "before" else args.after_env
                out = work / f"{stage}-{side}.pkl"
                times[side].append(_time_once(trees[side], stage, folder, out, env))
                if out.with_suffix(".epochs.json").is_file():
                    epochs[side].append(json.loads(out.with_suffix(".epochs.json").read_text()))
                print(f"{stage} {side} run {r + 1}: {times[side][-1]:.2f} s", file=sys.stderr, flush=True)
        b, a = statistics.median(times["before"]), statistics.median(times["after"])
        same = _same_result(work / f"{stage}-before.pkl", work / f"{stage}-after.pkl")
        rows.append({"stage": stage, "before": b, "after": a, "ratio": b / a if a > 0 else float("nan"),
                     "same": same, "times": times})
        if all(len(e) == repeats and all(len(run) > 1 for run in e) for e in epochs.values()):
            later = {k: statistics.median(t for run in e for t in run[1:]) for k, e in epochs.items()}
            first = {k: statistics.median(run[0] for run in e) for k, e in epochs.items()}
            rows.append({"stage": f"{stage} per epoch", "before": later["before"], "after": later["after"],
                         "ratio": later["before"] / later["after"] if later["after"] > 0 else float("nan"),
                         "same": same, "times": {k: [t for run in e for t in run[1:]] for k, e in epochs.items()},
                         "first": first})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| stage | before (median s) | after (median s) | ratio |", "|---|---:|---:|---:|"]
    lines += [f"| {r['stage']} | {r['before']:.2f} | {r['after']:.2f} | {r['ratio']:.2f}× |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default=BEFORE, help=f"git revision of the 'before' code (default: {BEFORE[:8]}, main before the speed-ups)")
    ap.add_argument("--before-tree", type=Path, help="an existing checkout to use as 'before' instead of --before")
    ap.add_argument("--before-env", nargs="+", default=[], metavar="KEY=VALUE",
                    help="environment of the 'before' side only, e.g. --before-tree . --before-env XRLIB_REUSE_HEAP=0 "
                         "to measure one switch of this checkout")
    ap.add_argument("--after-env", nargs="+", default=[], metavar="KEY=VALUE",
                    help="environment of the 'after' side only, e.g. --before-tree . --after-env XRLIB_BENCH_COMPILE=1 "
                         "(the training stage compiled)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    ap.add_argument("--size", type=int, default=128, help="image side (synthetic evaluation inputs)")
    ap.add_argument("--subjects", type=int, default=4, help="synthetic test subjects (21 α each)")
    ap.add_argument("--real", type=int, default=12, help="Real test images")
    ap.add_argument("--models", type=int, default=3, help="random-initialised depth-5 U-Nets")
    ap.add_argument("--run", help="a built run folder: time evaluate_all on its test sets and models instead")
    ap.add_argument("--profile", default="quick", help="the profile of --run and of the rendering stages' sizes")
    ap.add_argument("--model-glob", default="U-Net*", help="model folders of --run to evaluate")
    ap.add_argument("--epochs", type=int, default=4, help="training stage: epochs of U-Net(Real+Syn_all) (no early stop)")
    ap.add_argument("--cohort-subjects", type=int, default=2, help="cohort stage: virtual subjects built")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("before_env", "after_env"):
        pairs = getattr(args, name)
        bad = [kv for kv in pairs if "=" not in kv or kv.startswith("=")]
        if bad:
            ap.error(f"--{name.replace('_', '-')}: expected KEY=VALUE, got {bad[0]!r}")
        setattr(args, name, dict(kv.split("=", 1) for kv in pairs))
    if args.worker:
        return _worker(args.worker, args.inputs, args.out)

    work = Path(tempfile.mkdtemp(prefix="bench_stages_"))
    tree, added = args.before_tree, False
    try:
        if tree is None:
            rev = subprocess.run(["git", "rev-parse", "--verify", f"{args.before}^{{commit}}"], cwd=REPO,
                                 check=True, capture_output=True, text=True).stdout.strip()
            tree = work / "before"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=REPO, check=True,
                           capture_output=True, text=True)
            added = True
            label = rev[:8] if rev.startswith(args.before) else f"{args.before} ({rev[:8]})"
        else:
            label = str(tree)
        if args.before_env:
            label += " with " + " ".join(f"{k}={v}" for k, v in args.before_env.items())
        after_label = "this checkout" + ("".join(f" with {k}={v}" for k, v in args.after_env.items()))
        rows = measure(args.stages, Path(tree).resolve(), args.repeats, args, work)
    finally:
        if added:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"Stage wall time, before = {label}, after = {after_label}; medians over {args.repeats} "
          f"interleaved runs{'' if not args.run else f' on {args.run}'}.\n")
    print(table(rows))
    for r in rows:
        print(f"\n{r['stage']}: results {'identical' if r['same'] else 'DIFFER'}; "
              + "; ".join(f"{k} " + ", ".join(f"{t:.2f}" for t in v) for k, v in r["times"].items()))
        if "first" in r:
            print(f"{r['stage']}: the first epoch (median) took {r['first']['before']:.2f} s before, "
                  f"{r['first']['after']:.2f} s after")
    from xrlib.publish.performance import write_result

    suffix = "".join(f"-{k}-{v}" for k, v in {**args.before_env, **args.after_env}.items()).lower()
    name = "stages" + "".join(c if c.isalnum() or c == "-" else "-" for c in suffix)
    write_result(name, f"Stage wall time, before = {label}, after = {after_label}",
                 ["stage", "before (median s)", "after (median s)", "ratio", "results"],
                 [[r["stage"], f"{r['before']:.2f}", f"{r['after']:.2f}", f"{r['ratio']:.2f}×",
                   "identical" if r["same"] else "DIFFER"] for r in rows],
                 [f"medians over {args.repeats} interleaved runs" + (f" on {args.run}" if args.run else "")],
                 benchmark="bench_stages")


if __name__ == "__main__":
    main()
