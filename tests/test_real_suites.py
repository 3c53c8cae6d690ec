"""The real suites end to end (`make test-slow`): `paper`, `mtil` and `cil_cifar100` run with a real open_clip
architecture (ViT-B-32, random weights saved to a file, as a user passes real weights) on small data written
in each adapter's on-disk format (`suite_data`), and every metric of each protocol reaches the records and
the leaderboard.

What it covers (overrides keep it small): `finetune` on
- paper: `paper_coco_mst` in 2 sessions (COCO crops, tiered-ImageNet zero-shot through ImageNet's val layout,
  COCO 5k as 5 folds and Flickr30k retrieval through Karpathy's JSON, the CSV reference set); its other
  protocols differ only in the session count and EuroSAT's ImageFolder, which mtil covers;
- mtil: `mtil_order1` cut to two tasks, MNIST (torchvision's idx layout) then EuroSAT (ImageFolder with its
  test fraction; task-incremental, each task with its own templates);
- cil_cifar100: `cifar100_10steps` over the first four classes of its iCaRL order in 2 steps (CIFAR-100 pickles).
Each experience trains 2 steps of batch 2 with the suite's own optimizer, schedule, loss and augmentation.
"""

from __future__ import annotations

import json
import math

import pytest

from clipbench.protocols.catalog import get_protocol
from clipbench.protocols.metrics import METRICS
from helpers import records, run_cli
from suite_data import write_suite_data

RUNS = [  # suite, protocols, protocol overrides
    ("paper", ["paper_coco_mst"], ["protocols.paper_coco_mst.n_experiences=2"]),
    ("mtil", ["mtil_order1"], ["protocols.mtil_order1.order=[MNIST, EuroSAT]"]),
    ("cil_cifar100", ["cifar100_10steps"],
     ["protocols.cifar100_10steps.n_experiences=2", "protocols.cifar100_10steps.class_order=[87, 0, 52, 58]"]),
]
ZERO_SHOT = {"zs_acc", "zs_drop", "zs_retention"}  # metrics of held-out zero-shot sets, per set too
NEEDS_ZERO_SHOT = ZERO_SHOT | {"a_acc"}  # the founding paper's A-Acc averages UT-Acc and zero-shot accuracy
RETRIEVAL = {f"{d}_r{k}{drop}" for d in ("i2t", "t2i") for k in (1, 5, 10) for drop in ("", "_drop")}



def expected_metrics(streams) -> set:
    """Every registered metric, and its per-set ids, that a record of these streams holds."""
    names = set(METRICS.names())
    if not streams.zeroshot_sets:
        names -= NEEDS_ZERO_SHOT
    if not streams.retrieval_sets:
        names -= RETRIEVAL
    per_set = {f"{m}.{s}" for m in names & ZERO_SHOT for s in streams.zeroshot_sets}
    per_set |= {f"{m}.{s}" for m in names & RETRIEVAL for s in streams.retrieval_sets}
    return names | per_set


@pytest.mark.slow
def test_paper_mtil_and_cil_suites_run_end_to_end_on_a_real_architecture(tmp_path, vit_file):
    root = write_suite_data(tmp_path / "data")
    results = tmp_path / "results"
    common = [f"data_root={root}", "model.arch=ViT-B-32", f"model.pretrained={vit_file}", "train.iterations=2",
              "train.batch_size=2", "eval.batch_size=16"]
    for suite, protocols, overrides in RUNS:
        assert run_cli("run", "--suite", suite, "--method", "finetune", "--protocol", *protocols, "--results", results,
                       "--quiet", "--threads", "1", "--set", *common, *overrides) == 0, suite
    found = {r["spec"]["protocol"]: r for r in records(results).values()}
    assert set(found) == {p for _, protocols, _ in RUNS for p in protocols}
    assert run_cli("leaderboard", "--results", results) == 0
    board = json.loads((results / "leaderboards" / "leaderboard.json").read_text())
    for suite, protocols, overrides in RUNS:
        for protocol in protocols:
            record = found[protocol]
            assert record["status"] == "complete" and record["spec"]["model"]["arch"] == "ViT-B-32"
            proto = get_protocol(protocol)
            params = {**proto.params, **record["spec"]["protocol_params"]}
            streams = proto.build(str(root), 0, params)
            want = expected_metrics(streams)
            assert want <= set(record["metrics"]), (protocol, sorted(want - set(record["metrics"])))
            assert all(math.isfinite(v) for v in record["metrics"].values())
            assert set(proto.headline) <= want  # the protocol's own columns are among them
            shown = {row["metric"] for row in board if row["suite"] == suite and row["protocol"] == protocol}
            assert set(record["metrics"]) <= shown, (protocol, sorted(set(record["metrics"]) - shown))
            page = (results / "leaderboards" / f"{suite}.md").read_text()
            assert protocol in page
            # the run trained: two steps per experience, each experience a row of the accuracy matrix
            assert len(record["raw"]["acc_matrix"]) == streams.n_experiences + 1
            assert all(s > 0 for s in record["raw"]["train_seconds"])
