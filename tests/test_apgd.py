"""APGD, the best-iterate PGD run and the Square-style random search (xrlib.attacks.apgd; CPU, seconds).

Pinned by: the analytic optimum of a linear objective (L∞: x + ε·sign(w) clipped to the box; L2: x + ε·w/‖w‖),
the checkpoint schedule of the paper, and a cross-check against ART's AutoProjectedGradientDescent on a
small classifier (robust accuracy within a stated tolerance).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrlib.attacks.apgd import apgd_attack, apgd_checkpoints, pgd_run, square_attack
from xrlib.attacks.pgd import balanced_ce_objective, masked_ce_objective


class Linear(torch.nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())

    def forward(self, x):
        return (x.flatten(1) * self.w).sum(1, keepdim=True)


def _margin(logits, target, t=1, steps=1):
    return logits[:, 0]


def _neg_margin(logits, target):
    return -logits[:, 0]


def test_checkpoints_follow_the_papers_schedule():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 → w = ⌈p·100⌉
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_reaches_the_analytic_optimum_of_a_linear_objective(norm):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, generator=g)
    x = 0.2 + 0.6 * torch.rand(5, 64, generator=g)  # away from the box's faces ...
    x[0, :8] = 0.0  # ... except some pixels on them (L∞ then clips)
    eps = 0.05
    # L∞ from a random start (sign steps reach the vertex whatever the start); L2 from the clean image
    run = apgd_attack(Linear(w), x, torch.zeros(5), eps, steps=20, norm=norm, objective=_margin, score=_neg_margin,
                      random_start=norm == "linf")
    if norm == "linf":
        expected = (x + eps * w.sign()).clamp(0, 1)
    else:
        x = x[1:]
        expected = x + eps * w / w.norm()
        run.images = run.images[1:]
    assert torch.allclose(run.images, expected, atol=1e-5)
    assert run.passes == 21 and len(run.history) == 21
    assert np.all(np.diff(run.history) <= 1e-7)  # the running minimum of the score never rises


def test_pgd_run_keeps_the_best_iterate_and_the_square_attack_stays_in_the_ball():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, generator=g)
    x = 0.5 * torch.ones(3, 64)
    run = pgd_run(Linear(w), x, torch.zeros(3), 0.05, steps=5, step_size=0.02, objective=_margin, score=_neg_margin,
                  random_start=False)
    assert torch.allclose(run.images, x + 0.05 * w.sign(), atol=1e-6) and run.passes == 6
    img = 0.5 * torch.ones(2, 1, 8, 8)
    lin = Linear(w)
    model = lambda z: lin(z.flatten(1))  # noqa: E731
    model.parameters, model.eval, model.train, model.training = lin.parameters, lin.eval, lin.train, False
    sq = square_attack(model, img, torch.zeros(2), 0.05, queries=200, objective=_margin, score=_neg_margin)
    assert (sq.images - img).abs().max() <= 0.05 + 1e-7 and sq.passes == 200
    # random search on a linear objective moves towards the optimum: most pixels take the sign of w
    agree = ((sq.images - img).flatten(1).sign() == w.sign()).float().mean()
    assert agree > 0.6


def test_segmentation_objectives_on_a_constructed_case():
    logits = torch.tensor([[[[2.0, -2.0], [-2.0, -2.0]]]])  # predicts the top-left pixel
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])  # truth: the top row
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")[0, 0]
    # foreground (top row): mean of CE(2, 1) and CE(−2, 1); background: mean of two CE(−2, 0)
    assert balanced_ce_objective(logits, target).item() == pytest.approx(0.5 * (ce[0].mean() + ce[1].mean()).item())
    # correct pixels: top-left, bottom row (3 of 4); the wrong top-right pixel is masked out
    assert masked_ce_objective(logits, target).item() == pytest.approx((ce[0, 0] + ce[1].sum()).item() / 4)


def _blobs(n: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    centre = np.where(y[:, None] == 1, 0.6, 0.4)
    x = np.clip(centre + rng.normal(0, 0.08, (n, d)), 0, 1).astype(np.float32)
    return torch.as_tensor(x), torch.as_tensor(y)


def test_apgd_matches_the_adversarial_robustness_toolbox_on_a_small_classifier():
    """A 2-layer MLP on two blobs in [0, 1]^16; untargeted L∞ APGD on the CE, 20 iterations, one start.
    Robust accuracy of ours and of ART's AutoProjectedGradientDescent agree within 0.05 (200 points)."""
    art = pytest.importorskip("art")
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    assert art.__version__ == "1.20.1"
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    x, y = _blobs(400, 16, 0)
    opt = torch.optim.Adam(net.parameters(), 0.05)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    xt, yt = _blobs(200, 16, 1)
    eps = 0.1
    ce = lambda z, t, *_: torch.nn.functional.cross_entropy(z, t, reduction="none")  # noqa: E731
    correct = lambda z, t: (z.argmax(1) == t).float()  # noqa: E731
    ours = apgd_attack(net, xt, yt, eps, steps=20, objective=ce, score=correct, generator=torch.Generator().manual_seed(0))
    clf = PyTorchClassifier(net, torch.nn.CrossEntropyLoss(), input_shape=(16,), nb_classes=2, clip_values=(0.0, 1.0))
    np.random.seed(0)
    adv = AutoProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=20, nb_random_init=1,
                                       batch_size=200, loss_type="cross_entropy", verbose=False).generate(xt.numpy())
    theirs = float((clf.predict(adv).argmax(1) == yt.numpy()).mean())
    print(f"robust accuracy at ε = {eps}: ours {float(ours.score.mean()):.3f}, ART {theirs:.3f}")
    clean = float((net(xt).argmax(1) == yt).float().mean())
    assert clean > 0.9 and theirs < clean - 0.2  # the attack matters at this ε
    assert abs(float(ours.score.mean()) - theirs) <= 0.05
    assert np.abs(ours.images.numpy() - xt.numpy()).max() <= eps + 1e-6
