"""xrlib: synthetic chest radiographs from CT, and the robustness of X-ray clavicle segmentation.

Modules: :mod:`~xrlib.core.ct` (CT input), :mod:`~xrlib.anatomy.annotate` (clavicle masks),
:mod:`~xrlib.drr.geometry` (frames, pose, pixel-to-ray mapping), :mod:`~xrlib.drr.projector` (rtk / torch /
diffdrr backends), :mod:`~xrlib.drr.physics` (naive / heuristic / realistic), :mod:`~xrlib.drr.render`
(radiograph + masks), :mod:`~xrlib.cli` (``xrlib`` command).
"""

__version__ = "0.1.0"

from xrlib.core.machine import apply_portability as _apply_portability

_apply_portability()  # XRLIB_PORTABLE=1: pin the instruction sets before torch or numpy load (xrlib.core.machine)
