"""What notebook 08 shows: example images, the surrogate's room effects, rung-to-surrogate distances, learning
curves and step counts, the acquisition threat over every model (and which parameters clamp), the headline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.attacks.base import score_threat
from xrlib.core.atomic import write_text_atomic
from xrlib.core.profiles import Profile
from xrlib.data.shards import ShardDataset, read_manifest
from xrlib.eval.robustness import write_robustness
from xrlib.studies.rotation.groups import alpha_group
from xrlib.studies.rotation.study import pixel_mm
from xrlib.studies.sim.settings import sim_settings
from xrlib.studies.sim.sources import SIMULATORS, acquisition_threat, domain_dir
from xrlib.training import TrainResult, load_best

__all__ = ["HEADLINE", "clamping_table", "cyclegan_examples", "distance_table", "dr_samples", "effects_gallery",
           "headline_markdown", "ladder_example", "run_acquisition", "training_table", "write_headline"]

HEADLINE = Path("sim") / "headline.md"


def _first_train_item(run: Path, domain: str):
    ddir = domain_dir(run, domain)
    man = read_manifest(ddir)
    rows = man[(man["pool"] == "surrogate") & (man["split"] == "train")].iloc[:1]
    x, y = ShardDataset(rows, root=ddir)[0]
    return x, y, rows.iloc[0]


def dr_samples(run: Path, domain: str = "realistic", seed: int = 0):
    """One training image of ``domain``, its mask, and DR samples: two ``regular`` and one per strong effect."""
    from xrlib.training.randomization import STRONG_EFFECTS, randomize

    x, y, _ = _first_train_item(Path(run), domain)
    g = torch.Generator().manual_seed(seed)
    out = [(*(t[0].numpy() for t in randomize(x, y, "regular", g)[:2]), "regular") for _ in range(2)]
    for name in STRONG_EFFECTS:
        xi, yi, _ = randomize(x, y, "strong", g, effects=[name])
        out.append((xi[0].numpy(), yi[0].numpy(), f"regular + {name}"))
    return x[0].numpy(), y[0].numpy(), out


def ladder_example(run: Path) -> tuple[dict[str, np.ndarray], np.ndarray, pd.Series]:
    """The same subject and pose under the three simulators and the Real surrogate (preprocessed), its mask and row."""
    images = {}
    for d in (*SIMULATORS, "real"):
        x, y, row = _first_train_item(Path(run), d)
        images["Real surrogate" if d == "real" else d] = x[0].numpy()
    return images, y[0].numpy(), row


def effects_gallery(profile: Profile, run: Path, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """``(image, mask, label)``: the realistic rung's first training image as a −log image (3 × its grey level, an
    assumption of scale), displayed with the default post-processing without and with each room effect on its own
    (:class:`xrlib.drr.surrogate.SurrogateEffects` defaults, one seeded draw), then all of them together."""
    from xrlib.drr.geometry import Geometry
    from xrlib.drr.physics import postprocess
    from xrlib.drr.surrogate import EFFECTS, SurrogateEffects
    from xrlib.data.recipes import profile_effects

    x, y, _ = _first_train_item(Path(run), "realistic")
    img, mask = 3.0 * x[0].numpy().astype(np.float64), y[0].numpy()
    field = np.ones(img.shape, bool)
    geom = Geometry.from_render(profile.render)
    pitch = geom.pitch * profile.render.detector / profile.image_size
    show = lambda z: postprocess(z, field, pitch_mm=pitch)  # noqa: E731
    base = profile_effects(profile)
    out = [(show(img), mask, "no effect")]
    for names, label in [((e,), e) for e in EFFECTS if base.on(e)] + [(base.enabled, "all effects")]:
        fx = SurrogateEffects(**{**base.__dict__, "enabled": tuple(names)})
        im, _ = fx.apply(img, field, mask, pitch, geom.sdd, show, np.random.default_rng(seed))
        out.append((im, mask, label))
    return out


def distance_table(run: Path, split: str = "train", limit: int | None = 64) -> pd.DataFrame:
    """Each simulator's distance to the Real surrogate on matched subjects and poses of ``split`` (at most ``limit``
    pairs; :func:`xrlib.studies.sim.distances.rung_distances`)."""
    from xrlib.studies.sim.distances import matched_images, rung_distances

    return rung_distances(matched_images(Path(run), ("real", *SIMULATORS), split, limit))


def training_table(profile: Profile, results: dict[str, TrainResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Learning curves (validation Dice vs step) and one row per model: training images, epochs, steps run, best
    step, the last learning rate, the change of validation Dice over the last quarter of the learning-rate time and
    whether it plateaued (:func:`xrlib.studies.sim.fairness.plateaued`, tolerance
    :data:`~xrlib.studies.sim.fairness.PLATEAU_TOL`)."""
    from xrlib.studies.sim.fairness import PLATEAU_TOL, learning_curves, plateau_change

    s = sim_settings(profile)
    curves = learning_curves(results, s.batch_size)
    rows = []
    for name, g in curves.groupby("model", sort=False):
        res = results[name]
        per_epoch = int(np.ceil(res.train_images / s.batch_size))
        change = plateau_change(g["lr_time"], g["val_dice"])
        rows.append({"model": name, "training images": int(res.train_images), "epochs": int(res.epochs_run),
                     "steps": int(g["step"].max()), "best step": int(res.best_epoch) * per_epoch,
                     "best val Dice": float(res.best_val_dice),
                     "last lr": float(res.history["lr"].iloc[-1]) if "lr" in res.history else float("nan"),
                     "last-quarter change": change,
                     "plateaued": bool(np.isfinite(change) and abs(change) < PLATEAU_TOL)})
    return curves, pd.DataFrame(rows)


def clamping_table(profile: Profile) -> pd.DataFrame:
    """Per budget of ``sim.acquisition.budgets``, the parameters that clamp at a physical bound and the fraction of
    images that do (:func:`xrlib.drr.acquisition.clamped_parameters`; exact, from the ranges)."""
    from xrlib.drr.acquisition import clamped_parameters

    rows = clamped_parameters(sim_settings(profile).acquisition_budgets)
    return pd.DataFrame(rows, columns=["budget", "parameter", "side", "bound", "unit", "fraction"])


def cyclegan_examples(run: Path, n: int = 3) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """``(image, mask, label)`` of the first ``n`` train images of every CycleGAN-translated domain, before and after."""
    from xrlib.studies.sim.cyclegan import translated_dir

    out = []
    root = Path(run) / "sim" / "translated"
    for tdir in sorted(p for p in root.glob("*") if (p / "build.json").is_file()) if root.is_dir() else []:
        rows = read_manifest(tdir)
        rows = rows[rows["split"] == "train"].iloc[:n]
        before, after = ShardDataset(rows, root=domain_dir(run, tdir.name)), ShardDataset(rows, root=translated_dir(run, tdir.name))
        for i in range(len(rows)):
            out.append((before[i][0][0].numpy(), before[i][1][0].numpy(), f"{tdir.name} · {rows.iloc[i].subject}"))
            out.append((after[i][0][0].numpy(), after[i][1][0].numpy(), "→ CycleGAN (Real-like)"))
    return out


def run_acquisition(profile: Profile, run: Path, sim_results: dict[str, TrainResult], device=None) -> pd.DataFrame:
    """The acquisition threat against the rotation study's models (when trained) and ``sim_results``; writes
    ``<run>/robustness/acquisition.csv`` (the results contract) and returns its rows."""
    from xrlib.core.errors import InputError
    from xrlib.studies.rotation import study

    run = Path(run)
    th = acquisition_threat(profile, run)
    victims = {}
    try:
        victims.update({n: load_best(r, device) for n, r in study.study_models(profile, run).items()})
    except InputError:
        pass  # the rotation study's models are not trained in this run: the chapter's models only
    victims.update({n: load_best(r, device) for n, r in sim_results.items()})
    df = score_threat(th, victims, th.test, pixel_mm(profile), groups=alpha_group, device=device)
    write_robustness(df, run, "acquisition")
    return df


def headline_markdown(profile: Profile, table: pd.DataFrame, acq: pd.DataFrame, n_real: int, n_syn: int,
                      steps: pd.DataFrame | None = None) -> str:
    """Caption and table of what this build found: Sim2Real vs Real2Real Dice against the mean-mask baseline (rows
    that do not beat it are "not learned" and not ranked), the step budget, and Dice under acquisition shift."""
    s = sim_settings(profile)
    real = table[table["row"] == "Real"]
    has_flag = "learned" in table
    rows = []
    for r in table.itertuples():
        paper = "—" if not np.isfinite(r.paper_dice_360) else f"{r.paper_dice_360:.3f}"
        if not has_flag:
            verdict = ""
        elif r.DR == "—":
            verdict = "baseline"
        else:
            verdict = f"rank {int(r.rank)}" if bool(r.learned) else "not learned"
        rows.append(f"| {r.row} | {r.DR} | {r.dice:.3f} [{r.dice_lo:.3f}, {r.dice_hi:.3f}] | {r.hd95_mm:.1f} | "
                    f"{paper} | {verdict} |")
    curve = acq.groupby(["model", "budget"], sort=False)["dice"].mean().unstack()
    worst = curve.columns.max()
    drops = ", ".join(f"{m}: {curve.at[m, 0.0]:.3f} → {curve.at[m, worst]:.3f}" for m in curve.index)
    ranked = table[table["learned"].astype("boolean").fillna(False)] if has_flag else table
    budget = (f"one budget of {s.steps} optimisation steps for every row (cosine learning rate)" if s.steps is not None
              else f"{s.epochs} epochs at most")
    if steps is not None and len(steps):
        still = steps.loc[~steps["plateaued"], "model"].tolist()
        budget += (" (validation Dice plateaued for every row)" if not still
                   else f" (still changing over the last quarter of the learning-rate time: {', '.join(still)})")
    lines = [
        f"**How realistic must the simulation be? — profile {profile.name}.** Trained on the surrogate pool's "
        f"subjects and poses rendered with each simulator (Sim2Real) or with the Real surrogate (Real2Real: per-image "
        f"acquisition variability and room effects no simulator models), {budget}; tested on {n_real} Real-surrogate "
        "test images (rendered, not real radiographs; virtual subjects of one CT). Dice with subject-clustered "
        "95 % CIs (few subjects: wide), paper 001's hip Dice (360 px) for the trend; a row whose Dice does not "
        "exceed the constant mean-mask baseline's is not learned and not ranked.",
        "",
        "| row | DR | Dice [95 % CI] | HD95 (mm) | paper 001 Dice | verdict |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if len(ranked):
        best = ranked.sort_values("dice", ascending=False).iloc[0]
        lines.append(f"Best learned row here: {best['row']} ({best['DR']} DR), Dice {best['dice']:.3f}"
                     + (f"; Real2Real {real['dice'].iloc[0]:.3f}." if len(real) else "."))
    else:
        lines.append("No row beats the mean-mask baseline: nothing is ranked.")
    lines.append(f"Acquisition shift ({n_syn} Syn_test images, realistic chain, scale 0 → {worst:g}): mean Dice {drops}.")
    return "\n".join(lines) + "\n"


def write_headline(run: Path, text: str) -> Path:
    path = Path(run) / HEADLINE
    write_text_atomic(path, text)
    return path
