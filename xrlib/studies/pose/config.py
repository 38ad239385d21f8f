"""The ``pose:`` block of a profile (chapter 12), typed and checked.

An example (YAML)::

    pose:
      subjects: 2            # Syn_test subjects searched (null: all)
      budgets: [5, 10, 20]   # b: |α| ≤ b°, |tilt| ≤ b/4°, |shift| ≤ b mm
      render_size: 128       # detector pixels the renderer uses (null: the profile's detector)
      step_mm: 1.4           # renderer sampling step along the rays (null: every CT slice)
      starts: 8              # Latin-hypercube starts over the 5-D box (shared by the victims)
      steps: 4               # sign-gradient steps from the worst start (random search: starts + steps poses)
      step_fraction: 0.25    # first step, as a fraction of each bound
      smooth_mm: 1.0         # the guide's Gaussian prefilter of μ (mm)
      smooth_pose: 0.5       # σ of the search objective's Gaussian smoothing over the pose (deg / mm; 0: none)
      smooth_samples: 16     # its K common offsets (renders per gradient step)
      seed: null             # starts and random poses (null: the profile's seed)
      landscape: {alpha: 9, tilt: 5, model: "U-Net(Real)", budget: 20}
      defense: {subjects: 2, budget: 10, rounds: 2, epochs: 3, lr: 0.001, start: "U-Net(Real)"}
"""

from __future__ import annotations

from dataclasses import dataclass

from xrlib.attacks.pose import PoseSearch, pose_bounds
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile

__all__ = ["DefenseConfig", "PoseConfig"]


@dataclass(frozen=True)
class DefenseConfig:
    """Worst-case-pose training vs the uniform α grid (see :mod:`xrlib.studies.pose.defense`)."""

    subjects: int = 2
    budget: float = 10.0
    rounds: int = 2
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 8
    start: str = "U-Net(Real)"


@dataclass(frozen=True)
class PoseConfig:
    subjects: int | None
    budgets: tuple[float, ...]
    render_size: int | None
    step_mm: float | None
    search: PoseSearch
    landscape_alpha: int
    landscape_tilt: int
    landscape_model: str
    landscape_budget: float
    defense: DefenseConfig

    @classmethod
    def from_profile(cls, profile: Profile) -> "PoseConfig":
        src = profile.path or profile.name
        raw = profile.section("pose")

        def num(block, key, kind, default, minimum=None, optional=False):
            v = block.get(key, default)
            if v is None and optional:
                return None
            try:
                v = kind(v)
            except (TypeError, ValueError):
                raise InputError(src, f"pose.{key}: expected a number, got {v!r}") from None
            if minimum is not None and v < minimum:
                raise InputError(src, f"pose.{key}: must be ≥ {minimum}, got {v}")
            return v

        budgets = raw.get("budgets", [5, 10, 20])
        if not isinstance(budgets, list) or not budgets:
            raise InputError(src, f"pose.budgets: expected a non-empty list of budgets, got {budgets!r}")
        try:
            budgets = tuple(float(b) for b in budgets)
            for b in budgets:
                pose_bounds(b)
        except (TypeError, ValueError) as exc:
            raise InputError(src, f"pose.budgets: {exc}") from None
        if max(budgets) > 30:
            raise InputError(src, f"pose.budgets: the renderer supports |α| up to about 30°, got {max(budgets):g}")
        if "grid" in raw:
            raise InputError(src, "pose.grid: the (α, tilt) start grid is gone; set pose.starts (Latin-hypercube "
                                  "starts over all five pose parameters)")
        land, dfn = (raw.get(k) or {} for k in ("landscape", "defense"))
        seed = raw.get("seed")
        try:
            search = PoseSearch(starts=num(raw, "starts", int, 8, 1), steps=num(raw, "steps", int, 5, 0),
                                step_fraction=num(raw, "step_fraction", float, 0.25), batch=num(raw, "batch", int, 8, 1),
                                seed=int(profile.seed) if seed is None else num(raw, "seed", int, 0, 0),
                                smooth_mm=num(raw, "smooth_mm", float, 1.0, 0.0),
                                smooth_pose=num(raw, "smooth_pose", float, 0.5, 0.0),
                                smooth_samples=num(raw, "smooth_samples", int, 16, 1))
        except InputError as exc:
            raise InputError(src, exc.problem) from None
        defense = DefenseConfig(subjects=num(dfn, "subjects", int, 2, 1), budget=num(dfn, "budget", float, 10.0, 0.0),
                                rounds=num(dfn, "rounds", int, 2, 1), epochs=num(dfn, "epochs", int, 3, 1),
                                lr=num(dfn, "lr", float, 1e-3, 0.0), batch_size=num(dfn, "batch_size", int, 8, 1),
                                start=str(dfn.get("start", "U-Net(Real)")))
        return cls(subjects=num(raw, "subjects", int, None, 1, optional=True), budgets=budgets,
                   render_size=num(raw, "render_size", int, None, 8, optional=True),
                   step_mm=num(raw, "step_mm", float, None, 0.0, optional=True), search=search,
                   landscape_alpha=num(land, "alpha", int, 9, 2), landscape_tilt=num(land, "tilt", int, 5, 1),
                   landscape_model=str(land.get("model", "U-Net(Real)")),
                   landscape_budget=num(land, "budget", float, max(budgets), 0.0), defense=defense)
