"""Out-of-distribution (OOD) attack and reconstruction-based detection (paper 002, sections 2.4–2.5).

* The detector: a reconstruction head (:mod:`xrlib.nets.recon`) trained with an L1 loss on the
  *frozen* U-Net(Real+Syn_all) (recipe ``recon-head``, warm-started from the study model): the
  victim stays exactly the model the rest of the chapter attacks, and training the head alone is
  cheap. (Paper 002 trains its reconstruction channel jointly with the network; the recipe can do
  that too, ``frozen=False``.) The OOD score of an image is its mean absolute reconstruction error.
* OOD images (:func:`ood_images`): an axial slice of the source CT, a lateral parallel-beam
  projection of it, and natural pictures shipped with scikit-image, each brought to the network's input like
  a radiograph (resize keeping the aspect ratio, zero padding, [0, 1]).
* Conditions (:func:`ood_study`): (a) the clean OOD images; (b) the OOD images attacked by L∞ PGD
  so that the network outputs the clavicle mask of a given chest test image (objective: minimise
  1 − soft Dice against that mask); (c) the same attack also minimising the reconstruction error
  (objective: 1 − soft Dice + ``recon_weight`` · L1 error).
* One OOD image per attacked test sample: OOD source ``i mod n`` aimed at test sample ``i``'s mask.
* AUROC (:func:`auroc_table`, scikit-learn's ``roc_auc_score``) of the score between the
  in-distribution Syn_test images (negatives) and each condition's OOD images (positives):
  1 = perfect detection, 0.5 = chance, below 0.5 = the OOD images look *more* in-distribution
  than the test images; with a 95 % percentile bootstrap interval that resamples in-distribution
  *subjects* (their images are correlated) and OOD images (:func:`auroc_interval`). Whether the attack
  reached its target: the share of OOD images whose mask has a Dice ≥ :data:`REACHED` with the target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.attacks.base import TestImages
from xrlib.attacks.pgd import pgd_attack
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile
from xrlib.data.preprocess import preprocess, resize_bilinear
from xrlib.eval.metrics import dice
from xrlib.nets.recon import SegRecon
from xrlib.studies.pgd.settings import PGDSettings
from xrlib.studies.pgd.study import BASE_MODEL, base_folder
from xrlib.studies.rotation import study
from xrlib.studies.rotation.models import study_configs
from xrlib.training import TrainConfig, TrainResult, load_seg_recon, train_all

__all__ = ["CONDITIONS", "OODImage", "REACHED", "auroc", "auroc_interval", "auroc_table", "head_config", "ood_attack", "ood_images", "ood_study",
           "train_head"]

#: An attacked OOD image reached its target when the produced mask's Dice with the target is at least this.
REACHED = 0.5
#: The three OOD conditions (labels of the AUROC table).
CONDITIONS = ("(a) clean OOD", "(b) PGD → chest mask", "(c) PGD → chest mask + low reconstruction error")


@dataclasses.dataclass
class OODImage:
    """One OOD image ``(S, S)`` in [0, 1] with its name and kind (CT slice, rendering, natural)."""

    name: str
    kind: str
    image: np.ndarray


def auroc(ind_scores: Sequence[float], ood_scores: Sequence[float]) -> float:
    """AUROC of a score that should be higher for OOD (positives) than in-distribution images."""
    from sklearn.metrics import roc_auc_score

    ind, ood = np.asarray(ind_scores, float), np.asarray(ood_scores, float)
    if len(ind) == 0 or len(ood) == 0:
        raise ValueError(f"AUROC needs both classes, got {len(ind)} in-distribution and {len(ood)} OOD scores")
    return float(roc_auc_score(np.r_[np.zeros(len(ind)), np.ones(len(ood))], np.r_[ind, ood]))


def auroc_interval(ind_scores: Sequence[float], ind_groups: Sequence, ood_scores: Sequence[float], n_boot: int = 1000,
                   seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of :func:`auroc`: in-distribution images resampled by their group
    (subject), OOD images one by one; resamples with a single class are skipped."""
    ind, ood = np.asarray(ind_scores, float), np.asarray(ood_scores, float)
    groups = pd.Series(np.asarray(ind_groups)).astype(str).to_numpy()
    keys = np.unique(groups)
    members = [np.flatnonzero(groups == k) for k in keys]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(int(n_boot)):
        pick = np.concatenate([members[j] for j in rng.integers(0, len(keys), len(keys))])
        o = ood[rng.integers(0, len(ood), len(ood))]
        if len(pick) and len(o):
            vals.append(auroc(ind[pick], o))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def head_config(profile: Profile, run: Path, s: PGDSettings) -> TrainConfig:
    """U-Net(Real+Syn_all)'s configuration with the ``recon-head`` recipe (frozen U-Net, warm start).

    ``ood.head_epochs`` epochs (patience the same, so all run), the profile's training lr; always eager
    (the head reads the U-Net's features through a forward hook, which a compiled forward skips).
    """
    base = {c.name: c for c in study_configs(profile)}[BASE_MODEL]
    params = {"frozen": True, "hidden": s.ood.head_hidden, "weight": 1.0, "warm_start": base_folder(profile, run)}
    return dataclasses.replace(base, name=BASE_MODEL + "+recon-head", epochs=s.ood.head_epochs,
                               patience=s.ood.head_epochs, recipe="recon-head", recipe_params=params,
                               compile=False)


def train_head(profile: Profile, run: Path, s: PGDSettings, progress: bool = True) -> tuple[TrainResult, SegRecon]:
    """Train (or load from the cache) the reconstruction head; its result and the loaded U-Net + head."""
    cfg = head_config(profile, run, s)
    res = train_all([cfg], study.datasets_dir(Path(run)), Path(run) / "models", progress=progress)[cfg.name]
    return res, load_seg_recon(res)


def _ct_images(size: int) -> list[OODImage]:
    """An axial slice of the source CT (HU windowed to [−1000, 1000]) and a lateral view of it.

    The lateral view is a parallel-beam line integral of the linear attenuation relative to water,
    ``Σ_x max(HU + 1000, 0) / 1000`` along the patient's left–right axis (superior at the top) — a
    cheap stand-in for a cone-beam rendering at α = 90°, which costs tens of seconds on a CPU.
    """
    from xrlib.core.ct import load_example

    ct, _ = load_example()
    arr = ct.array.astype(np.float32)  # (z, y, x)
    k = arr.shape[0] // 2
    out = [OODImage(f"CT axial slice {k}", "CT slice", preprocess(np.clip(arr[k], -1000.0, 1000.0), None, size)[0])]
    lateral = np.flipud(np.clip(arr + 1000.0, 0.0, None).sum(axis=2) / 1000.0 * float(ct.spacing[0]))
    rows = max(1, int(round(lateral.shape[0] * float(ct.spacing[2]) / float(ct.spacing[1]))))
    lateral = resize_bilinear(lateral, (rows, lateral.shape[1]))  # square pixels: z spacing → y spacing
    out.append(OODImage("CT lateral view (parallel-beam line integral)", "rendered lateral view",
                        preprocess(lateral, None, size)[0]))
    return out


def _natural(names: Sequence[str], size: int) -> list[OODImage]:
    import skimage.data
    from skimage.color import rgb2gray

    out = []
    for name in names:
        fn = getattr(skimage.data, name, None)
        if fn is None or not callable(fn):
            raise InputError(None, f"pgd.ood.natural: scikit-image has no data image {name!r}")
        img = np.asarray(fn())
        img = rgb2gray(img[..., :3]) if img.ndim == 3 else img.astype(np.float32)
        out.append(OODImage(f"skimage.data.{name}", "natural image", preprocess(np.asarray(img, np.float32), None, size)[0]))
    return out


def ood_images(profile: Profile, s: PGDSettings) -> list[OODImage]:
    """The OOD images of the profile (module docstring), ``(S, S)`` in [0, 1]."""
    return _ct_images(profile.image_size) + _natural(s.ood.natural, profile.image_size)


class _SegAndError(torch.nn.Module):
    """``x`` → two channels: the logits and the per-pixel reconstruction error ``|x − recon(x)|``."""

    def __init__(self, net: SegRecon):
        super().__init__()
        self.net = net

    def forward(self, x):
        logits, recon = self.net(x)
        return torch.cat([logits, (recon - x).abs()], 1)


def _objective(recon_weight: float):
    from monai.losses import DiceLoss

    loss = DiceLoss(sigmoid=True, reduction="none")

    def f(out, target, t=1, steps=1):  # ascended by pgd_attack: minus what the attacker minimises
        j = loss(out[:, :1], target).reshape(len(out))
        return -(j + float(recon_weight) * out[:, 1:].flatten(1).mean(1))
    return f


def ood_attack(net: SegRecon, images: np.ndarray, targets: np.ndarray, s: PGDSettings, recon_weight: float = 0.0,
               seed: int = 0) -> np.ndarray:
    """L∞ PGD on ``images`` ``(N, S, S)`` towards the masks ``targets`` (and a low reconstruction error
    when ``recon_weight`` > 0), with ``ood.eps``, ``ood.steps`` and step ``ood.step_fraction · eps``."""
    o = s.ood
    x = torch.as_tensor(np.asarray(images, np.float32))[:, None]
    y = torch.as_tensor(np.asarray(targets, np.float32))[:, None]
    adv = pgd_attack(_SegAndError(net), x, y, o.eps, o.steps, o.step_fraction * o.eps, "linf", _objective(recon_weight),
                     generator=torch.Generator().manual_seed(seed))
    return adv[:, 0].numpy()


def _run(net: SegRecon, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(images, np.float32))[:, None]
        logits, recon = net(x)
        score = (x - recon).abs().flatten(1).mean(1)
    return torch.sigmoid(logits)[:, 0].numpy(), score.numpy()


def ood_study(profile: Profile, s: PGDSettings, net: SegRecon, ind: TestImages, targets: TestImages) -> dict:
    """Scores and masks of every condition.

    ``ind``: the in-distribution images (negatives); ``targets``: chest test images whose masks the
    attacks aim at (OOD image i gets target i mod n). Returns ``{"scores": per-image table,
    "ood": [OODImage], "adv": {condition: images}, "probs": {condition: probabilities},
    "targets": target masks}``; the table has ``set`` (``in-distribution`` or a condition),
    ``name``, ``kind``, ``score`` and ``dice_vs_target`` (Dice of the produced mask against the target).
    """
    net.eval()
    sources = ood_images(profile, s)
    n = len(targets.masks)
    ood = [dataclasses.replace(sources[i % len(sources)], name=f"{sources[i % len(sources)].name} → target {i}")
           for i in range(n)]  # one OOD image per test sample
    clean = np.stack([o.image for o in ood])
    tgt = np.asarray(targets.masks, np.float32)
    adv = {CONDITIONS[0]: clean, CONDITIONS[1]: ood_attack(net, clean, tgt, s, 0.0, s.seed),
           CONDITIONS[2]: ood_attack(net, clean, tgt, s, s.ood.recon_weight, s.seed)}
    p_ind, sc_ind = _run(net, ind.images)
    rows = [{"set": "in-distribution", "name": f"{r.subject} α={r.alpha:+g}", "kind": "Syn_test", "subject": str(r.subject),
             "score": float(v), "dice_vs_target": np.nan} for r, v in zip(ind.rows.itertuples(), sc_ind)]
    probs = {}
    for cond, imgs in adv.items():
        p, sc = _run(net, imgs)
        probs[cond] = p
        rows += [{"set": cond, "name": o.name, "kind": o.kind, "subject": o.name, "score": float(v),
                  "dice_vs_target": dice(pi, ti)}
                 for o, v, pi, ti in zip(ood, sc, p, tgt)]
    return {"scores": pd.DataFrame(rows), "ood": ood, "adv": adv, "probs": probs, "targets": tgt}


def auroc_table(scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per condition: AUROC of the reconstruction error (in-distribution vs that condition) with its 95 %
    interval (:func:`auroc_interval`; in-distribution grouped by ``subject`` when the column is there), the
    mean scores, the mean Dice of the produced masks against the attack's targets and the share of OOD
    images that reached their target (Dice ≥ :data:`REACHED`)."""
    ind_rows = scores[scores["set"] == "in-distribution"]
    ind = ind_rows["score"]
    groups = ind_rows["subject"] if "subject" in ind_rows.columns else np.arange(len(ind_rows))
    rows = []
    for cond in CONDITIONS:
        g = scores[scores["set"] == cond]
        lo, hi = auroc_interval(ind, groups, g["score"], n_boot, seed)
        rows.append({"condition": cond, "OOD images": len(g), "in-distribution images": len(ind),
                     "AUROC": auroc(ind, g["score"]), "AUROC lo": lo, "AUROC hi": hi, "mean score OOD": g["score"].mean(),
                     "mean score in-dist.": ind.mean(), "Dice vs target mask": g["dice_vs_target"].mean(),
                     "reached target": float((g["dice_vs_target"] >= REACHED).mean())})
    return pd.DataFrame(rows).round(4)
