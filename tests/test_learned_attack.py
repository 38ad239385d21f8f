"""Chapter 11: smooth deformation + bias-field attack (xrlib.attacks.deformation, xrlib.nets.fieldgen)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from xrlib.attacks.deformation import (DeformationThreat, FieldSettings, GeneratorSettings, ce_mask, clavicle_dice,
                                       compose, dense_field, generate, min_jacobian, optimise_fields, perceptibility,
                                       train_generator, warp, warp_mask)
from xrlib.core.errors import InputError
from xrlib.eval.robustness import CONTRACT_COLUMNS, success_flags
from xrlib.nets.fieldgen import Critic, FieldGenerator, gradient_penalty
from xrlib.nets.unet import build_unet


def _model(seed=0):
    torch.manual_seed(seed)
    return build_unet(3, 4).eval()


def _disc_images(n=2, s=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s]
    masks = np.stack([((yy - 16) ** 2 + (xx - 12 - 4 * k) ** 2 <= 25).astype(np.float32) for k in range(n)])
    imgs = np.clip(rng.normal(0.3, 0.05, (n, s, s)) + 0.5 * masks, 0, 1).astype(np.float32)
    return imgs, masks


def test_zero_fields_are_the_identity():
    x = torch.rand(2, 1, 24, 24, generator=torch.Generator().manual_seed(1))
    zd, zv = torch.zeros(2, 2, 24, 24), torch.zeros(2, 1, 24, 24)
    assert torch.allclose(compose(x, zd, zv), x, atol=1e-6)
    m = (x > 0.5).float()
    assert torch.equal(warp_mask(m, zd), m)
    adv, d, v, _ = optimise_fields(_model(), x, 0.0, FieldSettings(steps=5))  # ξ = 0: nothing to do
    assert torch.equal(adv, x) and not d.any() and not v.any()


def test_known_displacement_moves_marker_and_mask():
    img = torch.zeros(1, 1, 32, 32)
    img[0, 0, 10, 12] = 1.0
    mask = torch.zeros(1, 1, 32, 32)
    mask[0, 0, 8:13, 10:15] = 1.0
    disp = torch.zeros(1, 2, 32, 32)
    disp[:, 0], disp[:, 1] = 2.0, -3.0  # I_D(p) = I_0(p + D): content moves by (−2, +3)
    out = warp(img, disp)[0, 0]
    assert tuple(np.argwhere(out.numpy() > 0.99)[0]) == (8, 15) and float(out.sum()) == pytest.approx(1.0)
    moved = warp_mask(mask, disp)[0, 0].numpy()
    assert np.array_equal(np.argwhere(moved)[[0, -1]], [[6, 13], [10, 17]])
    # fractional shift: same as scipy's linear-interpolation shift (interior pixels)
    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(rng.random((32, 32)), 2).astype(np.float32)
    d = torch.zeros(1, 2, 32, 32)
    d[:, 0], d[:, 1] = 0.4, -1.3
    ours = warp(torch.as_tensor(smooth)[None, None], d)[0, 0].numpy()
    ref = ndimage.shift(smooth, (-0.4, 1.3), order=1, mode="nearest")
    np.testing.assert_allclose(ours[3:-3, 3:-3], ref[3:-3, 3:-3], atol=1e-5)


def test_generator_fields_respect_bounds_and_smoothness():
    s, g, dmax, vmax = 29, 8, 1.0, 0.05  # control points every (29 − 1)/(8 − 1) = 4 px
    gen = FieldGenerator(s, grid=g, z_channels=2, width=4, max_disp_px=dmax, max_bias=vmax).eval()
    x = 10 * torch.randn(3, 1, s, s, generator=torch.Generator().manual_seed(0))  # drive the tanh hard
    dc, vc, _ = gen(x, torch.Generator().manual_seed(1))
    assert dc.shape == (3, 2, g, g) and vc.shape == (3, 1, g, g)
    d, v = dense_field(dc, s), dense_field(vc, s)
    assert d.abs().max() <= dmax + 1e-6 and v.abs().max() <= vmax + 1e-6
    spacing = (s - 1) / (g - 1)
    slope = max(d.diff(dim=-1).abs().max(), d.diff(dim=-2).abs().max())
    assert slope <= 2 * dmax / spacing + 1e-5
    idx = torch.arange(0, s, 4)  # the dense field is the bilinear interpolation of its control values
    assert torch.allclose(dense_field(d[..., idx[:, None], idx], s), d, atol=1e-5)
    assert (min_jacobian(d) >= 1 - 2 * (2 * dmax / spacing) - 1e-4).all() and (min_jacobian(d) > 0).all()


def test_gradient_penalty_of_a_linear_critic():
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    with torch.no_grad():
        critic[1].weight.fill_(3.0 / 4.0)  # ‖w‖₂ = 3 for 16 inputs, the same gradient everywhere
    real, fake = torch.rand(4, 1, 4, 4), torch.rand(4, 1, 4, 4)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx((3.0 - 1.0) ** 2, rel=1e-5)
    with torch.no_grad():
        critic[1].weight.fill_(1.0 / 4.0)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(0.0, abs=1e-10)
    assert Critic(width=4)(torch.rand(2, 1, 16, 16)).shape == (2,)


def test_masked_cross_entropy_and_scores_on_constructed_inputs():
    z0 = torch.full((2, 1, 8, 8), -30.0)
    z0[0, 0, :2, :2], z0[1, 0, :4, :4] = 30.0, 30.0  # foreground of 4 and 16 pixels
    assert torch.allclose(ce_mask(z0, torch.zeros_like(z0)), torch.full((2,), np.log(2.0)), atol=1e-4)  # area-independent
    assert torch.allclose(ce_mask(z0, z0), torch.zeros(2), atol=1e-6)
    clean = np.zeros((1, 4, 4))
    clean[0, :2] = 1.0  # std 0.5
    adv = clean.copy()
    adv[0, 0, :2] += 0.2  # |r| = 0.2 on 2 of 16 pixels
    p, rel = perceptibility(adv, clean)
    assert p[0] == pytest.approx(0.025) and rel[0] == pytest.approx(0.05)
    assert np.isnan(perceptibility(np.ones((1, 2, 2)), np.zeros((1, 2, 2)))[1][0])  # flat image: no relative p
    np.testing.assert_array_equal(success_flags([0.56, 0.57, 0.0], [0.8, 0.8, 0.0]), [True, False, False])
    prob = np.zeros((1, 4, 4))
    truth = np.zeros((1, 4, 4))
    prob[0, 1, 0] = truth[0, 1, 0] = 1  # image left half = patient's right: hit
    truth[0, 1, 3] = 1  # patient's left missed
    r, lft = clavicle_dice(prob, truth)
    assert r[0] == 1.0 and lft[0] == 0.0


def test_attacks_leave_the_victim_unchanged_and_are_seeded():
    model = _model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    imgs, _ = _disc_images()
    x = torch.as_tensor(imgs)[:, None]
    s = FieldSettings(steps=3, max_disp_px=1.0)
    a1 = optimise_fields(model, x, 2.0, s, torch.Generator().manual_seed(3))
    a2 = optimise_fields(model, x, 2.0, s, torch.Generator().manual_seed(3))
    assert torch.equal(a1[0], a2[0]) and float((a1[0] - x).abs().max()) > 0
    assert a1[1].abs().max() <= 1.0 + 1e-6 and a1[2].abs().max() <= s.max_bias + 1e-6
    gen, log = train_generator(model, imgs, 2.0, s, GeneratorSettings(steps=2, batch_size=2, z_channels=2, width=4))
    assert list(log["step"]) == [1, 2] and np.isfinite(log[["ce", "critic_loss", "gp"]].to_numpy()).all()
    adv, d, v, _ = generate(gen, model, x, FieldSettings(variant="V", max_disp_px=1.0))
    assert not d.any() and v.abs().max() > 0  # V-only: no deformation
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_deformation_recipe_doubles_the_batch_and_warps_the_mask():
    from xrlib.attacks.defenses import DeformationAdversarialTraining
    from xrlib.training.recipes import StepContext, get_recipe

    imgs, masks = _disc_images()
    x, y = torch.as_tensor(imgs)[:, None], torch.as_tensor(masks)[:, None]
    r = get_recipe("deformation-adversarial", {"steps": 2, "max_disp_px": 1.0})
    assert isinstance(r, DeformationAdversarialTraining)
    ctx = StepContext(1, 0, torch.device("cpu"), torch.Generator().manual_seed(0))
    bx, by = r.batch(x, y, _model(), ctx)
    assert bx.shape == (4, 1, 32, 32) and torch.equal(bx[:2], x) and torch.equal(by[:2], y)
    assert set(torch.unique(by[2:]).tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="variant must be one of"):
        get_recipe("deformation-adversarial", {"variant": "X"})


def test_bad_threat_options_and_profile_block(tmp_path):
    import yaml

    from xrlib.core.profiles import PROFILES_DIR, load_profile
    from xrlib.studies.learned.config import learned_settings

    with pytest.raises(InputError, match="method must be one of per-image, generator"):
        DeformationThreat(method="gan")
    with pytest.raises(InputError, match="needs training images"):
        DeformationThreat(method="generator")
    with pytest.raises(InputError, match="bad field options"):
        DeformationThreat(wobble=1)
    for name in ("smoke", "quick", "paper"):  # the shipped blocks parse, and their bounds cannot fold
        prof = load_profile(name)
        s = learned_settings(prof)
        assert s.fields.max_disp_px < (prof.image_size - 1) / (s.fields.grid - 1) / 4
    cfg = yaml.safe_load((PROFILES_DIR / "smoke.yml").read_text(encoding="utf-8"))
    cfg["learned"]["defense"]["generator"] = "sometimes"
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(InputError, match="bad.yml.*learned.defense.generator must be 'adaptive' or 'transfer'"):
        learned_settings(load_profile(path))


def test_deformation_threat_writes_the_contract(toy_run):
    from xrlib.studies.robustness import run_threat

    profile, run, _ = toy_run
    kw = dict(models=["U-Net(Real)"], budgets=[0.0, 2.0], steps=2, alphas=[0.0])
    out = run_threat(profile, run, "deformation", **kw)
    df = out.results
    assert set(CONTRACT_COLUMNS) <= set(df.columns) and (df["threat"] == "deformation").all()
    assert list(df["budget"]) == [0.0, 0.0, 2.0, 2.0] and (df["variant"] == "DV").all()
    assert (df["method"] == "per-image").all() and (df["budget_unit"] == "xi").all()
    clean = df[df["budget"] == 0]
    np.testing.assert_allclose(clean["dice"], clean["dice_clean"])
    np.testing.assert_allclose(clean["dice_unwarped"], clean["dice"])
    assert (clean["p"] == 0).all() and (clean["min_jacobian"] == 1).all()
    attacked = df[df["budget"] == 2]
    assert (attacked["p"] > 0).all() and (attacked["min_jacobian"] > 0).all()
    again = run_threat(profile, run, "deformation", **kw).results
    np.testing.assert_array_equal(again["p"], df["p"])
