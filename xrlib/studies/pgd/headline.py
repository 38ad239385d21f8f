"""Chapter 09's headline (``<run>/pgd/headline.md``): worst-case Dice under attack, masking checks, OOD AUROC,
shape variability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.core.atomic import write_text_atomic
from xrlib.core.profiles import Profile
from xrlib.eval.evidence import MIN_SUBJECTS
from xrlib.studies.pgd.settings import PGDSettings

__all__ = ["HEADLINE", "headline_markdown", "ood_text", "shape_text", "write_headline"]

#: Where the chapter writes its section, relative to the run folder.
HEADLINE = Path("pgd") / "headline.md"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(v).replace("|", "\\|") for v in r) + " |" for r in rows])


def shape_text(s: PGDSettings, shape_rows: pd.DataFrame | None) -> str:
    """The shape-variability study in one sentence: mean Dice at the largest ε per model and amplitude."""
    if s.shape is None or shape_rows is None:
        return "Shape variability vs robustness (paper 002's P3/P5/P10): not run in this profile (paper and smoke only)."
    eps = max(s.shape.budgets)
    at = shape_rows[np.isclose(shape_rows["budget"], eps)].groupby(["model", "level"], sort=False)["dice"].mean()
    clean = shape_rows[shape_rows["budget"] == 0].groupby(["model", "level"], sort=False)["dice"].mean()
    parts = [f"{model}: " + ", ".join(f"{lv:g}× → {at[(model, lv)]:.3f} (clean {clean[(model, lv)]:.3f})"
                                      for lv in sorted(at[model].index)) for model in dict.fromkeys(at.index.get_level_values(0))]
    return (f"Shape variability vs robustness (deformation amplitude × the cohort's bands, image count fixed, "
            f"{s.shape.epochs}-epoch trainings): mean Dice under {s.steps}-step L∞ PGD at ε = {eps:g} — " + "; ".join(parts) + ".")


def _fmt_auc(r) -> str:
    lo, hi = r.get("AUROC lo", np.nan), r.get("AUROC hi", np.nan)
    return f"{r['AUROC']:.2f} " + (f"(no interval: fewer than {MIN_SUBJECTS} in-distribution subjects)" if np.isnan(lo) or np.isnan(hi)
                                   else f"[{lo:.2f}, {hi:.2f}]")


def ood_text(aurocs: pd.DataFrame) -> str:
    """The OOD attack per victim, from :func:`xrlib.studies.pgd.ood.auroc_table`: the clean OOD AUROC, the strongest
    setting of attack (c) (largest ε and step count) with Dice vs target and reconstruction error before → after,
    whether it reached its target (criterion :func:`xrlib.studies.pgd.ood.reached`) and its AUROC, and the smallest
    ε of the sweep at which (c) reached its target."""
    from xrlib.studies.pgd import ood

    t = aurocs.assign(victim=aurocs["victim"] if "victim" in aurocs.columns else "the victim")
    parts = []
    for victim, v in t.groupby("victim", sort=False):
        clean = v[v["condition"] == ood.CONDITIONS[0]]
        text = f"{victim}: clean OOD AUROC {_fmt_auc(clean.iloc[0])}" if len(clean) else f"{victim}:"
        c = v[v["condition"] == ood.CONDITIONS[2]]
        if len(c):
            r = c.sort_values(["ε", "steps"]).iloc[-1]
            n, k = int(r["OOD images"]), int(round(r["reached target"] * r["OOD images"]))
            ok = [float(e) for e, g in c.groupby("ε") if g["target reached"].any()]
            text += (f"; attack (c) at ε = {r['ε']:g}, {int(r['steps'])} steps: Dice vs target "
                     f"{r['Dice vs target before']:.2f} → {r['Dice vs target after']:.2f}, reconstruction error "
                     f"{r['recon. error before']:.3f} → {r['recon. error after']:.3f} (in-distribution "
                     f"{r['recon. error in-dist.']:.3f}), {k} of {n} images reached their target — "
                     + ("**the attack reached its target**" if r["target reached"] else
                        "**the attack did not reach its target** (the detector was not tested against a working attack)")
                     + f"; AUROC {_fmt_auc(r)}; (c) reached its target "
                     + (f"from ε = {min(ok):g} of the sweep" if ok else "at no ε of the sweep"))
        parts.append(text)
    return ("OOD attack (paper 002 §3.2: one OOD image per attacked test sample, made to output that sample's "
            "clavicle mask, (c) also keeping the reconstruction error low). Criterion: a setting reached its target "
            f"when at least {ood.REACHED_SHARE:.0%} of its images produce a mask with Dice ≥ {ood.REACHED:g} against "
            "the target. Reconstruction-error detector, AUROC (0.5 = chance) with a 95 % cluster-bootstrap interval "
            "over in-distribution subjects and OOD source pictures. " + ". ".join(parts) + ".")


def headline_markdown(cfg: Profile, s: PGDSettings, worst: pd.DataFrame, checks: pd.DataFrame, aurocs: pd.DataFrame,
                      n_subjects: int, n_alphas: int, shape_rows: pd.DataFrame | None = None) -> str:
    """Min Dice per model and ε (with the model's diagnostic flags), the diagnostics passed, the OOD AUROC per
    condition, and the shape-variability study (``shape_rows``: its rows, ``None`` where the profile does not run it).
    ``checks``: :func:`xrlib.studies.pgd.study.run_diagnostics`'s table (``model``, ``budget``, ``check``, ``outcome``)."""
    eps = sorted(worst["budget"].unique())
    rows = []
    for model in dict.fromkeys(worst["model"]):
        m = worst[worst["model"] == model].set_index("budget")["min Dice"]
        flag = worst.loc[worst["model"] == model, "flag"].iloc[0] if "flag" in worst.columns else ""
        rows.append([model] + [f"{m.get(e, np.nan):.3f}" for e in eps] + [flag or "—"])
    passed = checks["outcome"] == "pass"
    where = ", ".join(f"{b:g}" for b in sorted(checks["budget"].dropna().unique())) if "budget" in checks.columns else "?"
    failed = checks[~passed]
    check_text = (f"Attack diagnostics at ε = {where} (convergence, 2× steps + restarts, single-step, monotone in ε, "
                  f"transfer, gradient-free; (g) the profile's ε grid on validation images): {int(passed.sum())} of {len(checks)} passed"
                  + ("." if failed.empty else "; failed: " + "; ".join(f"{r.model} — {r.check}: {r.outcome}"
                                                                       for r in failed.itertuples()) + "."))
    per = s.angles_per_subject
    alphas = (f"{n_alphas} angle(s)" if per is None or per >= n_alphas
              else f"{per} of {n_alphas} angles each, in rotation ({n_subjects * per} images)")
    lines = [
        f"**Gradient attacks on the network input — profile {cfg.name}: mean over images of the per-image minimum "
        f"Dice over the L∞ ensemble (PGD and SegPGD, {s.steps} steps of ε·{s.step_fraction:g}; APGD, {s.apgd_steps} "
        f"iterations, on soft Dice, balanced and masked CE; members run: {'all' if s.members is None else ', '.join(s.members)}; "
        f"every iterate; the diagnostic runs) on {n_subjects} "
        f"synthetic test subject(s) × {alphas}; test subjects are virtual subjects of one CT.** ε in [0, 1] image units; "
        f"ε = 0 is the clean image. Defenses: fine-tuned from U-Net(Real+Syn_all) for {s.defense.epochs} epoch(s) "
        f"with {s.defense.steps}-step PGD (ε = {s.defense.eps:g})." if s.defense.warm_start else
        f"**Gradient attacks on the network input — profile {cfg.name}: mean of the per-image minimum Dice over the "
        f"attack ensemble on {n_subjects} test subject(s) × {alphas}.** Defenses trained "
        f"{s.defense.epochs} epochs with {s.defense.steps}-step PGD (ε = {s.defense.eps:g}).",
        "",
        _table(["model"] + [f"ε = {e:g}" for e in eps] + ["flag"], rows),
        "",
        check_text,
        "",
        ood_text(aurocs),
        "",
        shape_text(s, shape_rows),
        "",
    ]
    return "\n".join(lines)


def write_headline(cfg: Profile, s: PGDSettings, run: Path, **tables) -> Path:
    """Write :func:`headline_markdown` to ``<run>/pgd/headline.md``."""
    path = Path(run) / HEADLINE
    write_text_atomic(path, headline_markdown(cfg, s, **tables))
    return path
