"""Headless Chromium for the book's tests: find it, run it, and measure a page's horizontal overflow.

Chromium is required where these are used (``.ci/run`` installs it); without it a test fails saying how to
install it, unless ``XRLIB_NO_BROWSER=1`` is set (then it is skipped).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]

#: A page that loads another page of the same site in a frame of the given width and reports, as JSON in
#: its ``<pre id="out">``, every table wider than the box it sits in or reaching past the article's right edge.
_MEASURE = """<!DOCTYPE html><html><body><pre id="out">pending</pre>
<iframe id="f" src="PAGE" style="width:WIDTHpx;height:900px;border:0"></iframe>
<script>
document.getElementById("f").onload = function () {
  var d = this.contentDocument, art = d.querySelector("article") || d.body;
  var edge = art.getBoundingClientRect().right, wide = [];
  d.querySelectorAll("article table").forEach(function (t, i) {
    var box = t.parentElement, r = t.getBoundingClientRect();
    if (box.scrollWidth > box.clientWidth + 1 || r.right > edge + 1) {
      wide.push({table: i, width: Math.round(r.width), box: box.clientWidth, right: Math.round(r.right),
                 article_right: Math.round(edge)});
    }
  });
  document.getElementById("out").textContent = JSON.stringify({
    tables: d.querySelectorAll("article table").length, wide: wide,
    page: [d.documentElement.scrollWidth, d.documentElement.clientWidth]});
};
</script></body></html>"""


def chromium() -> str:
    """The Chromium executable (fails, or skips under ``XRLIB_NO_BROWSER=1``, when there is none)."""
    if os.environ.get("XRLIB_NO_BROWSER") == "1":
        pytest.skip("XRLIB_NO_BROWSER=1: the browser checks of the HTML book are switched off")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.fail("headless Chromium is required to check the HTML book: install it with "
                    "'apt-get install -y chromium' (.ci/run does this), or set XRLIB_NO_BROWSER=1 to skip")
    return exe


def run_chromium(exe: str, profile_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", *args],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120, check=False)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """Serve ``folder`` on a free local port; yields its base URL (ending in ``/``)."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def table_overflow(exe: str, html: Path, base_url: str, page: str, profile_dir: Path, width: int = 1400) -> dict:
    """Open ``page`` of the served book folder ``html`` in a ``width``-pixel frame; returns ``{"tables": n,
    "wide": [...], "page": [scrollWidth, clientWidth]}`` (``wide``: the tables that overflow)."""
    probe = html / "_xrlib_measure.html"
    probe.write_text(_MEASURE.replace("PAGE", page).replace("WIDTH", str(width)), encoding="utf-8")
    try:
        res = run_chromium(exe, profile_dir, "--virtual-time-budget=15000", f"--window-size={width + 20},1000",
                           "--dump-dom", base_url + probe.name)
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r'<pre id="out">(.*?)</pre>', res.stdout, re.DOTALL)
    assert found and found.group(1) != "pending", f"Chromium did not measure {page}: {res.stderr[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
