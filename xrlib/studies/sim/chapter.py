"""What notebook 08 shows: example images, the acquisition threat over every model, the headline."""

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

__all__ = ["HEADLINE", "cyclegan_examples", "dr_samples", "headline_markdown", "ladder_example", "run_acquisition", "write_headline"]

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


def headline_markdown(profile: Profile, table: pd.DataFrame, acq: pd.DataFrame, n_real: int, n_syn: int) -> str:
    """Caption and table of what this build found: Sim2Real vs Real2Real Dice, and Dice under acquisition shift."""
    s = sim_settings(profile)
    real = table[table["row"] == "Real"]
    rows = []
    for r in table.itertuples():
        rows.append(f"| {r.row} | {r.DR} | {r.dice:.3f} [{r.dice_lo:.3f}, {r.dice_hi:.3f}] | {r.hd95_mm:.1f} | "
                    f"{r.paper_dice_360:.3f} |")
    curve = acq.groupby(["model", "budget"], sort=False)["dice"].mean().unstack()
    worst = curve.columns.max()
    drops = ", ".join(f"{m}: {curve.at[m, 0.0]:.3f} → {curve.at[m, worst]:.3f}" for m in curve.index)
    best = table.sort_values("dice", ascending=False).iloc[0]
    lines = [
        f"**How realistic must the simulation be? — profile {profile.name}.** Trained on the surrogate pool's "
        f"subjects and poses rendered with each simulator (Sim2Real) or with the varied Real surrogate (Real2Real), "
        f"{s.epochs} epochs at most; tested on {n_real} Real-surrogate test images (a rendered surrogate with "
        "per-image acquisition variability, not real radiographs; virtual subjects of one CT). Dice with "
        "subject-clustered 95 % CIs (few subjects: wide), paper 001's hip Dice (360 px) for the trend.",
        "",
        "| row | DR | Dice [95 % CI] | HD95 (mm) | paper 001 Dice |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Best row here: {best['row']} ({best['DR']} DR), Dice {best['dice']:.3f}"
        + (f"; Real2Real {real['dice'].iloc[0]:.3f}." if len(real) else "."),
        f"Acquisition shift ({n_syn} Syn_test images, realistic chain, scale 0 → {worst:g}): mean Dice {drops}.",
    ]
    return "\n".join(lines) + "\n"


def write_headline(run: Path, text: str) -> Path:
    path = Path(run) / HEADLINE
    write_text_atomic(path, text)
    return path
