"""The cost columns' `inference_extras` describes what a method needs at inference as it stands after learning
(RAIL's regressor has its sizes only once it has seen the data), not only as it was set up."""

from __future__ import annotations

import pytest

from helpers import SMALL, records, run_cli


@pytest.mark.slow  # one tiny run: about a minute on the shared two cores
def test_rail_primal_record_names_its_regressor_sizes(tmp_path):
    assert run_cli("run", "--method", "rail_primal", "--protocol", "tiny_shapes", "--suite", "tiny",
                   "--results", tmp_path, "--quiet", "--set", *SMALL) == 0
    [rec] = records(tmp_path).values()
    extras = rec["costs"]["inference_extras"]
    assert extras.startswith("random ReLU projection ") and "sizes set by" not in extras
    assert rec["costs"]["trainable_params"] == 0 and rec["costs"]["extra_memory_mb"] > 0
