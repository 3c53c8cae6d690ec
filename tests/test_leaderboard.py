"""Leaderboards from hand-written records: golden file, like-for-like cells, bold by Welch's test, headline
metrics and mean rank, metrics recomputed from raw, reported rows beside the method they name, escaping,
corrupt records, --check."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import ttest_ind

from clipbench.errors import ClipbenchError
from clipbench.leaderboard import (BOLD_LEVEL, escape, load, load_reported, mean_ranks, not_worse, ranked_metrics,
                                   write)
from clipbench.store import atomic_write_json
from helpers import run_cli

GOLDEN = Path(__file__).parent / "golden"


def record(method, seed, last, zs, method_version=1, model="tiny-model", suite="demo", protocol="proto",
           train=None, weights="random-init", extras=None, exemplars=None):
    """A complete record whose raw results give `last` and a zero-shot set ending at `zs` (before: 0.6)."""
    matrix = [[0.5, 0.5], [0.9, 0.4], [last - 0.1, last + 0.1]]
    costs = {"trainable_params": 1000, "extra_memory_mb": 2.0, "peak_rss_mb": 500.0, "wall_seconds": 36.0}
    if extras is not None:
        costs["inference_extras"] = extras
    if exemplars is not None:  # records from before the column have none
        costs["exemplars"] = exemplars
    return {
        "schema_version": 1, "status": "complete", "id": f"{method}{seed}",
        "spec": {"suite": suite, "protocol": protocol, "method": method, "method_version": method_version,
                 "method_config": {"part": "whole"}, "protocol_version": 1, "protocol_params": {"n": 2},
                 "model": {"arch": model, "pretrained": None, "weights": weights}, "seed": seed,
                 "train": train or {"lr": 0.001, "epochs": 1}, "eval": {"batch_size": 8}, "precision": "fp32"},
        "raw": {"acc_matrix": matrix, "test_sizes": [10, 10], "zeroshot": {"set": [0.6, 0.55, zs]}},
        # what the record says it measured: the leaderboard recomputes from raw and never reads these
        "metrics": {"last": -1.0}, "metric_versions": {"last": 0},
        "costs": costs,
        "provenance": {"git_commit": "abcdef1234567", "git_dirty": False, "versions": {"clipbench": "0.1.0", "torch": "2.14.1"},
                       "device": "cpu", "device_name": "x86_64", "started": f"2026-01-0{seed + 1}T00:00:00+00:00",
                       "ended": f"2026-01-0{seed + 1}T00:01:00+00:00"},
    }


def write_records(results: Path, recs):
    for k, rec in enumerate(recs):
        atomic_write_json(results / "runs" / rec["spec"]["protocol"] / rec["spec"]["method"] / f"r{k}" / "run.json", rec)


def table_line(text: str, start: str) -> list:
    line = next(l for l in text.splitlines() if l.startswith(f"| {start}"))
    return [c.strip() for c in line.replace("\\|", "\x00").strip("|").split("|")]


@pytest.fixture
def demo(tmp_path):
    results = tmp_path / "results"
    recs = [record("alpha", s, 0.80 + 0.02 * s, 0.50 + 0.01 * s, extras="zero-shot CLIP", exemplars=200) for s in range(3)]
    recs += [record("beta", s, 0.70 + 0.01 * s, 0.58, extras="", exemplars=0) for s in range(3)]
    # a method whose seeds ran on two versions of its code: two rows, never one cell
    recs += [record("gamma", 0, 0.9, 0.3, method_version=1), record("gamma", 1, 0.91, 0.31, method_version=2)]
    # a crafted name that would break a table or inject markup or TeX
    recs += [record("evil|name`<b>*x*$\\frac{x$", 0, 0.5, 0.4)]
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


def test_unlike_runs_never_share_a_cell(tmp_path):
    """Runs that differ in a setting or in the weights are separate rows, labelled by what differs."""
    results = tmp_path / "results"
    recs = [record("ft", 0, 0.2, 0.5, train={"lr": 0.001, "epochs": 1}),
            record("ft", 0, 0.6, 0.5, train={"lr": 0.05, "epochs": 1}),
            record("ft", 1, 0.62, 0.5, train={"lr": 0.05, "epochs": 1}),
            record("ft", 1, 0.62, 0.5, train={"lr": 0.05, "epochs": 1}),  # the same run copied: one seed
            record("other", 0, 0.3, 0.5, weights="aaaaaaaaaaaaaaaaaaaa"),
            record("other", 0, 0.4, 0.5, weights="bbbbbbbbbbbbbbbbbbbb")]
    write_records(results, recs)
    entries = {e.name: e for e in load(results).entries}
    assert set(entries) == {"ft [train.lr=0.001]", "ft [train.lr=0.05]", "other [model.weights=aaaaaaaaaaaa…]",
                            "other [model.weights=bbbbbbbbbbbb…]"}
    assert [r["seed"] for r in entries["ft [train.lr=0.05]"].runs] == [0, 1]
    write(results, tmp_path / "lb")
    text = (tmp_path / "lb" / "demo.md").read_text()
    header = [c.strip() for c in next(l for l in text.splitlines() if l.startswith("| method")).strip("|").split("|")]
    line = table_line(text, "ft \\[train.lr=0.001\\]")
    assert (line[2], line[header.index("last")]) == ("1", "0.200")  # one seed, its own run only
    assert table_line(text, "ft \\[train.lr=0.05\\]")[header.index("last")] == "**0.610 ± 0.014**"
    rows = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    last = {(r["method"], r["variant"]): r for r in rows if r["metric"] == "last"}
    assert last[("ft", "train.lr=0.05")]["n_seeds"] == 2
    assert last[("ft", "train.lr=0.05")]["mean"] == pytest.approx(0.61)
    assert last[("ft", "train.lr=0.001")]["mean"] == pytest.approx(0.2)


def test_metrics_are_recomputed_from_raw(demo, tmp_path):
    write(demo, tmp_path / "lb")
    rows = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    alpha = {r["metric"]: r for r in rows if r["method"] == "alpha"}
    assert alpha["last"]["mean"] == pytest.approx(0.82)  # the records say -1.0
    assert alpha["zs_retention"]["mean"] == pytest.approx(0.51 / 0.6)  # not stored at all: a new metric appears
    assert alpha["bwt"]["mean"] == pytest.approx(np.mean([0.8 + 0.02 * s - 0.1 - 0.9 for s in range(3)]))


def test_bold_marks_every_method_not_significantly_worse(tmp_path):
    results = tmp_path / "results"
    # agem and vr_lwf as issue 13 measured them on OST: within noise of each other (Welch p = 0.35)
    agem, vr_lwf, worse = [0.814, 0.821, 0.828], [0.810, 0.816, 0.822], [0.70, 0.71, 0.72]
    recs = [record("agem", s, v, 0.5) for s, v in enumerate(agem)]
    recs += [record("vr_lwf", s, v, 0.5) for s, v in enumerate(vr_lwf)]
    recs += [record("worse", s, v, 0.5) for s, v in enumerate(worse)]
    recs += [record("lucky", 0, 0.95, 0.5)]  # one seed: never bold, never the reference
    write_records(results, recs)
    assert ttest_ind(vr_lwf, agem, equal_var=False, alternative="less").pvalue >= BOLD_LEVEL
    write(results, tmp_path / "lb")
    text = (tmp_path / "lb" / "demo.md").read_text()
    header = [c.strip() for c in next(l for l in text.splitlines() if l.startswith("| method")).strip("|").split("|")]
    col = header.index("last")
    assert table_line(text, "agem")[col] == "**0.821 ± 0.007**"
    assert table_line(text, "vr\\_lwf")[col] == "**0.816 ± 0.006**"
    assert table_line(text, "worse")[col] == "0.710 ± 0.010"
    assert table_line(text, "lucky")[col] == "0.950"
    assert "Welch's t-test, one-sided, level 0.05" in text


def test_bold_needs_two_seeds(tmp_path):
    results = tmp_path / "results"
    write_records(results, [record("a", 0, 0.8, 0.5), record("b", 0, 0.7, 0.5)])
    write(results, tmp_path / "lb")
    assert "**" not in (tmp_path / "lb" / "demo.md").read_text().split("## proto")[1]


def test_not_worse_is_one_sided_welch():
    best, other = [0.80, 0.82, 0.84], [0.70, 0.75, 0.80]
    p = ttest_ind(other, best, equal_var=False, alternative="less").pvalue
    assert not_worse(other, best, lower=False) == (p >= BOLD_LEVEL)
    # one-sided: p = 0.035 here (two-sided it would be 0.07, and bold)
    assert ttest_ind([0.78, 0.79, 0.80], [0.80, 0.81, 0.82], equal_var=False).pvalue > BOLD_LEVEL
    assert not not_worse([0.78, 0.79, 0.80], [0.80, 0.81, 0.82], lower=False)
    assert not not_worse([0.5, 0.5], [0.6, 0.6], lower=False)  # no spread, lower mean: worse
    assert not_worse([0.6, 0.6], [0.6, 0.6], lower=False)
    assert not_worse([5.0, 5.2, 5.4], [5.1, 5.3, 5.5], lower=True)  # a drop within noise
    assert not not_worse([9.0, 9.1, 9.2], [1.0, 1.1, 1.2], lower=True)


def test_mean_rank_counts_a_family_once():
    assert ranked_metrics(["last", "avg", "i2t_r1", "i2t_r1_drop", "zs_retention", "zs_drop"], one_session=False) == \
        ["last", "avg", "i2t_r1", "zs_retention"]
    # one session: avg and ut_acc measure what last does
    assert ranked_metrics(["last", "avg", "ut_acc", "i2t_r1"], one_session=True) == ["last", "i2t_r1"]


def test_main_table_shows_the_protocols_headline_metrics(tmp_path):
    """tiny_shapes names [last, avg, bwt, zs_retention, i2t_r1, t2i_r1]: the table shows those it has values
    for, in that order, and nothing else."""
    results = tmp_path / "results"
    write_records(results, [record(m, s, v + 0.01 * s, z, protocol="tiny_shapes")
                            for m, v, z in (("a", 0.8, 0.5), ("b", 0.7, 0.59)) for s in range(2)])
    write(results, tmp_path / "lb")
    text = (tmp_path / "lb" / "demo.md").read_text()
    header = [c.strip() for c in next(l for l in text.splitlines() if l.startswith("| method")).strip("|").split("|")]
    assert header[3] == "recipe" and header[4:8] == ["last", "avg", "bwt", "zs\\_retention"]
    assert "zs\\_drop" not in header and "forgetting" not in header
    # a: best last, avg, bwt; b: best retention -> mean ranks 1.25 and 1.75
    assert table_line(text, "a ")[-1] == "1.25" and table_line(text, "b ")[-1] == "1.75"


def test_mean_ranks_average_over_the_metrics_present(tmp_path):
    results = tmp_path / "results"
    write_records(results, [record("a", 0, 0.8, 0.5), record("b", 0, 0.7, 0.59)])
    entries = load(results).entries
    assert mean_ranks(entries, ["last", "zs_retention"]) == [1.5, 1.5]
    assert mean_ranks(entries, ["last", "zs_drop"]) == [1.5, 1.5]  # zs_drop: lower is better
    assert mean_ranks(entries, ["last"]) == [1.0, 2.0]


def test_costs_show_what_inference_needs(demo, tmp_path):
    write(demo, tmp_path / "lb")
    text = (tmp_path / "lb" / "demo.md").read_text()
    assert table_line(text, "alpha")[-2] == "zero-shot CLIP"
    assert table_line(text, "beta")[-2] == "none"
    assert table_line(text, "gamma")[-2] == "-"  # a record from before it was recorded


def test_escaping_in_tables_and_pictures(demo, tmp_path):
    out = tmp_path / "lb"
    assert run_cli("leaderboard", "--results", demo, "--out", out) == 0  # `$\frac{x$` crashed matplotlib's mathtext
    text = (out / "demo.md").read_text()
    assert r"evil\|name\`\<b\>\*x\*\$\\frac{x\$" in text and "<b>" not in text
    rows = [l for l in text.splitlines() if l.startswith("|")]
    count = lambda l: l.replace("\\|", "").count("|")  # noqa: E731
    assert len({count(l) for l in rows}) == 1
    for png in sorted((out / "demo" / "proto").glob("*.png")) + [out / "demo" / "proto_curves.png"]:
        with Image.open(png) as img:
            assert img.format == "PNG" and img.size[0] > 100


def test_escape_neutralises_markup():
    assert escape("a|b") == "a\\|b" and escape("x\ny") == "x y" and escape("[l](u)") == "\\[l\\](u)"
    assert escape("$x$") == "\\$x\\$" and escape("a\\b") == "a\\\\b" and escape("&amp;") == "\\&amp;"


def test_tidy_json_and_csv(demo, tmp_path):
    out = tmp_path / "lb"
    write(demo, out)
    rows = json.loads((out / "leaderboard.json").read_text())
    assert {"suite", "method", "variant", "model", "metric", "mean", "std", "n_seeds"} <= set(rows[0])
    alpha_last = next(r for r in rows if r["method"] == "alpha" and r["metric"] == "last")
    assert alpha_last["n_seeds"] == 3 and alpha_last["mean"] == pytest.approx(0.82)
    gamma = {r["variant"]: r for r in rows if r["method"] == "gamma" and r["metric"] == "last"}
    assert gamma["method_version=1"]["mean"] == pytest.approx(0.9) and gamma["method_version=2"]["n_seeds"] == 1
    assert (out / "leaderboard.csv").read_text().splitlines()[0].startswith("suite,protocol,method,variant,model,metric")


def test_pictures_open_and_match_the_pages(demo, tmp_path):
    out = tmp_path / "lb"
    write(demo, out)
    page = (out / "demo" / "proto.md").read_text()
    pngs = sorted((out / "demo" / "proto").glob("*.png"))
    assert len(pngs) == 5  # one heatmap per row (gamma's two versions are two rows)
    assert "](proto/alpha__tiny-model.png)" in page
    alpha = page.split("### alpha")[1]
    last_row = next(l for l in alpha.splitlines() if l.startswith("| 2 "))
    assert [c.strip() for c in last_row.strip("|").split("|")] == ["2", "0.720", "0.920"]  # mean of 0.82 -/+ 0.1


def test_rewriting_removes_the_pictures_and_pages_of_runs_gone(demo, tmp_path):
    out = tmp_path / "lb"
    write(demo, out)
    (out / "notes.txt").write_text("mine")  # not a generated page or picture: kept
    for path in demo.glob("runs/proto/gamma/*"):
        shutil.rmtree(path)
    write(demo, out)
    assert not [p for p in out.rglob("*") if "gamma" in p.name]
    assert len(list((out / "demo" / "proto").glob("*.png"))) == 3 and (out / "notes.txt").exists()
    (out / "notes.txt").unlink()
    assert run_cli("leaderboard", "--results", demo, "--out", out, "--check") == 0  # as a fresh write


def test_check_passes_then_catches_a_stale_file(demo, tmp_path, capsys):
    out = tmp_path / "lb"
    assert run_cli("leaderboard", "--results", demo, "--out", out) == 0
    assert run_cli("leaderboard", "--results", demo, "--out", out, "--check") == 0
    atomic_write_json(demo / "runs" / "p" / "beta" / "new" / "run.json", record("beta", 3, 0.99, 0.58))
    assert run_cli("leaderboard", "--results", demo, "--out", out, "--check") == 1
    assert "differs: demo.md" in capsys.readouterr().err


def test_corrupt_record_is_named_never_dropped(demo, tmp_path, capsys):
    broken = demo / "runs" / "proto" / "alpha" / "r0" / "run.json"
    broken.write_text(broken.read_text()[:100])  # a kill during a copy
    incomplete = record("beta", 7, 0.7, 0.5)
    del incomplete["spec"]["seed"]
    atomic_write_json(demo / "runs" / "proto" / "beta" / "odd" / "run.json", incomplete)
    out = tmp_path / "lb"
    assert run_cli("leaderboard", "--results", demo, "--out", out) == 0
    err = capsys.readouterr().err
    assert f"corrupt record {broken}: not valid JSON" in err
    assert "runs/proto/beta/odd/run.json: complete but no spec.seed" in err
    text = (out / "demo.md").read_text()
    section = text.split("## Records that could not be read")[1]
    assert "runs/proto/alpha/r0/run.json" in section and "no spec.seed" in section
    assert table_line(text, "alpha")[2] == "2"  # its two readable seeds
    assert run_cli("leaderboard", "--results", demo, "--print") == 0
    assert "runs/proto/alpha/r0/run.json" in capsys.readouterr().out


# ------------------------------------------------------------------ reported numbers


def write_reported(results: Path, rows: str) -> None:
    (results / "reported").mkdir(exist_ok=True)
    (results / "reported" / "paper.yaml").write_text(
        "suite: demo\nprotocol: proto\nmodel: tiny-model\nsource: A. Author et al., Some Paper, 2099, Table 1\n"
        "scale: 100\nmetrics: [last]\nrows:\n" + rows)


def test_reported_row_sits_beside_the_method_and_settings_it_names(demo, tmp_path):
    write_reported(demo, "  Alpha (paper): {method: alpha, settings: {train.lr: 1e-3, methods.alpha.part: whole},"
                         " metrics: {last: 80.0}}\n"
                         "  Beta: {method: beta, settings: {train.lr: 0.05}, metrics: {last: 75.0}}\n"
                         "  Delta: {method: delta, metrics: {last: 60.0}}\n")
    write(demo, tmp_path / "lb")
    section = (tmp_path / "lb" / "demo.md").read_text().split("Reproduced beside reported")[1]
    assert "Some Paper" in section
    assert table_line(section, "Alpha (paper)") == ["Alpha (paper)", "alpha", "80.0", "82.0", "+2.0"]
    beta = table_line(section, "Beta")
    assert beta[1].startswith("-[^") and beta[2:] == ["75.0", "-", "-"]
    assert "differ from the reported row 'Beta': train.lr is 0.001 (reported 0.05)" in section
    assert table_line(section, "Delta")[1].startswith("-[^") and "no runs of delta with tiny-model" in section
    assert "| gamma" not in section and "71.0" not in section  # beta's own number is never shown


def test_reported_row_never_sits_beside_a_method_it_does_not_name(tmp_path):
    """The shipped ZSCL file's "LwF" is ZSCL's own LwF (lwf_zscl): our CL-CLIP `lwf` runs are not its neighbour."""
    results, out = tmp_path / "results", tmp_path / "lb"
    recs = []
    for method, value in (("lwf", 0.50), ("zscl", 0.80)):
        rec = record(method, 0, value, 0.5, model="ViT-B-16", suite="mtil", protocol="mtil_order1",
                     train={"ce_classes": "current", "optimizer": "adamw", "weight_decay": 0.0, "batch_size": 64})
        rec["raw"]["acc_matrix"] = [[0.6, 0.6], [0.9, 0.7], [value, value]]
        recs.append(rec)
    write_records(results, recs)
    write(results, out)  # no reported/ folder in these results: the file shipped with clipbench is used
    text = (out / "mtil.md").read_text()
    assert "Thunderbeee/ZSCL" in text and "mtil/results.ipynb" in text
    section = text.split("Reproduced beside reported")[1]
    assert table_line(section, "ZSCL") == ["ZSCL", "zscl", "68.1", "70.0", "+1.9", "75.4", "80.0", "+4.6", "83.6",
                                           "80.0", "-3.6"]
    lwf = table_line(section, "LwF ")
    assert lwf[1].startswith("-[^") and lwf[3::3] == ["-", "-", "-"]
    assert "no runs of lwf\\_zscl with ViT-B-16 on mtil\\_order1" in section
    assert "| lwf " not in section and "50.0" not in section


def test_reported_settings_that_differ_give_a_footnote(tmp_path):
    results, out = tmp_path / "results", tmp_path / "lb"
    rec = record("zscl", 0, 0.8, 0.5, model="ViT-B-16", suite="mtil", protocol="mtil_order1",
                 train={"ce_classes": "seen", "optimizer": "adamw", "weight_decay": 0.0, "batch_size": 64})
    write_records(results, [rec])
    write(results, out)
    section = (out / "mtil.md").read_text().split("Reproduced beside reported")[1]
    assert table_line(section, "ZSCL")[1].startswith("-[^")
    assert "train.ce\\_classes is seen (reported current)" in section


@pytest.mark.parametrize("rows, message", [
    ("  alpha: {last: 80.0}\n", "row 'alpha' needs method: and metrics:"),  # the old format
    ("  A: {method: alpha, settings: {methods.beta.part: whole}, metrics: {last: 1}}\n", "must be methods.alpha.<field>"),
    ("  A: {method: alpha, metrics: {avg: 1}}\n", "metric(s) avg not in the file's metrics"),
])
def test_malformed_reported_file_is_one_line_naming_it(demo, tmp_path, capsys, rows, message):
    write_reported(demo, rows)
    with pytest.raises(ClipbenchError, match="paper.yaml"):
        load_reported(demo / "reported" / "paper.yaml")
    assert run_cli("leaderboard", "--results", demo, "--out", tmp_path / "lb") == 2
    err = capsys.readouterr().err
    assert message in err and "paper.yaml" in err and len(err.strip().splitlines()) == 1


def test_shipped_reported_files_load():
    import clipbench.protocols

    for path in sorted((Path(clipbench.protocols.__file__).parent / "reported").glob("*.yaml")):
        doc = load_reported(path)
        assert doc["rows"] and all(row["method"] and row["metrics"] for row in doc["rows"].values())
