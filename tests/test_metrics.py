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


# ------------------------------------------------------------------ the founding paper's metrics, as its code has them


def reference_get_acc_bwt(cls_acc_per_phase, n_phases):
    """A transcription of yxding95/CL-CLIP (877a69f) `methods/base.py` `Base.get_acc_bwt`, called after each
    phase with `Base.test`'s per-class accuracy (every class scored); returns the last call's (acc, bwt)."""
    import numpy as np

    phase_matrix = np.zeros((n_phases, n_phases))
    for phase, cls_acc in enumerate(cls_acc_per_phase):
        cls_acc = np.asarray(cls_acc)
        BWT = np.zeros(phase + 1)
        for i in range(phase_matrix.shape[0]):
            chunk = len(cls_acc) // phase_matrix.shape[0]
            phase_matrix[phase][i] = cls_acc[chunk * i: chunk * (i + 1)].mean()
            if i < phase:
                BWT[i] = phase_matrix[phase][i] - phase_matrix[i][i]
        acc = phase_matrix[phase][:phase + 1].mean()
        bwt = BWT.mean()
    return acc, bwt


# three phases of two classes; per-class accuracy over all six classes after each phase (row 0: before training)
CLASS_ACC = [[0.1, 0.2, 0.0, 0.3, 0.2, 0.1],
             [0.9, 0.7, 0.0, 0.1, 0.0, 0.2],
             [0.5, 0.3, 0.8, 1.0, 0.1, 0.0],
             [0.4, 0.2, 0.6, 0.5, 0.9, 0.7]]
PAPER_RAW = {
    # R scores the classes seen so far, so it differs from the all-class rows above: the founding paper's
    # metrics must come from the per-class rows
    "acc_matrix": [[0.3, 0.2, 0.2], [0.8, 0.1, 0.1], [0.45, 0.95, 0.1], [0.3, 0.6, 0.8]],
    "test_sizes": [10, 30, 20], "experience_classes": [[0, 1], [2, 3], [4, 5]], "class_acc_all": CLASS_ACC,
    "zeroshot": {"tiered": [0.6, 0.5, 0.45, 0.4]},
}


def test_ut_acc_and_ut_bwt_match_the_reference_code():
    acc, bwt = reference_get_acc_bwt(CLASS_ACC[1:], 3)
    assert METRICS.get("ut_acc").compute(PAPER_RAW)["ut_acc"] == pytest.approx(acc)
    assert METRICS.get("ut_bwt").compute(PAPER_RAW)["ut_bwt"] == pytest.approx(bwt)
    # by hand: phases after the last one 0.3, 0.55, 0.8; diagonal 0.8, 0.9, (0.8)
    assert acc == pytest.approx((0.3 + 0.55 + 0.8) / 3)
    assert bwt == pytest.approx(((0.3 - 0.8) + (0.55 - 0.9)) / 3)  # divided by T, not T - 1
    assert METRICS.get("a_acc").compute(PAPER_RAW)["a_acc"] == pytest.approx((acc + 0.4) / 2)
    # Lopez-Paz's bwt keeps its own id and formula, on R
    assert METRICS.get("bwt").compute(PAPER_RAW)["bwt"] == pytest.approx(((0.3 - 0.8) + (0.6 - 0.95)) / 2)


def test_multi_session_ut_acc_ignores_test_sizes_and_the_seen_class_matrix():
    """Per class, then per phase, then over phases: neither the sample counts nor R enter it."""
    other = dict(PAPER_RAW, test_sizes=[100, 1, 7], acc_matrix=[[0.0] * 3] * 4)
    for name in ("ut_acc", "ut_bwt"):
        assert METRICS.get(name).compute(other) == pytest.approx(METRICS.get(name).compute(PAPER_RAW))
    weighted = (10 * 0.3 + 30 * 0.6 + 20 * 0.8) / 60  # version 1: sample-weighted final row of R
    assert METRICS.get("ut_acc").compute(PAPER_RAW)["ut_acc"] != pytest.approx(weighted)


def test_one_session_ut_acc_is_the_accuracy_over_every_test_image():
    """OST in the reference (`methods/ft.py`): `Base.test`'s num_correct / len(dataset), no per-class step."""
    one = {"acc_matrix": [[0.3], [0.7]], "test_sizes": [50], "experience_classes": [[0, 1, 2]],
           "zeroshot": {"tiered": [0.6, 0.5]}}
    assert METRICS.get("ut_acc").compute(one)["ut_acc"] == pytest.approx(0.7)
    assert METRICS.get("a_acc").compute(one)["a_acc"] == pytest.approx(0.6)
    assert METRICS.get("ut_bwt").compute(one) == {}  # the reference computes no BWT in one session


@pytest.mark.parametrize("change", [
    lambda raw: raw.pop("class_acc_all"),  # a record from before clipbench stored per-class rows
    lambda raw: raw.update(class_acc_all=CLASS_ACC[:3]),  # a row short (resumed from an older checkpoint)
    lambda raw: raw["class_acc_all"].__setitem__(2, None),
    lambda raw: raw.update(class_acc_all=[row[:5] + [None] for row in CLASS_ACC]),  # a class without test images
])
def test_founding_paper_metrics_give_no_value_rather_than_a_wrong_one(change):
    raw = {k: (list(v) if isinstance(v, list) else v) for k, v in PAPER_RAW.items()}
    change(raw)
    for name in ("ut_acc", "ut_bwt", "a_acc"):
        assert METRICS.get(name).compute(raw) == {}


def test_metric_declarations():
    from clipbench.protocols.metrics import headline_metrics, metric_of

    assert {"last", "avg", "zs_retention", "i2t_r1", "t2i_r1"} <= set(headline_metrics())
    assert "i2t_r1_drop" not in headline_metrics() and "zs_drop" not in headline_metrics()
    assert metric_of("i2t_r1_drop").family == metric_of("i2t_r1").family
    assert metric_of("zs_drop.emoji").lower_is_better and not metric_of("zs_retention").lower_is_better
    assert METRICS.get("avg").family_in(one_session=True) == "last" != METRICS.get("avg").family_in(one_session=False)
    assert METRICS.get("ut_acc").version == 2 and METRICS.get("a_acc").version == 2
