"""The ``noise:`` block of a profile (chapter 10) and its ``adaptive:`` sub-block, typed and checked."""

from __future__ import annotations

import math
from dataclasses import dataclass

from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile

__all__ = ["AdaptiveSettings", "GridSettings", "NoiseSettings", "adaptive_settings", "noise_settings"]


@dataclass(frozen=True)
class GridSettings:
    """The ``noise: grid:`` block: the dose grid, halvings of the reference dose chosen on validation subjects.

    Attributes:
        above: doublings above the reference dose (1: 4 mAs at a 2 mAs reference, the top of the clinical range).
        max_halvings: most halvings below the reference that are tried.
        floor_flat_quanta: the grid stops before a dose whose open-field quanta per network-input pixel
            fall below this (no meaningful image is left).
        subjects: validation subjects used (``None``: every validation subject with a CT).
        realisations: re-rendered realisations per validation image and dose.
    """

    above: int
    max_halvings: int
    floor_flat_quanta: float
    subjects: int | None
    realisations: int


@dataclass(frozen=True)
class NoiseSettings:
    """Chapter 10's sizes.

    Attributes:
        alphas: angles (deg) of the Syn_test images used (a subset of the synthetic grid).
        reference_dose_mas: the reference dose (mAs; the datasets' dose): the grid's halvings start
            here and the inserted arm's NPS is estimated here.
        grid: the dose grid's search (:class:`GridSettings`); the attack doses are the grid.
        realisations: noisy images per test image, dose and arm (re-rendered and inserted alike).
        nps_realisations: re-rendered realisations at the reference dose for the NPS (paper: 20).
        nps_patch_mm: NPS patch side at the detector (mm); 30 % overlap, trapezoidal blending.
        nps_min_px: fewest detector pixels per NPS patch side (the patch grows to this at coarse pitches).
        validation_realisations: realisations per image for the moment/NPS validation of the insertion.
        tost_margin_dice: equivalence margin of the TOST of inserted vs re-rendered mean Dice per subject.
        seeds: repeated trainings of U-Net(Real+Syn_all) with other seeds, at the study model's schedule.
        angles_per_subject: each Syn_test subject is scored at this many of ``alphas``, in rotation over the
            subjects (:func:`xrlib.data.pools.spread_angles`); ``None``: at every angle.
    """

    alphas: tuple[float, ...]
    reference_dose_mas: float
    grid: GridSettings
    realisations: int
    nps_realisations: int
    nps_patch_mm: float
    nps_min_px: int
    validation_realisations: int
    tost_margin_dice: float
    seeds: int
    angles_per_subject: int | None = None


def noise_settings(profile: Profile) -> NoiseSettings:
    """The profile's ``noise:`` block as :class:`NoiseSettings`; bad values raise :class:`InputError` naming the file."""
    block = profile.section("noise")
    where = profile.path or profile.name

    def bad(msg: str) -> InputError:
        return InputError(where, f"noise: {msg}")

    try:
        g = block["grid"]
        if not isinstance(g, dict):
            raise bad("grid must be a block (above, max_halvings, floor_flat_quanta, subjects, realisations)")
        subjects = g["subjects"]
        grid = GridSettings(above=int(g["above"]), max_halvings=int(g["max_halvings"]),
                            floor_flat_quanta=float(g["floor_flat_quanta"]),
                            subjects=None if subjects is None else int(subjects), realisations=int(g["realisations"]))
        s = NoiseSettings(
            alphas=tuple(float(a) for a in block["alphas"]),
            reference_dose_mas=float(block["reference_dose_mas"]),
            grid=grid,
            realisations=int(block["realisations"]),
            nps_realisations=int(block["nps_realisations"]),
            nps_patch_mm=float(block["nps_patch_mm"]),
            nps_min_px=int(block["nps_min_px"]),
            validation_realisations=int(block["validation_realisations"]),
            tost_margin_dice=float(block["tost_margin_dice"]),
            seeds=int(block["seeds"]),
            angles_per_subject=None if block.get("angles_per_subject") is None else int(block["angles_per_subject"]),
        )
    except KeyError as exc:
        raise bad(f"missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise bad(f"malformed value ({exc})") from None
    if not s.alphas:
        raise bad("alphas is empty")
    if not (s.reference_dose_mas > 0 and math.isfinite(s.reference_dose_mas)):
        raise bad("reference_dose_mas must be positive and finite")
    if grid.above < 0 or grid.max_halvings < 1 or not grid.floor_flat_quanta > 0 or grid.realisations < 1 \
            or (grid.subjects is not None and grid.subjects < 1):
        raise bad("grid needs above ≥ 0, max_halvings ≥ 1, floor_flat_quanta > 0, realisations ≥ 1 and subjects ≥ 1")
    if s.realisations < 1 or s.nps_realisations < 2 or s.validation_realisations < 2:
        raise bad("need realisations ≥ 1, nps_realisations ≥ 2 and validation_realisations ≥ 2")
    if not s.nps_patch_mm > 0 or s.nps_min_px < 4 or s.seeds < 1:
        raise bad("need nps_patch_mm > 0, nps_min_px ≥ 4 and seeds ≥ 1")
    if s.angles_per_subject is not None and s.angles_per_subject < 1:
        raise bad(f"angles_per_subject must be ≥ 1 or null, got {s.angles_per_subject}")
    if not 0 < s.tost_margin_dice < 1:
        raise bad(f"tost_margin_dice must be in (0, 1), got {s.tost_margin_dice}")
    return s


@dataclass(frozen=True)
class AdaptiveSettings:
    """The ``noise: adaptive:`` block — adaptive training against quantum noise (paper 003's Fig. 7).

    Attributes:
        iterations: attack → add → continue-training rounds (paper: 2–3).
        epochs: epochs of continued training per round (also the patience), warm-started from the
            previous round's model (round 1: U-Net(Real+Syn_all)).
        lr: Adam learning rate of the continued training.
        lowest_doses: the training set is attacked, and the test SAR reported, at the chapter grid's
            ``lowest_doses`` lowest doses (:func:`xrlib.studies.noise.grid.figure_doses`).
        realisations: re-rendered realisations per training image and dose in each round's attack.
        subjects: how many training subjects are attacked (``None``: all cohort subjects of the
            training split; taken alternately from the Real-surrogate and synthetic pools).
    """

    iterations: int
    epochs: int
    lr: float
    lowest_doses: int
    realisations: int
    subjects: int | None


def adaptive_settings(profile: Profile) -> AdaptiveSettings:
    """The profile's ``noise: adaptive:`` block; bad values raise :class:`InputError` naming the file."""
    block = profile.section("noise").get("adaptive")
    where = profile.path or profile.name

    def bad(msg: str) -> InputError:
        return InputError(where, f"noise.adaptive: {msg}")

    if not isinstance(block, dict):
        raise bad("missing block (iterations, epochs, lr, lowest_doses, realisations, subjects)")
    try:
        subjects = block["subjects"]
        a = AdaptiveSettings(iterations=int(block["iterations"]), epochs=int(block["epochs"]), lr=float(block["lr"]),
                             lowest_doses=int(block["lowest_doses"]),
                             realisations=int(block["realisations"]), subjects=None if subjects is None else int(subjects))
    except KeyError as exc:
        raise bad(f"missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise bad(f"malformed value ({exc})") from None
    if a.iterations < 1 or a.epochs < 1 or a.realisations < 1 or (a.subjects is not None and a.subjects < 1):
        raise bad("need iterations, epochs, realisations and subjects ≥ 1")
    if not a.lr > 0:
        raise bad(f"lr must be positive, got {a.lr}")
    if a.lowest_doses not in (1, 2):
        raise bad(f"lowest_doses must be 1 or 2 (of the grid's two figure doses), got {a.lowest_doses}")
    return a
