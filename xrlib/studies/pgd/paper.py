"""Paper 002's Table 3 (Chen et al., SPIE: segmentation Dice of lumbar-disk models under L∞ PGD).

Quoted from the seed text ``/work/shared/seeds/002_32aaed3956f0fb0f.txt``, "Table 3: Image
segmentation accuracy (DICE_seg) of the models under different adversarial noise levels": mean
Dice on their test set at ε ∈ {0, 0.01, 0.03, 0.05, 0.07, 0.1, 0.2} (100-step PGD, step ε/5), for
the models trained on the largest shape-model data set (SSM-P10). Their task (one lumbar disk in
an MR slice) and sizes differ from ours; the rows are beside ours for the *trend*.

Model analogues: ``P10_std`` — standard training (our study model); ``P10_rand`` — uniform noise
of max 0.07 (our ``+noise``); ``P10_adv_s`` — adversarial training on the segmentation loss (our
``+PGD-AT``); ``P10_adv_rs`` — adversarial training on regression + segmentation losses (no analogue
here: our networks have no shape-regression output).
"""

from __future__ import annotations

#: Source of :data:`PAPER_TABLE3`.
SOURCE = "paper 002 (Chen et al., SPIE), Table 3 — seed text 002_32aaed3956f0fb0f.txt"
#: The ε of the paper's columns.
PAPER_EPS = (0.0, 0.01, 0.03, 0.05, 0.07, 0.1, 0.2)
#: Model → Dice at :data:`PAPER_EPS` (quoted, not computed).
PAPER_TABLE3 = {
    "P10_std": (0.9446, 0.847, 0.2907, 0.0468, 0.0013, 0.0, 0.0),
    "P10_rand": (0.9441, 0.8579, 0.3196, 0.0498, 0.007, 0.0, 0.0),
    "P10_adv_s": (0.9321, 0.9152, 0.8827, 0.8473, 0.8007, 0.6607, 0.1936),
    "P10_adv_rs": (0.9266, 0.9097, 0.8755, 0.833, 0.7827, 0.6378, 0.0538),
}
#: Our model suffix (after the base model's name) → the paper's analogue.
ANALOGUES = {"": "P10_std", "+noise": "P10_rand", "+PGD-AT": "P10_adv_s"}
