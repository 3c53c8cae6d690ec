"""The benchmark's counting parts (no timing in tests: speed is measured by `clipbench bench`)."""

from clipbench.bench import grid_forward_ratio, peak_bf16_flops, train_throughput


def test_evaluation_sharing_saves_vision_tower_passes():
    small = ["protocols.tiny_shapes.train_per_class=4", "protocols.tiny_shapes.test_per_class=2",
             "protocols.tiny_shapes.heldout_per_class=2", "protocols.tiny_shapes.retrieval_images=4"]
    out = grid_forward_ratio("tiny", ["zeroshot", "finetune"], "tiny_shapes", small)
    passes = out["grid_forward_passes"]
    assert passes["shared"] < passes["unshared"] and out["grid_forward_ratio"] < 1


def test_training_throughput_counts_flops_and_knows_the_peaks():
    out = train_throughput("clipbench-tiny", "cpu", batch=4, steps=1, precision="fp32")
    assert out["device"] == "cpu" and out["samples_per_s"] > 0
    # forward + backward of a 3.4M-parameter model: at least 2 FLOPs per parameter per sample
    assert out["gflops_per_sample"] > 2 * 3.4e6 / 1e9
    assert out["peak_tflops"] is None and out["share_of_peak"] is None  # no peak for a CPU or fp32
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("Tesla T4") is None


def test_forward_passes_are_counted_through_the_mini_models_content_cache():
    """The mini model caches its tower outputs for the whole process: the second grid must still count
    the images it asks for (counting the tower's own batches would see none and divide by zero)."""
    small = ["protocols.mini_fashion_ost.train_per_class=4", "protocols.mini_fashion_ost.test_per_class=2"]
    out = grid_forward_ratio("mini", ["zeroshot"], "mini_fashion_ost", small)
    passes = out["grid_forward_passes"]
    assert 0 < passes["shared"] < passes["unshared"]
