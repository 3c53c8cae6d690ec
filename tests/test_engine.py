"""The engine on the tiny suite: what trains, how method losses are added, evaluation agreement, and
how the training settings are applied (schedule, iterations, clipping, replay's cross-entropy, augmentation)."""

import pytest
import torch
import torch.nn.functional as F

from clipbench.engine import CLIPClassifier, train_experience
from clipbench.methods.base import Method
from clipbench.methods.er import ER
from clipbench.methods.finetune import Finetune
from clipbench.models import load_model
from clipbench.protocols.catalog import get_protocol
from clipbench.evaluator import Evaluator
from clipbench.plan import plan
from clipbench.runner import seed_everything
from clipbench.schedules import learning_rate
from clipbench.spec import DEFAULTS

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


# ---------------------------------------------------------------- training settings in the engine


def _settings(**over):
    return {**DEFAULTS["train"], **TRAIN, **over}


class Recorder(Method):
    """Records, per step: the learning rate used, the batch labels, and the gradient norm before (its
    own before_update runs before the engine's) and after clipping."""

    name = "recorder"

    def __init__(self, config=None):
        super().__init__(Method.Config(part="image"))
        self.lrs, self.labels, self.raw_norm, self.clipped_norm = [], [], [], []

    def _norm(self, strategy):
        grads = [p.grad for p in strategy.model.parameters() if p.requires_grad and p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def loss(self, strategy):
        self.labels.append(strategy.mb_y.clone())

    def before_update(self, strategy, **kwargs):
        self.lrs.append(strategy.optimizer.param_groups[0]["lr"])
        self.raw_norm.append(self._norm(strategy))

    def after_update(self, strategy, **kwargs):
        self.clipped_norm.append(self._norm(strategy))


def test_engine_applies_the_schedule_for_exactly_the_iterations_asked(streams):
    data = streams.train[0]  # 16 images, batch 8: 2 batches per pass
    rec = Recorder()
    train = _settings(iterations=5, schedule="cosine", warmup_steps=2)
    train_experience(_model(streams)[1], rec, data, 0, 2, train, "cpu", progress=False)
    assert len(rec.lrs) == 5
    assert rec.lrs == [learning_rate(s, 5, 2, train) for s in range(5)]  # pinned to ZSCL's in test_train_settings
    # passes follow each other: the first two batches are the whole data once, then a fresh pass
    first_pass = torch.cat(rec.labels[:2]).sort().values
    assert torch.equal(first_pass, data.labels.sort().values)
    assert [len(y) for y in rec.labels] == [8, 8, 8, 8, 8]


def test_constant_schedule_leaves_the_rate_alone(streams):
    rec = Recorder()
    train_experience(_model(streams)[1], rec, streams.train[0], 0, 2, _settings(epochs=2), "cpu", progress=False)
    assert rec.lrs == [1e-3] * 4


def test_gradient_clipping_caps_the_norm_the_optimizer_sees(streams):
    clipped, free = Recorder(), Recorder()
    train_experience(_model(streams)[1], clipped, streams.train[0], 0, 2, _settings(grad_clip=1e-3), "cpu", progress=False)
    train_experience(_model(streams)[1], free, streams.train[0], 0, 2, _settings(grad_clip=0.0), "cpu", progress=False)
    assert min(clipped.raw_norm) > 1e-3  # clipping had work to do
    assert clipped.clipped_norm == pytest.approx([1e-3] * len(clipped.raw_norm), rel=1e-4)
    assert free.clipped_norm == free.raw_norm


class RecordingER(ER):
    """ER that records the cross-entropy of every step (the engine computed it before method losses)."""

    def setup(self, model, streams):
        super().setup(model, streams)
        self.ce = []

    def loss(self, strategy):
        self.ce.append(float(strategy.loss))


def test_replay_under_current_task_cross_entropy_keeps_a_small_loss(streams):
    _, model = _model(streams)
    er = RecordingER(ER.Config(part="image", buffer_size=8))
    er.setup(model, streams)
    train = _settings(ce_classes="current")
    for exp in range(2):
        data = er.training_data(streams, exp)
        active = streams.experience_classes[exp][-1] + 1
        train_experience(model, er, data, exp, active, train, "cpu", progress=False,
                         experience_classes=streams.experience_classes)
    replay_steps = er.ce[2:]  # experience 1: its own data plus the buffer of experience 0
    assert replay_steps and max(replay_steps) < 20  # under the old -1e4 mask: thousands


def test_augmented_training_is_reproducible(streams):
    def train_once(recipe):
        _, model = _model(streams)
        seed_everything(0, 0)
        train_experience(model, Recorder(), streams.train[0], 0, 2, _settings(augment=recipe), "cpu", progress=False)
        return [p.detach().clone() for p in model.image_parameters()]

    a, b, plain = train_once("zscl"), train_once("zscl"), train_once("none")
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, plain))




def test_sgd_with_momentum_takes_a_parameter_whose_first_gradient_comes_late():
    """A mixture's expert first chosen at step 2: torch's fused SGD fails on it ('expected Tensor ... got NoneType')."""
    from clipbench.engine import make_optimizer

    a, b, c = (torch.nn.Parameter(torch.ones(3)) for _ in range(3))
    opt = make_optimizer([a, b, c], {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9})
    (a.sum() + b.sum()).backward()
    opt.step()
    opt.zero_grad()
    (a.sum() + b.sum() + c.sum()).backward()
    opt.step()
    assert torch.allclose(c.detach(), torch.full((3,), 0.9)) and torch.allclose(a.detach(), torch.full((3,), 0.71))
