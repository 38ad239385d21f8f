"""PGD/SegPGD attacks, their threats and the input-attack defenses (xrlib.attacks.pgd/defenses; CPU, seconds).

A tiny U-Net (depth 3, 4 base channels) trained for a few dozen steps on 32² bright discs is the victim.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from xrlib.attacks import defenses  # noqa: F401  (registers the recipes)
from xrlib.attacks.base import TestImages, score_threat
from xrlib.attacks.pgd import (LINF_BUDGETS, PGDThreat, SegPGDThreat, ce_objective, l2_budgets, pgd_attack, project,
                               segpgd_objective, segpgd_weight, uniform_noise)
from xrlib.core.errors import InputError
from xrlib.eval.robustness import CONTRACT_COLUMNS
from xrlib.nets.losses import dice_per_image, make_loss
from xrlib.nets.unet import build_unet
from xrlib.training import StepContext, get_recipe, train_model

from test_train import _cfg, _toy_datasets  # noqa: F401  (the tiny training task)

S = 32


def _discs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright discs on a noisy background, ``(n, 1, S, S)`` images in [0, 1] and masks; some pixels at 0 and 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S]
    imgs, masks = [], []
    for _ in range(n):
        cy, cx = rng.uniform(10, S - 10, 2)
        r = rng.uniform(4, 7)
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32)
        img = np.clip(rng.normal(0.3, 0.08, (S, S)) + 0.45 * m, 0, 1)
        img[0, :4], img[-1, :4] = 0.0, 1.0  # pixels on the box's faces
        imgs.append(img.astype(np.float32))
        masks.append(m)
    return torch.from_numpy(np.stack(imgs))[:, None], torch.from_numpy(np.stack(masks))[:, None]


@pytest.fixture(scope="module")
def victim():
    """A tiny U-Net trained on the discs (Dice well above chance), in eval mode, and held-out images."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = build_unet(3, base_channels=4)
        x, y = _discs(32, seed=1)
        opt, loss_fn = torch.optim.Adam(net.parameters(), lr=0.02), make_loss("dice_bce")
        for step in range(60):
            i = torch.arange(8) + 8 * (step % 4)
            opt.zero_grad()
            loss_fn(net(x[i]), y[i]).backward()
            opt.step()
        net.eval()
        x_test, y_test = _discs(6, seed=2)
        with torch.no_grad():
            clean = dice_per_image(net(x_test), y_test)
        assert clean.mean() > 0.7, clean
        yield net, x_test, y_test
    finally:
        torch.set_num_threads(threads)


def _dice(net, x, y) -> torch.Tensor:
    with torch.no_grad():
        return dice_per_image(net(x), y)


# ------------------------------------------------------------------------------------------------- attack


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 1.5)])
@pytest.mark.parametrize("restarts", [1, 2])
def test_adversarial_images_stay_in_the_ball_and_the_box(victim, norm, eps, restarts):
    net, x, y = victim
    adv = pgd_attack(net, x, y, eps, steps=4, norm=norm, restarts=restarts, generator=torch.Generator().manual_seed(3))
    delta = (adv - x).flatten(1)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert (delta.norm(dim=1) <= eps * (1 + 1e-5)).all()
    assert delta.abs().max() > 0.5 * eps / 5  # it did move


def test_projection_of_a_far_point():
    x = torch.full((2, 1, 4, 4), 0.5)
    x[0, 0, 0, 0] = 0.99
    far = x + torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for norm, eps in (("linf", 0.1), ("l2", 0.3)):
        p = project(far, x, eps, norm)
        d = (p - x).flatten(1)
        assert p.min() >= 0 and p.max() <= 1
        assert (d.abs().max(1).values <= eps + 1e-7).all() if norm == "linf" else (d.norm(dim=1) <= eps + 1e-6).all()


def test_eps_zero_reproduces_the_clean_scores_exactly(victim):
    net, x, y = victim
    adv = pgd_attack(net, x, y, 0.0, steps=3)
    assert torch.equal(adv, x)
    th = PGDThreat(grid=(0.0, 0.05), steps=2)
    test = TestImages(x[:, 0].numpy(), y[:, 0].numpy(), pd.DataFrame({"subject": [f"s{i}" for i in range(len(x))],
                                                                       "alpha": 0.0}))
    assert np.array_equal(th.apply(net, test, 0.0).images, test.images)
    rows = score_threat(th, {"tiny": net}, test, pixel_mm_iso=1.0)
    assert list(rows.columns[:len(CONTRACT_COLUMNS)]) == list(CONTRACT_COLUMNS)
    zero, attacked = rows[rows["budget"] == 0], rows[rows["budget"] == 0.05]
    assert (zero["dice"] == zero["dice_clean"]).all() and (zero["dice_vs_clean_pred"] == 1.0).all()
    assert zero["dice"].to_numpy() == pytest.approx(_dice(net, x, y).numpy(), abs=1e-6)
    assert (zero["delta_linf"] == 0).all() and (attacked["delta_linf"] <= 0.05 + 1e-6).all()
    assert attacked["dice_vs_clean_pred"].notna().all() and attacked["changed"].notna().all()
    assert (rows["budget_unit"] == "linf").all() and (rows["threat"] == "pgd").all()
    assert attacked["dice"].mean() < zero["dice"].mean()


def test_pgd_lowers_dice_more_than_uniform_noise_of_the_same_eps(victim):
    net, x, y = victim
    eps = 0.1
    clean = _dice(net, x, y).mean()
    noisy = _dice(net, uniform_noise(x, eps, torch.Generator().manual_seed(1)), y).mean()
    adv = _dice(net, pgd_attack(net, x, y, eps, steps=10, generator=torch.Generator().manual_seed(1)), y).mean()
    seg = _dice(net, pgd_attack(net, x, y, eps, steps=10, objective="segpgd",
                                generator=torch.Generator().manual_seed(1)), y).mean()
    assert adv < noisy - 0.1 and seg < noisy - 0.1, (clean, noisy, adv, seg)
    assert noisy > clean - 0.05  # the noise alone barely matters


def test_segpgd_weighting_on_a_constructed_case():
    # 4 pixels: two classified correctly (logit sign agrees with the truth), two wrongly.
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0]).reshape(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0]).reshape(1, 1, 2, 2)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten()
    correct, wrong = ce[:2].sum(), ce[2:].sum()
    T = 10
    assert segpgd_weight(1, T) == 0.0 and segpgd_weight(T, T) == pytest.approx(0.45) and segpgd_weight(6, T) == 0.25
    for t in (1, 6, T):
        lam = (t - 1) / (2 * T)
        want = ((1 - lam) * correct + lam * wrong) / 4
        assert segpgd_objective(logits, target, t, T).item() == pytest.approx(want.item(), rel=1e-6)
    assert segpgd_objective(logits, target, 1, T).item() == pytest.approx(correct.item() / 4)  # only the correct set
    # λ = ½ would weigh both sets alike: half the plain cross-entropy.
    assert ((0.5 * correct + 0.5 * wrong) / 4).item() == pytest.approx(0.5 * ce_objective(logits, target).item())


def test_the_attack_is_seeded_and_deterministic(victim):
    net, x, y = victim

    def run(seed, **kw):
        return pgd_attack(net, x, y, 0.05, steps=3, restarts=2, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    assert torch.equal(run(0, random_start=False), run(1, random_start=False))
    th = SegPGDThreat(grid=(0.0, 0.03), steps=2, batch_size=4)
    a = th.attack(net, x[:, 0].numpy(), y[:, 0].numpy(), 0.03)
    assert np.array_equal(a, th.attack(net, x[:, 0].numpy(), y[:, 0].numpy(), 0.03))


def test_the_attack_leaves_the_model_unchanged(victim):
    net, x, y = victim
    net.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    for mode in (True, False):
        net.train(mode)
        pgd_attack(net, x, y, 0.05, steps=2, objective="segpgd")
        assert net.training is mode
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert [p.requires_grad for p in net.parameters()] == flags and all(p.grad is None for p in net.parameters())


def test_bad_arguments_are_refused(victim):
    net, x, y = victim
    with pytest.raises(ValueError, match="norm"):
        pgd_attack(net, x, y, 0.1, norm="l1")
    with pytest.raises(ValueError, match="objective"):
        pgd_attack(net, x, y, 0.1, objective="nope")
    with pytest.raises(InputError, match="include the clean 0"):
        PGDThreat(grid=(0.01, 0.03))
    with pytest.raises(InputError, match="image size"):
        PGDThreat(norm="l2")
    assert PGDThreat().budgets() == LINF_BUDGETS
    assert PGDThreat(norm="l2", image_size=S).budgets() == l2_budgets(S) == tuple(e * S for e in LINF_BUDGETS)
    assert PGDThreat(norm="l2", image_size=S).budget_unit == "l2"


# ----------------------------------------------------------------------------------------------- defenses


def _ctx(seed=0):
    return StepContext(1, 0, torch.device("cpu"), torch.Generator().manual_seed(seed), loss_fn=make_loss("dice_bce"))


@pytest.mark.parametrize("name,params", [("pgd-adversarial", {"steps": 2}), ("segpgd-adversarial", {"steps": 2}),
                                         ("uniform-noise", {})])
def test_defense_hooks_double_the_batch_within_the_budget(victim, name, params):
    net, x, y = victim
    recipe = get_recipe(name, params)
    net.train()
    x2, y2 = recipe.batch(x, y, net, _ctx())
    assert net.training
    n = len(x)
    assert x2.shape == (2 * n, 1, S, S) and torch.equal(x2[:n], x) and torch.equal(y2[:n], y) and torch.equal(y2[n:], y)
    assert (x2[n:] - x).abs().max() <= 0.07 + 1e-6 and x2.min() >= 0 and x2.max() <= 1
    assert not torch.equal(x2[n:], x)
    x3, _ = recipe.batch(x, y, net, _ctx())
    assert torch.equal(x2, x3)  # the randomness is the step generator's
    # The loss of the doubled batch is ½ L(x) + ½ L(x').
    loss = make_loss("dice_bce")
    with torch.no_grad():
        both = loss(net(x2), y2)
        half = 0.5 * loss(net(x2[:n]), y) + 0.5 * loss(net(x2[n:]), y)
    assert both.item() == pytest.approx(half.item(), rel=1e-5)
    net.eval()


def test_defense_defaults_are_the_papers():
    r = get_recipe("pgd-adversarial")
    assert (r.eps, r.steps, r.step_size, r.norm) == (0.07, 20, 0.01, "linf")
    assert get_recipe("uniform-noise").max_noise == 0.07


def test_adversarial_training_runs_in_the_loop(tmp_path):
    toy = _toy_datasets(tmp_path / "datasets")
    res = train_model(_cfg(epochs=1, base_channels=4, recipe="pgd-adversarial", recipe_params={"steps": 2}), toy,
                      tmp_path / "models", progress=False)
    assert res.config["recipe"] == "pgd-adversarial" and len(res.history) == 1
    assert np.isfinite(res.history["train_loss"]).all()
    noise = train_model(_cfg(epochs=1, base_channels=4, recipe="uniform-noise"), toy, tmp_path / "models", progress=False)
    assert noise.folder != res.folder


# --------------------------------------------------------------------------------------------- ART cross-check


class _TwoLogits(torch.nn.Module):
    """Our one-channel logits ``z`` as the two-class logits ``(−z/2, z/2)``: softmax = (1 − σ(z), σ(z))."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        z = self.net(x)
        return torch.cat([-z / 2, z / 2], dim=1)


class _PixelCE(torch.nn.Module):
    """Pixel-wise cross-entropy of two-class logits ``(B, 2, S, S)`` against labels flattened to ``(B, S·S)``."""

    def forward(self, out, labels):
        return torch.nn.functional.cross_entropy(out, labels.reshape(out.shape[0], *out.shape[2:]).long())


@pytest.mark.parametrize("norm,eps,step", [("linf", 0.05, 0.01), ("l2", 1.5, 0.3)])
def test_pgd_matches_the_adversarial_robustness_toolbox(victim, norm, eps, step):
    """Same model, images, ε, steps and step size, no random start, pixel-wise CE: our PGD and ART's agree.

    Tolerance: at most 2 % of the pixels differ by more than 1e-4 (room for sign flips of near-zero
    gradients between the two CE formulations; on this machine none does), mean |δ| within 0.002,
    the fraction of pixels at ±ε (L∞) within 0.02, the mean ‖δ‖₂ (L2) within 2 %, mean Dice within 0.02.
    """
    art = pytest.importorskip("art")
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    assert art.__version__ == "1.20.1"
    net, x, y = victim
    steps = 5
    clf = PyTorchClassifier(model=_TwoLogits(net), loss=_PixelCE(), input_shape=(1, S, S), nb_classes=2,
                            clip_values=(0.0, 1.0), device_type="cpu")
    attack = ProjectedGradientDescentPyTorch(clf, norm=np.inf if norm == "linf" else 2, eps=eps, eps_step=step,
                                             max_iter=steps, num_random_init=0, batch_size=len(x), verbose=False)
    theirs = torch.from_numpy(attack.generate(x.numpy(), y.numpy().reshape(len(x), -1)))
    ours = pgd_attack(net, x, y, eps, steps=steps, step_size=step, norm=norm, objective="ce", random_start=False)

    def stats(adv):
        d = adv - x
        return (d.abs().mean().item(), (d.abs() > eps - 1e-6).float().mean().item(), d.flatten(1).norm(dim=1).mean().item(),
                _dice(net, adv, y).mean().item())

    (m1, f1, l1, d1), (m2, f2, l2, d2) = stats(ours), stats(theirs)
    assert m1 == pytest.approx(m2, abs=0.002) and d1 == pytest.approx(d2, abs=0.02)
    assert f1 == pytest.approx(f2, abs=0.02) if norm == "linf" else l1 == pytest.approx(l2, rel=0.02)
    assert ((ours - theirs).abs() > 1e-4).float().mean() <= 0.02
    assert d1 < _dice(net, x, y).mean().item() - 0.02  # it is an attack


# ------------------------------------------------------------------------------------------- run_threat


def test_run_threat_pgd_and_segpgd_on_the_study_models(toy_run):
    from xrlib.eval.robustness import read_robustness
    from xrlib.studies import robustness

    profile, run, _ = toy_run
    out = robustness.run_threat(profile, run, threat="pgd", models=["U-Net(Real)"], alphas=[0.0], steps=2,
                                grid=(0.0, 0.05, 0.1), budgets=[0.1])
    back = read_robustness(run, "pgd")
    assert list(back.columns[:len(CONTRACT_COLUMNS)]) == list(CONTRACT_COLUMNS)
    assert back["budget"].unique().tolist() == [0.0, 0.1] and (back["alpha"] == 0).all() and len(back) == 2 * 2
    assert (back["budget_unit"] == "linf").all() and back["dice_vs_clean_pred"].notna().all()
    assert (back["delta_linf"] <= 0.1 + 1e-6).all()
    assert set(back.loc[back["budget"] > 0, "attack"]) <= {"pgd", "segpgd", "apgd-dice", "apgd-bce", "apgd-mce"}
    assert set(out.summary.columns) == set(back["alpha_group"])
    seg = robustness.run_threat(profile, run, threat="segpgd", models=["U-Net(Real)"], alphas=[0.0], steps=2,
                                norm="l2", budgets=[l2_budgets(S)[1]])
    assert (seg.results["threat"] == "segpgd").all() and (seg.results["budget_unit"] == "l2").all()
    assert (seg.path.parent / "segpgd.csv").is_file()
    with pytest.raises(InputError, match="bad options"):
        robustness.run_threat(profile, run, threat="pgd", stepz=2)
    with pytest.raises(InputError, match="takes no options"):
        robustness.run_threat(profile, run, threat="rotation", steps=2)
    with pytest.raises(InputError, match="no Syn_test image at the angles"):
        robustness.run_threat(profile, run, threat="pgd", alphas=[7.0])


def test_robustness_cli_attack_options_and_saved_examples(toy_run, tmp_path, capsys):
    import yaml

    from xrlib.cli import main

    profile, run, _ = toy_run
    (tmp_path / "toyrot.yml").write_text(yaml.safe_dump(profile.raw))
    base = ["robustness", "--profile", str(tmp_path / "toyrot.yml"), "--run-root", str(run.parent), "--no-progress",
            "--models", "U-Net(Real)"]
    out = tmp_path / "examples"
    assert main([*base, "--threat", "pgd", "--steps", "2", "--alphas", "0", "--budgets", "0.07",
                 "--save-examples", str(out)]) == 0  # the ensemble on the profile's grid
    assert "pgd.csv" in capsys.readouterr().out
    with np.load(out / "pgd" / "U-Net_Real" / "budget_0.07.npz") as z:
        assert set(z.files) == {"clean_image", "clean_mask", "clean_prob", "image", "mask", "prob", "subject", "alpha"}
        assert z["image"].shape == z["clean_image"].shape and (z["alpha"] == 0).all()
        assert np.abs(z["image"] - z["clean_image"]).max() <= 0.07 + 1e-6  # inside the L∞ ball
    with np.load(out / "pgd" / "U-Net_Real" / "budget_0.npz") as z:
        assert np.array_equal(z["image"], z["clean_image"]) and np.array_equal(z["prob"], z["clean_prob"])
    # attack options on a threat that takes none: exit status 2 and one line
    assert main([*base, "--threat", "rotation", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: threat 'rotation' takes no options, got ['steps']"]
    assert main([*base, "--threat", "pgd", "--subjects", "1"]) == 2  # --subjects is for pose, noise, acquisition
    assert capsys.readouterr().err.strip().startswith("error: threat 'pgd': bad options ['subjects'] (it takes alphas")
    assert main([*base, "--threat", "acquisition", "--subjects", "0"]) == 2
    assert "--subjects" in capsys.readouterr().err
