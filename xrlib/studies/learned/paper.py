"""Paper 004's Table 1 (Chen et al., "Intelligent image synthesis to attack a segmentation CNN using
adversarial learning", SASHIMI/MICCAI workshop 2019): Dice (%) of a 2-D U-Net on abdominal CT
(75 test subjects) per organ, and the perceptibility p (mean ``|I_DV − I_0|`` of images normalised to zero
mean and unit standard deviation), quoted from the paper's Table 1 for the trend only — another
organ, modality and network; its p is relative to the image's standard deviation.
"""

from __future__ import annotations

import pandas as pd

SOURCE = "Chen et al. 2019 (paper 004), Table 1"
ORGANS = ("Pancreas", "Kidneys", "Liver", "Spleen")

#: Row label → (Dice per organ in %, p); p is None where the paper has none.
PAPER_TABLE1 = {
    "clean": ((80.07, 94.74, 94.71, 94.76), None),
    "30% decrease": ((56.05, 66.32, 66.30, 66.33), None),
    "DV ξ=0.5": ((74.77, 93.88, 89.81, 81.87), 0.061),
    "DV ξ=1.0": ((70.66, 90.06, 59.51, 37.12), 0.060),
    "DV ξ=1.5": ((64.25, 66.97, 26.45, 35.81), 0.075),
    "DV ξ=2.0": ((53.59, 60.07, 11.19, 17.21), 0.074),
    "DV ξ=2.5": ((40.57, 45.47, 9.16, 17.60), 0.084),
    "DV ξ=3.0": ((31.49, 43.43, 5.82, 26.58), 0.085),
    "D ξ=2.0": ((70.46, 82.04, 75.06, 70.47), 0.056),
    "V ξ=2.0": ((68.15, 88.25, 50.05, 46.94), 0.061),
}


def paper_table1() -> pd.DataFrame:
    """The paper's Table 1 as a frame (rows as :data:`PAPER_TABLE1`, columns the organs and ``p``)."""
    rows = {k: {**dict(zip(ORGANS, d)), "p": p} for k, (d, p) in PAPER_TABLE1.items()}
    return pd.DataFrame.from_dict(rows, orient="index")
