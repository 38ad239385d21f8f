"""`xrlib card --model SPEC`: a user's own network under the card's threats, placed beside the book's models."""

from __future__ import annotations

import math
import shutil
import textwrap

import pandas as pd
import pytest
import torch
import yaml

from xrlib.cli import main
from xrlib.studies.card.external import placement


class Net(torch.nn.Module):
    """A small convolutional segmenter: 1 or 3 input channels, clavicle logits or softmax probabilities."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, softmax: bool = False, quantise: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(in_channels, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, out_channels, 1)
        self.softmax, self.quantise = softmax, quantise

    def forward(self, x):
        if self.quantise:  # masks its input gradient
            x = (torch.round(x * 8) / 8).detach()
        y = self.b(torch.relu(self.a(x)))
        return torch.softmax(y, dim=1) if self.softmax else y


@pytest.fixture
def toy_card_run(toy_run, tmp_path):
    """The toy study's datasets under a fresh run root, and its profile as a YAML file."""
    profile, run0, _ = toy_run
    root = tmp_path / "runs"
    shutil.copytree(run0 / "datasets", root / "toyrot" / "datasets")
    prof = tmp_path / "toyrot.yml"
    prof.write_text(yaml.safe_dump(profile.raw), encoding="utf-8")
    return prof, root


def _card(capsys, prof, root, *args) -> tuple[int, str, str]:
    rc = main(["card", "--profile", str(prof), "--run-root", str(root), "--no-progress", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_exported_program_gets_a_card_with_rotation_and_the_attack(toy_card_run, tmp_path, capsys):
    prof, root = toy_card_run
    spec = tmp_path / "seg.pt2"
    torch.export.save(torch.export.export(Net(), (torch.rand(1, 1, 48, 48),)), str(spec))
    rc, out, err = _card(capsys, prof, root, "--model", str(spec), "--input-size", "48", "--threats", "rotation", "pgd")
    assert rc == 0, err
    folder = root / "toyrot" / "card" / "external" / "seg"
    cells = pd.read_csv(folder / "cells.csv")
    assert set(cells["threat"]) == {"rotation", "pgd"}
    assert set(cells["statistic"]) == {"clean", "auc", "rel_auc", "b50"}
    clean = cells[cells["statistic"] == "clean"]
    assert (clean["n_seeds"] == 1).all() and (clean["n_subjects"] == 2).all()
    # two subjects: below the evidence design's minimum, so no interval is printed as one
    assert cells["lo"].isna().all() and clean["note"].str.startswith("n/a (2 subjects)").all()
    place = pd.read_csv(folder / "placement.csv")
    assert (place["placement"] == "no book card in this run").all()
    md = (folder / "card.md").read_text(encoding="utf-8")
    assert "Input gradients usable: yes" in md and "No book card in this run" in md
    assert (folder / "card.html").read_text(encoding="utf-8").count("data:image/png;base64,") == 1
    assert "wrote" in out


def test_torchscript_and_entry_point_models_of_other_sizes(toy_card_run, tmp_path, capsys, monkeypatch):
    prof, root = toy_card_run
    ts = tmp_path / "prob.ts"
    torch.jit.script(Net(3, 2, softmax=True)).save(str(ts))
    rc, _, err = _card(capsys, prof, root, "--model", str(ts), "--input-size", "40", "--in-channels", "3",
                       "--normalisation", "imagenet", "--output", "probabilities", "--clavicle-channels", "1",
                       "--threats", "rotation", "--out", str(tmp_path / "ts-card"))
    assert rc == 0, err
    assert len(pd.read_csv(tmp_path / "ts-card" / "cells.csv")) == 4
    (tmp_path / "user_models.py").write_text(textwrap.dedent("""
        import torch
        def build():
            torch.manual_seed(3)
            return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1))
    """))
    monkeypatch.chdir(tmp_path)  # module:function SPECs import from the current folder
    rc, _, err = _card(capsys, prof, root, "--model", "user_models:build", "--input-size", "80",
                       "--clavicle-channels", "0,1", "--threats", "rotation")
    assert rc == 0, err
    assert (root / "toyrot" / "card" / "external" / "build" / "card.md").is_file()


def test_a_network_without_input_gradients_skips_the_gradient_attacks_and_says_so(toy_card_run, tmp_path, capsys,
                                                                                     monkeypatch):
    from xrlib.studies.card import external

    monkeypatch.setattr(external, "GRADIENT_FREE", {})  # this test pins the "not run" path
    prof, root = toy_card_run
    spec = tmp_path / "quant.ts"
    torch.jit.script(Net(quantise=True)).save(str(spec))
    rc, _, err = _card(capsys, prof, root, "--model", str(spec), "--threats", "rotation", "pgd", "--out",
                       str(tmp_path / "q"))
    assert rc == 0, err
    md = (tmp_path / "q" / "card.md").read_text(encoding="utf-8")
    assert "Input gradients usable: no" in md
    assert "- pgd: needs input gradients" in md and "- segpgd: needs input gradients" in md
    assert set(pd.read_csv(tmp_path / "q" / "cells.csv")["threat"]) == {"rotation"}


@pytest.mark.parametrize("args, message", [
    (["--model", "missing.pt2"], "error: --model: missing.pt2: file not found"),
    (["--model", "nowhere_xyz:build"],
     "error: --model: nowhere_xyz:build: cannot import module 'nowhere_xyz' (No module named 'nowhere_xyz')"),
    (["--model", "m.pt2", "--threats", "rotation", "teleport"], None),
    (["--input-size", "64"], "xrlib card: --input-size needs --model SPEC (without it the book's card is built)"),
    (["--model", "x:y", "--clavicle-channels", "a"], "xrlib card: --clavicle-channels must be comma-separated integers, got 'a'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(toy_card_run, tmp_path, capsys, args, message):
    prof, root = toy_card_run
    if message is None:  # a valid model with an unknown threat
        torch.export.save(torch.export.export(Net(), (torch.rand(1, 1, 32, 32),)), str(tmp_path / "m.pt2"))
        args = [str(tmp_path / "m.pt2") if a == "m.pt2" else a for a in args]
        message = "error: --threats: unknown threat 'teleport'; the card's threats: rotation, pose, acquisition, noise, pgd, learned"
    rc, out, err = _card(capsys, prof, root, *args)
    assert rc == 2
    assert err.strip() == message
    assert not (root / "toyrot" / "card").exists()


@pytest.mark.parametrize("spec, message", [
    (Net(out_channels=1), "--model: output has 1 channel(s) but clavicle_channels asks for [2]"),
])
def test_wrong_channel_count_through_the_command(toy_card_run, tmp_path, capsys, spec, message):
    prof, root = toy_card_run
    path = tmp_path / "one.ts"
    torch.jit.script(spec).save(str(path))
    rc, _, err = _card(capsys, prof, root, "--model", str(path), "--clavicle-channels", "2")
    assert rc == 2 and err.strip() == "error: " + message.replace("--model", str(path))
    assert not (root / "toyrot" / "card").exists()


def test_placement_against_the_seed_range_or_the_interval():
    ext = pd.DataFrame({"threat": ["rotation", "rotation", "pose", "noise"],
                        "statistic": ["rel_auc", "clean", "rel_auc", "rel_auc"], "value": [0.5, 0.95, 0.7, 0.2]})
    seeds = {"rotation": pd.DataFrame({"seed": [0, 1, 2], "rel_auc": [0.6, 0.7, 0.65], "clean": [0.9, 0.92, 0.94]})}
    book = pd.DataFrame({"model": ["U-Net(Real+Syn_all)"] * 2, "threat": ["pose", "noise"],
                         "statistic": ["rel_auc", "rel_auc"], "lo": [0.6, math.nan], "hi": [0.8, math.nan],
                         "n_subjects": [3, 2], "n_seeds": [3, 3], "note": ["", "n/a (2 subjects)"]})
    p = placement(ext, book, seeds).set_index(["threat", "statistic"])
    assert p.loc[("rotation", "rel_auc"), "placement"] == "below"  # 0.5 < min over seeds 0.6
    assert p.loc[("rotation", "clean"), "placement"] == "above"  # 0.95 > 0.94
    assert p.loc[("rotation", "rel_auc"), "reference_range"] == "U-Net(Real+Syn_all): range over 3 seeds"
    assert p.loc[("pose", "rel_auc"), "placement"] == "within"
    assert p.loc[("pose", "rel_auc"), "reference_range"] == \
        "U-Net(Real+Syn_all): 95 % interval of the book's card (3 subjects × 3 seed(s))"  # the card's seeds × subjects
    assert p.loc[("noise", "rel_auc"), "placement"] == "U-Net(Real+Syn_all) has no interval here (n/a (2 subjects))"
    assert (placement(ext, None, {})["placement"] == "no book card in this run").all()


def test_a_run_without_datasets_gets_them_built_first_and_says_so(tmp_path, monkeypatch):
    """No datasets build in the run: the profile's cohort and datasets are built (as `xrlib dataset`), once."""
    import xrlib.data.build as build
    import xrlib.data.subjects as subjects
    from xrlib.core.profiles import load_profile
    from xrlib.studies.card.external import ensure_test_data

    calls, said = [], []
    monkeypatch.setattr(subjects, "cohort_subjects", lambda profile, folder, progress=False: calls.append(folder) or ["s"])

    def fake_build(profile, folder, subjects, progress=False):
        calls.append(folder)
        folder.mkdir(parents=True)
        (folder / build.BUILD_FILE).write_text("{}")

    monkeypatch.setattr(build, "build_datasets", fake_build)
    run = tmp_path / "smoke"
    assert ensure_test_data(load_profile("smoke"), run, log=said.append)
    assert calls == [run / "cohort", run / "datasets"]
    assert said == [f"card: no built datasets in {run / 'datasets'}: building the smoke profile's cohort and datasets "
                    "first (as `xrlib dataset --profile smoke`)"]
    assert not ensure_test_data(load_profile("smoke"), run, log=said.append) and len(calls) == 2


class Threshold(torch.nn.Module):
    """Segments the toy disc by its brightness (logits 20·(x − 0.525)); ``masked``: the input is quantised to
    1/64 and its gradient reversed — finite and non-zero (the probe passes) but pointing the wrong way, the
    constructed case of gradient masking that only a gradient-free attack exposes."""

    def __init__(self, masked: bool = False):
        super().__init__()
        self.masked = masked

    def forward(self, x):
        if self.masked:
            x = (torch.round(x * 64) / 64).detach() + (x.detach() - x)
        return 20.0 * (x - 0.525)


@pytest.fixture
def wide_eps_run(toy_card_run, tmp_path):
    """The toy run with ε up to 0.3, so the threshold model's Dice falls from ≈ 0.95 to ≈ 0 over the grid."""
    prof, root = toy_card_run
    raw = yaml.safe_load(prof.read_text(encoding="utf-8"))
    raw["pgd"].update(budgets=[0.1, 0.2, 0.3], segpgd_budgets=[0.3])
    raw["pgd"]["shape"]["budgets"] = [0.3]
    prof.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return prof, root


@pytest.mark.parametrize("masked", [False, True])
def test_attack_diagnostics_flag_a_masked_gradient_and_not_a_clean_one(wide_eps_run, tmp_path, capsys, masked):
    prof, root = wide_eps_run
    spec = tmp_path / "thr.ts"
    torch.jit.script(Threshold(masked)).save(str(spec))
    out = tmp_path / "card"
    rc, _, err = _card(capsys, prof, root, "--model", str(spec), "--threats", "pgd", "--out", str(out))
    assert rc == 0, err
    md = (out / "card.md").read_text(encoding="utf-8")
    assert "Input gradients usable: yes" in md  # the probe cannot see this masking: the diagnostics must
    diag = pd.read_csv(out / "diagnostics.csv").set_index("check")
    square = diag.loc[[c for c in diag.index if c.startswith("(f)")][0]]
    assert "Attack diagnostics (chapter 09's checks) at ε = " in md
    cells = pd.read_csv(out / "cells.csv", keep_default_na=False)
    pgd_flags = set(cells.loc[cells["threat"] == "pgd", "flag"])
    if masked:  # the reversed gradient leaves the white-box Dice high; the Square search does not
        assert square["outcome"] == "possible gradient masking"
        assert square["check Dice"] < square["white-box Dice"] - square["tolerance"]
        assert all("possible gradient masking" in f for f in pgd_flags)
        assert "Flag on the PGD cell: " in md and "possible gradient masking" in md.split("Flag on the PGD cell: ")[1]
    else:
        assert square["outcome"] == "pass"
        assert not any("possible gradient masking" in f for f in pgd_flags)
        assert "possible gradient masking" not in md
    assert "(e) transfer: not run — no chapter 09 adversarial images in this run" in md
