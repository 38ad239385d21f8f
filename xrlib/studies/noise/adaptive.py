"""Chapter 10, adaptive training against quantum noise (paper 003's Fig. 7) and its control.

Round k = 1 … ``iterations`` (:func:`run_adaptive`):

1. **Attack the training set.** The training subjects of U-Net(Real+Syn_all) that are cohort subjects
   (Real surrogate and synthetic pool; ``subjects`` of them, alternately from each pool) are
   re-projected with the realistic chain at the chapter's angles (``noise.alphas``) and held as
   expected signals like the test images (:func:`xrlib.studies.noise.sources.noise_sources`).
   Each round draws fresh *re-rendered* noise (the physics arm: it is the reference the inserted
   arm is validated against, and the training subjects have CTs, so insertion is not needed) at
   the chapter grid's ``adaptive.lowest_doses`` lowest doses, ``realisations`` per image and dose (seed: profile seed + 1000 k).
2. **Select.** The previous round's model (round 1: U-Net(Real+Syn_all)) predicts the clean and
   the noisy images; the noisy samples whose quality band (Dice vs the ground truth; ≥ 0.8 /
   0.5–0.8 / < 0.5) differs from the clean prediction's are added, with their ground truth, to the
   samples added so far (:func:`xrlib.attacks.adaptive.changed_samples`).
3. **Continue training** that model for ``epochs`` epochs (Adam, ``lr``) on the datasets' training
   images plus all added samples (recipe ``added-samples``; the cache hash holds the digest of the
   added samples and the warm-start folder).

The **control** (``+noise-aug``) runs the same schedule but adds, each round, as many noisy
samples as adaptive training added, drawn at random from the same round's pool (plain noise
augmentation at the same doses), continuing its own previous round. Both chains are scored on
the test images under re-rendered noise at the same doses (:func:`adaptive_sar`).

:func:`adaptive_model` gives the last adaptive round's model to other chapters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.attacks.adaptive import AttackedSamples, band_changes, changed_samples, random_samples
from xrlib.attacks.base import score_threat
from xrlib.attacks.noise import NoiseThreat
from xrlib.core.atomic import write_csv_atomic, write_json_atomic
from xrlib.core.profiles import Profile
from xrlib.eval.robustness import sar
from xrlib.studies.noise.settings import AdaptiveSettings, NoiseSettings, adaptive_settings, noise_settings
from xrlib.studies.noise.sources import noise_sources, nps_patch
from xrlib.studies.rotation import study
from xrlib.studies.rotation.groups import alpha_group
from xrlib.studies.rotation.models import study_configs
from xrlib.studies.rotation.seeds import eager_if_warm
from xrlib.training import TrainConfig, TrainResult, load_best, save_added
from xrlib.training.checkpoint import read_result

__all__ = ["BASE_MODEL", "CHAINS", "AdaptiveRun", "adaptive_doses", "adaptive_model", "adaptive_sar", "adaptive_seconds", "run_adaptive",
           "training_subjects"]

#: The study model adaptive training starts from.
BASE_MODEL = "U-Net(Real+Syn_all)"
#: Chain → model-name suffix: adaptive training and its control (random noisy samples, same count).
CHAINS = {"adaptive": "+noise-adaptive", "augment": "+noise-aug"}
_RECORD = Path("noise") / "adaptive" / "models.json"


@dataclass
class AdaptiveRun:
    """The trained rounds: ``models`` (name → result; the base model first, then per round adaptive and
    control), ``rounds`` (one row per chain and round: ``chain``, ``iteration``, ``model``, ``added_new``,
    ``added_total``, ``pool``, ``folder``, ``train_s`` — the round's training time as recorded with its model —
    and ``attack_s`` — the wall time of the round's training-set attack, adaptive chain only) and ``attacks`` (the training-set attack of every round:
    :class:`xrlib.attacks.adaptive.AttackedSamples` tables with ``iteration``)."""

    models: dict[str, TrainResult]
    rounds: pd.DataFrame
    attacks: pd.DataFrame

    def meta(self) -> pd.DataFrame:
        """``model``, ``chain``, ``iteration`` of every model (the base model: chain ``base``, round 0)."""
        base = pd.DataFrame([{"model": BASE_MODEL, "chain": "base", "iteration": 0}])
        return pd.concat([base, self.rounds[["model", "chain", "iteration"]]], ignore_index=True)


def _base_config(profile: Profile) -> TrainConfig:
    return next(c for c in study_configs(profile) if c.name == BASE_MODEL)


def training_subjects(profile: Profile, run: Path, n: int | None = None) -> list[str]:
    """Cohort subjects of the training split of U-Net(Real+Syn_all)'s sets, alternately from each pool
    (sorted within a pool); the first ``n`` (all when ``None``). Real radiographs have no CT and are left out."""
    from xrlib.training import select_images

    base = _base_config(profile)
    rows = select_images(study.datasets_dir(Path(run)), base.train_sets, "train", base.cen_alphas)
    rows = rows[rows["pool"] != "real"]
    pools = [sorted(g["subject"].astype(str).unique()) for _, g in rows.groupby("pool", sort=True)]
    order = [sid for tup in itertools.zip_longest(*pools) for sid in tup if sid is not None]
    return order if n is None else order[:n]


def adaptive_doses(profile: Profile, run: Path, s: NoiseSettings, a: AdaptiveSettings) -> tuple[float, ...]:
    """The doses (mAs) of adaptive training: the ``a.lowest_doses`` lowest of the chapter's validation grid."""
    from xrlib.studies.noise.grid import figure_doses, validation_grid

    return figure_doses(validation_grid(profile, Path(run), s), a.lowest_doses)


def _key(profile: Profile, run: Path, s: NoiseSettings, a: AdaptiveSettings, doses) -> str:
    """What determines the rounds: the base model's folder (its hash), the chapter's settings, doses and the seed."""
    base = study.study_models(profile, Path(run), [BASE_MODEL])[BASE_MODEL].folder.name
    text = json.dumps({"base": base, "noise": dataclasses.asdict(s), "adaptive": dataclasses.asdict(a),
                       "doses": [float(d) for d in doses],
                       "seed": int(profile.seed), "render": profile.raw.get("render"), "v": 2}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_adaptive(profile: Profile, run: Path, s: NoiseSettings | None = None, a: AdaptiveSettings | None = None,
                 control: bool = True, progress: bool = False, executor=None) -> AdaptiveRun:
    """Train (or load from the cache) every round of adaptive training and, with ``control``, of the
    noise-augmentation control (module docstring); writes ``<run>/noise/adaptive/rounds.csv``,
    ``attacks.csv`` and ``models.json``. ``executor``: see :func:`xrlib.studies.rotation.study.train_all`
    (the two chains of a round are independent tasks)."""
    run = Path(run)
    s = s or noise_settings(profile)
    a = a or adaptive_settings(profile)
    doses = adaptive_doses(profile, run, s, a)
    base_res = study.study_models(profile, run, [BASE_MODEL])[BASE_MODEL]
    base_cfg = _base_config(profile)
    sources, rows = noise_sources(profile, run, s.alphas, subjects=training_subjects(profile, run, a.subjects))
    chains = list(CHAINS) if control else ["adaptive"]
    prev = {c: base_res for c in chains}
    added = {c: AttackedSamples.concat([]) for c in chains}
    models, records, attacks = {BASE_MODEL: base_res}, [], []
    for k in range(1, a.iterations + 1):
        seed = int(profile.seed) + 1000 * k
        threat = NoiseThreat(sources, rows, profile.image_size, doses, arms=("rerendered",),
                             realisations=a.realisations, reference_dose=s.reference_dose_mas,
                             nps_realisations=s.nps_realisations, patch=nps_patch(s, sources[0]), seed=seed)
        t_attack = time.perf_counter()
        pool = band_changes(load_best(prev["adaptive"]), threat, threat.test, doses)
        attack_s = time.perf_counter() - t_attack
        pool.table["iteration"] = k
        attacks.append(pool.table)
        new = {"adaptive": changed_samples(pool)}
        if control:
            new["augment"] = random_samples(pool, len(new["adaptive"]), seed)
        configs = {}
        for chain in chains:
            added[chain] = AttackedSamples.concat([added[chain], new[chain]])
            params = save_added(run / "models", f"noise-{chain}-it{k}", added[chain].images, added[chain].masks,
                                added[chain].table)
            configs[chain] = eager_if_warm(dataclasses.replace(
                base_cfg, name=f"{BASE_MODEL}{CHAINS[chain]} it{k}", epochs=a.epochs, patience=a.epochs, lr=a.lr,
                recipe="added-samples", recipe_params={**params, "warm_start": prev[chain].folder.name}))
        trained = study.train_all(list(configs.values()), run, progress=progress, executor=executor)
        for chain, cfg in configs.items():
            prev[chain] = models[cfg.name] = trained[cfg.name]
            records.append({"chain": chain, "iteration": k, "model": cfg.name, "added_new": len(new[chain]),
                            "added_total": len(added[chain]), "pool": len(pool), "folder": trained[cfg.name].folder.name,
                            "train_s": float(trained[cfg.name].seconds),
                            "attack_s": float(attack_s) if chain == "adaptive" else 0.0})
    out = AdaptiveRun(models, pd.DataFrame(records), pd.concat(attacks, ignore_index=True))
    folder = run / _RECORD.parent
    write_csv_atomic(folder / "rounds.csv", out.rounds)
    write_csv_atomic(folder / "attacks.csv", out.attacks)
    write_json_atomic(run / _RECORD, {"key": _key(profile, run, s, a, doses), "rounds": records, "doses": list(doses)})
    return out


def adaptive_model(profile: Profile, run: Path) -> tuple[str, TrainResult]:
    """The last round of adaptive training against quantum noise, as ``(name, TrainResult)``.

    Reads ``<run>/noise/adaptive/models.json`` (written by chapter 10) when it was made with the same
    base model and settings and the model folder is complete; otherwise runs the adaptive chain
    (without the control) — cached rounds are reused, missing ones are trained (minutes under
    ``quick``). Load the network with ``xrlib.training.load_best(result)``.
    """
    run = Path(run)
    s, a = noise_settings(profile), adaptive_settings(profile)
    try:
        rec = json.loads((run / _RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rec = None
    if rec is not None and rec.get("key") == _key(profile, run, s, a, adaptive_doses(profile, run, s, a)):
        last = [r for r in rec.get("rounds", []) if r["chain"] == "adaptive" and r["iteration"] == a.iterations]
        res = read_result(run / "models" / last[0]["folder"]) if last else None
        if res is not None:
            return res.name, res
    out = run_adaptive(profile, run, s, a, control=False)
    name = out.rounds["model"].iloc[-1]
    return name, out.models[name]


def adaptive_seconds(profile: Profile, run: Path) -> float:
    """The extra time adaptive training costs over its warm start: every adaptive round's training time plus
    its training-set attack (s), from ``<run>/noise/adaptive/models.json`` (made by :func:`adaptive_model` or
    chapter 10 if missing)."""
    adaptive_model(profile, run)
    rec = json.loads((Path(run) / _RECORD).read_text(encoding="utf-8"))
    return float(sum(r["train_s"] + r["attack_s"] for r in rec["rounds"] if r["chain"] == "adaptive"))


def adaptive_sar(profile: Profile, run: Path, threat: NoiseThreat, ad: AdaptiveRun, doses) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every round's model on the test images under re-rendered noise at ``doses``; write
    ``<run>/noise/adaptive.csv`` (contract rows with ``chain`` and ``iteration``).

    Returns ``(rows, per_model)``: per model, dose and clean band the SAR (``sar``, ``n_clean``), with
    the model's ``chain``, ``iteration`` and mean clean Dice (``clean_dice``) on the test images.
    The re-rendered realisations are those of ``threat`` (same seed).
    """
    rer = NoiseThreat(threat.sources, threat.rows, threat.size, doses, arms=("rerendered",),
                      realisations=threat.realisations, reference_dose=threat.reference_dose,
                      nps_realisations=threat.nps_realisations, patch=threat.patch, seed=threat.seed)
    victims = {name: load_best(res) for name, res in ad.models.items()}
    df = score_threat(rer, victims, rer.test, study.pixel_mm(profile), budgets=[math.inf, *doses], groups=alpha_group)
    meta = ad.meta()
    df = df.merge(meta, on="model", how="left")
    write_csv_atomic(Path(run) / "noise" / "adaptive.csv", df)
    s = sar(df, by=["model", "budget"], clean_budget=math.inf)
    clean = df[~np.isfinite(df["budget"].to_numpy(float))].groupby("model", sort=False)["dice"].mean().rename("clean_dice")
    per = s.merge(clean.reset_index(), on="model").merge(meta, on="model")
    return df, per
