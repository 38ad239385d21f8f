"""Chapter 08's study: Sim2Real vs Real2Real on matched data, the Table 4 analog and the acquisition threat.

Models are named ``"<row>/<DR level>"`` (e.g. ``Realistic/strong``), rows as in :data:`ROWS`: the training
domain (:mod:`xrlib.studies.sim.sources`), the method (plain, ADDA towards the Real surrogate's unlabelled
train split, CycleGAN translation) and the scale. All are the rotation study's U-Net (depth, loss, width
from the profile's ``train:`` section), trained with the ``sim:`` block's step budget (every row the same
number of optimisation steps, its epochs from its training-set size, no early stopping; the same cosine
learning-rate schedule over those steps, :data:`LR_SCHEDULE`), lr, batch size and torch threads, from scratch (a Sim2Real model never starts from weights that saw the Real domain), cached under
``<run>/sim/models``. Every model is tested on the Real surrogate's test split (*Sim2Real* vs *Real2Real*)
and on the Syn_test subjects at the chosen angles rendered with the realistic chain at the Real surrogate's
acquisition variability (the acquisition threat's images at scale 1; without the surrogate's room effects).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.attacks.base import TestImages
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile
from xrlib.data.shards import read_manifest
from xrlib.eval.predict import evaluate_predictions, predict
from xrlib.eval.stats import bootstrap_by_group
from xrlib.studies.rotation.groups import alpha_group
from xrlib.studies.rotation.models import STUDY_DEPTH, STUDY_LOSS
from xrlib.studies.rotation.study import pixel_mm
from xrlib.studies.sim.settings import SimSettings, sim_settings
from xrlib.studies.sim.sources import acquisition_threat, build_domain, domain_dir
from xrlib.training import TrainConfig, TrainResult, load_best
from xrlib.training import train_all as _train_all
from xrlib.training.checkpoint import cached_result
from xrlib.training.tasks import TrainTask
from xrlib.training.randomization import DR_VERSION

__all__ = ["LR_SCHEDULE", "PAPER_TABLE4_DICE_360", "ROWS", "evaluate_sim", "parse_model", "real_train_masks", "sim_configs",
           "sim_models", "sim_plan", "table4", "train_images", "train_sim"]

#: Table 4 rows → (training domain, method). Methods: ``plain``, ``adda``, ``cyc`` (CycleGAN-translated).
ROWS = {
    "Real": ("real", "plain"), "Realistic": ("realistic", "plain"), "Heuristic": ("heuristic", "plain"),
    "Naive": ("naive", "plain"), "Naive-Cyc": ("naive", "cyc"), "Realistic-Cyc": ("realistic", "cyc"),
    "Naive-ADDA": ("naive", "adda"), "Realistic-ADDA": ("realistic", "adda"),
    "Realistic-Scaled": ("realistic-scaled", "plain"),
}
#: Every row's learning-rate schedule (:func:`xrlib.training.config.scheduled_lr`): cosine from ``sim.lr`` to 1 % of
#: it over the row's steps, so each row ends its step budget with small updates and its validation Dice settles
#: (the plateau check, :func:`xrlib.studies.sim.fairness.plateaued`) instead of jittering at the full rate.
LR_SCHEDULE = "cosine"
#: Paper 001, Table 4, 360×360 px column: segmentation Dice (mean ± sd over 366 real hip radiographs).
PAPER_TABLE4_DICE_360 = {
    ("Real", "regular"): (0.783, 0.232), ("Real", "strong"): (0.759, 0.248),
    ("Realistic", "regular"): (0.751, 0.241), ("Realistic", "strong"): (0.760, 0.250),
    ("Heuristic", "regular"): (0.683, 0.265), ("Heuristic", "strong"): (0.682, 0.286),
    ("Naive", "regular"): (0.687, 0.266), ("Naive", "strong"): (0.572, 0.309),
    ("Realistic-Cyc", "regular"): (0.760, 0.248), ("Realistic-Cyc", "strong"): (0.733, 0.267),
    ("Naive-Cyc", "regular"): (0.739, 0.254), ("Naive-Cyc", "strong"): (0.736, 0.258),
    ("Realistic-ADDA", "regular"): (0.726, 0.292), ("Realistic-ADDA", "strong"): (0.731, 0.256),
    ("Naive-ADDA", "regular"): (0.693, 0.297), ("Naive-ADDA", "strong"): (0.662, 0.265),
    ("Realistic-Scaled", "regular"): (0.838, 0.221), ("Realistic-Scaled", "strong"): (0.818, 0.221),
}


def models_dir(run: Path) -> Path:
    """The chapter's models root, ``<run>/sim/models`` (an ADDA model's target folder is given relative to it)."""
    return Path(run) / "sim" / "models"


def parse_model(name: str) -> tuple[str, str]:
    """``"Realistic/strong"`` → ``("Realistic", "strong")``; :class:`InputError` for an unknown row or level."""
    row, _, level = str(name).partition("/")
    if row not in ROWS or level not in ("regular", "strong"):
        raise InputError(None, f"sim: unknown model {name!r}; expected <row>/<regular|strong>, rows {', '.join(ROWS)}")
    return row, level


def train_images(profile: Profile, s: SimSettings, domain: str) -> int:
    """Training images of a row trained on ``domain``: surrogate train subjects × that domain's poses per subject."""
    poses = profile.surrogate.poses_per_subject if s.poses_per_subject is None else s.poses_per_subject
    return profile.pools.surrogate.train * poses * (s.scaled_factor if domain == "realistic-scaled" else 1)


def _config(profile: Profile, s: SimSettings, name: str, run: Path) -> tuple[TrainConfig, Path]:
    row, level = parse_model(name)
    domain, method = ROWS[row]
    t = profile.require_train()
    n_train = train_images(profile, s, domain)
    epochs = s.epochs_for(n_train)
    patience = epochs if s.steps is not None else s.patience  # a step budget: no early stopping
    common = dict(train_sets=["Real"], depth=STUDY_DEPTH if t.depth is None else int(t.depth),
                  loss=STUDY_LOSS if t.loss is None else str(t.loss), base_channels=int(t.base_channels),
                  lr=s.lr, batch_size=s.batch_size, epochs=epochs, patience=patience, seed=int(profile.seed),
                  compile=False, lr_schedule=LR_SCHEDULE, threads=s.threads, val_every=s.val_every_for(n_train))
    # compile=False whatever train.compile says: a row has 2–4 steps an epoch and its smaller last batch runs
    # eagerly, so a compiled row is no faster than an eager one (the compilation is not paid back)
    if method == "plain":
        return TrainConfig(name=name, recipe="domain_randomization", recipe_params={"level": level, "version": DR_VERSION}, **common), \
            domain_dir(run, domain)
    if method == "adda":
        # the target relative to the models root (models_dir), so the key does not depend on where the run lives
        target = os.path.relpath(domain_dir(run, "real"), models_dir(run))
        return TrainConfig(name=name, recipe="adda", recipe_params={"level": level, "version": DR_VERSION,
                                                          "target_dir": Path(target).as_posix()},
                           **common), domain_dir(run, domain)
    from xrlib.studies.sim.cyclegan import translated_dir

    return TrainConfig(name=name, recipe="domain_randomization", recipe_params={"level": level, "version": DR_VERSION}, **common), \
        translated_dir(run, domain)


def sim_configs(profile: Profile, run: Path, names=None) -> list[tuple[TrainConfig, Path]]:
    """``(config, datasets folder)`` of the chapter's models (default the ``sim.models`` of the profile)."""
    s = sim_settings(profile)
    return [_config(profile, s, n, Path(run)) for n in (s.models if names is None else names)]


def needed_domains(profile: Profile, names=None) -> list[str]:
    """The dataset domains the profile's models (and the Real test split) need, in :data:`DOMAINS` order."""
    from xrlib.studies.sim.sources import DOMAINS

    s = sim_settings(profile)
    need = {"real"} | {ROWS[parse_model(n)[0]][0] for n in (s.models if names is None else names)}
    return [d for d in DOMAINS if d in need]


def sim_plan(profile: Profile) -> dict[str, pd.DataFrame]:
    """What the profile's chapter 08 builds and trains, computed from its configuration alone (a dry run).

    Nothing is rendered or trained, so this is how the ``paper`` grid is checked on a machine that cannot run it.
    Returns ``domains`` (one row per dataset domain: physics, acquisition, surrogate subjects per split,
    poses per subject, images) and ``models`` (one row per model: its Table 4 row, DR level, training domain,
    method, recipe, epochs, patience, batch size, optimisation steps, lr, training images; CycleGAN steps and generator blocks
    for ``-Cyc`` rows). Raises :class:`InputError` for a bad ``sim:`` block or model name.
    """
    from xrlib.studies.sim.sources import SIMULATORS

    s = sim_settings(profile)
    poses = profile.surrogate.poses_per_subject if s.poses_per_subject is None else s.poses_per_subject
    splits = profile.pools.surrogate
    per_domain = {"real": poses, **{d: poses for d in SIMULATORS}, "realistic-scaled": poses * s.scaled_factor}
    physics = {"real": "realistic", "naive": "naive", "heuristic": "heuristic", "realistic": "realistic",
               "realistic-scaled": "realistic"}
    domains = pd.DataFrame([{
        "domain": d, "physics": physics[d],
        "acquisition": "per image (documented ranges)" if d == "real" else ("—" if physics[d] != "realistic" else "fixed default"),
        "train subjects": splits.train, "val subjects": splits.val, "test subjects": splits.test,
        "poses per subject": per_domain[d], "images": splits.total * per_domain[d]}
        for d in needed_domains(profile)])
    cyc = None
    rows = []
    for cfg, _ in sim_configs(profile, Path("."), None):
        row, level = parse_model(cfg.name)
        domain, method = ROWS[row]
        if method == "cyc" and cyc is None:
            from xrlib.nets.cyclegan import generator_blocks
            from xrlib.studies.sim.cyclegan import cyclegan_settings

            cyc = {**cyclegan_settings(profile), "blocks": generator_blocks(profile.image_size)}
        rows.append({"model": cfg.name, "row": row, "DR": level, "domain": domain, "method": method,
                     "recipe": cfg.recipe, "epochs": cfg.epochs, "patience": cfg.patience, "batch": cfg.batch_size,
                     "steps": cfg.epochs * math.ceil(splits.train * per_domain[domain] / cfg.batch_size),
                     "lr": cfg.lr, "training images": splits.train * per_domain[domain],
                     "CycleGAN steps": cyc["steps"] if method == "cyc" else None,
                     "generator blocks": cyc["blocks"] if method == "cyc" else None})
    models = pd.DataFrame(rows)
    for col in ("CycleGAN steps", "generator blocks"):
        models[col] = models[col].astype("Int64")
    return {"domains": domains, "models": models}


def _cost_order(cfg: TrainConfig) -> int:
    """Submission order within a round: the costlier trainings first (ADDA's steps cost ≈ 3 plain ones)."""
    return 0 if cfg.recipe == "adda" else 1


def train_sim(profile: Profile, run: Path, names=None, progress: bool = True, executor=None) -> dict[str, TrainResult]:
    """Build the needed domains, train the CycleGANs and the models, translate, and train the ``-Cyc`` models.

    ``executor``: ``None``/``"local"`` trains one after another here; ``"process"``, ``"ray"`` or an
    :class:`xrlib.exec.base.Executor` runs the trainings as independent tasks in two rounds: first every
    CycleGAN (:class:`xrlib.studies.sim.cyclegan.CycleGANTask`) and the models that need no translation,
    costliest first; then the driver translates the ``-Cyc`` domains and the ``-Cyc`` models train, beside as
    many plain models held back from the first round as fill the executor's ``workers`` (so no worker idles
    while a lone ``-Cyc`` model trains). Each task runs with ``sim.threads`` torch threads (in its cache key), so
    every executor gives the same models."""
    from xrlib.studies.sim.cyclegan import CycleGANTask, translate_domain

    run = Path(run)
    for d in needed_domains(profile, names):
        build_domain(profile, run, d, progress=progress)
    plan = sim_configs(profile, run, names)
    cyc_domains = list(dict.fromkeys(ddir.name for _, ddir in plan if ddir.parent.name == "translated"))
    if executor in (None, "local"):
        out = {}
        for cfg, ddir in plan:
            if ddir.parent.name == "translated":
                translate_domain(profile, run, ddir.name, progress=progress)
            out.update(_train_all([cfg], ddir, models_dir(run), progress=progress))
        return out
    from xrlib.exec import get_executor

    ex = get_executor(executor)
    threads = sim_settings(profile).threads
    direct = sorted([TrainTask(cfg, str(ddir), str(models_dir(run))) for cfg, ddir in plan
                     if ddir.parent.name != "translated"], key=lambda t: _cost_order(t.config))
    n_cyc = sum(ddir.parent.name == "translated" for _, ddir in plan)
    workers = int(getattr(ex, "workers", 1))
    held = min((-n_cyc) % workers, sum(t.config.recipe != "adda" for t in direct)) if n_cyc else 0
    first = [CycleGANTask(profile, str(run), d, threads) for d in cyc_domains] + direct[:len(direct) - held]
    results = {}
    for task, res in ex.map(first, progress=progress, desc="chapter 08 trainings"):
        if isinstance(task, TrainTask):
            results[task.config.name] = res
    second = []
    for cfg, ddir in plan:
        if ddir.parent.name == "translated":
            translate_domain(profile, run, ddir.name, progress=progress)  # the CycleGAN is cached: translation only
            second.append(TrainTask(cfg, str(ddir), str(models_dir(run))))
    second += direct[len(direct) - held:]
    for task, res in ex.map(second, progress=progress, desc="chapter 08 -Cyc trainings") if second else []:
        results[task.config.name] = res
    return {cfg.name: results[cfg.name] for cfg, _ in plan}


def sim_models(profile: Profile, run: Path, names=None, level: str | None = "strong") -> dict[str, TrainResult]:
    """The chapter's trained models (read from the cache, never trained) — for chapter 13's robustness card.

    ``names``: model names (default the profile's ``sim.models`` with DR ``level``; ``level=None``: all of
    them). A model that is not trained raises :class:`InputError` naming it and the chapter to run."""
    s = sim_settings(profile)
    if names is None:
        names = [n for n in s.models if level is None or parse_model(n)[1] == level]
    out = {}
    for cfg, ddir in sim_configs(profile, run, names):
        res = cached_result(cfg, ddir, models_dir(run)) if (ddir / "build.json").is_file() else None
        if res is None:
            raise InputError(models_dir(run), f"model {cfg.name!r} is not trained; run chapter 08 "
                                                           "(xrlib book --only 08_simulation_realism) first")
        out[cfg.name] = res
    return out


def training_seconds(profile: Profile, run: Path, results: dict[str, TrainResult]) -> dict[str, float | None]:
    """What each trained model of ``results`` (:func:`sim_models`) cost to train (s): its U-Net's recorded time,
    plus for a ``-Cyc`` model the CycleGAN that translated its images (``None`` when that was not recorded)."""
    from xrlib.studies.sim.cyclegan import cyclegan_seconds

    out = {}
    for cfg, ddir in sim_configs(profile, run, list(results)):
        seconds = float(results[cfg.name].seconds)
        if ddir.parent.name == "translated":
            cyc = cyclegan_seconds(run, ddir.name)
            seconds = None if cyc is None else seconds + cyc
        out[cfg.name] = seconds
    return out


def real_test_images(run: Path) -> TestImages:
    """The Real surrogate's test split (varied acquisitions)."""
    ddir = domain_dir(run, "real")
    man = read_manifest(ddir)
    return TestImages.from_manifest(man[(man["pool"] == "surrogate") & (man["split"] == "test")], ddir)


def real_train_masks(run: Path) -> np.ndarray:
    """The masks ``(N, S, S)`` of the Real surrogate's train split (the mean-mask baseline's training data)."""
    from xrlib.data.shards import ShardDataset

    ddir = domain_dir(run, "real")
    man = read_manifest(ddir)
    rows = man[(man["pool"] == "surrogate") & (man["split"] == "train")]
    ds = ShardDataset(rows, root=ddir)
    return np.stack([ds[i][1][0].numpy() for i in range(len(rows))])


def evaluate_sim(profile: Profile, run: Path, results: dict[str, TrainResult], device=None) -> pd.DataFrame:
    """Per-image Dice/HD95 of every model on ``Real test`` and ``Syn_test (surrogate chain)``; column ``test_set``.

    Also the constant mean-mask baseline (:func:`xrlib.studies.sim.fairness.mean_mask_baseline` of the Real train
    split's masks, model :data:`~xrlib.studies.sim.fairness.BASELINE`) on the same images."""
    from xrlib.studies.sim.fairness import BASELINE, mean_mask_baseline

    run = Path(run)
    th = acquisition_threat(profile, run)
    syn = TestImages(th.images[1.0], th.test.masks, th.test.rows)  # scale 1: the surrogate's own variability
    sets = {"Real test": real_test_images(run), "Syn_test (surrogate chain)": syn}
    constant, _ = mean_mask_baseline(real_train_masks(run))
    frames = []
    for label, t in sets.items():
        p = np.repeat(constant[None].astype(np.float32), len(t.masks), axis=0)
        df = evaluate_predictions(BASELINE, p, t.masks, t.rows, pixel_mm(profile), groups=alpha_group)
        df.insert(1, "test_set", label)
        frames.append(df)
    for name, res in results.items():
        model = load_best(res, device)
        for label, t in sets.items():
            p, _ = predict(model, (t.images, t.masks), 16, device)
            df = evaluate_predictions(name, p, t.masks, t.rows, pixel_mm(profile), groups=alpha_group)
            df.insert(1, "test_set", label)
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


def table4(per_image: pd.DataFrame, test_set: str = "Real test", seed: int = 0) -> pd.DataFrame:
    """Table 4 analog: per row and DR level, Dice and HD95 (mm) with subject-clustered 95 % CIs on ``test_set``,
    and paper 001's Dice (360 px) beside them.

    With the mean-mask baseline among the models (:func:`evaluate_sim`) it is the last row (``row`` =
    :data:`~xrlib.studies.sim.fairness.BASELINE`, DR ``—``), and every row gets ``learned`` (its Dice exceeds the
    baseline's by :data:`~xrlib.studies.sim.fairness.LEARNED_MARGIN`) and ``rank`` (among the learned rows only)."""
    from xrlib.studies.sim.fairness import BASELINE, flag_learned

    df = per_image[per_image["test_set"] == test_set]
    d = bootstrap_by_group(df, "dice", by=["model"], seed=seed).set_index("model")
    h = bootstrap_by_group(df, "hd95_mm", by=["model"], seed=seed).set_index("model")
    rows = []
    for m in d.index:
        row, level = (BASELINE, "—") if m == BASELINE else parse_model(m)
        paper = PAPER_TABLE4_DICE_360.get((row, level), (np.nan, np.nan))
        rows.append({"row": row, "DR": level, "dice": d.at[m, "mean"], "dice_lo": d.at[m, "lo"], "dice_hi": d.at[m, "hi"],
                     "hd95_mm": h.at[m, "mean"], "hd95_lo": h.at[m, "lo"], "hd95_hi": h.at[m, "hi"],
                     "subjects": int(d.at[m, "n_clusters"]), "paper_dice_360": paper[0], "paper_sd_360": paper[1]})
    out = pd.DataFrame(rows)
    if BASELINE not in d.index:
        return out
    base = float(d.at[BASELINE, "mean"])
    models = flag_learned(out[out["row"] != BASELINE], base)
    last = out[out["row"] == BASELINE].assign(learned=pd.NA, rank=pd.array([pd.NA], dtype="Int64"))
    return pd.concat([models, last], ignore_index=True)
