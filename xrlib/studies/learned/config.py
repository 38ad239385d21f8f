"""The chapter's settings: the ``learned:`` block of a profile, typed and checked.

Example (``book/profiles/quick.yml``)::

    learned:
      victim: U-Net(Real+Syn_all)          # the attacked study model (and the defense's starting point)
      alphas: [0]                          # Syn_test angles attacked (null: all)
      xi: [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]   # per-image search: the ξ grid (variant D+V)
      ablation_xi: 2.0                     # D-only and V-only at this ξ
      fields: {grid: 8, max_displacement_mm: 8.0, max_bias: 0.1, lambda_d: 0.1, lambda_v: 0.01}
      per_image: {steps: 10, lr: 0.1, init_std: 0.1}
      generator: {xi: [2.0], variants: [DV], steps: 200, batch_size: 4, lr: 0.001, critic_steps: 1,
                  gp_weight: 10.0, z_channels: 4, width: 8}
      defense: {epochs: 1, lr: 0.001, attack_steps: 2, xi: 2.0, eval_xi: [2.0], generator: transfer}
      sweep: {max_displacement_mm: [2, 4, 8, 12], max_bias: [0.02, 0.05, 0.1, 0.2], steps: 20}

``sweep`` (optional; absent or null: not run): the Dice-drop attack (objective ``dice``) D-only at each
maximum displacement (mm, below the no-folding limit) and V-only at each maximum bias, ``steps``
RMSProp steps per image (:mod:`xrlib.studies.learned.sweep`).
``defense``: the recipe's training (epochs, Adam lr, per-batch search steps at ``xi``) and the ξ at
which the defended model is attacked per image (``eval_xi``). ``max_displacement_mm`` is converted to pixels of the network input with the profile's pixel size
at the isocenter. ``defense.generator``: ``adaptive`` trains a new generator against the defended
model; ``transfer`` applies the generator trained against the undefended victim (cheaper, weaker).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from xrlib.attacks.deformation import VARIANTS, FieldSettings, GeneratorSettings
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile

__all__ = ["BLOCK", "LearnedSettings", "learned_settings"]

BLOCK = "learned"


@dataclass(frozen=True)
class LearnedSettings:
    """The chapter's settings (module docstring); ``fields`` holds the per-image search of variant D+V."""

    victim: str
    alphas: tuple[float, ...] | None
    xi: tuple[float, ...]
    ablation_xi: float
    max_displacement_mm: float
    pixel_mm: float
    fields: FieldSettings
    generator: GeneratorSettings
    generator_xi: tuple[float, ...]
    generator_variants: tuple[str, ...]
    defense_epochs: int
    defense_lr: float
    defense_attack_steps: int
    defense_xi: float
    defense_eval_xi: tuple[float, ...]
    defense_generator: str
    sweep_d_mm: tuple[float, ...] = ()
    sweep_v: tuple[float, ...] = ()
    sweep_steps: int = 0

    def variant(self, variant: str) -> FieldSettings:
        return replace(self.fields, variant=variant)


def _floats(v, what, where) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise InputError(where, f"learned.{what} must be a list of numbers, got {v!r}") from None
    if not out or min(out) <= 0:
        raise InputError(where, f"learned.{what} must be a non-empty list of numbers > 0, got {v!r}")
    return out


def learned_settings(profile: Profile) -> LearnedSettings:
    """The ``learned:`` block of ``profile``; :class:`InputError` naming the profile file for a bad value."""
    from xrlib.studies.rotation import study

    where = profile.path or profile.name
    b = profile.section(BLOCK)
    try:
        f, pi, g, d = (dict(b.get(k) or {}) for k in ("fields", "per_image", "generator", "defense"))
        pixel_mm = float(study.pixel_mm(profile))
        max_mm = float(f.pop("max_displacement_mm"))
        fields = FieldSettings(variant="DV", grid=int(f.pop("grid")), max_disp_px=max_mm / pixel_mm,
                               max_bias=float(f.pop("max_bias")), lambda_d=float(f.pop("lambda_d", 0.1)),
                               lambda_v=float(f.pop("lambda_v", 0.01)), steps=int(pi.pop("steps")), lr=float(pi.pop("lr")),
                               init_std=float(pi.pop("init_std", 0.1)))
        gen_xi = _floats(g.pop("xi"), "generator.xi", where)
        gen_variants = tuple(str(v) for v in g.pop("variants", ["DV"]))
        generator = GeneratorSettings(**{k: (float(v) if k in ("lr", "gp_weight", "adv_weight", "kl_weight") else int(v))
                                         for k, v in g.items()})
        alphas = b.get("alphas")
        s = LearnedSettings(
            victim=str(b["victim"]), alphas=None if alphas is None else tuple(float(a) for a in alphas),
            xi=_floats(b["xi"], "xi", where), ablation_xi=float(b["ablation_xi"]), max_displacement_mm=max_mm,
            pixel_mm=pixel_mm, fields=fields, generator=generator, generator_xi=gen_xi, generator_variants=gen_variants,
            defense_epochs=int(d.pop("epochs")), defense_lr=float(d.pop("lr")),
            defense_attack_steps=int(d.pop("attack_steps")), defense_xi=float(d.pop("xi")),
            defense_eval_xi=_floats(d.pop("eval_xi"), "defense.eval_xi", where),
            defense_generator=str(d.pop("generator", "transfer")))
        sw = b.get("sweep")
        if sw is not None:
            sw = dict(sw)
            s = replace(s, sweep_d_mm=_floats(sw.pop("max_displacement_mm"), "sweep.max_displacement_mm", where),
                        sweep_v=_floats(sw.pop("max_bias"), "sweep.max_bias", where), sweep_steps=int(sw.pop("steps")))
            if s.sweep_steps < 1:
                raise InputError(where, f"learned.sweep.steps must be ≥ 1, got {s.sweep_steps}")
        leftover = {k: v for k, v in (("fields", f), ("per_image", pi), ("defense", d), ("sweep", sw or {})) if v}
    except InputError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(where, f"bad learned: block ({type(exc).__name__}: {exc})") from None
    if leftover:
        raise InputError(where, f"unknown keys in the learned: block: {leftover}")
    if any(v not in VARIANTS for v in s.generator_variants):
        raise InputError(where, f"learned.generator.variants must be among {VARIANTS}, got {list(s.generator_variants)}")
    if s.defense_generator not in ("adaptive", "transfer"):
        raise InputError(where, f"learned.defense.generator must be 'adaptive' or 'transfer', got {s.defense_generator!r}")
    if s.defense_epochs < 1 or s.defense_attack_steps < 1:
        raise InputError(where, "learned.defense.epochs and attack_steps must be ≥ 1")
    return s
