"""Long checks (`make test-slow`): excluded from the default run."""

import pytest
import torch

from clipbench.models import resolve_bundled
from clipbench.prepare import prepare_mini


@pytest.mark.slow
def test_prepare_mini_reproduces_the_shipped_projections(tmp_path):
    """`clipbench prepare mini` with its defaults rebuilds the committed file exactly (about a minute)."""
    out = tmp_path / "mini" / "projections-v1.pt"
    prepare_mini(out, progress=False)
    shipped = torch.load(resolve_bundled("bundled:mini/projections-v1.pt"), weights_only=True)
    fresh = torch.load(out, weights_only=True)
    assert shipped["meta"] == fresh["meta"]
    for key, value in shipped["state_dict"].items():
        assert torch.equal(value, fresh["state_dict"][key]), key
