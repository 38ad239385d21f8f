"""The study layer: comparison tables against the paper's values, on hand-made results."""

import numpy as np
import pandas as pd
import pytest

from xrlib.studies.rotation import paper, study
from xrlib.studies.rotation.groups import GROUP_ORDER, alpha_group


def results_frame():
    rows = []
    for model, base in (("U-Net(Real)", 0.80), ("U-Net(Real+Syn_all)", 0.90)):
        for alpha in range(-20, 21, 2):
            for subject in ("a", "b"):
                rows.append({"model": model, "subject": subject, "alpha": float(alpha), "test_set": "Syn_test",
                             "dice": base - 0.002 * abs(alpha)})
        for subject in ("c", "d"):
            rows.append({"model": model, "subject": subject, "alpha": 0.0, "test_set": "Real_test",
                         "dice": base + (0.01 if subject == "c" else -0.01)})
    df = pd.DataFrame(rows)
    df["group"] = df["alpha"].map(alpha_group)
    return df


def test_paper_tables_are_complete():
    assert set(paper.PAPER_TABLE2_DICE) == set(paper.PAPER_TABLE4_DICE)
    for groups in paper.PAPER_TABLE2_DICE.values():
        assert list(groups) == GROUP_ORDER
    assert len(paper.PAPER_TABLE3_DICE) == 18 and max(paper.PAPER_TABLE3_DICE) == 92.58  # Exp15, the paper's best


def test_compare_table2_puts_our_means_next_to_the_paper():
    df = results_frame()
    syn = df[df["test_set"] == "Syn_test"]
    table = study.compare_table2(syn)
    # Center = alpha -2, 0, 2: mean of 0.80 - 0.002*|alpha| = 0.80 - 0.002*4/3 -> percent
    assert table.loc["U-Net(Real)", ("this build", "Center")] == pytest.approx(100 * (0.80 - 0.002 * 4 / 3), abs=0.01)
    assert table.loc["U-Net(Real)", ("paper", "Center")] == 83.79
    assert table.loc["U-Net(Real+Syn_all)", ("paper", "Moderate+")] == 88.95


def test_table4_uses_only_the_real_test_split():
    t = study.table4(results_frame())
    assert t.loc["U-Net(Real)", "mean Dice (%)"] == pytest.approx(80.0)
    assert t.loc["U-Net(Real)", "sd"] == pytest.approx(100 * np.std([0.81, 0.79], ddof=1), abs=0.01)
    assert t.loc["U-Net(Real)", "images"] == 2
    assert t.loc["U-Net(Real+Syn_all)", "paper mean (%)"] == 92.30


def test_real_domain_caption():
    assert study.real_domain(pd.DataFrame({"pool": ["surrogate", "syn_test"]})).startswith("clinical surrogate")
    assert study.real_domain(pd.DataFrame({"pool": ["real", "syn_test"]})) == "real radiographs"


def test_table3_joins_the_paper_value_of_each_experiment():
    df = results_frame().replace({"model": {"U-Net(Real)": "Exp01-d3-dice-b8", "U-Net(Real+Syn_all)": "Exp15-d5-dice-b16"}})
    t = study.table3(df)
    assert list(t.index) == ["Exp01-d3-dice-b8", "Exp15-d5-dice-b16"]
    assert t.loc["Exp01-d3-dice-b8", "paper mean (%)"] == 89.79
    assert t.loc["Exp15-d5-dice-b16", "paper mean (%)"] == 92.58
    assert t.loc["Exp15-d5-dice-b16", "mean Dice (%)"] == pytest.approx(90.0)
    assert t["images"].tolist() == [2, 2]  # Real_test rows only


def test_table3_rejects_models_outside_the_ablation_grid():
    with pytest.raises(ValueError, match=r"table3: model 'U-Net\(Real\)' is not an ablation experiment"):
        study.table3(results_frame())


def test_table2_orders_alpha_groups_and_compares_with_u_net_real():
    syn = results_frame().query("test_set == 'Syn_test'").assign(hd_mm=1.0, hd95_mm=1.0, empty_pred=False)
    stats, wide = study.table2(syn)
    assert [g for g, _ in wide.columns[::3]] == GROUP_ORDER
    r = stats.set_index(["model", "group", "metric"]).loc[("U-Net(Real+Syn_all)", "Center", "dice")]
    assert r["pct_change"] == pytest.approx(0.10 / (0.80 - 0.002 * 4 / 3) * 100)  # both lose 0.002·|α| on average
