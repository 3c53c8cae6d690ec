"""Metric functions against matrices computed by hand."""

import pytest

from clipbench.protocols.metrics import METRICS, compute_metrics

R = [[0.1, 0.2, 0.3],  # row 0: before training
     [0.9, 0.3, 0.2],
     [0.6, 0.8, 0.1],
     [0.5, 0.4, 0.7]]
RAW = {
    "acc_matrix": R, "test_sizes": [10, 10, 20],
    "zeroshot": {"a": [0.5, 0.4, 0.3, 0.25], "b": [0.8, 0.8, 0.8, 0.4]},
    "retrieval": {"x": {"i2t_r1": [0.3, 0.2, 0.2, 0.1], "t2i_r1": [0.4, 0.4, 0.3, 0.3]}},
}


@pytest.mark.parametrize("name, expected", [
    ("last", (0.5 + 0.4 + 0.7) / 3),
    ("avg", (0.9 + (6 + 8) / 20 + (5 + 4 + 14) / 40) / 3),
    ("bwt", ((0.5 - 0.9) + (0.4 - 0.8)) / 2),
    ("forgetting", ((0.9 - 0.5) + (0.8 - 0.4)) / 2),
    ("mtil_transfer", (0.3 + (0.2 + 0.1) / 2) / 2),
    ("mtil_avg", 4.5 / 9),
    ("mtil_last", 1.6 / 3),
    ("zs_retention", (0.25 / 0.5 + 0.4 / 0.8) / 2),
    ("zs_drop", (25 + 40) / 2),
    ("zs_acc", (0.25 + 0.4) / 2),
    ("i2t_r1", 0.1),
    ("i2t_r1_drop", 20.0),
    ("t2i_r1", 0.3),
])
def test_metric_matches_hand_computation(name, expected):
    assert METRICS.get(name).compute(RAW)[name] == pytest.approx(expected)


def test_per_set_values_are_reported():
    values = compute_metrics(RAW)["values"]
    assert values["zs_retention.a"] == pytest.approx(0.5)
    assert values["zs_drop.b"] == pytest.approx(40.0)
    assert values["i2t_r1.x"] == pytest.approx(0.1)


def test_avg_weights_by_test_size():
    # Same matrix, equal sizes: step 3 becomes the plain mean of the row.
    equal = dict(RAW, test_sizes=[10, 10, 10])
    assert METRICS.get("avg").compute(equal)["avg"] == pytest.approx((0.9 + 0.7 + (0.5 + 0.4 + 0.7) / 3) / 3)


def test_metrics_have_versions_and_directions():
    out = compute_metrics(RAW)
    assert set(out["versions"]) == set(METRICS.names())
    assert METRICS.get("forgetting").direction == "lower" and METRICS.get("last").direction == "higher"
