"""The differentiable renderer (xrlib.drr.diffrender) and the torch post-/pre-processing chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrlib.anatomy.annotate import clavicles_from_labels
from xrlib.core.ct import Volume, load_example
from xrlib.data.preprocess import preprocess, preprocess_torch, resize_pad_torch
from xrlib.drr import DifferentiableRenderer
from xrlib.drr.geometry import Geometry, Pose, rays_in_patient_frame, rays_torch
from xrlib.drr.physics import postprocess, postprocess_torch
from xrlib.drr.render import render_batch

POSES = [Pose(0.0), Pose(12.0, 3.0, (6.0, -4.0, 10.0)), Pose(-17.0, -2.0, (-8.0, 5.0, -6.0))]


def as_tensors(poses, dtype=torch.float32):
    return (torch.tensor([p.alpha for p in poses], dtype=dtype), torch.tensor([p.tilt for p in poses], dtype=dtype),
            torch.tensor([p.shift for p in poses], dtype=dtype))


@pytest.fixture(scope="module")
def example():
    ct, labels = load_example()
    return ct, labels, clavicles_from_labels(labels)


@pytest.fixture(scope="module")
def renderer64(example):
    ct, _, clav = example
    g = Geometry().resized(64)
    return DifferentiableRenderer(ct, clav, g, device="cpu"), render_batch(ct, clav, g, POSES, backend="rtk")


@pytest.fixture(scope="module")
def coarse64(example):
    """The example CT and clavicles at half the in-plane resolution, in float64 (gradient checks)."""
    ct, labels, _ = example
    half = lambda v, a: Volume(np.ascontiguousarray(a[:, ::2, ::2]), (v.spacing[0] * 2, v.spacing[1] * 2, v.spacing[2]),  # noqa: E731
                               v.origin, v.direction, v.source)
    small_ct = half(ct, ct.array)
    clav = clavicles_from_labels(half(labels, labels.array))
    return DifferentiableRenderer(small_ct, clav, Geometry().resized(24), device="cpu", dtype=torch.float64)


def test_torch_rays_equal_the_numpy_pose_to_ray_mapping():
    iso = np.array([3.0, -20.0, 140.0])
    g = Geometry().resized(16)
    got = rays_torch(g, *as_tensors(POSES, torch.float64), iso)
    for b, pose in enumerate(POSES):
        r = rays_in_patient_frame(g, pose, iso)
        for tensor, ref in zip(got, (r.source, r.detector, r.e_u, r.e_v)):
            np.testing.assert_allclose(tensor[b].numpy(), ref, atol=1e-9)


def test_image_agrees_with_rtk_over_the_complete_ray_field_and_masks_match(renderer64):
    r, ref = renderer64
    out = r(*as_tensors(POSES))
    assert out.image.shape == out.mask_left.shape == out.field.shape == (3, 64, 64)
    for b, rg in enumerate(ref):
        f = rg.field
        np.testing.assert_array_equal(out.field[b].numpy(), f)  # same padded grid, same field
        img = out.image[b].numpy()
        assert np.linalg.norm(img[f] - rg.image[f]) / np.linalg.norm(rg.image[f]) < 0.03
        assert np.all(img[~f] == 0)
        for mask, rtk_mask in ((out.mask_left[b], rg.mask_left), (out.mask_right[b], rg.mask_right)):
            binary = (mask.numpy() >= 0.5).astype(np.uint8)  # render_batch's default threshold
            assert rtk_mask.sum() > 10 and np.mean(binary != rtk_mask) < 0.01


def test_with_the_prefilter_the_renderer_marches_what_render_batch_projects(example):
    """prefilter=True on both: the block-averaged μ (2.8 mm voxels at 128², the quick pose chapter's
    size) agrees with rtk over the field as the unfiltered one does, and the masks still match."""
    ct, _, clav = example
    g = Geometry(height=128, width=128, pitch=432.0 / 128)
    r = DifferentiableRenderer(ct, clav, g, device="cpu", prefilter=True)
    assert r.mu_volume.spacing[0] == pytest.approx(4 * ct.spacing[0])
    out = r(*as_tensors(POSES[:1]))
    rg = render_batch(ct, clav, g, POSES[:1], backend="rtk", prefilter=True)[0]
    f = rg.field
    img = out.image[0].numpy()
    assert np.linalg.norm(img[f] - rg.image[f]) / np.linalg.norm(rg.image[f]) < 0.03
    assert np.mean((out.mask_left[0].numpy() >= 0.5).astype(np.uint8) != rg.mask_left) < 0.01


def test_a_batch_equals_the_poses_rendered_one_by_one(renderer64):
    r, _ = renderer64
    batch = r(*as_tensors(POSES))
    for b, pose in enumerate(POSES):
        one = r(*as_tensors([pose]))
        for name in ("image", "mask_left", "mask_right"):
            np.testing.assert_allclose(getattr(one, name)[0].numpy(), getattr(batch, name)[b].numpy(), rtol=1e-5, atol=1e-6)


def test_pose_gradients_agree_with_central_finite_differences(coarse64):
    """d image/d(α, tilt, shift) of a random weighting of the image, float64, vs central differences.

    Tolerance: 1 % relative with h = 1e-4 (° or mm). Bilinear sampling makes the image piecewise
    smooth in the pose, with kinks wherever a sample crosses a voxel boundary, so central differences
    converge to the gradient only as h → 0 (at h = 0.01° they are off by a few %, at 1e-4 by < 0.1 %).
    Pixels whose field changes within ±h are left out.
    """
    r = coarse64
    pose = Pose(8.0, 2.0, (3.0, -2.0, 5.0))
    a, t, s = (x.clone().requires_grad_(True) for x in as_tensors([pose], torch.float64))
    out = r(a, t, s)
    v = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 24, 24)))
    h = 1e-4
    steps = {"alpha": (h, 0, (0, 0, 0)), "tilt": (0, h, (0, 0, 0)), "sx": (0, 0, (h, 0, 0)),
             "sy": (0, 0, (0, h, 0)), "sz": (0, 0, (0, 0, h))}
    moved = {k: [Pose(pose.alpha + sg * da, pose.tilt + sg * dt, tuple(x + sg * d for x, d in zip(pose.shift, ds)))
                 for sg in (1, -1)] for k, (da, dt, ds) in steps.items()}
    keep = out.field.clone()
    for p_plus, p_minus in moved.values():
        for p in (p_plus, p_minus):
            keep &= r.fields(np.array([p.alpha]), np.array([p.tilt]), np.array([p.shift]))
    w = v * keep
    (out.image * w).sum().backward()
    grads = {"alpha": a.grad[0], "tilt": t.grad[0], "sx": s.grad[0, 0], "sy": s.grad[0, 1], "sz": s.grad[0, 2]}
    with torch.no_grad():
        for k, (p_plus, p_minus) in moved.items():
            fd = ((r(*as_tensors([p_plus], torch.float64)).image - r(*as_tensors([p_minus], torch.float64)).image) * w).sum() / (2 * h)
            assert float(grads[k]) == pytest.approx(float(fd), rel=0.01, abs=1e-6), k


def test_mask_path_lengths_are_differentiable_wrt_the_pose(coarse64):
    a = torch.tensor([5.0], dtype=torch.float64, requires_grad=True)
    out = coarse64(a)
    out.mask_left.sum().backward()
    assert torch.isfinite(a.grad).all() and float(a.grad.abs()) > 0


def test_volume_gradient_through_the_mu_leaf(coarse64):
    """The image is linear in μ, so ⟨∂L/∂μ, μ⟩ equals L for any weighting L of the image."""
    r = coarse64
    r.mu.requires_grad_(True)
    try:
        out = r(torch.tensor([4.0], dtype=torch.float64))
        w = torch.from_numpy(np.random.default_rng(1).uniform(size=(1, 24, 24)))
        loss = (out.image * w).sum()
        loss.backward()
        assert r.mu.grad.shape == r.mu.shape == r.mu_volume.array.shape
        assert float((r.mu.grad * r.mu.detach()).sum()) == pytest.approx(loss.item(), rel=1e-9)
    finally:
        r.mu.requires_grad_(False)
        r.mu.grad = None


def test_torch_postprocess_and_preprocess_equal_the_numpy_dataset_path(renderer64):
    """rg.display = postprocess(image, field, pitch) and preprocess(display, mask, size), as data.recipes.

    Tolerance: 2e-5 absolute on [0, 1] images (float32 in torch vs float64 percentiles and blur
    in numpy); binarised masks identical.
    """
    r, ref = renderer64
    g = r.geometry
    img = torch.from_numpy(np.stack([rg.image for rg in ref]))
    fld = torch.from_numpy(np.stack([rg.field for rg in ref]))
    shown = postprocess_torch(img, fld, pitch_mm=g.pitch)
    for b, rg in enumerate(ref):
        np.testing.assert_allclose(shown[b].numpy(), postprocess(rg.image, rg.field, pitch_mm=g.pitch), atol=2e-5)
    for size in (32, 48, 80):
        net = preprocess_torch(shown, size)
        masks = resize_pad_torch(torch.from_numpy(np.stack([rg.mask for rg in ref])).float(), size) >= 0.5
        for b, rg in enumerate(ref):
            want_img, want_mask = preprocess(postprocess(rg.image, rg.field, pitch_mm=g.pitch), rg.mask, size)
            np.testing.assert_allclose(net[b].numpy(), want_img, atol=2e-5)
            np.testing.assert_array_equal(masks[b].numpy().astype(np.uint8), want_mask)


def test_torch_postprocess_blur_matches_scipy_at_wide_kernels():
    from scipy import ndimage

    from xrlib.drr.physics import gaussian_filter_torch

    x = np.random.default_rng(2).normal(size=(2, 9, 13))
    for sigma in (0.7, 3.0, 12.0):  # the widest kernel reflects more than once
        want = np.stack([ndimage.gaussian_filter(im, sigma) for im in x])
        np.testing.assert_allclose(gaussian_filter_torch(torch.from_numpy(x), sigma).numpy(), want, atol=1e-12)


def test_the_chain_to_the_network_input_is_differentiable(renderer64):
    r, _ = renderer64
    a = torch.tensor([6.0], requires_grad=True)
    out = r(a)
    net = preprocess_torch(postprocess_torch(out.image, out.field, pitch_mm=r.geometry.pitch), 32)
    (net * torch.linspace(0, 1, 32)).sum().backward()
    assert torch.isfinite(a.grad).all() and float(a.grad.abs()) > 0


def test_unsupported_physics_and_out_of_range_poses_are_refused(example, renderer64):
    ct, _, clav = example
    with pytest.raises(ValueError, match="physics"):
        DifferentiableRenderer(ct, clav, Geometry().resized(8), physics="realistic", device="cpu")
    with pytest.raises(ValueError, match="45°"):
        renderer64[0](torch.tensor([60.0]))


def test_gaussian_smoothing_of_mu_keeps_mass_and_matches_the_analytic_kernel():
    """A unit voxel smoothed by σ = 1 mm on an anisotropic grid: the mass is kept, the centre sits where it
    was, and the second moment along each axis is σ² (mm²)."""
    from xrlib.drr.diffrender import gaussian_smooth

    arr = np.zeros((9, 21, 21), np.float32)  # (k, j, i)
    arr[4, 10, 10] = 1.0
    vol = Volume(arr, (0.5, 0.5, 2.0), (-5.0, -5.0, -8.0))
    out = gaussian_smooth(vol, 1.0)
    a = out.array.astype(float)
    assert a.sum() == pytest.approx(1.0, rel=1e-3)
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in a.shape], indexing="ij")
    pts = np.stack([ii, jj, kk, np.ones_like(ii)], -1).reshape(-1, 4) @ out.index_to_world.T
    w = a.reshape(-1)
    mean = (pts[:, :3] * w[:, None]).sum(0)
    np.testing.assert_allclose(mean, vol.index_to_world[:3] @ [10, 10, 4, 1], atol=1e-4)
    var = ((pts[:, :2] - mean[:2]) ** 2 * w[:, None]).sum(0)  # in-plane: σ = 2 voxels, well resolved
    np.testing.assert_allclose(var, [1.0, 1.0], rtol=0.02)
    assert gaussian_smooth(vol, 1.0).array.shape[0] > arr.shape[0]  # a margin: no mass cut at the faces


def test_smoothed_renderer_stays_close_to_the_unsmoothed_one_and_refuses_a_bad_sigma(example, renderer64):
    ct, _, clav = example
    g = Geometry().resized(64)
    smooth = DifferentiableRenderer(ct, clav, g, device="cpu", smooth_mm=1.0)
    a, b = renderer64[0](*as_tensors(POSES[:2])), smooth(*as_tensors(POSES[:2]))
    rel = float((a.image - b.image).norm() / a.image.norm())
    assert 0 < rel < 0.05
    assert torch.equal(a.mask_left, b.mask_left)  # masks are never smoothed
    with pytest.raises(ValueError, match="smooth_mm must be a finite number ≥ 0"):
        DifferentiableRenderer(ct, clav, g, device="cpu", smooth_mm=-1.0)
