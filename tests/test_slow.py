"""Long checks (`make test-slow`): excluded from the default run."""

import pytest
import torch

from clipbench.models import resolve_bundled
from clipbench.prepare import prepare_mini


@pytest.mark.slow
def test_prepare_mini_reproduces_the_shipped_projections(tmp_path):
    """`clipbench prepare mini` with its defaults rebuilds the committed projections exactly: the same tensors
    and settings (about a minute). The shipped file also records how long its making took; timing is no
    part of the product and is not compared."""
    out = tmp_path / "mini" / "projections-v2.pt"
    prepare_mini(out, progress=False)
    shipped = torch.load(resolve_bundled("bundled:mini/projections-v2.pt"), weights_only=True)
    fresh = torch.load(out, weights_only=True)
    timing = {"seconds"}
    assert {k: v for k, v in shipped["meta"].items() if k not in timing} == {k: v for k, v in fresh["meta"].items() if k not in timing}
    for key, value in shipped["state_dict"].items():
        assert torch.equal(value, fresh["state_dict"][key]), key
