"""Domain randomization (paper 001 §5.1): the mask follows the image, ranges are respected, draws are seeded."""

import os

import numpy as np
import pytest
import torch

from xrlib.training.randomization import (STRONG_EFFECTS, DomainRandomization, _affine, _crop, _distort, randomize,
                                          randomize_batch)

S = 48
GEOMETRIC = ("affine", "distort")


def _disc(cy=20.0, cx=26.0, r=9.0):
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()[None]


def _dice(a, b):
    a, b = a.bool(), b.bool()
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("warp", [_crop, _affine, _distort])
def test_geometric_effects_move_the_mask_with_the_image(warp):
    m = _disc()
    for seed in range(5):
        xi, yi = warp(m.clone(), m.clone(), torch.Generator().manual_seed(seed))[:2]
        assert set(yi.unique().tolist()) <= {0.0, 1.0}
        assert _dice(xi >= 0.5, yi) > 0.9  # the image of the mask and the warped mask agree
        assert not torch.equal(yi, m)  # it did move


@pytest.mark.parametrize("name", [n for n in STRONG_EFFECTS if n not in GEOMETRIC])
def test_photometric_effects_leave_the_mask_alone(name):
    x, m = torch.rand(1, S, S, generator=torch.Generator().manual_seed(1)), _disc()
    xo, yo = STRONG_EFFECTS[name](x.clone(), m.clone(), torch.Generator().manual_seed(2))
    assert torch.equal(yo, m) and xo.shape == x.shape and not torch.equal(xo, x)


def test_regular_parameters_lie_in_the_papers_ranges_and_the_crop_is_90_percent():
    g = torch.Generator().manual_seed(0)
    recs = []
    for _ in range(200):
        rec = {}
        randomize(torch.rand(1, S, S), _disc(), "regular", g, record=rec)
        recs.append(rec)
    sig = np.array([r["sigma_fraction"] for r in recs])
    gam = np.array([r["gamma"] for r in recs])
    assert 0.005 <= sig.min() and sig.max() <= 0.1 and sig.max() - sig.min() > 0.08
    assert 0.7 <= gam.min() and gam.max() <= 1.3 and gam.max() - gam.min() > 0.5
    assert {r["crop"][2] for r in recs} == {round(0.9 * S)}
    assert all(0 <= r["crop"][0] <= S - r["crop"][2] and 0 <= r["crop"][1] <= S - r["crop"][2] for r in recs)


def test_strong_applies_at_most_two_distinct_effects_and_outputs_stay_in_range():
    g = torch.Generator().manual_seed(3)
    counts = set()
    for _ in range(60):
        x, y, chosen = randomize(torch.rand(1, S, S), _disc(), "strong", g)
        counts.add(len(chosen))
        assert len(set(chosen)) == len(chosen) <= 2
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and set(y.unique().tolist()) <= {0.0, 1.0}
    assert counts == {0, 1, 2}


def test_randomization_is_seeded():
    x = torch.rand(4, 1, S, S, generator=torch.Generator().manual_seed(0))
    y = torch.stack([_disc()] * 4)
    a = randomize_batch(x, y, "strong", torch.Generator().manual_seed(7))
    b = randomize_batch(x, y, "strong", torch.Generator().manual_seed(7))
    c = randomize_batch(x, y, "strong", torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_bad_level_and_effect_names():
    with pytest.raises(ValueError, match="unknown domain randomization level 'wild'; expected one of regular, strong"):
        DomainRandomization(level="wild")
    with pytest.raises(ValueError, match=r"unknown strong effect\(s\) \['glitter'\]"):
        randomize(torch.rand(1, S, S), _disc(), "strong", torch.Generator(), effects=["glitter"])


def test_the_recipe_trains_through_the_fit_loop_and_changes_the_model(toy_run, tmp_path):
    from xrlib.studies.rotation import study
    from xrlib.training import TrainConfig, train_model

    profile, run, _ = toy_run
    kw = dict(train_sets=["Real"], depth=3, base_channels=4, epochs=1, batch_size=8, patience=1)
    dr = train_model(TrainConfig("dr", recipe="domain_randomization", recipe_params={"level": "strong"}, **kw),
                     study.datasets_dir(run), tmp_path, progress=False)
    plain = train_model(TrainConfig("dr", **kw), study.datasets_dir(run), tmp_path, progress=False)
    assert dr.folder != plain.folder
    wa = torch.load(dr.folder / "best.pt", weights_only=False)["model"]
    wb = torch.load(plain.folder / "best.pt", weights_only=False)["model"]
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------ ADDA


def test_adda_losses_on_constant_discriminator_outputs():
    import math

    from xrlib.training.adda import adda_generator_loss, discriminator_loss

    p = 0.8
    logit = torch.full((2, 1, 4, 4), math.log(p / (1 - p)))
    # L_dis with D(z_s) = D(z_t) = p: −log p − log(1 − p)
    assert float(discriminator_loss(logit, logit)) == pytest.approx(-math.log(p) - math.log(1 - p), rel=1e-6)
    xt = torch.zeros(2, 1, 4, 4)
    rec = torch.full_like(xt, 0.5)
    expect = 0.001 * -math.log(p) + 0.01 * 0.25
    assert float(adda_generator_loss(logit, rec, xt)) == pytest.approx(expect, rel=1e-6)
    assert float(adda_generator_loss(logit, rec, xt, adv_weight=0.0, recon_weight=1.0)) == pytest.approx(0.25)


def test_adda_modules_keep_the_pixel_grid_and_bad_level_is_named():
    from xrlib.training.adda import ADDA, pixel_discriminator, reconstruction_decoder

    z = torch.rand(3, 1, 16, 16)
    assert pixel_discriminator(4)(z).shape == z.shape and reconstruction_decoder(4)(z).shape == z.shape
    with pytest.raises(ValueError, match="adda: unknown level 'wild'"):
        ADDA(level="wild")


def test_adda_trains_through_the_fit_loop_and_updates_its_discriminator(toy_run, tmp_path):
    from xrlib.studies.rotation import study
    from xrlib.training import TrainConfig, train_model

    profile, run, _ = toy_run
    ddir = study.datasets_dir(run)
    target = os.path.relpath(ddir, tmp_path)  # relative to the models root, as the chapter gives it
    cfg = TrainConfig("adda", train_sets=["Syn_all"], depth=3, base_channels=4, epochs=1, batch_size=8, patience=1,
                      recipe="adda", recipe_params={"target_dir": target, "level": "regular", "width": 4})
    res = train_model(cfg, ddir, tmp_path, progress=False)
    ck = torch.load(res.folder / "last.pt", weights_only=False)
    torch.manual_seed(0)
    from xrlib.training.adda import pixel_discriminator

    fresh = pixel_discriminator(4).state_dict()
    trained = ck["extra"]["adda_discriminator"]
    assert set(trained) == set(fresh) and "adda_decoder" in ck["extra"] and "adda_discriminator" in ck["extra_optimizers"]
    assert ck["extra_optimizers"]["adda_discriminator"]["state"]  # its Adam took steps


def test_adda_without_target_images_names_the_folder(toy_run, tmp_path):
    from xrlib.core.errors import InputError
    from xrlib.studies.rotation import study
    from xrlib.training.adda import ADDA

    _, run, _ = toy_run
    with pytest.raises(InputError, match="adda: no 'nowhere' train images"):
        ADDA(target_dir=str(study.datasets_dir(run)), target_pool="nowhere").target_images()


# ------------------------------------------------------------------------------ CycleGAN parts


def test_patchgan_sees_70_pixels_and_the_generator_keeps_shape_and_range():
    from xrlib.nets.cyclegan import PatchDiscriminator, ResnetGenerator, generator_blocks, receptive_field

    assert receptive_field(PatchDiscriminator(4)) == 70
    assert (generator_blocks(128), generator_blocks(255), generator_blocks(256), generator_blocks(512)) == (6, 6, 9, 9)
    g = ResnetGenerator(blocks=2, width=4)
    assert sum(isinstance(m, torch.nn.Module) and type(m).__name__ == "_ResBlock" for m in g.modules()) == 2
    x = torch.rand(2, 1, 32, 32)
    y = g(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert PatchDiscriminator(4)(torch.rand(1, 1, 70, 70)).shape[-1] >= 1


def test_cyclegan_losses_on_constructed_inputs():
    from xrlib.nets.cyclegan import CYCLE_WEIGHT, cycle_loss, lsgan_loss

    assert CYCLE_WEIGHT == 10.0
    assert float(lsgan_loss(torch.full((2, 1, 3, 3), 0.5), True)) == pytest.approx(0.25)
    assert float(lsgan_loss(torch.full((2, 1, 3, 3), 0.5), False)) == pytest.approx(0.25)
    assert float(lsgan_loss(torch.ones(1, 1, 2, 2), True)) == 0.0
    x = torch.zeros(1, 1, 4, 4)
    assert float(cycle_loss(x, x + 0.1)) == pytest.approx(1.0)  # 10 · 0.1


def test_affine_stays_within_its_stated_scale_rotation_and_shear():
    m = _disc(cy=24.0, cx=24.0, r=8.0)
    for seed in range(20):
        _, yi = _affine(m.clone(), m.clone(), torch.Generator().manual_seed(seed))
        # scale 0.9–1.1 and shear ≤ 10°: the disc's area changes by at most (1.1² ≈ 1.21) and keeps most of it
        assert 0.7 < float(yi.sum() / m.sum()) < 1.35
