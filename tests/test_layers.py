"""The package's layers (README "Layout of xrlib"): every import points to the same or a lower layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "xrlib"
#: From the bottom up; a module may import from its own layer and those before it.
LAYERS = ["core", "exec", "drr", "anatomy", "data", "nets", "training", "eval", "attacks", "studies", "publish",
          "plots", "cli"]
#: Layers that must not be imported from a given layer although they sit below it.
FORBIDDEN = {"publish": {"data", "nets", "training", "eval", "attacks", "studies"}}
#: Words that only ``studies/`` (and the figures and publishing above it) may use in code.
STUDY_WORDS = ("U-Net(Real", "Moderate-", "Moderate+", "Fok")


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "xrlib" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield path, name


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return out


def test_every_subpackage_is_a_known_layer():
    subpackages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert subpackages <= set(LAYERS), sorted(subpackages - set(LAYERS))


@pytest.mark.parametrize("path,name", list(_modules()), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_imports_point_down(path, name):
    own = _layer(name)
    if own is None:
        return  # xrlib/__init__.py, __main__.py
    bad = []
    for target in _imports(path):
        layer = _layer(target)
        if layer is None:
            continue
        if LAYERS.index(layer) > LAYERS.index(own) or layer in FORBIDDEN.get(own, ()):
            bad.append(target)
    assert not bad, f"{name} ({own}) imports {sorted(set(bad))}"


def test_layers_below_studies_name_no_model_set_or_alpha_group():
    below = LAYERS[:LAYERS.index("studies")]
    hits = []
    for path, name in _modules():
        if _layer(name) in below:
            text = path.read_text(encoding="utf-8")
            hits += [f"{name}: {w}" for w in STUDY_WORDS if w in text]
    assert not hits, hits
