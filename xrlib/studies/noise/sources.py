"""Chapter 10's test images: the Syn_test subjects re-projected with the realistic chain, held as expected signals.

The Syn_test images of the datasets are naive DRRs; the noise threat needs the realistic chain's
noise-free detector signal of the same subjects and angles (:func:`xrlib.drr.noise.render_expected`).
It is computed once per subject and cached as ``<run>/noise/expected/<subject>-a<α>-<key>.npz``, ``key`` a
hash of the render section and the realistic-chain parameters; later realisations cost
a noise draw.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.attacks.noise import NoiseSource, NoiseThreat
from xrlib.core.atomic import save_npz_atomic
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile
from xrlib.drr.geometry import Geometry, Pose
from xrlib.drr.noise import ExpectedSignal, render_expected
from xrlib.drr.physics import RealisticParams
from xrlib.studies.noise.settings import NoiseSettings, noise_settings
from xrlib.studies.rotation import study

__all__ = ["noise_sources", "noise_threat", "nps_patch", "syn_test_subjects"]


def syn_test_subjects(run: Path, profile: Profile) -> list[str]:
    """Subject ids of the Syn_test pool of the run's datasets (sorted)."""
    rows = study.test_sets(run, profile.synthetic.cen_alphas)["Syn_test"]
    return sorted(rows["subject"].astype(str).unique())


def _key(profile: Profile, params: RealisticParams) -> str:
    text = json.dumps({"render": profile.raw.get("render"), "params": params.to_dict(), "v": 2}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _path(run: Path, sid: str, alpha: float, key: str) -> Path:
    return run / "noise" / "expected" / f"{sid}-a{alpha:+g}-{key}.npz"


def noise_sources(profile: Profile, run: Path, alphas, params: RealisticParams | None = None,
                  subjects: list[str] | None = None, per_subject: int | None = None) -> tuple[list[NoiseSource], pd.DataFrame]:
    """Expected signals of the Syn_test subjects (or ``subjects``) at ``alphas`` (cached per subject and angle),
    and their rows (``subject``, ``alpha``, ``source``); with ``per_subject``, the ``i``-th subject only at
    ``per_subject`` of the angles (:func:`xrlib.data.pools.spread_angles`)."""
    from xrlib.data.pools import spread_angles
    from xrlib.anatomy.annotate import clavicles_from_labels
    from xrlib.anatomy.cohort import load_subject
    from xrlib.data.subjects import source_ct

    run = Path(run)
    params = params or RealisticParams()
    geom = Geometry.from_render(profile.render)
    subjects = syn_test_subjects(run, profile) if subjects is None else list(subjects)
    if not subjects:
        raise InputError(study.datasets_dir(run), "the datasets have no Syn_test subject")
    key = _key(profile, params)
    all_alphas = [float(a) for a in alphas]
    sources, rows = [], []
    for i, sid in enumerate(subjects):
        alphas = spread_angles(all_alphas, i, per_subject)
        missing = [a for a in alphas if not _path(run, sid, a, key).is_file()]
        if missing:
            ct, labels = load_subject(run / "cohort", sid)
            items = render_expected(ct, clavicles_from_labels(labels), geom, [Pose(alpha=a) for a in missing],
                                    params, backend=profile.render.backend, fov=profile.render.fov,
                                    prefilter=profile.render.prefilter)
            for a, it in zip(missing, items):
                save_npz_atomic(_path(run, sid, a, key), {**it["expected"].to_arrays(), "field": it["field"], "mask": it["mask"]})
        for a in alphas:
            with np.load(_path(run, sid, a, key)) as z:
                es = ExpectedSignal.from_arrays(z)
                sources.append(NoiseSource(es, np.asarray(z["field"], bool), np.asarray(z["mask"], np.uint8), geom.pitch))
            rows.append({"subject": sid, "alpha": a, "source": source_ct(sid)})
    return sources, pd.DataFrame(rows)


def nps_patch(s: NoiseSettings, source: NoiseSource) -> int:
    """The NPS patch side (detector pixels) of the settings at a source's pitch (:func:`xrlib.drr.nps.patch_px`)."""
    from xrlib.drr.nps import patch_px

    return patch_px(s.nps_patch_mm, source.pitch_mm, s.nps_min_px, min(source.expected.signal.shape))


def noise_threat(profile: Profile, run: Path, settings: NoiseSettings | None = None, arms=None, doses=None,
                 realisations: int | None = None, subjects=None) -> NoiseThreat:
    """The chapter's :class:`xrlib.attacks.noise.NoiseThreat` at ``doses`` (mAs; required — the chapter's are its
    validation grid, :func:`xrlib.studies.noise.grid.grid_threat`), sizes from the profile's ``noise:`` block."""
    s = settings or noise_settings(profile)
    if doses is None:
        raise InputError(None, "noise: no doses given (the chapter's doses come from xrlib.studies.noise.grid.validation_grid)")
    sources, rows = noise_sources(profile, run, s.alphas, subjects=subjects, per_subject=s.angles_per_subject)
    kw = {} if arms is None else {"arms": tuple(arms)}
    return NoiseThreat(sources, rows, profile.image_size, doses,
                       realisations=s.realisations if realisations is None else int(realisations),
                       reference_dose=s.reference_dose_mas, nps_realisations=s.nps_realisations,
                       patch=nps_patch(s, sources[0]), seed=int(profile.seed), **kw)
