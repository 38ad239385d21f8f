"""The README's figure: radiographs rendered from the example CT at three patient rotations, clavicles outlined.

Run from the repository root: ``python book/figures/make_readme_figure.py`` (about a minute on a CPU);
it rewrites ``book/figures/rotated_radiographs.png``.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from xrlib.anatomy.annotate import annotate  # noqa: E402
from xrlib.core.ct import load_example  # noqa: E402
from xrlib.drr.geometry import Geometry, Pose  # noqa: E402
from xrlib.drr.render import render_batch  # noqa: E402
from xrlib.plots.radiographs import radiograph_grid  # noqa: E402

OUT = Path(__file__).with_name("rotated_radiographs.png")


def main() -> None:
    ct, labels = load_example()
    clavicles = annotate(ct, method="labels", labels=labels)
    geometry = Geometry().resized(256)
    radiographs = render_batch(ct, clavicles, geometry, [Pose(alpha=a) for a in (-20.0, 0.0, 20.0)],
                               physics="realistic")
    fig = radiograph_grid(radiographs, geometry, ncols=3)
    fig.savefig(OUT, dpi=80, bbox_inches="tight")
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
