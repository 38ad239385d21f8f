"""The published numbers of Fok et al. (2024, Sci. Rep.) that the rotation study is compared with."""

from __future__ import annotations

__all__ = ["PAPER_TABLE2_DICE", "PAPER_TABLE3_DICE", "PAPER_TABLE4_DICE"]

#: Mean ± sd Dice (%) per α group on synthetic test images, Table 2 of Fok et al. 2024 (Sci. Rep.).
PAPER_TABLE2_DICE = {
    "TorchXRayVision": {"Moderate-": (48.67, 21.86), "Low-": (58.06, 21.53), "Center": (62.26, 20.32),
                        "Low+": (60.21, 22.25), "Moderate+": (53.27, 26.12)},
    "U-Net(Real)": {"Moderate-": (79.12, 8.90), "Low-": (82.94, 10.46), "Center": (83.79, 13.24),
                    "Low+": (86.37, 6.61), "Moderate+": (76.71, 17.69)},
    "U-Net(Real+Syn_cen)": {"Moderate-": (87.14, 4.58), "Low-": (88.84, 4.52), "Center": (89.61, 2.78),
                            "Low+": (89.14, 3.30), "Moderate+": (86.02, 7.57)},
    "U-Net(Real+Syn_all)": {"Moderate-": (88.50, 3.45), "Low-": (89.03, 3.47), "Center": (89.21, 3.49),
                            "Low+": (89.32, 2.19), "Moderate+": (88.95, 3.39)},
}
#: Mean ± sd Dice (%) on 350 real test radiographs, Table 4 of Fok et al. 2024.
PAPER_TABLE4_DICE = {"TorchXRayVision": (42.03, 32.62), "U-Net(Real)": (92.58, 7.14),
                     "U-Net(Real+Syn_cen)": (91.96, 9.47), "U-Net(Real+Syn_all)": (92.30, 8.29)}
#: Mean Dice (%) of the 18 U-Net(Real) ablation configurations (Exp 1-18), Table 3 of Fok et al. 2024.
PAPER_TABLE3_DICE = [89.79, 89.88, 90.00, 89.42, 89.28, 88.60, 91.63, 91.37, 91.33,
                     91.17, 91.45, 91.23, 92.04, 92.14, 92.58, 92.26, 91.53, 90.96]
