"""Benchmark result files (``xrlib.publish.performance``) and the Performance page made from them."""

from __future__ import annotations

import json

import pytest

from xrlib.publish.errors import BookError
from xrlib.publish.performance import RESULTS_ENV, load_result, performance_markdown, results_dir, write_result

MACHINE = {"device": "cpu (2 cores, x86_64)"}


def test_written_result_has_the_schema_and_renders_as_a_table(tmp_path):
    path = write_result("projectors", "Projector backends", ["detector", "backend", "ms"],
                        [["32²", "rtk", "1.5"], ["32²", "torch | fused", None]], ["one note"], benchmark="bench_projectors",
                        folder=tmp_path, machine=MACHINE)
    assert path == tmp_path / "projectors.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    assert set(record) == {"benchmark", "title", "command", "date", "machine", "columns", "rows", "notes"}
    assert record["benchmark"] == "bench_projectors" and record["machine"] == MACHINE
    assert record["rows"] == [["32²", "rtk", "1.5"], ["32²", "torch | fused", None]]
    assert load_result(path) == record
    page = performance_markdown(tmp_path)
    assert "### Projector backends" in page and "| detector | backend | ms |" in page
    assert "| 32² | torch \\| fused | – |" in page  # a pipe in a cell is escaped, a missing value shown as –
    assert "- one note" in page and "cpu (2 cores, x86_64)" in page and "`projectors.json`" in page
    assert record["command"] in page


def test_results_are_ordered_by_benchmark_then_file(tmp_path):
    write_result("b-table", "Second", ["x"], [[1]], benchmark="bench_b", folder=tmp_path, machine=MACHINE)
    write_result("a-table", "Third", ["x"], [[1]], benchmark="bench_c", folder=tmp_path, machine=MACHINE)
    write_result("z-table", "First", ["x"], [[1]], benchmark="bench_a", folder=tmp_path, machine=MACHINE)
    page = performance_markdown(tmp_path)
    assert page.index("### First") < page.index("### Second") < page.index("### Third")


def test_no_results_says_how_to_make_them(tmp_path):
    for folder in (tmp_path, tmp_path / "missing"):
        assert performance_markdown(folder).startswith("No benchmark results yet: run `make bench`")


def test_results_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))
    assert results_dir() == tmp_path
    monkeypatch.delenv(RESULTS_ENV)
    assert results_dir().parts[-2:] == ("benchmarks", "results")


def test_bad_rows_are_refused_when_written(tmp_path):
    with pytest.raises(ValueError, match=r"result t: row 2 has 1 cells for 2 columns"):
        write_result("t", "T", ["a", "b"], [[1, 2], [3]], folder=tmp_path, machine=MACHINE)
    with pytest.raises(ValueError, match=r"result name 'a/b'"):
        write_result("a/b", "T", ["a"], [[1]], folder=tmp_path, machine=MACHINE)
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("columns"), "key 'columns' missing or not a list"),
    (lambda r: r.update(date="yesterday"), "'date' 'yesterday' is not an ISO 8601 date"),
    (lambda r: r["rows"].append([1]), "row 2 does not have one cell per column"),
    (lambda r: r.update(machine="cpu"), "key 'machine' missing or not a dict"),
])
def test_a_damaged_result_file_fails_the_page_naming_the_file(tmp_path, change, message):
    path = write_result("t", "T", ["a", "b"], [[1, 2]], folder=tmp_path, machine=MACHINE)
    record = json.loads(path.read_text(encoding="utf-8"))
    change(record)
    path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(BookError, match=rf"book: .*t\.json: {message}"):
        performance_markdown(tmp_path)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(BookError, match=r"t\.json: not a readable benchmark result"):
        performance_markdown(tmp_path)
