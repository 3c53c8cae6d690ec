"""The benchmark's counting parts (no timing in tests: speed is measured by `clipbench bench`)."""

from clipbench import runner
from clipbench.bench import grid_forward_ratio


def test_evaluation_sharing_saves_vision_tower_passes():
    small = ["protocols.tiny_shapes.train_per_class=4", "protocols.tiny_shapes.test_per_class=2",
             "protocols.tiny_shapes.heldout_per_class=2", "protocols.tiny_shapes.retrieval_images=4"]
    out = grid_forward_ratio("tiny", ["zeroshot", "finetune"], "tiny_shapes", small)
    passes = out["grid_forward_passes"]
    assert passes["shared"] < passes["unshared"] and out["grid_forward_ratio"] < 1
    assert runner.SHARE_EVALUATION is True  # restored
