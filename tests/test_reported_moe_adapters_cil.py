"""MoE-Adapters' committed class-incremental numbers (CIFAR-100 10/20/50 steps, TinyImageNet 5/10/20 steps) load,
and the leaderboard shows them beside `moe_adapters_cil` runs with the code's settings and never beside another
method (`moe_adapters`, the MTIL variant, included)."""

from __future__ import annotations

from pathlib import Path

import pytest

import clipbench.protocols
from clipbench.leaderboard import load_reported, write
from test_leaderboard import record, table_line, write_records

SHIPPED = Path(clipbench.protocols.__file__).parent / "reported"
# protocol -> (avg, last, batch) as read from JiazuoYu/MoE-Adapters4CL at 4572d97, cil/experiments/class/*/metrics.json
EXPECTED = {"cifar100_10steps": (85.21, 77.52, 128), "cifar100_20steps": (83.72, 76.2, 128),
            "cifar100_50steps": (83.77, 75.24, 64), "tinyimagenet_100_5steps": (81.12, 76.87, 64),
            "tinyimagenet_100_10steps": (80.23, 76.35, 64), "tinyimagenet_100_20steps": (79.96, 75.77, 64)}
CODE_TRAIN = {"lr": 0.001, "label_smoothing": 0.0, "weight_decay": 0.0, "optimizer": "adamw", "epochs": 1,
              "schedule": "cosine", "warmup_steps": 30, "ce_classes": "current"}


def test_each_protocol_has_its_moe_adapters_row():
    docs = {d["protocol"]: d for d in map(load_reported, sorted(SHIPPED.glob("moe_adapters_*.yaml")))}
    assert set(docs) == set(EXPECTED)
    for protocol, (avg, last, batch) in EXPECTED.items():
        doc = docs[protocol]
        assert doc["suite"] == ("cil_cifar100" if protocol.startswith("cifar") else "cil_tinyimagenet")
        assert doc["model"] == "ViT-B-16" and doc["scale"] == 100 and "4572d97" in doc["source"]
        [row] = doc["rows"].values()
        assert row["method"] == "moe_adapters_cil" and row["metrics"] == {"avg": avg, "last": last}
        assert row["settings"]["train.batch_size"] == batch


def _section(page: Path, protocol: str) -> str:
    """The page's reported-beside-reproduced table of one protocol (each suite page has one per protocol)."""
    heading = "### Reproduced beside reported: " + protocol.replace("_", "\\_")
    return page.read_text().split(heading)[1].split("###")[0]


@pytest.mark.parametrize("protocol", ["cifar100_10steps", "tinyimagenet_100_20steps"])
def test_shown_only_beside_moe_adapters_cil(protocol, tmp_path):
    suite = "cil_cifar100" if protocol.startswith("cifar") else "cil_tinyimagenet"
    avg, last, batch = EXPECTED[protocol]
    recs = []
    for method, value in (("moe_adapters_cil", 0.75), ("moe_adapters", 0.60), ("zscl", 0.70)):
        rec = record(method, 0, value, 0.5, model="ViT-B-16", suite=suite, protocol=protocol,
                     train={**CODE_TRAIN, "batch_size": batch})
        rec["raw"]["acc_matrix"] = [[0.9, 0.8], [0.9, 0.8], [value, value]]
        recs.append(rec)
    results, out = tmp_path / "results", tmp_path / "lb"
    write_records(results, recs)
    write(results, out)
    section = _section(out / f"{suite}.md", protocol)
    line = table_line(section, "MoE-Adapters")
    assert line[1] == "moe\\_adapters\\_cil"
    assert line[2:] == [f"{avg:.1f}", "82.5", f"{82.5 - avg:+.1f}", f"{last:.1f}", "75.0", f"{75.0 - last:+.1f}"]
    assert "60.0" not in section and "70.0" not in section  # moe_adapters' and zscl's own numbers never sit there
    assert sum(l.startswith("| MoE-Adapters") for l in section.splitlines()) == 1


def test_other_settings_give_a_dash_and_the_difference(tmp_path):
    rec = record("moe_adapters_cil", 0, 0.75, 0.5, model="ViT-B-16", suite="cil_cifar100", protocol="cifar100_10steps",
                 train={**CODE_TRAIN, "batch_size": 128, "lr": 7.1e-6})  # the suite's general rate, not the code's
    write_records(tmp_path / "results", [rec])
    write(tmp_path / "results", tmp_path / "lb")
    section = _section(tmp_path / "lb" / "cil_cifar100.md", "cifar100_10steps")
    assert table_line(section, "MoE-Adapters")[1].startswith("-[^")
    page = (tmp_path / "lb" / "cil_cifar100.md").read_text()
    assert "train.lr is 7.1e-06 (reported 0.001)" in page  # the footnote, below the tables
