"""The α groups of the rotation study (Fok et al. 2024): names, intervals, display order, assignment."""

from __future__ import annotations

import math

__all__ = ["ALPHA_GROUPS", "GROUP_ORDER", "alpha_group"]

#: α groups of the paper (degrees, closed intervals on the 2° grid), in display order.
ALPHA_GROUPS: dict[str, tuple[float, float]] = {
    "Moderate-": (-20.0, -12.0),
    "Low-": (-10.0, -4.0),
    "Center": (-2.0, 2.0),
    "Low+": (4.0, 10.0),
    "Moderate+": (12.0, 20.0),
}
GROUP_ORDER: list[str] = list(ALPHA_GROUPS)

#: |α| limits of the extended groups: midpoints between neighbouring groups, and the outer limit.
_CENTER_MAX = 3.0
_LOW_MAX = 11.0
_ALPHA_MAX = 21.0


def alpha_group(alpha: float) -> str:
    """Name of the α group of a rotation angle (degrees).

    The paper's groups are closed intervals on the 2° grid; between them lie gaps of 2°
    ((−12, −10), (−4, −2), (2, 4), (10, 12)). Off-grid angles (surrogate jitter such as −0.33°,
    or odd angles such as −11°) are assigned by extending each group to the midpoints of those
    gaps, the midpoint itself belonging to the group *nearer to Center*:

    * ``|α| ≤ 3``       → ``Center``
    * ``3 < |α| ≤ 11``  → ``Low-`` / ``Low+`` (sign of α)
    * ``11 < |α| ≤ 21`` → ``Moderate-`` / ``Moderate+``

    Angles with ``|α| > 21`` (or non-finite) raise :class:`ValueError`.
    """
    a = float(alpha)
    if not math.isfinite(a) or abs(a) > _ALPHA_MAX:
        raise ValueError(f"alpha={alpha!r}° is outside the evaluated range [-21, 21]°")
    m = abs(a)
    if m <= _CENTER_MAX:
        return "Center"
    sign = "-" if a < 0 else "+"
    return ("Low" if m <= _LOW_MAX else "Moderate") + sign
