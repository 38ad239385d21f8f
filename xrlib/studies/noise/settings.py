"""The ``noise:`` block of a profile (chapter 10) and its ``adaptive:`` sub-block, typed and checked."""

from __future__ import annotations

import math
from dataclasses import dataclass

from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile

__all__ = ["AdaptiveSettings", "NoiseSettings", "adaptive_settings", "noise_settings"]


@dataclass(frozen=True)
class NoiseSettings:
    """Chapter 10's sizes.

    Attributes:
        alphas: angles (deg) of the Syn_test images used (a subset of the synthetic grid).
        doses_mas: the dose sweep (mAs), decreasing; the clean image is the infinite dose.
        reference_dose_mas: dose of the repeated realisations behind the inserted arm's NPS.
        realisations: noisy images per test image, dose and arm (re-rendered and inserted alike).
        nps_realisations: re-rendered realisations at the reference dose for the NPS (paper: 20).
        patch_px: NPS patch size in detector pixels (30 % overlap, trapezoidal blending).
        figure_doses_mas: the two doses of the std maps and the CMR figure.
        validation_realisations: realisations per image for the moment/NPS validation of the insertion.
        seeds: number of repeated trainings of U-Net(Real+Syn_all) (different seeds).
        seed_epochs: epochs of each repeated training.
    """

    alphas: tuple[float, ...]
    doses_mas: tuple[float, ...]
    reference_dose_mas: float
    realisations: int
    nps_realisations: int
    patch_px: int
    figure_doses_mas: tuple[float, float]
    validation_realisations: int
    seeds: int
    seed_epochs: int


def noise_settings(profile: Profile) -> NoiseSettings:
    """The profile's ``noise:`` block as :class:`NoiseSettings`; bad values raise :class:`InputError` naming the file."""
    block = profile.section("noise")
    where = profile.path or profile.name

    def bad(msg: str) -> InputError:
        return InputError(where, f"noise: {msg}")

    try:
        s = NoiseSettings(
            alphas=tuple(float(a) for a in block["alphas"]),
            doses_mas=tuple(float(d) for d in block["doses_mas"]),
            reference_dose_mas=float(block["reference_dose_mas"]),
            realisations=int(block["realisations"]),
            nps_realisations=int(block["nps_realisations"]),
            patch_px=int(block["patch_px"]),
            figure_doses_mas=tuple(float(d) for d in block["figure_doses_mas"]),
            validation_realisations=int(block["validation_realisations"]),
            seeds=int(block["seeds"]),
            seed_epochs=int(block["seed_epochs"]),
        )
    except KeyError as exc:
        raise bad(f"missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise bad(f"malformed value ({exc})") from None
    if not s.alphas:
        raise bad("alphas is empty")
    if not s.doses_mas or any(not (d > 0 and math.isfinite(d)) for d in s.doses_mas):
        raise bad(f"doses_mas must be positive finite mAs, got {list(s.doses_mas)}")
    if len(s.figure_doses_mas) != 2 or any(not any(math.isclose(f, d) for d in s.doses_mas) for f in s.figure_doses_mas):
        raise bad(f"figure_doses_mas must be two of doses_mas, got {list(s.figure_doses_mas)}")
    if not s.reference_dose_mas > 0:
        raise bad("reference_dose_mas must be positive")
    if s.realisations < 1 or s.nps_realisations < 2 or s.validation_realisations < 2:
        raise bad("need realisations ≥ 1, nps_realisations ≥ 2 and validation_realisations ≥ 2")
    if s.patch_px < 4 or s.seeds < 1 or s.seed_epochs < 1:
        raise bad("need patch_px ≥ 4, seeds ≥ 1 and seed_epochs ≥ 1")
    return s


@dataclass(frozen=True)
class AdaptiveSettings:
    """The ``noise: adaptive:`` block — adaptive training against quantum noise (paper 003's Fig. 7).

    Attributes:
        iterations: attack → add → continue-training rounds (paper: 2–3).
        epochs: epochs of continued training per round (also the patience), warm-started from the
            previous round's model (round 1: U-Net(Real+Syn_all)).
        lr: Adam learning rate of the continued training.
        doses_mas: the doses the training set is attacked at and the test SAR is reported at (each one
            of ``noise.doses_mas``).
        realisations: re-rendered realisations per training image and dose in each round's attack.
        subjects: how many training subjects are attacked (``None``: all cohort subjects of the
            training split; taken alternately from the Real-surrogate and synthetic pools).
    """

    iterations: int
    epochs: int
    lr: float
    doses_mas: tuple[float, ...]
    realisations: int
    subjects: int | None


def adaptive_settings(profile: Profile) -> AdaptiveSettings:
    """The profile's ``noise: adaptive:`` block; bad values raise :class:`InputError` naming the file."""
    s = noise_settings(profile)
    block = profile.section("noise").get("adaptive")
    where = profile.path or profile.name

    def bad(msg: str) -> InputError:
        return InputError(where, f"noise.adaptive: {msg}")

    if not isinstance(block, dict):
        raise bad("missing block (iterations, epochs, lr, doses_mas, realisations, subjects)")
    try:
        subjects = block["subjects"]
        a = AdaptiveSettings(iterations=int(block["iterations"]), epochs=int(block["epochs"]), lr=float(block["lr"]),
                             doses_mas=tuple(float(d) for d in block["doses_mas"]),
                             realisations=int(block["realisations"]), subjects=None if subjects is None else int(subjects))
    except KeyError as exc:
        raise bad(f"missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise bad(f"malformed value ({exc})") from None
    if a.iterations < 1 or a.epochs < 1 or a.realisations < 1 or (a.subjects is not None and a.subjects < 1):
        raise bad("need iterations, epochs, realisations and subjects ≥ 1")
    if not a.lr > 0:
        raise bad(f"lr must be positive, got {a.lr}")
    if not a.doses_mas or any(not any(math.isclose(d, e) for e in s.doses_mas) for d in a.doses_mas):
        raise bad(f"doses_mas must be some of noise.doses_mas {list(s.doses_mas)}, got {list(a.doses_mas)}")
    return a
