"""Datasets: profiles, preprocessing, pools and splits, shards + manifest caching, real folders, CLI."""

import copy
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from PIL import Image

from xrlib.core.atomic import sha256_file
from xrlib.data.build import DATASETS_VERSION, build_datasets, dataset_hash
from xrlib.data.pools import POOLS, assign_pools, select, table1
from xrlib.data.preprocess import preprocess, resize_bilinear
from xrlib.data.real import load_real_folder
from xrlib.data.recipes import preprocessing_example
from xrlib.data.shards import MANIFEST_COLUMNS, ShardDataset, pool_samples, read_manifest
from xrlib.data.subjects import SubjectSource, subjects_from_volumes
from xrlib.cli import main
from xrlib.core.ct import Volume
from xrlib.core.errors import InputError
from xrlib.core.profiles import DATASET_KEYS, load_profile, profile_hash, validate_profile

ALPHAS = [float(a) for a in range(-20, 21, 2)]


def tiny_subject(seed: int, n=(40, 40, 24), spacing=8.0):
    """A 'torso' box of soft tissue with lungs and two bar clavicles near the top (73 at +x, 74 at −x)."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = n
    ct = np.full((nz, ny, nx), -1000.0, np.float32)
    lab = np.zeros((nz, ny, nx), np.uint8)
    w = 12 + int(rng.integers(0, 3))
    ct[:, 20 - 8:20 + 8, 20 - w:20 + w] = 40.0
    ct[2:18, 14:24, 10:18] = -800.0
    ct[2:18, 14:24, 22:30] = -800.0
    z = 19 + int(rng.integers(0, 2))
    for sl, val in ((slice(22, 31), 73), (slice(9, 18), 74)):  # +x = patient's left (LPS)
        ct[z:z + 2, 15:17, sl] = 1200.0
        lab[z:z + 2, 15:17, sl] = val
    sp = (spacing,) * 3
    org = tuple(-(k - 1) * spacing / 2 for k in (nx, ny, nz))
    return Volume(ct, sp, org), Volume(lab, sp, org)


def tiny_profile(**over):
    cfg = {
        "name": "tiny", "seed": 3,
        "cohort": {"n_subjects": 7},
        "pools": {"surrogate": {"train": 2, "val": 1, "test": 1}, "syn_train": {"train": 1, "val": 1, "test": 0},
                  "syn_test": {"test": 1}},
        "surrogate": {"poses_per_subject": 2, "alpha_jitter_deg": 2.0, "tilt_jitter_deg": 2.0,
                      "shift_jitter_mm": 5.0, "dose_mas": 2.0},
        "synthetic": {"alphas": {"start": -20, "stop": 20, "step": 2}, "cen_alphas": [-2, 0, 2]},
        "render": {"detector": 32, "field_mm": 432.0, "backend": "rtk", "fov": "pad"},
        "image_size": 24,
        "real": {"folder": None},
    }
    cfg.update(over)
    return validate_profile(cfg, "tiny.yml")


@pytest.fixture(scope="module")
def source():
    return subjects_from_volumes([(f"tiny-v{i:03d}", *tiny_subject(i)) for i in range(7)])


@pytest.fixture(scope="module")
def built(tmp_path_factory, source):
    out = tmp_path_factory.mktemp("dsets")
    cfg = tiny_profile()
    return cfg, out, build_datasets(cfg, out, subjects=source, progress=False)


# ------------------------------------------------------------------------------ preprocess


def test_preprocess_keeps_aspect_ratio_pads_centred_and_binarizes():
    img = np.linspace(-3.0, 5.0, 40 * 80, dtype=np.float32).reshape(40, 80)  # H=40, W=80
    mask = np.zeros((40, 80), np.uint8)
    mask[10:30, 20:60] = 1
    out, m = preprocess(img, mask, 32)
    assert out.shape == m.shape == (32, 32) and out.dtype == np.float32 and m.dtype == np.uint8
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    rows = np.flatnonzero(out.max(1) > 0)
    # 80 → 32 wide, 40 → 16 high, centred: rows 8..23 hold the image, the rest is zero padding.
    assert out[:8].max() == 0 and out[24:].max() == 0 and rows.min() <= 8 and rows.max() == 23
    assert set(np.unique(m)) == {0, 1}
    # The mask box scales by 0.4: 20×40 → 8×16 at rows 8+4..8+12, cols 8..24.
    r, c = np.nonzero(m)
    assert (r.min(), r.max(), c.min(), c.max()) == (12, 19, 8, 23)
    # Intensities: monotone along columns as in the input.
    assert np.all(np.diff(out[16, :]) >= -1e-6)


def test_preprocess_tall_image_pads_columns_and_rejects_mismatched_mask():
    out, m = preprocess(np.random.default_rng(0).random((60, 20)), None, 30)
    assert m is None and out.shape == (30, 30)
    assert out[:, :10].max() == 0 and out[:, 20:].max() == 0 and out[:, 10:20].min() >= 0
    with pytest.raises(ValueError, match="mask shape"):
        preprocess(np.zeros((4, 5)), np.zeros((5, 4)), 8)


# ------------------------------------------------------------------------------ pools, manifest, Table 1


def test_pools_are_subject_disjoint_and_deterministic_and_splits_are_by_subject(built):
    cfg, _, man = built
    per_subject = man.groupby("subject")[["pool", "split"]].nunique()
    assert (per_subject == 1).all().all()  # no subject in two pools or two splits
    a = assign_pools([f"s{i}" for i in range(10)], tiny_profile())
    assert a == assign_pools([f"s{i}" for i in reversed(range(10))], tiny_profile())
    assert a != assign_pools([f"s{i}" for i in range(10)], tiny_profile(seed=4))
    for pool in POOLS:
        for split, n in getattr(cfg.pools, pool).as_dict().items():
            assert man[(man.pool == pool) & (man.split == split)]["subject"].nunique() == n


def test_manifest_columns_physics_and_poses(built):
    from xrlib.drr.acquisition import ACQUISITION_RANGES

    cfg, out, man = built
    # the surrogate is varied: per-image acquisition settings after the standard columns (NaN for the other pools)
    assert list(man.columns) == MANIFEST_COLUMNS + [f"acq_{k}" for k in ACQUISITION_RANGES]
    sur, syn = man[man.pool == "surrogate"], man[man.pool != "surrogate"]
    assert sur["acq_kvp"].between(100, 125).all() and sur["acq_kvp"].nunique() == len(sur)
    assert syn["acq_kvp"].isna().all()
    assert set(sur.physics) == {"realistic"} and set(syn.physics) == {"naive"}
    assert sur.alpha.abs().max() <= 2 and sur.tilt.abs().max() <= 2
    assert sur[["shift_x", "shift_y", "shift_z"]].abs().to_numpy().max() <= 5
    assert (sur.dose_mas == 2.0).all() and syn.dose_mas.isna().all()
    for _, g in syn.groupby("subject"):
        assert sorted(g.alpha) == ALPHAS
    assert json.loads((out / "build.json").read_text(encoding="utf-8"))["complete"] is True
    for rel, g in man.groupby("shard"):
        assert sha256_file(out / rel) == g.checksum.iloc[0]


def test_selections_and_table1_match_the_profile(built):
    cfg, _, man = built
    cen_alphas = cfg.synthetic.cen_alphas
    cen = select(man, "Syn_cen", "train", cen_alphas=cen_alphas)
    assert sorted(set(cen.alpha)) == [-2.0, 0.0, 2.0] and len(cen) == 3 * cfg.pools.syn_train.train
    assert len(select(man, "Syn_all", "train", cen_alphas=cen_alphas)) == 21 * cfg.pools.syn_train.train
    t = table1(man, cen_alphas).set_index(["dataset", "split"])
    P = cfg.surrogate.poses_per_subject
    for split in ("train", "val", "test"):
        n = getattr(cfg.pools.surrogate, split)
        assert t.loc[("Real", split), "subjects"] == n and t.loc[("Real", split), "images"] == n * P
    for split in ("train", "val"):
        n = getattr(cfg.pools.syn_train, split)
        assert t.loc[("Syn_all", split), "images"] == 21 * n and t.loc[("Syn_cen", split), "images"] == 3 * n
        assert t.loc[("Syn_cen", split), "subjects"] == n
    assert t.loc[("Syn_test", "test"), "images"] == 21 and t.loc[("Syn_test", "test"), "subjects"] == 1


def test_shard_dataset_shapes_dtypes_and_filters(built):
    cfg, out, man = built
    d = ShardDataset(out, pool="syn_train", split="train", alphas={-2, 0, 2})
    assert len(d) == 3
    img, mask = d[1]
    S = cfg.image_size
    assert img.shape == mask.shape == (1, S, S) and img.dtype == mask.dtype == torch.float32
    assert 0 <= img.min() and img.max() <= 1 and set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    assert mask.sum() > 0  # the clavicles are visible at α = 0
    loader = torch.utils.data.DataLoader(ShardDataset(man, pool="surrogate"), batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 1, S, S)


def test_pool_samples_spread_over_each_pool_and_match_the_shards(built):
    _, out, man = built
    images, masks, titles = pool_samples(man, out, per_pool=3)
    counts = man["pool"].value_counts()
    expected = sum(min(3, counts.get(p, 0)) for p in ("real", "surrogate", "syn_train", "syn_test"))
    assert len(images) == len(masks) == len(titles) == expected
    syn_test = [t for t in titles if t.startswith("syn_test")]
    assert syn_test[0].endswith("α=-20.0°") and syn_test[-1].endswith("α=+20.0°")  # first and last of the pool
    first = man[man["pool"] == "surrogate"].iloc[[0]]
    img, mask = ShardDataset(first, root=out)[0]
    np.testing.assert_array_equal(images[0], img[0].numpy())
    np.testing.assert_array_equal(masks[0], mask[0].numpy())


def test_preprocessing_example_matches_the_synthetic_shard_at_the_same_angle(built, source):
    cfg, out, man = built
    row = man[(man["pool"] == "syn_test") & (man["alpha"] == 10.0)].iloc[[0]]
    ct, labels = source.load(row["subject"].iloc[0])
    ex = preprocessing_example(ct, labels, cfg, alpha=10.0)
    S, n = cfg.image_size, cfg.render.detector
    assert ex["detector"].shape == ex["detector_mask"].shape == (n, n) and ex["image"].shape == (S, S)
    img, mask = ShardDataset(row, root=out)[0]
    # the shard stores the same image quantized to uint8
    np.testing.assert_allclose(ex["image"], img[0].numpy(), atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(ex["mask"], mask[0].numpy())


# ------------------------------------------------------------------------------ caching


def _mtimes(out):
    return {p: p.stat().st_mtime_ns for p in sorted((out / "shards").rglob("*.npz"))}


def test_cache_noop_resume_and_corruption(tmp_path, source):
    cfg = tiny_profile(pools={"surrogate": {"train": 1}, "syn_train": {"train": 1}, "syn_test": {"test": 1}},
                       cohort={"n_subjects": 3})
    loads = []
    src = SubjectSource(source.ids, lambda s: (loads.append(s), source.load(s))[1], source.fingerprint)
    man = build_datasets(cfg, tmp_path, subjects=src, progress=False)
    assert len(loads) == 3
    before, manifest_text = _mtimes(tmp_path), (tmp_path / "manifest.csv").read_text(encoding="utf-8")

    # 1. finished build: no-op (no subject loaded, no shard rewritten, same manifest)
    loads.clear()
    assert build_datasets(cfg, tmp_path, subjects=src, progress=False).equals(man)
    assert loads == [] and _mtimes(tmp_path) == before
    assert (tmp_path / "manifest.csv").read_text(encoding="utf-8") == manifest_text

    shards = sorted(before)
    # 2. resume after a deleted shard (and an interrupted build marker)
    shards[0].unlink()
    b = json.loads((tmp_path / "build.json").read_text(encoding="utf-8"))
    (tmp_path / "build.json").write_text(json.dumps({**b, "complete": False}))
    # 3. a truncated shard and one with flipped bytes
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])
    data = bytearray(shards[2].read_bytes())
    data[len(data) // 2] ^= 0xFF
    shards[2].write_bytes(bytes(data))
    loads.clear()
    again = build_datasets(cfg, tmp_path, subjects=src, progress=False)
    assert len(loads) == 3
    assert again.drop(columns="checksum").equals(man.drop(columns="checksum"))
    for p in shards:
        with np.load(p) as z:
            assert z["image"].dtype == np.uint8
    assert json.loads((tmp_path / "build.json").read_text(encoding="utf-8"))["complete"] is True

    # only one damaged shard → only that subject is re-rendered
    shards[1].write_bytes(b"garbage")
    loads.clear()
    build_datasets(cfg, tmp_path, subjects=src, progress=False)
    assert len(loads) == 1

    # a changed profile invalidates the cache
    loads.clear()
    build_datasets(tiny_profile(**{**cfg.raw, "seed": 9}), tmp_path, subjects=src, progress=False)
    assert len(loads) == 3


# ------------------------------------------------------------------------------ real folder


def _write_real(folder, names=("a", "b", "c", "d"), size=(30, 50), skip_mask=()):
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    for n in names:
        img = (rng.random(size) * 255).astype(np.uint8)
        Image.fromarray(img).save(folder / "images" / f"{n}.png")
        if n not in skip_mask:
            m = np.zeros(size, np.uint8)
            m[5:10, 10:40] = 255
            Image.fromarray(m).save(folder / "masks" / f"{n}.png")


def test_real_folder_loader_and_replacement_of_the_surrogate(tmp_path, source):
    _write_real(tmp_path / "real")
    items = load_real_folder(tmp_path / "real")
    assert [it.name for it in items] == ["a", "b", "c", "d"]
    assert items[0].image.shape == (30, 50) and set(np.unique(items[0].mask)) == {0, 1}
    cfg = tiny_profile(pools={"surrogate": {"train": 2, "val": 1, "test": 1}, "syn_train": {"train": 1},
                              "syn_test": {"test": 1}})
    man = build_datasets(cfg, tmp_path / "out", subjects=source, real_folder=tmp_path / "real", progress=False)
    assert "surrogate" not in set(man.pool) and (man.pool == "real").sum() == 4
    assert sorted(man[man.pool == "real"].split) == ["test", "train", "train", "val"]
    img, mask = ShardDataset(man, pool="real")[0]
    assert img.shape == (1, 24, 24) and mask.sum() > 0


def test_real_folder_errors(tmp_path):
    _write_real(tmp_path / "r1", skip_mask=("b",))
    with pytest.raises(InputError, match=r"b\.png.*no mask"):
        load_real_folder(tmp_path / "r1")
    _write_real(tmp_path / "r2", names=("a",))
    Image.fromarray(np.zeros((31, 50), np.uint8)).save(tmp_path / "r2" / "masks" / "a.png")
    with pytest.raises(InputError, match="differs from image size"):
        load_real_folder(tmp_path / "r2")
    _write_real(tmp_path / "r3", names=("a",))
    (tmp_path / "r3" / "images" / "a.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image"):
        load_real_folder(tmp_path / "r3")
    with pytest.raises(InputError, match="no such directory"):
        load_real_folder(tmp_path / "nothing")


# ------------------------------------------------------------------------------ profiles


def test_shipped_profiles_load_with_the_required_sizes():
    paper, quick, smoke = (load_profile(n) for n in ("paper", "quick", "smoke"))
    assert paper.render.detector == 1800 and paper.image_size == 256
    assert paper.render.pitch_mm == pytest.approx(0.24)
    assert paper.pools.syn_train.train + paper.pools.syn_train.val == 96
    assert paper.pools.syn_test.test == 20 and len(paper.synthetic.alphas) == 21
    assert smoke.render.detector == 64 and smoke.image_size == 64
    for cfg in (paper, quick, smoke):  # profiles differ only in sizes
        assert set(cfg.raw) == set(paper.raw)
        assert list(cfg.synthetic.alphas) == ALPHAS
    assert profile_hash(quick) == profile_hash(copy.deepcopy(quick)) != profile_hash(smoke)


def test_load_profile_errors(tmp_path):
    with pytest.raises(InputError, match=r"nope\.yml.*unknown profile 'nope'.*paper, quick, smoke"):
        load_profile("nope")
    cfg = yaml.safe_load(open(load_profile("smoke").path))
    del cfg["render"]["detector"]
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(InputError, match=r"bad\.yml.*missing key 'render\.detector'"):
        load_profile(tmp_path / "bad.yml")
    cfg = yaml.safe_load(open(load_profile("smoke").path))
    cfg["cohort"]["n_subjects"] = 2
    need = sum(int(n) for pool in cfg["pools"].values() for n in pool.values())
    assert need > 2
    (tmp_path / "small.yml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(InputError, match=f"smaller than the {need} subjects"):
        load_profile(tmp_path / "small.yml")
    (tmp_path / "broken.yml").write_text("seed: [1,\n")
    with pytest.raises(InputError, match="broken.yml: cannot read profile"):
        load_profile(tmp_path / "broken.yml")


# ------------------------------------------------------------------------------ CLI


def test_cli_builds_a_tiny_profile_from_a_sources_folder(tmp_path, capsys):
    ct, lab = tiny_subject(0)
    (tmp_path / "src").mkdir()
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "src" / "tiny.nii.gz"))
    sitk.WriteImage(lab.to_sitk(), str(tmp_path / "src" / "tiny_labels.nii.gz"))
    cfg = yaml.safe_load(open(load_profile("smoke").path))
    cfg["render"].update(detector=32, backend="rtk")
    cfg["image_size"] = 16
    (tmp_path / "tiny.yml").write_text(yaml.safe_dump(cfg))
    args = ["dataset", "--profile", str(tmp_path / "tiny.yml"), "--out", str(tmp_path / "out"),
            "--sources", str(tmp_path / "src"), "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Syn_all" in text and "wall time" in text and "subjects  sources" in text
    # one source CT: the splits share the patient, and the command says so in one line
    assert ("Leakage: test subjects share patients with training subjects (1 of 1 source CT(s) in both; virtual "
            "subjects of one CT are one person), so test scores are optimistic.\n") in text
    man = read_manifest(tmp_path / "out" / "datasets")
    pools = cfg["pools"]
    expected = (sum(pools["surrogate"].values()) * cfg["surrogate"]["poses_per_subject"]
                + (sum(pools["syn_train"].values()) + sum(pools["syn_test"].values())) * 21)
    assert len(man) == expected and (tmp_path / "out" / "cohort" / "cohort.csv").is_file()
    assert main(args) == 0  # cached


def test_cli_unknown_profile_exits_2_with_one_line(capsys):
    assert main(["dataset", "--profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown profile 'nope'" in err and "smoke" in err


# ------------------------------------------------------------------------------ cache keys, tasks, executors


def test_dataset_hash_payload_is_that_of_the_original_code():
    """The build hash changes only with the version: the payload form of commit dea4f93, at version 3 (the
    varied surrogate, physics-order noise, the surrogate's room effects, electronic noise per native detector
    element), at version 4 (kVp in 1-kV steps); a change of this value without a version bump is a bug."""
    import hashlib

    cfg = tiny_profile()
    expected = hashlib.sha256(f"{profile_hash(cfg.raw, DATASET_KEYS)}|fp0|v4".encode()).hexdigest()
    assert DATASETS_VERSION == 4
    assert dataset_hash(cfg, "fp0") == expected == "7d994dfb7e0a8d8bbfb61c120c0b7a0f9d0c0487cb2160a007ee91a46895dd7c"


def test_render_prefilter_is_an_optional_profile_switch_that_keys_the_datasets(source):
    """render.prefilter: absent means off and leaves the profile's hash as it was; true reaches the
    renderer (a shard equals render_batch(prefilter=True)) and changes the dataset hash; anything
    else is refused naming the key."""
    from xrlib.anatomy.annotate import clavicles_from_labels
    from xrlib.data.recipes import AnglesRecipe
    from xrlib.drr.geometry import Geometry, Pose
    from xrlib.drr.render import render_batch

    off = tiny_profile()
    render = {"detector": 32, "field_mm": 432.0, "backend": "rtk", "fov": "pad"}
    on = tiny_profile(render={**render, "prefilter": True})
    assert off.render.prefilter is False and "prefilter" not in off.raw["render"] and on.render.prefilter is True
    assert profile_hash(off, DATASET_KEYS) == profile_hash(tiny_profile(render=dict(render)), DATASET_KEYS)
    assert profile_hash(on, DATASET_KEYS) != profile_hash(off, DATASET_KEYS)
    with pytest.raises(InputError, match=r"tiny\.yml.*render\.prefilter must be true or false, got 'yes'"):
        tiny_profile(render={**render, "prefilter": "yes"})
    ct, labels = tiny_subject(0, spacing=4.0)  # 11.25 mm per pixel at the isocenter: blocks of 2 × 2 × 2
    got = AnglesRecipe(physics="naive", alphas=(0.0,))._radiographs(ct, labels, on, "s", [Pose()], None, False)[0]
    want = render_batch(ct, clavicles_from_labels(labels), Geometry.from_render(on.render), [Pose()], backend="rtk",
                        prefilter=True)[0]
    plain = render_batch(ct, clavicles_from_labels(labels), Geometry.from_render(on.render), [Pose()], backend="rtk")[0]
    np.testing.assert_array_equal(got.image, want.image)
    assert not np.array_equal(got.image, plain.image)


def test_resize_bilinear_of_a_stack_equals_each_image_resized():
    x = np.random.default_rng(1).random((3, 20, 30)).astype(np.float32)
    for shape in ((10, 12), (40, 45)):
        y = resize_bilinear(x, shape)
        assert y.shape == (3, *shape) and y.dtype == np.float32
        for i in range(3):
            np.testing.assert_array_equal(y[i], resize_bilinear(x[i], shape))


def _small_profile():
    return tiny_profile(pools={"surrogate": {"train": 1}, "syn_train": {"train": 1}, "syn_test": {"test": 1}},
                        cohort={"n_subjects": 3}, synthetic={"alphas": [-2, 0, 2], "cen_alphas": [-2, 0, 2]})


def test_shard_tasks_are_picklable_and_the_cohort_loader_drops_its_sources_once_built(tmp_path, source):
    import pickle

    from xrlib.anatomy.cohort import CohortConfig
    from xrlib.data.build import plan_shards
    from xrlib.data.recipes import study_recipes
    from xrlib.data.subjects import CohortLoader

    cfg = _small_profile()
    plan = plan_shards(cfg, tmp_path, source, study_recipes(cfg), threads=1)
    assert [t.pool for t in plan] == ["surrogate", "syn_train", "syn_test"]
    back = pickle.loads(pickle.dumps(plan))
    assert [(t.key, t.recipe, t.profile) for t in back] == [(t.key, t.recipe, t.profile) for t in plan]
    loader = CohortLoader(tmp_path / "cohort", CohortConfig(n_subjects=1), sources=[("big", 1, 2)], built=True)
    assert pickle.loads(pickle.dumps(loader)).sources is None


def test_process_pool_build_is_byte_identical_to_the_in_process_build(tmp_path, source):
    from xrlib.exec import ProcessPoolExecutor

    cfg = _small_profile()
    local = build_datasets(cfg, tmp_path / "local", subjects=source, progress=False, threads=1)
    pool = build_datasets(cfg, tmp_path / "pool", subjects=source, progress=False, threads=1,
                          executor=ProcessPoolExecutor(workers=2))
    assert local.equals(pool)  # same rows, same shard checksums
    assert set(local.physics) == {"realistic", "naive"}
    for rel in local.shard:
        assert (tmp_path / "local" / rel).read_bytes() == (tmp_path / "pool" / rel).read_bytes()
    assert (tmp_path / "local" / "manifest.csv").read_text(encoding="utf-8") == (tmp_path / "pool" / "manifest.csv").read_text(encoding="utf-8")


def test_a_pool_recipe_is_a_parameter_of_the_build(tmp_path, source):
    from xrlib.data.recipes import AnglesRecipe, study_recipes

    cfg = _small_profile()
    recipes = {**study_recipes(cfg), "syn_test": AnglesRecipe(physics="heuristic", alphas=(5.0,))}
    man = build_datasets(cfg, tmp_path, subjects=source, progress=False, recipes=recipes)
    test = man[man.pool == "syn_test"]
    assert list(test.alpha) == [5.0] and list(test.physics) == ["heuristic"]
    assert sorted(man[man.pool == "syn_train"].alpha) == [-2.0, 0.0, 2.0]


def test_profile_section_is_a_copy_and_names_the_file_when_missing(tmp_path):
    cfg = yaml.safe_load(open(load_profile("smoke").path))
    cfg["mychapter"] = {"steps": 3}
    cfg["broken"] = [1, 2]
    (tmp_path / "p.yml").write_text(yaml.safe_dump(cfg))
    profile = load_profile(tmp_path / "p.yml")
    block = profile.section("mychapter")
    assert block == {"steps": 3}
    block["steps"] = 99
    assert profile.section("mychapter") == {"steps": 3}
    with pytest.raises(InputError, match=r"p\.yml.*has no nothere: block"):
        profile.section("nothere")
    with pytest.raises(InputError, match=r"p\.yml.*malformed broken: block"):
        profile.section("broken")


def test_a_real_folder_enters_the_hashes_by_content_not_by_path(tmp_path):
    import hashlib
    import json as _json

    quick = load_profile("quick")
    folders = []
    for name, mask in (("here", b"m1"), ("elsewhere/deeper", b"m1"), ("other", b"m2")):
        f = tmp_path / name
        (f / "images").mkdir(parents=True)
        (f / "masks").mkdir()
        (f / "images" / "r1.png").write_bytes(b"i1")
        (f / "masks" / "r1.png").write_bytes(mask)
        folders.append(f)
    here, moved, changed = (profile_hash(quick.with_real_folder(f), DATASET_KEYS) for f in folders)
    assert here == moved != changed
    assert profile_hash(quick.with_real_folder(folders[0])) == profile_hash(quick.with_real_folder(folders[1]))
    # without a real folder the hash is the canonical JSON of the profile, as it always was
    d = {k: v for k, v in quick.raw.items() if k in DATASET_KEYS}
    text = _json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    assert quick.raw["real"]["folder"] is None
    assert profile_hash(quick, DATASET_KEYS) == hashlib.sha256(text.encode()).hexdigest()
