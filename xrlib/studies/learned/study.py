"""Chapter 11: the learned / per-image deformation + bias-field attack on the study's victim, and the defense.

Steps (the notebook ``11_learned_attack`` calls them in this order):

1. :func:`defense_config` / :func:`train_defense` — the victim's configuration (same training sets,
   architecture and seed) with the ``deformation-adversarial`` recipe, warm-started from the
   victim's best weights, for ``learned.defense.epochs`` epochs at ``learned.defense.lr``.
2. :func:`run_attacks` — the threat ``deformation`` against the undefended victim: the per-image
   search for the ξ grid (D+V) and the D-only / V-only ablations at ``ablation_xi``; the generator
   for ``generator.xi`` × ``generator.variants``; and against the defended model the per-image D+V
   search at ``defense.eval_xi`` and the generators (``adaptive``: trained anew against it;
   ``transfer``: the undefended victim's). All rows go to ``<run>/robustness/deformation.csv``.
3. :func:`table1`, :func:`method_comparison`, :func:`defense_table`, :func:`example_rows` — tables
   and figure data; :mod:`xrlib.studies.learned.headline` — the headline.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from xrlib.attacks.base import TestImages, score_threat
from xrlib.attacks.deformation import DeformationThreat
from xrlib.eval.predict import predict
from xrlib.eval.robustness import success_flags, write_robustness
from xrlib.studies.learned.config import LearnedSettings
from xrlib.studies.rotation import study
from xrlib.studies.rotation.groups import alpha_group
from xrlib.studies.rotation.models import study_configs
from xrlib.studies.rotation.seeds import eager_if_warm
from xrlib.training import TrainConfig, TrainResult, load_best, select_images
from xrlib.training import train_all as _train_all

__all__ = ["DEFENDED_SUFFIX", "compare_paper", "warped_changed", "defense_config", "defense_table", "example_rows", "method_comparison", "run_attacks",
           "table1", "test_images", "train_defense", "train_images", "victim_model"]

DEFENDED_SUFFIX = "+DV-adv"


def test_images(profile, run: Path, s: LearnedSettings) -> TestImages:
    """The attacked Syn_test images (angles ``learned.alphas``, all when null)."""
    from xrlib.studies.rotation.study import syn_test_images

    return syn_test_images(profile, Path(run), s.alphas)


def train_images(profile, run: Path) -> np.ndarray:
    """Training images ``(N, S, S)`` of the Real and Syn_all training splits (the generator's training data;
    subject-disjoint from the test subjects)."""
    rows = select_images(study.datasets_dir(run), ["Real", "Syn_all"], "train", profile.synthetic.cen_alphas)
    return TestImages.from_manifest(rows, study.datasets_dir(run)).images


def victim_model(profile, run: Path, s: LearnedSettings, device=None):
    """The undefended victim (trained by chapter 05; never trained here)."""
    return load_best(study.study_models(profile, run, [s.victim])[s.victim], device)


def defense_config(profile, run: Path, s: LearnedSettings) -> TrainConfig:
    """The defended model: the victim's configuration with the ``deformation-adversarial`` recipe,
    warm-started from the victim's best weights (folder name under ``<run>/models``)."""
    base = {c.name: c for c in study_configs(profile)}[s.victim]
    victim = study.study_models(profile, run, [s.victim])[s.victim]
    f = s.fields
    params = dict(xi=s.defense_xi, steps=s.defense_attack_steps, lr=f.lr, grid=f.grid, max_disp_px=f.max_disp_px,
                  max_bias=f.max_bias, lambda_d=f.lambda_d, lambda_v=f.lambda_v, init_std=f.init_std, variant="DV",
                  warm_start=Path(victim.folder).name)
    return eager_if_warm(replace(base, name=s.victim + DEFENDED_SUFFIX, epochs=s.defense_epochs,
                                 patience=s.defense_epochs, lr=s.defense_lr, recipe="deformation-adversarial",
                                 recipe_params=params))


def train_defense(profile, run: Path, s: LearnedSettings, progress: bool = False) -> TrainResult:
    """Train (or load from the cache) :func:`defense_config`."""
    cfg = defense_config(profile, run, s)
    return _train_all([cfg], study.datasets_dir(run), Path(run) / "models", progress=progress,
                      imports=("xrlib.attacks.defenses",))[cfg.name]


def warped_changed(threat: DeformationThreat, model, test: TestImages, df: pd.DataFrame) -> pd.DataFrame:
    """``dice_vs_clean_pred`` and ``changed`` of ``df`` (one model's rows, budgets in order, images in the
    test order) against the clean prediction *warped* with each budget's D (:attr:`DeformationThreat.last`):
    a network that follows the deformation correctly does not count as changed."""
    from xrlib.attacks.deformation import warp_mask
    from xrlib.eval.metrics import dice
    from xrlib.eval.robustness import changed_flags
    import torch

    p0 = predict(model, (np.asarray(test.images, np.float32), test.masks))[0]
    p0 = torch.as_tensor((p0 > 0.5).astype(np.float32))[:, None]
    df = df.copy()
    for b, res in threat.last.items():
        at = np.flatnonzero(np.isclose(df["budget"].to_numpy(float), b))
        if len(at) != len(test.images):
            continue
        warped = warp_mask(p0, torch.as_tensor(res.disp))[:, 0].numpy()
        prob = predict(model, (res.adv, warped))[0]
        vs = np.array([dice(p, w) for p, w in zip(prob, warped)])
        df.loc[df.index[at], "dice_vs_clean_pred"] = vs
        df.loc[df.index[at], "changed"] = changed_flags(vs).to_numpy()
    return df


def _score(threat: DeformationThreat, name: str, model, test: TestImages, s: LearnedSettings, budgets, target: str):
    df = score_threat(threat, {name: model}, test, s.pixel_mm, budgets=budgets, groups=alpha_group)
    df = warped_changed(threat, model, test, df)
    df["success_unwarped"] = success_flags(df["dice_unwarped"], df["dice_clean"])
    df["generator_target"] = target if threat.method == "generator" else ""
    return df


def run_attacks(profile, run: Path, s: LearnedSettings, victim, defended=None, seed: int = 0,
                progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Every attack of the chapter (module docstring); writes ``<run>/robustness/deformation.csv``.

    Returns ``(results, threats)``; ``threats[(model, method, variant)]`` keeps each threat (its
    ``last`` fields, its generators and their training logs) for the figures.
    """
    from tqdm.auto import tqdm

    test, frames, threats = test_images(profile, run, s), [], {}
    train = train_images(profile, run) if s.generator_xi else None
    name_d = s.victim + DEFENDED_SUFFIX
    plan = [(s.victim, victim, "per-image", "DV", s.xi), (s.victim, victim, "per-image", "D", (s.ablation_xi,)),
            (s.victim, victim, "per-image", "V", (s.ablation_xi,))]
    plan += [(s.victim, victim, "generator", v, s.generator_xi) for v in s.generator_variants]
    if defended is not None:
        plan += [(name_d, defended, "per-image", "DV", s.defense_eval_xi)]
        plan += [(name_d, defended, "generator", v, s.generator_xi) for v in s.generator_variants]
    for name, model, method, variant, xis in tqdm(plan, desc="deformation attacks", disable=not progress):
        grid = (0.0, *sorted(set(xis)))
        th = DeformationThreat(grid=grid, method=method, fields=s.variant(variant), generator=s.generator,
                               train_images=train, pixel_mm=s.pixel_mm, seed=seed)
        target = name
        if method == "generator" and name == name_d and s.defense_generator == "transfer":
            src = threats[(s.victim, method, variant)]
            for xi in xis:  # the undefended victim's generators, applied to the defended model
                th.generators[(id(model), float(xi))] = src.generators[(id(victim), float(xi))]
            target = s.victim
        frames.append(_score(th, name, model, test, s, grid, target))
        threats[(name, method, variant)] = th
    results = pd.concat(frames, ignore_index=True)
    write_robustness(results, run, "deformation")
    return results, threats


def _label(method: str, variant: str, xi: float) -> str:
    return f"{variant} ξ={xi:g}" + (" (generator)" if method == "generator" else "")


def table1(results: pd.DataFrame, model: str) -> pd.DataFrame:
    """Table 1 analog for ``model``: mean Dice (%) per clavicle against the unwarped truth (the paper's
    scoring) and the warped one, overall Dice both ways, success rates both ways, p, p/std, the
    minimum Jacobian determinant and the maximum displacement (mm), per method × variant × ξ; first
    the clean row and the success threshold (70 % of the clean Dice)."""
    r = results[results["model"] == model]
    clean = r[r["budget"] == 0].drop_duplicates(["subject", "alpha"])
    cols = {"Dice R unwarped": "dice_right_unwarped", "Dice L unwarped": "dice_left_unwarped", "Dice R": "dice_right",
            "Dice L": "dice_left", "Dice unwarped": "dice_unwarped", "Dice": "dice"}
    rows = {"clean": {k: 100 * clean[v].mean() for k, v in cols.items()}}
    rows["30% decrease"] = {k: 0.7 * v for k, v in rows["clean"].items()}
    for (method, variant, xi), g in r[r["budget"] > 0].groupby(["method", "variant", "budget"], sort=False):
        row = {k: 100 * g[v].mean() for k, v in cols.items()}
        row.update({"success %": 100 * g["success"].astype(float).mean(),
                    "success unwarped %": 100 * g["success_unwarped"].astype(float).mean(),
                    "p": g["p"].mean(), "p/std": g["p_rel"].mean(), "min det J": g["min_jacobian"].min(),
                    "max disp mm": g["max_disp_mm"].max(), "CE_M": g["ce_mask"].mean()})
        rows[_label(method, variant, xi)] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = f"{model} (n = {len(clean)} images)"
    return out


def method_comparison(results: pd.DataFrame) -> pd.DataFrame:
    """Per model × method × variant × ξ (> 0): success rate (warped truth), mean Dice, p, p/std, the
    attack's seconds per image and the generator's training seconds."""
    r = results[results["budget"] > 0]
    g = r.groupby(["model", "method", "variant", "budget", "generator_target"], sort=False)
    out = g.agg(images=("dice", "size"), dice=("dice", "mean"), success=("success", lambda v: v.astype(float).mean()),
                p=("p", "mean"), p_rel=("p_rel", "mean"), seconds_per_image=("seconds_per_image", "mean"),
                train_seconds=("train_seconds", "max"))
    return out.round(4)


def defense_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per model: clean Dice and, per method × variant × ξ attacked on both models, mean Dice and success rate."""
    r = results[results["variant"] == "DV"]
    both = r.groupby(["method", "budget"])["model"].nunique()
    keys = [k for k, n in both.items() if n > 1 and k[1] > 0]
    rows = []
    for model, m in r.groupby("model", sort=False):
        row = {"model": model, "clean Dice": m[m["budget"] == 0]["dice"].mean()}
        for method, xi in keys:
            g = m[(m["method"] == method) & (m["budget"] == xi)]
            row[f"Dice, {method} ξ={xi:g}"] = g["dice"].mean()
            row[f"success, {method} ξ={xi:g}"] = g["success"].astype(float).mean()
        rows.append(row)
    return pd.DataFrame(rows).set_index("model").round(3)


def example_rows(threat: DeformationThreat, model, test: TestImages, index: int = 0) -> list[dict]:
    """Per ξ attacked by ``threat`` (its latest fields): image ``index``'s clean image, D, V, I_DV, the
    clean and attacked probabilities, the truth and the warped truth (for :func:`xrlib.plots.deformation.example_grid`)."""
    from xrlib.attacks.deformation import warp_mask
    import torch

    x0 = test.images[index:index + 1]
    p0 = predict(model, (x0, test.masks[index:index + 1]))[0][0]
    rows = []
    for xi, res in sorted(threat.last.items()):
        if xi == 0:
            continue
        adv = res.adv[index:index + 1]
        d = res.disp[index:index + 1]
        mw = warp_mask(torch.as_tensor(test.masks[index:index + 1], dtype=torch.float32)[:, None], torch.as_tensor(d))[0, 0].numpy()
        rows.append({"xi": xi, "image": x0[0], "disp": d[0], "bias": res.bias[index], "adv": adv[0], "prob_clean": p0,
                     "prob_adv": predict(model, (adv, mw[None]))[0][0], "mask": test.masks[index], "mask_warped": mw,
                     "subject": str(test.rows["subject"].iloc[index]), "alpha": float(test.rows["alpha"].iloc[index])})
    return rows


def compare_paper(ours: pd.DataFrame) -> pd.DataFrame:
    """Our :func:`table1` (per-image rows) beside paper 004's Table 1 for the trend: our mean Dice (%, unwarped
    truth, as the paper scores), success rate and p/std against the paper's mean Dice over its four organs,
    the number of organs it attacked successfully (Dice below its 30 % decrease row) and its p (unit-std images)."""
    from xrlib.studies.learned.paper import ORGANS, paper_table1

    paper = paper_table1()
    threshold = paper.loc["30% decrease", list(ORGANS)]
    rows = {}
    for label in paper.index:
        key = label.replace("ξ=1.0", "ξ=1").replace("ξ=2.0", "ξ=2").replace("ξ=3.0", "ξ=3")
        if key not in ours.index:
            continue
        o, p = ours.loc[key], paper.loc[label]
        attacked = label not in ("clean", "30% decrease")
        rows[label] = {"ours: Dice unwarped %": o["Dice unwarped"],
                       "ours: success unwarped %": o.get("success unwarped %") if attacked else float("nan"),
                       "ours: p/std": o.get("p/std") if attacked else float("nan"),
                       "paper: mean Dice %": p[list(ORGANS)].mean(),
                       "paper: organs attacked": int((p[list(ORGANS)] <= threshold).sum()) if attacked else pd.NA,
                       "paper: p": p["p"]}
    return pd.DataFrame.from_dict(rows, orient="index").round(3)
