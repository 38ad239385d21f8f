"""The card's columns: one registry entry per threat at the card's fixed budget.

A :class:`Column` has one or more :class:`Part` s (PGD/SegPGD: two attacks, the cell is the minimum
over them). A part names the chapter's results table (``<run>/robustness/<threat>.csv``), how to
``select`` the card's rows from it (budget, arm, method) and how to ``compute`` the same rows for
victims that table lacks, with that chapter's threat code and settings; the column's ``value``
turns contract rows into one number per image, averaged over images with a subject-clustered CI.
A column whose chapter is not in this build has no parts and a ``missing`` reason.

A *conditional* column (``scored`` says on which images) gives ``nan`` for the images outside its
condition: the noise column's SAR is the paper's per-class SAR of the top class, the share of the
images whose clean prediction is good (Dice ≥ 0.8) that the noise pushes out of that band. Pooled
over all bands, a weak model whose clean predictions already sit in the lowest band — which noise
cannot lower — would score a perfect SAR of 0; conditioned, it has few or no scored images, and the
card says so instead of ranking it first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.attacks.base import TestImages, Threat, Threatened, score_threat
from xrlib.core.profiles import Profile
from xrlib.eval.curves import good_clean
from xrlib.eval.robustness import quality_band
from xrlib.studies.card.settings import CardSettings
from xrlib.studies.rotation import study
from xrlib.studies.rotation.groups import alpha_group

__all__ = ["COLUMNS", "Column", "CleanThreat", "Part"]

Compute = Callable[[Profile, Path, CardSettings, Mapping[str, object]], pd.DataFrame]


@dataclass(frozen=True)
class Part:
    """One results table behind a column: ``threat`` (its CSV name), ``select(rows, profile, s)`` (the
    card's rows of it) and ``compute(profile, run, s, victims)`` (contract rows for ``victims``)."""

    threat: str
    select: Callable[[pd.DataFrame, Profile, CardSettings], pd.DataFrame]
    compute: Compute
    chapter_csv: bool = True  # the chapter writes <run>/robustness/<threat>.csv (else: the card computes all)
    chapter: str = ""  # the chapter that writes that table (default: the column's)


@dataclass(frozen=True)
class Column:
    """A threat at a budget: ``key``, ``title``, owning ``chapter``, ``budget`` and ``statistic`` in words,
    ``value(rows)`` (one number per image), ``higher_better``, its ``parts`` and, for a chapter not in
    this build, ``missing``."""

    key: str
    title: str
    chapter: str
    budget: Callable[[CardSettings], str]
    statistic: str
    value: Callable[[pd.DataFrame], pd.Series] | None
    higher_better: bool
    parts: tuple[Part, ...] = ()
    missing: str = ""
    is_clean: bool = False
    scored: str = ""  # conditional statistic: the images it is computed on, in words ("" = every image)


class CleanThreat(Threat):
    """No threat: the test images as they are (budget 0 only) — the clean columns' scoring."""

    budget_unit = "none"
    clean_keys = ("subject", "alpha", "_i")

    def __init__(self, name: str):
        self.name = name

    def budgets(self) -> tuple[float, ...]:
        return (0.0,)

    def apply(self, model, test: TestImages, budget: float) -> Threatened:
        rows = test.rows.assign(_i=np.arange(len(test.rows)))
        return Threatened(test.images, test.masks, rows, np.ones(len(rows), bool))


def _score(threat: Threat, victims, test: TestImages, profile: Profile, budgets) -> pd.DataFrame:
    return score_threat(threat, dict(victims), test, study.pixel_mm(profile), budgets=budgets, groups=alpha_group)


def _at(df: pd.DataFrame, budget: float) -> pd.DataFrame:
    return df[np.isclose(df["budget"].to_numpy(float), budget)]


# -- clean ---------------------------------------------------------------------------------------

def _clean_syn(profile, run, s, victims):
    from xrlib.attacks.rotation import RotationThreat
    from xrlib.studies.rotation.study import syn_test_images

    return _score(RotationThreat((0.0,)), victims, syn_test_images(profile, run, [0.0]), profile, None)


def _clean_real(profile, run, s, victims):
    rows = study.test_sets(Path(run), profile.synthetic.cen_alphas)["Real_test"]
    test = TestImages.from_manifest(rows, study.datasets_dir(Path(run)))
    return _score(CleanThreat("clean-real"), victims, test, profile, None).drop(columns="_i", errors="ignore")


# -- rotation (chapter 06) -----------------------------------------------------------------------

def _moderate(df: pd.DataFrame, profile=None, s=None) -> pd.DataFrame:
    return df[df["alpha_group"].astype(str).str.startswith("Moderate")]


def _rotation(profile, run, s, victims):
    from xrlib.attacks.rotation import RotationThreat
    from xrlib.studies.rotation.study import syn_test_images

    alphas = [a for a in profile.synthetic.alphas if alpha_group(a).startswith("Moderate")]
    return _score(RotationThreat((0.0, *alphas)), victims, syn_test_images(profile, run, [0.0, *alphas]), profile, None)


# -- worst-case pose (chapter 12) ----------------------------------------------------------------

def _pose(profile, run, s, victims):
    from xrlib.studies.pose.study import pose_threat

    th, test = pose_threat(profile, run)
    return _score(th, victims, test, profile, [s.pose_budget])


# -- acquisition shift (chapter 08) -------------------------------------------------------------

#: The card's acquisition budget: the documented ranges of the varied surrogate (budget 1).
ACQUISITION_BUDGET = 1.0


def _acquisition(profile, run, s, victims):
    from xrlib.studies.sim.settings import sim_settings
    from xrlib.studies.sim.sources import acquisition_threat

    # chapter 08's own threat when its grid holds the card's budget: its renders are cached (the same draws
    # scaled per budget, so the budget-1 images are the ones a (0, 1) grid renders), not rendered again
    grid = tuple(float(b) for b in sim_settings(profile).acquisition_budgets)
    th = acquisition_threat(profile, run, budgets=None if ACQUISITION_BUDGET in grid else (0.0, ACQUISITION_BUDGET))
    return _score(th, victims, th.test, profile, [ACQUISITION_BUDGET])


# -- noise (chapter 10) --------------------------------------------------------------------------

def _noise_dose(profile, run, s) -> float:
    """The noise column's dose: the card's, or (``nan``) the lowest dose of chapter 10's validation grid."""
    if not np.isnan(s.noise_dose_mas):
        return s.noise_dose_mas
    from xrlib.studies.noise.grid import validation_grid

    return float(min(validation_grid(profile, Path(run)).doses))


def _noise_rows(df, profile, s):
    d = df[df["arm"] == "rerendered"]
    if np.isnan(s.noise_dose_mas):  # the chapter's lowest dose (its grid's)
        pos = d.loc[d["budget"].astype(float) > 0, "budget"]
        return _at(d, float(pos.min())) if len(pos) else d.iloc[:0]
    return _at(d, s.noise_dose_mas)


def _noise(profile, run, s, victims):
    from xrlib.studies.noise.sources import noise_threat

    dose = _noise_dose(profile, run, s)
    th = noise_threat(profile, run, arms=("rerendered",), doses=[dose])
    return _score(th, victims, th.test, profile, [dose])


def _left_top_band(df: pd.DataFrame) -> pd.Series:
    """Per image whose clean prediction is in the top quality band (Dice ≥ 0.8): 1 where the threatened
    prediction left it, else 0; ``nan`` for every other image (outside the condition, not scored)."""
    clean_band = quality_band(df["dice_clean"])
    left = (quality_band(df["dice"]) != clean_band).astype(float)
    return pd.Series(np.where(clean_band == 0, left, np.nan), index=df.index)


# -- PGD / SegPGD (chapter 09) -------------------------------------------------------------------

def _input_attack(kind: str):
    def compute(profile, run, s, victims):
        from xrlib.studies.robustness import THREATS

        th, test = THREATS[kind](profile, run, grid=(0.0, s.pgd_eps))  # the chapter's ensemble (pgd) or SegPGD
        return _score(th, victims, test, profile, [s.pgd_eps])

    return compute


# -- learned deformation + bias field (chapter 11) -----------------------------------------------

def _deformation_rows(df, profile, s):
    d = _at(df, s.xi)
    return d[(d["method"] == "per-image") & (d["variant"] == "DV")]


def _deformation(profile, run, s, victims):
    from xrlib.attacks.deformation import DeformationThreat
    from xrlib.studies.learned.config import learned_settings
    from xrlib.studies.rotation.study import syn_test_images

    ls = learned_settings(profile)
    th = DeformationThreat(grid=(0.0, s.xi), method="per-image", fields=ls.variant("DV"), generator=ls.generator,
                           pixel_mm=ls.pixel_mm, seed=0)
    return _score(th, victims, syn_test_images(profile, run, ls.alphas), profile, [s.xi])


def _dice(df: pd.DataFrame) -> pd.Series:
    return df["dice"].astype(float)


def _success(df: pd.DataFrame) -> pd.Series:
    """``success`` per image whose clean prediction is good (Dice ≥ 0.8), ``nan`` (not scored) elsewhere: a
    model that is already wrong on the clean image cannot be attacked into being wrong."""
    return good_clean(df, "success")


#: The card's columns, in the order they are shown.
COLUMNS: tuple[Column, ...] = (
    Column("clean-syn", "clean (synthetic, α 0)", "05", lambda s: "α = 0°", "mean Dice", _dice, True,
           (Part("rotation", lambda d, p, s: _at(d, 0.0), _clean_syn, chapter="06"),), is_clean=True),
    Column("clean-real", "clean (Real surrogate)", "05", lambda s: "Real test split", "mean Dice", _dice, True,
           (Part("clean-real", lambda d, p, s: d, _clean_real, chapter_csv=False),), is_clean=True),
    Column("rotation", "rotation (Moderate α)", "06", lambda s: "α ∈ ±[12°, 20°]", "mean Dice", _dice, True,
           (Part("rotation", _moderate, _rotation),)),
    Column("pose", "worst-case pose", "12", lambda s: f"b = {s.pose_budget:g}", "mean Dice", _dice, True,
           (Part("pose", lambda d, p, s: _at(d, s.pose_budget), _pose),)),
    Column("acquisition", "acquisition shift", "08", lambda s: f"budget {ACQUISITION_BUDGET:g}", "mean Dice", _dice, True,
           (Part("acquisition", lambda d, p, s: _at(d, ACQUISITION_BUDGET), _acquisition),)),
    Column("noise", "quantum noise", "10", lambda s: "lowest grid dose" if np.isnan(s.noise_dose_mas) else f"{s.noise_dose_mas:g} mAs", "SAR of the good predictions",
           _left_top_band, False, (Part("noise", _noise_rows, _noise),),
           scored="images whose clean prediction has Dice ≥ 0.8"),
    Column("pgd", "PGD/SegPGD L∞", "09", lambda s: f"ε = {s.pgd_eps:g}", "mean of the per-image minimum Dice over the attack ensemble", _dice, True,
           (Part("pgd", lambda d, p, s: _at(d, s.pgd_eps), _input_attack("pgd")),
            Part("segpgd", lambda d, p, s: _at(d, s.pgd_eps), _input_attack("segpgd")))),
    Column("learned", "learned deformation + bias", "11", lambda s: f"ξ = {s.xi:g}", "success rate (per-image D+V)",
           _success, False, (Part("deformation", _deformation_rows, _deformation),),
           scored="images whose clean prediction has Dice ≥ 0.8"),
)
