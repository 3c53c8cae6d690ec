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
    loaded = load_model("clipbench-mini", "bundled:mini/projections-v2.pt")
    assert type(loaded.clip).__name__ == "CustomTextCLIP"
    assert loaded.frozen_prefixes and all(
        not p.requires_grad for n, p in loaded.clip.named_parameters() if n.startswith(loaded.frozen_prefixes))
    assert weights_fingerprint("clipbench-mini", None) != weights_fingerprint("clipbench-mini", "bundled:mini/projections-v2.pt")


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


@pytest.fixture(scope="module")
def mini_loaded():
    return load_model("clipbench-mini", "bundled:mini/projections-v2.pt")


def _count_calls(module: torch.nn.Module) -> list:
    calls = []
    module.register_forward_pre_hook(lambda mod, inp: calls.append(len(inp[0])))
    return calls


def test_uint8_images_are_prepared_by_the_model_and_cached_by_their_pixels(mini_loaded):
    from clipbench import mini_model
    from clipbench.model_input import to_model_input

    images = torch.randint(0, 256, (6, 3, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    calls = _count_calls(mini_loaded.clip.visual.trunk)
    with torch.no_grad():
        from_uint8 = mini_loaded.clip.encode_image(mini_loaded.model_input(images))
        again = mini_loaded.clip.encode_image(images[[5, 0]])
        from_float = mini_loaded.clip.encode_image(to_model_input(images, (96, 96), mini_loaded.mean, mini_loaded.std))
    assert mini_loaded.model_input(images) is images  # the mini model takes uint8 as it is
    # one fixed batch (6 misses padded to 16) for the uint8 batch, one for the float batch (a different
    # input); the repeated uint8 rows were not computed again
    assert calls == [mini_model.FIXED_BATCH] * 2
    assert torch.allclose(again, from_uint8[[5, 0]], atol=1e-6)  # the projection runs on 2 rows, not 6
    assert torch.allclose(from_uint8, from_float, atol=1e-5)


def test_text_tower_cuts_trailing_padding_without_changing_features(mini_loaded):
    text = mini_loaded.clip.text
    tokens = mini_loaded.tokenizer(["a shirt.", "a black and white photo of an ankle boot next to a bag."])
    mask = (tokens != text.config.pad_token_id).long()
    with torch.no_grad():
        full = text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)  # all 48 positions
        assert torch.allclose(text.pooled(tokens), full, atol=1e-5)
        alone = text.pooled(tokens[:1].clone())  # a batch of only the short text is cut much shorter
    assert torch.allclose(alone, full[:1], atol=1e-5)


def test_mini_checkpoint_leaves_out_the_frozen_towers_and_restores_the_rest(mini_loaded):
    from clipbench.engine import CLIPClassifier

    model = CLIPClassifier(mini_loaded, ["shirt", "boot"], "a photo of a {c}.")
    state = model.checkpoint_state()
    assert "clip.visual.head.proj.weight" in state and "clip.text.proj.weight" in state
    assert not [k for k in state if k.startswith(("clip.visual.trunk.", "clip.text.transformer."))]
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    model.load_checkpoint_state(changed)
    assert torch.equal(model.clip.visual.head.proj.weight, changed["clip.visual.head.proj.weight"])
    del changed["clip.text.proj.weight"]
    with pytest.raises(RuntimeError, match="clip.text.proj.weight"):
        model.load_checkpoint_state(changed)


def test_tower_features_do_not_depend_on_the_batch(mini_loaded):
    """A cached feature must not depend on what was computed with it (kernels differ with the batch
    size: a batch of 1 gives other last bits), or a run's numbers would depend on which runs filled the
    cache before it in the process."""
    from clipbench import mini_model

    def forget():  # empty the process-wide tower caches, so the next call computes afresh
        for store in mini_model._CACHE.values():
            store.clear()

    text, visual = mini_loaded.clip.text, mini_loaded.clip.visual
    short = "a bag."
    company = ["a black and white photo of an ankle boot next to a handbag on a table.", short, "a cap.", "a hat."]
    images = torch.randint(0, 256, (5, 3, 28, 28), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    with torch.no_grad():
        forget()
        text_in_company = text.pooled(mini_loaded.tokenizer(company))[1]  # a group of three texts of its length
        image_in_company = visual.pooled(images)[2]
        forget()
        text_alone = text.pooled(mini_loaded.tokenizer([short]))[0]
        image_alone = visual.pooled(images[2:3])[0]
        tokens = mini_loaded.tokenizer([short])
        mask = (tokens != text.config.pad_token_id).long()
        uncut = text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)[0]  # all 48 positions
    assert torch.equal(text_in_company, text_alone) and torch.equal(image_in_company, image_alone)
    assert torch.allclose(text_alone, uncut, atol=1e-5)
