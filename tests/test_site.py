"""The leaderboard's static site: escaped, linked, one row per entry, and the reproduce command is exact."""

import html
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from test_leaderboard import record, write_records

from clipbench.leaderboard import write
from clipbench.leaderboard.site import _argv_settings, family_of


def test_the_site_escapes_every_name_and_links_every_row(tmp_path):
    results = tmp_path / "results"
    recs = [record("alpha", s, 0.8, 0.5) for s in range(2)] + [record("evil<script>alert(1)</script>&\"'", 0, 0.5, 0.4)]
    write_records(results, recs)
    out = tmp_path / "lb"
    files = {str(p.relative_to(out)) for p in write(results, out)}
    assert {"index.html", "demo.html", "site.css", "site.js"} <= files
    page = (out / "demo.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#x27;" in page
    assert all("<script" not in (out / f).read_text() or (out / f).read_text().count("<script") == 1
               for f in files if f.endswith(".html"))  # the one shared site.js, nothing from a record
    # every relative link and picture of every page exists in the folder (works from the file system)
    for f in (p for p in files if p.endswith(".html")):
        for target in re.findall(r'(?:href|src)="([^"#]+)', (out / f).read_text()):
            assert (out / f).parent.joinpath(target.replace("&amp;", "&")).resolve().is_file(), (f, target)
    rows = re.findall(r'<tr [^>]*data-kind="reproduced"', page)
    assert len(rows) == 2  # alpha (2 seeds: one row) and the crafted name
    assert not re.search(r"https?://", page + (out / "site.js").read_text() + (out / "site.css").read_text())


def test_the_reproduce_command_plans_the_very_run(tmp_path):
    """The command a row shows, run with --dry-run --json, plans a run with the record's own id."""
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "clipbench.cli", "run", "--suite", "tiny", "--method", "finetune", "--protocol",
           "tiny_shapes", "--results", str(results), "--quiet", "--threads", "1", "--set", "train.lr=0.05",
           "protocols.tiny_shapes.train_per_class=4", "protocols.tiny_shapes.test_per_class=2"]
    subprocess.run(cmd, check=True, capture_output=True)
    write(results, tmp_path / "lb")
    record_id = json.loads(next(results.glob("runs/**/run.json")).read_text())["id"]
    page = next((tmp_path / "lb").glob("tiny/tiny_shapes/*.html")).read_text()
    command = html.unescape(re.search(r"<pre><code>(.*?)</code></pre>", page).group(1))
    assert "--set train.lr=0.05" in command and "--results" not in command and "--quiet" not in command
    assert "--threads 1" in command  # the recorded torch threads (the CPU): a few methods' last digits follow them
    shown = shlex.split(command.split(" && ")[-1])
    assert shown[:2] == ["clipbench", "run"]
    planned = subprocess.run([sys.executable, "-m", "clipbench.cli", *shown[1:], "--dry-run", "--json",
                              "--results", str(results)], check=True, capture_output=True, text=True).stdout
    assert [json.loads(line)["id"] for line in planned.splitlines()] == [record_id]


def test_the_recorded_command_keeps_what_chose_the_numbers_only():
    argv = ["clipbench", "run", "--all", "--suite", "mini", "--results", "r", "--quiet", "--threads", "1",
            "--set", "train.lr=0.1", "model.pretrained=x", "--config", "c.yaml", "--seeds", "0", "1"]
    assert _argv_settings(argv) == ["--set", "train.lr=0.1", "model.pretrained=x", "--config", "c.yaml"]
    assert family_of("zscl") == "distillation" and family_of("no_such_method") == "other"
