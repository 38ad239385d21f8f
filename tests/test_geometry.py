"""Geometry conventions pinned with pinhole maths (see the xrlib.drr.geometry docstring)."""

import numpy as np
import pytest

from xrlib.drr.geometry import (
    Geometry,
    Pose,
    complete_ray_field,
    pose_matrix,
    project_points,
    rays_in_patient_frame,
)

ISO = np.array([12.0, -30.0, 250.0])  # an arbitrary isocenter: nothing may assume the origin
G = Geometry()  # the paper's geometry: SID 1500, SDD 1800, 1800² px at 0.24 mm


def rc(point, pose=Pose(), g=G, iso=ISO):
    return project_points(g, pose, iso, np.asarray(point, float))[0]


def test_paper_defaults():
    assert (G.sid, G.sdd, G.height, G.width, G.pitch) == (1500.0, 1800.0, 1800, 1800, 0.24)
    assert G.magnification == pytest.approx(1.2)
    assert G.pitch_iso == pytest.approx(0.2)


def test_isocenter_projects_to_detector_centre():
    assert rc(ISO) == pytest.approx([899.5, 899.5])


def test_display_convention_patient_left_is_image_right_superior_is_top():
    row, col = rc(ISO + [10.0, 0, 0])  # 10 mm towards the patient's left
    assert col - 899.5 == pytest.approx(10.0 * 1.2 / 0.24)
    assert row == pytest.approx(899.5)
    row, col = rc(ISO + [0, 0, 10.0])  # 10 mm superior
    assert row - 899.5 == pytest.approx(-10.0 * 1.2 / 0.24)
    assert col == pytest.approx(899.5)


def test_magnification_grows_towards_the_source():
    # A point 100 mm posterior (towards the source in PA) is magnified by SDD/(SID-100).
    _, col = rc(ISO + [10.0, 100.0, 0])
    assert (col - 899.5) * 0.24 == pytest.approx(10.0 * 1800.0 / 1400.0)
    _, col = rc(ISO + [10.0, -100.0, 0])
    assert (col - 899.5) * 0.24 == pytest.approx(10.0 * 1800.0 / 1600.0)


@pytest.mark.parametrize("alpha", [-20.0, -10.0, 10.0, 20.0])
def test_alpha_sign_posterior_structures_move_to_image_left_for_positive_alpha(alpha):
    d = 80.0  # a spine-like point posterior of the isocenter
    x = -d * np.sin(np.deg2rad(alpha))  # room x after R_z(alpha)
    y = d * np.cos(np.deg2rad(alpha))
    _, col = rc(ISO + [0, d, 0], Pose(alpha=alpha))
    assert (col - 899.5) * 0.24 == pytest.approx(x * 1800.0 / (1500.0 - y))
    assert np.sign(col - 899.5) == -np.sign(alpha)


def test_tilt_sign_head_moves_towards_detector():
    h, t = 100.0, 10.0
    row, _ = rc(ISO + [0, 0, h], Pose(tilt=t))
    y = -h * np.sin(np.deg2rad(t))  # anterior (towards the detector)
    z = h * np.cos(np.deg2rad(t))
    assert (899.5 - row) * 0.24 == pytest.approx(z * 1800.0 / (1500.0 - y))


def test_shift_translates_in_the_room():
    _, col = rc(ISO, Pose(shift=(5.0, 0.0, 0.0)))
    assert (col - 899.5) * 0.24 == pytest.approx(5.0 * 1.2)


def test_pose_matrix_is_rigid_and_fixes_the_isocenter():
    m = pose_matrix(Pose(alpha=17.0, tilt=-4.0), ISO)
    assert m[:3, :3] @ m[:3, :3].T == pytest.approx(np.eye(3))
    assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0)
    assert m[:3, :3] @ ISO + m[:3, 3] == pytest.approx(ISO)


def test_pixel_centres_and_camera_agree_with_project_points():
    g = Geometry(height=40, width=60, pitch=2.0)
    pose = Pose(alpha=13.0, tilt=3.0, shift=(1.0, -2.0, 4.0))
    rays = rays_in_patient_frame(g, pose, ISO)
    pix = rays.pixel_centers()
    assert pix.shape == (40, 60, 3)
    # A point halfway along the ray of pixel (7, 41) projects back onto that pixel.
    p = 0.5 * (rays.source + pix[7, 41])
    assert project_points(g, pose, ISO, p)[0] == pytest.approx([7.0, 41.0])
    cam = rays.camera_to_patient()
    local = np.array([(41 + 0.5 - 30) * 2.0, (7 + 0.5 - 20) * 2.0, 1800.0, 1.0])
    assert (cam @ local)[:3] == pytest.approx(pix[7, 41])
    assert np.linalg.norm(rays.detector - rays.source) == pytest.approx(1800.0)


def test_resized_keeps_the_field_of_view():
    g = G.resized(256)
    assert g.height * g.pitch == pytest.approx(1800 * 0.24)


def test_from_render_is_the_profiles_square_detector_at_paper_distances():
    from xrlib.core.profiles import load_profile

    paper = load_profile("paper")
    g = Geometry.from_render(paper.render)
    assert (g.height, g.width, g.sid, g.sdd) == (1800, 1800, 1500.0, 1800.0)
    assert g.pitch == paper.render.field_mm / 1800 == paper.render.pitch_mm


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sid=1800.0, sdd=1500.0), "need 0 < sid < sdd"),
        (dict(height=0), "detector size must be positive"),
        (dict(pitch=-0.1), "detector pitch must be positive"),
    ],
)
def test_bad_geometry(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Geometry(**kwargs)


def test_complete_ray_field_cuts_rays_through_superior_and_inferior_faces():
    # A 200 mm box (1 mm voxels) centred on the isocenter, with SI extent 100 mm.
    shape = (200, 200, 100)
    a = np.eye(4)
    a[:3, 3] = -(np.array(shape) - 1) / 2.0
    g = Geometry(height=101, width=101, pitch=4.0)
    rays = rays_in_patient_frame(g, Pose(), np.zeros(3))
    fld = complete_ray_field(rays, a, shape)
    assert fld[50, 50] and fld[50, 0] and fld[50, 100]
    # The top face (z = +50 mm) seen from the source: its near (posterior) edge y=+100 projects
    # higher than its far edge y=-100; the last complete row is set by the far edge... and the
    # first complete row lies between them.
    near = project_points(g, Pose(), np.zeros(3), [0, 100.0, 50.0])[0, 0]
    far = project_points(g, Pose(), np.zeros(3), [0, -100.0, 50.0])[0, 0]
    assert near < far
    col = fld[:, 50]
    first = int(np.argmax(col))
    assert far - 1 <= first <= far + 1
    assert not col[: int(np.floor(near))].any()  # rays passing above the box are cut too
    assert (col == col[::-1]).all()  # symmetric bottom face
