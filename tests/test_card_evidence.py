"""The card's evidence on constructed robustness tables: curve cells with subjects × seeds, the fixed-budget
view, the verdicts against controls with Holm adjustment, the A/A row and its warning, and the CSV outputs.

Module: xrlib.studies.card.evidence.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from xrlib.studies.card import evidence as ce

SUBJECTS = [f"s{i}" for i in range(8)]
ALPHAS = (0.0, 5.0, -5.0, 10.0, -10.0, 20.0, -20.0, 40.0, -40.0)


def _rotation(model: str, seeds, slope: float, rng, seed_sd=0.01, subj=None) -> pd.DataFrame:
    """Dice = clean − slope · log2(1 + |α|/5) per image (clipped at 0), with subject and seed effects."""
    subj = subj if subj is not None else dict(zip(SUBJECTS, rng.normal(0, 0.02, len(SUBJECTS))))
    rows = []
    for k in seeds:
        sk = rng.normal(0, seed_sd)
        for s in SUBJECTS:
            clean = 0.85 + subj[s] + sk
            for a in ALPHAS:
                d = max(clean - slope * math.log2(1 + abs(a) / 5) + rng.normal(0, 0.01), 0.0)
                rows.append({"model": model, "seed": k, "threat": "rotation", "budget": a, "budget_unit": "deg",
                             "subject": s, "alpha": a, "dice": d, "dice_clean": clean})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tables():
    rng = np.random.default_rng(0)
    subj = dict(zip(SUBJECTS, rng.normal(0, 0.02, len(SUBJECTS))))
    rot = pd.concat([
        _rotation("base", (0, 1, 2), 0.15, rng, subj=subj),
        _rotation("base [other seeds]", (3, 4, 5), 0.15, rng, subj=subj),
        _rotation("control", (0, 1, 2), 0.15, rng, subj=subj),
        _rotation("defense", (0, 1, 2), 0.08, rng, subj=subj),  # loses Dice half as fast
        _rotation("null-defense", (0, 1, 2), 0.15, rng, subj=subj),
    ], ignore_index=True)
    return {"rotation": rot}


def test_curve_cells_carry_subjects_and_seeds(tables):
    rows = {"rotation": ce.threat_rows(tables, ce.CURVE_THREATS[0])}
    assert sorted(rows["rotation"]["severity"].unique()) == [0.0, 5.0, 10.0, 20.0, 40.0]  # |α|
    cells, units = ce.curve_cells(rows)
    assert list(cells.columns) == list(ce.CELL_FIELDS)
    assert (cells["n_subjects"] == 8).all() and (cells["n_seeds"] == 3).all()
    rel = cells[cells["statistic"] == "rel_auc"].set_index("model")["value"]
    assert rel["defense"] > rel["control"] + 0.1
    b50 = cells[cells["statistic"] == "b50"].set_index("model")
    assert b50.loc["defense", "note"] == "> b_max = 40"  # 0.85 − 0.08·log2(9) > 0.425: never halves
    assert 5 < b50.loc["control", "value"] < 40 and b50.loc["control", "lo"] < b50.loc["control", "value"]


def test_verdicts_against_controls_and_the_aa_row(tables, tmp_path):
    rows = {"rotation": ce.threat_rows(tables, ce.CURVE_THREATS[0])}
    _, units = ce.curve_cells(rows)
    contrasts = [ce.Contrast("defense", "control"), ce.Contrast("null-defense", "control"),
                 ce.Contrast("base", "base [other seeds]", "A/A")]
    v = ce.verdict_table(units, contrasts)
    assert list(v.columns[:len(ce.VERDICT_FIELDS)]) == list(ce.VERDICT_FIELDS)
    got = v.set_index(["defense", "statistic"])["verdict"]
    assert got[("defense", "rel_auc")] == "more robust"
    assert got[("null-defense", "rel_auc")].startswith("no evidence at this size (MDD ")
    assert got[("base", "rel_auc")].startswith("no evidence")
    assert (v["p_adjusted"] >= v["p"]).all() and (v["n_seeds"] == 3).all() and (v["n_subjects"] == 8).all()
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(v["p_adjusted"], multipletests(v["p"], method="holm")[1])  # over the whole table
    assert ce.aa_warning(v) == ""
    md = ce.verdicts_markdown(v)
    assert "base − base [other seeds] (A/A)" in md and "8 × 3" in md
    paths = ce.write_evidence(tmp_path, *ce.curve_cells(rows)[:1], v)
    assert list(pd.read_csv(paths["cells"]).columns) == list(ce.CELL_FIELDS)
    assert list(pd.read_csv(paths["verdicts"]).columns) == list(ce.VERDICT_FIELDS)


def test_an_aa_row_with_a_verdict_is_a_warning(tables):
    """Constructed failing A/A: the 'other seeds' retraining is in truth worse — the check must flag it."""
    rng = np.random.default_rng(1)
    rot = pd.concat([tables["rotation"][tables["rotation"]["model"] == "base"],
                     _rotation("base [other seeds]", (3, 4, 5), 0.25, rng)], ignore_index=True)
    _, units = ce.curve_cells({"rotation": ce.threat_rows({"rotation": rot}, ce.CURVE_THREATS[0])})
    v = ce.verdict_table(units, [ce.Contrast("base", "base [other seeds]", "A/A")])
    assert (v["verdict"] == "more robust").any()
    assert ce.aa_warning(v).startswith("**Warning:** the A/A row") and "rotation rel_auc" in ce.aa_warning(v)


def test_a_missing_model_is_named_not_dropped(tables):
    rows = {"rotation": ce.threat_rows(tables, ce.CURVE_THREATS[0])}
    _, units = ce.curve_cells(rows)
    v = ce.verdict_table(units, [ce.Contrast("defense", "no-such-control")])
    assert v["verdict"].str.startswith("n/a (a model of the pair").all() and v["p_adjusted"].isna().all()


def test_baseline_suppresses_curves_of_models_that_do_not_beat_it(tables):
    rows = {"rotation": ce.threat_rows(tables, ce.CURVE_THREATS[0])}
    cells, _ = ce.curve_cells(rows, baseline=0.95)  # above every model's clean Dice
    curve = cells[cells["statistic"] != "clean"]
    assert curve["value"].isna().all() and curve["note"].str.contains("mean-mask baseline").all()
    assert cells.loc[cells["statistic"] == "clean", "value"].notna().all()


def test_fixed_budget_view_takes_the_nearest_grid_budget(tables):
    rows = {"rotation": ce.threat_rows(tables, ce.CURVE_THREATS[0])}
    f = ce.fixed_cells(rows, {"rotation": 12.0})
    assert set(f["statistic"]) == {"dice@10"} and (f["n_seeds"] == 3).all()
    d = rows["rotation"]
    exp = d[(d["model"] == "defense") & (d["severity"] == 10.0)]["dice"].mean()
    assert f.set_index("model").loc["defense", "value"] == pytest.approx(exp)


def test_pgd_tables_combine_by_the_per_image_minimum_and_noise_dose_is_inverted():
    base = {"model": "m", "subject": "s0", "dice_clean": 0.9}
    pgd = pd.DataFrame([{**base, "budget": 0.01, "dice": 0.5}, {**base, "budget": 0.01, "dice": 0.7}])
    seg = pd.DataFrame([{**base, "budget": 0.01, "dice": 0.6}, {**base, "budget": 0.01, "dice": 0.4}])
    th = next(t for t in ce.CURVE_THREATS if t.key == "pgd")
    r = ce.threat_rows({"pgd": pgd, "segpgd": seg}, th)
    assert sorted(r["dice"]) == [0.4, 0.5]
    noise = pd.DataFrame([{**base, "budget": b, "dice": 0.8, "arm": arm} for b in (0.4, 0.1, 0.025)
                          for arm in ("rerendered", "other")])
    r = ce.threat_rows({"noise": noise}, next(t for t in ce.CURVE_THREATS if t.key == "noise"))
    assert sorted(r["severity"]) == [1.0, 4.0, 16.0]  # ref/dose: 0, 2 and 4 halvings; one arm only


def test_a_defense_without_control_gets_an_interval_but_no_verdict(tables):
    rows = {"rotation": ce.threat_rows(tables, ce.CURVE_THREATS[0])}
    _, units = ce.curve_cells(rows)
    v = ce.verdict_table(units, [ce.Contrast("defense", "base", ce.NO_CONTROL), ce.Contrast("defense", "control")])
    nc = v[v["kind"] == ce.NO_CONTROL]
    assert nc["verdict"].str.startswith("no verdict: no control trained").all()
    assert nc["p"].notna().all() and nc["p_adjusted"].isna().all() and nc["lo"].notna().all()
    from statsmodels.stats.multitest import multipletests

    fam = v[v["kind"] == "defense"]
    np.testing.assert_allclose(fam["p_adjusted"], multipletests(fam["p"], method="holm")[1])  # family: 2 rows only


def test_unpaired_seeds_are_named_in_the_verdict(tables):
    rows = {"rotation": ce.threat_rows(tables, ce.CURVE_THREATS[0])}
    _, units = ce.curve_cells(rows)
    v = ce.verdict_table(units, [ce.Contrast("defense", "base [other seeds]")])  # seeds 0–2 vs 3–5, paired by value
    assert v["verdict"].str.startswith("n/a (a paired contrast needs the same subjects and seeds").all()


def test_a_model_with_one_subject_gets_named_na_cells_not_a_crash(tables):
    rot = tables["rotation"]
    one = rot[(rot["model"] == "control") & (rot["subject"] == "s0")]
    rows = {"rotation": ce.threat_rows({"rotation": pd.concat([rot[rot["model"] == "defense"], one])},
                                       ce.CURVE_THREATS[0])}
    cells, units = ce.curve_cells(rows)
    bad = cells[cells["model"] == "control"]
    assert bad["value"].isna().all() and bad["note"].str.startswith("n/a (one subject").all()
    assert set(units["model"]) == {"defense"}
    v = ce.verdict_table(units, [ce.Contrast("defense", "control")])
    assert v["verdict"].str.startswith("n/a (a model of the pair").all()


def test_one_seed_gets_an_interval_but_no_verdict_and_two_seeds_a_note(tables):
    rot = tables["rotation"]
    rows = {"rotation": ce.threat_rows({"rotation": rot[rot["seed"] == 0]}, ce.CURVE_THREATS[0])}
    _, units = ce.curve_cells(rows)
    v = ce.verdict_table(units, [ce.Contrast("defense", "control")])
    assert v["verdict"].str.startswith("n/a (1 seed").all() and v["lo"].notna().all() and v["p"].isna().all()
    rows = {"rotation": ce.threat_rows({"rotation": rot[rot["seed"] < 2]}, ce.CURVE_THREATS[0])}
    v = ce.verdict_table(ce.curve_cells(rows)[1], [ce.Contrast("defense", "control")])
    assert v["note"].str.startswith("2 seed(s), fewer than the design's 3").all()
    assert (v.set_index("statistic").loc["rel_auc", "verdict"]) == "more robust"


def test_fixed_view_sits_at_the_base_models_b50(tables):
    rows = {"rotation": ce.threat_rows(tables, ce.CURVE_THREATS[0])}
    cells, _ = ce.curve_cells(rows)
    got = ce.b50_budgets(cells, "control")
    b = cells[(cells["model"] == "control") & (cells["statistic"] == "b50")]["value"].iloc[0]
    assert got == {"rotation": pytest.approx(b)}
    assert ce.b50_budgets(cells, "defense") == {}  # censored: "> b_max", no fixed budget from it


def test_the_card_in_brief_names_reached_verdicts_and_the_aa_outcome():
    """The README's card: the retained-fraction table and only the verdicts that were reached; the A/A row's
    outcome in one sentence (a warning when it got a verdict)."""
    from types import SimpleNamespace

    ONE_CT = "virtual subjects of one CT (not independent patients)"

    from xrlib.studies.card.study import summary_markdown

    cells = pd.DataFrame({"model": ["A", "B"], "threat": ["rotation"] * 2, "statistic": ["rel_auc"] * 2,
                          "value": [0.8, 0.6], "lo": [0.7, 0.5], "hi": [0.9, 0.7], "n_subjects": [12, 12],
                          "n_seeds": [3, 3], "note": ["", ""]})
    rows = [dict(defense="A", control="B", threat="rotation", statistic="rel_auc", difference=0.2, lo=0.1, hi=0.3,
                 verdict="more robust", kind="defense"),
            dict(defense="C", control="B", threat="rotation", statistic="rel_auc", difference=0.01, lo=-0.1, hi=0.12,
                 verdict="no evidence at this size (MDD 0.15)", kind="defense"),
            dict(defense="B", control="B [other seeds]", threat="rotation", statistic="rel_auc", difference=0.0,
                 lo=-0.1, hi=0.1, verdict="no evidence at this size (MDD 0.1)", kind="A/A")]
    card = SimpleNamespace(profile="quick", evidence=cells, verdicts=pd.DataFrame(rows), cohort=ONE_CT)
    text = summary_markdown(card)
    assert "| A | 0.800 [0.700, 0.900] (12×3) |" in text
    assert "A vs B: more robust under rotation (rel_auc, +0.200 [+0.100, +0.300])" in text
    assert "C vs B" not in text and "3 contrast(s)" in text
    assert "The A/A row (the base against itself retrained with other seeds) got no verdict" in text
    rows[2]["verdict"] = "less robust"
    warned = summary_markdown(SimpleNamespace(profile="quick", evidence=cells, verdicts=pd.DataFrame(rows), cohort=ONE_CT))
    assert "**Warning:** the A/A row" in warned
    rows[0]["verdict"] = "no evidence at this size (MDD 0.3)"
    rows[2]["verdict"] = "no evidence at this size (MDD 0.1)"
    none = summary_markdown(SimpleNamespace(profile="quick", evidence=cells, verdicts=pd.DataFrame(rows), cohort=ONE_CT))
    assert "none reached: no evidence at this size for any contrast" in none


def test_curve_heatmap_marks_cells_without_interval_or_summary():
    """The card's headline figure: the retained fraction per model × threat, its interval or "n/a (k subj.)",
    "n/a" for a cell without a summary, and a clear error when the statistic is absent."""
    import matplotlib

    matplotlib.use("Agg")
    from xrlib.plots import curve_heatmap

    cells = pd.DataFrame([
        {"model": "A", "threat": "rotation", "statistic": "rel_auc", "value": 0.9, "lo": 0.8, "hi": 1.0, "n_subjects": 12, "n_seeds": 3},
        {"model": "A", "threat": "pose", "statistic": "rel_auc", "value": 0.5, "lo": float("nan"), "hi": float("nan"),
         "n_subjects": 2, "n_seeds": 3},
        {"model": "B", "threat": "rotation", "statistic": "rel_auc", "value": float("nan"), "lo": float("nan"),
         "hi": float("nan"), "n_subjects": 12, "n_seeds": 1}])
    fig = curve_heatmap(cells)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0.50\nn/a (2 subj.)", "0.90\n[0.80, 1.00]", "n/a"]
    with pytest.raises(ValueError, match="no statistic 'auc'"):
        curve_heatmap(cells, "auc")
