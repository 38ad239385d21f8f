"""The chapter's settings: the ``pgd:`` block of a profile as checked, frozen dataclasses.

Block layout (``book/profiles/*.yml``; the profiles differ only in sizes)::

    pgd:
      budgets: [0.01, 0.03, 0.07]   # L∞ ε > 0 in [0, 1] image units; the clean ε = 0 is always added
      steps: 10                     # N, PGD steps per attack
      step_fraction: 0.2            # step s = step_fraction · ε
      alphas: [-20, -10, 0, 10, 20] # Syn_test angles attacked (null: all)
      segpgd_budgets: [0.03]        # ε at which SegPGD runs too (null: all budgets; a subset of budgets)
      l2: false                     # also L2 PGD at the radii ε·S
      seed: 0
      check: {budget, steps, restarts, models, tolerance}   # gradient-masking checks
      defense: {epochs, lr, eps, steps, step_size, max_noise, warm_start}
      ood: {eps, steps, step_fraction, recon_weight, head_epochs, head_hidden, natural}

Every error is an :class:`xrlib.core.errors.InputError` naming the profile file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile

__all__ = ["CheckSettings", "DefenseSettings", "OODSettings", "PGDSettings", "pgd_settings"]


@dataclass(frozen=True)
class CheckSettings:
    """Gradient-masking checks at one ε: ``steps`` (more than the attack's N) and ``restarts``
    (of N steps, another seed); ``models`` (None: every victim); ``tolerance`` — a mean-Dice rise
    (or a transfer attack's advantage) up to this counts as noise."""

    budget: float
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
    """The OOD attack (L∞ ``eps``, ``steps``, step ``step_fraction · eps``, weight ``recon_weight`` of
    the reconstruction term in attack (c)), the reconstruction head's training (``head_epochs``,
    ``head_hidden`` channels) and the scikit-image pictures used as natural OOD images."""

    eps: float
    steps: int
    step_fraction: float
    recon_weight: float
    head_epochs: int
    head_hidden: int
    natural: tuple[str, ...]


@dataclass(frozen=True)
class PGDSettings:
    """The whole ``pgd:`` block (module docstring)."""

    budgets: tuple[float, ...]
    steps: int
    step_fraction: float
    alphas: tuple[float, ...] | None
    segpgd_budgets: tuple[float, ...]
    l2: bool
    seed: int
    check: CheckSettings
    defense: DefenseSettings
    ood: OODSettings

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
    check = CheckSettings(c.num("budget", 0.0, 1.0), c.int("steps"), c.int("restarts"), c.names("models", True),
                          c.num("tolerance", 0.0, 1.0, positive=False))
    if check.budget not in budgets:
        raise c.fail("budget", f"one of pgd.budgets {list(budgets)}", check.budget)
    defense = DefenseSettings(d.int("epochs"), d.num("lr", 0.0, 1.0), d.num("eps", 0.0, 1.0), d.int("steps"),
                              d.num("step_size", 0.0, 1.0), d.num("max_noise", 0.0, 1.0), d.bool("warm_start"))
    ood = OODSettings(o.num("eps", 0.0, 1.0), o.int("steps"), o.num("step_fraction", 0.0, 1.0),
                      o.num("recon_weight", 0.0, float("inf"), positive=False), o.int("head_epochs"), o.int("head_hidden"),
                      o.names("natural"))
    alphas = r.numbers("alphas", -180.0, 180.0, allow_null=True, positive=False)
    return PGDSettings(budgets, r.int("steps"), r.num("step_fraction", 0.0, 1.0), alphas, seg, r.bool("l2"),
                       r.int("seed", 0), check, defense, ood)
