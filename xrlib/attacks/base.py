"""The threat interface and the scoring of victim models under a threat (the results contract rows).

A :class:`Threat` turns the test images (:class:`TestImages`) into threatened ones at a budget
(:class:`Threatened`: the inputs, the ground truth on them — transformed with the image for a
geometric threat — and their metadata). :func:`score_threat` runs every victim on the clean images
(budget :attr:`Threat.clean_budget`) and on each budget's threatened images and returns one row per
model × budget × image with the columns of :data:`xrlib.eval.robustness.CONTRACT_COLUMNS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.core.atomic import save_npz_atomic
from xrlib.core.errors import InputError
from xrlib.eval.metrics import dice
from xrlib.eval.predict import evaluate_predictions, predict
from xrlib.eval.robustness import CONTRACT_COLUMNS, changed_flags, success_flags
from xrlib.training.config import safe_name

__all__ = ["TestImages", "Threat", "Threatened", "score_threat"]


@dataclass
class TestImages:
    """Preprocessed test images ``(N, S, S)`` in [0, 1], their masks ``(N, S, S)`` and manifest rows."""

    __test__ = False  # not a pytest test class

    images: np.ndarray
    masks: np.ndarray
    rows: pd.DataFrame

    def __post_init__(self):
        if self.images.shape != self.masks.shape or len(self.rows) != len(self.images):
            raise ValueError(f"test images {self.images.shape}, masks {self.masks.shape} and {len(self.rows)} rows disagree")
        self.rows = self.rows.reset_index(drop=True)

    @classmethod
    def from_manifest(cls, rows: pd.DataFrame, root: str | Path) -> "TestImages":
        """Read the images of manifest ``rows`` from the shards under the datasets folder ``root``."""
        from xrlib.data.shards import ShardDataset

        ds = ShardDataset(rows, root=root)
        items = [ds[i] for i in range(len(ds))]
        s = 0 if items else 1
        images = np.stack([x[0][0].numpy() for x in items]) if items else np.zeros((0, s, s), np.float32)
        masks = np.stack([x[1][0].numpy() for x in items]) if items else np.zeros((0, s, s), np.float32)
        return cls(images, masks, ds.rows)

    def subset(self, keep: np.ndarray) -> "TestImages":
        keep = np.asarray(keep, bool)
        return TestImages(self.images[keep], self.masks[keep], self.rows[keep])


@dataclass
class Threatened:
    """Threatened inputs at one budget.

    ``images``/``masks``: the inputs and the ground truth on them; ``rows``: their metadata (at least
    ``subject`` and ``alpha``); ``same_view``: per image, whether the clean prediction lies on the same
    pixels (``False`` for another projection: ``dice_vs_clean_pred`` then stays empty); ``extra``:
    threat-specific columns, one row per image.
    """

    images: np.ndarray
    masks: np.ndarray
    rows: pd.DataFrame
    same_view: np.ndarray
    extra: pd.DataFrame = field(default_factory=pd.DataFrame)


class Threat(ABC):
    """A threat with a budget: ``name``, ``budget_unit``, ``geometric`` (the truth moves with the image),
    ``clean_budget`` (the budget of the clean image) and ``clean_keys`` (the manifest columns that
    identify an image's clean counterpart, e.g. the subject for rotation)."""

    name: str
    budget_unit: str
    geometric: bool = False
    clean_budget: float = 0.0
    clean_keys: tuple[str, ...] = ("subject", "alpha")

    @abstractmethod
    def budgets(self) -> tuple[float, ...]:
        """The budgets the threat is evaluated at (including the clean budget)."""

    @abstractmethod
    def apply(self, model, test: TestImages, budget: float) -> Threatened:
        """The threatened inputs at ``budget`` (``model``: the victim, for attacks that need its gradient)."""

    def check_budgets(self, budgets: Sequence[float] | None) -> tuple[float, ...]:
        """``budgets`` (default :meth:`budgets`) with the clean budget first; unknown ones raise :class:`InputError`."""
        grid = self.budgets()
        chosen = grid if budgets is None else tuple(float(b) for b in budgets)
        bad = [b for b in chosen if not np.isclose(grid, b).any()]
        if bad:
            raise InputError(None, f"threat {self.name!r}: budget {bad[0]:g} {self.budget_unit} is not one of "
                                   f"{', '.join(f'{g:g}' for g in grid)}")
        rest = [b for b in chosen if not np.isclose(b, self.clean_budget)]
        return (self.clean_budget, *dict.fromkeys(rest))


def _clean_index(clean_rows: pd.DataFrame, rows: pd.DataFrame, keys: Sequence[str], threat: str) -> np.ndarray:
    lookup = {tuple(k): i for i, k in enumerate(clean_rows[list(keys)].itertuples(index=False))}
    idx = [lookup.get(tuple(k), -1) for k in rows[list(keys)].itertuples(index=False)]
    missing = [tuple(k) for k, i in zip(rows[list(keys)].itertuples(index=False), idx) if i < 0]
    if missing:
        raise ValueError(f"threat {threat!r}: no clean image for {dict(zip(keys, missing[0]))}")
    return np.asarray(idx, int)


def _save_examples(path: Path, clean: Threatened, th: Threatened, idx: np.ndarray, p_clean: np.ndarray,
                   p: np.ndarray) -> None:
    save_npz_atomic(path, {
        "clean_image": clean.images[idx], "clean_mask": clean.masks[idx], "clean_prob": p_clean[idx],
        "image": th.images, "mask": th.masks, "prob": p,
        "subject": np.asarray(th.rows["subject"].astype(str).tolist(), dtype=str),  # unicode, not object: no pickle
        "alpha": th.rows["alpha"].to_numpy(float),
    })


def score_threat(
    threat: Threat,
    victims: Mapping[str, object],
    test: TestImages,
    pixel_mm_iso: float,
    budgets: Sequence[float] | None = None,
    groups: Callable[[float], str] | None = None,
    batch_size: int = 16,
    device=None,
    progress: bool = False,
    examples_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Contract rows of every victim under ``threat`` at ``budgets`` (default all; the clean one always).

    ``groups`` labels each α (column ``alpha_group``; empty without it). Rows: per model, the
    budgets in order (clean first), the images of each budget in the threat's order.
    ``examples_dir``: also write, per model and budget, ``<dir>/<threat>/<model>/budget_<b>.npz`` with
    the clean and threatened images, their ground truths, both predicted probabilities and the
    manifest identifiers (``subject``, ``alpha``), for inspection.
    """
    budgets = threat.check_budgets(budgets)
    frames = []
    for name, model in victims.items():
        label = (lambda b: f"{threat.name} {name} @ {b:g} {threat.budget_unit}") if progress else (lambda b: None)
        clean = threat.apply(model, test, threat.clean_budget)
        p_clean, _ = predict(model, (clean.images, clean.masks), batch_size, device, label(threat.clean_budget))
        dice_clean = np.array([dice(p, t) for p, t in zip(p_clean, clean.masks)])
        for b in budgets:
            th = clean if b == threat.clean_budget else threat.apply(model, test, b)
            p = p_clean if th is clean else predict(model, (th.images, th.masks), batch_size, device, label(b))[0]
            df = evaluate_predictions(name, p, th.masks, th.rows, pixel_mm_iso, groups=groups, group_column="alpha_group")
            if groups is None:
                df.insert(df.columns.get_loc("alpha") + 1, "alpha_group", pd.NA)
            idx = _clean_index(clean.rows, th.rows, threat.clean_keys, threat.name)
            vs_clean = np.array([dice(p[k], p_clean[idx[k]]) if th.same_view[k] else np.nan for k in range(len(p))])
            df.insert(1, "threat", threat.name)
            df.insert(2, "budget", float(b))
            df.insert(3, "budget_unit", threat.budget_unit)
            df["dice_clean"] = dice_clean[idx]
            df["dice_vs_clean_pred"] = vs_clean
            df["success"] = success_flags(df["dice"], df["dice_clean"])
            df["changed"] = changed_flags(vs_clean).to_numpy()
            if len(th.extra.columns):
                df = pd.concat([df, th.extra.reset_index(drop=True)], axis=1)
            if examples_dir is not None:
                _save_examples(Path(examples_dir) / threat.name / safe_name(name) / f"budget_{b:g}.npz",
                               clean, th, idx, p_clean, p)
            frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(CONTRACT_COLUMNS))
    cols = list(CONTRACT_COLUMNS) + [c for c in out.columns if c not in CONTRACT_COLUMNS]
    return out[cols]
