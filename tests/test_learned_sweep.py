"""Chapter 11's Dice-drop objective, best iterate, bound sweep, equal-p/std comparison and the warped ``changed``.

The victim is a pixel-wise threshold "segmenter" (logits = 20·(x − ½)): it follows any deformation
exactly (a warped image gives the warped prediction), and a bias below −(x − ½) flips a pixel.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from xrlib.attacks.base import TestImages
from xrlib.attacks.deformation import DeformationThreat, FieldSettings, optimise_fields
from xrlib.core.errors import InputError
from xrlib.core.profiles import load_profile, validate_profile
from xrlib.studies.learned import sweep as sw
from xrlib.studies.learned.config import learned_settings
from xrlib.studies.learned.study import warped_changed


class Threshold(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(20.0))

    def forward(self, x):
        return self.k * (x - 0.5)


def _squares(n=3, size=32):
    m = np.zeros((n, size, size), np.float32)
    m[:, 10:20, 12:22] = 1
    x = np.where(m > 0, 0.6, 0.4).astype(np.float32)
    return x, m


def test_the_dice_objective_flips_a_uniform_foreground_within_the_bias_bound():
    # the whole image is foreground at 0.6: a bias ≤ −0.1 everywhere empties the prediction (Dice 0);
    # a bias bound of 0.05 cannot flip anything, so the best iterate keeps Dice 1
    x = torch.full((2, 1, 16, 16), 0.6)
    for bound, expected in ((0.3, 0.0), (0.05, 1.0)):
        f = FieldSettings(variant="V", grid=4, max_bias=bound, steps=30, lr=0.1, objective="dice")
        adv, _, bias, _ = optimise_fields(Threshold(), x, 1.0, f)
        assert bias.abs().max() <= bound + 1e-6
        hard = ((adv > 0.5).float().flatten(1).sum(1) > 0).float()  # any foreground left
        assert hard.tolist() == [expected, expected]
    with pytest.raises(ValueError, match="objective must be one of"):
        FieldSettings(objective="ce")


def test_changed_compares_with_the_warped_clean_prediction():
    """A network that follows D exactly is never 'changed'."""
    x, m = _squares()
    test = TestImages(x, m, pd.DataFrame({"subject": ["a", "b", "c"], "alpha": 0.0}))
    th = DeformationThreat(grid=(0.0, 1.0), fields=FieldSettings(variant="D", grid=4, max_disp_px=2.4, steps=5,
                                                                  lr=0.5, init_std=1.0))
    from xrlib.attacks.base import score_threat

    model = Threshold()
    df = score_threat(th, {"t": model}, test, 1.0)
    fixed = warped_changed(th, model, test, df)
    at = fixed["budget"] == 1.0
    assert (fixed.loc[at, "dice_vs_clean_pred"] > 0.9).all() and not fixed.loc[at, "changed"].any()
    assert (df.loc[at, "dice_vs_clean_pred"] < fixed.loc[at, "dice_vs_clean_pred"]).all()  # unwarped: lower


def test_bound_sweep_curves_and_the_no_folding_limit():
    x, m = _squares()
    f = FieldSettings(grid=4, steps=10, lr=0.1)
    df = sw.bound_sweep(Threshold(), x, m, f, pixel_mm=1.0, d_bounds_mm=[1.0, 2.0], v_bounds=[0.05, 0.2])
    assert len(df) == 4 * 3 and set(df["variant"]) == {"D", "V"}
    assert (df["dice_clean"] == 1.0).all()
    c = sw.sweep_curves(df).set_index(["variant", "bound"])
    assert c.loc[("V", 0.05), "Dice drop"] == pytest.approx(0.0)  # 0.05 < 0.1: nothing can flip
    assert c.loc[("V", 0.2), "Dice drop"] > 0.3 and c.loc[("V", 0.2), "n good"] == 3
    assert not df.loc[df["variant"] == "D", "changed"].any()  # the threshold model follows any D
    with pytest.raises(ValueError, match="no-folding limit 2.58 px of a 4×4 grid on 32 px"):
        sw.bound_sweep(Threshold(), x, m, f, pixel_mm=1.0, d_bounds_mm=[3.0], v_bounds=[])
    assert sw.no_fold_limit_px(32, 4) == pytest.approx(31 / 3 / 4)


def test_equal_pstd_interpolates_both_curves_at_the_largest_common_pstd():
    curves = pd.DataFrame({"variant": ["D", "D", "V", "V"], "bound": [1, 2, 0.1, 0.2], "p/std": [0.1, 0.3, 0.05, 0.2],
                           "Dice drop": [0.1, 0.3, 0.2, 0.5], "success rate": [0.0, 0.5, 0.25, 1.0]})
    e = sw.equal_pstd(curves).set_index("variant")
    assert (e["p/std"] == 0.2).all()
    assert e.loc["D", "Dice drop"] == pytest.approx(0.2) and e.loc["V", "Dice drop"] == pytest.approx(0.5)
    assert e.loc["D", "success rate"] == pytest.approx(0.25)
    apart = curves.assign(**{"p/std": [0.5, 0.6, 0.1, 0.2]})
    assert sw.equal_pstd(apart).empty


def test_the_sweep_block_is_read_and_checked():
    s = learned_settings(load_profile("quick"))
    assert s.sweep_d_mm == (2.0, 4.0, 8.0, 12.0) and s.sweep_steps == 20
    cfg = copy.deepcopy(load_profile("smoke").raw)
    cfg["path"] = "bad.yml"
    cfg["learned"]["sweep"] = {"max_displacement_mm": [2], "max_bias": [0.1], "steps": 0}
    with pytest.raises(InputError, match="bad.yml: learned.sweep.steps must be ≥ 1, got 0"):
        learned_settings(validate_profile(cfg, "bad.yml"))
