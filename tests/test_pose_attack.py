"""The worst-case pose threat (xrlib.attacks.pose) and chapter 12's settings (xrlib.studies.pose)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from xrlib.anatomy.annotate import clavicles_from_labels
from xrlib.attacks.base import TestImages, score_threat
from xrlib.attacks.pgd import dice_objective
from xrlib.attacks.pose import (GRADIENT_RTOL, METHODS, PARAM_COLUMNS, PARAMS, PoseChain, PoseSearch, PoseThreat,
                                derivative_check, gradient_check, grid_poses, image_gradient_check, lhs_poses, pose_bounds,
                                pose_offsets, random_poses, search_objective, search_pose)
from xrlib.core.ct import Volume, load_example
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile, load_profile
from xrlib.data.preprocess import preprocess
from xrlib.drr import DifferentiableRenderer
from xrlib.drr.geometry import Geometry, Pose
from xrlib.drr.render import render_batch
from xrlib.eval.metrics import dice
from xrlib.eval.robustness import CONTRACT_COLUMNS
from xrlib.nets.unet import build_unet

S = 32


@pytest.fixture(scope="module")
def small():  # noqa: D401
    """The example CT and clavicles at a quarter of the in-plane resolution (fewer voxels to march)."""
    ct, labels = load_example()
    half = lambda v: Volume(np.ascontiguousarray(v.array[:, ::4, ::4]), (v.spacing[0] * 4, v.spacing[1] * 4, v.spacing[2]),  # noqa: E731
                            v.origin, v.direction, v.source)
    return half(ct), clavicles_from_labels(half(labels))


@pytest.fixture(scope="module")
def chain32(small):
    ct, clav = small
    g = Geometry().resized(S)
    return PoseChain(DifferentiableRenderer(ct, clav, g, device="cpu", step_mm=2.8), S,
                     guide=DifferentiableRenderer(ct, clav, g, device="cpu", step_mm=2.8, fov="none", smooth_mm=1.0))


def tiny_net(seed: int = 0, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_unet(3, 4).to(dtype).eval()


def test_bounds_and_grid_of_a_budget():
    np.testing.assert_allclose(pose_bounds(8), [8, 2, 8, 8, 8])
    g = grid_poses(8, 3, 2)
    assert g.shape == (6, 5) and np.all(g[:, 2:] == 0)
    assert sorted(set(g[:, 0])) == [-8, 0, 8] and sorted(set(g[:, 1])) == [-2, 2]
    with pytest.raises(InputError, match="budget must be a finite number ≥ 0"):
        pose_bounds(-1)
    with pytest.raises(InputError, match="step_fraction"):
        PoseSearch(step_fraction=0)
    with pytest.raises(InputError, match="starts must be ≥ 1"):
        PoseSearch(starts=0)
    with pytest.raises(InputError, match="method must be one of gradient, random"):
        search_pose(tiny_net(), None, 5.0, method="grid")


def test_gradient_of_the_whole_chain_agrees_with_central_differences(small):
    """d(1 − soft Dice)/d pose through renderer → post-processing → preprocessing → U-Net, in float64:
    within 2% of central differences (h = 1e-3 deg or mm) plus 1e-3 of the largest component."""
    ct, clav = small
    chain = PoseChain(DifferentiableRenderer(ct, clav, Geometry().resized(16), device="cpu", dtype=torch.float64), 16)
    net = tiny_net(1, torch.float64)
    for p in net.parameters():
        p.requires_grad_(False)
    base = torch.tensor([6.0, 1.5, 3.0, -2.0, 4.0], dtype=torch.float64)
    _, truth = chain(base[None])  # fixed target: the function of the pose is then smooth

    def f(pose):
        return dice_objective(net(chain(pose[None])[0]), truth).sum()

    p = base.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(p), p)
    h = 1e-3
    fd = torch.stack([(f(base + h * e) - f(base - h * e)) / (2 * h) for e in torch.eye(5, dtype=torch.float64)])
    assert fd.abs().max() > 1e-5  # the chain depends on the pose
    tol = 0.02 * fd.abs() + 1e-3 * fd.abs().max()
    assert torch.all((g - fd).abs() <= tol), (g, fd)


def test_latin_hypercube_starts_cover_every_dimension_and_random_poses_fill_the_box():
    n = 7
    p = lhs_poses(8.0, n, seed=3)
    lim = pose_bounds(8.0)
    assert p.shape == (n, 5) and np.all(np.abs(p) <= lim)
    for k in range(5):  # one value in each of n equal slices of every parameter's range
        slices = np.floor((p[:, k] + lim[k]) / (2 * lim[k]) * n).astype(int)
        assert sorted(slices) == list(range(n)), (k, slices)
    np.testing.assert_array_equal(p, lhs_poses(8.0, n, seed=3))  # seeded
    np.testing.assert_allclose(lhs_poses(16.0, n, seed=3), 2 * p)  # the same unit sample, scaled
    assert not np.allclose(p, lhs_poses(8.0, n, seed=4))
    r = random_poses(8.0, 400, seed=3)
    assert np.all(np.abs(r) <= lim) and np.all(r.max(0) > 0.9 * lim) and np.all(r.min(0) < -0.9 * lim)
    np.testing.assert_array_equal(r, random_poses(8.0, 400, seed=3))


def test_guided_gradient_follows_central_differences_at_the_step_scale_and_the_unsmoothed_one_does_not():
    """d(1 − soft Dice)/d pose by autograd vs central differences with h = 0.5° / 0.5 mm (float64, the example
    CT at full resolution, 1.4 mm sampling): the guide (μ smoothed 1 mm, no field mask) agrees within 20 % on
    all five parameters; the scored renderer (unsmoothed, the complete-ray field) fails the same check."""
    ct, labels = load_example()
    clav = clavicles_from_labels(labels)
    g = Geometry().resized(32)
    kw = dict(device="cpu", step_mm=1.4, dtype=torch.float64)
    chain = PoseChain(DifferentiableRenderer(ct, clav, g, **kw), 32,
                      guide=DifferentiableRenderer(ct, clav, g, fov="none", smooth_mm=1.0, **kw))
    net = tiny_net(1, torch.float64)
    pose = [6.0, 1.5, 3.0, -2.0, 4.0]
    guided = gradient_check(net, chain, pose, guided=True)
    scored = gradient_check(net, chain, pose, guided=False)
    assert list(guided["param"]) == list(PARAMS) and list(guided["h"]) == [0.5] * 5
    assert guided["central"].abs().max() > 1e-5  # the objective depends on the pose
    assert guided["agrees"].all(), guided
    assert not scored["agrees"].all(), scored
    assert scored["rel_error"].max() > 2 * GRADIENT_RTOL
    # the renderer's share, on the network input alone: the guide's derivative is closer to the step's
    gi, si = image_gradient_check(chain, pose, guided=True), image_gradient_check(chain, pose, guided=False)
    assert not si["agrees"].all() and gi["rel_l2"].max() < si["rel_l2"].max(), (gi, si)
    same = image_gradient_check(chain, pose, h=0.01, h_local=0.01)  # the same step: identical derivatives
    assert same["agrees"].all() and (same["rel_l2"] == 0).all()


def test_pose_offsets_are_seeded_antithetic_gaussian_samples():
    o = pose_offsets(0.5, 16, seed=3)
    assert o.shape == (16, 5)
    np.testing.assert_allclose(o[:8], -o[8:])  # antithetic pairs: zero mean
    np.testing.assert_array_equal(o, pose_offsets(0.5, 16, seed=3))
    assert not np.allclose(o, pose_offsets(0.5, 16, seed=4))
    np.testing.assert_allclose(pose_offsets(1.0, 16, seed=3), 2 * o)  # σ scales one unit sample
    big = pose_offsets(1.0, 4096, seed=0)  # the design samples N(0, σ²) per parameter
    np.testing.assert_allclose(big.std(0), 1.0, atol=0.03)
    assert pose_offsets(0.5, 5, 0).shape == (5, 5) and np.all(pose_offsets(0.5, 5, 0)[-1] == 0)  # odd K: the zero offset
    np.testing.assert_array_equal(pose_offsets(0.0, 16, 0), np.zeros((1, 5)))  # σ = 0: the unsmoothed objective
    np.testing.assert_array_equal(PoseSearch(smooth_pose=0.5, smooth_samples=16, seed=3).offsets, o)
    with pytest.raises(InputError, match="smooth_samples must be ≥ 1 \\(≥ 2 with smooth_pose > 0\\)"):
        PoseSearch(smooth_pose=0.5, smooth_samples=1)
    with pytest.raises(InputError, match="smooth_pose must be ≥ 0"):
        PoseSearch(smooth_pose=-1.0)


def _kinked(pose: torch.Tensor) -> torch.Tensor:
    """A constructed objective: a linear trend (slopes 1, −0.5, 0.8, 1.2, −1 per deg or mm) plus a kinked ripple
    |sin(π θ / 0.3)| of period 0.3 in every parameter whose derivative (up to ±π/0.3 · 0.2 ≈ 2) swamps the trend."""
    slopes = torch.tensor([1.0, -0.5, 0.8, 1.2, -1.0], dtype=pose.dtype)
    return (slopes * pose).sum() + 0.2 * torch.sin(torch.pi * pose / 0.3).abs().sum()


def test_derivative_check_fails_on_a_kinked_objective_and_passes_once_it_is_smoothed_over_the_pose():
    """The check itself: at h = 0.5 the kinked objective's local derivative is the ripple's, not the trend's, so
    it fails; the same objective averaged over K common Gaussian offsets of σ = 0.5 (more than the ripple's
    period) is one deterministic function whose autograd derivative follows its central differences."""
    pose = [0.37, -0.81, 1.13, 0.05, -0.52]
    raw = derivative_check(_kinked, pose)
    assert not raw["agrees"].any() and raw["rel_error"].min() > 2 * GRADIENT_RTOL, raw
    offsets = torch.as_tensor(pose_offsets(0.5, 256, seed=0))
    smooth = derivative_check(lambda q: torch.stack([_kinked(q + d) for d in offsets]).mean(), pose)
    assert smooth["agrees"].all(), smooth
    np.testing.assert_allclose(smooth["central"], [1.0, -0.5, 0.8, 1.2, -1.0], atol=0.15)  # it follows the trend
    few = derivative_check(lambda q: torch.stack([_kinked(q + d) for d in offsets[:2]]).mean(), pose)
    assert not few["agrees"].all(), few  # two offsets do not average the ripple out: the check says so


def test_search_steps_follow_the_checked_objective(chain32):
    """The first sign step of the gradient search is the sign of the derivative that :func:`gradient_check` returns
    for the search's own smoothed objective (same offsets, same truth), so the check is about what the search follows;
    with zero offsets the objective is the unsmoothed one."""
    net = tiny_net(2)
    search = PoseSearch(starts=3, steps=1, step_fraction=0.5, seed=1, smooth_pose=0.5, smooth_samples=4)
    res = search_pose(net, chain32, 10.0, search)
    lim = pose_bounds(10.0)
    check = gradient_check(net, chain32, res.start_pose, offsets=search.offsets)
    move = res.path[1] - res.path[0]
    free = np.abs(res.path[0] + np.sign(check["autograd"].to_numpy()) * 0.5 * lim) < lim  # steps not clipped by the box
    assert free.any()
    np.testing.assert_array_equal(np.sign(move[free]), np.sign(check["autograd"].to_numpy()[free]))
    x, t = chain32(torch.as_tensor(res.start_pose, dtype=torch.float32)[None], guided=True)
    with torch.no_grad():
        one = search_objective(net, chain32, torch.as_tensor(res.start_pose), t, np.zeros((1, 5)))
        ref = dice_objective(net(x), t).sum()
    assert float(one) == pytest.approx(float(ref), rel=1e-6)


def test_gradient_search_scores_starts_and_steps_and_returns_the_lowest_hard_dice(chain32):
    net = tiny_net(2)
    search = PoseSearch(starts=4, steps=3, step_fraction=0.5, seed=1)
    for budget in (5.0, 10.0):
        res = search_pose(net, chain32, budget, search)
        lim = pose_bounds(budget)
        assert res.renders == search.renders == 7 and len(res.candidates) == 7
        np.testing.assert_allclose(res.candidates[:4], lhs_poses(budget, 4, 1))
        assert res.dice == res.candidate_dice.min() and res.dice <= res.start_dice
        assert len(res.path) == search.steps + 1 and np.any(res.path[-1] != res.path[0])  # it moved
        np.testing.assert_allclose(res.candidates[4:], res.path[1:])
        assert np.all(np.abs(res.candidates) <= lim + 1e-6)
        x, t = chain32.render(res.pose[None])  # scored by the unsmoothed chain, by hard Dice
        with torch.no_grad():
            p = torch.sigmoid(net(x))[0, 0].numpy()
        assert dice(p, t[0, 0].numpy()) == pytest.approx(res.dice)
        rnd = search_pose(net, chain32, budget, search, method="random")
        assert rnd.renders == 7 and len(rnd.path) == 1
        np.testing.assert_allclose(rnd.candidates, random_poses(budget, 7, 1))
        assert rnd.dice == rnd.candidate_dice.min()
    zero = search_pose(net, chain32, 0.0, search)  # budget 0: the neutral pose only
    assert np.all(zero.pose == 0) and zero.renders == 0


def test_budgets_are_nested_and_model_independent_renders_are_shared(chain32):
    chain = PoseChain(chain32.renderer, S, guide=chain32.guide)
    search = PoseSearch(starts=3, steps=2, step_fraction=0.5, seed=2)
    for method in METHODS:
        th = PoseThreat(lambda sid: chain, grid=[8.0, 2.0, 4.0], search=search, method=method)
        assert th.budgets() == (0.0, 2.0, 4.0, 8.0)
        for seed in (5, 6):
            net = tiny_net(seed)
            found = [th.result(net, "s", b) for b in (8.0, 4.0, 2.0)][::-1]  # asked largest first
            d = [r.dice for r in found]
            assert d[0] >= d[1] >= d[2], d
            for small, large in zip(found, found[1:]):  # the smaller budget's pose is a candidate
                assert np.any(np.all(np.isclose(large.candidates, small.pose), axis=1))
    n = len(chain.cache)
    th = PoseThreat(lambda sid: chain, grid=[8.0], search=search, method="random")
    th.result(tiny_net(9), "s", 8.0)
    assert len(chain.cache) == n  # a new victim: the random poses' renders are all cached
    th = PoseThreat(lambda sid: chain, grid=[8.0], search=search, method="gradient")
    th.result(tiny_net(9), "s", 8.0)
    assert len(chain.cache) <= n + search.steps  # only its gradient iterates are new renders


def _threat(chain, method="gradient"):
    return PoseThreat(lambda sid: chain, grid=[10.0], search=PoseSearch(starts=2, steps=1), method=method)


def _test_images():
    rows = pd.DataFrame({"subject": ["toy-v000"], "alpha": [0.0], "tilt": [0.0], "shift_x": [0.0], "shift_y": [0.0],
                         "shift_z": [0.0]})
    return TestImages(np.zeros((1, S, S), np.float32), np.zeros((1, S, S), np.float32), rows)


def test_truth_is_the_mask_rendered_at_the_found_pose(small, chain32):
    th = _threat(chain32)
    out = th.apply(tiny_net(3), _test_images(), 10.0)
    pose = out.extra[list(PARAM_COLUMNS)].to_numpy(float)[0]
    assert np.any(pose != 0) and out.rows["alpha"].iloc[0] == pose[0] and out.rows["tilt"].iloc[0] == pose[1]
    # the same renderer rendering the mask directly at that pose
    _, direct = chain32.render(pose[None])
    np.testing.assert_array_equal(out.masks[0], direct[0, 0].numpy().astype(np.uint8))
    # an independent path: the rtk projector at that pose, post-processed and preprocessed as the datasets
    ct, clav = small
    rg = render_batch(ct, clav, Geometry().resized(S), [Pose(pose[0], pose[1], tuple(pose[2:]))], backend="rtk", display=True)[0]
    img, mask = preprocess(rg.display, rg.mask, S)
    assert mask.sum() > 5 and np.mean(mask != out.masks[0]) < 0.02
    assert np.abs(img - out.images[0]).mean() < 0.03
    neutral = th.apply(tiny_net(3), _test_images(), 0.0)
    assert np.any(neutral.masks[0] != out.masks[0])  # the truth moved with the pose


def test_threat_rows_follow_the_results_contract_and_are_deterministic(chain32):
    victims = {"net": tiny_net(4)}
    a = score_threat(_threat(chain32), victims, _test_images(), pixel_mm_iso=13.5)
    b = score_threat(_threat(chain32), {"net": tiny_net(4)}, _test_images(), pixel_mm_iso=13.5)
    assert list(a.columns[: len(CONTRACT_COLUMNS)]) == list(CONTRACT_COLUMNS)
    assert {"search", *PARAM_COLUMNS, "dice_start", "objective", "renders"} <= set(a.columns)
    assert list(a["budget"]) == [0.0, 10.0] and set(a["threat"]) == {"pose"} and set(a["budget_unit"]) == {"deg"}
    assert set(a["search"]) == {"gradient"} and list(a["renders"]) == [0, 3]
    assert a["dice_vs_clean_pred"].iloc[0] == 1.0 and np.isnan(a["dice_vs_clean_pred"].iloc[1])
    assert a["alpha"].iloc[1] == a["pose_alpha_deg"].iloc[1]
    assert a["dice"].iloc[1] == pytest.approx(_threat(chain32).result(victims["net"], "toy-v000", 10.0).dice)
    pd.testing.assert_frame_equal(a, b)
    r = score_threat(_threat(chain32, "random"), victims, _test_images(), pixel_mm_iso=13.5)
    assert set(r["search"]) == {"random"} and list(r["renders"]) == [0, 3]


def test_search_table_counts_which_search_found_worse_poses():
    from xrlib.studies.pose.study import search_table

    rows = []
    for m, dg, dr in (("A", [0.2, 0.5], [0.3, 0.5]), ("B", [0.6, 0.7], [0.4, 0.1])):
        for s, (g, r) in enumerate(zip(dg, dr)):
            rows += [{"model": m, "budget": 10.0, "subject": f"s{s}", "search": "gradient", "dice": g, "renders": 7},
                     {"model": m, "budget": 10.0, "subject": f"s{s}", "search": "random", "dice": r, "renders": 7},
                     {"model": m, "budget": 0.0, "subject": f"s{s}", "search": "random", "dice": 0.9, "renders": 0}]
    # a defended model scored by the gradient search only (at its defense budget) is left out, not an error
    rows += [{"model": "D", "budget": 10.0, "subject": "s0", "search": "gradient", "dice": 0.5, "renders": 7}]
    t = search_table(pd.DataFrame(rows)).set_index("model")
    assert list(t.index) == ["A", "B"]
    assert t.loc["A", "dice_gradient"] == pytest.approx(0.35) and t.loc["A", "difference"] == pytest.approx(-0.05)
    assert (t.loc["A", "gradient_worse"], t.loc["A", "random_worse"], t.loc["A", "ties"]) == (1, 0, 1)
    assert (t.loc["B", "gradient_worse"], t.loc["B", "random_worse"]) == (0, 2) and t.loc["B", "difference"] == pytest.approx(0.4)
    assert set(t["renders_gradient"]) == {7} == set(t["renders_random"])


def test_neutral_comparison_of_the_chain_and_the_dataset_image(chain32):
    from xrlib.studies.pose.study import neutral_comparison

    th = _threat(chain32)
    x, t = chain32.neutral()
    img, mask = x[0, 0].numpy(), t[0, 0].numpy()
    same = TestImages(img[None], mask[None], _test_images().rows)
    net = tiny_net(7)
    c = neutral_comparison(th, {"net": net}, same).iloc[0]
    assert c["rel_l2"] == 0.0 and c["mask_disagreement"] == 0.0 and c["dice_chain"] == c["dice_dataset"]
    other = TestImages((img * 0.5)[None], np.zeros_like(mask)[None], _test_images().rows)
    c = neutral_comparison(th, {"net": net}, other).iloc[0]
    assert c["rel_l2"] == pytest.approx(1.0, abs=1e-6) and c["mask_disagreement"] == pytest.approx(mask.mean())


def test_uniform_pose_control_draws_seeded_poses_in_the_defense_box():
    from xrlib.studies.pose.defense import DEFENSES, uniform_poses

    assert DEFENSES == ("worst-pose", "uniform-pose")
    u = uniform_poses(10.0, ["a", "b"], 3, seed=0)
    assert set(u) == {"a", "b"} and u["a"].shape == (3, 5) and np.all(np.abs(u["a"]) <= pose_bounds(10.0))
    assert not np.allclose(u["a"], u["b"])
    np.testing.assert_array_equal(u["a"], uniform_poses(10.0, ["a", "b"], 3, seed=0)["a"])


def test_pose_block_of_every_profile_and_bad_settings():
    from xrlib.studies.pose.config import PoseConfig
    from xrlib.studies.robustness import THREATS

    for name in ("smoke", "quick", "paper"):
        cfg = PoseConfig.from_profile(load_profile(name))
        assert cfg.budgets and np.isclose(cfg.budgets, cfg.defense.budget).any()
        assert np.isclose(cfg.budgets, cfg.landscape_budget).any() and cfg.search.smooth_mm == 1.0
        assert cfg.search.smooth_pose > 0 and len(cfg.search.offsets) == cfg.search.smooth_samples >= 2
    raw = copy.deepcopy(load_profile("smoke").raw)
    raw["pose"]["budgets"] = [10, 45]
    with pytest.raises(InputError, match="pose.budgets: the renderer supports"):
        PoseConfig.from_profile(Profile.from_mapping(raw, "bad.yml"))
    raw["pose"] = {"steps": "many"}
    with pytest.raises(InputError, match="pose.steps: expected a number"):
        PoseConfig.from_profile(Profile.from_mapping(raw, "bad.yml"))
    raw["pose"] = {"grid": {"alpha": 3, "tilt": 3}}
    with pytest.raises(InputError, match="pose.grid: the \\(α, tilt\\) start grid is gone"):
        PoseConfig.from_profile(Profile.from_mapping(raw, "bad.yml"))
    with pytest.raises(InputError, match="threat 'pose': bad options \\['norm'\\]"):
        THREATS["pose"](load_profile("smoke"), None, norm="l2")
