"""`clip_cil` and `clip_cil_rapf` end to end (`make test-slow`): `finetune` with a real open_clip architecture
(ViT-B-32, random weights saved to a file, as a user passes real weights) on tiny data written in the real on-disk
layouts (`protocols/formats/_small.py`): ImageNet-R B0 Inc20 from a LAMDA archive (`lamda_folder`) and RAPF's
ImageNet-R from the original folders and a split file (`imagenet_r_split`), each cut to two steps of two classes of
its own class order; the records hold `avg` and `last_all` and the leaderboard shows them, with PROOF's reported
row beside `proof` (a dash here: no `proof` run)."""

from __future__ import annotations

import json
import math

import pytest

from clipbench.protocols.catalog import get_protocol
from clipbench.protocols.formats._small import write_small
from helpers import records, run_cli

RUNS = [("clip_cil", "clipcil_imagenet_r_b0inc20"), ("clip_cil_rapf", "imagenet_r_rapf_10steps")]



@pytest.mark.slow
def test_two_steps_of_each_suite_on_tiny_real_format_data(tmp_path, vit_file):
    root, results = tmp_path / "data", tmp_path / "results"
    common = [f"data_root={root}", "model.arch=ViT-B-32", f"model.pretrained={vit_file}", "train.iterations=2",
              "train.batch_size=2", "eval.batch_size=16"]
    for suite, protocol in RUNS:
        proto = get_protocol(protocol)
        overrides = write_small(proto.params["target"], root, per_class=2)
        first_four = proto.params["class_order"][:4]
        sets = [f"protocols.{protocol}.class_order={first_four}", f"protocols.{protocol}.initial=2",
                f"protocols.{protocol}.increment=2"]
        if overrides:  # the tiny split file is not RAPF's: its pin is switched off
            sets.append(f"protocols.{protocol}.target={{" + ", ".join(f"{k}: null" for k in overrides) + "}")
        assert run_cli("run", "--suite", suite, "--method", "finetune", "--protocol", protocol, "--results", results,
                       "--quiet", "--threads", "1", "--set", *common, *sets) == 0, protocol
    found = {r["spec"]["protocol"]: r for r in records(results).values()}
    assert set(found) == {p for _, p in RUNS}
    for _, protocol in RUNS:
        record = found[protocol]
        assert record["status"] == "complete" and len(record["raw"]["acc_matrix"]) == 3  # before, two steps
        assert {"avg", "last_all"} <= set(record["metrics"])
        assert all(math.isfinite(record["metrics"][m]) for m in ("avg", "last_all"))
        assert record["raw"]["test_sizes"] == [4, 4]  # two classes of two test images each step
    assert run_cli("leaderboard", "--results", results) == 0
    board = json.loads((results / "leaderboards" / "leaderboard.json").read_text())
    for suite, protocol in RUNS:
        shown = {row["metric"] for row in board if row["suite"] == suite and row["protocol"] == protocol}
        assert {"avg", "last_all"} <= shown
    page = (results / "leaderboards" / "clip_cil.md").read_text()
    assert "Reproduced beside reported: clipcil\\_imagenet\\_r\\_b0inc20" in page and "| PROOF" in page
