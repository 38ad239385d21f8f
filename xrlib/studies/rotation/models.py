"""The rotation study's model sets: the three study U-Nets and the 18-experiment ablation (Table 3).

All are :class:`xrlib.training.config.TrainConfig` of the ``standard`` recipe, built from a profile's
``train:`` section, seed and ``synthetic.cen_alphas``.
"""

from __future__ import annotations

import numpy as np

from xrlib.core.profiles import Profile
from xrlib.training.config import TrainConfig

#: The three models of the study and their training sets.
STUDY_MODELS = {
    "U-Net(Real)": ["Real"],
    "U-Net(Real+Syn_cen)": ["Real", "Syn_cen"],
    "U-Net(Real+Syn_all)": ["Real", "Syn_all"],
}
#: Depth and loss of the study models when the profile does not say: the best configuration of
#: the paper's ablation (Table 3: depth 5, Dice loss, batch 32; the batch size comes from the
#: profile's ``train.batch_size``).
STUDY_DEPTH = 5
STUDY_LOSS = "dice"


def _common(profile: Profile, threads: int | None) -> dict:
    t = profile.require_train()
    return dict(base_channels=int(t.base_channels), lr=float(t.lr), epochs=int(t.epochs), patience=int(t.patience),
                seed=int(profile.seed), cen_alphas=tuple(float(a) for a in profile.synthetic.cen_alphas), threads=threads)


def study_configs(profile: Profile, threads: int | None = None) -> list[TrainConfig]:
    """The three models of the study: ``U-Net(Real)``, ``U-Net(Real+Syn_cen)``, ``U-Net(Real+Syn_all)``.

    Epochs, batch size, patience and lr come from the profile's ``train:`` section; depth and loss
    from ``train.depth`` / ``train.loss`` when present, else the paper's ablation winner
    (:data:`STUDY_DEPTH` = 5, Dice loss), which the paper used for all its U-Nets. All three use the
    profile seed, so they differ only in their training sets. ``threads``: torch threads of the
    training (default: the current count, see :class:`TrainConfig`). ``train.compile`` (default
    false) trains them through ``torch.compile``; the chapters' models derived from these
    configurations inherit it.
    """
    t = profile.require_train()
    depth = STUDY_DEPTH if t.depth is None else int(t.depth)
    loss = STUDY_LOSS if t.loss is None else str(t.loss)
    return [TrainConfig(name=name, train_sets=list(sets), depth=depth, loss=loss, batch_size=int(t.batch_size),
                        compile=bool(t.compile), **_common(profile, threads))
            for name, sets in STUDY_MODELS.items()]


def ablation_grid() -> list[tuple[int, str, int]]:
    """``(depth, loss, batch)`` of experiments 1–18 in the order of the paper's Table 3
    (depth 3/4/5 outermost, then Dice/DiceBCE, then batch 8/16/32)."""
    return [(d, loss, b) for d in (3, 4, 5) for loss in ("dice", "dice_bce") for b in (8, 16, 32)]


def ablation_configs(profile: Profile, subset=None, threads: int | None = None) -> list[TrainConfig]:
    """The 18 U-Net(Real) configurations of Table 3, named ``Exp01-d3-dice-b8`` … ``Exp18-d5-dice_bce-b32``.

    Epochs, patience, lr and seed come from the profile (its batch size is replaced by the grid's).
    Always eager: each configuration is another network or batch size, trained once, so a
    compilation (tens of seconds each) would not pay off (``train.compile`` is for the study's models).
    ``subset``: ``None`` for all 18; an ``int`` n for n experiments spread evenly over the table
    (``numpy.linspace`` over the experiment numbers, always including the first and last when
    n ≥ 2); or a list of experiment numbers (1-based, as in the table).
    """
    grid = ablation_grid()
    if subset is None:
        numbers = list(range(1, len(grid) + 1))
    elif isinstance(subset, (int, np.integer)) and not isinstance(subset, bool):
        if not 1 <= subset <= len(grid):
            raise ValueError(f"ablation subset size must be between 1 and {len(grid)}, got {subset}")
        numbers = sorted({int(round(x)) for x in np.linspace(1, len(grid), int(subset))})
    else:
        numbers = [int(n) for n in subset]
        bad = [n for n in numbers if not 1 <= n <= len(grid)]
        if bad or len(set(numbers)) != len(numbers):
            raise ValueError(f"ablation experiment numbers must be distinct and in 1..{len(grid)}, got {list(subset)}")
    common = _common(profile, threads)
    out = []
    for n in numbers:
        depth, loss, batch = grid[n - 1]
        out.append(TrainConfig(name=f"Exp{n:02d}-d{depth}-{loss}-b{batch}", train_sets=["Real"], depth=depth, loss=loss,
                               batch_size=batch, **common))
    return out
