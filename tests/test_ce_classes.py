"""`ce_classes: current`: the fast path of an experience's own batches equals the general one."""

import pytest
import torch

from clipbench.engine import make_criterion


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_an_experiences_own_batches_skip_the_label_lookup_and_give_the_same_bits(smoothing):
    from clipbench.engine import OwnExperienceCE

    torch.manual_seed(0)
    ranges = [(0, 3), (3, 7), (7, 10)]
    logits = torch.randn(16, 10)
    labels = torch.randint(3, 7, (16,))
    ce = make_criterion("current", smoothing, ranges)
    assert isinstance(ce, OwnExperienceCE)
    general = ce(logits, labels)
    ce.set_experience_labels(torch.arange(3, 7).repeat(5), 10)
    assert ce.batch_owner == 1
    assert torch.equal(ce.for_batch(logits, labels), general)  # the same bits, not just close
    ce.set_experience_labels(torch.tensor([0, 4, 8]), 10)  # replay: labels of several experiences
    assert ce.batch_owner is None
    mixed = torch.tensor([0, 4, 8, 9] * 4)
    assert torch.equal(ce.for_batch(logits, mixed), ce(logits, mixed))
