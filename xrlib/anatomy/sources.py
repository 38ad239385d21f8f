"""Source CTs of a virtual cohort: CT + label-map pairs found in a folder, and their names checked."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from xrlib.core.ct import Volume, load_ct, load_labels
from xrlib.core.errors import InputError

_CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def validate_sources(sources) -> None:
    """Check that the names of ``(name, ct, labels)`` sources are unique and safe as folder names."""
    names = [s[0] for s in sources]
    for name in names:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InputError("sources", f"source name {name!r} must be letters, digits, '.', '_' or '-' (used in folder names)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError("sources", f"duplicate source names {dup}")


def _split_suffix(path: Path) -> tuple[str, str] | None:
    name = path.name
    for suf in _CT_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)], name[-len(suf) :]
    return None


def sources_from_folder(folder: str | Path) -> list[tuple[str, Volume, Volume]]:
    """Source CTs with label maps from a folder, as ``(name, ct, labels)`` sorted by name.

    Every ``*.nii.gz``, ``*.nii``, ``*.nrrd`` or ``*.mha`` file directly in ``folder`` is a CT
    (name = file name without extension), except files named ``<stem>_labels.<ext>``. Its label
    map is ``<stem>_labels.<ext>`` next to it (any of the extensions; the CT's own first) or
    ``labels/<same file name>``. CTs and labels are validated by :func:`xrlib.core.ct.load_ct` and
    :func:`xrlib.core.ct.load_labels`, which raise :class:`InputError` naming the file. A CT without a
    label map is an :class:`InputError` (make one with the annotation stage first).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "no such directory")
    found = []
    for path in sorted(folder.iterdir()):
        split = _split_suffix(path)
        if not path.is_file() or split is None or split[0].endswith("_labels") or path.name.startswith("."):
            continue
        found.append((split[0], split[1], path))
    if not found:
        raise InputError(folder, "no CT volumes (.nii, .nii.gz, .nrrd, .mha) found")
    out = []
    for stem, suffix, path in found:
        candidates = [folder / f"{stem}_labels{suffix}"]
        candidates += [folder / f"{stem}_labels{s}" for s in _CT_SUFFIXES if s != suffix]
        candidates.append(folder / "labels" / path.name)
        lab_path = next((c for c in candidates if c.is_file()), None)
        if lab_path is None:
            raise InputError(
                path,
                f"no label map found (looked for {stem}_labels{suffix} and labels/{path.name}); "
                "create one with the annotation stage first",
            )
        ct = load_ct(path)
        out.append((stem, ct, load_labels(lab_path, ct)))
    validate_sources(out)
    return out


def shrink_source(ct: Volume, labels: Volume, factors) -> tuple[Volume, Volume]:
    """A source CT and its label map on a grid coarser by integer ``factors`` along (i, j, k).

    The CT is averaged over ``f_i × f_j × f_k`` blocks of voxels (:func:`SimpleITK.BinShrink`, so a
    thin bone is blurred, not lost between samples); the label map is sampled with nearest
    neighbour at the centres of the same blocks, so both stay on one grid. Factors ``(1, 1, 1)``
    return the inputs. A size for cheap cohorts (e.g. the smoke profile of a study that builds
    several), not a change of anatomy; the grid keeps its physical extent (up to one block).
    """
    import SimpleITK as sitk

    f = tuple(factors) if not isinstance(factors, (str, bytes)) else ()
    if len(f) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in f):
        raise InputError("shrink factors", f"must be 3 integers ≥ 1 (i, j, k), got {factors!r}")
    f = tuple(int(v) for v in f)
    if f == (1, 1, 1):
        return ct, labels
    if not ct.same_grid(labels):
        raise InputError(labels.source, f"label map is on a different grid than the CT {ct.source}")
    small = sitk.BinShrink(sitk.Cast(ct.to_sitk(), sitk.sitkFloat32), f)
    lab = labels.to_sitk()
    lab_small = sitk.Resample(lab, small, sitk.Transform(), sitk.sitkNearestNeighbor, 0, lab.GetPixelID())
    tag = f" [shrunk {f[0]}×{f[1]}×{f[2]}]"
    return Volume.from_sitk(small, ct.source + tag), Volume.from_sitk(lab_small, labels.source + tag)
