"""The card's seeds and controls: seed k of a defense and of its control start from seed k of the base, the
control is the defense's configuration without the defense, seed 0 is the chapter's cached model, and the
verdicts rest on every seed (toy sizes: one-epoch trainings on 32² discs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrlib.core.errors import InputError
from xrlib.core.profiles import validate_profile
from xrlib.studies.card.rows import ROWS
from xrlib.studies.card.settings import card_settings
from xrlib.studies.rotation import study
from xrlib.studies.rotation.seeds import BASE_MODEL, base_seeds, seed_config, seed_name, study_seed_config

PGD_AT = BASE_MODEL + "+PGD-AT"
NOISE = BASE_MODEL + "+noise"


@pytest.fixture(scope="module")
def toy3(tmp_path_factory):
    """The toy study with 3 Syn_test subjects (intervals need 3) and ``card.seeds`` 2."""
    from toy_study import build_toy_run

    profile, run, _ = build_toy_run(tmp_path_factory.mktemp("seeds"), syn_test=3)
    raw = {**profile.raw, "card": {**profile.raw["card"], "seeds": 2, "seed_floor": False}}
    return validate_profile(raw, "toyrot.yml"), run


def _recorded(run: Path, identity: str) -> dict:
    return json.loads((Path(run) / "models" / identity / "result.json").read_text(encoding="utf-8"))["config"]


def test_seed_k_configs_and_the_control_differ_only_where_they_must(toy3):
    from xrlib.studies.card.seeds import AA_SUFFIX, CONTROL, seed_plans
    from xrlib.studies.pgd.settings import pgd_settings
    from xrlib.studies.pgd.study import defense_configs

    profile, run = toy3
    ddir = study.datasets_dir(run)
    chapter = study.study_models(profile, run)
    for name, res in chapter.items():  # seed 0 is the chapter's model: the same cache key, never retrained
        assert study_seed_config(profile, name, 0).folder_name(ddir) == res.folder.name
    base = study_seed_config(profile, BASE_MODEL, 0)
    two = seed_config(base, 2)
    assert (two.name, two.seed) == (seed_name(BASE_MODEL, 2), base.seed + 2) == (BASE_MODEL + " [seed 2]", base.seed + 2)
    assert two.config_hash(ddir) != base.config_hash(ddir)
    assert dataclasses.replace(two, name=base.name, seed=base.seed).config_hash(ddir) == base.config_hash(ddir)
    with pytest.raises(ValueError, match="seed index must be an integer ≥ 0, got -1"):
        seed_config(base, -1)

    plans = {p.model: p for p in seed_plans(profile, run, [*chapter, PGD_AT, NOISE], 2)}
    assert set(plans) == {"U-Net(Real)", BASE_MODEL, PGD_AT, NOISE, CONTROL, BASE_MODEL + AA_SUFFIX}
    assert plans[BASE_MODEL].control == "U-Net(Real)" and plans[PGD_AT].control == plans[NOISE].control == CONTROL
    assert list(plans[BASE_MODEL + AA_SUFFIX].indices(2)) == [2, 3] and list(plans[PGD_AT].indices(2)) == [0, 1]
    defs = {c.name: c for c in defense_configs(profile, run, pgd_settings(profile))}
    assert plans[PGD_AT].config(0).as_dict() == defs[PGD_AT].as_dict()  # seed 0: the chapter's defense
    for k in (0, 1):
        start = study_seed_config(profile, BASE_MODEL, k).folder_name(ddir)
        d, c = plans[PGD_AT].config(k), plans[CONTROL].config(k)
        assert d.recipe_params["warm_start"] == c.recipe_params["warm_start"] == start
        assert d.seed == c.seed == base.seed + k
        dd, cd = d.as_dict(), c.as_dict()
        assert cd["recipe"] == "standard" and dd["recipe"] == "pgd-adversarial"
        assert cd["recipe_params"] == {"warm_start": start}
        assert {k2: v for k2, v in dd["recipe_params"].items() if k2 != "warm_start"}  # the defense's own parameters
        same = {"name", "recipe", "recipe_params"}
        assert {f: v for f, v in dd.items() if f not in same} == {f: v for f, v in cd.items() if f not in same}


def test_card_seeds_setting_bad_input_names_the_key(toy3):
    profile, _ = toy3
    assert card_settings(profile).seeds == 2
    for bad in (0, 1.5, True):
        raw = {**profile.raw, "card": {**profile.raw["card"], "seeds": bad}}
        with pytest.raises(InputError, match=f"card.seeds: expected an integer ≥ 1, got {bad!r}"):
            card_settings(validate_profile(raw, "toyrot.yml"))


def test_card_trains_seeds_and_controls_and_its_verdicts_rest_on_them(toy3, monkeypatch):
    """Seeds 1 of the study's base and U-Net(Real), of PGD-AT and the fine-tune control (seed 0 too), the A/A row's
    seeds 2 and 3; scored over the rotation grid; verdicts with 3 subjects × 2 seeds; a rebuild trains and
    scores nothing."""
    from xrlib.attacks import base as attacks_base
    from xrlib.studies.card import study as card_study
    from xrlib.studies.card.columns import COLUMNS
    from xrlib.studies.card.seeds import AA_SUFFIX, CONTROL
    from xrlib.studies.robustness import run_threat

    profile, run = toy3
    run_threat(profile, run, "rotation")  # chapter 06's table: the study models at seed 0
    rows = (ROWS[0], next(r for r in ROWS if r.key == "+PGD-AT"))
    cols = tuple(c for c in COLUMNS if c.key in ("clean-syn", "rotation"))
    card = card_study.build_card(profile, run, rows=rows, columns=cols, floor=None)
    got = {(v.model, v.seed): v for v in card.seed_victims}
    assert set(got) == {("U-Net(Real)", 1), (BASE_MODEL, 1), (PGD_AT, 1), (CONTROL, 0), (CONTROL, 1),
                        (BASE_MODEL + AA_SUFFIX, 2), (BASE_MODEL + AA_SUFFIX, 3)}
    bases = base_seeds(profile, run, 3, first=1)  # the shared function: the same folders, from the cache
    assert got[(BASE_MODEL, 1)].identity == bases[1].folder.name
    assert got[(BASE_MODEL + AA_SUFFIX, 3)].identity == bases[3].folder.name
    chapter_pgd = next(v for v in card.victims if v.name == PGD_AT)
    starts = {0: study.study_models(profile, run)[BASE_MODEL].folder.name, 1: bases[1].folder.name}
    for k, start in starts.items():  # the recorded warm start of seed k of the defense and of its control
        defense = chapter_pgd if k == 0 else got[(PGD_AT, k)]
        assert _recorded(run, defense.identity)["recipe_params"]["warm_start"] == start
        assert _recorded(run, got[(CONTROL, k)].identity)["recipe_params"] == {"warm_start": start}
    assert chapter_pgd.control == CONTROL and next(v for v in card.victims if v.name == BASE_MODEL).control == "U-Net(Real)"

    v = card.verdicts[(card.verdicts["threat"] == "rotation")].set_index(["defense", "control", "statistic"])
    for pair in ((PGD_AT, CONTROL), (BASE_MODEL, "U-Net(Real)"), (BASE_MODEL, BASE_MODEL + AA_SUFFIX)):
        r = v.loc[(*pair, "rel_auc")]
        assert (r["n_seeds"], r["n_subjects"]) == (2, 3) and np.isfinite(r["p"]) and np.isfinite(r["p_adjusted"])
    assert v.loc[(BASE_MODEL, BASE_MODEL + AA_SUFFIX, "rel_auc"), "kind"] == "A/A"
    assert v.loc[(PGD_AT, CONTROL, "rel_auc"), "kind"] == "defense"
    c = card.evidence[(card.evidence["threat"] == "rotation") & (card.evidence["statistic"] == "rel_auc")].set_index("model")
    assert (c.loc[[PGD_AT, CONTROL, BASE_MODEL, "U-Net(Real)", BASE_MODEL + AA_SUFFIX], "n_seeds"] == 2).all()
    assert c.loc["U-Net(Real+Syn_cen)", "n_seeds"] == 1  # descriptive: one seed, no verdict
    grid = pd.concat(pd.read_csv(p) for p in (run / "card" / "grid" / "rotation").glob("*.csv"))
    assert set(zip(grid["model"], grid["seed"])) == set(got) | {(PGD_AT, 0)}  # the chapter's defense lacks a grid table
    desc = v.loc[("U-Net(Real+Syn_cen)", "U-Net(Real)", "rel_auc")]  # descriptive, over the seed both have
    assert desc["kind"] == "vs base (no control)" and desc["n_seeds"] == 1 and np.isnan(desc["p_adjusted"])
    assert CONTROL not in set(card.verdicts["defense"])  # a control carries no contrast of its own
    assert "(A/A)" in card_study.evidence_markdown(card)

    def refuse(*a, **k):
        raise AssertionError("a rebuild scored a model again")

    monkeypatch.setattr(attacks_base, "score_threat", refuse)
    again = card_study.build_card(profile, run, rows=rows, columns=cols, floor=None)
    assert {(v.model, v.seed, v.identity) for v in again.seed_victims} == {(v.model, v.seed, v.identity) for v in card.seed_victims}
    pd.testing.assert_frame_equal(again.verdicts, card.verdicts)


def test_contrasts_pair_each_model_once_and_take_the_card_s_own_aa_seeds():
    from xrlib.studies.card.rows import Victim
    from xrlib.studies.card.seeds import AA_SUFFIX, CONTROL
    from xrlib.studies.card.study import contrasts

    def v(name, model=None, seed=0, **kw):
        return Victim(name, "r", "d", "09", name, lambda: None, seed=seed, model=model or "", **kw)

    victims = [v(PGD_AT, control=CONTROL, base=BASE_MODEL), v(PGD_AT + " [seed 1]", PGD_AT, 1, control=CONTROL),
               v("U-Net(Real+Syn_cen)", base="U-Net(Real)"), v(CONTROL), v(BASE_MODEL + " [seed 2]", BASE_MODEL + AA_SUFFIX, 2)]
    floor = [v("U-Net(Real+Syn_all) seed 1", base=BASE_MODEL)]
    got = [(c.defense, c.control, c.kind) for c in contrasts(victims, floor)]
    assert got == [(PGD_AT, CONTROL, "defense"), ("U-Net(Real+Syn_cen)", "U-Net(Real)", "vs base (no control)"),
                   (BASE_MODEL, BASE_MODEL + AA_SUFFIX, "A/A")]
    assert [c.kind for c in contrasts(victims[:4], floor)][-1] == "A/A"  # without its own seeds: the floor's A/A
    assert victims[1].model == PGD_AT and victims[0].model == PGD_AT  # a seed-0 victim is its own model


def test_grid_rows_of_a_seed_match_the_chapter_table_s_grid_and_images(toy3, tmp_path):
    """A seed model scored by the card under PGD has the chapter table's budgets, subjects and angles, with its
    seed; a model the table holds at that seed is not scored again."""
    import shutil

    from xrlib.studies.card.rows import Victim
    from xrlib.studies.card.seeds import grid_tables
    from xrlib.studies.pgd.settings import pgd_settings
    from xrlib.studies.robustness import run_threat
    from xrlib.training import load_best

    profile, run0 = toy3
    run = tmp_path / "toyrot"  # a copy: the other tests' run has no PGD table
    for sub in ("datasets", "models"):
        shutil.copytree(run0 / sub, run / sub)
    p = pgd_settings(profile)
    chapter = run_threat(profile, run, "pgd", models=["U-Net(Real)"], alphas=p.alphas, grid=p.grid, steps=p.steps,
                         seed=p.seed).results
    res = study.study_models(profile, run)["U-Net(Real+Syn_cen)"]  # stands in for a seed of U-Net(Real)
    seed1 = Victim("U-Net(Real) [seed 1]", "study", "d", "05", res.folder.name, lambda: load_best(res), seed=1,
                   model="U-Net(Real)")
    seed0 = Victim("U-Net(Real)", "study", "d", "05", "x", lambda: pytest.fail("seed 0 is in the chapter table"))
    rows = grid_tables(profile, run, [seed0, seed1], tables=("pgd",))["pgd"]
    assert set(rows["model"]) == {"U-Net(Real)"} and set(rows["seed"]) == {1}
    key = ["budget", "subject", "alpha"]
    assert sorted(map(tuple, rows[key].astype(str).to_numpy())) == sorted(map(tuple, chapter[key].astype(str).to_numpy()))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_chapter_05_trains_every_study_seed_the_card_and_chapter_10_read(n):
    # n = card.seeds: U-Net(Real) and the base get seeds 1 … n − 1, the base also its A/A seeds n … 2n − 1;
    # chapter 10's repeated trainings (the base's seeds 1 … noise.seeds) are among them at quick (nothing new to train)
    from xrlib.core.profiles import load_profile
    from xrlib.studies.noise.settings import noise_settings
    from xrlib.studies.noise.study import repeated_configs
    from xrlib.studies.rotation.seeds import evidence_seed_configs

    quick = load_profile("quick")
    profile = validate_profile(dict(quick.raw, card={**quick.raw["card"], "seeds": n}), "t.yml")
    names = [c.name for c in evidence_seed_configs(profile)]
    expected = ([seed_name("U-Net(Real)", k) for k in range(1, n)] + [seed_name(BASE_MODEL, k) for k in range(1, 2 * n)]
                if n >= 2 else [])
    assert names == expected
    got = {c.config_hash(None) for c in evidence_seed_configs(profile)}
    assert all(study_seed_config(profile, BASE_MODEL, k).config_hash(None) in got for k in range(1, 2 * n)) or n == 1
    if n == 3:  # the shipped quick profile: noise.seeds = 5 = 2n − 1
        assert noise_settings(profile).seeds == 5
        assert {c.config_hash(None) for c in repeated_configs(profile, noise_settings(profile))} <= got
