"""The package's layers (the book's Architecture page, "Layers"): every import points to the same or a lower layer."""

from __future__ import annotations

import ast
import re
import sys
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


def _module_graph() -> dict[str, set[str]]:
    """Module → the xrlib modules it imports (lazy imports inside functions included; an imported name
    counts as the most specific module that exists, e.g. ``xrlib.exec.base.Task`` → ``xrlib.exec.base``)."""
    names = {name for _, name in _modules()}

    def module_of(target: str) -> str:
        while target not in names:
            target = target.rpartition(".")[0]
        return target

    graph = {}
    for path, name in _modules():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # the names, not the bare module: ``from xrlib.drr import physics`` needs drr/physics.py
                # (a package's __init__ runs before any of its modules, which is not a dependency of theirs)
                targets |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {module_of(t) for t in targets if t.startswith("xrlib.")} - {name, "xrlib"}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on_stack.discard(comp[-1])
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_constructed_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    """Not even through lazy imports: a module that needs another's code imports it, never the reverse too
    (the executor contract sits in ``exec.base`` below ``exec.local`` and ``exec.ray``)."""
    assert _cycles(_module_graph()) == []


def _architecture_rows() -> dict[str, str]:
    """``{layer: its row}`` of the layer table of ``book/architecture.md``."""
    text = (PKG.parent / "book" / "architecture.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[1].startswith("`") and cells[1].endswith("/`"):
            rows[cells[1].strip("`/")] = cells[2]
    return rows


def test_the_architecture_page_names_every_module_in_its_layer():
    """The book's layer table is typed prose: it must name every module of the package (a new module without
    a line there fails here), and name no module that does not exist."""
    rows = _architecture_rows()
    assert set(rows) == set(LAYERS) - {"cli"}
    missing, stale = [], []
    for layer, row in rows.items():
        folder = PKG / layer
        names = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
        if layer == "studies":  # chapter folders: `pgd/` (`settings`, …)
            names = {f"{d.name}/" for d in folder.iterdir() if (d / "__init__.py").is_file()} | names
            names |= {p.stem for d in folder.iterdir() if d.is_dir() for p in d.glob("*.py") if p.stem != "__init__"}
        named = set(re.findall(r"`([\w/]+)`", row))
        missing += [f"{layer}: {n}" for n in sorted(names - named)]
        stale += [f"{layer}: {n}" for n in sorted(named - names) if layer != "studies"]
    assert not missing, f"modules missing from book/architecture.md: {missing}"
    assert not stale, f"book/architecture.md names modules that do not exist: {stale}"


def test_the_architecture_check_fails_on_a_module_it_does_not_name(tmp_path, monkeypatch):
    fake = tmp_path / "xrlib"
    (fake / "core").mkdir(parents=True)
    (tmp_path / "book").mkdir()
    for layer in set(LAYERS) - {"cli"}:
        (fake / layer).mkdir(exist_ok=True)
    (fake / "core" / "brand_new.py").write_text("")
    rows = "\n".join(f"| `{layer}/` | `x` | y |" for layer in sorted(set(LAYERS) - {"cli"}))
    (tmp_path / "book" / "architecture.md").write_text(rows + "\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    with pytest.raises(AssertionError, match="core: brand_new"):
        test_the_architecture_page_names_every_module_in_its_layer()
