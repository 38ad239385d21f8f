"""Chapter 10's headline: SAR at the lowest doses, changed predictions, seed spread — written to ``<run>/noise/headline.md``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from xrlib.core.atomic import write_text_atomic
from xrlib.core.profiles import Profile
from xrlib.studies.noise.settings import NoiseSettings

HEADLINE = Path("noise") / "headline.md"


def headline_markdown(cfg: Profile, s: NoiseSettings, sar_df: pd.DataFrame, changed: pd.DataFrame,
                      z: pd.DataFrame, per_seed: pd.DataFrame | None, n_images: int) -> str:
    """Caption and table: per model and dose, SAR of the best band (re-rendered and inserted) and the changed share."""
    best = sar_df["band"].iloc[0]
    rows = []
    for (model, dose), g in sar_df[sar_df["band"] == best].groupby(["model", "budget"], sort=False):
        if dose not in s.figure_doses_mas:
            continue
        by_arm = dict(zip(g["arm"], g["sar"]))
        ch = changed[(changed["model"] == model) & (changed["budget"] == dose) & (changed["arm"] == "rerendered")]["changed"]
        rows.append(f"| {model} | {dose:g} | {by_arm.get('rerendered', float('nan')):.2f} | "
                    f"{by_arm.get('inserted', float('nan')):.2f} | {ch.mean():.2f} |")
    zz = z["z"].dropna().abs()
    lines = [
        f"**Quantum noise as a threat — profile {cfg.name}.** {n_images} Syn_test images (angles "
        f"{', '.join(f'{a:g}°' for a in s.alphas)}) re-projected with the realistic chain; doses "
        f"{', '.join(f'{d:g}' for d in s.doses_mas)} mAs (default 2 mAs), {s.realisations} realisation(s) per image, "
        f"dose and arm. SAR = share of images whose clean prediction is in band {best} and whose noisy prediction "
        "left it; changed = Dice vs the clean prediction < 0.7. Noise is drawn before the detector blur here; "
        "the datasets' chain still adds it after the blur.",
        "",
        "| model | dose (mAs) | SAR re-rendered | SAR inserted | changed (re-rendered) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Z-test inserted vs re-rendered: {int((zz >= 1.96).sum())} of {len(zz)} testable CMR entries with |Z| ≥ 1.96.",
    ]
    if per_seed is not None and len(per_seed):
        c = per_seed.drop_duplicates("model")["clean_dice"]
        lines.append(f"Repeated trainings of U-Net(Real+Syn_all): {len(c)} seed(s) at {s.seed_epochs} epochs; clean Dice "
                     f"{c.min():.3f}–{c.max():.3f} (spread {c.max() - c.min():.3f}); SAR (band {best}) per seed at "
                     + "; ".join(f"{d:g} mAs: " + ", ".join(f"{v:.2f}" for v in g["sar"])
                                 for d, g in per_seed.groupby("budget")) + ".")
    return "\n".join(lines) + "\n"


def write_headline(run: Path, text: str) -> Path:
    path = Path(run) / HEADLINE
    write_text_atomic(path, text)
    return path
