"""Chapter 10's headline: SAR at the lowest doses, changed predictions, seed spread, adaptive training — written to ``<run>/noise/headline.md``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from xrlib.core.atomic import write_text_atomic
from xrlib.core.profiles import Profile
from xrlib.studies.noise.grid import DoseGrid, figure_doses
from xrlib.studies.noise.settings import AdaptiveSettings, NoiseSettings

HEADLINE = Path("noise") / "headline.md"


def grid_sentence(grid: DoseGrid, dose_tab: pd.DataFrame, s: NoiseSettings) -> str:
    """The dose grid in the reader's units: range, why it stops, quanta per input pixel and CNR at its ends."""
    hi, lo = dose_tab.iloc[0], dose_tab.iloc[-1]
    return (f"Doses: {len(grid.doses)} halvings of {s.reference_dose_mas:g} mAs from {grid.doses[0]:g} down to "
            f"{grid.doses[-1]:g} mAs, chosen on validation subjects; the grid stops because {grid.reason}. "
            f"Per network-input pixel that is {hi.flat_quanta:.3g} → {lo.flat_quanta:.3g} detected quanta in the open "
            f"field and {hi.clavicle_quanta:.3g} → {lo.clavicle_quanta:.3g} behind the clavicle; clavicle CNR at the "
            f"input {hi.cnr:.3g} → {lo.cnr:.3g}.")


def window_sentence(win: pd.DataFrame, doses) -> str:
    """Which hurts, noise or windowing: the window control's share of the lost Dice at ``doses``."""
    w = win[win["budget"].isin(list(doses))].dropna(subset=["window_share"])
    if w.empty:
        return ("Window control: no model lost more than 0.01 Dice at the figure doses, so noise and windowing "
                "cannot be told apart here.")
    share = float(w["window_share"].mean())
    verdict = ("windowing (a window stretched by outlier pixels) hurts more than the noise itself" if share > 0.5
               else "the noise itself hurts more than the windowing")
    return (f"Window control (the noisy image shown with the noise-free image's window) at "
            f"{', '.join(f'{d:g}' for d in doses)} mAs recovers {share:.0%} of the Dice lost to noise on average "
            f"(per model and dose {w['window_share'].min():.0%} to {w['window_share'].max():.0%}): {verdict}.")


def insertion_sentence(acc: pd.DataFrame, z: pd.DataFrame, tost: pd.DataFrame, margin: float) -> str:
    """Insertion against re-rendering: acceptance per dose, the Z-test without degenerate cells, the TOST."""
    per_dose = acc.groupby("dose", sort=False)["accepted"].all()
    counts = sorted(acc.loc[acc["method"].str.contains("counts"), "dose"].unique(), reverse=True)
    zz = z["z"].dropna().abs()
    testable = tost.dropna(subset=["p"])
    text = (f"Insertion accepted (all regions and the NPS within tolerance) at {int(per_dose.sum())} of "
            f"{len(per_dose)} attack doses; "
            + (f"inserted in the count domain at {', '.join(f'{d:g}' for d in counts)} mAs (too few quanta for "
               "Gaussian noise). " if counts else "Gaussian (NPS) insertion at every dose. ")
            + f"Z-test: {int((zz >= 1.96).sum())} of {len(zz)} non-degenerate CMR entries with |Z| ≥ 1.96 "
            f"({int(z['degenerate'].sum())} degenerate entries, both arms 0 or both 1, left out). ")
    if testable.empty:
        n = int(tost["n_subjects"].max()) if len(tost) else 0
        return text + f"Equivalence (TOST, ±{margin:g} Dice per subject): n/a ({n} subject(s))."
    return text + (f"Equivalence (TOST on per-subject mean Dice, ±{margin:g}): shown at {int(testable['equivalent'].sum())} "
                   f"of {len(testable)} model × dose cells ({int(testable['n_subjects'].max())} subjects).")


def headline_markdown(cfg: Profile, s: NoiseSettings, sar_df: pd.DataFrame, changed: pd.DataFrame,
                      z: pd.DataFrame, per_seed: pd.DataFrame | None, n_images: int,
                      adaptive: pd.DataFrame | None = None, rounds: pd.DataFrame | None = None,
                      a: AdaptiveSettings | None = None, *, grid: DoseGrid, dose_tab: pd.DataFrame,
                      window: pd.DataFrame, acceptance: pd.DataFrame, tost: pd.DataFrame,
                      seed_epochs: int | None = None,
                      cohort: str = "virtual subjects of one CT (not independent patients)") -> str:
    """Caption and table: per model and figure dose, SAR of the best band (re-rendered, inserted, window control)
    and the changed share; the dose axis; the window control; the insertion's validation; the repeated
    trainings' spread; with ``adaptive`` (per model of :func:`adaptive_sar`), ``rounds`` and ``a``, adaptive
    training's SAR and clean Dice per round against the control."""
    best = sar_df["band"].iloc[0]
    figs = figure_doses(grid)
    axis = dose_tab.set_index("dose_mas")
    rows = []
    for (model, dose), g in sar_df[sar_df["band"] == best].groupby(["model", "budget"], sort=False):
        if not any(abs(dose - f) <= 1e-12 * f for f in figs):
            continue
        by_arm = dict(zip(g["arm"], g["sar"]))
        ch = changed[(changed["model"] == model) & (changed["budget"] == dose) & (changed["arm"] == "rerendered")]["changed"]
        ax = axis.loc[dose] if dose in axis.index else None
        rows.append(f"| {model} | {dose:.3g} | {ax.flat_quanta if ax is not None else float('nan'):.3g} | "
                    f"{ax.cnr if ax is not None else float('nan'):.2f} | {by_arm.get('rerendered', float('nan')):.2f} | "
                    f"{by_arm.get('inserted', float('nan')):.2f} | {by_arm.get('clean-window', float('nan')):.2f} | "
                    f"{ch.mean():.2f} |")
    lines = [
        f"**Quantum noise as a threat — profile {cfg.name}.** {n_images} Syn_test images (angles "
        f"{', '.join(f'{a:g}°' for a in s.alphas)}) re-projected with the realistic chain, {s.realisations} "
        f"realisation(s) per image, dose and arm. SAR = share of images whose clean prediction is in band {best} and "
        f"whose noisy prediction left it; changed = Dice vs the clean prediction < 0.7. Test subjects: {cohort}.",
        "",
        grid_sentence(grid, dose_tab, s),
        "",
        "| model | dose (mAs) | open-field quanta / input px | clavicle CNR | SAR re-rendered | SAR inserted | "
        "SAR window control | changed (re-rendered) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        window_sentence(window, figs),
        "",
        insertion_sentence(acceptance, z, tost, s.tost_margin_dice),
    ]
    if per_seed is not None and len(per_seed):
        c = per_seed.drop_duplicates("model")["clean_dice"]
        sched = f" at the study model's schedule ({seed_epochs} epochs max)" if seed_epochs else ""
        lines.append(f"Repeated trainings of U-Net(Real+Syn_all): {len(c)} seed(s){sched}; clean Dice "
                     f"{c.min():.3f}–{c.max():.3f} (spread {c.max() - c.min():.3f}); SAR (band {best}) per seed at "
                     + "; ".join(f"{d:.3g} mAs: " + ", ".join(f"{v:.2f}" for v in g["sar"])
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
            f"{', '.join(f'{d:.3g}' for d in sorted(per['budget'].unique(), reverse=True))} mAs): added "
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
