"""xrlib: synthetic chest radiographs from CT, and the robustness of X-ray clavicle segmentation.

Modules: :mod:`~xrlib.ct` (CT input), :mod:`~xrlib.annotate` (clavicle masks),
:mod:`~xrlib.geometry` (frames, pose, pixel-to-ray mapping), :mod:`~xrlib.projector` (rtk / torch /
diffdrr backends), :mod:`~xrlib.physics` (naive / heuristic / realistic), :mod:`~xrlib.render`
(radiograph + masks), :mod:`~xrlib.cli` (``xrlib`` command).
"""

__version__ = "0.1.0"
