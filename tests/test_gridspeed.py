"""The grid's speed-ups change no number: each one against the computation it replaced."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipbench.engine import label_owners, make_criterion
from clipbench.evaluate import any_training, encoding_mode


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 2)), nn.BatchNorm1d(2))


def _flags(module: nn.Module):
    return [m.training for m in module.modules()]


def test_encoding_mode_ends_as_eval_then_train_did():
    """Whatever the modes before, every module ends where `eval()` then `train(was)` leave it, and is in eval
    mode inside the block."""
    cases = []
    for setup in ("all_eval", "all_train", "root_eval_child_train", "root_train_child_eval"):
        net = _net()
        net.train(setup in ("all_train", "root_train_child_eval"))
        if setup == "root_eval_child_train":
            net[1][0].train()
        if setup == "root_train_child_eval":
            net[1].eval()
        reference = _net()
        reference.load_state_dict(net.state_dict())
        for a, b in zip(reference.modules(), net.modules()):
            a.training = b.training
        was = reference.training
        reference.eval()
        reference.train(was)
        with encoding_mode(net):
            assert not any_training(net)
        assert _flags(net) == _flags(reference), setup
        cases.append(setup)
    assert len(cases) == 4


def test_encoding_mode_sets_back_a_module_the_block_switched_to_training():
    net = _net().eval()
    with encoding_mode(net):
        net[1][0].train()
    assert not any_training(net)


def test_any_training_sees_a_deep_module():
    net = _net().eval()
    assert not any_training(net)
    net[1][0].training = True
    assert any_training(net)


def test_current_classes_criterion_with_owners_found_once_equals_per_step():
    """`owners` given (found once per experience) gives the per-step criterion's loss and gradient to the bit:
    one owner (no replay), and several with batches that miss some of them."""
    torch.manual_seed(0)
    ranges = [(0, 2), (2, 4), (4, 6)]
    for labels, eps in ((torch.tensor([4, 5, 4, 5, 5, 4]), 0.0), (torch.tensor([4, 5, 5, 4, 4, 4]), 0.2),
                        (torch.tensor([4, 0, 5, 3, 5, 4]), 0.1), (torch.tensor([4, 5, 5, 4, 4, 5]), 0.1)):
        owners = label_owners(torch.tensor([0, 1, 3, 4, 5]) if labels.min() < 4 and eps else labels, ranges, 6)
        owners = owners.unique().tolist()
        logits = (torch.randn(6, 6) * 5).requires_grad_(True)
        old = make_criterion("current", eps, ranges)(logits, labels)
        (g_old,) = torch.autograd.grad(old, logits)
        new = make_criterion("current", eps, ranges, owners)(logits, labels)
        (g_new,) = torch.autograd.grad(new, logits)
        assert torch.equal(old, new) and torch.equal(g_old, g_new), (labels, owners)


def test_label_owners():
    assert label_owners(torch.tensor([0, 1, 2, 5, 4]), [(0, 2), (2, 4), (4, 6)], 6).tolist() == [0, 0, 1, 2, 2]
    assert label_owners(torch.tensor([3, 0]), None, 4).tolist() == [0, 0]


def test_ddas_reads_the_mini_towers_features_to_the_bit():
    """DDAS's default extractor and the mini image tower read before its ReLU6 are one computation: features
    taken from the tower's passes (in other batch groupings) equal the extractor's own."""
    from clipbench.methods import ddas
    from clipbench.models import load_model

    loaded = load_model("clipbench-mini", "bundled:mini/projections-v2.pt", "cpu")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (19, 3, 28, 28), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8, generator=g)
    selector = ddas.DDAS("efficientnet_lite0", (96, 96), torch.device("cpu"), 0.0655)
    ddas._FEATURES.clear()
    own = torch.cat([selector.features(a), selector.features(b)])
    ddas._FEATURES.clear()
    with torch.no_grad():
        loaded.clip.visual.pooled(a[3:])  # the tower's passes: other batches of 16 than the extractor's
        loaded.clip.visual.pooled(a[:3])
        loaded.clip.visual.pooled(b[2:])
        loaded.clip.visual.pooled(b[:2])
    computed = []
    selector.extractor.register_forward_hook(lambda *args: computed.append(1))
    shared = torch.cat([selector.features(a), selector.features(b)])
    assert not computed  # every row came from the tower's passes
    assert torch.equal(own, shared)


def test_warming_the_text_cache_changes_no_feature():
    """Texts computed all at once (grouped by length over the set) have the features they get a few at a time."""
    from clipbench import mini_model
    from clipbench.models import load_model

    loaded = load_model("clipbench-mini", "bundled:mini/projections-v2.pt", "cpu")
    texts = [f"a photo of a {w} {v}." for w in ("red", "small", "very old") for v in ("shoe", "bag", "t-shirt top")]
    texts += ["a sketch", "an emoji of a smiling face with open mouth and tightly-closed eyes"]
    tokens = loaded.tokenizer(texts)
    store = mini_model._CACHE[f"{mini_model.tower_fingerprint()}:text:{mini_model.CONTEXT_LENGTH}"]
    keys = mini_model._row_keys(tokens)
    for k in keys:
        store.pop(k, None)
    with torch.no_grad():
        few = torch.cat([loaded.clip.text.pooled(tokens[i:i + 2]) for i in range(0, len(texts), 2)])
    for k in keys:
        store.pop(k, None)
    loaded.warm_texts(texts)
    assert all(k in store for k in keys)
    with torch.no_grad():
        assert torch.equal(loaded.clip.text.pooled(tokens), few)


def test_joined_images_index_as_the_concatenation_would():
    """`LabelledImages.concat` copies no image: every way training and methods index the joined set gives what
    `torch.cat` of the parts gives."""
    from clipbench.streams import JoinedImages, LabelledImages

    g = torch.Generator().manual_seed(0)
    parts = [torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g) for n in (5, 0, 3, 7)]
    whole = torch.cat(parts)
    joined = JoinedImages(parts)
    keys = [slice(0, 15), slice(4, 9), slice(6, 8), slice(0, 15, 2), torch.randperm(15, generator=g)[:9],
            torch.tensor([14, 0, 0, 7, -1]), whole[:, 0, 0, 0] > 128, [3, 11], 12, -15]
    for key in keys:
        assert torch.equal(joined[key], whole[key]), key
    assert joined.shape == whole.shape and len(joined) == 15 and joined.dim() == 4
    labelled = LabelledImages.concat([LabelledImages(p, torch.full((len(p),), k)) for k, p in enumerate(parts)])
    assert isinstance(labelled.images, JoinedImages)
    assert all(a is b for a, b in zip(labelled.images.parts, [parts[0], parts[2], parts[3]]))  # the same tensors
    again = LabelledImages.concat([labelled, LabelledImages(parts[0], torch.zeros(5, dtype=torch.long))])
    assert torch.equal(again.images[0:20], torch.cat([whole, parts[0]]))
    picked = labelled.subset(torch.tensor([1, 9, 14]))
    assert torch.equal(picked.images, whole[[1, 9, 14]]) and picked.labels.tolist() == [0, 3, 3]
    with pytest.raises(IndexError):
        joined[torch.tensor([15])]


def test_training_batches_from_joined_images_equal_the_concatenation():
    from clipbench.avalanche_api import TensorBatches
    from clipbench.streams import JoinedImages

    parts = [torch.randint(0, 256, (n, 3, 2, 2), dtype=torch.uint8) for n in (6, 5)]
    labels = torch.arange(11)
    batches = []
    for images in (torch.cat(parts), JoinedImages(parts)):
        torch.manual_seed(1)
        batches.append([b[0] for b in TensorBatches(images, labels, 4)])
    assert all(torch.equal(a, b) for a, b in zip(*batches)) and len(batches[0]) == 3
