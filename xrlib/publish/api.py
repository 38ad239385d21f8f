"""The book's API reference: one page per layer of ``xrlib``, written at build time from the package itself.

Every public module (no ``_`` in its dotted name, not ``__main__``) gets a section with Sphinx autodoc's
``automodule`` (the module's docstring and its members: those of ``__all__`` where it is defined,
otherwise the public ones defined in it), so a new module appears in the reference without editing
the book. The pages are written to ``book/api/`` (not committed); ``_toc.yml`` lists them in
:data:`LAYERS` order. Broken cross-references to ``xrlib`` targets fail the build (``nitpicky`` in
``book/_config.yml``; see :func:`xrlib_reference_warnings`).
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

from xrlib.core.atomic import write_text_atomic

#: The layers of ``xrlib`` from the bottom up (a module imports only from its own layer and those before
#: it; ``tests/test_layers.py`` checks this).
LAYERS = ("core", "exec", "drr", "anatomy", "data", "nets", "training", "eval", "attacks", "studies", "publish",
          "plots")
#: The package's source folder (modules are found and summarised from their files, never imported here).
_PACKAGE_DIR = Path(__file__).resolve().parent.parent
#: The folder of the generated pages, relative to the book.
API_DIR = "api"

_REF_WARNING = re.compile(r"WARNING: py:\w+ reference target not found: (~?xrlib(?:\.[\w.]+)?)(?!\w)")


def layer_modules(layer: str) -> list[str]:
    """The public modules of ``xrlib.<layer>`` (the package first, then its modules and subpackages in name order)."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}: one of {', '.join(LAYERS)}")
    names = []
    for path in (_PACKAGE_DIR / layer).rglob("*.py"):
        parts = path.relative_to(_PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) > 2 and not any(p.startswith("_") for p in parts):
            names.append(".".join(parts))
    return [f"xrlib.{layer}", *sorted(names)]


def _summary(layer: str) -> str:
    """The first paragraph of the layer package's docstring (read from its file)."""
    doc = ast.get_docstring(ast.parse((_PACKAGE_DIR / layer / "__init__.py").read_text(encoding="utf-8"))) or ""
    return doc.split("\n\n")[0].replace("\n", " ").replace("|", "\\|")


def layer_page(layer: str) -> str:
    """The Markdown (MyST) page of one layer: the package's docstring, then every module with its members."""
    pkg, *modules = layer_modules(layer)
    # the package: its docstring and what it defines itself (its re-exports are documented where they live)
    lines = [f"# `{pkg}`", "", "```{eval-rst}", f".. automodule:: {pkg}", "   :members:", "   :ignore-module-all:", "```", ""]
    for mod in modules:  # autodoc writes reStructuredText: MyST runs it inside eval-rst
        lines += [f"## `{mod}`", "", "```{eval-rst}", f".. automodule:: {mod}", "   :members:", "```", ""]
    return "\n".join(lines)


def index_page(layers: tuple[str, ...] = LAYERS) -> str:
    """The reference's first page: what it covers and one line per layer."""
    rows = "\n".join(f"| [`xrlib.{layer}`]({layer}.md) | {_summary(layer)} |" for layer in layers)
    return f"""# API reference

`xrlib` is the library the chapters call; the command line (`xrlib render`, `xrlib dataset`,
`xrlib robustness`, `xrlib book`) is a thin layer over it (`xrlib.cli`). Its modules are grouped in
layers, listed here from the bottom up: a module imports only from its own layer and the layers above
it in this table (a test checks this; the [Architecture](../architecture.md) page says why). Each page is generated from the installed code when the book
is built: module docstrings first, then the public functions and classes with their docstrings
(units and conventions are stated there).

| layer | what it holds |
|---|---|
{rows}

## `xrlib.cli`

```{{eval-rst}}
.. automodule:: xrlib.cli
```
"""


def write_api_pages(book_dir: str | Path, layers: tuple[str, ...] = LAYERS) -> list[Path]:
    """Write ``<book_dir>/api/index.md`` and one page per layer (replacing the folder); returns their paths.

    ``layers``: all of :data:`LAYERS` for the book; fewer for a quick test build.
    """
    out = Path(book_dir) / API_DIR
    shutil.rmtree(out, ignore_errors=True)
    paths = [out / "index.md", *(out / f"{layer}.md" for layer in layers)]
    write_text_atomic(paths[0], index_page(layers))
    for layer, path in zip(layers, paths[1:]):
        write_text_atomic(path, layer_page(layer))
    return paths


def xrlib_reference_warnings(log: str) -> list[str]:
    """The ``xrlib`` targets of the "reference target not found" warnings in a Sphinx log, in order, once each.

    References to other packages (numpy, torch, ...) are not checked (there is no intersphinx without
    network), so only these make a reference broken.
    """
    seen: dict[str, None] = {}
    for m in _REF_WARNING.finditer(log):
        seen.setdefault(m.group(1).lstrip("~"), None)
    return list(seen)
