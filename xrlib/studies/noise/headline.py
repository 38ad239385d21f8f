"""Chapter 10's headline: SAR at the lowest doses, changed predictions, seed spread, adaptive training — written to ``<run>/noise/headline.md``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from xrlib.core.atomic import write_text_atomic
from xrlib.core.profiles import Profile
from xrlib.studies.noise.settings import AdaptiveSettings, NoiseSettings

HEADLINE = Path("noise") / "headline.md"


def headline_markdown(cfg: Profile, s: NoiseSettings, sar_df: pd.DataFrame, changed: pd.DataFrame,
                      z: pd.DataFrame, per_seed: pd.DataFrame | None, n_images: int,
                      adaptive: pd.DataFrame | None = None, rounds: pd.DataFrame | None = None,
                      a: AdaptiveSettings | None = None) -> str:
    """Caption and table: per model and dose, SAR of the best band (re-rendered and inserted) and the changed
    share; the repeated trainings' spread; with ``adaptive`` (per model of :func:`adaptive_sar`), ``rounds``
    and ``a``, adaptive training's SAR and clean Dice per round against the control."""
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
        "left it; changed = Dice vs the clean prediction < 0.7. Quantum noise is drawn before the detector blur "
        "(correlated), as in the datasets' realistic chain.",
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
    if adaptive is not None and rounds is not None and a is not None and len(adaptive):
        lines.append(adaptive_sentence(adaptive, rounds, a, best))
    return "\n".join(lines) + "\n"


def adaptive_sentence(per: pd.DataFrame, rounds: pd.DataFrame, a: AdaptiveSettings, band: str) -> str:
    """One paragraph: samples added per round, SAR of ``band`` and clean Dice per round, both chains."""
    def series(chain: str, dose: float) -> str:
        d = per[((per["chain"] == chain) | (per["chain"] == "base")) & (per["band"] == band) & (per["budget"] == dose)]
        return " → ".join(f"{v:.2f}" for v in d.sort_values("iteration")["sar"])

    def clean(chain: str) -> str:
        d = per[(per["chain"] == chain) | (per["chain"] == "base")].drop_duplicates("model").sort_values("iteration")
        return " → ".join(f"{v:.3f}" for v in d["clean_dice"])

    ad = rounds[rounds["chain"] == "adaptive"].sort_values("iteration")
    doses = sorted(per["budget"].unique(), reverse=True)
    text = (f"Adaptive training ({a.iterations} round(s) of {a.epochs} epoch(s), lr {a.lr:g}, warm-started from "
            f"U-Net(Real+Syn_all); training set attacked with re-rendered noise at "
            f"{', '.join(f'{d:g}' for d in a.doses_mas)} mAs): added "
            f"{', '.join(f'{int(n)} of {int(p)}' for n, p in zip(ad['added_new'], ad['pool']))} noisy samples per round. "
            f"SAR (band {band}) on the test images, round 0 → {a.iterations}: "
            + "; ".join(f"{d:g} mAs: {series('adaptive', d)}" for d in doses)
            + f"; clean Dice {clean('adaptive')}.")
    if (per["chain"] == "augment").any():
        text += (" Noise augmentation with the same number of random noisy samples: SAR "
                 + "; ".join(f"{d:g} mAs: {series('augment', d)}" for d in doses)
                 + f"; clean Dice {clean('augment')}.")
    return text


def write_headline(run: Path, text: str) -> Path:
    path = Path(run) / HEADLINE
    write_text_atomic(path, text)
    return path
