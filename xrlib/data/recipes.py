"""Image recipes: how the images of one pool are made from a subject's CT (poses, physics, renderer).

A :class:`PoolRecipe` is a picklable description of one pool's images: its poses for a subject,
its physics level and realistic-physics dose. :meth:`PoolRecipe.render` renders them with
:func:`xrlib.drr.render.render_batch` (post-processed for display) at the profile's detector;
a pool with another renderer is a subclass that overrides it. :func:`study_recipes` is the
study's plan (``surrogate``: realistic physics at jittered poses with per-image acquisition
variability and the room effects of :mod:`xrlib.drr.surrogate`; ``syn_train``/``syn_test``:
naive DRRs at every synthetic α), and :func:`render_subject` turns one subject into the arrays of
its shard (every radiograph post-processed, then :func:`xrlib.data.preprocess.preprocess`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from xrlib.core.profiles import Profile, SurrogateSection
from xrlib.data.pools import jittered_poses
from xrlib.data.preprocess import preprocess
from xrlib.data.shards import ACQ_PREFIX, shard_arrays
from xrlib.drr.geometry import Geometry, Pose


@dataclass(frozen=True)
class PoolRecipe(ABC):
    """Images of one pool: ``physics`` level and, for realistic physics, the dose (mAs).

    Subclasses give :meth:`poses`; override :meth:`render` for another renderer.
    """

    physics: str = "naive"
    dose_mas: float | None = None

    @abstractmethod
    def poses(self, subject: str) -> list[Pose]:
        """The poses of ``subject``'s images."""

    def realistic(self):
        """Parameters of the realistic chain (``None`` for other physics levels)."""
        from xrlib.drr.physics import RealisticParams

        return RealisticParams(dose_mas=float(self.dose_mas)) if self.physics == "realistic" else None

    def noise_seed(self, profile: Profile, subject: str) -> int:
        """Seed of this pool's quantum-noise stream for ``subject`` (:func:`noise_seed`; the ladder's stream)."""
        return noise_seed(profile.seed, subject)

    def render(self, ct, labels, profile: Profile, subject: str, poses: list[Pose]) -> list:
        """:class:`xrlib.drr.render.Radiograph` s of ``subject`` at ``poses``, with ``display`` images."""
        return self._radiographs(ct, labels, profile, subject, poses, self.realistic(), display=True)

    def _radiographs(self, ct, labels, profile: Profile, subject: str, poses: list[Pose], realistic, display: bool) -> list:
        """:func:`xrlib.drr.render.render_batch` of this recipe's physics at the profile's detector, with
        ``realistic`` parameters (one set, or one per pose) and the subject's noise seed."""
        from xrlib.anatomy.annotate import clavicles_from_labels
        from xrlib.drr.render import render_batch

        r = profile.render
        return render_batch(ct, clavicles_from_labels(labels), Geometry.from_render(r), poses, physics=self.physics,
                            backend=r.backend, seed=self.noise_seed(profile, subject), fov=r.fov,
                            realistic=realistic, display=display, prefilter=r.prefilter)


@dataclass(frozen=True)
class AnglesRecipe(PoolRecipe):
    """One image per rotation angle α (deg), no tilt or shift."""

    alphas: tuple[float, ...] = ()

    def poses(self, subject: str) -> list[Pose]:
        return [Pose(alpha=a) for a in self.alphas]


#: Upper bound (bytes) of the in-process cache of shared projections (:func:`shared_projection`).
SHARED_CACHE_BYTES = 2 * 1024**3
_SHARED: "OrderedDict[str, object]" = OrderedDict()


def _volume_key(v) -> str:
    """A cheap content key of a volume: its source, grid and a strided sample of its voxels."""
    a = np.ascontiguousarray(v.array[::3, ::7, ::7])
    return hashlib.sha1(a.tobytes() + repr((v.source, v.array.shape, v.spacing, v.origin)).encode()).hexdigest()


def shared_projection(ct, labels, profile: Profile, subject: str, poses: list[Pose], levels: tuple[str, ...]):
    """:func:`xrlib.drr.render.project_levels` of a subject at ``poses`` for every level in ``levels``, made once
    per process and reused by every recipe that asks for the same subject, poses, levels and detector
    (an LRU cache of at most :data:`SHARED_CACHE_BYTES`)."""
    from xrlib.anatomy.annotate import clavicles_from_labels
    from xrlib.drr.render import project_levels

    r = profile.render
    key = hashlib.sha256(json.dumps({"subject": subject, "ct": _volume_key(ct), "labels": _volume_key(labels),
                                     "render": dataclasses.asdict(r), "poses": [p.to_dict() for p in poses],
                                     "levels": list(levels)}, sort_keys=True, default=str).encode()).hexdigest()
    if key in _SHARED:
        _SHARED.move_to_end(key)
        return _SHARED[key]
    proj = project_levels(ct, clavicles_from_labels(labels), Geometry.from_render(r), poses, levels,
                          backend=r.backend, fov=r.fov, prefilter=r.prefilter)
    _SHARED[key] = proj
    while len(_SHARED) > 1 and sum(x.nbytes for x in _SHARED.values()) > SHARED_CACHE_BYTES:
        _SHARED.popitem(last=False)
    return proj


@dataclass(frozen=True)
class JitteredRecipe(PoolRecipe):
    """Well-positioned poses: α, tilt and shift jittered per subject (:func:`xrlib.data.pools.jittered_poses`).

    ``shared_levels``: project the channels of these physics levels together (with the masks) once per
    subject, at the first ``shared_poses`` poses of the subject's seeded sequence, and make this recipe's
    images from that projection (:func:`shared_projection`) — so matched datasets of several simulators
    (chapter 08) share one projection and one set of masks. The images are the same as without sharing;
    it is skipped when the surrogate pool's projections would not fit the cache.
    """

    seed: int = 0
    jitter: SurrogateSection | None = None
    shared_levels: tuple[str, ...] = ()
    shared_poses: int = 0

    def poses(self, subject: str) -> list[Pose]:
        return jittered_poses(self.seed, self.jitter, subject)

    def _shared(self, ct, labels, profile: Profile, subject: str, poses: list[Pose]):
        """The shared projection and the indices of ``poses`` in it, or ``None`` (not shared)."""
        if not self.shared_levels or self.physics not in self.shared_levels:
            return None
        n = max(int(self.shared_poses), len(poses))
        channels = sum(4 if lv == "realistic" else 1 for lv in self.shared_levels) + 2
        entry = n * channels * profile.render.detector ** 2 * 4
        if entry * profile.pools.surrogate.total > SHARED_CACHE_BYTES:
            return None
        full = jittered_poses(self.seed, dataclasses.replace(self.jitter, poses_per_subject=n), subject)
        if full[:len(poses)] != list(poses):
            return None
        return shared_projection(ct, labels, profile, subject, full, tuple(self.shared_levels)), range(len(poses))

    def _radiographs(self, ct, labels, profile: Profile, subject: str, poses: list[Pose], realistic, display: bool) -> list:
        """From the shared projection when there is one (the same images), else rendered as any recipe's."""
        from xrlib.drr.render import radiographs

        shared = self._shared(ct, labels, profile, subject, poses)
        if shared is None:
            return super()._radiographs(ct, labels, profile, subject, poses, realistic, display)
        return radiographs(shared[0], self.physics, shared[1], seed=self.noise_seed(profile, subject),
                           realistic=realistic, display=display)


@dataclass(frozen=True)
class VariedRecipe(JitteredRecipe):
    """A varied "Real" surrogate: realistic physics at jittered poses, each image with its own acquisition
    and display settings drawn from :data:`xrlib.drr.acquisition.ACQUISITION_RANGES` at ``acquisition_scale``
    (seeded by ``seed`` and the subject; :func:`xrlib.drr.acquisition.sample_acquisition`). The settings
    go into the shard and the manifest (columns ``acq_<parameter>``). ``dose_mas`` is the reference dose
    the per-image dose factor multiplies.

    ``effects``: the room effects no simulator of the ladder models (:class:`xrlib.drr.surrogate.SurrogateEffects`,
    drawn per image from :func:`xrlib.drr.surrogate.effects_rng`); with effects the quantum noise is drawn from a
    stream of its own (:data:`SURROGATE_NOISE_STREAM`), not the ladder's, so no rung shares the surrogate's noise.
    ``None``: no effects and the ladder's noise stream (the realistic chain at varied settings only)."""

    physics: str = "realistic"
    acquisition_scale: float = 1.0
    effects: object | None = None  # xrlib.drr.surrogate.SurrogateEffects (data imports drr lazily)

    def acquisitions(self, subject: str, n: int) -> list:
        """The first ``n`` per-image settings of ``subject`` (one draw per image, in pose order)."""
        from xrlib.drr.acquisition import sample_acquisition

        rng = np.random.default_rng([int(self.seed), _subject_key(subject), 3])
        return [sample_acquisition(rng, float(self.acquisition_scale)) for _ in range(n)]

    def noise_seed(self, profile: Profile, subject: str) -> int:
        return noise_seed(profile.seed, subject, SURROGATE_NOISE_STREAM if self.effects is not None else LADDER_NOISE_STREAM)

    def render(self, ct, labels, profile: Profile, subject: str, poses: list[Pose]) -> list:
        if self.physics != "realistic":
            raise ValueError(f"a varied surrogate needs realistic physics, got {self.physics!r}")
        from xrlib.drr.surrogate import effects_rng

        r = profile.render
        geom = Geometry.from_render(r)
        acqs = self.acquisitions(subject, len(poses))
        base = self.realistic()
        rgs = self._radiographs(ct, labels, profile, subject, poses, [a.realistic_params(base) for a in acqs],
                                display=False)
        for i, (rg, acq) in enumerate(zip(rgs, acqs)):
            if self.effects is None:
                rg.display = acq.display(rg.image, rg.field, geom.pitch)
            else:
                rg.display, drawn = self.effects.apply(
                    rg.image, rg.field, rg.mask, geom.pitch, geom.sdd,
                    lambda img, acq=acq, rg=rg: acq.display(img, rg.field, geom.pitch), effects_rng(self.seed, subject, i))
                rg.meta["effects"] = drawn
            rg.meta["acquisition"] = acq.to_dict()
        return rgs


def study_recipes(profile: Profile) -> dict[str, PoolRecipe]:
    """The study's pools: the varied "Real" surrogate (realistic physics at jittered poses, each image with
    its own acquisition and display settings, :class:`VariedRecipe` at scale 1), naive DRRs at the synthetic α.

    The surrogate's per-image settings are what a simulator with one fixed setting does not know
    (:mod:`xrlib.drr.acquisition`), so a model trained on the realistic simulator does not meet its
    own training distribution in the "Real" test split."""
    synthetic = AnglesRecipe(physics="naive", alphas=tuple(profile.synthetic.alphas))
    return {
        "surrogate": VariedRecipe(dose_mas=profile.surrogate.dose_mas, seed=profile.seed, jitter=profile.surrogate,
                                  acquisition_scale=1.0, effects=profile_effects(profile)),
        "syn_train": synthetic,
        "syn_test": synthetic,
    }


def profile_effects(profile: Profile):
    """The profile's surrogate effects (:func:`xrlib.drr.surrogate.surrogate_effects` of ``surrogate.effects``)."""
    from xrlib.drr.surrogate import surrogate_effects

    return surrogate_effects((profile.raw.get("surrogate") or {}).get("effects"), str(profile.path or profile.name))


#: Seed-stream tags of the quantum noise: the ladder's (every simulator) and the Real surrogate's own.
LADDER_NOISE_STREAM = 2
SURROGATE_NOISE_STREAM = 6


def _subject_key(subject: str) -> int:
    return int.from_bytes(hashlib.sha256(subject.encode()).digest()[:4], "little")


def noise_seed(seed: int, subject: str, stream: int = LADDER_NOISE_STREAM) -> int:
    """Seed of a subject's noise streams, from the profile seed, the subject id and the ``stream`` tag
    (default the ladder's; the Real surrogate with effects draws from :data:`SURROGATE_NOISE_STREAM`)."""
    return int(np.random.SeedSequence([int(seed), _subject_key(subject), int(stream)]).generate_state(1)[0])


def render_subject(ct, labels, profile: Profile, recipe: PoolRecipe, subject: str) -> dict:
    """Render and preprocess every image of one subject with ``recipe``; the arrays of its shard."""
    poses = recipe.poses(subject)
    rgs = recipe.render(ct, labels, profile, subject, poses)
    size = profile.image_size
    images, masks, lefts, rights = [], [], [], []
    for rg in rgs:
        img, mask = preprocess(rg.display, rg.mask, size)
        images.append(img)
        masks.append(mask)
        lefts.append(preprocess(rg.display, rg.mask_left, size)[1])
        rights.append(preprocess(rg.display, rg.mask_right, size)[1])
    arrays = shard_arrays(images, masks, lefts, rights, [p.alpha for p in poses], [p.tilt for p in poses],
                          [p.shift for p in poses], recipe.physics,
                          np.nan if recipe.dose_mas is None else recipe.dose_mas, rgs[0].meta["backend"])
    if "acquisition" in rgs[0].meta:  # per-image acquisition settings (a varied surrogate)
        for k in rgs[0].meta["acquisition"]:
            arrays[f"{ACQ_PREFIX}{k}"] = np.asarray([rg.meta["acquisition"][k] for rg in rgs], np.float64)
    return arrays


def preprocessing_example(ct, labels, profile: Profile, alpha: float = 10.0) -> dict:
    """One synthetic (naive-physics) radiograph before and after :func:`xrlib.data.preprocess.preprocess`,
    as the datasets make them.

    Returns ``detector`` (post-processed display image at the profile's detector size, [0, 1]),
    ``detector_mask``, ``geometry``, ``image`` and ``mask`` (``image_size`` square) and ``alpha`` (deg).
    """
    recipe = AnglesRecipe(physics="naive", alphas=(float(alpha),))
    rg = recipe.render(ct, labels, profile, "example", recipe.poses("example"))[0]
    img, mask = preprocess(rg.display, rg.mask, profile.image_size)
    return {"detector": rg.display, "detector_mask": rg.mask, "geometry": Geometry.from_render(profile.render),
            "image": img, "mask": mask, "alpha": float(alpha)}
