"""Out-of-distribution (OOD) attack and reconstruction-based detection (paper 002, sections 2.4–2.5 and 3.2).

* The detector: a reconstruction head (:mod:`xrlib.nets.recon`) trained with an L1 loss on a *frozen*
  victim (recipe ``recon-head``, warm-started from the victim's folder): the victim stays exactly the
  model the rest of the chapter attacks, and training the head alone is cheap. (Paper 002 trains its
  reconstruction channel jointly with the network; the recipe can do that too, ``frozen=False``.) The
  OOD score of an image is its mean absolute reconstruction error. One head per victim of
  ``ood.victims``: a standard model (U-Net(Real+Syn_all)) and an adversarially trained one (its
  ``+PGD-AT``), both heads trained alike.
* OOD images (:func:`ood_images`): an axial slice of the source CT, a lateral parallel-beam
  projection of it, and natural pictures shipped with scikit-image, each brought to the network's input like
  a radiograph (resize keeping the aspect ratio, zero padding, [0, 1]).
* One OOD image per attacked test sample (paper 002 §3.2): OOD source ``i mod n`` aimed at test sample
  ``i``'s clavicle mask.
* Conditions (:func:`ood_study`): (a) the clean OOD images; (b) the OOD images attacked by L∞ PGD so
  that the network outputs the target mask (objective: minimise 1 − soft Dice against it); (c) the
  same attack also minimising the reconstruction error (1 − soft Dice + ``recon_weight`` · L1 error).
  (b) and (c) run over a sweep: every ε of ``ood.eps`` × every step count of ``ood.steps`` (step
  ``step_fraction · ε`` from a uniform random start; one run of the largest count per ε, its iterate
  read at each count — the last iterate, as paper 002's Algorithm 1).
* Per image, before (the clean OOD image) and after the attack: the Dice of the produced mask
  against the target and the reconstruction error.
* AUROC (:func:`auroc_table`, scikit-learn's ``roc_auc_score``) of the score between the
  in-distribution Syn_test images (negatives) and each condition's OOD images (positives):
  1 = perfect detection, 0.5 = chance, below 0.5 = the OOD images look *more* in-distribution
  than the test images; with a 95 % percentile *cluster* bootstrap interval (:func:`auroc_interval`)
  that resamples in-distribution subjects (their images are correlated) and OOD source pictures (the
  attacked images of one source share it); below :data:`~xrlib.eval.evidence.MIN_SUBJECTS`
  in-distribution subjects no interval (``nan``).
* Whether the attack reached its target (:func:`reached`): a setting reached it when at least
  :data:`REACHED_SHARE` of its OOD images produce a mask with Dice ≥ :data:`REACHED` against their
  target; an AUROC against a setting that did not reach its target does not test the detector.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.attacks.base import TestImages
from xrlib.attacks.pgd import _direction, _random_start, frozen, project
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

__all__ = ["CONDITIONS", "OODImage", "REACHED", "REACHED_SHARE", "auroc", "auroc_interval", "auroc_table", "head_config",
           "ood_attack", "ood_images", "ood_study", "reached", "strongest", "strongest_examples", "train_heads"]

#: An attacked OOD image reached its target when the produced mask's Dice with the target is at least this.
REACHED = 0.5
#: An attack setting reached its target when at least this share of its OOD images did.
REACHED_SHARE = 0.5
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


def auroc_interval(ind_scores: Sequence[float], ind_groups: Sequence, ood_scores: Sequence[float],
                   ood_groups: Sequence | None = None, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile cluster-bootstrap interval of :func:`auroc`: in-distribution images resampled by their
    group (subject), OOD images by theirs (source picture; ``None``: one by one); ``(nan, nan)`` below
    :data:`~xrlib.eval.evidence.MIN_SUBJECTS` in-distribution groups (too few for an honest interval)."""
    from xrlib.eval.evidence import MIN_SUBJECTS

    ind, ood = np.asarray(ind_scores, float), np.asarray(ood_scores, float)

    def clusters(groups, n):
        g = pd.Series(np.arange(n) if groups is None else np.asarray(groups)).astype(str).to_numpy()
        return [np.flatnonzero(g == k) for k in np.unique(g)]

    ind_c, ood_c = clusters(ind_groups, len(ind)), clusters(ood_groups, len(ood))
    if len(ind_c) < MIN_SUBJECTS:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(int(n_boot)):
        pick = np.concatenate([ind_c[j] for j in rng.integers(0, len(ind_c), len(ind_c))])
        o = np.concatenate([ood_c[j] for j in rng.integers(0, len(ood_c), len(ood_c))])
        vals.append(auroc(ind[pick], ood[o]))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def _victim_folder(profile: Profile, run: Path, victim: str, defended: Mapping[str, TrainResult]) -> str:
    if victim == BASE_MODEL:
        return base_folder(profile, run)
    if victim not in defended:
        raise InputError(profile.path or profile.name, f"pgd.ood.victims: {victim!r} is neither {BASE_MODEL!r} nor a "
                                                       f"defense of the chapter ({', '.join(defended)})")
    return defended[victim].folder.name


def head_config(profile: Profile, run: Path, s: PGDSettings, victim: str = BASE_MODEL,
                defended: Mapping[str, TrainResult] | None = None) -> TrainConfig:
    """The reconstruction head of ``victim``: U-Net(Real+Syn_all)'s configuration with the ``recon-head`` recipe
    (frozen U-Net, warm-started from the victim's folder — the study model's, or ``defended[victim]``'s).

    ``ood.head_epochs`` epochs (patience the same, so all run), the profile's training lr; always eager
    (the head reads the U-Net's features through a forward hook, which a compiled forward skips).
    Every victim's head trains alike: only the warm start differs.
    """
    base = {c.name: c for c in study_configs(profile)}[BASE_MODEL]
    folder = _victim_folder(profile, run, victim, defended or {})
    params = {"frozen": True, "hidden": s.ood.head_hidden, "weight": 1.0, "warm_start": folder}
    return dataclasses.replace(base, name=victim + "+recon-head", epochs=s.ood.head_epochs,
                               patience=s.ood.head_epochs, recipe="recon-head", recipe_params=params,
                               compile=False)


def train_heads(profile: Profile, run: Path, s: PGDSettings, defended: Mapping[str, TrainResult] | None = None,
                progress: bool = True) -> dict[str, SegRecon]:
    """Train (or load from the cache) the reconstruction head of every victim of ``ood.victims``
    (``defended``: the chapter's defenses, :func:`xrlib.studies.pgd.study.train_defenses`); victim → its
    U-Net + head, loaded in eval mode."""
    cfgs = [head_config(profile, run, s, v, defended) for v in s.ood.victims]
    res = train_all(cfgs, study.datasets_dir(Path(run)), Path(run) / "models", progress=progress)
    return {v: load_seg_recon(res[c.name]) for v, c in zip(s.ood.victims, cfgs)}


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
    """What the attacker minimises, per image: 1 − soft Dice against the target (+ ``recon_weight`` · the
    mean reconstruction error)."""
    from monai.losses import DiceLoss

    loss = DiceLoss(sigmoid=True, reduction="none")

    def f(out, target):
        j = loss(out[:, :1], target).reshape(len(out))
        return j + float(recon_weight) * out[:, 1:].flatten(1).mean(1)
    return f


def ood_attack(net: SegRecon, images: np.ndarray, targets: np.ndarray, eps: float, steps: Sequence[int],
               step_fraction: float, recon_weight: float = 0.0, seed: int = 0) -> dict[int, np.ndarray]:
    """L∞ PGD on ``images`` ``(N, S, S)`` in [0, 1] towards the masks ``targets`` (and a low reconstruction
    error when ``recon_weight`` > 0): from a uniform random start in the ε-ball, ``max(steps)`` signed
    gradient steps of ``step_fraction · eps`` (ε in [0, 1] image units); step count → the iterate after
    that many steps (inside the ball and [0, 1])."""
    counts = sorted({int(k) for k in steps})
    if not counts or counts[0] < 1 or not 0 < float(eps) <= 1:
        raise ValueError(f"the OOD attack needs ε in (0, 1] and step counts ≥ 1, got {eps!r} and {list(steps)!r}")
    model, fn = _SegAndError(net), _objective(recon_weight)
    x = torch.as_tensor(np.asarray(images, np.float32))[:, None]
    y = torch.as_tensor(np.asarray(targets, np.float32))[:, None]
    step, out = float(step_fraction) * float(eps), {}
    with frozen(model):
        x_adv = _random_start(x, float(eps), "linf", torch.Generator().manual_seed(seed))
        for t in range(1, counts[-1] + 1):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(model(x_adv), y).sum(), x_adv)
            x_adv = project(x_adv.detach() - step * _direction(grad, "linf"), x, float(eps), "linf")
            if t in counts:
                out[t] = x_adv[:, 0].numpy().copy()
    return out


def _run(net: SegRecon, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(images, np.float32))[:, None]
        logits, recon = net(x)
        score = (x - recon).abs().flatten(1).mean(1)
    return torch.sigmoid(logits)[:, 0].numpy(), score.numpy()


def ood_study(profile: Profile, s: PGDSettings, nets: Mapping[str, SegRecon], ind: TestImages, targets: TestImages) -> dict:
    """Scores and masks of every victim, condition and attack setting.

    ``nets``: victim → its U-Net + reconstruction head (:func:`train_heads`); ``ind``: the in-distribution
    images (negatives); ``targets``: chest test images whose masks the attacks aim at (OOD image i gets
    source i mod n and target i). Returns ``{"scores": per-image table, "ood": [OODImage], "adv":
    {(victim, condition, ε, steps): images}, "probs": {same keys: probabilities}, "targets": target masks}``.
    The table has ``victim``, ``set`` (``in-distribution`` or a condition), ``eps`` and ``steps`` (0 for the
    clean sets), ``name``, ``kind``, ``source`` (the OOD picture), ``subject``, ``score`` (reconstruction error),
    ``dice_vs_target`` (Dice of the produced mask against the target), and the clean OOD image's
    ``score_before`` and ``dice_before`` on the attacked rows.
    """
    sources = ood_images(profile, s)
    n = len(targets.masks)
    ood = [dataclasses.replace(sources[i % len(sources)], name=f"{sources[i % len(sources)].name} → target {i}")
           for i in range(n)]  # one OOD image per test sample
    src = [sources[i % len(sources)].name for i in range(n)]
    clean = np.stack([o.image for o in ood])
    tgt = np.asarray(targets.masks, np.float32)
    rows, adv, probs = [], {}, {}
    for victim, net in nets.items():
        net.eval()
        _, sc_ind = _run(net, ind.images)
        rows += [{"victim": victim, "set": "in-distribution", "eps": 0.0, "steps": 0, "name": f"{r.subject} α={r.alpha:+g}",
                  "kind": "Syn_test", "source": "", "subject": str(r.subject), "score": float(v), "dice_vs_target": np.nan}
                 for r, v in zip(ind.rows.itertuples(), sc_ind)]
        p0, sc0 = _run(net, clean)
        d0 = np.array([dice(pi, ti) for pi, ti in zip(p0, tgt)])
        settings = [(CONDITIONS[0], 0.0, 0, clean)]
        for eps in s.ood.eps:
            for cond, w in ((CONDITIONS[1], 0.0), (CONDITIONS[2], s.ood.recon_weight)):
                runs = ood_attack(net, clean, tgt, eps, s.ood.steps, s.ood.step_fraction, w, s.seed)
                settings += [(cond, eps, k, runs[k]) for k in s.ood.steps]
        for cond, eps, k, imgs in settings:
            p, sc = (p0, sc0) if k == 0 else _run(net, imgs)
            adv[(victim, cond, eps, k)], probs[(victim, cond, eps, k)] = imgs, p
            rows += [{"victim": victim, "set": cond, "eps": float(eps), "steps": int(k), "name": o.name, "kind": o.kind,
                      "source": sn, "subject": sn, "score": float(v), "dice_vs_target": dice(pi, ti),
                      "score_before": float(b), "dice_before": float(db)}
                     for o, sn, v, pi, ti, b, db in zip(ood, src, sc, p, tgt, sc0, d0)]
    return {"scores": pd.DataFrame(rows), "ood": ood, "adv": adv, "probs": probs, "targets": tgt}


def auroc_table(scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per victim, condition, ε and step count: AUROC of the reconstruction error (in-distribution vs that
    setting's OOD images) with its 95 % cluster-bootstrap interval (:func:`auroc_interval`: in-distribution
    images grouped by ``subject``, OOD images by ``source``, when the columns are there), the mean
    reconstruction error and Dice against the target before (the clean OOD image) and after the attack,
    the share of OOD images that reached their target (Dice ≥ :data:`REACHED`) and ``target reached``
    (:func:`reached`). ``scores``: :func:`ood_study`'s table (without ``victim``/``eps``/``steps``: one victim,
    the clean setting)."""
    df = scores.copy()
    for col, val in (("victim", ""), ("eps", 0.0), ("steps", 0)):
        if col not in df.columns:
            df[col] = val
    rows = []
    for victim, v in df.groupby("victim", sort=False):
        ind_rows = v[v["set"] == "in-distribution"]
        ind = ind_rows["score"].to_numpy()
        groups = ind_rows["subject"] if "subject" in ind_rows.columns else None
        for (cond, eps, k), g in v[v["set"] != "in-distribution"].groupby(["set", "eps", "steps"], sort=False):
            lo, hi = auroc_interval(ind, groups, g["score"], g["source"] if "source" in g.columns else None, n_boot, seed)
            share = float((g["dice_vs_target"] >= REACHED).mean())
            s0 = g["score_before"] if "score_before" in g.columns else g["score"]  # before: the clean OOD image
            d0 = g["dice_before"] if "dice_before" in g.columns else g["dice_vs_target"]
            rows.append({"victim": victim, "condition": cond, "ε": eps, "steps": k, "OOD images": len(g),
                         "in-distribution images": len(ind), "AUROC": auroc(ind, g["score"]), "AUROC lo": lo, "AUROC hi": hi,
                         "recon. error in-dist.": float(ind.mean()), "recon. error before": s0.mean(),
                         "recon. error after": g["score"].mean(), "Dice vs target before": d0.mean(),
                         "Dice vs target after": g["dice_vs_target"].mean(), "reached target": share,
                         "target reached": reached(share)})
    out = pd.DataFrame(rows)
    if not (out["victim"] != "").any():
        out = out.drop(columns="victim")
    return out.round(4)


def reached(share: float) -> bool:
    """The criterion of the module docstring: at least :data:`REACHED_SHARE` of a setting's OOD images produce
    a mask with Dice ≥ :data:`REACHED` against their target."""
    return bool(share >= REACHED_SHARE)


def strongest(table: pd.DataFrame, condition: str = CONDITIONS[2]) -> pd.DataFrame:
    """Per victim, the row of :func:`auroc_table` for ``condition`` at the largest ε and step count (the strongest
    attack the sweep ran)."""
    t = table[table["condition"] == condition]
    return t.sort_values(["ε", "steps"]).groupby("victim", sort=False).tail(1).set_index("victim")


def strongest_examples(o: dict, victim: str, condition: str = CONDITIONS[2]) -> dict:
    """The clean and attacked OOD images of ``victim`` at the largest ε and step count of ``condition``, the masks
    produced, the targets and the reconstruction errors: the arguments of :func:`xrlib.plots.pgd.ood_examples`."""
    keys = [k for k in o["adv"] if k[0] == victim and k[1] == condition]
    if not keys:
        raise KeyError(f"no OOD attack of {victim!r} under {condition!r}")
    key = max(keys, key=lambda k: (k[2], k[3]))
    sc = o["scores"]
    at = sc[(sc["victim"] == victim) & (sc["set"] == condition) & (sc["eps"] == key[2]) & (sc["steps"] == key[3])]
    return {"names": [x.name for x in o["ood"]], "clean": o["adv"][(victim, CONDITIONS[0], 0.0, 0)],
            "attacked": o["adv"][key], "probs": o["probs"][key], "targets": o["targets"], "scores": at["score"].to_numpy()}
