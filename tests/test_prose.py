"""The README, the book's pages and xrlib's code speak to readers, not to the project's tracker: no internal
issue numbers ("issue 11", "#30") and no commit hashes. The README's generated section is left out: it
records the commit of the build that wrote it, on purpose."""

from __future__ import annotations

import re
from pathlib import Path

from xrlib.publish.readme import README_BEGIN, README_END

REPO = Path(__file__).resolve().parent.parent

PATTERNS = {
    "internal issue number": re.compile(r"\b[Ii]ssues? \d+\b"),
    "issue reference": re.compile(r"(?<![\w/&])#\d+\b"),  # "#30", not "ray-project/ray#65983" or "&#8212;"
    "commit hash": re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b"),
}


def prose_problems(text: str, name: str = "text") -> list[str]:
    """``name:line: kind: match`` for every internal reference in ``text``."""
    out = []
    for i, line in enumerate(text.split("\n"), 1):
        for kind, pattern in PATTERNS.items():
            out += [f"{name}:{i}: {kind}: {m.group(0)}" for m in pattern.finditer(line)]
    return out


def _without_generated(text: str) -> str:
    i, j = text.find(README_BEGIN), text.find(README_END)
    return text if i < 0 or j < i else text[:i] + "\n" * text[i:j].count("\n") + text[j:]


def _files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "book").glob("*.md")), *sorted((REPO / "xrlib").rglob("*.py"))]


def test_constructed_internal_references_are_found():
    text = ("Fixed in issue 11 and issues 3.\nSee #30 for why.\nMeasured at e265cc7 (0e3e2956ab).\n"
            "Ray's bug ray-project/ray#65983, the year 2026, 1e-10, deadbeef and 1234567 are fine.")
    assert prose_problems(text) == ["text:1: internal issue number: issue 11", "text:1: internal issue number: issues 3",
                                    "text:2: issue reference: #30", "text:3: commit hash: e265cc7",
                                    "text:3: commit hash: 0e3e2956ab"]


def test_readme_generated_section_is_left_out_and_the_rest_is_scanned():
    text = f"intro, see issue 4\n{README_BEGIN}\n*built at commit 0e3e295*\n{README_END}\nafter #7\n"
    assert prose_problems(_without_generated(text)) == ["text:1: internal issue number: issue 4",
                                                        "text:5: issue reference: #7"]


def test_readme_book_and_code_have_no_internal_references():
    problems = []
    for path in _files():
        text = path.read_text(encoding="utf-8")
        if path.name == "README.md":
            text = _without_generated(text)
        problems += prose_problems(text, str(path.relative_to(REPO)))
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_page():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for heading in ("## Install and run", "## Chapters", "## Using your own CTs, radiographs and models", "## Limitations",
                    "## How to cite"):
        assert heading in text, heading
    for page in ("book/performance.md", "book/architecture.md", "book/running_at_scale.md"):
        assert f"]({page})" in text and (REPO / page).is_file(), page
    figure = re.search(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert figure and (REPO / figure.group(1)).is_file() and (REPO / figure.group(1)).stat().st_size < 200_000
