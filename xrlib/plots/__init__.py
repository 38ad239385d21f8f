"""The book's figures, by topic; every function returns a Figure with labelled axes and units.

:mod:`~xrlib.plots.volumes` (CT views), :mod:`~xrlib.plots.radiographs` (geometry and radiographs),
:mod:`~xrlib.plots.results` (training and evaluation). Notebooks use ``from xrlib import plots`` and
call ``plots.<name>``.
"""

import matplotlib.pyplot as plt

from xrlib.plots.radiographs import (detector_extent, geometry_diagram, image_grid, preprocessing_pair,
                                     radiograph_grid, show_radiograph, spectrum_plot)
from xrlib.plots.card import card_heatmap, card_ranking, curve_heatmap
from xrlib.plots.pose import pose_landscape, worst_case_dice, worst_pose_view
from xrlib.plots.results import (MODEL_COLORS, bar_timings, contour_overlays, dice_vs_alpha_plot, group_boxplots,
                                 learning_curves)
from xrlib.plots.volumes import LEFT_COLOR, RIGHT_COLOR, as_lps, clavicle_mips, cohort_montage, coronal, ct_orthoslices, hu_histogram

__all__ = ["LEFT_COLOR", "MODEL_COLORS", "RIGHT_COLOR", "plt", "as_lps", "bar_timings", "card_heatmap", "card_ranking", "curve_heatmap", "clavicle_mips", "cohort_montage", "contour_overlays", "coronal",
           "ct_orthoslices", "detector_extent", "dice_vs_alpha_plot", "geometry_diagram", "group_boxplots",
           "hu_histogram", "image_grid", "learning_curves", "pose_landscape", "preprocessing_pair", "radiograph_grid",
           "show_radiograph", "spectrum_plot", "worst_case_dice", "worst_pose_view"]
