"""Each protocol chooses the metrics it reports (`metrics:`, default: every metric of its kind); a metric
registered anywhere shows up in the leaderboard of a protocol that lists it, and only there."""

import pytest

from clipbench.errors import ClipbenchError
from clipbench.leaderboard import load, write
from clipbench.protocols import catalog
from clipbench.protocols.metrics import METRICS, default_metrics, metric
from test_leaderboard import record, write_records

PROTOCOL = """name: {name}
version: 1
kind: class_incremental
builder: synthetic_shapes
{extra}
"""


def protocol_file(tmp_path, name, extra=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(PROTOCOL.format(name=name, extra=extra))
    return path


def test_a_protocol_without_a_list_reports_every_metric_of_its_kind(tmp_path):
    proto = catalog.load_protocol_file(protocol_file(tmp_path, "p"))
    assert proto.metrics == default_metrics("class_incremental")
    assert {"last", "avg", "zs_retention", "i2t_r1_drop", "mtil_transfer"} <= set(proto.metrics)
    # no `headline:`: those of its metrics declared headline
    assert set(proto.headline_metrics()) == {m for m in proto.metrics if METRICS.get(m).headline}


def test_an_unknown_metric_fails_with_the_file_and_a_did_you_mean(tmp_path):
    path = protocol_file(tmp_path, "p", "metrics: [last, avgg]")
    with pytest.raises(ClipbenchError, match=r"p\.yaml:5: metrics: unknown metric 'avgg'\. Did you mean 'avg'\?"):
        catalog.load_protocol_file(path)
    with pytest.raises(ClipbenchError, match="metrics must be a list of metric names"):
        catalog.load_protocol_file(protocol_file(tmp_path, "q", "metrics: last"))


def test_headline_metrics_must_be_reported(tmp_path):
    with pytest.raises(ClipbenchError, match="headline lists bwt, which is not in the protocol's metrics"):
        catalog.load_protocol_file(protocol_file(tmp_path, "p", "metrics: [last, avg]\nheadline: [last, bwt]"))


def test_a_new_metric_shows_in_the_leaderboard_of_the_protocols_that_list_it(tmp_path, monkeypatch):
    monkeypatch.setattr(METRICS, "_items", dict(METRICS._items))  # the registration ends with the test

    @metric("first_row_mean", direction="lower", headline=True)
    def first_row_mean(raw):
        """Mean accuracy after the first experience (a test metric)."""
        return sum(raw["acc_matrix"][1]) / len(raw["acc_matrix"][1])

    listing = catalog.load_protocol_file(protocol_file(
        tmp_path, "lists_it", "metrics: [last, first_row_mean]\nheadline: [first_row_mean, last]"))
    other = catalog.load_protocol_file(protocol_file(tmp_path, "other", "metrics: [last, avg]"))
    known = {p.name: p for p in (listing, other)}
    monkeypatch.setattr(catalog, "get_protocol", lambda name: known[name])

    results = tmp_path / "results"
    write_records(results, [record(m, s, v, 0.5, protocol=p) for p in known for m, v in (("a", 0.8), ("b", 0.6))
                            for s in range(2)])
    by_protocol = {e.protocol: e for e in load(results).entries}
    # record(): the row after the first experience is [0.9, 0.4]
    assert by_protocol["lists_it"].values("first_row_mean") == [pytest.approx(0.65)] * 2
    assert set(by_protocol["lists_it"].runs[0]["metrics"]) == {"last", "first_row_mean"}
    assert "first_row_mean" not in by_protocol["other"].runs[0]["metrics"]

    write(results, tmp_path / "lb")
    main = (tmp_path / "lb" / "demo.md").read_text()
    section = main.split("## lists\\_it")[1].split("## other")[0]
    header = next(line for line in section.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")][3:6] == ["recipe", "first\\_row\\_mean ↓", "last"]
    assert "first\\_row\\_mean" not in main.split("## other")[1]
    page = (tmp_path / "lb" / "demo" / "lists_it.md").read_text()
    assert "| first\\_row\\_mean" in page and "| avg" not in page
    csv = (tmp_path / "lb" / "leaderboard.csv").read_text()
    assert "lists_it,a,,tiny-model,first_row_mean,0.65" in csv and "other,a,,tiny-model,first_row_mean" not in csv
