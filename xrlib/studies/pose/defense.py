"""Worst-case-pose training vs uniformly drawn poses, same renderer and number of images (chapter 12).

Both defended models start from the study model ``defense.start`` (a warm start, e.g. U-Net(Real):
its training set has no synthetic image, so what each defense adds is the only synthetic data it
sees) and are fine-tuned in ``defense.rounds`` rounds of ``defense.epochs`` epochs on the Real
training images plus a pool of synthetic images that grows by one image per training subject per
round (the first ``defense.subjects`` Syn_train training subjects). Every synthetic image of both
comes from the same chain (:func:`xrlib.studies.pose.study.chains`: the threat's scored renderer
and display chain, the pose box of ``defense.budget``); they differ only in how a pose is selected:

* ``worst-pose``: each round, :func:`xrlib.attacks.pose.search_pose` (the gradient search) against
  the *current* model finds each subject's worst pose within ``defense.budget``;
* ``uniform-pose`` (the control): each round, each subject's pose is drawn uniformly over the same
  box (:func:`xrlib.attacks.pose.random_poses`, seeded per subject), whatever the model.

So both see the same renderer, box, number of images and optimiser steps. The fine-tuning is a small
loop of its own (Adam, the Dice loss of training, seeded shuffling) rather than
:func:`xrlib.training.loop.train_model`, because the worst-pose pool is made between epochs by the model
being trained; a defended model is cached like a trained one, by a hash of everything it depends on
(``<run>/pose/defense/<kind>-<hash>/``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from xrlib.attacks.pose import random_poses, search_pose
from xrlib.core.atomic import save_torch_atomic, write_json_atomic
from xrlib.core.profiles import Profile
from xrlib.nets.losses import make_loss
from xrlib.studies.pose.config import PoseConfig
from xrlib.studies.pose.study import chains
from xrlib.studies.rotation import study
from xrlib.training import load_best
from xrlib.training.data import load_tensors, select_images

__all__ = ["DEFENSES", "defense_models", "train_subjects"]

#: The two defenses compared, by name.
DEFENSES = ("worst-pose", "uniform-pose")


def train_subjects(run: Path, n: int) -> list[str]:
    """The first ``n`` Syn_train training subjects of the run's manifest."""
    rows = select_images(study.datasets_dir(run), ["Syn_all"], "train")
    return list(dict.fromkeys(rows["subject"]))[:n]


def _fit(model, images: torch.Tensor, masks: torch.Tensor, epochs: int, lr: float, batch: int, seed: int) -> None:
    loss_fn = make_loss("dice")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x, y = images[idx].to(dev), masks[idx].float().to(dev)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    model.eval()


def uniform_poses(budget: float, subjects: list[str], rounds: int, seed: int) -> dict[str, np.ndarray]:
    """The control's poses: per subject, ``rounds`` poses ``(rounds, 5)`` uniform over the box of ``budget``."""
    return {s: random_poses(budget, rounds, int(seed) * 1000 + 17 + i) for i, s in enumerate(subjects)}


def defense_models(profile: Profile, run: Path, cfg: PoseConfig | None = None, device=None,
                   progress: bool = False, seed: int = 0) -> dict[str, tuple[torch.nn.Module, dict]]:
    """``{"<start>+worst-pose": (model, info), "<start>+uniform-pose": (model, info)}``, trained or read from cache.

    ``info``: the poses of the synthetic images added per round, the numbers of images, the folder, and the
    wall time of the fine-tuning (``seconds``: data, pose searches, renders and optimiser steps of every
    round; ``search_seconds`` the worst-pose searches alone, 0 for ``uniform-pose``).

    ``seed`` k ≥ 1 (the card's seeds, :mod:`xrlib.studies.card.seeds`): both defenses start from seed k of the
    start model (:func:`xrlib.studies.rotation.seeds.study_seed_config`, trained if missing), draw the control's
    poses and shuffle with seed-k streams, and are named ``… [seed k]``; seed 0 is the chapter's pair.
    """
    from xrlib.studies.rotation.seeds import seed_name, study_seed_config

    cfg = cfg or PoseConfig.from_profile(profile)
    d = cfg.defense
    run = Path(run)
    k = int(seed)
    if k == 0:
        start = study.study_models(profile, run, [d.start])[d.start]
    else:
        start_cfg = study_seed_config(profile, d.start, k)
        start = study.train_all([start_cfg], run, progress=False)[start_cfg.name]
    base_seed = int(profile.seed) + 7919 * k  # seed k's streams (k = 0: the chapter's, unchanged)
    subjects = train_subjects(run, d.subjects)
    real_rows = select_images(study.datasets_dir(run), ["Real"], "train")
    key = {"start": start.folder.name, "defense": asdict(d), "search": asdict(cfg.search), "render_size": cfg.render_size,
           "step_mm": cfg.step_mm, "subjects": subjects, "seed": int(profile.seed),
           "real": int(len(real_rows)), "version": 3,
           **({"prefilter": True} if profile.render.prefilter else {}),  # absent when off: earlier keys stay valid
           **({"seed_index": k} if k else {})}
    out = {}
    real = None
    subj_chains = None  # shared by both defenses: their renders are cached per pose
    for kind in DEFENSES:
        name = f"{d.start}+{kind}" if k == 0 else seed_name(f"{d.start}+{kind}", k)
        digest = hashlib.sha256(json.dumps({**key, "kind": kind}, sort_keys=True).encode()).hexdigest()[:12]
        folder = run / "pose" / "defense" / f"{kind}-{digest}"
        model = load_best(start, device)
        if (folder / "model.pt").exists() and (folder / "info.json").exists():
            model.load_state_dict(torch.load(folder / "model.pt", map_location=next(model.parameters()).device))
            out[name] = (model.eval(), json.loads((folder / "info.json").read_text(encoding="utf-8")))
            continue
        t0 = time.perf_counter()
        search_s = 0.0
        if real is None:
            real = load_tensors(real_rows, study.datasets_dir(run))
        torch.manual_seed(base_seed)
        pool_x, pool_y, added = [], [], []
        if subj_chains is None:
            make_chain = chains(profile, run, cfg, device)
            subj_chains = {s: make_chain(s) for s in subjects}
        drawn = uniform_poses(d.budget, subjects, d.rounds, base_seed)
        for r in range(d.rounds):
            if kind == "uniform-pose":
                for s in subjects:
                    x, y = subj_chains[s].render(drawn[s][r:r + 1])
                    pool_x.append(x.float().cpu())
                    pool_y.append((y > 0.5).to(torch.uint8).cpu())
                added.append([{"subject": s, "alpha": float(drawn[s][r][0]), "tilt": float(drawn[s][r][1]),
                               "shift": [float(v) for v in drawn[s][r][2:]]} for s in subjects])
            else:
                found = []
                t_search = time.perf_counter()
                for s in subjects:
                    res = search_pose(model, subj_chains[s], d.budget, cfg.search)
                    pool_x.append(torch.as_tensor(res.image, dtype=torch.float32)[None, None])
                    pool_y.append(torch.as_tensor(res.truth, dtype=torch.uint8)[None, None])
                    found.append({"subject": s, "alpha": float(res.pose[0]), "tilt": float(res.pose[1]),
                                  "shift": [float(v) for v in res.pose[2:]]})
                added.append(found)
                search_s += time.perf_counter() - t_search
            xs = torch.cat([real[0], *pool_x])
            ys = torch.cat([real[1], *pool_y])
            _fit(model, xs, ys, d.epochs, d.lr, d.batch_size, base_seed * 1000 + r)
        info = {"name": name, "kind": kind, "start": d.start, "rounds": d.rounds, "epochs_per_round": d.epochs,
                "real_images": int(len(real[0])), "synthetic_images": int(sum(len(a) for a in added)),
                "added": added, "folder": str(folder),
                "seconds": time.perf_counter() - t0, "search_seconds": search_s}
        save_torch_atomic(folder / "model.pt", model.state_dict())
        write_json_atomic(folder / "info.json", info)
        out[name] = (model.eval(), info)
    return out
