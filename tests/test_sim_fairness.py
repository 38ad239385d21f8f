"""Chapter 08's fair comparison: mean-mask baseline, "not learned" flag, step budget, plateau check, distances, clamping."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from xrlib.drr.acquisition import ACQUISITION_RANGES, Range, clamped_parameters, sample_acquisition
from xrlib.studies.sim.distances import (histogram_distance, radial_power_spectrum, rung_distances,
                                         spectrum_distance)
from xrlib.studies.sim.fairness import (flag_learned, learning_curves, mean_mask_baseline, plateau_change,
                                        plateaued)
from xrlib.studies.sim.settings import SimSettings


# ------------------------------------------------------------------------------ mean-mask baseline and flag


def _masks():
    m = np.zeros((4, 8, 8), np.uint8)
    m[:, 2:4, 2:6] = 1       # every mask: the same 8 pixels
    m[0, 5, 5] = m[1, 5, 5] = 1  # half of them: one more pixel
    m[3, 7, 0] = 1           # one of them: another
    return m


def test_mean_mask_baseline_thresholds_at_half_or_at_the_best_training_level():
    m = _masks()
    half, t = mean_mask_baseline(m, "half")
    assert t == 0.5 and half.sum() == 8 and half[2:4, 2:6].all()  # mean > 0.5: the shared pixels only
    best, t = mean_mask_baseline(m, "best")
    from xrlib.eval.metrics import dice
    score = lambda p: np.mean([dice(p.astype(float), y) for y in m])  # noqa: E731
    for level in (0.0, 0.25, 0.5):  # every candidate: the chosen one is at least as good on the training masks
        assert score(best) >= score((m.mean(0) > level).astype(np.uint8)) - 1e-12
    with pytest.raises(ValueError, match="unknown threshold rule 'mean'"):
        mean_mask_baseline(m, "mean")
    with pytest.raises(ValueError, match=r"need training masks \(N, S, S\)"):
        mean_mask_baseline(m[0])


def test_rows_that_do_not_beat_the_baseline_are_not_learned_and_not_ranked():
    t = pd.DataFrame({"row": ["A", "B", "C", "D"], "dice": [0.80, 0.31, 0.60, 0.315]})
    out = flag_learned(t, baseline_dice=0.30)
    assert out["learned"].tolist() == [True, False, True, False]  # B: 0.31 within the 0.02 margin; D too
    assert out["rank"].tolist()[0] == 1 and out["rank"].tolist()[2] == 2
    assert out["rank"].isna().tolist() == [False, True, False, True]
    assert not flag_learned(t, baseline_dice=0.9)["learned"].any()


def test_table4_puts_the_baseline_last_and_flags_rows():
    from xrlib.studies.sim.fairness import BASELINE
    from xrlib.studies.sim.study import table4

    rows = []
    for sub in ("s1", "s2", "s3"):
        for model, d in (("Real/strong", 0.8), ("Naive-ADDA/strong", 0.3), (BASELINE, 0.31)):
            rows.append({"model": model, "test_set": "Real test", "subject": sub, "alpha": 0.0, "dice": d, "hd95_mm": 5.0})
    t = table4(pd.DataFrame(rows))
    assert t["row"].tolist()[-1] == BASELINE and t["DR"].tolist()[-1] == "—"
    flags = dict(zip(t["row"], t["learned"]))
    assert bool(flags["Real"]) and not bool(flags["Naive-ADDA"]) and pd.isna(flags[BASELINE])
    assert t.set_index("row").at["Real", "rank"] == 1 and pd.isna(t.set_index("row").at["Naive-ADDA", "rank"])


# ------------------------------------------------------------------------------ step budget, curves, plateau


def _settings(**kw):
    base = dict(acquisition_budgets=(0.0, 1.0, 3.0), acquisition_alphas=None, acquisition_subjects=None,
                poses_per_subject=None, scaled_factor=2, epochs=7, patience=3, lr=0.01, batch_size=8, models=())
    return SimSettings(**{**base, **kw})


def test_one_step_budget_gives_each_row_epochs_from_its_training_set_size():
    s = _settings(steps=400)
    assert s.epochs_for(16) == 200 and s.steps_for(16) == 400      # 2 steps an epoch
    assert s.epochs_for(32) == 100 and s.steps_for(32) == 400      # 4 steps an epoch
    assert s.epochs_for(20) == 134 and s.steps_for(20) == 402      # 3 steps an epoch: rounded up to whole epochs
    assert _settings().epochs_for(16) == 7                         # no step budget: the epochs as given
    with pytest.raises(ValueError, match="at least one training image"):
        s.epochs_for(0)


def test_quick_rows_get_the_same_steps_and_no_early_stopping(tmp_path):
    from xrlib.core.profiles import load_profile
    from xrlib.studies.sim.study import sim_plan

    m = sim_plan(load_profile("quick"))["models"]
    assert (m["steps"] == m["steps"].iloc[0]).all() and (m["patience"] == m["epochs"]).all()
    e = m.set_index("model")["epochs"]
    assert e["Realistic-Scaled/strong"] < e["Real/strong"]          # twice the images: fewer epochs, the same steps
    assert "Naive-Cyc/strong" in set(m["model"])


def test_plateau_check_passes_a_flat_curve_and_fails_a_rising_one():
    steps = np.arange(1, 101) * 4
    rng = np.random.default_rng(0)
    flat = 0.8 - 0.5 * np.exp(-steps / 40.0) + rng.normal(0, 0.01, steps.size)  # saturated long before the end
    rising = 0.2 + 0.6 * steps / steps.max()                                     # still climbing linearly
    assert plateaued(steps, flat)
    assert plateau_change(steps, rising) == pytest.approx(0.6 * 0.25 * (steps.max() - steps.min()) / steps.max(), rel=1e-6)
    assert not plateaued(steps, rising)
    assert not plateaued([4, 8], [0.1, 0.9])  # too short to tell: not a plateau
    with pytest.raises(ValueError, match="matching 1-D steps"):
        plateau_change([1, 2, 3], [0.1, 0.2])


def test_learning_curves_convert_epochs_to_steps():
    hist = pd.DataFrame({"epoch": [1, 2, 3], "val_dice": [0.1, 0.5, 0.6], "train_loss": [1.0, 0.5, 0.4]})
    res = SimpleNamespace(train_images=20, history=hist)
    c = learning_curves({"A": res}, batch_size=8)
    assert c["step"].tolist() == [3, 6, 9] and c["model"].unique().tolist() == ["A"]


# ------------------------------------------------------------------------------ rung-to-surrogate distances


def test_histogram_distance_is_the_shift_of_a_constant_brightening():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.2, 0.6, (32, 32))
    assert histogram_distance(a, a) == 0.0
    assert histogram_distance(a, a + 0.1) == pytest.approx(0.1)


def test_radial_spectrum_peaks_at_a_cosines_frequency_and_contrast_scales_it():
    n = 64
    x = np.cos(2 * np.pi * 5 * np.arange(n) / n)[None, :] * np.ones((n, 1))
    f, p = radial_power_spectrum(x)
    assert f[np.argmax(p)] == 5
    rng = np.random.default_rng(2)
    a = rng.normal(size=(n, n))
    assert spectrum_distance(a, a) == 0.0
    assert spectrum_distance(a, 3 * a) == pytest.approx(2 * math.log10(3), rel=1e-6)


def test_rung_distances_table_is_zero_for_the_reference_copy_and_rejects_unmatched_sets():
    rng = np.random.default_rng(3)
    ref = rng.uniform(0, 1, (3, 16, 16))
    t = rung_distances({"real": ref, "copy": ref.copy(), "brighter": np.clip(ref + 0.05, 0, 2)})
    assert set(t["domain"]) == {"copy", "brighter"} and set(t["measure"]) == {"histogram_w1", "spectrum_log_l2"}
    assert (t[t.domain == "copy"]["mean"] == 0).all() and (t.pairs == 3).all()
    assert t[(t.domain == "brighter") & (t.measure == "histogram_w1")]["mean"].iloc[0] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="not matched"):
        rung_distances({"real": ref, "other": ref[:2]})


# ------------------------------------------------------------------------------ acquisition clamping


def test_clamped_parameters_are_exact_and_agree_with_sampling():
    rg = {"kvp": Range(100.0, 125.0, (60.0, 150.0), "test", "kVp")}  # default 120: scale s reaches 120 − 20 s
    assert clamped_parameters((0, 1, 2, 3), rg) == []
    (r,) = clamped_parameters((4,), rg)
    assert (r["parameter"], r["side"], r["bound"]) == ("kvp", "lower", 60.0)
    assert r["fraction"] == pytest.approx(0.2)  # u < 120 − 60/4 = 105: (105 − 100)/25
    rng = np.random.default_rng(0)
    draws = [sample_acquisition(rng, (3.0,))[0] for _ in range(4000)]
    for row in clamped_parameters((3.0,)):
        lo, hi = ACQUISITION_RANGES[row["parameter"]].bounds
        at = np.mean([getattr(d, row["parameter"]) == (lo if row["side"] == "lower" else hi) for d in draws])
        assert at == pytest.approx(row["fraction"], abs=0.03)
    named = {r["parameter"] for r in clamped_parameters((3.0,))}
    assert named == {"window_lo_pct", "window_hi_pct", "unsharp_amount", "unsharp_sigma_mm"}


def test_profiles_reach_budget_three_and_a_lower_top_budget_is_an_input_error(tmp_path):
    import yaml

    from xrlib.core.errors import InputError
    from xrlib.core.profiles import load_profile
    from xrlib.studies.sim.settings import sim_settings

    for name in ("smoke", "quick", "paper"):
        assert max(sim_settings(load_profile(name)).acquisition_budgets) >= 3
    raw = yaml.safe_load(open(load_profile("smoke").path, encoding="utf-8"))
    raw["sim"]["acquisition"]["budgets"] = [0, 1, 2]
    (tmp_path / "p.yml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(InputError, match=r"sim: acquisition.budgets must reach at least 3"):
        sim_settings(load_profile(tmp_path / "p.yml"))
    raw["sim"]["acquisition"]["budgets"] = [0, 1, 3]
    raw["surrogate"]["effects"] = {"heel": [0.5, 0.1]}
    (tmp_path / "p.yml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(InputError, match=r"p.yml: surrogate.effects: heel must be a range"):
        sim_settings(load_profile(tmp_path / "p.yml"))


# ------------------------------------------------------------------------------ figures


def test_chapter_figures_label_their_axes_and_mark_unlearned_rows():
    import matplotlib

    matplotlib.use("Agg")
    from xrlib.plots import sim as splots
    from xrlib.studies.sim.fairness import BASELINE

    curves = pd.DataFrame({"model": ["A"] * 4, "step": [2, 4, 6, 8], "val_dice": [0.1, 0.5, 0.6, 0.6]})
    fig = splots.plot_learning_curves(curves, pd.DataFrame({"model": ["A"], "plateaued": [True]}))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "optimisation step" and ax.get_ylabel() == "validation Dice"
    assert "A (plateaued)" in [t.get_text() for t in ax.get_legend().get_texts()]
    dist = pd.DataFrame({"domain": ["naive", "naive"], "measure": ["histogram_w1", "spectrum_log_l2"],
                         "mean": [0.1, 0.5], "sd": [0.01, 0.05], "pairs": [3, 3]})
    fig = splots.plot_distances(dist)
    assert len(fig.axes) == 2 and all(a.get_ylabel() and a.get_xlabel() == "simulator" for a in fig.axes)
    table = pd.DataFrame({"row": ["Real", "Naive-ADDA", BASELINE], "DR": ["strong", "strong", "—"],
                          "dice": [0.8, 0.31, 0.30], "dice_lo": [0.7, 0.2, 0.25], "dice_hi": [0.9, 0.4, 0.35],
                          "paper_dice_360": [0.759, 0.662, np.nan], "learned": [True, False, pd.NA]})
    fig = splots.plot_dice_bars(table, "t")
    hatches = [p.get_hatch() for p in fig.axes[0].patches]
    assert hatches[:3] == [None, "//", None] and fig.axes[0].get_ylabel() == "Dice"


# ------------------------------------------------------------------------------ learning-rate schedule, lr time


def test_cosine_schedule_runs_from_lr_to_its_floor_and_constant_keeps_the_rate():
    from xrlib.training.config import COSINE_FLOOR, scheduled_lr

    lrs = [scheduled_lr(0.01, "cosine", k, 400) for k in range(400)]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.01 * COSINE_FLOOR)
    assert lrs[199] == pytest.approx(0.01 * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * 199 / 399))))
    assert all(a > b for a, b in zip(lrs, lrs[1:]))                 # strictly decreasing
    assert scheduled_lr(0.01, "cosine", 500, 400) == pytest.approx(0.01 * COSINE_FLOOR)  # past the end: the floor
    assert {scheduled_lr(0.01, "constant", k, 400) for k in (0, 399)} == {0.01}
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'"):
        scheduled_lr(0.01, "step", 0, 10)


def test_lr_schedule_joins_the_hash_only_when_not_constant_and_bad_names_are_rejected():
    from xrlib.training.config import TrainConfig

    const, cos = TrainConfig(name="m", threads=1), TrainConfig(name="m", threads=1, lr_schedule="cosine")
    d = const.as_dict()
    for key in ("num_workers", "compile", "lr_schedule", "val_every"):
        d.pop(key)
    assert const.config_hash() == const._hash(d, None)               # the hash from before the fields existed
    assert cos.config_hash() != const.config_hash() and cos.legacy_hash() is None
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(name="m", threads=1, lr_schedule="linear").validate()


def _history(val_dice, lr):
    return pd.DataFrame({"epoch": np.arange(1, len(lr) + 1), "val_dice": val_dice, "train_loss": 1.0, "lr": lr})


def test_plateau_check_under_a_decaying_rate_fails_a_curve_that_still_rises_with_the_rate():
    """A schedule must not pass the check by freezing the weights: the window is the last quarter of the lr time."""
    from xrlib.training.config import scheduled_lr

    per_epoch, epochs = 2, 200
    lr = np.array([scheduled_lr(0.01, "cosine", e * per_epoch - 1, epochs * per_epoch) for e in range(1, epochs + 1)])
    progress = np.cumsum(lr) / lr.sum()
    rising = 0.2 + 0.6 * progress                                   # Dice grows in proportion to the rate it gets
    settled = 0.8 - 0.6 * np.exp(-progress / 0.08)                  # saturated halfway through the lr time
    steps = np.arange(1, epochs + 1) * per_epoch
    assert plateaued(steps, rising)                                 # the last quarter of the steps is fooled …
    curves = learning_curves({"rising": SimpleNamespace(train_images=16, history=_history(rising, lr)),
                              "settled": SimpleNamespace(train_images=16, history=_history(settled, lr))}, batch_size=8)
    g = dict(tuple(curves.groupby("model")))
    assert g["rising"]["lr_time"].iloc[-1] == pytest.approx(lr.sum() / lr[0] * per_epoch)
    assert not plateaued(g["rising"]["lr_time"], g["rising"]["val_dice"])   # … the lr time is not
    assert plateau_change(g["rising"]["lr_time"], g["rising"]["val_dice"]) == pytest.approx(0.15, abs=0.01)
    assert plateaued(g["settled"]["lr_time"], g["settled"]["val_dice"])
    const = learning_curves({"c": SimpleNamespace(train_images=16, history=_history(rising, np.full(epochs, 0.01)))}, 8)
    assert np.allclose(const["lr_time"], const["step"])             # at a constant rate: the steps themselves


# ------------------------------------------------------------------------------ acquisition angles per subject


def test_subject_angles_are_stratified_differ_between_subjects_and_cover_the_grid():
    from xrlib.studies.sim.sources import subject_angles

    picks = [subject_angles(21, 4, i, 12) for i in range(12)]
    assert all(len(set(p)) == 4 and p == sorted(p) and 0 <= p[0] and p[-1] <= 20 for p in picks)
    assert all(int(j * 21 / 4) <= p[j] < (j + 1) * 21 / 4 for p in picks for j in range(4))  # one angle per stratum
    assert set().union(*map(set, picks)) == set(range(21)) and len({tuple(p) for p in picks}) == 12
    assert subject_angles(21, None, 0, 1) == list(range(21)) == subject_angles(21, 30, 0, 2)
    with pytest.raises(ValueError, match="0 ≤ subject < n_subjects"):
        subject_angles(21, 4, 12, 12)


def test_quick_reads_threads_angles_per_subject_and_bad_values_are_input_errors(tmp_path):
    import yaml

    from xrlib.core.errors import InputError
    from xrlib.core.profiles import load_profile
    from xrlib.studies.sim.settings import sim_settings
    from xrlib.studies.sim.study import LR_SCHEDULE, sim_configs

    quick = load_profile("quick")
    s = sim_settings(quick)
    assert s.threads is None and s.acquisition_angles_per_subject == 4 and s.val_every_steps == 20
    from xrlib.core.runs import default_threads

    configs = [c for c, _ in sim_configs(quick, tmp_path)]
    assert {(c.lr_schedule, c.threads) for c in configs} == {(LR_SCHEDULE, default_threads())}
    # every row validates about every val_every_steps steps: epochs between validations × steps per epoch ≈ 20
    per_epoch = [-(-s.steps // c.epochs) for c in configs]
    assert all(abs(c.val_every * k - s.val_every_steps) <= k / 2 for c, k in zip(configs, per_epoch)), \
        [(c.name, c.val_every, k) for c, k in zip(configs, per_epoch)]
    for key, value, match in (("threads", 0, "threads must be ≥ 1"), ("val_every_steps", 0, "val_every_steps must be ≥ 1"),
                              ("angles_per_subject", 0, "acquisition.angles_per_subject must be ≥ 1")):
        raw = yaml.safe_load(open(quick.path, encoding="utf-8"))
        (raw["sim"]["acquisition"] if key == "angles_per_subject" else raw["sim"])[key] = value
        (tmp_path / "p.yml").write_text(yaml.safe_dump(raw), encoding="utf-8")
        with pytest.raises(InputError, match=match):
            sim_settings(load_profile(tmp_path / "p.yml"))


# ------------------------------------------------------------------------------ trainings as tasks


def test_train_sim_on_an_executor_trains_the_cyclegan_and_the_costliest_first_then_the_cyc_rows(tmp_path, monkeypatch):
    import json

    from xrlib.core.profiles import load_profile
    from xrlib.exec import InProcessExecutor
    from xrlib.studies.sim import cyclegan, study
    from xrlib.training.tasks import TrainTask

    run = tmp_path / "run"
    for d in ("real", "naive", "realistic", "realistic-scaled"):
        (study.domain_dir(run, d)).mkdir(parents=True)
        (study.domain_dir(run, d) / "build.json").write_text(json.dumps({"complete": True, "hash": d}))
    events = []

    def translate(profile, run_, domain, **kw):
        events.append(("translate", domain))
        out = cyclegan.translated_dir(run_, domain)
        out.mkdir(parents=True, exist_ok=True)
        (out / "build.json").write_text(json.dumps({"complete": True, "hash": "t-" + domain}))

    monkeypatch.setattr(study, "build_domain", lambda *a, **k: None)
    monkeypatch.setattr(cyclegan, "translate_domain", translate)
    monkeypatch.setattr(cyclegan.CycleGANTask, "run", lambda self: events.append(("cyclegan", self.domain, self.threads)))
    monkeypatch.setattr(TrainTask, "run", lambda self: events.append(("train", self.config.name, self.threads)) or self.config.name)
    from xrlib.core.runs import default_threads

    quick = load_profile("quick")
    t = study.sim_settings(quick).threads or default_threads()     # sim.threads (null: the process's count)
    out = study.train_sim(quick, run, progress=False, executor=InProcessExecutor())
    assert list(out) == list(study.sim_settings(quick).models) and all(out[n] == n for n in out)  # plan order
    assert events[0] == ("cyclegan", "naive", t) and events[1] == ("train", "Naive-ADDA/strong", t)
    assert events.index(("translate", "naive")) < events.index(("train", "Naive-Cyc/strong", t)) == len(events) - 1
    assert all(e[-1] == t for e in events if e[0] != "translate")   # sim.threads in every task
    # two workers: the last plain row waits for the second round, beside the lone -Cyc row
    events.clear()
    pool = InProcessExecutor()
    pool.workers = 2
    study.train_sim(quick, run, progress=False, executor=pool)
    trained = [e[1] for e in events if e[0] == "train"]
    assert trained[-2:] == ["Naive-Cyc/strong", "Realistic-Scaled/strong"]
    assert events.index(("translate", "naive")) < events.index(("train", "Realistic-Scaled/strong", t))  # 2nd round


def test_val_every_steps_becomes_whole_epochs_per_row():
    from xrlib.studies.sim.settings import SimSettings

    s = SimSettings(acquisition_budgets=(0.0, 1.0, 3.0), acquisition_alphas=None, acquisition_subjects=None,
                    poses_per_subject=4, scaled_factor=2, epochs=1, patience=1, lr=0.01, batch_size=8, models=(),
                    steps=400, val_every_steps=20)
    assert s.val_every_for(16) == 10        # 2 steps per epoch
    assert s.val_every_for(32) == 5         # 4 steps per epoch
    assert s.val_every_for(400) == 1        # 50 steps per epoch: every epoch
    assert SimSettings(**{**s.__dict__, "val_every_steps": None}).val_every_for(16) == 1
