"""The attack ensemble (xrlib.attacks.ensemble) and chapter 09's diagnostics (xrlib.studies.pgd.diagnostics).

Victims are pixel-wise threshold "segmenters" (logits = k·(x − ½)) whose L∞ optimum is known: a
pixel flips when ε exceeds its distance to ½. The masked twin quantises its input first
(round(x·8)/8: zero gradient almost everywhere), so gradient attacks stall while the gradient-free
search does not — its diagnostics must fail, the plain model's must pass.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from xrlib.attacks.base import TestImages, score_threat
from xrlib.attacks.ensemble import EnsembleThreat, members
from xrlib.core.errors import InputError
from xrlib.studies.pgd import diagnostics as dg

S = 16


class Threshold(torch.nn.Module):
    def __init__(self, quantise: bool = False):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(20.0))
        self.quantise = quantise

    def forward(self, x):
        if self.quantise:
            x = torch.round(x * 8) / 8
        return self.k * (x - 0.5)


def _images(n: int = 6, seed: int = 0):
    """Foreground (a square) in [0.52, 0.72], background in [0.28, 0.48]: every pixel 0.02–0.22 from ½."""
    rng = np.random.default_rng(seed)
    m = np.zeros((n, S, S), np.float32)
    m[:, 4:12, 4:12] = 1
    dist = rng.uniform(0.02, 0.22, (n, S, S))
    x = np.where(m > 0, 0.5 + dist, 0.5 - dist).astype(np.float32)
    return x, m


def _test():
    x, m = _images()
    rows = pd.DataFrame({"subject": [f"s{i // 2}" for i in range(len(x))], "alpha": [0.0, 10.0] * (len(x) // 2)})
    return TestImages(x, m, rows)


def test_the_threat_keeps_the_per_image_minimum_and_names_the_winner():
    t = _test()
    model = Threshold()
    threat = EnsembleThreat(members(3, 6), grid=(0.0, 0.1), seed=0)
    adv, score, win, passes = threat.attack(model, t.images, t.masks, 0.1)
    assert passes == 2 * 4 + 3 * 7 and set(win) <= {"pgd", "segpgd", "apgd-dice", "apgd-bce", "apgd-mce"}
    # the exact optimum flips every pixel within 0.1 of ½ towards the wrong side
    assert np.abs(adv - t.images).max() <= 0.1 + 1e-6
    assert np.allclose(score, dg.hard_dice(model, adv, t.masks), atol=1e-6)
    # a candidate that is better on image 0 only replaces image 0 and is named
    cand = adv.copy()
    cand[0] = 1.0 - t.masks[0]
    d = dg.hard_dice(model, cand, t.masks)
    threat.add_candidates(model, 0.1, cand, d, "oracle")
    _, score2, win2, _ = threat.attack(model, t.images, t.masks, 0.1)
    assert score2[0] == 0.0 and win2[0] == "oracle" and np.array_equal(score2[1:], score[1:])
    df = score_threat(threat, {"m": model}, t, 1.0)
    at = df[df["budget"] == 0.1]
    assert np.allclose(at["dice"].to_numpy(), score2, atol=1e-6) and at["attack"].iloc[0] == "oracle"
    assert (df.loc[df["budget"] == 0, "attack"] == "clean").all()


def test_bad_ensembles_are_refused():
    from xrlib.attacks.ensemble import Member

    with pytest.raises(InputError, match="pgd: bad ensemble member"):
        EnsembleThreat((Member("x", "fgsm", "dice", 1),), grid=(0.0, 0.1))
    with pytest.raises(InputError, match="must be ≥ 0 and include the clean 0"):
        EnsembleThreat(members(1, 1), grid=(0.1,))


def _diagnose(model, curve):
    t = _test()
    threat = EnsembleThreat(members(3, 6), grid=(0.0, 0.05, 0.1, 0.3), seed=0)
    sources = {"plain": EnsembleThreat(members(3, 6), grid=(0.0, 0.1)).attack(Threshold(), t.images, t.masks, 0.1)[0]}
    return dg.diagnose(model, t.images, t.masks, 0.1, threat, tolerance=0.02, max_steps=24, restarts=1,
                       curve=curve, transfer=sources), threat, t


def test_a_normal_model_passes_every_diagnostic():
    rows, _, _ = _diagnose(Threshold(), pd.Series([1.0, 0.7, 0.45, 0.0], index=[0.0, 0.05, 0.1, 0.3]))
    assert (rows["outcome"] == dg.PASS).all(), rows
    assert dg.flags(rows) == ""
    assert {"check", "direction", "tolerance", "white-box Dice", "check Dice", "outcome"} <= set(rows.columns)


def test_masked_gradients_are_flagged_and_lower_the_reported_number():
    model = Threshold(quantise=True)
    rows, threat, t = _diagnose(model, pd.Series([1.0, 0.8, 0.8, 0.6], index=[0.0, 0.05, 0.1, 0.3]))
    out = rows.set_index(rows["check"].str[:3])["outcome"]
    assert out["(f)"] == "possible gradient masking"  # the gradient-free search beats the stalled white-box
    assert out["(e)"] == "possible gradient masking"  # so does the transfer from the plain twin
    assert out["(d)"] == "not at full success"
    assert "possible gradient masking" in dg.flags(rows)
    # the diagnostic runs entered the reported minimum: it is now below the white-box ensemble's
    _, score, win, _ = threat.attack(model, t.images, t.masks, 0.1)
    assert score.mean() < rows["white-box Dice"].iloc[0] - 0.02
    assert any(w in ("square", "transfer from plain") for w in win)


def test_a_check_in_the_wrong_direction_would_be_caught():
    # (b): a stronger attack that lowers the Dice by more than the tolerance means "not converged"
    r = dg._row("(b)", "", 0.02, 0.5, 0.4, 0.5 - 0.4 < 0.02, "not converged")
    assert r["outcome"] == "not converged"
    assert dg._row("(b)", "", 0.02, 0.5, 0.49, 0.5 - 0.49 < 0.02, "not converged")["outcome"] == dg.PASS


def test_dice_vs_eps_follows_the_analytic_curve_of_the_threshold_model():
    # every pixel is 0.02–0.22 from ½: nothing flips below ε = 0.02, everything flips above 0.22
    x, m = _images()
    curve = dg.dice_vs_eps(Threshold(), x, m, trial=(0.0, 0.01, 0.1, 0.3), steps=5)
    assert curve[0.0] == 1.0 and curve[0.01] == 1.0 and curve[0.3] == 0.0
    assert 0.2 < curve[0.1] < 0.8  # about half the pixels are within 0.1 of ½


def test_mid_budget_propose_grid_and_grid_check():
    curve = pd.Series([0.9, 0.85, 0.6, 0.2, 0.01], index=[0.0, 0.002, 0.005, 0.01, 0.03])
    assert dg.mid_budget(curve) == 0.005
    assert dg.mid_budget(pd.Series([0.9, 0.85, 0.1], index=[0.0, 0.01, 0.03])) == 0.01  # none inside: closest to ½ (0.85)
    eps = np.array([0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05])
    d = np.array([0.9, 0.89, 0.85, 0.7, 0.4, 0.1, 0.04, 0.0])
    g = dg.propose_grid(eps, d, n=5)
    # from the last ε with Dice ≥ 0.81 (0.001) to the first with Dice ≤ 0.05 (0.02), log-spaced
    assert g[0] == 0.001 and g[-1] == 0.02 and len(g) == 5 and np.all(np.diff(g) > 0)
    assert dg.grid_check(curve)["spans"] and not dg.grid_check(pd.Series([0.9, 0.3, 0.0], index=[0, 0.1, 0.2]))["spans"]
    with pytest.raises(ValueError, match="must start at ε = 0"):
        dg.propose_grid(eps[1:], d[1:])


def test_the_typed_grid_is_checked_on_the_validation_curve():
    curve = pd.Series([0.9, 0.89, 0.85, 0.75, 0.5, 0.2, 0.03, 0.0],
                      index=[0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05])
    good = dg.grid_on_validation(curve, [0.001, 0.005, 0.02])
    assert good["outcome"] == dg.PASS and good["white-box Dice"] == 0.85 and good["check Dice"] == 0.03
    assert "proposal from the same curve: {" in good["check"]
    # constructed failures: starts inside the band, misses the band, never reaches the floor
    low = dg.grid_on_validation(curve, [0.005, 0.02])["outcome"]
    assert low.startswith(dg.GRID_WARNING) and "at the smallest ε" in low
    gap = dg.grid_on_validation(curve, [0.002, 0.01, 0.05])["outcome"]
    assert "no ε with Dice in [0.3, 0.7]" in gap
    short = dg.grid_on_validation(curve, [0.001, 0.005, 0.01])["outcome"]
    assert "Dice 0.20 > 0.05 at the largest ε" in short
    with pytest.raises(ValueError, match="no point at the profile's ε"):
        dg.grid_on_validation(curve, [0.003])
    assert set(dg.validation_trial([0.015, 0.03])) == set(dg.TRIAL_EPS) | {0.015, 0.03}
