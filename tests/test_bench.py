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


def test_data_bench_reports_decode_ratio_warm_start_and_memory(tmp_path):
    """`bench --data`'s parts on a small ImageFolder of real clip art (the tiny model for the runs): numbers
    present and sane, the second run finds its images decoded (no timing is asserted)."""
    import shutil

    from clipbench.bench_data import decode_rates, warm_start
    from real_images import sample_files

    for k, f in enumerate(sample_files()[:12]):
        (tmp_path / f"c{k % 2}").mkdir(exist_ok=True)
        shutil.copy2(f, tmp_path / f"c{k % 2}" / f.name)
    rates = decode_rates(tmp_path, workers=1, repeats=1)
    assert rates["images"] == 12 and rates["decode_vs_torchvision"] > 0 and rates["store_images_per_s"] > 0
    warm = warm_start(tmp_path, workers=1, arch="clipbench-tiny")
    assert 0 < warm["warm_start_s"] < warm["first_run"]["to_first_batch_s"] + 60
    assert warm["peak_rss_mb"] >= warm["second_run"]["peak_rss_mb"] > 0


def test_grid_overhead_is_the_grids_wall_time_over_its_runs_training_and_evaluation():
    from clipbench.bench import grid_overhead

    small = ["protocols.tiny_shapes.train_per_class=8", "protocols.tiny_shapes.test_per_class=4"]
    out = grid_overhead("tiny", ["zeroshot", "finetune"], small)
    detail = out["grid_overhead"]
    assert detail["runs"] == detail["runs_timed"] == detail["ran"] >= 2 and detail["failed"] == 0
    assert 0 < detail["train_and_eval_s"] <= detail["wall_s"]
    assert out["grid_wall_over_work"] >= 1.0  # the rounded seconds give the ratio to within their rounding
    assert abs(out["grid_wall_over_work"] * detail["train_and_eval_s"] - detail["wall_s"]) <= 0.05 * (1 + out["grid_wall_over_work"])


def test_the_real_scale_rehearsal_writes_the_stream_and_measures_it(tmp_path):
    """At a tiny scale: the stream is written in the lamda_folder layout and read back through the store."""
    from clipbench.rehearse import run, write_stream

    out = run(scale=0.004, workers=1, arch="ViT-S-32", eval_images=2, folder=str(tmp_path / "stream"))
    stream = out["stream"]
    assert (stream["classes"], stream["train_images"], stream["test_images"]) == (2, 4, 2)
    assert len(list((tmp_path / "stream" / "train").rglob("*.jpg"))) == 4
    assert 3 * 224 * 224 <= out["store_bytes_per_image"] < 3 * 224 * 224 + 1024  # uint8 at the input size, + metadata
    assert out["peak_rss_mb"] >= out["rss_after_store"]["anon_mb"] > 0 and out["eval_images_per_s"] > 0
    assert 0 < out["first_batch_warm_s"] < out["first_step_warm_s"] and 0 < out["first_batch_cold_s"] < out["first_step_cold_s"]
    assert out["eval_images"] == 2
    again = write_stream(tmp_path / "again", 0.004, 1)  # the same files every time
    first = sorted((tmp_path / "stream").rglob("*.jpg"))
    assert again["files_mb"] == stream["files_mb"] and [p.read_bytes() for p in first] == \
        [p.read_bytes() for p in sorted((tmp_path / "again").rglob("*.jpg"))]
