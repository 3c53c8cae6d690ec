"""The offline default suite on the real packaged assets (installed by `make setup`)."""

import pytest
import torch

from clipbench.models import load_model, weights_fingerprint
from clipbench.prepare import prepare_mini
from helpers import records, run_cli

SMALL = ["protocols.mini_fashion_ost.train_per_class=100", "protocols.mini_fashion_ost.test_per_class=50"]


@pytest.fixture(scope="module")
def mini_records(tmp_path_factory):
    results = tmp_path_factory.mktemp("mini")
    assert run_cli("run", "--method", "zeroshot", "finetune", "--protocol", "mini_fashion_ost", "--suite", "mini",
                   "--results", results, "--quiet", "--set", *SMALL) == 0
    return {rec["spec"]["method"]: rec for rec in records(results).values()}


def test_pretrained_mini_model_is_well_above_chance(mini_records):
    zs = mini_records["zeroshot"]["metrics"]
    assert zs["zs_acc.emoji"] > 3 * (1 / 12)  # 12 held-out emoji subcategories
    assert zs["zs_acc.tuxpaint"] > 3 * (1 / 10)
    assert zs["i2t_r1.tuxpaint"] > 10 / 162 and zs["t2i_r1.tuxpaint"] > 10 / 162  # 10x chance, 162 pairs


def test_finetune_learns_the_target_and_forgets_zero_shot_and_retrieval(mini_records):
    ft, zs = mini_records["finetune"]["metrics"], mini_records["zeroshot"]["metrics"]
    assert ft["last"] > zs["last"] + 0.3
    assert ft["zs_drop"] > 5.0
    assert ft["i2t_r1_drop"] > 0 and ft["t2i_r1_drop"] > 0


def test_mini_model_goes_through_the_common_loader():
    loaded = load_model("clipbench-mini", "bundled:mini/projections-v1.pt")
    assert type(loaded.clip).__name__ == "CustomTextCLIP"
    assert loaded.frozen_prefixes and all(
        not p.requires_grad for n, p in loaded.clip.named_parameters() if n.startswith(loaded.frozen_prefixes))
    assert weights_fingerprint("clipbench-mini", None) != weights_fingerprint("clipbench-mini", "bundled:mini/projections-v1.pt")


def test_prepare_is_deterministic(tmp_path):
    a, b = tmp_path / "a" / "p.pt", tmp_path / "b" / "p.pt"  # torch's zip archive embeds the file name
    prepare_mini(a, epochs=2, limit=96, progress=False)
    prepare_mini(b, epochs=2, limit=96, progress=False)
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert all(torch.equal(sa["state_dict"][k], sb["state_dict"][k]) for k in sa["state_dict"])
    assert a.read_bytes() == b.read_bytes()
    # and the product loads into the model
    loaded = load_model("clipbench-mini", str(a))
    assert torch.equal(loaded.clip.text.proj.weight, sa["state_dict"]["text.proj.weight"])
