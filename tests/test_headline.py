"""The rotation study's headline section (``xrlib.studies.rotation.headline``), as the book and README show it."""

from __future__ import annotations

import pandas as pd

from xrlib.core.profiles import load_profile
from xrlib.publish.readme import README_SECTION, readme_markdown
from xrlib.publish.report import BookReport, StageResult
from xrlib.studies.rotation.headline import HEADLINE, headline_markdown, write_headline


def _results() -> pd.DataFrame:
    rows = []
    for model, dice in (("U-Net(Real)", {"Center": 0.8, "Moderate−": 0.5, "Moderate+": 0.7, "Mild+": 0.1}),
                        ("U-Net(Real+Syn_all)", {"Center": 0.9, "Moderate−": 0.85, "Moderate+": 0.95, "Mild+": 0.1})):
        for subject in ("s1", "s2"):
            for alpha, group in ((0.0, "Center"), (-16.0, "Moderate−"), (16.0, "Moderate+"), (8.0, "Mild+")):
                rows.append({"model": model, "subject": subject, "alpha": alpha, "group": group,
                             "dice": dice[group], "test_set": "Syn_test"})
    rows.append({"model": "U-Net(Real)", "subject": "r1", "alpha": 0.0, "group": "Center", "dice": 0.0,
                 "test_set": "Real_test"})  # not on the synthetic test set: ignored
    return pd.DataFrame(rows)


def test_headline_table_is_center_vs_moderate_per_model(tmp_path):
    text = headline_markdown(_results(), tmp_path / "smoke", load_profile("smoke"))
    assert "profile smoke" in text and "virtual cohort" in text and "2 test subject(s) × 4 angles" in text
    assert "| model | training images | Center | Moderate | Moderate − Center |" in text
    assert "| U-Net(Real) | ? | 80.0 | 60.0 | -20.0 |" in text  # no manifest: training images unknown
    assert "| U-Net(Real+Syn_all) | ? | 90.0 | 90.0 | " in text
    assert "'smoke' profile trains each model" in text
    assert "profile trains" not in headline_markdown(_results(), tmp_path / "paper", load_profile("paper"))


def test_written_headline_is_the_readme_result_section(tmp_path):
    run = tmp_path / "smoke"
    cfg = load_profile("smoke")
    path = write_headline(_results(), cfg, run)
    assert path == run / HEADLINE and path.read_text(encoding="utf-8") == headline_markdown(_results(), run, cfg)
    section = readme_markdown(BookReport("smoke", [StageResult("06_rotation_robustness", "ran", 30.0, "cpu")]), run)
    assert "| U-Net(Real+Syn_all) | ? | 90.0 |" in section
    assert section.index("Mean Dice (%)") < section.index("Cost of this build")


def test_readme_section_is_the_card_alone_when_the_run_has_one(tmp_path):
    run = tmp_path / "smoke"
    write_headline(_results(), load_profile("smoke"), run)
    (run / README_SECTION).parent.mkdir(parents=True)
    (run / README_SECTION).write_text("**The robustness card — profile smoke.**\n\n| model | clean |\n|---|---|\n| A | 0.9 |\n",
                                      encoding="utf-8")
    section = readme_markdown(BookReport("smoke", [StageResult("13_robustness_card", "ran", 30.0, "cpu")]), run)
    assert "**The robustness card — profile smoke.**" in section and "| A | 0.9 |" in section
    assert "Mean Dice (%)" not in section  # the rotation study's section stays in the book
    assert "in the book's introduction" in section and section.index("| A | 0.9 |") < section.index("Cost of this build")
