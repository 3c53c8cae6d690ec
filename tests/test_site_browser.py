"""The published leaderboard's site in a real browser (headless Chromium, Debian's `chromium`, installed by
`make setup`): the mini suite's table has a row for every method on each protocol, sorts by a column and filters
by family. A screenshot is saved (kept under $CLIPBENCH_SCREENSHOT_DIR when that is set)."""

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from clipbench.leaderboard import write
from clipbench.methods.base import METHODS

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make setup installs Debian's chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
         "--virtual-time-budget=5000"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """`clipbench leaderboard` on a copy of results/published (its runs; the site is written with the markdown)."""
    results = tmp_path_factory.mktemp("published")
    shutil.copytree(ROOT / "results" / "published" / "runs", results / "runs")
    out = results / "leaderboards"
    write(results, out)
    return out


def rendered(page: Path, fragment: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, as Chromium renders it."""
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri() + fragment],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def visible_rows(dom: str):
    """(attributes, cells) of every body row the page shows (hidden rows carry the `hidden` attribute)."""
    body = dom.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr ([^>]*)>(.*?)</tr>", body, re.S)
    return [(attrs, re.findall(r"<td([^>]*)>(.*?)</td>", cells, re.S)) for attrs, cells in rows if "hidden" not in attrs]


def method_of(cells) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", cells[1][1])).split(" [")[0].strip()


def test_the_mini_table_in_chromium_has_every_method_sorts_and_filters(site, tmp_path):
    profile = tmp_path / "profile"
    index = rendered(site / "index.html", "", profile)
    assert 'href="mini.html"' in index  # the index links the suite's page
    protocols = sorted({m for m in re.findall(r'href="mini\.html#protocol=([^"]+)"', index)})
    assert protocols == ["mini_fashion_mst", "mini_fashion_ost"]

    everything = rendered(site / "mini.html", "", profile)
    rows = visible_rows(everything)
    registered = set(METHODS.names())
    for protocol in protocols:  # a row (a run's, or n/a with its reason) for every method of the suite
        shown = {method_of(cells) for attrs, cells in rows if f'data-protocol="{protocol}"' in attrs}
        assert shown == registered, (protocol, registered ^ shown)
    assert re.search(r'<p id="shown">(\d+) of \1 rows shown</p>', everything)

    # sort by `avg`, highest first, within one protocol (filter by protocol through the URL's fragment)
    heads = re.findall(r'<th [^>]*data-col="([^"]+)"', everything)
    avg = heads.index("avg")
    dom = rendered(site / "mini.html", "#protocol=mini_fashion_mst&sort=avg&dir=desc", profile)
    sorted_rows = [(a, c) for a, c in visible_rows(dom) if 'data-kind="reproduced"' in a]
    values = [float(re.search(r'data-v="([^"]+)"', c[avg][0]).group(1)) for _, c in sorted_rows]
    assert len(values) >= 30 and values == sorted(values, reverse=True)
    unsorted = [float(re.search(r'data-v="([^"]+)"', c[avg][0]).group(1)) for a, c in rows
                if 'data-protocol="mini_fashion_mst"' in a and 'data-kind="reproduced"' in a]
    assert unsorted != values and sorted(unsorted, reverse=True) == values  # the order changed, the rows did not
    assert all('data-protocol="mini_fashion_mst"' in a for a, _ in visible_rows(dom))
    assert re.search(r'<th [^>]*class="desc"[^>]*data-col="avg"|<th [^>]*data-col="avg"[^>]*class="desc"', dom)

    # filter by family: only that family's rows stay
    dom = rendered(site / "mini.html", "#family=replay", profile)
    kept = visible_rows(dom)
    assert kept and all('data-family="replay"' in a for a, _ in kept)
    assert {method_of(c) for _, c in kept} == {"er", "agem", "icarl", "icarl_zscl"}

    shot = tmp_path / "mini.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1600,1000",
                    f"--screenshot={shot}", (site / "mini.html").as_uri() + "#protocol=mini_fashion_mst&sort=avg&dir=desc"],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("CLIPBENCH_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["CLIPBENCH_SCREENSHOT_DIR"]) / "mini.png")
