"""The chapter's settings: the ``pgd:`` block of a profile as checked, frozen dataclasses.

Block layout (``book/profiles/*.yml``; the profiles differ only in sizes)::

    pgd:
      budgets: [0.01, 0.03, 0.07]   # L∞ ε > 0 in [0, 1] image units; the clean ε = 0 is always added
      steps: 10                     # N, PGD and SegPGD steps per attack of the ensemble
      apgd_steps: 20                # APGD iterations per member of the ensemble (soft Dice, balanced CE, masked CE)
      members: null                 # the ensemble's attacks (null: all of xrlib.attacks.ensemble.members)
      step_fraction: 0.2            # step s = step_fraction · ε
      alphas: [-20, -10, 0, 10, 20] # Syn_test angles attacked (null: all)
      angles_per_subject: null      # each Syn_test subject attacked at this many of the angles, in rotation (null: all)
      segpgd_budgets: [0.03]        # ε at which SegPGD runs too (null: all budgets; a subset of budgets)
      l2: false                     # also L2 PGD at the radii ε·S
      seed: 0
      check: {budget, steps, restarts, models, tolerance}   # diagnostics (budget null: the mid-range ε;
                                    # steps: the cap of the convergence check's iterations)
      defense: {epochs, lr, eps, steps, step_size, max_noise, warm_start}
      ood: {eps, steps, step_fraction, recon_weight, head_epochs, head_hidden, victims, natural}
                                    # eps: L∞ budgets (a number or a list), steps: step counts (the same),
                                    # victims: the models attacked (null: U-Net(Real+Syn_all) and its +PGD-AT)
      shape:                        # shape variability vs robustness; null: not run (quick)
        levels: [0.5, 1.0, 1.5]     # deformation amplitude, × the study cohort's bands
        subjects: {surrogate: {train: 1, val: 1}, syn_train: {train: 1, val: 0}}   # per level
        alphas: [-20, 0, 20]        # synthetic angles of the levels' training data (null: synthetic.alphas)
        ct_shrink: [6, 6, 2]        # source CT block-averaged by these factors (i, j, k) first
        field_spacing_mm: 8.0       # the deformation's coarse displacement grid
        epochs: 1                   # both models per level
        base_channels: 4            # U-Net width of both models (null: the study's train.base_channels)
        budgets: [0.07]             # L∞ ε attacked (ε = 0 is added), a subset of pgd.budgets

Every error is an :class:`xrlib.core.errors.InputError` naming the profile file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile

__all__ = ["CheckSettings", "DefenseSettings", "OODSettings", "PGDSettings", "ShapeSettings", "pgd_settings"]


@dataclass(frozen=True)
class CheckSettings:
    """Attack diagnostics (:mod:`xrlib.studies.pgd.diagnostics`) at ``budget`` (None: the grid's ε where
    the base model's mean Dice is in [0.3, 0.7]); ``steps``: the cap of the convergence check's APGD
    iterations; ``restarts``: new starts of the 2×-steps check; ``models`` (None: every victim);
    ``tolerance``: a mean-Dice advantage of a check's attack up to this counts as noise."""

    budget: float | None
    steps: int
    restarts: int
    models: tuple[str, ...] | None
    tolerance: float


@dataclass(frozen=True)
class DefenseSettings:
    """Defense trainings: ``epochs`` (early-stopping patience = epochs), Adam ``lr``, the PGD of
    adversarial training (``eps``, ``steps``, ``step_size``, L∞), the uniform noise's ``max_noise``,
    and ``warm_start`` (start from the study model's weights)."""

    epochs: int
    lr: float
    eps: float
    steps: int
    step_size: float
    max_noise: float
    warm_start: bool


@dataclass(frozen=True)
class OODSettings:
    """The OOD attack's sweep (L∞ budgets ``eps`` in [0, 1] image units, ascending; step counts ``steps``,
    ascending — one run of the largest count per ε, read at every count —; step ``step_fraction · ε``;
    weight ``recon_weight`` of the reconstruction term in attack (c)), the reconstruction heads' training
    (``head_epochs``, ``head_hidden`` channels), the ``victims`` (a standard and an adversarially trained
    model of the chapter) and the scikit-image pictures used as natural OOD images."""

    eps: tuple[float, ...]
    steps: tuple[int, ...]
    step_fraction: float
    recon_weight: float
    head_epochs: int
    head_hidden: int
    natural: tuple[str, ...]
    victims: tuple[str, ...] = ("U-Net(Real+Syn_all)", "U-Net(Real+Syn_all)+PGD-AT")


@dataclass(frozen=True)
class ShapeSettings:
    """Shape variability vs robustness (:mod:`xrlib.studies.pgd.shape`): deformation amplitude
    ``levels`` (multiples of the study cohort's sampling bands, distinct, ascending), the training
    subjects per level (``surrogate`` and ``syn_train`` train/val counts, the same at every level,
    so the image count is fixed), the source CT's ``ct_shrink`` factors and the deformation's
    ``field_spacing_mm`` (sizes), ``epochs`` and ``base_channels`` (None: the study's) of both models
    per level, and the L∞ ``budgets``."""

    levels: tuple[float, ...]
    subjects: dict
    alphas: tuple[float, ...] | None
    ct_shrink: tuple[int, int, int]
    field_spacing_mm: float
    epochs: int
    budgets: tuple[float, ...]
    base_channels: int | None = None

    @property
    def grid(self) -> tuple[float, ...]:
        """The budgets with the clean 0 first."""
        return (0.0, *self.budgets)


@dataclass(frozen=True)
class PGDSettings:
    """The whole ``pgd:`` block (module docstring)."""

    budgets: tuple[float, ...]
    steps: int
    apgd_steps: int
    step_fraction: float
    alphas: tuple[float, ...] | None
    segpgd_budgets: tuple[float, ...]
    l2: bool
    seed: int
    check: CheckSettings
    defense: DefenseSettings
    ood: OODSettings
    shape: ShapeSettings | None = None
    members: tuple[str, ...] | None = None
    angles_per_subject: int | None = None

    @property
    def grid(self) -> tuple[float, ...]:
        """The L∞ budgets with the clean 0 first."""
        return (0.0, *self.budgets)


class _Reader:
    def __init__(self, source, block: dict, prefix: str):
        self.source, self.block, self.prefix = source, block, prefix

    def fail(self, key: str, what: str, value) -> InputError:
        return InputError(self.source, f"{self.prefix}{key} must be {what}, got {value!r}")

    def get(self, key: str):
        if key not in self.block:
            raise InputError(self.source, f"missing key {self.prefix}{key}")
        return self.block[key]

    def int(self, key: str, minimum: int = 1) -> int:
        v = self.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.fail(key, f"an integer ≥ {minimum}", v)
        return int(v)

    def num(self, key: str, lo: float = 0.0, hi: float = float("inf"), positive: bool = True) -> float:
        v = self.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or (positive and v <= 0):
            raise self.fail(key, f"a {'positive ' if positive else ''}number in [{lo:g}, {hi:g}]", v)
        return float(v)

    def bool(self, key: str) -> bool:
        v = self.get(key)
        if not isinstance(v, bool):
            raise self.fail(key, "true or false", v)
        return v

    def numbers(self, key: str, lo: float, hi: float, allow_null: bool = False, positive: bool = True):
        v = self.get(key)
        if v is None and allow_null:
            return None
        ok = isinstance(v, list) and v and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v)
        if not ok or any(not (lo <= a <= hi) or (positive and a <= 0) for a in v) or len(set(v)) != len(v):
            raise self.fail(key, f"a non-empty list of distinct numbers in ({lo:g}, {hi:g}]" + (" or null" if allow_null else ""), v)
        return tuple(float(a) for a in v)

    def names(self, key: str, allow_null: bool = False):
        v = self.get(key)
        if v is None and allow_null:
            return None
        if not (isinstance(v, list) and v and all(isinstance(a, str) and a for a in v)):
            raise self.fail(key, "a non-empty list of names" + (" or null" if allow_null else ""), v)
        return tuple(v)

    def sub(self, key: str) -> "_Reader":
        v = self.get(key)
        if not isinstance(v, dict):
            raise self.fail(key, "a mapping", v)
        return _Reader(self.source, v, f"{self.prefix}{key}.")


def pgd_settings(profile: Profile) -> PGDSettings:
    """The checked ``pgd:`` block of ``profile`` (module docstring)."""
    r = _Reader(profile.path or profile.name, profile.section("pgd"), "pgd.")
    budgets = tuple(sorted(r.numbers("budgets", 0.0, 1.0)))
    seg = r.numbers("segpgd_budgets", 0.0, 1.0, allow_null=True)
    seg = budgets if seg is None else tuple(sorted(seg))
    if not set(seg) <= set(budgets):
        raise r.fail("segpgd_budgets", f"a subset of pgd.budgets {list(budgets)} or null", list(seg))
    c, d, o = r.sub("check"), r.sub("defense"), r.sub("ood")
    budget = None if c.get("budget") is None else c.num("budget", 0.0, 1.0)
    check = CheckSettings(budget, c.int("steps"), c.int("restarts"), c.names("models", True),
                          c.num("tolerance", 0.0, 1.0, positive=False))
    if check.budget is not None and check.budget not in budgets:
        raise c.fail("budget", f"one of pgd.budgets {list(budgets)} or null", check.budget)
    defense = DefenseSettings(d.int("epochs"), d.num("lr", 0.0, 1.0), d.num("eps", 0.0, 1.0), d.int("steps"),
                              d.num("step_size", 0.0, 1.0), d.num("max_noise", 0.0, 1.0), d.bool("warm_start"))
    victims = o.names("victims", allow_null=True) if "victims" in o.block else None
    ood = OODSettings(_ascending(o, "eps", float), _ascending(o, "steps", int), o.num("step_fraction", 0.0, 1.0),
                      o.num("recon_weight", 0.0, float("inf"), positive=False), o.int("head_epochs"), o.int("head_hidden"),
                      o.names("natural"), *(() if victims is None else (victims,)))
    alphas = r.numbers("alphas", -180.0, 180.0, allow_null=True, positive=False)
    known = ("pgd", "segpgd", "apgd-dice", "apgd-bce", "apgd-mce")
    chosen = r.names("members", allow_null=True) if "members" in r.block else None
    if chosen is not None and (set(chosen) - set(known) or len(set(chosen)) != len(chosen)):
        raise r.fail("members", f"distinct names among {', '.join(known)} or null", list(chosen))
    per_subject = r.int("angles_per_subject") if r.block.get("angles_per_subject") is not None else None
    return PGDSettings(budgets, r.int("steps"), r.int("apgd_steps"), r.num("step_fraction", 0.0, 1.0), alphas, seg, r.bool("l2"),
                       r.int("seed", 0), check, defense, ood, _shape(r, budgets), chosen, per_subject)


def _ascending(r: _Reader, key: str, kind: type) -> tuple:
    """A number (or a list of them) as a tuple of distinct ascending values: ε in (0, 1] (``kind`` float) or step
    counts ≥ 1 (``kind`` int)."""
    v = r.get(key)
    vals = v if isinstance(v, list) else [v]
    what = ("a number in (0, 1] or an ascending list of them" if kind is float
            else "an integer ≥ 1 or an ascending list of them")
    ok = bool(vals) and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in vals)
    ok = ok and (all(0 < a <= 1 for a in vals) if kind is float else all(isinstance(a, int) and a >= 1 for a in vals))
    if not ok or list(vals) != sorted(set(vals)):
        raise r.fail(key, what, v)
    return tuple(kind(a) for a in vals)


def _shape(r: _Reader, budgets: tuple[float, ...]) -> ShapeSettings | None:
    if r.get("shape") is None:
        return None
    h = r.sub("shape")
    levels = h.numbers("levels", 0.0, 4.0)
    if len(levels) < 2 or list(levels) != sorted(levels):
        raise h.fail("levels", "at least two distinct ascending amplitudes in (0, 4]", list(levels))
    sub = h.sub("subjects")
    subjects = {}
    for pool in ("surrogate", "syn_train"):
        p = sub.sub(pool)
        extra = sorted(set(p.block) - {"train", "val"})
        if extra:
            raise p.fail(extra[0], "absent (the splits are train and val)", p.block[extra[0]])
        subjects[pool] = {"train": p.int("train"), "val": p.int("val", 0) if "val" in p.block else 0}
    if subjects["surrogate"]["val"] + subjects["syn_train"]["val"] < 1:
        raise sub.fail("surrogate.val", "≥ 1 (or syn_train.val ≥ 1): early stopping needs validation images",
                       subjects["surrogate"]["val"])
    shrink = h.get("ct_shrink")
    if not (isinstance(shrink, list) and len(shrink) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shrink)):
        raise h.fail("ct_shrink", "3 integers ≥ 1 (i, j, k)", shrink)
    shape_budgets = tuple(sorted(h.numbers("budgets", 0.0, 1.0)))
    if not set(shape_budgets) <= set(budgets):
        raise h.fail("budgets", f"a subset of pgd.budgets {list(budgets)}", list(shape_budgets))
    alphas = h.numbers("alphas", -180.0, 180.0, allow_null=True, positive=False)
    width = None if h.get("base_channels") is None else h.int("base_channels")
    return ShapeSettings(levels, subjects, None if alphas is None else tuple(sorted(alphas)), tuple(shrink),
                         h.num("field_spacing_mm", 0.0, 100.0), h.int("epochs"), shape_budgets, width)
