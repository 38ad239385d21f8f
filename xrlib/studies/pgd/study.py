"""Chapter 09: PGD and SegPGD against the study models and their input-attack defenses.

The victims are the three study U-Nets of chapter 05 and three defenses trained on the data of
U-Net(Real+Syn_all) (:func:`defense_configs`): PGD adversarial training (``+PGD-AT``), SegPGD
adversarial training (``+SegPGD-AT``) and uniform-noise training (``+noise``), warm-started from
that study model when the profile says so, beside their control ``+fine-tune`` (standard training,
same start, epochs and lr). Every victim is attacked on the synthetic test
subjects at the profile's angles (:func:`attack_grid`) by the L∞ attack ensemble (:mod:`xrlib.attacks.ensemble`:
PGD, SegPGD and APGD on soft Dice, balanced and masked CE) at every budget — per image the lowest
Dice over every attack, restart and iterate, with the winning attack named — SegPGD alone at the
profile's SegPGD budgets, and the L2 ensemble when the profile asks. :func:`run_diagnostics` runs
the checks of :mod:`xrlib.studies.pgd.diagnostics` at the mid-range ε; their runs enter the
per-image minimum and their failures flag the model's rows (column ``flag``), which
:func:`worst_case` (the mean of the per-image minimum) carries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.attacks import defenses  # noqa: F401  (registers the defense recipes)
from xrlib.attacks.base import TestImages, score_threat
from xrlib.attacks.ensemble import EnsembleThreat, members
from xrlib.attacks.pgd import PGDThreat, SegPGDThreat, l2_budgets
from xrlib.core.profiles import Profile
from xrlib.eval.robustness import robustness_curve, write_robustness
from xrlib.eval.stats import bootstrap_by_group
from xrlib.studies.pgd.settings import PGDSettings
from xrlib.studies.rotation.study import syn_test_images
from xrlib.studies.rotation import study
from xrlib.studies.rotation.groups import GROUP_ORDER, alpha_group
from xrlib.studies.rotation.models import study_configs
from xrlib.studies.rotation.seeds import eager_if_warm
from xrlib.training import TrainConfig, TrainResult, load_best, train_all
from xrlib.training.config import safe_name

__all__ = ["BASE_MODEL", "DEFENSES", "attack_grid", "by_alpha_group", "curves", "defense_configs", "defense_cost",
           "load_examples", "paper_comparison", "add_grid_check", "validation_images", "run_diagnostics", "test_images", "threats", "train_defenses", "triplets",
           "victims", "winner_counts", "worst_case", "defense_tradeoff", "describe"]

#: The study model whose data the defenses train on.
BASE_MODEL = "U-Net(Real+Syn_all)"
#: Name suffix → training recipe of the defenses, and the control: ``+fine-tune`` trains with the standard
#: recipe from the same start, for the same epochs at the same lr — what a defense's gain is measured against.
DEFENSES = {"+PGD-AT": "pgd-adversarial", "+SegPGD-AT": "segpgd-adversarial", "+noise": "uniform-noise",
            "+fine-tune": "standard"}
#: The folder (under the run) of this chapter's artifacts.
FOLDER = "pgd"


def test_images(profile: Profile, run: Path, s: PGDSettings) -> TestImages:
    """The Syn_test images at the profile's angles (all angles when ``alphas`` is null), ``angles_per_subject``
    of them per subject when set."""
    return syn_test_images(profile, Path(run), s.alphas, s.angles_per_subject)


def base_folder(profile: Profile, run: Path) -> str:
    """The model folder name of U-Net(Real+Syn_all) (its configuration hash is in the name)."""
    return study.study_models(profile, Path(run), [BASE_MODEL])[BASE_MODEL].folder.name


def defense_configs(profile: Profile, run: Path, s: PGDSettings) -> list[TrainConfig]:
    """The three defenses and the fine-tune control: U-Net(Real+Syn_all)'s configuration with a defense recipe
    (the control: the standard recipe).

    Epochs and patience = ``defense.epochs``, Adam lr = ``defense.lr``; adversarial training with
    L∞ PGD (``eps``, ``steps``, ``step_size``), noise training with ``max_noise``. With
    ``defense.warm_start`` the recipe starts from the study model's folder, whose name (with its
    configuration hash) enters the defense's cache hash through the recipe parameters; a warm-started one
    trains eagerly (:func:`~xrlib.studies.rotation.seeds.eager_if_warm`).
    """
    base = {c.name: c for c in study_configs(profile)}[BASE_MODEL]
    d = s.defense
    warm = {"warm_start": base_folder(profile, run)} if d.warm_start else {}
    out = []
    for suffix, recipe in DEFENSES.items():
        params = ({"max_noise": d.max_noise} if recipe == "uniform-noise" else {} if recipe == "standard" else
                  {"eps": d.eps, "steps": d.steps, "step_size": d.step_size, "norm": "linf"})
        out.append(dataclasses.replace(base, name=BASE_MODEL + suffix, lr=d.lr, epochs=d.epochs, patience=d.epochs,
                                       recipe=recipe, recipe_params={**params, **warm}))
    return [eager_if_warm(c) for c in out]


def train_defenses(profile: Profile, run: Path, s: PGDSettings, progress: bool = True) -> dict[str, TrainResult]:
    """Train (or load from the cache) the defenses in ``<run>/models``."""
    return train_all(defense_configs(profile, run, s), study.datasets_dir(Path(run)), Path(run) / "models",
                     progress=progress, imports=("xrlib.attacks.defenses",))


def victims(profile: Profile, run: Path, defended: Mapping[str, TrainResult]) -> dict[str, torch.nn.Module]:
    """The study models and the defenses, loaded in eval mode (study models first)."""
    trained = {**study.study_models(profile, Path(run)), **defended}
    return {name: load_best(res) for name, res in trained.items()}


def defense_cost(results: Mapping[str, TrainResult]) -> pd.DataFrame:
    """Per defense: epochs run, best epoch, best validation Dice and training time (s)."""
    return pd.DataFrame([{"model": n, "recipe": r.config.get("recipe"), "epochs run": r.epochs_run,
                          "best epoch": r.best_epoch, "best val Dice": r.best_val_dice, "time (s)": r.seconds}
                         for n, r in results.items()]).round(3)


def threats(profile: Profile, s: PGDSettings) -> dict[str, PGDThreat | EnsembleThreat]:
    """The chapter's threats: ``pgd`` (the L∞ ensemble of :func:`xrlib.attacks.ensemble.members` with
    ``steps`` PGD/SegPGD steps and ``apgd_steps`` APGD iterations), ``segpgd`` (SegPGD alone) and, when
    asked, ``pgd-l2`` (the ensemble at the L2 radii ε·S). Keep the object: it caches the ensemble's runs."""
    ens = tuple(m for m in members(s.steps, s.apgd_steps, s.step_fraction) if s.members is None or m.name in s.members)
    out = {"pgd": EnsembleThreat(ens, grid=s.grid, seed=s.seed),
           "segpgd": SegPGDThreat(grid=(0.0, *s.segpgd_budgets), steps=s.steps, step_fraction=s.step_fraction, seed=s.seed)}
    if s.l2:
        out["pgd-l2"] = EnsembleThreat(ens, grid=(0.0, *l2_budgets(profile.image_size, s.budgets)), norm="l2", seed=s.seed)
    return out


def attack_grid(profile: Profile, run: Path, s: PGDSettings, models: Mapping[str, torch.nn.Module], test: TestImages,
                progress: bool = False, attacks: Mapping[str, object] | None = None) -> dict[str, pd.DataFrame]:
    """Contract rows per threat (``pgd`` — the ensemble —, ``segpgd``, and ``pgd-l2`` when asked) for every victim.

    ``pgd`` and ``segpgd`` are written to ``<run>/robustness/<threat>.csv`` (the book's results
    contract, L∞); the L2 rows go to ``<run>/pgd/pgd_l2.csv``. The ensemble's images are saved per model
    and budget under ``<run>/pgd/examples/`` (for the transfer check and the figures). ``attacks``:
    the threats (default :func:`threats`; pass the same object to :func:`run_diagnostics`).
    """
    run = Path(run)
    out = {}
    for key, threat in (attacks or threats(profile, s)).items():
        ex = run / FOLDER / "examples" if key == "pgd" else None
        df = score_threat(threat, models, test, study.pixel_mm(profile), groups=alpha_group, progress=progress,
                          examples_dir=ex)
        out[key] = df
        if key == "pgd-l2":
            from xrlib.core.atomic import write_csv_atomic

            write_csv_atomic(run / FOLDER / "pgd_l2.csv", df)
        else:
            write_robustness(df, run, key)
    return out


def validation_images(profile: Profile, run: Path, n: int = 8) -> TestImages:
    """Up to ``n`` validation images of the base model's training sets (Real + Syn_all, evenly spaced in
    the manifest): where the ε grid is chosen (:func:`xrlib.studies.pgd.diagnostics.dice_vs_eps`)."""
    from xrlib.training import select_images

    rows = select_images(study.datasets_dir(Path(run)), ["Real", "Syn_all"], "val", profile.synthetic.cen_alphas)
    keep = np.unique(np.linspace(0, len(rows) - 1, min(int(n), len(rows))).round().astype(int))
    return TestImages.from_manifest(rows.iloc[keep].reset_index(drop=True), study.datasets_dir(Path(run)))


def load_examples(run: Path, model: str, budget: float, threat: str = "pgd") -> dict[str, np.ndarray]:
    """The saved clean/adversarial images, masks and probabilities of ``model`` at ``budget``."""
    path = Path(run) / FOLDER / "examples" / threat / safe_name(model) / f"budget_{budget:g}.npz"
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def worst_case(results: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per model and L∞ ε: the robustness number — the mean over images of the per-image minimum Dice
    over every attack run (``pgd`` holds the ensemble's per-image minimum; SegPGD alone, where it ran,
    enters the minimum per image too).

    Columns: ``model``, ``budget``, ``min Dice``, ``strongest`` (the attack winning most images;
    ``clean`` at ε = 0), ``flag`` (the model's failed diagnostics; empty: none or not checked).
    """
    pgd = results["pgd"].copy()
    pgd["_i"] = pgd.groupby(["model", "budget"], sort=False).cumcount()
    if "segpgd" in results:
        seg = results["segpgd"].assign(_i=lambda d: d.groupby(["model", "budget"], sort=False).cumcount())
        pgd = pgd.merge(seg[["model", "budget", "_i", "dice"]].rename(columns={"dice": "_seg"}), how="left",
                        on=["model", "budget", "_i"])
        lower = pgd["_seg"] < pgd["dice"]
        pgd.loc[lower, "attack"] = "segpgd"
        pgd["dice"] = pgd[["dice", "_seg"]].min(axis=1)
    if "attack" not in pgd.columns:
        pgd["attack"] = "pgd"
    if "flag" not in pgd.columns:
        pgd["flag"] = ""
    g = pgd.groupby(["model", "budget"], sort=False)
    out = pd.DataFrame({"min Dice": g["dice"].mean(), "strongest": g["attack"].agg(lambda a: a.value_counts().index[0]),
                        "flag": g["flag"].first().fillna("")}).reset_index()
    out.loc[out["budget"] == 0, "strongest"] = "clean"
    order = list(dict.fromkeys(results["pgd"]["model"]))
    out["_m"] = out["model"].map({m: i for i, m in enumerate(order)})
    return out.sort_values(["_m", "budget"]).drop(columns="_m").reset_index(drop=True).round(4)


def winner_counts(results: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per model: how many (image, ε > 0) the ensemble's members (and diagnostic runs) won."""
    df = results["pgd"][results["pgd"]["budget"] > 0]
    return df.groupby(["model", "attack"], sort=False).size().unstack(fill_value=0)


def curves(results: Mapping[str, pd.DataFrame], metric: str = "dice", seed: int = 0) -> pd.DataFrame:
    """Mean ``metric`` vs ε per model and attack with subject-clustered bootstrap CIs (``attrs['note']``)."""
    parts, note = [], ""
    for key, df in results.items():
        c = robustness_curve(df, metric, seed=seed)
        note = note or c.attrs.get("note", "")
        parts.append(c.assign(attack=key))
    out = pd.concat(parts, ignore_index=True)
    out.attrs["note"] = note
    return out


def by_alpha_group(df: pd.DataFrame, seed: int = 0, metric: str = "dice") -> pd.DataFrame:
    """Mean ``metric`` (``dice``, or ``hd95_mm`` in mm) per model, ε and α group with subject-clustered CIs
    (does a rotated patient fall faster?). HD95 is averaged over the images where it is defined (both the
    prediction and the truth non-empty): ``n`` counts them, ``n_nan`` the others."""
    if metric not in df.columns:
        raise KeyError(f"no column {metric!r} in the attack table; expected one of dice, hd95_mm")
    return bootstrap_by_group(df, metric, by=("model", "budget", "alpha_group"), seed=seed,
                              orders={"alpha_group": GROUP_ORDER})


# ----------------------------------------------------------------------------------------------- diagnostics


def run_diagnostics(profile: Profile, s: PGDSettings, models: Mapping[str, torch.nn.Module], test: TestImages,
                    results: dict[str, pd.DataFrame], run: Path, threat: EnsembleThreat) -> pd.DataFrame:
    """The diagnostics (a)–(f) of :mod:`xrlib.studies.pgd.diagnostics` at ``check.budget`` (null: the
    grid's ε where the base model's mean Dice is in [0.3, 0.7]) on ``check.models`` (null: every
    victim), with transfers from every other victim's saved ensemble images.

    Side effects that make the diagnostics count: the diagnostic runs enter the per-image minimum
    (``threat`` — the object that produced ``results['pgd']`` — re-scores that ε), the model's failed
    outcomes go to the column ``flag`` of all its rows, and ``<run>/robustness/pgd.csv`` is rewritten.
    Returns one row per model × check with ``model``, ``budget`` and the columns of :func:`diagnostics.diagnose`.
    """
    from xrlib.studies.pgd import diagnostics as dg

    c = s.check
    df = results["pgd"]
    curves_ = {m: g.groupby("budget")["dice"].mean() for m, g in df.groupby("model", sort=False)}
    eps = c.budget if c.budget is not None else dg.mid_budget(curves_[BASE_MODEL if BASE_MODEL in curves_ else next(iter(curves_))])
    names = list(models) if c.models is None else [m for m in c.models if m in models]
    images, masks = np.asarray(test.images, np.float32), np.asarray(test.masks, np.float32)
    parts, flags = [], {}
    for name in names:
        transfer = {src: load_examples(run, src, eps)["image"] for src in models if src != name}
        rows = dg.diagnose(models[name], images, masks, eps, threat, c.tolerance, c.steps, c.restarts,
                           curve=curves_[name], transfer=transfer, seed=s.seed)
        flags[name] = dg.flags(rows)
        parts.append(rows.assign(model=name, budget=eps))
        fresh = score_threat(threat, {name: models[name]}, test, study.pixel_mm(profile), budgets=[eps], groups=alpha_group)
        fresh = fresh[np.isclose(fresh["budget"], eps)]
        at = (df["model"] == name) & np.isclose(df["budget"], eps)
        df = pd.concat([df[~at], fresh], ignore_index=True)
    order = {m: i for i, m in enumerate(dict.fromkeys(results["pgd"]["model"]))}
    df = df.assign(_m=df["model"].map(order)).sort_values(["_m", "budget"], kind="stable").drop(columns="_m")
    df["flag"] = df["model"].map(flags).fillna("")
    results["pgd"] = df.reset_index(drop=True)
    write_robustness(results["pgd"], run, "pgd")
    out = pd.concat(parts, ignore_index=True)
    return out[["model", "budget", *[k for k in out.columns if k not in ("model", "budget")]]].round(4)


def add_grid_check(checks: pd.DataFrame, row: Mapping, model: str = BASE_MODEL) -> pd.DataFrame:
    """The diagnostics table of :func:`run_diagnostics` with the grid check
    (:func:`xrlib.studies.pgd.diagnostics.grid_on_validation`) as its last row: model ``<model> (validation
    images)``, no budget. It flags no model's numbers (a typed grid does not bias a Dice); it says whether the
    profile's grid is a checked choice."""
    extra = pd.DataFrame([{"model": f"{model} (validation images)", "budget": np.nan, **row}])
    return pd.concat([checks, extra.reindex(columns=checks.columns)], ignore_index=True)


def triplets(run: Path, models: Sequence[str], budget: float, index: int = 0) -> list[dict]:
    """Per model: the clean image, the perturbation, the adversarial image and both predictions at ``budget``."""
    out = []
    for m in models:
        ex = load_examples(run, m, budget)
        out.append({"model": m, "clean": ex["clean_image"][index], "adv": ex["image"][index],
                    "truth": ex["mask"][index], "p_clean": ex["clean_prob"][index], "p_adv": ex["prob"][index],
                    "title": f"{ex['subject'][index]} · α = {float(ex['alpha'][index]):+g}°"})
    return out


def paper_comparison(worst: pd.DataFrame) -> pd.DataFrame:
    """Our minimum Dice per ε (base model and its defenses) beside paper 002's Table 3 rows.

    Rows: ours (``this build: <model>``) and the paper's analogues (``paper 002: <row>``); columns:
    the ε of this build that the paper also reports; ``source`` says where each row comes from.
    """
    from xrlib.studies.pgd.paper import ANALOGUES, PAPER_EPS, PAPER_TABLE3, SOURCE

    eps = [e for e in sorted(worst["budget"].unique()) if np.isclose(PAPER_EPS, e).any()]
    rows = []
    for suffix, paper_row in ANALOGUES.items():
        m = worst[worst["model"] == BASE_MODEL + suffix]
        if m.empty:
            continue
        ours = {f"ε = {e:g}": float(m.loc[np.isclose(m["budget"], e), "min Dice"].iloc[0]) for e in eps}
        rows.append({"row": f"this build: {BASE_MODEL + suffix}", **ours, "source": "min Dice over the attacks run"})
        theirs = {f"ε = {e:g}": PAPER_TABLE3[paper_row][int(np.argmin(np.abs(np.asarray(PAPER_EPS) - e)))] for e in eps}
        rows.append({"row": f"paper 002: {paper_row}", **theirs, "source": SOURCE})
    return pd.DataFrame(rows).set_index("row")


def defense_tradeoff(worst: pd.DataFrame) -> pd.DataFrame:
    """The base model and its defenses: clean Dice, its change against the base model (the
    clean-accuracy cost of a defense), and the minimum Dice under attack at every ε."""
    names = [m for m in dict.fromkeys(worst["model"]) if m.startswith(BASE_MODEL)]
    wide = worst[worst["model"].isin(names)].pivot(index="model", columns="budget", values="min Dice").reindex(names)
    clean = wide[0.0]
    out = pd.DataFrame({"clean Dice": clean, "clean Δ vs base": clean - clean.get(BASE_MODEL, np.nan)})
    for e in [b for b in wide.columns if b != 0]:
        out[f"min Dice @ ε = {e:g}"] = wide[e]
    return out.round(4)


def describe(profile: Profile, s: PGDSettings, test: TestImages) -> str:
    """What this profile runs, in words (sizes, steps, models, surrogates)."""
    d, o, c = s.defense, s.ood, s.check
    weak = " (paper 002: N = 100)" if s.steps < 100 else " (paper 002's N)"
    return "\n".join([
        f"profile {profile.name}: {test.rows['subject'].nunique()} Syn_test subject(s) × {test.rows['alpha'].nunique()} "
        f"angle(s) = {len(test.rows)} images of {profile.image_size}² px",
        f"L∞ attack ensemble at ε ∈ {{{', '.join(f'{e:g}' for e in s.budgets)}}}: PGD and SegPGD with N = {s.steps} "
        f"steps of ε·{s.step_fraction:g}{weak}, APGD ({s.apgd_steps} iterations) on soft Dice, balanced CE and masked CE "
        f"(members run: {'all' if s.members is None else ', '.join(s.members)}); "
        f"per image the lowest Dice over every attack and iterate; SegPGD alone at ε ∈ "
        f"{{{', '.join(f'{e:g}' for e in s.segpgd_budgets)}}}; "
        + (f"L2 ensemble at radii ε·{profile.image_size}" if s.l2 else "no L2 attack (paper profile only)"),
        f"diagnostics at {'the mid-range ε (base model Dice in [0.3, 0.7])' if c.budget is None else f'ε = {c.budget:g}'}: "
        f"convergence (APGD iterations doubled up to {c.steps}), 2× steps + {c.restarts} restart(s), single-step, "
        f"monotone in ε, transfer from every other victim, gradient-free Square search with the ensemble's forward "
        f"passes; tolerance {c.tolerance:g} in mean Dice; models: {'all' if c.models is None else ', '.join(c.models)}",
        f"defenses on {BASE_MODEL}'s data: {'warm-started from it, ' if d.warm_start else 'from scratch, '}"
        f"{d.epochs} epoch(s), Adam lr {d.lr:g}; adversarial training with {d.steps}-step L∞ PGD/SegPGD at ε = {d.eps:g}, "
        f"step {d.step_size:g}; noise training with U[−{d.max_noise:g}, {d.max_noise:g}]",
        f"OOD: a reconstruction head on each frozen victim ({', '.join(o.victims)}), {o.head_epochs} epoch(s); one OOD "
        f"image per test image; L∞ PGD sweep ε ∈ {{{', '.join(f'{e:g}' for e in o.eps)}}} × "
        f"{{{', '.join(str(k) for k in o.steps)}}} steps of ε·{o.step_fraction:g}, reconstruction weight "
        f"{o.recon_weight:g} in (c)",
    ])
