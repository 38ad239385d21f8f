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
from xrlib.attacks.pose import PoseChain, PoseSearch, PoseThreat, grid_poses, pose_bounds, search_pose
from xrlib.core.ct import Volume, load_example
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile, load_profile
from xrlib.data.preprocess import preprocess
from xrlib.drr import DifferentiableRenderer
from xrlib.drr.geometry import Geometry, Pose
from xrlib.drr.render import render_batch
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
    return PoseChain(DifferentiableRenderer(ct, clav, Geometry().resized(S), device="cpu", step_mm=2.8), S)


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


def test_search_never_ends_worse_than_its_grid_start_and_stays_in_bounds(chain32):
    net = tiny_net(2)
    search = PoseSearch(grid_alpha=3, grid_tilt=2, steps=3, step_fraction=0.5)
    for budget in (5.0, 10.0):
        res = search_pose(net, chain32, budget, search)
        lim = pose_bounds(budget)
        assert res.grid_objective == pytest.approx(res.grid_objectives.max())
        np.testing.assert_array_equal(res.grid_pose, res.grid[np.argmax(res.grid_objectives)])
        assert res.objective >= res.grid_objective
        assert res.objective == pytest.approx(res.path_objective.max())
        assert len(res.path) == search.steps + 1 and np.any(res.path[-1] != res.path[0])  # it moved
        assert np.all(np.abs(res.path) <= lim + 1e-6) and np.all(np.abs(res.pose) <= lim + 1e-6)
    zero = search_pose(net, chain32, 0.0, search)  # budget 0: the neutral pose only
    assert np.all(zero.pose == 0) and len(zero.path) == 1


def _threat(chain):
    return PoseThreat(lambda sid: chain, grid=[10.0], search=PoseSearch(grid_alpha=2, grid_tilt=1, steps=1))


def _test_images():
    rows = pd.DataFrame({"subject": ["toy-v000"], "alpha": [0.0], "tilt": [0.0], "shift_x": [0.0], "shift_y": [0.0],
                         "shift_z": [0.0]})
    return TestImages(np.zeros((1, S, S), np.float32), np.zeros((1, S, S), np.float32), rows)


def test_truth_is_the_mask_rendered_at_the_found_pose(small, chain32):
    th = _threat(chain32)
    out = th.apply(tiny_net(3), _test_images(), 10.0)
    pose = out.extra[["pose_alpha", "pose_tilt", "pose_shift_x", "pose_shift_y", "pose_shift_z"]].to_numpy(float)[0]
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
    assert {"pose_alpha", "pose_tilt", "pose_shift_x", "pose_shift_y", "pose_shift_z", "dice_grid"} <= set(a.columns)
    assert list(a["budget"]) == [0.0, 10.0] and set(a["threat"]) == {"pose"} and set(a["budget_unit"]) == {"deg"}
    assert a["dice_vs_clean_pred"].iloc[0] == 1.0 and np.isnan(a["dice_vs_clean_pred"].iloc[1])
    assert a["alpha"].iloc[1] == a["pose_alpha"].iloc[1]
    pd.testing.assert_frame_equal(a, b)


def test_pose_block_of_every_profile_and_bad_settings():
    from xrlib.studies.pose.config import PoseConfig
    from xrlib.studies.robustness import THREATS

    for name in ("smoke", "quick", "paper"):
        cfg = PoseConfig.from_profile(load_profile(name))
        assert cfg.budgets and np.isclose(cfg.budgets, cfg.defense.budget).any()
    raw = copy.deepcopy(load_profile("smoke").raw)
    raw["pose"]["budgets"] = [10, 45]
    with pytest.raises(InputError, match="pose.budgets: the renderer supports"):
        PoseConfig.from_profile(Profile.from_mapping(raw, "bad.yml"))
    raw["pose"] = {"steps": "many"}
    with pytest.raises(InputError, match="pose.steps: expected a number"):
        PoseConfig.from_profile(Profile.from_mapping(raw, "bad.yml"))
    with pytest.raises(InputError, match="threat 'pose': bad options \\['norm'\\]"):
        THREATS["pose"](load_profile("smoke"), None, norm="l2")
