"""Chapter 13, the robustness card: the joins, the statistics per cell, the ranking, the cache and the CLI."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from xrlib.core.errors import InputError
from xrlib.studies.card import analysis
from xrlib.studies.card.card import CardError, cells, matrix, part_rows
from xrlib.studies.card.columns import COLUMNS, Column, Part
from xrlib.studies.card.rows import ROWS, RowSpec, Victim
from xrlib.studies.card.settings import CardSettings

BY_KEY = {c.key: c for c in COLUMNS}
S = CardSettings(pose_budget=10.0, pgd_eps=0.03, noise_dose_mas=4e-5, xi=2.0, seed_floor=False)


def _rows(model: str, threat: str, dice, subjects, budget=0.03, clean=None) -> pd.DataFrame:
    dice = np.asarray(dice, float)
    clean = np.full(len(dice), 0.9) if clean is None else np.asarray(clean, float)
    return pd.DataFrame({"model": model, "threat": threat, "budget": budget, "budget_unit": "u", "subject": subjects,
                         "alpha": 0.0, "alpha_group": "Center", "dice": dice, "hd95_mm": 1.0, "dice_clean": clean,
                         "dice_vs_clean_pred": np.nan, "success": clean - dice >= 0.3 * clean, "changed": pd.NA})


def _constructed():
    """Two models; PGD and SegPGD tables at ε 0.03 with known means: A 0.6 / 0.4, B 0.7 / 0.8."""
    subj = ["s1", "s1", "s2", "s2"]
    return {("A", "pgd", "pgd"): (_rows("A", "pgd", [0.5, 0.7, 0.5, 0.7], subj), "t"),
            ("A", "pgd", "segpgd"): (_rows("A", "segpgd", [0.4, 0.4, 0.3, 0.5], subj), "t"),
            ("B", "pgd", "pgd"): (_rows("B", "pgd", [0.7, 0.7, 0.7, 0.7], subj), "t"),
            ("B", "pgd", "segpgd"): (_rows("B", "segpgd", [0.8, 0.8, 0.8, 0.8], subj), "t"),
            ("A", "learned", "deformation"): (_rows("A", "deformation", [0.9, 0.2, 0.9, 0.2], subj), "t"),
            ("B", "learned", "deformation"): (_rows("B", "deformation", [0.1, 0.1, 0.2, 0.9], subj), "t")}


def test_constructed_tables_give_the_known_matrix():
    cols = (BY_KEY["pgd"], BY_KEY["learned"])
    t = cells(_constructed(), cols)
    m = matrix(t, ["A", "B"], cols)
    # PGD/SegPGD: the minimum mean Dice over the two attacks; learned: the success rate (Dice fell ≥ 30 %)
    np.testing.assert_allclose(m.to_numpy(), [[0.4, 0.5], [0.7, 0.75]])
    pgd = t[t["column"] == "pgd"].set_index("model")
    assert pgd.loc["A", "strongest"] == "segpgd" and pgd.loc["B", "strongest"] == "pgd"
    assert (t["n_images"] == 4).all() and (t["n_subjects"] == 2).all() and (t["n_seeds"] == 1).all()
    # two subjects: below the minimum for an interval, so none (never the spread of two values as a "CI")
    assert t["lo"].isna().all() and t["hi"].isna().all()
    three = {k: (pd.concat([df, df.assign(subject="s3")]), src) for k, (df, src) in _constructed().items()}
    pgd3 = cells(three, cols).query("column == 'pgd'").set_index("model")
    assert pgd3.loc["B", "lo"] == pytest.approx(0.7) and pgd3.loc["B", "hi"] == pytest.approx(0.7)  # constant: a point
    assert pgd3.loc["A", "lo"] < pgd3.loc["A", "value"] < pgd3.loc["A", "hi"]


def test_a_missing_or_empty_cell_is_an_error_never_a_blank():
    cols = (BY_KEY["pgd"], BY_KEY["learned"])
    rows = _constructed()
    del rows[("B", "learned", "deformation")]
    with pytest.raises(CardError, match="model 'B' × column 'learned'"):
        matrix(cells(rows, cols), ["A", "B"], cols)
    rows = _constructed()
    rows[("B", "pgd", "segpgd")] = (rows[("B", "pgd", "segpgd")][0].iloc[:0], "t")  # one attack without images
    t = cells(rows, cols)
    assert t.set_index(["model", "column"]).loc[("B", "pgd"), "n_images"] == 0
    with pytest.raises(CardError, match="model 'B' × column 'pgd'"):
        matrix(t, ["A", "B"], cols)


def test_ranking_orients_each_statistic():
    cols = (BY_KEY["pgd"], BY_KEY["learned"])
    t = cells(_constructed(), cols)
    r = analysis.ranking(t, ["A", "B"], cols)
    # Dice: higher is more robust (B first); success rate: lower is more robust (A 0.5 < B 0.75)
    assert r[r["column"] == "pgd"]["model"].tolist() == ["B", "A"]
    assert r[r["column"] == "learned"]["model"].tolist() == ["A", "B"]
    tie = t.copy()
    tie.loc[tie["column"] == "pgd", "value"] = 0.5
    assert analysis.ranking(tie, ["A", "B"], cols).query("column == 'pgd'")["rank"].tolist() == [1, 1]


def test_contrasts_use_controls_and_name_the_aa_row():
    from xrlib.studies.card.evidence import NO_CONTROL
    from xrlib.studies.card.study import contrasts

    v = [Victim("A", "r", "none", "05", "a", lambda: None),
         Victim("B", "r", "a defense", "09", "b", lambda: None, base="A"),
         Victim("C", "r", "another", "09", "c", lambda: None, base="A", control="A+ft")]
    floor = [Victim("A#1", "floor", "seed", "10", "f", lambda: None)]
    got = [(c.defense, c.control, c.kind) for c in contrasts(v, floor)]
    assert got == [("B", "A", NO_CONTROL), ("C", "A+ft", "defense"),
                   ("U-Net(Real+Syn_all)", "U-Net(Real+Syn_all) [other seeds]", "A/A")]


def test_noise_sar_is_conditional_on_good_clean_predictions():
    """SAR scores only images whose clean prediction is in the top band (Dice ≥ 0.8): a weak model whose clean
    predictions all sit in the lowest band — where noise cannot push them lower — is not applicable (n/a), not
    the most robust; one with a single good image of four is scored but not ranked."""
    col = BY_KEY["noise"]
    subj = ["s1", "s1", "s2", "s2"]
    rows = {  # good: 4 good clean predictions, one leaves the band (0.9 → 0.7): SAR 1/4
        ("good", "noise", "noise"): (_rows("good", "noise", [0.9, 0.7, 0.85, 0.9], subj, clean=[0.9, 0.9, 0.9, 0.9]), "t"),
        # weak: every clean Dice < 0.5; the pooled statistic would give SAR 0 (nothing leaves its band)
        ("weak", "noise", "noise"): (_rows("weak", "noise", [0.1, 0.2, 0.1, 0.3], subj, clean=[0.2, 0.3, 0.1, 0.3]), "t"),
        # few: one good clean prediction of four, it stays good: SAR 0 on 1 image (< 50 %: not ranked)
        ("few", "noise", "noise"): (_rows("few", "noise", [0.9, 0.2, 0.1, 0.6], subj, clean=[0.9, 0.3, 0.1, 0.7]), "t")}
    t = cells(rows, (col,)).set_index("model")
    assert t.loc["good", "value"] == pytest.approx(0.25) and t.loc[["good", "weak", "few"], "n_rows"].tolist() == [4, 4, 4]
    assert t.loc["good", "n_images"] == 4 and t.loc["few", "n_images"] == 1 and t.loc["few", "value"] == 0.0
    assert np.isnan(t.loc["weak", "value"]) and t.loc["weak", "n_images"] == 0
    table = t.reset_index()
    m = matrix(table, ["good", "weak", "few"], (col,))  # defined cells: no CardError for the n/a one
    assert m.loc["good", "noise"] == pytest.approx(0.25) and np.isnan(m.loc["weak", "noise"])
    r = analysis.ranking(table, ["good", "weak", "few"], (col,))
    assert r["model"].tolist() == ["good"]
    left = analysis.unranked(table, ["good", "weak", "few"], (col,)).set_index("model")
    assert left.loc["weak", "reason"] == "images whose clean prediction has Dice ≥ 0.8: 0 of 4 images (none: not applicable)"
    assert left.loc["few", "reason"] == "images whose clean prediction has Dice ≥ 0.8: 1 of 4 images (< 50%)"


def test_few_subjects_note_names_each_column():
    from xrlib.studies.card.card import few_subjects_note

    cols = (BY_KEY["pgd"], BY_KEY["learned"])
    t = cells(_constructed(), cols)
    assert few_subjects_note(t, cols) == (
        "The intervals rest on few subjects — per column: PGD/SegPGD L∞ 2; learned deformation + bias 2 — "
        "virtual subjects of few CTs (and the Real surrogate's test subjects): rough indications, not population intervals.")
    t.loc[t["model"] == "B", "n_subjects"] = 25
    assert "PGD/SegPGD L∞ 2–25" in few_subjects_note(t, cols)
    t["n_subjects"] = 20
    assert few_subjects_note(t, cols) == ""


def test_chapter_08_rows_cost_against_the_study_unet(monkeypatch):
    """Chapter 08's models train from scratch: their base is U-Net(Real), their extra time the difference."""
    from types import SimpleNamespace

    from xrlib.studies.card import rows as card_rows
    from xrlib.studies.sim import study as sim_study

    def res(name, seconds):
        return SimpleNamespace(name=name, folder=f"/m/{name}-abc", seconds=seconds)

    monkeypatch.setattr(sim_study, "sim_models", lambda p, r: {"Real/strong": res("Real/strong", 30.0),
                                                               "Naive-ADDA/strong": res("Naive-ADDA/strong", 80.0),
                                                               "Naive-Cyc/strong": res("Naive-Cyc/strong", 40.0)})
    monkeypatch.setattr(card_rows.study, "study_models", lambda p, r: {"U-Net(Real)": res("U-Net(Real)", 50.0)})
    # the Cyc model's images come from a CycleGAN that took 15 s to train
    monkeypatch.setattr(sim_study, "training_seconds",
                        lambda p, r, got: {n: r_.seconds + (15.0 if "Cyc" in n else 0.0) for n, r_ in got.items()})
    [dr] = card_rows._sim_rows("strong-dr")(None, None)
    da, cyc = card_rows._sim_rows("domain-adaptation")(None, None)
    assert (dr.base, dr.extra_s, dr.train_s) == ("U-Net(Real)", -20.0, 30.0)
    assert (da.base, da.extra_s) == ("U-Net(Real)", 30.0)
    assert (cyc.name, cyc.extra_s, cyc.train_s) == ("Naive-Cyc/strong", 5.0, 55.0)
    t = pd.DataFrame({"model": ["U-Net(Real)", "Real/strong"], "column": "clean-real", "value": [0.8, 0.6]})
    c = analysis.costs(t, [dr]).iloc[0]
    assert c["base"] == "U-Net(Real)" and c["extra training (s)"] == -20.0
    assert c["Δ clean (Real surrogate)"] == pytest.approx(-0.2)


def test_part_rows_reads_the_chapter_table_computes_the_rest_and_caches(tmp_path):
    """A model in the chapter's table is read from it; another is computed once, then read from the cache."""
    from xrlib.core.profiles import load_profile
    from xrlib.eval.robustness import write_robustness

    calls = []

    def compute(profile, run, s, victims):
        calls.append(sorted(victims))
        return pd.concat([_rows(n, "pgd", [0.25, 0.75], ["s1", "s2"]) for n in victims], ignore_index=True)

    write_robustness(pd.concat([_rows("A", "pgd", [0.5, 0.5], ["s1", "s2"]),
                                _rows("A", "pgd", [0.9, 0.9], ["s1", "s2"], budget=0.07)]), tmp_path, "pgd")
    part = Part("pgd", lambda d, p, s: d[np.isclose(d["budget"], s.pgd_eps)], compute)
    col = Column("pgd", "t", "09", lambda s: "", "mean Dice", lambda d: d["dice"], True, (part,))
    victims = [Victim(n, "r", "d", "09", f"{n}-weights", lambda: object()) for n in ("A", "B")]
    profile = load_profile("smoke")
    got = part_rows(profile, tmp_path, S, col, part, victims)
    assert calls == [["B"]]
    assert got["A"][1] == "chapter 09 table (pgd.csv)" and got["A"][0]["dice"].tolist() == [0.5, 0.5]
    assert got["B"][1] == "computed by the card" and got["B"][0]["dice"].tolist() == [0.25, 0.75]
    again = part_rows(profile, tmp_path, S, col, part, victims)
    assert calls == [["B"]] and again["B"][1] == "computed by the card (cached)"
    pd.testing.assert_frame_equal(again["B"][0], got["B"][0], check_dtype=False)
    victims[1].identity = "B-retrained"  # other weights: a new key, computed again
    part_rows(profile, tmp_path, S, col, part, victims)
    assert calls == [["B"], ["B"]]


def test_card_settings_bad_input_names_the_key():
    from xrlib.core.profiles import load_profile, validate_profile
    from xrlib.studies.card.settings import card_settings

    raw = dict(load_profile("smoke").raw)
    raw["card"] = {**raw["card"], "pgd_eps": 2.0}
    with pytest.raises(InputError, match=r"card.pgd_eps: expected a number in \(0, 1\], got 2.0"):
        card_settings(validate_profile(raw, "bad.yml"))
    raw["card"] = {**raw["card"], "pgd_eps": 0.03, "eps": 0.03}
    with pytest.raises(InputError, match=r"card: unknown key\(s\) \['eps'\]"):
        card_settings(validate_profile(raw, "bad.yml"))


def test_registries_list_every_not_built_chapter_explicitly():
    assert all(r.missing.startswith("not in this build (chapter") for r in ROWS if r.victims is None)
    assert all(c.missing.startswith("not in this build (chapter") for c in COLUMNS if not c.parts)
    assert all(c.parts or c.missing for c in COLUMNS)


def test_card_on_the_toy_run_joins_every_row_with_every_column(toy_run, tmp_path):
    """End to end on the toy study: the rotation table holds one model, the card computes the rest (rotation,
    clean and PGD/SegPGD with the chapters' code), caches them, and lists the not-built row and column."""
    from xrlib.studies.card import study as card_study
    from xrlib.studies.robustness import run_threat

    from xrlib.core.profiles import validate_profile

    profile, run0, _ = toy_run
    profile = validate_profile({**profile.raw, "card": {**profile.raw["card"], "seed_floor": True, "seeds": 1}}, "toyrot.yml")
    run = tmp_path / "toyrot"
    shutil.copytree(run0 / "datasets", run / "datasets")
    shutil.copytree(run0 / "models", run / "models")
    ref = run_threat(profile, run, "rotation")  # every model; the card's table only keeps U-Net(Real)
    ref.results[ref.results["model"] == "U-Net(Real)"].pipe(lambda d: d.to_csv(ref.path, index=False))
    rows = (ROWS[0], RowSpec("later", "08", "a later defense", None, "not in this build (chapter 08 not yet built: x)"))
    later = Column("later", "a later threat", "14", lambda s: "-", "mean Dice", None, True,
                   missing="not in this build (chapter 14 not yet built: y)")
    cols = (*(BY_KEY[k] for k in ("clean-syn", "clean-real", "rotation", "pgd")), later)
    def seeds(profile, run):  # two of the study models stand in for repeated-seed trainings (their cells are shared)
        return [v for v in ROWS[0].victims(profile, run) if v.name != "U-Net(Real)"]

    floor = RowSpec("floor", "10", "stand-in seeds", seeds)
    card = card_study.build_card(profile, run, rows=rows, columns=cols, floor=floor)
    assert card.models == ["U-Net(Real)", "U-Net(Real+Syn_cen)", "U-Net(Real+Syn_all)"]
    fl = card.floor.set_index("column")
    spread = card.matrix.loc[["U-Net(Real+Syn_cen)", "U-Net(Real+Syn_all)"]]
    np.testing.assert_allclose(fl.loc[spread.columns, "floor"], (spread.max() - spread.min()).to_numpy())
    assert (fl["n_seeds"] == 2).all() and "seed spread (max − min over 2 seeds)" in card_study.card_markdown(card)
    assert card.matrix.shape == (3, 4) and card.matrix.notna().all().all()
    c = card.cells.set_index(["model", "column"])
    assert c.loc[("U-Net(Real)", "rotation"), "source"] == "chapter 06 table (rotation.csv)"
    assert c.loc[("U-Net(Real+Syn_all)", "rotation"), "source"] == "computed by the card"
    # computed cells agree with the chapter's own threat: Moderate groups of the full rotation run
    full = ref.results[ref.results["alpha_group"].str.startswith("Moderate")].groupby("model")["dice"].mean()
    np.testing.assert_allclose(card.matrix["rotation"], full.reindex(card.models), rtol=0, atol=1e-9)
    assert (c.loc[(slice(None), "clean-real"), "n_images"] == 4).all()  # the toy Real test split
    assert (c.loc[(slice(None), "pgd"), "strongest"].isin(["pgd", "segpgd"])).all()
    again = card_study.build_card(profile, run, rows=rows, columns=cols, floor=floor)
    assert set(again.cells.loc[again.cells["source"].str.startswith("computed"), "source"]) == {"computed by the card (cached)"}
    pd.testing.assert_frame_equal(again.matrix, card.matrix)
    paths = card_study.write_card(card, run)
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == (3 + 2 + 1) * 5  # models, floor models and the not-built row × every column, the not-built one too
    ok = csv[csv["status"] == "ok"]
    assert len(ok) == 20 and ok["value"].notna().all() and (ok["n_images"] > 0).all()
    assert set(csv.loc[csv["status"] != "ok", "status"]) == {rows[1].missing, later.missing}
    head = paths["headline"].read_text(encoding="utf-8")
    assert "not in this build (chapter 08 not yet built: x)" in head and "| U-Net(Real+Syn_all) |" in head
    # the curve card from the chapter's rotation table (it holds U-Net(Real) only) and the verdict rows
    ev_cells = pd.read_csv(paths["cells"])
    assert set(ev_cells["model"]) == {"U-Net(Real)"} and set(ev_cells["threat"]) == {"rotation"}
    assert (ev_cells["n_seeds"] == 1).all() and (ev_cells["n_subjects"] >= 1).all()
    verdicts = pd.read_csv(paths["verdicts"])
    assert verdicts["verdict"].str.startswith(("n/a", "no verdict")).all()  # no control and no seeds: no verdict
    assert "(A/A)" in head and "retained fraction" in head


def test_cli_card_flags_exit_2_with_one_line(capsys):
    from xrlib.cli import main

    assert main(["robustness", "--profile", "smoke", "--card", "--threat", "pgd"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "xrlib robustness: --card takes no --threat (its rows, threats and budgets are the card's; set them in the "
        "profile's card: block)"]
    assert main(["robustness", "--profile", "smoke", "--card", "--steps", "3"]) == 2
    assert "--card takes no --steps" in capsys.readouterr().err
    assert main(["robustness", "--profile", "smoke"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["xrlib robustness: give --threat T (one threat) or --card (every threat)"]
    assert main(["robustness", "--profile", "no-such-profile", "--card"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_findings_show_a_result_figure_above_its_section(tmp_path):
    from xrlib.publish.pages import result_figures, result_sections

    (tmp_path / "card").mkdir()
    (tmp_path / "pose").mkdir()
    (tmp_path / "card" / "headline.md").write_text("**card**\n", encoding="utf-8")
    (tmp_path / "card" / "headline.png").write_bytes(b"\x89PNG")
    (tmp_path / "pose" / "headline.md").write_text("**pose**\n", encoding="utf-8")
    assert result_figures(tmp_path) == {tmp_path / "card" / "headline.png": "card.png"}
    assert result_sections(tmp_path, figures=True) == [
        "![result figure of card](generated/figures/card.png)", "", "**card**", "", "**pose**", ""]
    assert result_sections(tmp_path) == ["**card**", "", "**pose**", ""]  # the README: text only


def test_heatmap_greys_out_and_marks_the_unranked_cells():
    import matplotlib

    matplotlib.use("Agg")
    from xrlib import plots

    cols = (BY_KEY["pgd"], BY_KEY["noise"])
    m = pd.DataFrame({"pgd": [0.5, 0.6], "noise": [np.nan, 0.0]}, index=["A", "B"])
    left = pd.DataFrame({"model": ["A", "B"], "column": ["noise", "noise"]})
    fig = plots.card_heatmap(m, cols, unranked=left)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0.50", "n/a", "0.60", "0.00*"]
    assert "grey: not ranked" in fig.axes[0].get_xlabel()
    assert [t.get_text() for t in plots.card_heatmap(m, cols).axes[0].texts] == ["0.50", "–", "0.60", "0.00"]


def test_learned_success_rate_counts_only_good_clean_predictions():
    col = BY_KEY["learned"]
    subj = ["s1", "s1", "s2", "s2"]
    # two good clean predictions (0.9): one falls to 0.2 (success), one holds; two bad ones (0.5) are not scored
    rows = {("m", "learned", "deformation"): (_rows("m", "deformation", [0.2, 0.9, 0.1, 0.1], subj,
                                                     clean=[0.9, 0.9, 0.5, 0.5]), "t")}
    t = cells(rows, (col,)).set_index("model")
    assert t.loc["m", "value"] == pytest.approx(0.5) and t.loc["m", "n_images"] == 2 and t.loc["m", "n_rows"] == 4


@pytest.mark.parametrize("grid, expected", [((0, 1, 2, 3), None), ((0, 2), (0.0, 1.0))])
def test_acquisition_cells_reuse_chapter_08s_renders_when_its_grid_holds_the_budget(monkeypatch, grid, expected):
    # the card's budget-1 images are chapter 08's cached ones (same draws per budget); a grid without budget 1
    # renders the card's own (0, 1) grid
    import dataclasses

    import xrlib.studies.card.columns as columns
    import xrlib.studies.sim.settings as sim_settings_module
    import xrlib.studies.sim.sources as sources
    from xrlib.core.profiles import load_profile

    seen = {}

    class Stop(Exception):
        pass

    def fake_threat(profile, run, budgets=None, **kw):
        seen["budgets"] = budgets
        raise Stop

    real = sim_settings_module.sim_settings
    monkeypatch.setattr(sources, "acquisition_threat", fake_threat)
    monkeypatch.setattr(sim_settings_module, "sim_settings",
                        lambda p: dataclasses.replace(real(p), acquisition_budgets=tuple(float(b) for b in grid)))
    with pytest.raises(Stop):
        columns._acquisition(load_profile("quick"), "run", None, [])
    assert seen["budgets"] == expected
