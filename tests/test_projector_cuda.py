"""The ``torch`` backend on CUDA: nanodrr's fused Triton kernel against analytic answers and the CPU path.

These tests need a CUDA GPU and are reported as skipped (with the reason) on machines without one,
such as this project's CI. They pin what only a GPU exercises: the fused kernel (not the
``grid_sample`` path the CPU uses), and :class:`~xrlib.drr.projector.TorchProjector` rendering every pose
of a call in one launch instead of row chunks.
"""

import numpy as np
import pytest
import torch

from xrlib.drr.geometry import Geometry, Pose
from xrlib.drr.projector import TorchProjector

from phantoms import sphere_chords, sphere_volume

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nanodrr's fused Triton kernel)")

RADIUS, CENTRE = 25.0, np.array([4.0, -6.0, 3.0])


@pytest.fixture(scope="module")
def sphere():
    return sphere_volume(RADIUS, 136, 0.5, CENTRE)


def test_the_fused_kernel_is_the_path_taken_on_cuda(sphere):
    from nanodrr.drr.backends import pick_fused_backend

    proj = TorchProjector(device="cuda")
    subject = proj.subject(sphere)
    rt = torch.eye(4, device="cuda")[None]
    tgt = torch.zeros(1, 16, 3, device="cuda")
    assert pick_fused_backend(subject, rt, tgt, 4, 4) == "triton"


def test_sphere_chord_lengths_on_cuda(sphere):
    g = Geometry(height=48, width=48, pitch=1.5)
    poses = [Pose(alpha=a) for a in (-15.0, 0.0, 15.0)]
    imgs = TorchProjector(device="cuda").project([sphere], g, poses, np.zeros(3))[:, 0]
    for pose, img in zip(poses, imgs):
        chord = sphere_chords(g, pose, CENTRE, RADIUS)
        sel = chord > 20.0
        assert sel.sum() > 200
        rel = np.abs(img[sel] - chord[sel]) / chord[sel]
        assert rel.max() < 0.01, f"α={pose.alpha}: max relative chord error {rel.max():.4f}"


def test_cuda_batch_matches_the_cpu_path_pose_by_pose(sphere):
    g = Geometry(height=40, width=56, pitch=1.5)  # not square: rows and columns cannot be swapped
    poses = [Pose(alpha=a, tilt=t, shift=(s, 0.0, -s)) for a, t, s in ((-20.0, 3.0, 5.0), (0.0, 0.0, 0.0), (12.0, -2.0, -4.0))]
    cuda = TorchProjector(device="cuda").project([sphere], g, poses, np.zeros(3))
    cpu = np.concatenate([TorchProjector(device="cpu").project([sphere], g, [p], np.zeros(3)) for p in poses])
    assert cuda.shape == cpu.shape == (3, 1, 40, 56)
    scale = float(np.abs(cpu).max())
    assert scale > 40.0
    # Same samples and trilinear weights; only float32 summation order differs.
    assert float(np.abs(cuda - cpu).max()) < 1e-3 * scale
