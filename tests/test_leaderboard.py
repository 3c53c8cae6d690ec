"""Leaderboards from hand-written records: golden files, the comparability guard, escaping, --check."""

import json
from pathlib import Path

import pytest
from PIL import Image

from clipbench.leaderboard import escape, write
from clipbench.store import atomic_write_json
from helpers import run_cli

GOLDEN = Path(__file__).parent / "golden"


def record(method, seed, last, zs, method_version=1, model="tiny-model", suite="demo", protocol="proto"):
    matrix = [[0.5, 0.5], [0.9, 0.4], [last - 0.1, last + 0.1]]
    return {
        "schema_version": 1, "status": "complete", "id": f"{method}{seed}",
        "spec": {"suite": suite, "protocol": protocol, "method": method, "method_version": method_version,
                 "protocol_version": 1, "model": {"arch": model}, "seed": seed},
        "raw": {"acc_matrix": matrix, "test_sizes": [10, 10], "zeroshot": {"set": [0.6, 0.55, zs]}},
        "metrics": {"last": last, "zs_retention": zs / 0.6, "zs_drop": 100 * (0.6 - zs)},
        "metric_versions": {"last": 1, "zs_retention": 1, "zs_drop": 1},
        "costs": {"trainable_params": 1000, "extra_memory_mb": 2.0, "peak_rss_mb": 500.0, "wall_seconds": 36.0},
        "provenance": {"git_commit": "abcdef1234567", "git_dirty": False, "versions": {"clipbench": "0.1.0", "torch": "2.14.1"},
                       "device": "cpu", "device_name": "x86_64", "started": f"2026-01-0{seed + 1}T00:00:00+00:00",
                       "ended": f"2026-01-0{seed + 1}T00:01:00+00:00"},
    }


def write_records(results: Path, recs):
    for k, rec in enumerate(recs):
        atomic_write_json(results / "runs" / "p" / rec["spec"]["method"] / f"r{k}" / "run.json", rec)


@pytest.fixture
def demo(tmp_path):
    results = tmp_path / "results"
    recs = [record("alpha", s, 0.80 + 0.02 * s, 0.50 + 0.01 * s) for s in range(3)]
    recs += [record("beta", s, 0.70 + 0.01 * s, 0.58) for s in range(3)]
    # a method whose seeds ran on two versions of its code: its cells must not be averaged
    recs += [record("gamma", 0, 0.9, 0.3, method_version=1), record("gamma", 1, 0.91, 0.31, method_version=2)]
    # a crafted name that would break a table or inject markup
    recs += [record("evil|name`<b>*x*", 0, 0.5, 0.4)]
    write_records(results, recs)
    return results


def test_main_table_matches_golden(demo, tmp_path):
    out = tmp_path / "lb"
    write(demo, out)
    text = (out / "demo.md").read_text()
    golden = GOLDEN / "demo.md"
    if not golden.exists():  # first run writes it; review it, then commit
        golden.write_text(text)
    assert text == golden.read_text()


def test_guard_best_and_escaping(demo, tmp_path):
    out = tmp_path / "lb"
    write(demo, out)
    text = (out / "demo.md").read_text()
    gamma = next(line for line in text.splitlines() if line.startswith("| gamma"))
    assert "| -[^1]" in gamma and "different versions" in text
    alpha = next(line for line in text.splitlines() if line.startswith("| alpha"))
    assert "**0.820 ± 0.020**" in alpha  # best `last`, mean ± std over 3 seeds
    beta = next(line for line in text.splitlines() if line.startswith("| beta"))
    assert "**0.967 ± 0.000**" in beta  # best retention
    assert r"evil\|name\`\<b\>\*x\*" in text and "<b>" not in text
    # every table row has the same number of unescaped cell separators as the header
    rows = [l for l in text.splitlines() if l.startswith("|")]
    count = lambda l: l.replace("\\|", "").count("|")  # noqa: E731
    assert len({count(l) for l in rows}) == 1


def test_tidy_json_and_csv(demo, tmp_path):
    out = tmp_path / "lb"
    write(demo, out)
    rows = json.loads((out / "leaderboard.json").read_text())
    assert {"suite", "method", "model", "metric", "mean", "std", "n_seeds"} <= set(rows[0])
    alpha_last = next(r for r in rows if r["method"] == "alpha" and r["metric"] == "last")
    assert alpha_last["n_seeds"] == 3 and alpha_last["mean"] == pytest.approx(0.82)
    gamma_last = next(r for r in rows if r["method"] == "gamma" and r["metric"] == "last")
    assert gamma_last["mean"] is None and gamma_last["comparable"] is False
    assert (out / "leaderboard.csv").read_text().splitlines()[0].startswith("suite,protocol,method,model,metric,mean")


def test_pictures_open_and_match_the_pages(demo, tmp_path):
    out = tmp_path / "lb"
    write(demo, out)
    page = (out / "demo" / "proto.md").read_text()
    pngs = sorted((out / "demo" / "proto").glob("*.png"))
    assert len(pngs) == 4  # one heatmap per method
    for png in pngs + [out / "demo" / "proto_curves.png"]:
        with Image.open(png) as img:
            assert img.format == "PNG" and img.size[0] > 100
    assert "](proto/alpha__tiny-model.png)" in page
    alpha = page.split("### alpha")[1]
    last_row = next(l for l in alpha.splitlines() if l.startswith("| 2 "))
    assert [c.strip() for c in last_row.strip("|").split("|")] == ["2", "0.720", "0.920"]  # mean of 0.82 -/+ 0.1


def test_check_passes_then_catches_a_stale_file(demo, tmp_path, capsys):
    out = tmp_path / "lb"
    assert run_cli("leaderboard", "--results", demo, "--out", out) == 0
    assert run_cli("leaderboard", "--results", demo, "--out", out, "--check") == 0
    # a new run makes the committed files stale
    write_records(demo / "extra", [])
    rec = record("beta", 3, 0.99, 0.58)
    atomic_write_json(demo / "runs" / "p" / "beta" / "new" / "run.json", rec)
    assert run_cli("leaderboard", "--results", demo, "--out", out, "--check") == 1
    assert "differs: demo.md" in capsys.readouterr().err


def test_reported_numbers_beside_ours(demo, tmp_path):
    (demo / "reported").mkdir()
    (demo / "reported" / "paper.yaml").write_text(
        "suite: demo\nprotocol: proto\nmodel: tiny-model\nsource: A. Author et al., Some Paper, 2099, Table 1\n"
        "scale: 100\nmetrics: [last]\nrows:\n  alpha: {last: 80.0}\n  beta: {last: 75.0}\n")
    out = tmp_path / "lb"
    write(demo, out)
    text = (out / "demo.md").read_text()
    assert "Reproduced beside reported" in text and "Some Paper" in text
    section = text.split("Reproduced beside reported")[1]
    alpha = next(l for l in section.splitlines() if l.startswith("| alpha"))
    assert [c.strip() for c in alpha.strip("|").split("|")] == ["alpha", "80.0", "82.0", "+2.0"]


def test_escape_neutralises_markup():
    assert escape("a|b") == "a\\|b" and escape("x\ny") == "x y" and escape("[l](u)") == "\\[l\\](u)"


def test_shipped_zscl_mtil_numbers_sit_beside_an_mtil_run(tmp_path):
    rec = record("zscl", 0, 0.8, 0.5, model="ViT-B-16", suite="mtil", protocol="mtil_order1")
    rec["metrics"].update(mtil_transfer=0.70, mtil_avg=0.75, mtil_last=0.80)
    rec["metric_versions"].update(mtil_transfer=1, mtil_avg=1, mtil_last=1)
    results, out = tmp_path / "results", tmp_path / "lb"
    write_records(results, [rec])
    write(results, out)  # no reported/ folder in these results: the file shipped with clipbench is used
    text = (out / "mtil.md").read_text()
    assert "Thunderbeee/ZSCL" in text and "mtil/results.ipynb" in text
    zscl = next(l for l in text.split("Reproduced beside reported")[1].splitlines() if l.startswith("| zscl"))
    assert [c.strip() for c in zscl.strip("|").split("|")] == [
        "zscl", "68.1", "70.0", "+1.9", "75.4", "75.0", "-0.4", "83.6", "80.0", "-3.6"]
    finetune = next(l for l in text.splitlines() if l.startswith("| finetune"))
    assert "44.6" in finetune and finetune.count("| -") >= 3  # reported, not run here: no figure of ours
