"""The engine on the tiny suite: what trains, how method losses are added, and evaluation agreement."""

import pytest
import torch
import torch.nn.functional as F

from clipbench.engine import CLIPClassifier, train_experience
from clipbench.methods.base import Method
from clipbench.methods.finetune import Finetune
from clipbench.models import load_model
from clipbench.protocols.catalog import get_protocol
from clipbench.runner import Evaluator, plan, seed_everything

TRAIN = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0, "optimizer": "adamw"}


@pytest.fixture(scope="module")
def streams():
    params = dict(get_protocol("tiny_shapes").params, train_per_class=8, test_per_class=4,
                  heldout_per_class=6, retrieval_images=8)
    return get_protocol("tiny_shapes").build(None, 0, params)


def _model(streams):
    seed_everything(0, "model")
    loaded = load_model("clipbench-tiny", None)
    return loaded, CLIPClassifier(loaded, streams.class_names, streams.train_template)


def _snapshot(params):
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("part, image_moves, text_moves", [("image", True, False), ("text", False, True), ("whole", True, True)])
def test_part_decides_which_encoder_trains(streams, part, image_moves, text_moves):
    _, model = _model(streams)
    img0, txt0 = _snapshot(model.image_parameters()), _snapshot(model.text_parameters())
    scale0 = model.clip.logit_scale.detach().clone()
    method = Finetune(Finetune.Config(part=part))
    train_experience(model, method, streams.train[0], 0, 2, TRAIN, "cpu", progress=False)
    moved = lambda before, params: any(not torch.equal(a, b) for a, b in zip(before, params))
    assert moved(img0, model.image_parameters()) == image_moves
    assert moved(txt0, model.text_parameters()) == text_moves
    assert torch.equal(scale0, model.clip.logit_scale)


class Probe(Method):
    """Adds a constant to the loss and checks what the engine did around it."""

    name = "probe"

    def __init__(self, config=None):
        super().__init__(Method.Config(part="image"))
        self.seen = []

    def loss(self, strategy):
        ce = F.cross_entropy(strategy.mb_output, strategy.mb_y)
        self.seen.append(("before", float(strategy.loss), float(ce)))
        # the frozen text tower is in eval mode even though Avalanche called model.train()
        assert not strategy.model.clip.transformer.training
        assert strategy.model.clip.visual.training
        return torch.tensor(100.0)

    def after_backward(self, strategy, **kwargs):
        self.seen.append(("after", float(strategy.loss), None))


def test_engine_adds_method_loss_and_method_never_writes_it(streams):
    _, model = _model(streams)
    probe = Probe()
    train_experience(model, probe, streams.train[0], 0, 2, TRAIN, "cpu", progress=False)
    befores = [s for s in probe.seen if s[0] == "before"]
    afters = [s for s in probe.seen if s[0] == "after"]
    assert befores and len(befores) == len(afters)
    for (_, loss_before, ce), (_, loss_after, _) in zip(befores, afters):
        assert loss_before == pytest.approx(ce, rel=1e-5)
        assert loss_after == pytest.approx(ce + 100.0, rel=1e-5)


def test_logits_cover_only_active_classes(streams):
    _, model = _model(streams)
    model.num_active = 4
    x = streams.test[0].images[:3]
    assert model(x).shape == (3, 4)


def test_zero_shot_accuracy_equals_independent_computation(streams):
    """The harness's zero-shot figure equals a plain open_clip computation on the same model and data."""
    [spec] = plan("tiny", ["zeroshot"], ["tiny_shapes"])
    loaded, _ = _model(streams)
    row = Evaluator(streams, loaded, spec, "cpu", progress=False).evaluate(0, version=0)

    zs = streams.zeroshot_sets["shapes"]
    clip, tok = loaded.clip.eval(), loaded.tokenizer
    mean = torch.tensor(loaded.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std).view(1, 3, 1, 1)
    with torch.no_grad():
        images = (zs.data.images.float() / 255 - mean) / std  # already at the model's 32 px
        img = F.normalize(clip.encode_image(images), dim=-1)
        weights = []
        for c in zs.class_names:
            t = F.normalize(clip.encode_text(tok([tpl.format(c=c) for tpl in zs.templates])), dim=-1)
            weights.append(F.normalize(t.mean(0), dim=-1))
        pred = (img @ torch.stack(weights).T).argmax(1)
    expected = (pred == zs.data.labels).double().mean().item()
    assert row.zeroshot["shapes"] == pytest.approx(expected, abs=1e-12)
