"""Splits by patient: source-disjoint pools, the leakage line, cross-validation folds over source CTs."""

import hashlib
import json

import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from test_datasets import tiny_profile, tiny_subject
from xrlib.cli import main
from xrlib.core.errors import InputError
from xrlib.core.profiles import DATASET_KEYS, load_profile, profile_hash, validate_profile
from xrlib.core.stage import dataset_note
from xrlib.data.build import build_datasets, build_fingerprint, build_folds, dataset_hash, fold_dir
from xrlib.data.pools import assign_pools, leakage_note, rank_sources, source_folds, split_mode, table1
from xrlib.data.subjects import cohort_subjects, source_ct, subjects_from_volumes

LEAK = ("Leakage: test subjects share patients with training subjects (1 of 1 source CT(s) in both; virtual "
        "subjects of one CT are one person), so test scores are optimistic.")


def _ids(sources, n):
    return [f"{s}-v{i:03d}" for s in sources for i in range(n)]


def _split_of_source(assignment: dict) -> dict[str, set]:
    out: dict[str, set] = {}
    for sid, (_, split) in assignment.items():
        out.setdefault(source_ct(sid), set()).add(split)
    return out


# ------------------------------------------------------------------------------ assignment


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_example_ct_assignment_and_build_key_are_those_of_the_subject_permutation(tmp_path, profile):
    """One source (the example CT): the assignment is the seeded permutation of the code before sources were
    considered (its hash, computed with that code, pinned here) and the build key gains nothing."""
    pinned = {"smoke": "128ccbed2f36c43d", "quick": "7b84f6a7c9a91b7d", "paper": "954e68f5167547d1"}
    cfg = load_profile(profile)
    if profile == "quick":  # pinned with quick's pools before its test pools grew (the same algorithm)
        cfg = validate_profile({**cfg.raw, "cohort": {**cfg.raw["cohort"], "n_subjects": 16},
                                "pools": {"surrogate": {"train": 4, "val": 1, "test": 2},
                                          "syn_train": {"train": 4, "val": 1, "test": 0}, "syn_test": {"test": 4}}},
                               "quick.yml")
    subjects = cohort_subjects(cfg, tmp_path / "cohort")
    a = assign_pools(subjects.ids, cfg)
    assert split_mode(subjects.ids, cfg) == "subjects"
    assert hashlib.sha256(json.dumps(sorted(a.items())).encode()).hexdigest()[:16] == pinned[profile]
    assert build_fingerprint(cfg, subjects) == subjects.fingerprint
    assert dataset_hash(cfg, build_fingerprint(cfg, subjects)) == dataset_hash(cfg, subjects.fingerprint)


@pytest.mark.parametrize("n_sources", [3, 4, 7, 12])
def test_no_source_in_two_splits_and_the_profile_counts_are_filled(n_sources):
    cfg = tiny_profile()  # 7 subjects: surrogate 2/1/1, syn_train 1/1/0, syn_test 1
    ids = _ids([f"pat{j}" for j in range(n_sources)], 7)
    a = assign_pools(ids, cfg)
    assert split_mode(ids, cfg) == "source-disjoint"
    assert all(len(splits) == 1 for splits in _split_of_source(a).values())
    for pool in ("surrogate", "syn_train", "syn_test"):
        for split, n in getattr(cfg.pools, pool).as_dict().items():
            assert sum(v == (pool, split) for v in a.values()) == n
    used = {source_ct(s) for s in a}
    assert len(used) == min(n_sources, 7)  # a split's subjects spread over its patients
    assert a == assign_pools(list(reversed(ids)), cfg)
    assert a != assign_pools(ids, tiny_profile(seed=4))


def test_two_sources_keep_test_apart_and_one_source_falls_back():
    cfg = tiny_profile()
    two = assign_pools(_ids(["a", "b"], 7), cfg)
    assert split_mode(_ids(["a", "b"], 7), cfg) == "test-disjoint"
    by = _split_of_source(two)
    assert sorted(map(sorted, by.values())) == [["test"], ["train", "val"]]
    assert split_mode(_ids(["a"], 7), cfg) == "subjects"
    # three sources of one subject each cannot fill 7 slots: the subject permutation, flagged as leaking
    assert split_mode(_ids(["a", "b", "c"], 1), tiny_profile(cohort={"n_subjects": 7})) == "subjects"


def test_adding_a_source_moves_at_most_one_source_per_block_boundary():
    cfg = tiny_profile()
    names = [f"p{j:02d}" for j in range(10)]
    before = {s: v.pop() for s, v in _split_of_source(assign_pools(_ids(names, 7), cfg)).items()}
    for extra in ("new1", "zz", "A0"):
        after = {s: v.pop() for s, v in _split_of_source(assign_pools(_ids(names + [extra], 7), cfg)).items()}
        moved = [s for s in before if s in after and after[s] != before[s]]
        assert len(moved) <= 2, moved
    assert rank_sources(names + ["new1"], cfg.seed) != sorted(names + ["new1"])
    # ranking by hash: the old order survives the insertion
    assert [s for s in rank_sources(names + ["new1"], cfg.seed) if s != "new1"] == rank_sources(names, cfg.seed)


def test_folds_cover_every_source_once_as_test():
    cfg = tiny_profile()
    names = [f"p{j}" for j in range(5)]
    ids = _ids(names, 7)
    folds = source_folds(names, cfg.seed, 3)
    assert sorted(pd.Series(folds).value_counts()) == [1, 2, 2]  # near-equal folds
    tested = []
    for i in range(3):
        a = assign_pools(ids, cfg, fold=(i, 3))
        by = _split_of_source(a)
        test = sorted(s for s, v in by.items() if v == {"test"})
        assert all(len(v) == 1 or "test" not in v for v in by.values())
        assert test == sorted(s for s, f in folds.items() if f == i)
        tested += test
    assert sorted(tested) == names
    with pytest.raises(InputError, match=r"--folds: 6 folds need at least 6 source CTs \(patients\), but there are 5"):
        source_folds(names, 0, 6)
    with pytest.raises(InputError, match="--folds: must be an integer ≥ 2"):
        source_folds(names, 0, 1)
    small = tiny_profile(pools={"surrogate": {"train": 1, "test": 3}, "syn_train": {"train": 1}, "syn_test": {"test": 2}})
    with pytest.raises(InputError, match=r"fold 0 of 5 has 2 subject\(s\) of 1 source CT\(s\) for the 5 test subjects"):
        assign_pools(_ids(names, 2), small, fold=(0, 5))


# ------------------------------------------------------------------------------ the leakage line


def _manifest(rows):
    return pd.DataFrame(rows, columns=["subject", "source", "pool", "split"])


def test_leakage_note_exact_text_and_when_it_is_silent(tmp_path):
    shared = _manifest([("e-v0", "e", "surrogate", "train"), ("e-v1", "e", "syn_test", "test")])
    assert leakage_note(shared) == LEAK
    apart = _manifest([("a-v0", "a", "surrogate", "train"), ("b-v0", "b", "syn_test", "test"),
                       ("r1", "real", "real", "train"), ("r2", "real", "real", "test")])
    assert leakage_note(apart) == ""  # real radiographs (unknown patients) are not counted
    val = _manifest([("a-v0", "a", "surrogate", "val"), ("a-v1", "a", "surrogate", "test")])
    assert leakage_note(val).startswith("Leakage: test subjects share patients")
    # every chapter's header reads the note from the build record
    assert dataset_note(tmp_path) == ""
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "build.json").write_text(json.dumps({"leakage_note": LEAK}))
    assert dataset_note(tmp_path) == LEAK
    (tmp_path / "datasets" / "build.json").write_text(json.dumps({"leakage_note": ""}))
    assert dataset_note(tmp_path) == ""


# ------------------------------------------------------------------------------ builds


def _three_profile(**over):
    return tiny_profile(pools={"surrogate": {"train": 1, "test": 1}, "syn_train": {"train": 1}, "syn_test": {"test": 1}},
                        cohort={"n_subjects": 4}, synthetic={"alphas": [-2, 0, 2], "cen_alphas": [0]}, **over)


@pytest.fixture(scope="module")
def three_sources():
    return subjects_from_volumes([(f"{s}-v{i:03d}", *tiny_subject(10 * j + i)) for j, s in enumerate("ABC")
                                  for i in range(2)])


def test_build_from_three_sources_is_patient_disjoint_and_table1_counts_patients(tmp_path, three_sources):
    cfg = _three_profile()
    man = build_datasets(cfg, tmp_path / "d", subjects=three_sources, progress=False)
    assert (man.groupby("source")["split"].nunique() == 1).all()
    assert leakage_note(man) == ""
    info = json.loads((tmp_path / "d" / "build.json").read_text())
    assert info["split_mode"] == "source-disjoint" and info["leakage_note"] == ""
    t = table1(man, cfg.synthetic.cen_alphas)
    assert list(t.columns) == ["dataset", "pool", "split", "images", "subjects", "sources"]
    real = t[t.dataset == "Real"].set_index("split")
    assert real.loc["train", "sources"] == 1 and real.loc["test", "sources"] == 1
    # the same subjects as one source would be assigned by the permutation and leak
    one = subjects_from_volumes([(f"X-v{i:03d}", *tiny_subject(i)) for i in range(4)])
    assert build_fingerprint(cfg, three_sources).endswith("|split:source-disjoint")
    assert build_fingerprint(cfg, one) == one.fingerprint


def test_fold_builds_rotate_the_test_patients_and_carry_the_fold(tmp_path, three_sources):
    cfg = _three_profile()
    mans = build_folds(cfg, tmp_path, 3, subjects=three_sources, progress=False)
    tested = []
    for i, man in enumerate(mans):
        assert (fold_dir(tmp_path, i) / "datasets" / "manifest.csv").is_file()
        test = man[man.split == "test"]
        assert set(test["fold"]) == {i} and test["source"].nunique() == 1
        assert not set(test["source"]) & set(man.loc[man.split != "test", "source"])
        tested += sorted(set(test["source"]))
    assert sorted(tested) == ["A", "B", "C"]
    with pytest.raises(InputError, match="--folds: 4 folds need at least 4 source CTs"):
        build_folds(cfg, tmp_path / "bad", 4, subjects=three_sources, progress=False)
    assert not (tmp_path / "bad").exists()  # checked before anything is written


def test_profile_folds_key_is_optional_and_checked():
    assert tiny_profile().folds is None and "folds" not in tiny_profile().raw
    assert tiny_profile(folds=3).folds == 3
    assert profile_hash(tiny_profile(folds=3), DATASET_KEYS) == profile_hash(tiny_profile(), DATASET_KEYS)
    for bad in (1, 0, "3", True):
        with pytest.raises(InputError, match=r"tiny\.yml: folds must be null or an integer ≥ 2"):
            tiny_profile(folds=bad)


# ------------------------------------------------------------------------------ CLI


def _folder_and_profile(tmp_path, n_sources=3):
    (tmp_path / "src").mkdir()
    for j in range(n_sources):
        ct, lab = tiny_subject(j)
        sitk.WriteImage(ct.to_sitk(), str(tmp_path / "src" / f"pat{j}.nii.gz"))
        sitk.WriteImage(lab.to_sitk(), str(tmp_path / "src" / f"pat{j}_labels.nii.gz"))
    cfg = dict(tiny_profile(pools={"surrogate": {"train": 1, "val": 1}, "syn_train": {"train": 1}, "syn_test": {"test": 1}},
                            cohort={"n_subjects": 4}, synthetic={"alphas": [-2, 0, 2], "cen_alphas": [0]},
                            train={"epochs": 1, "batch_size": 8, "patience": 1, "lr": 0.01, "depth": 3,
                                   "base_channels": 4}).raw)
    cfg["render"] = {**cfg["render"], "detector": 16, "backend": "rtk"}
    cfg.update(image_size=16, surrogate={**cfg["surrogate"], "poses_per_subject": 1})
    (tmp_path / "tiny.yml").write_text(yaml.safe_dump(cfg))
    return ["dataset", "--profile", str(tmp_path / "tiny.yml"), "--out", str(tmp_path / "out"),
            "--sources", str(tmp_path / "src"), "--no-progress"]


@pytest.mark.parametrize("k,message", [
    ("0", "xrlib dataset: --folds must be at least 2 (each fold once the test set), got 0"),
    ("1", "xrlib dataset: --folds must be at least 2 (each fold once the test set), got 1"),
    ("4", "error: --folds: 4 folds need at least 4 source CTs (patients), but there are 3"),
    ("x", "--folds must be a number, got 'x'"),
])
def test_cli_bad_folds_exit_2_with_one_line(tmp_path, capsys, k, message):
    args = _folder_and_profile(tmp_path)
    assert main(args + ["--folds", k]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out" / "folds").exists()


def test_cli_folds_and_the_rotation_study_over_folds_from_a_folder_of_three_patients(tmp_path, capsys):
    """``xrlib dataset --folds 3`` builds three folds whose test patients are apart from the others and rotate;
    ``xrlib crossval --folds 3`` reuses them, trains the three study models per fold with the study's training
    code (tiny sizes) and pools the folds' test rows: every test patient scored in one fold only."""
    from xrlib.studies.rotation.study import crossval_study

    args = _folder_and_profile(tmp_path)
    cfg = load_profile(tmp_path / "tiny.yml")
    with pytest.raises(InputError, match="fold 0 of 3 is not built; run xrlib dataset --folds 3 first"):
        crossval_study(cfg, tmp_path / "out", 3, progress=False)
    assert main(args + ["--folds", "3"]) == 0
    text = capsys.readouterr().out
    assert [line[:12] for line in text.splitlines() if line.startswith("fold ")] == [f"fold {i} of 3:" for i in range(3)]
    assert "sources" in text and "Leakage" not in text
    tested = []
    for i in range(3):
        man = pd.read_csv(tmp_path / "out" / "folds" / str(i) / "datasets" / "manifest.csv")
        test = set(man.loc[man.split == "test", "source"])
        assert not test & set(man.loc[man.split != "test", "source"]) and set(man.loc[man.split == "test", "fold"]) == {i}
        tested += sorted(test)
    assert sorted(tested) == ["pat0", "pat1", "pat2"]

    crossval = ["crossval", "--profile", str(tmp_path / "tiny.yml"), "--out", str(tmp_path / "out"),
                "--sources", str(tmp_path / "src"), "--no-progress", "--folds", "3"]
    assert main(crossval) == 0
    assert "3 folds, each test patient scored by the models of its fold only" in capsys.readouterr().out
    df = pd.read_csv(tmp_path / "out" / "evaluation" / "crossval.csv")
    assert {"source", "fold", "subject", "dice", "test_set"} <= set(df.columns)
    assert (df["split"] == "test").all() and df["dice"].between(0, 1).all()
    per_source = df.groupby("source")["fold"].unique()
    assert sorted(per_source.index) == ["pat0", "pat1", "pat2"] and all(len(f) == 1 for f in per_source)
    assert sorted(int(f[0]) for f in per_source) == [0, 1, 2]
    assert df["model"].nunique() == 3 and len(df) == 3 * 3 * 3  # folds × models × Syn_test's 3 α (no Real test split)
    assert main(crossval[:-2]) == 2  # no --folds and none in the profile
    assert "xrlib crossval: give --folds K or set folds: K in the profile" in capsys.readouterr().err


def test_validate_profile_with_folds_round_trips(tmp_path):
    cfg = dict(tiny_profile(folds=2).raw)
    assert validate_profile(cfg, "again.yml").folds == 2



def test_spread_angles_rotates_windows_so_every_angle_is_used_equally_often():
    from collections import Counter

    from xrlib.data.pools import spread_angles

    alphas = [-20, -10, 0, 10, 20]
    assert spread_angles(alphas, 0, 1) == [-20.0]
    assert spread_angles(alphas, 3, 1) == [10.0]
    assert spread_angles(alphas, 2, 2) == [-20.0, 20.0]          # window 4, 5 wraps to the first angle
    assert spread_angles(alphas, 7, None) == [float(a) for a in alphas]
    assert spread_angles(alphas, 1, 9) == [float(a) for a in alphas]
    used = Counter(a for i in range(10) for a in spread_angles(alphas, i, 1))
    assert set(used.values()) == {2}                          # 10 subjects × 1 angle: each angle twice
    with pytest.raises(ValueError, match="per_subject must be ≥ 1"):
        spread_angles(alphas, 0, 0)


def test_cohort_phrase_says_one_ct_or_how_many_and_whether_test_patients_are_disjoint():
    from xrlib.data.pools import cohort_phrase

    one = pd.DataFrame({"source": ["ct"] * 3, "split": ["train", "val", "test"], "pool": ["surrogate"] * 3})
    assert cohort_phrase(one) == "virtual subjects of one CT (not independent patients)"
    three = pd.DataFrame({"source": ["a", "a", "b", "c"], "split": ["train", "val", "test", "test"], "pool": ["syn_test"] * 4})
    assert cohort_phrase(three) == "virtual subjects of 3 source CTs (test subjects are patient-disjoint from training subjects)"
    leaky = three.assign(split=["train", "test", "test", "test"])
    assert cohort_phrase(leaky) == "virtual subjects of 3 source CTs (test subjects share patients with training subjects)"
